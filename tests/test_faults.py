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
        assert main(["run", source, *RUN[1:], "--epochs", "1", "--out", str(out)]) == 1
        assert "is the input" in capsys.readouterr().err
    assert main(["com", source, "--out", str(Path(source).parent)]) == 0  # a folder output next to it is fine
    assert digest(source) == before


@pytest.mark.slow  # as root the read-only folder is writable: 50 epochs train
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
            if out.parent == locked and os.geteuid() == 0:
                continue  # root writes anywhere: nothing to refuse (the run would train 50 epochs)
            start = time.perf_counter()
            code = main(["run", source, *RUN[1:], "--epochs", "50", "--out", str(out)])
            err = capsys.readouterr().err
            assert code == 1 and message in err, err
            assert time.perf_counter() - start < 5  # refused before reading or training
        assert notes.read_bytes() == b"not ours"
    finally:
        locked.chmod(0o700)


def test_a_second_writer_of_the_same_output_is_refused(source, tmp_path, capsys):
    """Another writer (here a thread of this process holding the claim, as another process
    would) keeps the output: the run is refused before any work; once released, it runs."""
    import threading

    from napari_4dstem_rvae.results import claim_output

    out = tmp_path / "r.h5"
    held, release = threading.Event(), threading.Event()

    def other_writer():
        with claim_output(out, [source]):
            held.set()
            release.wait(60)

    writer = threading.Thread(target=other_writer)
    writer.start()
    try:
        assert held.wait(30)
        assert main(["com", source, "--out", str(tmp_path), "--rotation", "0"]) == 0  # another file: fine
        assert main(["run", source, *RUN[1:], "--epochs", "1", "--out", str(out)]) == 1
        assert "is being written by another process" in capsys.readouterr().err
    finally:
        release.set()
        writer.join()
    assert main(["run", source, *RUN[1:], "--epochs", "1", "--out", str(out)]) == 0  # released


def test_epochs_zero_is_refused(source, tmp_path, capsys):
    assert main(["run", source, *RUN[1:], "--epochs", "0", "--out", str(tmp_path / "r.h5")]) == 1
    assert "untrained" in capsys.readouterr().err
    assert not (tmp_path / "r.h5").exists()


