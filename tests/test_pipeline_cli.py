"""The 4D-STEM run headless, through the CLI and the API: read → COM → bin → rVAE → files;
result paths on stdout, progress and notes on stderr, exit status 0 / 1 (the run failed) / 2
(the command line is wrong)."""

from pathlib import Path

import h5py
import numpy as np
import pytest

from napari_4dstem_rvae.cli import main
from napari_4dstem_rvae.io import save_dataset
from napari_4dstem_rvae.simulate import graphene


@pytest.mark.slow
def test_stem_rvae_run_writes_results_and_overview(tmp_path):
    ds = graphene(scan_shape=(8, 8), det_shape=(32, 32))
    source = save_dataset(ds, tmp_path / "scan.h5")
    roi = np.zeros((8, 8), bool)
    roi[2:7, 1:6] = True
    np.save(tmp_path / "roi.npy", roi)
    out = tmp_path / "results.h5"
    assert main(["run", source, "--bin", "16", "--epochs", "2", "--latent", "2",
                 "--roi", str(tmp_path / "roi.npy"), "--out", str(out)]) == 0
    with h5py.File(out, "r") as f:
        assert f["angle"].shape == (8, 8) and f["latents"].shape == (2, 8, 8)
        assert np.isfinite(f["angle"][()]).all()
        assert f["com_magnitude"].shape == (8, 8)
        np.testing.assert_array_equal(f["rvae/roi_mask"][()], roi)
        assert f["rvae"].attrs["epochs_done"] == 2
        # 8 × 8 positions are too few for a periodic average: the model's residual, said so
        assert f["rvae/novelty"].attrs["reference"] == "model"
    assert (tmp_path / "results_overview.png").stat().st_size > 10_000


def test_run_reads_the_data_once_for_the_overview_and_the_com(tmp_path, monkeypatch):
    """The overview images (sum, ADF) ride along in the COM pass: before training, the run
    reduces the whole scan once, and its images equal a separate overview pass."""
    from napari_4dstem_rvae.io import read
    from napari_4dstem_rvae.processing import engine
    from napari_4dstem_rvae.workflows import ImageRun, run_to_end

    ds = graphene(scan_shape=(8, 8), det_shape=(32, 32))
    source = save_dataset(ds, tmp_path / "scan.h5")
    passes = []
    for name in ("_reduce_numpy", "_reduce_dask"):
        original = getattr(engine, name)

        def counted(data, plan, *args, _original=original):
            passes.append(tuple(data.shape))
            return _original(data, plan, *args)

        monkeypatch.setattr(engine, name, counted)
    out = tmp_path / "results.h5"
    assert main(["run", source, "--bin", "16", "--epochs", "1", "--latent", "2", "--out", str(out)]) == 0
    assert passes.count((8, 8, 32, 32)) == 1, passes
    overview = ImageRun(read(source))
    run_to_end(overview.events())
    expected = overview.images
    with h5py.File(out, "r") as f:
        assert set(f["images"]) >= set(expected) == {"sum", "adf"}
        for name, image in expected.items():
            np.testing.assert_allclose(f["images"][name][()], image, rtol=1e-6)


def test_stem_rvae_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "broken.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    assert main(["info", str(bad)]) == 1                       # the run failed: 1
    err = capsys.readouterr().err
    assert err.startswith("stem-rvae: error:") and str(bad) in err and "Traceback" not in err
    with pytest.raises(SystemExit) as usage:                   # the command line is wrong: 2
        main(["run", str(bad), "--mask", "square"])
    assert usage.value.code == 2
    with pytest.raises(SystemExit) as usage:
        main(["run", str(bad), "--bin", "-3"])                 # refused by RunOptions' own check, before reading
    assert usage.value.code == 2
    assert "--bin must be a number of detector pixels" in capsys.readouterr().err


