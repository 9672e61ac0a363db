"""The fault suite: the package tried as a hostile user would, with a tally.

Every case ends in one of these outcomes:

- ``correct``: the operation succeeded and its result equals the truth (a mutated byte that
  touches nothing read, or a calibration field);
- ``partial, said``: a damaged file read in part (complete frames or scan lines), with a
  warning that says so, and what was read equals the truth there;
- ``clean error``: a ``ReadError``/``ValueError`` (CLI: exit status 2) in one line naming the
  file, or a refusal that leaves everything as it was;
- ``unclear error``: an error that does not name the file or spans several lines;
- ``crash``: any other exception (a traceback for the user);
- ``hang``: no answer within the case's time limit;
- ``silent wrong``: a result that differs from the truth without a word;
- ``wrong, warned``: differs from the truth, with a warning that does not say what was read;
- ``data loss``: an input changed, or a results file that is neither the previous complete
  one nor the new complete one.

Groups: byte mutations of each binary format's header (.npy, Merlin .mib, ASTAR .blo,
HDF5 by HyperSpy's writer, zarr chunks), truncated copies (and EMPAD .raw), the napari reader
on the same damaged files, flipped bytes in checkpoints, kill -9 at random moments while a
results file is written, two writers of one output at once, kill -9 during ``stem-rvae run``
then the same command again, bad options and paths on the CLI, NaN/Inf and huge values.

Usage::

    python benchmarks/fault_suite.py            # every group (~10 min on 2 cores)
    python benchmarks/fault_suite.py --quick    # fewer cases per group

Prints one line per group and the tally; exits 1 if any case crashed, hung, gave a silent
wrong result or lost data.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import io as _io
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "io"))

from test_readers import (  # noqa: E402  (writers of the detector formats, shared with the tests)
    cube,
    empad_frames,
    merlin_expected,
    rsciio_signal,
    write_empad_raw,
    write_hdr,
    write_mib,
)

from napari_4dstem_rvae import io  # noqa: E402

BAD = ("crash", "hang", "silent wrong", "wrong, warned", "data loss", "unclear error")
EXE = str(Path(sys.executable).with_name("stem-rvae"))


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    def alarm(signum, frame):
        raise Hang()

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Tally:
    def __init__(self):
        self.groups: dict[str, collections.Counter] = {}
        self.examples: list[str] = []

    def add(self, group: str, outcome: str, detail: str = "") -> None:
        self.groups.setdefault(group, collections.Counter())[outcome] += 1
        if outcome in BAD and len(self.examples) < 40:
            self.examples.append(f"[{group}] {outcome}: {detail}")

    def report(self) -> int:
        total = collections.Counter()
        for group, counts in self.groups.items():
            total.update(counts)
            print(f"{group:34s} {sum(counts.values()):4d} cases: " +
                  ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        n = sum(total.values())
        print()
        print(f"TALLY: {n} cases; " + ", ".join(f"{k} {total.get(k, 0)}" for k in
              ("correct", "partial, said", "clean error", *BAD)))
        for line in self.examples:
            print("  " + line)
        return 1 if any(total.get(k, 0) for k in BAD) else 0


def one_line_naming(message: str, names: tuple[str, ...]) -> bool:
    return "\n" not in message.strip() and any(name in message for name in names)


def judge_read(path: Path, truth: np.ndarray, names: tuple[str, ...] = (), seconds: float = 30,
               **options) -> tuple[str, str]:
    """Read ``path`` with io.read and compare with ``truth`` (the data as written)."""
    names = names or (path.name,)
    try:
        with time_limit(seconds), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = io.read(path, **options)
            got = np.asarray(ds.data)
    except Hang:
        return "hang", str(path)
    except (io.ReadError, ValueError) as exc:
        return ("clean error" if one_line_naming(str(exc), names) else "unclear error"), str(exc)[:200]
    except Exception as exc:
        return "crash", f"{type(exc).__name__}: {str(exc)[:200]}"
    said = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    if got.shape == truth.shape and np.array_equal(got, truth, equal_nan=True):
        return "correct", ""
    frames = got.reshape(-1, *got.shape[-2:])
    flat = truth.reshape(-1, *truth.shape[-2:])
    if said and got.shape[-2:] == truth.shape[-2:] and len(frames) < len(flat) and \
            np.array_equal(frames, flat[:len(frames)]):
        return "partial, said", said[0][:120]
    if said:
        return "wrong, warned", f"{path.name}: {got.shape} vs {truth.shape}; {said[0][:120]}"
    return "silent wrong", f"{path.name}: {got.shape} vs {truth.shape}"


def mutations(raw: bytes, span: tuple[int, int], n: int, seed: int) -> list[tuple[int, bytes]]:
    """``n`` copies of ``raw`` with one byte in ``span`` replaced by another value."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        at = rng.randrange(*span)
        damaged = bytearray(raw)
        damaged[at] = (damaged[at] + rng.randrange(1, 256)) % 256
        out.append((at, bytes(damaged)))
    return out


