"""Beyond one process (#14, the parts built so far): the COM pass and the encoding of every
pattern on a dask cluster (a LocalCluster of worker processes here), with maps equal to the
single-process run, and a worker killed with SIGKILL during encoding survived."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from napari_4dstem_rvae.io.emd_writer import save_dataset
from napari_4dstem_rvae.simulate import graphene


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c, \
            Client(c) as client:
        yield client


@pytest.fixture(scope="module")
def trained():
    from napari_4dstem_rvae.rvae import fit

    ds = graphene(scan_shape=(12, 12), det_shape=(32, 32), seed=2)
    return ds, fit(ds, epochs=3, threads=1, seed=0)


@pytest.mark.slow
def test_encoding_on_the_cluster_equals_one_process(cluster, trained):
    from napari_4dstem_rvae.rvae import encode
    from napari_4dstem_rvae.rvae.distributed import encode_on_cluster

    ds, result = trained
    ref = encode(result.model, ds, novelty=True)
    maps = encode_on_cluster(result.model, ds, cluster, novelty=True)
    for name in ("angle", "angle_std", "angle_concentration", "latents", "latents_std", "novelty"):
        # the novelty's float32 projections are summed over the workers' blocks: float32 rounding apart
        tol = 2e-5 if name == "novelty" else 1e-6
        np.testing.assert_allclose(getattr(maps, name), getattr(ref, name), rtol=tol, atol=tol, err_msg=name)


@pytest.mark.slow
def test_a_worker_killed_during_encoding_is_survived(cluster, trained, monkeypatch):
    from napari_4dstem_rvae.rvae import distributed, encode

    ds, result = trained
    monkeypatch.setattr(distributed, "TASK_BYTES", 1)   # one scan row per task: 12 tasks over 2 workers
    killed = []

    def kill_one(futures):
        pids = cluster.run(os.getpid)
        address, pid = sorted(pids.items())[0]
        os.kill(pid, signal.SIGKILL)                     # kill -9 of a worker process, work in flight
        killed.append(address)

    maps = distributed.encode_on_cluster(result.model, ds, cluster, novelty=True, submitted=kill_one)
    assert killed
    ref = encode(result.model, ds, novelty=True)
    np.testing.assert_allclose(maps.latents, ref.latents, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(maps.novelty, ref.novelty, rtol=2e-5, atol=2e-5)  # float32 sums over blocks


@pytest.mark.slow
def test_stem_rvae_run_with_local_workers_equals_one_process(tmp_path):
    ds = graphene(scan_shape=(12, 12), det_shape=(64, 64), seed=3)   # binned ×2 by the workers
    source = save_dataset(ds, tmp_path / "scan.h5")
    exe = Path(sys.executable).with_name("stem-rvae")
    common = ["run", source, "--bin", "32", "--epochs", "3", "--seed", "1", "--threads", "1"]
    from napari_4dstem_rvae.cli import main

    assert main([*common, "--quiet", "--out", str(tmp_path / "one.h5")]) == 0   # one process: this one
    two = subprocess.run([str(exe), *common, "--workers", "2", "--reduced", "always", "--out", str(tmp_path / "two.h5")],
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    log = two.stderr.replace("\r", "\n")
    assert "stem-rvae: dask: " in log and ", 2 workers" in log
    # the binned patterns were written once to a store that training and encoding read, then removed
    assert f"reduced patterns: wrote {tmp_path / 'two.reduced.zarr'}" in log
    assert not (tmp_path / "two.reduced.zarr").exists()
    # the COM pass and the encoding show the cluster's tasks as they finish, up to the last one
    for stage in ("COM", "encoding"):
        counts = re.findall(rf"stem-rvae: {stage} on \S+: .*?(\d+)/(\d+)", log)
        assert counts and counts[-1][0] == counts[-1][1], log[-3000:]
    with h5py.File(tmp_path / "one.h5", "r") as a, h5py.File(tmp_path / "two.h5", "r") as b:
        for name in ("angle", "latents", "com/com_x", "com/com_y"):
            np.testing.assert_allclose(b[name][()], a[name][()], rtol=1e-6, atol=1e-6, err_msg=name)
    bad = subprocess.run([str(exe), *common, "--workers", "0", "--out", str(tmp_path / "x.h5")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "--workers must be at least 1" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_torchrun_two_processes_train_the_model_one_process_trains(tmp_path):
    """``torchrun --nproc_per_node 2 -m napari_4dstem_rvae.cli run`` (gloo on CPU): the two ranks
    train one model on their shares of every minibatch (and of its sampling noise); rank 0
    alone writes the results and prints; the maps are those of one process with the same data
    and seed, up to the order of floating-point sums."""
    ds = graphene(scan_shape=(16, 16), det_shape=(64, 64), seed=3)
    source = save_dataset(ds, tmp_path / "scan.h5")
    common = ["run", source, "--bin", "32", "--epochs", "12", "--seed", "1"]
    from napari_4dstem_rvae.cli import main

    assert main([*common, "--threads", "2", "--quiet", "--out", str(tmp_path / "one.h5")]) == 0  # this process
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "-m", "napari_4dstem_rvae.cli", *common, "--reduced", "always",
                          "--out", str(tmp_path / "two.h5")],
                         capture_output=True, text=True, timeout=400)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "training on 2 processes together (torchrun, gloo; 1 threads each)" in two.stderr
    assert two.stderr.count("stem-rvae: results: ") == 1     # one rank speaks and writes
    assert two.stdout.splitlines() == [str(tmp_path / "two.h5"), str(tmp_path / "two_overview.png")]
    assert two.stderr.count("reduced patterns: wrote") == 1  # rank 0 wrote the store, rank 1 waited and read it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.h5", "one_overview.png", "scan.h5",
                                                          "two.h5", "two_overview.png"]  # no checkpoint left
    with h5py.File(tmp_path / "one.h5", "r") as a, h5py.File(tmp_path / "two.h5", "r") as b:
        assert b["rvae"].attrs["best_epoch"] == a["rvae"].attrs["best_epoch"]
        assert b["rvae"].attrs["n_train"] == a["rvae"].attrs["n_train"]
        # measured: 2e-5 rad and 6e-6 apart after 48 steps; with each rank drawing its own noise: 3 rad and 0.2
        turn = b["rvae/angle"][()] - a["rvae/angle"][()]
        assert np.abs(np.angle(np.exp(1j * turn))).max() < 1e-3
        np.testing.assert_allclose(b["rvae/latents"][()], a["rvae/latents"][()], rtol=0, atol=1e-4)
        np.testing.assert_allclose(b["rvae/novelty"][()], a["rvae/novelty"][()], rtol=1e-4, atol=1e-4)


def test_reduced_store_is_written_once_reused_after_a_crash_and_never_over_foreign_files(tmp_path):
    import dask.array as da

    from napari_4dstem_rvae import read
    from napari_4dstem_rvae.io.reduced import remove_reduced_store
    from napari_4dstem_rvae.processing.chain import prepare_for_rvae
    from napari_4dstem_rvae.workflows.inputs import prepared_data

    def prepared(store, mode):
        said = []
        events = prepared_data(lazy, 2, store, mode)
        while True:
            try:
                said.append(next(events).text)
            except StopIteration as end:
                return end.value, said

    ds = graphene(scan_shape=(10, 12), det_shape=(64, 64), seed=3, dose=1e4)
    lazy = read(save_dataset(ds, tmp_path / "scan.h5"))
    assert lazy.is_lazy
    plain = prepare_for_rvae(lazy, 32)                                  # small: computed into memory
    assert not plain.is_lazy
    store = tmp_path / "r.reduced.zarr"
    small, said = prepared(store, "auto")                               # auto: fits, no store
    assert not small.is_lazy and not store.exists() and not said
    stored, said = prepared(store, "always")
    assert stored.is_lazy and store.exists() and said == [f"reduced patterns: wrote {store}"]
    np.testing.assert_array_equal(np.asarray(stored.data), np.asarray(plain.data))
    assert stored.calibration == plain.calibration
    # a rerun after a crash reads the complete store again instead of re-binning the file
    again, said = prepared(store, "always")
    assert said == [f"reduced patterns: reusing {store}"]
    np.testing.assert_array_equal(np.asarray(again.data), np.asarray(plain.data))
    # a half-written store (killed while writing) is never read: it has another name
    remove_reduced_store(store)
    (tmp_path / "r.reduced.zarr.partial").mkdir()
    prepared(store, "always")
    assert not (tmp_path / "r.reduced.zarr.partial").exists()
    # someone else's data at that path are refused, untouched
    remove_reduced_store(store)
    da.to_zarr(da.zeros((4, 4), chunks=2), str(store))
    with pytest.raises(ValueError, match="is not a store of reduced patterns written by this package"):
        prepared(store, "always")
    assert store.exists()


def test_torchrun_is_refused_in_one_sentence_for_commands_other_than_run(tmp_path):
    ds = graphene(scan_shape=(4, 4), det_shape=(16, 16), seed=3)
    source = save_dataset(ds, tmp_path / "scan.h5")
    env = dict(os.environ, WORLD_SIZE="2", RANK="1", LOCAL_RANK="1")
    out = subprocess.run([str(Path(sys.executable).with_name("stem-rvae")), "com", source, "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 2 and "torchrun starts several processes for `stem-rvae run` only" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "o").exists()