@pytest.mark.slow
def test_run_keeps_the_epoch_the_rule_picks(tmp_path):
    """The study's stopping rule on request (maps from the epoch whose latent best follows the COM
    magnitude); by default the held-out rule, which looks at the data only."""
    import json

    from napari_4dstem_rvae.workflows import run

    ds = graphene(scan_shape=(8, 8), det_shape=(32, 32))
    default = run(ds, tmp_path / "default.h5", bin_to=16, epochs=8, latent_dim=1).result
    assert default.config.epoch_selection == "held_out" and not default.diagnostics[:-1]  # no COM during training
    losses = {r["epoch"]: r["test_loss"] for r in default.history}
    assert default.best_epoch in (8, min(losses, key=losses.get))    # the last, unless clearly worse
    out = run(ds, tmp_path / "best.h5", bin_to=16, epochs=8, latent_dim=1, epoch_selection="com_correlation")
    result = out.result
    seen = {d.epoch: d.max_abs_r for d in result.diagnostics}
    assert sorted(seen) == list(range(1, 9))          # 8 epochs // 20 → checked every epoch
    best = max(seen, key=seen.get)
    assert result.best_epoch == best
    assert result.max_abs_r == pytest.approx(seen[best], abs=1e-6)   # the maps are that epoch's
    with h5py.File(out.outputs["results"], "r") as f:
        assert json.loads(f.attrs["parameters_json"])["epoch_selection"].startswith("largest")

    last = run(ds, tmp_path / "last.h5", bin_to=16, epochs=8, latent_dim=1, epoch_selection="last").result
    assert last.best_epoch == 8 and not last.diagnostics[:-1]


def test_run_reads_a_flat_stack_with_scan_shape(tmp_path):
    """``--scan-shape`` reaches the reader for ``run`` as for every other command."""
    ds = graphene(scan_shape=(4, 6), det_shape=(32, 32))
    flat = tmp_path / "stack.npy"
    np.save(flat, np.asarray(ds.data).reshape(24, 32, 32))
    assert main(["run", str(flat), "--bin", "16", "--epochs", "1", "--out", str(tmp_path / "r.h5")]) == 1
    assert main(["run", str(flat), "--scan-shape", "4", "6", "--bin", "16", "--epochs", "1",
                 "--out", str(tmp_path / "r.h5")]) == 0
    with h5py.File(tmp_path / "r.h5", "r") as f:
        assert f["angle"].shape == (4, 6)


def test_cli_calibration_flags_and_one_line_warnings(tmp_path, capsys):
    data = np.random.default_rng(0).random((4, 5, 8, 8)).astype(np.float32)
    path = tmp_path / "tiny.npy"
    np.save(path, data)
    assert main(["info", str(path), "--scan-step", "0.5", "0.4", "--scan-unit", "nm", "--det-pixel-size", "2",
                 "--det-unit", "mrad", "--energy-kev", "300"]) == 0
    out = capsys.readouterr().out
    assert "scan_step:      [0.5, 0.4]" in out and "scan_unit:      nm" in out and "energy_kev:     300.0" in out
    assert "5.1 KiB" in out or "5 KiB" in out  # sizes for people, not 4.47e-06 GiB
    # a tiny, noise-only scan: the automatic rotation is refused in one line, and 0° is used
    assert main(["com", str(path), "--out", str(tmp_path / "com"), "--det-pixel-size", "2", "--det-unit", "mrad"]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    warned = [line for line in lines if "warning:" in line]
    assert len(warned) == 1 and warned[0].startswith("stem-rvae: warning: the automatic scan rotation is unreliable")
    assert "0° without flip is used instead" in warned[0]
    with h5py.File(tmp_path / "com" / "com.h5", "r") as f:
        assert f["com"].attrs["rotation_deg"] == 0.0 and f["com"].attrs["rotation_problem"]
        assert f["com/com_x"].attrs["unit"] == "mrad"
        assert f["com/com_divergence"].attrs["unit"] == "mrad/probe step"
