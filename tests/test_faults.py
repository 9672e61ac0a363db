"""Nothing lost, nothing silent: the fast cases of the fault suite (benchmarks/fault_suite.py runs
all of them, with many more kills and mutations, and prints the tally).

Each case plays a hostile user: an output that is the input, a second writer, kill -9 in the
middle of training or of writing, flipped bytes in a checkpoint, files that lie about their size."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from napari_4dstem_rvae.cli import main
from napari_4dstem_rvae.io import save_dataset
from napari_4dstem_rvae.simulate import graphene

EXE = str(Path(sys.executable).with_name("stem-rvae"))
RUN = ["run", "--bin", "16", "--threads", "1", "--seed", "3"]


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    return save_dataset(graphene(scan_shape=(12, 12), det_shape=(32, 32)), folder / "scan.h5")


# -- outputs ---------------------------------------------------------------------------------
def test_output_equal_to_the_input_is_refused_and_the_input_kept(source, tmp_path, capsys):
    before = digest(source)
    link = tmp_path / "link.h5"
    link.symlink_to(source)
    for out in (source, link):
        assert main(["run", source, *RUN[1:], "--epochs", "1", "--out", str(out)]) == 2
        assert "is the input" in capsys.readouterr().err
    assert main(["com", source, "--out", str(Path(source).parent)]) == 0  # a folder output next to it is fine
    assert digest(source) == before


def test_foreign_file_folder_and_unwritable_outputs_are_refused_before_any_work(source, tmp_path, capsys):
    notes = tmp_path / "notes.h5"
    notes.write_bytes(b"not ours")
    (tmp_path / "folder.h5").mkdir()
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        for out, message in ((notes, "not a results file"), (tmp_path / "folder.h5", "is a folder"),
                             (locked / "r.h5", "cannot be written")):
            start = time.perf_counter()
            code = main(["run", source, *RUN[1:], "--epochs", "50", "--out", str(out)])
            err = capsys.readouterr().err
            if out.parent == locked and os.geteuid() == 0:
                continue  # root writes anywhere: nothing to refuse
            assert code == 2 and message in err, err
            assert time.perf_counter() - start < 5  # refused before reading or training
        assert notes.read_bytes() == b"not ours"
    finally:
        locked.chmod(0o700)


def test_a_second_writer_of_the_same_output_is_refused(source, tmp_path, capsys):
    from napari_4dstem_rvae.results import claim_output

    out = tmp_path / "r.h5"
    with claim_output(out, [source]):
        assert main(["com", source, "--out", str(tmp_path), "--rotation", "0"]) == 0  # another file: fine
        assert main(["run", source, *RUN[1:], "--epochs", "1", "--out", str(out)]) == 2
        assert "being written by another process" in capsys.readouterr().err
    assert main(["run", source, *RUN[1:], "--epochs", "1", "--out", str(out)]) == 0  # released


def test_epochs_zero_is_refused(source, tmp_path, capsys):
    assert main(["run", source, *RUN[1:], "--epochs", "0", "--out", str(tmp_path / "r.h5")]) == 2
    assert "untrained" in capsys.readouterr().err
    assert not (tmp_path / "r.h5").exists()


# -- kill -9 and resume ------------------------------------------------------------------------
def test_kill_during_training_then_the_same_command_resumes_to_identical_maps(source, tmp_path):
    args = [EXE, "run", source, *RUN[1:], "--epochs", "40"]
    assert subprocess.run(args + ["--out", str(tmp_path / "ref.h5")], capture_output=True).returncode == 0
    proc = subprocess.Popen(args + ["--out", str(tmp_path / "killed.h5")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "killed.checkpoint.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed.h5").exists()           # no half-written results under the final name
    from napari_4dstem_rvae.rvae import read_checkpoint

    saved_epoch = read_checkpoint(checkpoint)["epoch"]
    assert 1 <= saved_epoch < 40                             # killed mid-training, after a checkpoint
    again = subprocess.run(args + ["--out", str(tmp_path / "killed.h5")], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "continued from checkpoint" in again.stdout
    with h5py.File(tmp_path / "ref.h5") as ref, h5py.File(tmp_path / "killed.h5") as resumed:
        for name in ("angle", "latents", "novelty"):
            np.testing.assert_array_equal(resumed[f"rvae/{name}"][()], ref[f"rvae/{name}"][()])
    assert not checkpoint.exists()                           # removed once the results are written


def test_kill_during_results_writing_leaves_the_old_or_the_new_file(tmp_path):
    """The writer in a child process is killed at random moments; the final path always holds
    a complete results file (the previous one or the new one), never a part."""
    code = (
        "import sys, numpy as np\n"
        "from napari_4dstem_rvae.results import write_results\n"
        "v = float(sys.argv[2])\n"
        "write_results(sys.argv[1], calibration=None, scan_shape=(256, 256),\n"
        "              images={f'virtual{i}': np.full((256, 256), v) for i in range(40)})\n"
    )
    out = tmp_path / "r.h5"
    assert subprocess.run([sys.executable, "-c", code, str(out), "1"]).returncode == 0
    rng = np.random.default_rng(0)
    seen = set()
    for value in range(2, 8):
        proc = subprocess.Popen([sys.executable, "-c", code, str(out), str(value)])
        time.sleep(float(rng.uniform(0.3, 1.5)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with h5py.File(out, "r") as f:
            values = {float(f[f"images/virtual{i}"][0, 0]) for i in range(40)}
        assert len(values) == 1                               # one complete file, not a mix
        seen |= values
    assert subprocess.run([sys.executable, "-c", code, str(out), "9"]).returncode == 0
    with h5py.File(out, "r") as f:
        assert float(f["images/virtual0"][0, 0]) == 9.0
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]  # the killed writers' leftovers are gone


# -- checkpoints ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from napari_4dstem_rvae.rvae import RVAEConfig, Trainer

    ds = graphene(scan_shape=(6, 6), det_shape=(16, 16))
    trainer = Trainer(ds, RVAEConfig(epochs=1, encoder_hidden=(8,), decoder_hidden=(8, 8), threads=1))
    for _ in trainer.run():
        pass
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    trainer.save(path)
    return path, ds


def test_flipped_bytes_in_a_checkpoint_are_detected(checkpoint, tmp_path):
    from napari_4dstem_rvae.rvae import load_checkpoint

    path, ds = checkpoint
    raw = bytearray(path.read_bytes())
    rng = np.random.default_rng(1)
    for trial in range(20):
        damaged = bytearray(raw)
        at = int(rng.integers(len(raw) // 4, len(raw)))
        damaged[at] ^= 0xFF
        bad = tmp_path / f"bad{trial}.pt"
        bad.write_bytes(bytes(damaged))
        with pytest.raises(ValueError, match=r"damaged|not a readable") as info:
            load_checkpoint(bad, ds)
        assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_edited_but_well_formed_checkpoints_are_refused_in_one_sentence(checkpoint, tmp_path):
    from napari_4dstem_rvae.rvae import load_checkpoint, read_checkpoint, write_checkpoint

    path, ds = checkpoint
    edits = {
        "train_index": lambda s: s.update(train_index=torch.tensor([0, 10_000])),
        "det_shape": lambda s: s.update(det_shape=[16, -3]),
        "epoch": lambda s: s.update(epoch=-1),
        "config": lambda s: s["config"].update(latent_dim=7),
        "weights": lambda s: s["model"].update({k: v[:, :1] for k, v in s["model"].items() if v.ndim == 2}),
        "nan": lambda s: s["model"].update({k: v * float("nan") for k, v in s["model"].items() if v.ndim == 2}),
        "plan": lambda s: s.update(plan=torch.tensor([99_999]), position=0),
    }
    for name, edit in edits.items():
        state = read_checkpoint(path)
        state.pop("_path")
        edit(state)
        edited = tmp_path / f"{name}.pt"
        write_checkpoint({k: v for k, v in state.items() if k not in ("format", "version")}, edited)
        with pytest.raises(ValueError) as info:
            load_checkpoint(edited, ds)
        assert str(edited) in str(info.value), (name, info.value)