def napari_reader_case(path: Path) -> tuple[str, str]:
    """The napari reader on a damaged file: a notification and nothing added, or layers — never
    an exception (napari would show a traceback dialog)."""
    from napari_4dstem_rvae._napari import reader

    try:
        with time_limit(30), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            function = reader.napari_get_reader(str(path))
            if function is None:
                return "clean error", "not claimed"
            layers = function(str(path))
    except Hang:
        return "hang", str(path)
    except Exception as exc:
        return "crash", f"napari reader {path.name}: {type(exc).__name__}: {str(exc)[:160]}"
    if layers is reader._NOTHING:
        return "clean error", ""
    return "correct", ""


# -- binary headers ------------------------------------------------------------------------------
def header_group(tally: Tally, tmp: Path, name: str, path: Path, truth: np.ndarray, span: tuple[int, int],
                 n: int, extra_files: tuple[Path, ...] = (), truncations: int = 0, napari_every: int = 4,
                 **options) -> None:
    raw = path.read_bytes()
    copies = mutations(raw, span, n, seed=zlib.crc32(name.encode()))
    rng = random.Random(7)
    for _ in range(truncations):
        cut = rng.randrange(1, len(raw))
        copies.append((-cut, raw[:cut]))
    for i, (at, damaged) in enumerate(copies):
        case = tmp / f"{name}-{i}{path.suffix}"
        case.write_bytes(damaged)
        for extra in extra_files:  # a sibling (.hdr) goes with its file
            shutil.copy(extra, case.with_suffix(extra.suffix))
        group = f"{name} {'truncated' if at < 0 else 'header mutated'}"
        outcome, detail = judge_read(case, truth, **options)
        tally.add(group, outcome, f"byte {at}: {detail}")
        if napari_every and i % napari_every == 0:
            tally.add("napari reader on damaged files", *napari_reader_case(case))
        case.unlink()


def hdf5_data_ranges(path: Path) -> list[tuple[int, int]]:
    """Byte ranges of the raw data of every dataset (contiguous or chunked) of an HDF5 file."""
    import h5py

    ranges = []

    def visit(name, obj):
        if not isinstance(obj, h5py.Dataset):
            return
        if obj.chunks is None:
            offset = obj.id.get_offset()
            if offset is not None:
                ranges.append((offset, offset + obj.id.get_storage_size()))
            return
        for i in range(obj.id.get_num_chunks()):
            info = obj.id.get_chunk_info(i)
            ranges.append((info.byte_offset, info.byte_offset + info.size))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return ranges


