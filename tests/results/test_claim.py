"""The output guard: never over an input or a foreign file, one writer per path (another thread
or process is refused), re-entrant in its own thread, and portable (no POSIX-only module)."""

import subprocess
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest

from napari_4dstem_rvae import Calibration
from napari_4dstem_rvae.results import (
    claim_output,
    is_results_file,
    read_results,
    same_or_inside,
    write_atom_results,
    write_layer_maps,
    write_results,
)

BUSY = "is being written by another process; wait for it to finish or choose another output"

CLAIM_IN_SUBPROCESS = """
import sys
from napari_4dstem_rvae.results import claim_output
try:
    with claim_output(sys.argv[1]):
        print("claimed")
except ValueError as exc:
    print("refused:", exc)
"""


def _write(path, **kwargs):
    return write_results(path, calibration=Calibration(), scan_shape=(3, 4),
                         images={"sum": np.arange(12.0).reshape(3, 4)}, **kwargs)


def _in_thread(call):
    """Run ``call`` in another thread: ``{"done": its value}`` or ``{"error": the ValueError}``."""
    out = {}

    def run():
        try:
            out["done"] = call()
        except ValueError as exc:
            out["error"] = str(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return out


def _claim_from_thread(path):
    def claim():
        with claim_output(path):
            return True

    return _in_thread(claim)


def test_a_nested_claim_in_the_same_thread_passes(tmp_path):
    out = tmp_path / "r.h5"
    with claim_output(out, what="--out") as outer:
        with claim_output(out, what="results file") as inner:      # e.g. write_results inside a workflow
            assert inner == outer == str(out)
            assert BUSY in _claim_from_thread(out).get("error", "")
        assert BUSY in _claim_from_thread(out).get("error", "")      # still held by the outer claim
        _write(out)                                                   # the writer's own claim nests
    assert _claim_from_thread(out) == {"done": True}               # released with the outer claim
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.h5"]    # no lock file left behind


def test_a_nested_claim_still_checks_its_inputs(tmp_path):
    out = tmp_path / "r.h5"
    with claim_output(out):
        with pytest.raises(ValueError, match="is the input"), claim_output(out, [out]):
            pass
        with pytest.raises(ValueError, match="or inside it"), claim_output(out, [tmp_path]):  # an input folder
            pass
        with claim_output(out, [tmp_path / "scan.h5"]):
            pass


def test_a_claim_from_another_thread_is_refused(tmp_path):
    out = tmp_path / "r.h5"
    with claim_output(out):
        refused = _claim_from_thread(out)
    assert refused["error"] == f"--out {out} {BUSY}"


def test_a_claim_from_another_process_is_refused(tmp_path):
    out = tmp_path / "r.h5"
    run = [sys.executable, "-c", CLAIM_IN_SUBPROCESS, str(out)]
    with claim_output(out):
        held = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert held.stdout.strip() == f"refused: --out {out} {BUSY}", held.stderr
    free = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert free.stdout.strip() == "claimed", free.stderr


def test_write_results_refuses_the_input_and_a_foreign_file(tmp_path):
    source = tmp_path / "scan.h5"
    source.write_bytes(b"input data")
    with pytest.raises(ValueError) as err:
        _write(source, inputs=[source])
    assert str(err.value) == (f"results file {source} is the input {source} (or inside it); choose another "
                              "output so that the input is not overwritten")
    foreign = tmp_path / "notes.h5"
    foreign.write_bytes(b"not ours")
    with pytest.raises(ValueError) as err:
        _write(foreign, what="--out")
    assert str(err.value) == (f"--out {foreign} exists and is not a results file of napari-4dstem-rvae; it is "
                              "left untouched — choose another output name")
    assert source.read_bytes() == b"input data" and foreign.read_bytes() == b"not ours"
    inside = tmp_path / "data"
    inside.mkdir()
    with pytest.raises(ValueError, match="is the input"):
        _write(inside / "r.h5", inputs=[inside])                  # inside an input folder
    assert same_or_inside(inside / "r.h5", inside) and not same_or_inside(tmp_path / "r.h5", inside)


def test_writing_over_our_own_results_file_is_allowed(tmp_path):
    out = tmp_path / "r.h5"
    _write(out)
    _write(out, inputs=[tmp_path / "scan.h5"])
    assert is_results_file(out) and read_results(out).get("sum").values.shape == (3, 4)


def test_every_writer_claims_its_output(tmp_path):
    foreign = tmp_path / "notes.h5"
    foreign.write_bytes(b"not ours")
    layer = {"name": "angle", "values": np.zeros((3, 4)), "map": "angle", "unit": "rad"}
    with pytest.raises(ValueError, match="not a results file"):
        write_layer_maps(foreign, [layer])
    with pytest.raises(ValueError, match="is the input"):
        write_layer_maps(tmp_path / "maps.h5", [layer], inputs=[tmp_path / "maps.h5"])
    result = types.SimpleNamespace(columns=lambda: {})
    with pytest.raises(ValueError, match="not a results file"):
        write_atom_results(foreign, result, series=None)
    with claim_output(tmp_path / "atoms.h5"):                   # held here: another thread's writer waits its turn
        refused = _in_thread(lambda: write_atom_results(tmp_path / "atoms.h5", result, series=None))
    assert refused["error"] == f"results file {tmp_path / 'atoms.h5'} {BUSY}"
    assert foreign.read_bytes() == b"not ours"
    write_layer_maps(tmp_path / "maps.h5", [layer])
    assert read_results(tmp_path / "maps.h5").get("angle").unit == "rad"


def test_write_results_without_the_posix_module(tmp_path):
    out = tmp_path / "r.h5"
    code = f"""
import sys, warnings
sys.modules["fcntl"] = None          # as on Windows: importing fcntl fails
warnings.simplefilter("ignore")
import numpy as np
from napari_4dstem_rvae import Calibration
from napari_4dstem_rvae.results import read_results, write_results
write_results({str(out)!r}, calibration=Calibration(), scan_shape=(3, 4), images={{"sum": np.ones((3, 4))}})
write_results({str(out)!r}, calibration=Calibration(), scan_shape=(3, 4), images={{"sum": np.ones((3, 4))}})
print(read_results({str(out)!r}).get("sum").values.sum(), "fcntl" in sys.modules and sys.modules["fcntl"])
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["12.0", "None"]
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["r.h5"]
