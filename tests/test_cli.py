"""``stem-rvae`` as a user runs it, in its own process: --version, -q, exit statuses, the
progress bar on stderr, the paths on stdout, every flag with help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXE = str(Path(sys.executable).with_name("stem-rvae"))


def stem_rvae(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=timeout)


def test_version_and_help():
    from napari_4dstem_rvae import __version__

    done = stem_rvae("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"stem-rvae (napari-4dstem-rvae) {__version__}"
    done = stem_rvae("run", "--help")
    assert done.returncode == 0
    for flag in ("--pooling", "--epochs", "--bin", "--mask", "--scan-step", "--scheduler", "--out"):
        assert flag in done.stdout
    assert "(default: auto)" in done.stdout


def test_exit_statuses_usage_2_failure_1(tmp_path):
    done = stem_rvae("run")                                   # no file: usage
    assert done.returncode == 2 and "usage:" in done.stderr
    done = stem_rvae("com", str(tmp_path / "scan.h5"), "--mask", "square")   # a choice that is not one
    assert done.returncode == 2
    done = stem_rvae("info", str(tmp_path / "absent.h5"))     # the run fails: 1, one sentence
    assert done.returncode == 1
    assert done.stderr.strip().startswith("stem-rvae: error:") and "no such file" in done.stderr
    assert "Traceback" not in done.stderr


def test_quiet_prints_only_the_written_paths_and_a_bar_shows_a_long_pass(tmp_path, graphene_file):
    out = tmp_path / "out"
    done = stem_rvae("-q", "com", graphene_file, "--rotation", "0", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [str(out / "com.h5"), str(out / "com.png")]
    assert done.stderr == ""                                  # quiet: nothing but errors
    # without -q, a pass draws a progress bar on stderr (tqdm) and says what it found
    done = stem_rvae("com", graphene_file, "--rotation", "0", "--out", str(tmp_path / "again"))
    assert done.returncode == 0
    assert "stem-rvae: COM:" in done.stderr and "%|" in done.stderr        # tqdm's bar
    assert done.stdout.splitlines() == [str(tmp_path / "again" / "com.h5"), str(tmp_path / "again" / "com.png")]


@pytest.mark.slow
def test_a_training_run_shows_its_epochs_on_stderr_and_its_files_on_stdout(tmp_path, graphene_file):
    done = stem_rvae("run", graphene_file, "--epochs", "3", "--bin", "16", "--out", str(tmp_path / "r.h5"), "-v")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "epoch 3/3" in done.stderr and "training" in done.stderr
    assert done.stdout.splitlines() == [str(tmp_path / "r.h5"), str(tmp_path / "r_overview.png")]


def test_the_headless_install_runs_without_napari_or_qt(tmp_path, graphene_file):
    """A cluster node with only the core: the CLI's COM pass loads neither napari nor Qt nor
    magicgui (checked in the process that runs it)."""
    code = ("import sys; from napari_4dstem_rvae.cli import main; "
            f"code = main(['-q', 'com', {graphene_file!r}, '--rotation', '0', '--out', {str(tmp_path / 'c')!r}]); "
            "heavy = [m for m in ('napari', 'qtpy', 'PyQt6', 'magicgui', 'superqt') if m in sys.modules]; "
            "print('HEAVY', heavy); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout


def test_preprocess_writes_a_new_file_never_the_input(tmp_path, graphene_file):
    from napari_4dstem_rvae import read

    out = tmp_path / "binned.h5"
    done = stem_rvae("-q", "preprocess", graphene_file, "--bin-detector", "2", "--subtract-mean", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    binned = read(out)
    assert binned.shape == (8, 8, 16, 16)
    assert [p["step"] for p in binned.provenance][-2:] == ["bin", "subtract_mean_pattern"]
    np.testing.assert_allclose(np.asarray(binned.data).mean(axis=(0, 1)), 0, atol=1e-3)
    before = Path(graphene_file).read_bytes()
    done = stem_rvae("preprocess", graphene_file, "--bin-detector", "2", "--out", graphene_file)
    assert done.returncode == 1 and "is the input" in done.stderr
    assert Path(graphene_file).read_bytes() == before