def formats(tally: Tally, tmp: Path, n: int) -> None:
    from rsciio import blockfile, hspy

    # .npy (NumPy's own writer)
    truth = np.random.default_rng(0).poisson(5, (6, 7, 16, 16)).astype(np.float32)
    np.save(tmp / "scan.npy", truth)
    header_group(tally, tmp, "npy", tmp / "scan.npy", truth, (0, 128), n, truncations=n // 5)

    # Merlin .mib with its .hdr (the layout of Quantum Detectors' software)
    frames = cube((12, 6, 8), np.uint16)
    write_mib(tmp / "scan.mib", frames)
    write_hdr(tmp / "scan.hdr", 12, scan=(3, 4))
    header_group(tally, tmp, "mib", tmp / "scan.mib", merlin_expected(frames, (3, 4)), (0, 384), n,
                 extra_files=(tmp / "scan.hdr",), truncations=n // 5)
    # ...and the headers of later frames (their pixels carry no checksum: not mutated)
    raw = (tmp / "scan.mib").read_bytes()
    rng = random.Random(9)
    truth = merlin_expected(frames, (3, 4))
    for i in range(n // 3):
        at = 480 * rng.randrange(1, 12) + rng.randrange(0, 384)
        damaged = bytearray(raw)
        damaged[at] = (damaged[at] + rng.randrange(1, 256)) % 256
        case = tmp / f"later{i}.mib"
        case.write_bytes(bytes(damaged))
        shutil.copy(tmp / "scan.hdr", case.with_suffix(".hdr"))
        tally.add("mib later frame headers mutated", *judge_read(case, truth))

    # ASTAR blockfile (RosettaSciIO's writer)
    data = cube((3, 4, 8, 8), np.uint8)
    blockfile.file_writer(str(tmp / "scan.blo"), rsciio_signal(data, sig=((0.02, "cm"), (0.02, "cm"))),
                          show_progressbar=False)
    header_group(tally, tmp, "blo", tmp / "scan.blo", data, (0, 80), n, truncations=n // 5)

    # HDF5 by HyperSpy's format (RosettaSciIO's hspy writer)
    data = cube((3, 4, 8, 8), np.uint16)
    hspy.file_writer(str(tmp / "scan.hspy"), rsciio_signal(data))
    raw = (tmp / "scan.hspy").read_bytes()
    pixels = hdf5_data_ranges(tmp / "scan.hspy")  # raw pixel bytes carry no checksum: not mutated
    rng = random.Random(13)
    for i in range(n):
        at = rng.randrange(0, len(raw))
        while any(a <= at < b for a, b in pixels):
            at = rng.randrange(0, len(raw))
        damaged = bytearray(raw)
        damaged[at] = (damaged[at] + rng.randrange(1, 256)) % 256
        case = tmp / f"h{i}.hspy"
        case.write_bytes(bytes(damaged))
        outcome, detail = judge_read(case, data)
        tally.add("hdf5 (hspy) metadata mutated", outcome, f"byte {at}: {detail}")
        if i % 8 == 0:
            tally.add("napari reader on damaged files", *napari_reader_case(case))
    for i in range(n // 5):
        cut = rng.randrange(1, len(raw))
        (tmp / "cut.hspy").write_bytes(raw[:cut])
        tally.add("hdf5 (hspy) truncated", *judge_read(tmp / "cut.hspy", data))

    # EMPAD: the .raw has no header; truncated copies and mutated .xml numbers
    frames = empad_frames((2, 3))
    write_empad_raw(tmp / "data.raw", frames)
    xml = '<root><pix_x>3</pix_x><pix_y>2</pix_y><raw_file filename="data.raw"/></root>'
    (tmp / "scan.xml").write_text(xml)
    raw = (tmp / "data.raw").read_bytes()
    rng = random.Random(3)
    for i in range(n // 3):
        cut = rng.randrange(1, len(raw))
        (tmp / "data.raw").write_bytes(raw[:cut])
        tally.add("empad raw truncated", *judge_read(tmp / "scan.xml", frames, names=("data.raw", "scan.xml")))
    (tmp / "data.raw").write_bytes(raw)
    for i in range(n // 3):
        mutated = xml.replace("<pix_x>3", f"<pix_x>{rng.choice(['0', '-3', '4', '30000', 'x'])}") if i % 2 else \
            xml.replace("<pix_y>2", f"<pix_y>{rng.choice(['0', '5', '1e9', ''])}")
        (tmp / "scan.xml").write_text(mutated)
        tally.add("empad xml mutated", *judge_read(tmp / "scan.xml", frames, names=("data.raw", "scan.xml")))

    # zarr: a missing chunk, a corrupt chunk, a damaged array description
    import zarr

    data = np.random.default_rng(1).poisson(3, (4, 5, 8, 8)).astype(np.uint16)
    store = tmp / "scan.zarr"
    z = zarr.open_array(store, mode="w", shape=data.shape, chunks=(2, 5, 8, 8), dtype=data.dtype)
    z[:] = data
    chunk_files = sorted(p for p in store.rglob("*") if p.is_file() and "zarr.json" not in p.name
                         and not p.name.startswith("."))
    for i, chunk in enumerate(chunk_files):
        saved = chunk.read_bytes()
        chunk.unlink()
        tally.add("zarr chunk missing", *judge_read(store, data, names=(store.name,)))
        for at, damaged in mutations(saved, (0, len(saved)), max(2, n // 10), seed=i):
            chunk.write_bytes(damaged)
            tally.add("zarr chunk corrupt", *judge_read(store, data, names=(store.name,)))
        chunk.write_bytes(saved)
    meta = store / "zarr.json"
    text = meta.read_text()
    for i, (at, damaged) in enumerate(mutations(text.encode(), (0, len(text)), n // 2, seed=11)):
        meta.write_bytes(damaged)
        tally.add("zarr metadata mutated", *judge_read(store, data, names=(store.name,)))
    meta.write_text(text)


# -- checkpoints --------------------------------------------------------------------------------------
def checkpoints(tally: Tally, tmp: Path, n: int) -> None:
    from napari_4dstem_rvae.rvae import RVAEConfig, Trainer, load_checkpoint
    from napari_4dstem_rvae.simulate import graphene

    ds = graphene(scan_shape=(6, 6), det_shape=(16, 16))
    trainer = Trainer(ds, RVAEConfig(epochs=1, encoder_hidden=(8,), decoder_hidden=(8, 8), threads=1))
    for _ in trainer.run():
        pass
    path = tmp / "model.pt"
    trainer.save(path)
    raw = path.read_bytes()
    for i, (at, damaged) in enumerate(mutations(raw, (0, len(raw)), n, seed=5)):
        bad = tmp / f"bad{i}.pt"
        bad.write_bytes(damaged)
        try:
            with time_limit(30):
                load_checkpoint(bad, ds)
            outcome, detail = "silent wrong", f"byte {at} accepted"
        except Hang:
            outcome, detail = "hang", ""
        except ValueError as exc:
            outcome = "clean error" if one_line_naming(str(exc), (bad.name,)) else "unclear error"
            detail = str(exc)[:160]
        except Exception as exc:
            outcome, detail = "crash", f"{type(exc).__name__}: {exc}"
        tally.add("checkpoint bytes flipped", outcome, detail)
        bad.unlink()


# -- kill -9 while writing ---------------------------------------------------------------------------
WRITER = (
    "import sys, numpy as np\n"
    "from napari_4dstem_rvae.results import write_results\n"
    "v = float(sys.argv[2])\n"
    "write_results(sys.argv[1], calibration=None, scan_shape=(512, 512),\n"
    "              images={f'virtual{i}': np.full((512, 512), v) for i in range(40)})\n"
)


def results_value(path: Path) -> float | None:
    """The one value of a complete results file; None if it is not complete and consistent."""
    import h5py

    from napari_4dstem_rvae.results import read_results

    try:
        read_results(path)
        with h5py.File(path, "r") as f:
            values = {float(f[f"images/virtual{i}"][0, 0]) for i in range(40)}
            full = all(np.all(f[f"images/virtual{i}"][()] == f[f"images/virtual{i}"][0, 0]) for i in range(40))
    except Exception:
        return None
    return values.pop() if len(values) == 1 and full else None


def kills_while_writing(tally: Tally, tmp: Path, n: int) -> None:
    out = tmp / "kill.h5"
    subprocess.run([sys.executable, "-c", WRITER, str(out), "1"], check=True)
    previous = 1.0
    # the first kills find how long a write takes, then moments are drawn over that span
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", WRITER, str(out), "2"], check=True)
    span = time.perf_counter() - started
    previous = 2.0
    rng = random.Random(1)
    for i in range(n):
        value = 3.0 + i
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(out), str(value)])
        time.sleep(rng.uniform(0.1, span * 1.1))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        now = results_value(out)
        if now == previous or now == value:
            tally.add("kill -9 while writing results", "correct", "")
            previous = now
        else:
            tally.add("kill -9 while writing results", "data loss", f"after kill {i}: {now}")
    leftovers = [p.name for p in tmp.iterdir() if ".tmp-" in p.name and p.name.startswith(".kill")]
    subprocess.run([sys.executable, "-c", WRITER, str(out), "0"], check=True)
    leftovers = [p.name for p in tmp.iterdir() if ".tmp-" in p.name and "kill" in p.name]
    tally.add("kill -9 while writing results", "correct" if not leftovers else "data loss",
              f"temporary files left: {leftovers}")


def concurrent_writers(tally: Tally, tmp: Path, source: str, n: int) -> None:
    for i in range(n):
        out = tmp / f"same{i % 3}.h5"
        args = [EXE, "com", source, "--rotation", "0", "--out", str(out)]
        a = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        b = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ra, rb = a.communicate(timeout=120), b.communicate(timeout=120)
        codes = sorted((a.returncode, b.returncode))
        errors = ra[1] + rb[1]
        from napari_4dstem_rvae.results import read_results

        try:
            complete = bool(read_results(out).maps)
        except ValueError:
            complete = False
        if codes == [0, 0] and complete:
            outcome = "correct"  # one after the other
        elif codes == [0, 2] and complete and "being written by another process" in errors:
            outcome = "clean error"
        elif "Traceback" in errors:
            outcome = "crash"
        else:
            outcome = "data loss" if not complete else "unclear error"
        tally.add("two writers of one output", outcome, f"{codes} {errors[-200:]}")


def kill_during_run(tally: Tally, tmp: Path, source: str, n: int) -> None:
    import h5py

    base = [EXE, "run", source, "--bin", "16", "--threads", "1", "--seed", "3", "--epochs", "30"]
    subprocess.run(base + ["--out", str(tmp / "ref.h5")], check=True, capture_output=True)
    rng = random.Random(2)
    for i in range(n):
        out = tmp / f"killed{i}.h5"
        proc = subprocess.Popen(base + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        checkpoint = out.with_name(out.stem + ".checkpoint.pt")
        deadline = time.time() + 120
        while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        again = subprocess.run(base + ["--out", str(out)], capture_output=True, text=True)
        if again.returncode != 0:
            tally.add("kill -9 during run, run again", "crash" if "Traceback" in again.stderr else "data loss",
                      again.stderr[-200:])
            continue
        with h5py.File(tmp / "ref.h5") as ref, h5py.File(out) as got:
            same = all(np.array_equal(ref[f"rvae/{k}"][()], got[f"rvae/{k}"][()], equal_nan=True)
                       for k in ("angle", "latents"))
        tally.add("kill -9 during run, run again", "correct" if same else "silent wrong", "maps differ")


# -- the CLI with bad options ----------------------------------------------------------------------------
def cli_options(tally: Tally, tmp: Path, source: str) -> None:
    from napari_4dstem_rvae.cli import main

    digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    folder = tmp / "folder"
    folder.mkdir(exist_ok=True)
    foreign = tmp / "notes.h5"
    foreign.write_text("mine")
    cases = [
        ["info", str(tmp / "absent.h5")],
        ["info", str(folder)],
        ["info", source, "--scan-shape", "5,5"],
        ["info", source, "--scan-shape", "x"],
        ["info", str(foreign)],
        ["com", source, "--out", source],
        ["com", source, "--out", str(foreign)],
        ["com", source, "--rotation", "north", "--out", str(tmp / "c1.h5")],
        ["com", source, "--mask", "disk", "--radius", "-1", "--out", str(tmp / "c2.h5")],
        ["com", source, "--threshold", "1.5", "--out", str(tmp / "c3.h5")],
        ["com", source, "--mask", "annulus", "--inner", "9", "--outer", "2", "--unit", "px", "--out", str(tmp / "c4.h5")],
        ["run", source, "--out", source],
        ["run", source, "--out", str(folder / "x.h5"), "--epochs", "0"],
        ["run", source, "--out", str(folder / "x.h5"), "--epochs", "-4"],
        ["run", source, "--out", str(folder / "x.h5"), "--latent", "0"],
        ["run", source, "--out", str(folder / "x.h5"), "--bin", "-2"],
        ["run", source, "--out", str(folder / "x.h5"), "--bin", "7"],
        ["run", source, "--out", str(folder / "x.h5"), "--roi", str(tmp / "absent.npy")],
        ["run", source, "--out", str(folder / "x.h5"), "--roi", str(foreign)],
        ["run", source, "--out", str(folder / "x.h5"), "--resume", str(tmp / "absent.pt")],
        ["run", source, "--out", str(folder / "x.h5"), "--resume", str(foreign)],
        ["run", source, "--out", str(folder / "x.h5"), "--checkpoint-every", "0"],
        ["run", source, "--out", str(folder / "x.h5"), "--symmetry", "0"],
        ["run", source, "--out", str(folder / "x.h5"), "--restarts", "0"],
        ["run", source, "--out", str(folder / "x.h5"), "--device", "cuda"],
        ["run", source, "--out", str(folder), "--epochs", "0"],
        ["run", source, "--scan-shape", "7,7", "--out", str(folder / "x.h5")],
        ["run", source, "--scan-step", "-1", "--out", str(folder / "x.h5")],
        ["run", source, "--energy", "0", "--out", str(folder / "x.h5")],
        ["image", source, "--out", source],
        ["com", str(tmp / "absent.npy"), "--out", str(tmp / "c6.h5")],
    ]
    for args in cases:
        err, out = _io.StringIO(), _io.StringIO()
        try:
            with time_limit(120), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                code = main(args)
        except SystemExit as exc:  # argparse: usage error, exit 2
            code = exc.code
        except Hang:
            tally.add("CLI bad options", "hang", " ".join(args))
            continue
        except Exception as exc:
            tally.add("CLI bad options", "crash", f"{' '.join(args)}: {type(exc).__name__}: {exc}")
            continue
        text = err.getvalue().strip()
        lost = hashlib.sha256(Path(source).read_bytes()).hexdigest() != digest or foreign.read_text() != "mine"
        if lost:
            tally.add("CLI bad options", "data loss", " ".join(args))
        elif code == 0:
            # "--device cuda" without a GPU and similar may legitimately fall back: accepted
            # only if a warning says so
            said = "warning" in text or ("--bin" in args and "binned" in out.getvalue())  # the binning used is logged
            tally.add("CLI bad options", "correct" if said else "silent wrong",
                      f"{' '.join(args)} accepted: {text[-160:]}")
        elif "Traceback" in text:
            tally.add("CLI bad options", "crash", " ".join(args))
        else:
            lines = [line for line in text.splitlines() if line.startswith("stem-rvae: error")
                     or line.startswith("usage") is False and "error:" in line]
            tally.add("CLI bad options", "clean error" if lines else "unclear error", f"{' '.join(args)}: {text[-200:]}")


# -- numbers -----------------------------------------------------------------------------------------------
def numbers(tally: Tally, tmp: Path) -> None:
    from napari_4dstem_rvae.processing import compute_com

    rng = np.random.default_rng(4)
    for scale in (1e30, 1e36, 1e37, 3e38):
        data = (rng.random((6, 6, 16, 16)) * scale).astype(np.float32)
        reference = compute_com(data.astype(np.float64), rotation=0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = compute_com(data, rotation=0)
            same = np.allclose(result.magnitude, reference.magnitude, rtol=1e-3, atol=1e-6)
            tally.add("huge finite values", "correct" if same else "silent wrong", f"scale {scale}")
        except Exception as exc:
            tally.add("huge finite values", "crash" if not isinstance(exc, ValueError) else "wrong, warned",
                      f"scale {scale}: {exc}")
    for kind in (np.nan, np.inf, -np.inf):
        data = rng.poisson(5, (6, 6, 16, 16)).astype(np.float32)
        data[2, 3, 4, 5] = kind
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = compute_com(data, rotation=0)
        named = any("(2, 3)" in str(w.message) for w in caught)
        ok = named and not result.valid[2, 3] and np.isfinite(result.magnitude).all()
        tally.add("NaN/Inf pixels", "correct" if ok else "silent wrong", f"{kind}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer cases per group")
    args = parser.parse_args()
    n = 20 if args.quick else 60
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # the napari reader without a display
    tally = Tally()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        from napari_4dstem_rvae.io import save_dataset
        from napari_4dstem_rvae.simulate import graphene

        source = save_dataset(graphene(scan_shape=(12, 12), det_shape=(32, 32)), tmp / "scan.h5")
        for name, step in (("formats", lambda: formats(tally, tmp, n)),
                           ("checkpoints", lambda: checkpoints(tally, tmp, n)),
                           ("numbers", lambda: numbers(tally, tmp)),
                           ("cli", lambda: cli_options(tally, tmp, source)),
                           ("kills while writing", lambda: kills_while_writing(tally, tmp, n)),
                           ("concurrent writers", lambda: concurrent_writers(tally, tmp, source, max(4, n // 6))),
                           ("kill during run", lambda: kill_during_run(tally, tmp, source, 2 if args.quick else 4))):
            t = time.perf_counter()
            step()
            print(f"  ({name}: {time.perf_counter() - t:.0f} s)", flush=True)
    print()
    code = tally.report()
    print(f"\n{time.perf_counter() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
