#!/usr/bin/env bash
# Builds the sdist and the wheel the way a release does (`python -m build`: the wheel is built
# from the sdist), installs the WHEEL (not the source tree) into a fresh virtual environment and
# checks what a user gets: the console script, a headless run that never imports napari or Qt,
# the quick demo, the data files inside the wheel, then the [napari] extra and its npe2 manifest.
# Run from the repository root: `bash scripts/check_package.sh` (or `make package-check`).
# One line per check; exits non-zero at the first failure. PYTHON picks the interpreter
# (default python3); KEEP_TMP=1 keeps the temporary folder for a look afterwards.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
# The CPU build lies on this machine's disk (PIP_FIND_LINKS); any other torch may pull CUDA.
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
PIP_QUIET=(-q --disable-pip-version-check)

if [ ! -f pyproject.toml ] || [ ! -d src/napari_4dstem_rvae ]; then
  echo "FAIL: run from the repository root (pyproject.toml, src/napari_4dstem_rvae)" >&2
  exit 1
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/check_package.XXXXXX")"
cleanup() {
  if [ "${KEEP_TMP:-0}" = "1" ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

# pip, quiet, without its notes about this machine's absent file:// indexes.
pip_install() {
  local py="$1"; shift
  "$py" -m pip install "${PIP_QUIET[@]}" "$@" 2> >(grep -v "^WARNING: Location 'file://" >&2)
}

ok()   { echo "ok   $*"; }
fail() { echo "FAIL $*" >&2; exit 1; }
step() { echo "...  $*"; }

# --- build ------------------------------------------------------------------------------------
BUILDER="$PYTHON"
if ! "$PYTHON" -c "import build" 2>/dev/null; then
  step "installing build into a throwaway venv"
  "$PYTHON" -m venv "$TMP/build-venv"
  pip_install "$TMP/build-venv/bin/python" build
  BUILDER="$TMP/build-venv/bin/python"
fi
step "building sdist and wheel"
"$BUILDER" -m build --outdir "$TMP/dist" . > "$TMP/build.log" 2>&1 \
  || { tail -n 40 "$TMP/build.log" >&2; fail "python -m build (log above)"; }
shopt -s nullglob
wheels=("$TMP"/dist/*.whl)
sdists=("$TMP"/dist/*.tar.gz)
shopt -u nullglob
[ "${#wheels[@]}" -eq 1 ] || fail "expected one wheel in $TMP/dist, found ${#wheels[@]}"
[ "${#sdists[@]}" -eq 1 ] || fail "expected one sdist in $TMP/dist, found ${#sdists[@]}"
WHEEL="${wheels[0]}"
# napari_4dstem_rvae-0.2.0-py3-none-any.whl -> 0.2.0
VERSION="$(basename "$WHEEL" | cut -d- -f2)"
ok "build: $(basename "${sdists[0]}") and $(basename "$WHEEL")"

# --- the wheel's files ------------------------------------------------------------------------
"$PYTHON" -m zipfile -l "$WHEEL" > "$TMP/wheel-files.txt"
for f in napari_4dstem_rvae/napari.yaml napari_4dstem_rvae/atoms/weights/atom_unet.pt; do
  grep -qE "^$f[[:space:]]" "$TMP/wheel-files.txt" || fail "wheel lacks $f"
  ok "wheel holds $f"
done
grep -qE "^napari_4dstem_rvae-$VERSION\.dist-info/(licenses/)?LICENSE[[:space:]]" "$TMP/wheel-files.txt" \
  || fail "wheel lacks LICENSE in its .dist-info"
ok "wheel holds LICENSE"

# --- a fresh venv with the wheel, no extras ---------------------------------------------------
step "installing $TORCH_SPEC, then the wheel (no extras) into a fresh venv"
"$PYTHON" -m venv "$TMP/venv"
VPY="$TMP/venv/bin/python"
pip_install "$VPY" --upgrade pip
pip_install "$VPY" "$TORCH_SPEC"
pip_install "$VPY" "$WHEEL"
# Imports come from the installed wheel, not the checkout: run everything from the temp folder.
cd "$TMP"
where="$("$VPY" -c "import napari_4dstem_rvae, os; print(os.path.dirname(napari_4dstem_rvae.__file__))")"
case "$where" in
  "$TMP"/venv/*) ok "import napari_4dstem_rvae from the installed wheel" ;;
  *) fail "napari_4dstem_rvae imported from $where, not the venv" ;;
esac
"$VPY" -m pip check > "$TMP/pip-check.txt" 2>&1 \
  || { grep -v "^WARNING: Location" "$TMP/pip-check.txt" >&2; fail "pip check"; }
ok "pip check"

out="$("$TMP/venv/bin/stem-rvae" --version 2>&1)" || fail "stem-rvae --version: $out"
case "$out" in
  *"$VERSION"*) ok "stem-rvae --version: $out" ;;
  *) fail "stem-rvae --version printed '$out', not $VERSION" ;;
esac

"$VPY" - "$TMP/small.h5" <<'EOF' || fail "writing the small test file"
import sys
from napari_4dstem_rvae.io import save_dataset
from napari_4dstem_rvae.simulate import graphene
save_dataset(graphene(scan_shape=(8, 8), det_shape=(32, 32)), sys.argv[1])
EOF
ok "small file written (graphene 8×8 scan, 32×32 detector)"

"$VPY" - "$TMP/small.h5" "$TMP/com" > "$TMP/com.log" 2>&1 <<'EOF' \
  || { tail -n 30 "$TMP/com.log" >&2; fail "headless stem-rvae com"; }
import sys
from napari_4dstem_rvae.cli import main
rc = main(["-q", "com", sys.argv[1], "--out", sys.argv[2]])
if rc != 0:
    sys.exit(f"stem-rvae com returned {rc}")
gui = sorted(m for m in ("napari", "qtpy", "PyQt6", "PyQt5", "PySide6", "magicgui", "superqt")
             if m in sys.modules)
if gui:
    sys.exit(f"stem-rvae com imported {', '.join(gui)}")
EOF
ls "$TMP/com"/*.h5 > /dev/null 2>&1 || fail "stem-rvae com wrote no .h5 in $TMP/com"
ok "stem-rvae com headless: wrote $(cd "$TMP/com" && ls | tr '\n' ' ')and imported no napari/qtpy/PyQt6/magicgui"

"$TMP/venv/bin/stem-rvae" demo --quick --out "$TMP/demo" > "$TMP/demo.out" 2> "$TMP/demo.err" \
  || { tail -n 30 "$TMP/demo.err" >&2; fail "stem-rvae demo --quick"; }
# stderr: what happens, every line ours (bars and log lines, no tracebacks, no stray escapes);
# stdout: the files written, one path per line, each there
strays="$(tr '\r' '\n' < "$TMP/demo.err" | grep -v '^[[:space:]]*$' | grep -v '^stem-rvae: ' || true)"
[ -z "$strays" ] || { echo "$strays" | head -n 10 >&2; fail "stem-rvae demo --quick: stderr lines not from stem-rvae"; }
for name in graphene_4dstem.h5 com.h5 images.h5 results.h5 overview.png; do
  grep -qx "$TMP/demo/$name" "$TMP/demo.out" || fail "stem-rvae demo --quick did not print $TMP/demo/$name"
done
while read -r path; do [ -s "$path" ] || fail "stem-rvae demo --quick printed $path, which is not there"; done < "$TMP/demo.out"
ok "stem-rvae demo --quick: $(wc -l < "$TMP/demo.out") files on stdout, every stderr line from stem-rvae"

# --- the [napari] extra and its npe2 manifest -------------------------------------------------
step "installing the wheel's [napari] extra and npe2"
pip_install "$VPY" "${WHEEL}[napari]" npe2
"$TMP/venv/bin/npe2" validate napari-4dstem-rvae > "$TMP/npe2.log" 2>&1 \
  || { cat "$TMP/npe2.log" >&2; fail "npe2 validate napari-4dstem-rvae"; }
ok "npe2 validate napari-4dstem-rvae: $(tail -n 1 "$TMP/npe2.log")"

echo "all package checks passed ($(basename "$WHEEL"))"