# -- kill -9 and resume ------------------------------------------------------------------------
@pytest.mark.slow
def test_kill_during_training_then_the_same_command_resumes_to_identical_maps(source, tmp_path):
    from napari_4dstem_rvae.cli import main

    args = [EXE, "run", source, *RUN[1:], "--epochs", "24"]
    assert main([*args[1:], "--out", str(tmp_path / "ref.h5"), "--quiet"]) == 0   # the uninterrupted run, here
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
    assert 1 <= saved_epoch < 24                             # killed mid-training, after a checkpoint
    again = subprocess.run(args + ["--out", str(tmp_path / "killed.h5")], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "continuing from checkpoint" in again.stderr
    with h5py.File(tmp_path / "ref.h5") as ref, h5py.File(tmp_path / "killed.h5") as resumed:
        for name in ("angle", "latents", "novelty"):
            np.testing.assert_array_equal(resumed[f"rvae/{name}"][()], ref[f"rvae/{name}"][()])
    assert not checkpoint.exists()                           # removed once the results are written


@pytest.mark.slow  # kill -9 of writer processes
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


# -- readers that verify what they can --------------------------------------------------------
sys.path.insert(0, str(Path(__file__).parent / "io"))
from test_readers import cube, merlin_expected, rsciio_signal, write_hdr, write_mib  # noqa: E402


def read_warnings(path, **options):
    import warnings

    from napari_4dstem_rvae import io

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = io.read(path, **options)
    return ds, [str(w.message) for w in caught]


def test_truncated_mib_says_how_many_frames_are_complete_and_what_it_read(tmp_path):
    from napari_4dstem_rvae import io

    frames = cube((8, 6, 8), np.uint16)
    write_mib(tmp_path / "full.mib", frames)
    raw = (tmp_path / "full.mib").read_bytes()
    frame = len(raw) // 8
    (tmp_path / "cut.mib").write_bytes(raw[:7 * frame + 100])    # 7 complete frames and a piece
    write_hdr(tmp_path / "cut.hdr", 8, scan=(2, 4))
    ds, said = read_warnings(tmp_path / "cut.mib")
    assert ds.shape == (1, 4, 6, 8)
    np.testing.assert_array_equal(np.asarray(ds.data), merlin_expected(frames[:4], (1, 4)))
    assert any("7 complete frames" in w and "(2, 4)" in w and "hdr ScanX/ScanY" in w for w in said), said
    # all 7 complete frames as a line scan, either way round
    for scan in ((1, 7), (7, 1)):
        ds, _ = read_warnings(tmp_path / "cut.mib", scan_shape=scan)
        assert ds.shape == scan + (6, 8)
        np.testing.assert_array_equal(np.asarray(ds.data), merlin_expected(frames[:7], scan))
    with pytest.raises(io.ReadError, match="fewer than one scan line"):
        io.read(tmp_path / "cut.mib", scan_shape=(1, 8))
    (tmp_path / "junk.mib").write_bytes(b"MQ1,000001,abc,01,0008" + bytes(100))
    with pytest.raises(io.ReadError, match="header is damaged"):
        io.read(tmp_path / "junk.mib")


def test_mutated_blockfile_headers_never_give_a_wrong_array(tmp_path):
    import random
    import warnings

    from rsciio import blockfile

    from napari_4dstem_rvae import io

    data = cube((3, 4, 8, 8), np.uint8)
    path = tmp_path / "astar.blo"
    blockfile.file_writer(str(path), rsciio_signal(data, sig=((0.02, "cm"), (0.02, "cm"))),
                          show_progressbar=False)
    raw = path.read_bytes()
    rng = random.Random(0)
    outcomes = {"same": 0, "refused": 0}
    for trial in range(60):
        damaged = bytearray(raw)
        at = rng.randrange(0, 40)   # ID, magic, offsets, detector and scan sizes
        damaged[at] = (damaged[at] + rng.randrange(1, 256)) % 256
        bad = tmp_path / f"bad{trial}.blo"
        bad.write_bytes(bytes(damaged))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                got = np.asarray(io.read(bad).data)
        except io.ReadError as exc:
            assert str(bad) in str(exc)
            outcomes["refused"] += 1
            continue
        np.testing.assert_array_equal(got, data)   # read: then it is the right array
        outcomes["same"] += 1
    assert outcomes["refused"] > 20


def test_truncated_empad_raw_is_refused_with_sizes(tmp_path):
    from test_readers import empad_frames, write_empad_raw

    from napari_4dstem_rvae import io

    write_empad_raw(tmp_path / "data.raw", empad_frames((2, 3)))
    (tmp_path / "a.xml").write_text('<root><pix_x>3</pix_x><pix_y>2</pix_y><raw_file filename="data.raw"/></root>')
    raw = (tmp_path / "data.raw").read_bytes()
    (tmp_path / "data.raw").write_bytes(raw[:-100])
    with pytest.raises(io.ReadError, match=r"truncated: 6 frames .* 399360 bytes, the file has 399260 bytes"):
        io.read(tmp_path / "a.xml")


def test_huge_but_finite_float32_values_are_not_called_nan(tmp_path):
    from napari_4dstem_rvae.processing import compute_com, virtual_images
    from napari_4dstem_rvae.processing.virtual import annular_dark_field

    data = (np.random.default_rng(0).random((8, 8, 16, 16)) * 3e38).astype(np.float32)
    result = compute_com(data, rotation=0)
    assert np.isfinite(result.magnitude).all() and result.valid.all()
    images = virtual_images(data, {"adf": annular_dark_field()})
    assert np.isfinite(images["adf"]).all() and images["adf"].max() > 1e38


def test_nan_patterns_outside_the_training_mask_do_not_stop_a_run(tmp_path, capsys):
    data = np.asarray(graphene(scan_shape=(10, 10), det_shape=(16, 16)).data, dtype=np.float32)
    data[0, 0] = np.nan
    data[4, 6, 2, 2] = np.inf
    np.save(tmp_path / "scan.npy", data)
    roi = np.ones((10, 10), bool)
    roi[0, 0] = roi[4, 6] = False
    np.save(tmp_path / "roi.npy", roi)
    out = tmp_path / "r.h5"
    assert main(["run", str(tmp_path / "scan.npy"), *RUN[1:], "--epochs", "2", "--roi", str(tmp_path / "roi.npy"),
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "(row 0, col 0), (row 4, col 6)" in err          # the positions are named
    with h5py.File(out) as f:
        angle = f["rvae/angle"][()]
    assert np.isnan(angle[0, 0]) and np.isnan(angle[4, 6]) and np.isfinite(np.delete(angle.ravel(), [0, 46])).all()
    # inside the training mask they stop it, naming the first
    assert main(["run", str(tmp_path / "scan.npy"), *RUN[1:], "--epochs", "2", "--out", str(tmp_path / "s.h5")]) == 1
    assert "(row 0, col 0)" in capsys.readouterr().err


def test_diverged_training_names_the_step_where_it_happened():
    from napari_4dstem_rvae.rvae import RVAEConfig, Trainer, TrainingDiverged

    ds = graphene(scan_shape=(6, 6), det_shape=(16, 16))
    trainer = Trainer(ds, RVAEConfig(epochs=3, batch_size=8, encoder_hidden=(8,), decoder_hidden=(8, 8), threads=1))
    real = trainer.model.loss

    def loss(*args, **kwargs):  # the 7th optimisation step (the first of epoch 2) goes wrong
        value, parts = real(*args, **kwargs)
        return (value * float("nan") if trainer.model.training and trainer.step == 6 else value), parts

    trainer.model.loss = loss
    with pytest.raises(TrainingDiverged, match=r"at step 7 \(epoch 2\)"):
        for _ in trainer.run():
            pass


def test_com_output_that_is_the_input_or_a_file_is_refused(tmp_path, capsys):
    data = tmp_path / "scan.npy"
    np.save(data, np.asarray(graphene(scan_shape=(6, 6), det_shape=(16, 16)).data))
    before = digest(data)
    assert main(["com", str(data), "--out", str(data)]) == 1
    assert "is the input" in capsys.readouterr().err
    (tmp_path / "notes").write_text("mine")
    assert main(["com", str(data), "--out", str(tmp_path / "notes")]) == 1
    assert "not a folder" in capsys.readouterr().err
    assert digest(data) == before and (tmp_path / "notes").read_text() == "mine"


def test_resume_and_fresh_flags(source, tmp_path, capsys):
    out = tmp_path / "r.h5"
    base = ["run", source, *RUN[1:], "--epochs", "4", "--checkpoint-every", "1"]
    assert main([*base, "--out", str(tmp_path / "first.h5")]) == 0
    assert main([*base, "--out", str(out), "--resume", str(tmp_path / "absent.pt")]) == 1
    assert "no such checkpoint" in capsys.readouterr().err
    assert main([*base, "--out", str(out), "--fresh"]) == 0
    assert "continued from" not in capsys.readouterr().out


def test_hdf5_chunks_that_are_not_stored_are_not_read_as_zeros(tmp_path):
    from napari_4dstem_rvae import io

    data = np.arange(4 * 5 * 8 * 8, dtype=np.uint16).reshape(4, 5, 8, 8) + 1
    path = tmp_path / "interrupted.h5"
    with h5py.File(path, "w") as f:
        dset = f.create_dataset("data", shape=data.shape, dtype=data.dtype, chunks=(1, 5, 8, 8))
        dset[:3] = data[:3]                          # the writer stopped before the last scan row
    with pytest.raises(io.ReadError, match=r"1 of the 4 chunks of /data cannot be found"):
        io.read(path)
    got = np.asarray(io.read(path, fill_missing=True).data)
    np.testing.assert_array_equal(got[:3], data[:3])
    assert not got[3].any()


def test_a_truncated_mib_whose_frames_still_make_a_scan_says_the_hdr_promised_more(tmp_path):
    """48 of 64 announced frames still factorise (6 × 8, or a guess from timestamps): the read
    succeeds but says that the acquisition is incomplete."""
    frames = cube((64, 6, 8), np.uint16)
    write_mib(tmp_path / "full.mib", frames)
    raw = (tmp_path / "full.mib").read_bytes()
    (tmp_path / "cut.mib").write_bytes(raw[:48 * (len(raw) // 64)])
    write_hdr(tmp_path / "cut.hdr", 64)                       # no ScanX/ScanY: the scan is guessed
    ds, said = read_warnings(tmp_path / "cut.mib", scan_shape=(6, 8))
    assert ds.shape == (6, 8, 6, 8)
    assert any("48 complete frames of the 64 that its .hdr announces" in w for w in said), said
    ds, said = read_warnings(tmp_path / "full.mib", scan_shape=(8, 8))   # complete: nothing said
    assert not any("announces" in w for w in said), said


def test_a_scheduler_address_that_refuses_is_named_at_once_and_a_listening_one_is_tried():
    """A port where nothing listens (or a host name that does not resolve) is one sentence
    straight away, not after dask's connection timeout; a port that accepts connections is left
    to dask's client."""
    import socket

    from napari_4dstem_rvae.workflows.cluster import connect_scheduler, refused

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert refused(f"tcp://127.0.0.1:{port}") is None and refused(f"127.0.0.1:{port}") is None
    # the socket is closed: the same port now refuses
    assert refused(f"tcp://127.0.0.1:{port}") == f"127.0.0.1:{port} refuses connections"
    assert refused("tcp://no-such-host.invalid:8786").startswith("no-such-host.invalid: ")
    assert refused("inproc://abc") is None                      # not TCP: dask decides
    with pytest.raises(ValueError, match=rf"^--scheduler tcp://127.0.0.1:{port}: no dask scheduler answers there "
                                         rf"\(127.0.0.1:{port} refuses connections\)$"):
        with connect_scheduler(f"tcp://127.0.0.1:{port}", "--scheduler"):
            pass
