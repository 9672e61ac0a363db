"""rVAE training, checkpoints, inference and results on small synthetic data (fast)."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch

from napari_4dstem_rvae import (  # noqa: E402
    Calibration,
    Dataset4D,
    rvae,  # noqa: E402
)
from napari_4dstem_rvae.rvae import RVAEConfig, Trainer, TrainingDiverged  # noqa: E402

TINY = dict(encoder_hidden=(32,), decoder_hidden=(32, 32), batch_size=16, pixels_per_step=64,
            threads=1)


def comet(det: int, angle: float, size: float) -> np.ndarray:
    """An asymmetric pattern (a disk and an off-centre spot) turned counter-clockwise on
    screen by ``angle`` about the detector centre."""
    c = (det - 1) / 2
    rows, cols = np.mgrid[0:det, 0:det].astype(float)
    x, y = cols - c, rows - c
    # point (x, y) of the turned pattern comes from Rᵀ(x, y) of the upright one
    xu = math.cos(angle) * x - math.sin(angle) * y
    yu = math.sin(angle) * x + math.cos(angle) * y
    disk = np.exp(-(xu**2 + yu**2) / (2 * (det / 6) ** 2))
    spot = size * np.exp(-((xu - det / 4) ** 2 + yu**2) / (2 * (det / 12) ** 2))
    return (disk + spot).astype(np.float32)


def comet_data(scan=(10, 12), det=16, seed=0):
    rng = np.random.default_rng(seed)
    angles = rng.uniform(-math.pi, math.pi, scan)
    sizes = rng.uniform(0.5, 1.5, scan)
    data = np.stack([comet(det, a, s) for a, s in zip(angles.ravel(), sizes.ravel())])
    data = data.reshape(*scan, det, det)
    return data - data.mean((0, 1)), angles, sizes


@pytest.fixture(scope="module")
def small():
    data, angles, sizes = comet_data()
    return data, angles, sizes


def run_all(trainer, **kw):
    return list(trainer.run(**kw))


def test_events_history_and_maps_shapes(small):
    data, angles, sizes = small
    ds = Dataset4D(data, Calibration(scan_step=0.5, scan_unit="Å"),
                   provenance=({"step": "subtract_mean_pattern"},))
    trainer = Trainer(ds, RVAEConfig(epochs=3, learn_shift=True, latent_dim=3, **TINY),
                      com_magnitude=sizes, com_angle=angles)
    events = run_all(trainer, step_events=True)
    kinds = [e.kind for e in events]
    assert kinds.count("epoch") == 3 and kinds[-1] == "finished"
    assert kinds.count("step") == 3 * trainer.steps_per_epoch
    epoch_events = [e for e in events if e.kind == "epoch"]
    for e in epoch_events:
        assert set(e.train_parts) == {"recon", "kl_z", "kl_angle", "kl_shift"}
        assert set(e.test_parts) == {"recon", "kl_z", "kl_angle", "kl_shift"}
        assert all(math.isfinite(v) for v in e.train_parts.values())
        assert e.kl_weight == 1.0 and e.elapsed > 0
    assert [e.elapsed for e in epoch_events] == sorted(e.elapsed for e in epoch_events)
    assert trainer.n_train + trainer.n_test == data.shape[0] * data.shape[1]
    assert trainer.n_test == round(0.25 * 120)
    assert [r["epoch"] for r in trainer.history] == [1, 2, 3]
    maps = trainer.maps()
    assert maps.angle.shape == (10, 12) and maps.angle.dtype == np.float32
    assert np.all(np.abs(maps.angle) <= math.pi + 1e-6)
    assert maps.latents.shape == maps.latents_std.shape == (3, 10, 12)
    assert maps.shift.shape == maps.shift_std.shape == (2, 10, 12)
    assert np.all(maps.angle_std > 0)                       # circular standard deviation (rad)
    assert np.all((maps.angle_concentration >= 0) & (maps.angle_concentration <= 1))
    assert np.all(maps.latents_std > 0)
    names = maps.as_dict()   # by schema name, stacks whole; planes numbered from 1 as in the layers
    assert set(names) >= {"angle", "angle_std", "latents", "latents_std", "shift", "shift_std"}
    planes = maps.planes()
    assert {"angle", "latent_1", "latent_3", "latent_3_std", "shift_x", "shift_y_std"} <= set(planes)
    assert "latent_0" not in planes
    np.testing.assert_array_equal(planes["latent_3"], maps.latents[2])
    recon = rvae.reconstruct(trainer.model, data[0, :4])
    assert recon.shape == (4, 16, 16)
    one = rvae.reconstruct_positions(trainer.model, ds, [(2, 3)])
    assert one.shape == (1, 16, 16)
    grid = rvae.traverse(trainer.model, n=5, latents=(0, 2))
    assert grid.shape == (5, 5, 16, 16)


def test_training_length_from_steps_and_cosine_schedule(small):
    data, _, _ = small
    trainer = Trainer(data, RVAEConfig(steps=100, **TINY))        # epochs=None: from steps
    assert trainer.steps_per_epoch == math.ceil(90 / 16)
    assert trainer.total_epochs == math.ceil(100 / trainer.steps_per_epoch)
    assert trainer.learning_rate_at(0) == pytest.approx(trainer.config.learning_rate)
    final = trainer.config.learning_rate * trainer.config.lr_final
    assert trainer.learning_rate_at(trainer.total_epochs) == pytest.approx(final)
    assert Trainer(data, RVAEConfig(epochs=7, **TINY)).total_epochs == 7
    events = run_all(Trainer(data, RVAEConfig(steps=12, **TINY)))
    assert events[-1].epoch == 10                                  # at least 10 epochs


@pytest.mark.slow
def test_training_learns_the_rotation_and_encoding_is_equivariant():
    """A rotated input adds the rotation to the encoded angle (counter-clockwise = +)."""
    data, angles, sizes = comet_data(scan=(16, 16), det=16, seed=1)
    config = RVAEConfig(epochs=30, latent_dim=1, encoder_hidden=(32, 32), decoder_hidden=(32, 32),
                        batch_size=32, pixels_per_step=256, learning_rate=3e-3, noise_std=1.0, threads=2,
                        seed=0)   # a low noise level learns this clean toy quickly
    trainer = Trainer(data, config)
    run_all(trainer)
    maps = trainer.maps()
    rho = rvae.circular_correlation(maps.angle, angles)
    assert rho > 0.6, rho                     # same sense as the true rotation (the quality is tested elsewhere)
    assert abs(rvae.pearson_r(maps.latents[0], sizes)) > 0.8
    from scipy import ndimage

    mean = data.reshape(-1, 16, 16).mean(0)
    rng = np.random.default_rng(5)
    errors = []
    for _ in range(12):
        a, s = rng.uniform(-math.pi, math.pi), rng.uniform(0.7, 1.3)
        upright = comet(16, a, s)
        phi = rng.uniform(-2.5, 2.5)
        turned = ndimage.rotate(upright, math.degrees(phi), reshape=False, order=1, mode="nearest")
        codes = rvae.encode(trainer.model, np.stack([upright, turned])[None] - mean)
        delta = codes.angle[0, 1] - codes.angle[0, 0]
        errors.append(abs(math.remainder(delta - phi, 2 * math.pi)))
    assert np.median(errors) < 0.25, errors


def test_stop_and_resume_equal_an_uninterrupted_run(small, tmp_path):
    data, _, _ = small
    config = RVAEConfig(epochs=3, seed=3, **TINY)
    reference = Trainer(data, config)
    run_all(reference)

    stop = threading.Event()
    first = Trainer(data, config)
    events = []
    for event in first.run(stop=stop, step_events=True):
        events.append(event)
        if event.kind == "step" and event.step == first.steps_per_epoch + 2:   # mid-epoch 2
            stop.set()
    assert events[-1].kind == "stopped"
    assert events[-1].step == first.steps_per_epoch + 2      # returned within one step
    assert first.epoch == 1
    path = first.save(tmp_path / "mid.pt")

    resumed = rvae.load_checkpoint(path, data)
    assert resumed.step == first.steps_per_epoch + 2
    run_all(resumed)
    assert resumed.epoch == 3
    for (name, a), b in zip(reference.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    ref_losses = [r["train_loss"] for r in reference.history]
    assert [r["train_loss"] for r in resumed.history] == pytest.approx(ref_losses, rel=1e-6)

    # stopping by closing the generator, then continuing in the same process, is exact too
    again = Trainer(data, config)
    gen = again.run()
    next(gen)
    gen.close()
    run_all(again)
    for a, b in zip(reference.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b)


def test_checkpoint_round_trip(small, tmp_path):
    data, angles, sizes = small
    ds = Dataset4D(data, Calibration(scan_step=0.5, scan_unit="Å", det_origin=(7.5, 7.0)),
                   source="graphene.h5", provenance=({"step": "bin", "factor": 2},))
    config = RVAEConfig(epochs=2, latent_dim=3, rotation_prior=None, kl_warmup_epochs=4, **TINY)
    trainer = Trainer(ds, config, roi_mask=np.arange(120).reshape(10, 12) % 3 > 0,
                      com_magnitude=sizes, com_angle=angles)
    run_all(trainer)
    path = trainer.save(tmp_path / "model.pt")

    from napari_4dstem_rvae.rvae.checkpoint import read_checkpoint
    raw = read_checkpoint(path)                        # checksum verified, torch.load(weights_only=True)
    head, _, payload = open(path, "rb").read().partition(b"\n")
    import io as _io
    assert torch.load(_io.BytesIO(payload), weights_only=True)["epoch"] == 2  # no pickled objects
    assert raw["config"]["latent_dim"] == 3
    assert "state" in raw["optimizer"] and raw["epoch"] == 2

    loaded = rvae.load_checkpoint(path)                # no original arguments
    assert loaded.config == config.replace(likelihood="gaussian")  # "auto", resolved from the data
    assert loaded.model.center == (7.5, 7.0)
    assert loaded.calibration.scan_step == 0.5
    assert loaded.provenance == ({"step": "bin", "factor": 2},)
    assert loaded.source == "graphene.h5"
    assert loaded.history == trainer.history
    np.testing.assert_array_equal(loaded.roi_mask, trainer.roi_mask)
    assert float(loaded.model.data_scale) == float(trainer.model.data_scale)
    model = rvae.load_model(path)
    a = rvae.encode(trainer.model, data)
    b = rvae.encode(model, data)
    np.testing.assert_allclose(a.latents, b.latents, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.angle, b.angle, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="without data"):
        next(loaded.run())

    # incompatible uses name the file and the parameter
    with pytest.raises(ValueError, match="model.pt"):
        rvae.load_checkpoint(path, data[:, :, :8, :8])
    with pytest.raises(ValueError, match="latent_dim.*model.pt"):
        rvae.load_checkpoint(path, data, latent_dim=2)
    with pytest.raises(ValueError, match="differ"):
        rvae.load_checkpoint(path, data * 2)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt"):
        rvae.load_checkpoint(garbage)
    with pytest.raises(ValueError, match="does not exist"):
        rvae.load_model(tmp_path / "missing.pt")
    # continuing with more epochs is allowed
    more = rvae.load_checkpoint(path, ds, epochs=3)
    run_all(more)
    assert more.epoch == 3


def test_training_mask_is_honoured(small):
    data, _, _ = small
    mask = np.zeros((10, 12), bool)
    mask[2:6, 3:9] = True
    poisoned = data.copy()
    poisoned[~mask] = np.nan          # never read for training
    trainer = Trainer(poisoned, RVAEConfig(epochs=2, **TINY), roi_mask=mask)
    flat = np.flatnonzero(mask.ravel())
    assert set(trainer.train_index) | set(trainer.test_index) == set(flat)
    assert not set(trainer.train_index) & set(trainer.test_index)
    seen = []
    original = trainer._source.batch

    def spy(index):
        seen.extend(index.tolist())
        return original(index)

    trainer._source.batch = spy
    run_all(trainer)
    assert set(seen) == set(trainer.train_index)
    assert len(seen) == 2 * trainer.n_train
    # inference covers the whole scan
    clean = Trainer(data, RVAEConfig(epochs=1, **TINY), roi_mask=mask)
    run_all(clean)
    assert clean.maps().angle.shape == (10, 12)


def test_no_global_torch_state_changed(small):
    data, _, _ = small
    threads = torch.get_num_threads()
    dtype = torch.get_default_dtype()
    rng = torch.random.get_rng_state().clone()
    deterministic = torch.are_deterministic_algorithms_enabled()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    want = 1 if threads != 1 else 2
    trainer = Trainer(data, RVAEConfig(epochs=2, **{**TINY, "threads": want}))
    seen_threads = []
    for _ in trainer.run():
        seen_threads.append(torch.get_num_threads())
    assert want in seen_threads                      # the setting was in force while training
    assert torch.get_num_threads() == threads
    gen = trainer.run(epochs=4)
    next(gen)
    gen.close()                                      # a stopped consumer restores it too
    assert torch.get_num_threads() == threads
    rvae.fit(data, RVAEConfig(epochs=1, **TINY))
    assert torch.get_default_dtype() == dtype
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == cudnn


def test_bad_input_raises_clear_errors(small):
    data, _, _ = small
    bad = data.copy()
    bad[3, 4, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"NaN.*row 3, col 4"):
        Trainer(bad, RVAEConfig(**TINY))
    with pytest.raises(ValueError, match="roi_mask selects no probe positions"):
        Trainer(data, RVAEConfig(**TINY), roi_mask=np.zeros((10, 12), bool))
    with pytest.raises(ValueError, match="roi_mask has shape"):
        Trainer(data, RVAEConfig(**TINY), roi_mask=np.ones((12, 10), bool))
    with pytest.raises(ValueError, match="latent_dim"):
        Trainer(data, RVAEConfig(latent_dim=20, **TINY), roi_mask=np.eye(10, 12, dtype=bool))
    with pytest.raises(ValueError, match="latent_dim"):
        Trainer(data[:, :, :4, :4], RVAEConfig(latent_dim=16, **TINY))
    with pytest.raises(ValueError, match="4 axes"):
        Trainer(data[0], RVAEConfig(**TINY))
    with pytest.raises(ValueError, match="zero standard deviation"):
        Trainer(np.ones((4, 4, 8, 8), np.float32), RVAEConfig(**TINY))
    with pytest.raises(ValueError, match="com_magnitude"):
        Trainer(data, RVAEConfig(**TINY), com_magnitude=np.ones((3, 3)))


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_state(small, tmp_path):
    data, _, _ = small
    trainer = Trainer(data, RVAEConfig(epochs=3, **TINY))
    path = tmp_path / "good.pt"
    run_all(trainer, epochs=1, checkpoint_path=path)
    good = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    original = trainer.model.loss
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        total, parts = original(*args, **kwargs)
        return (total * float("nan") if calls["n"] == 3 else total), parts

    trainer.model.loss = failing
    with pytest.raises(TrainingDiverged, match="learning rate"):
        run_all(trainer, checkpoint_path=path, checkpoint_every=1)
    assert trainer.epoch == 1 and len(trainer.history) == 1
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, good[name]), name
    saved = rvae.load_checkpoint(path)
    assert saved.epoch == 1
    trainer.model.loss = original                  # the trainer can go on from the good state
    run_all(trainer)
    assert trainer.epoch == 3


def test_lazy_data_stream_without_loading_everything(small, monkeypatch):
    import dask.array as da

    from napari_4dstem_rvae.rvae import data as data_module

    data, _, _ = small
    lazy = da.from_array(data, chunks=(2, 12, 16, 16))
    config = RVAEConfig(epochs=2, **TINY)
    # small enough to load: identical to the numpy run
    in_memory = Trainer(data, config)
    run_all(in_memory)
    loaded = Trainer(lazy, config)
    assert not loaded._source.streamed
    run_all(loaded)
    for a, b in zip(in_memory.model.parameters(), loaded.model.parameters()):
        torch.testing.assert_close(a, b)
    # too big: streamed by blocks of scan rows, each epoch visits each training position once
    monkeypatch.setattr(data_module, "IN_MEMORY_BYTES", 0)
    monkeypatch.setattr(data_module, "BLOCK_BYTES", 2 * 12 * 16 * 16 * 4)
    streamed = Trainer(lazy, config)
    assert streamed._source.streamed and streamed._source.memory is None
    plan = streamed.epoch_plan().numpy()
    assert sorted(plan) == sorted(streamed.train_index)
    run_all(streamed)
    assert streamed.epoch == 2
    maps = rvae.encode(streamed.model, lazy, batch_size=7)
    direct = rvae.encode(streamed.model, data)
    np.testing.assert_allclose(maps.latents, direct.latents, rtol=1e-5, atol=1e-6)


def test_fit_selects_the_epoch_by_the_com_rule_and_results_file(small, tmp_path):
    import h5py

    from napari_4dstem_rvae.results import overview_figure, write_results

    data, angles, sizes = small
    result = rvae.fit(data, RVAEConfig(**TINY), epochs=4, correlate_every=2, epoch_selection="com_correlation",
                      com_magnitude=sizes, com_angle=angles)
    assert [d.epoch for d in result.diagnostics] == [2, 4]
    assert result.best_epoch in (2, 4) and result.trainer.selected_epoch == result.best_epoch
    best = max(result.diagnostics, key=lambda d: d.max_abs_r)
    assert result.best_epoch == best.epoch
    assert len(result.latent_r) == 2 and 0 <= result.max_abs_r <= 1
    assert -1 <= result.angle_rho <= 1
    assert result.history[1]["max_abs_r"] == result.diagnostics[0].max_abs_r
    last = rvae.fit(data, RVAEConfig(**TINY), epochs=4, correlate_every=2, epoch_selection="last",
                    com_magnitude=sizes, com_angle=angles)
    assert last.best_epoch == 4
    path = write_results(tmp_path / "results.h5", calibration=None, scan_shape=(10, 12), rvae=result)
    with h5py.File(path, "r") as f:
        g = f["rvae"]
        assert g["angle"].shape == (10, 12) and g["angle"].attrs["unit"] == "rad"
        assert g["latents"].shape == g["latents_std"].shape == (2, 10, 12)
        assert "shift" not in g
        assert g["history/train_loss"].shape == (4,)
        assert g["diagnostics/latent_r"].shape == (2, 2)
        assert g.attrs["param_latent_dim"] == 2
        assert g.attrs["param_epoch_selection"] == "com_correlation"
        assert g.attrs["best_epoch"] == result.best_epoch
        assert '"latent_dim": 2' in g.attrs["config"]
        assert g["roi_mask"][()].all()
    write_results(path, calibration=None, scan_shape=(10, 12), rvae=result.maps)  # maps only
    png = overview_figure(tmp_path / "overview.png", result, adf=sizes)
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_correlation_helpers():
    a = np.linspace(0, 1, 50).reshape(5, 10)
    assert rvae.pearson_r(a, 3 * a + 1) == pytest.approx(1.0)
    assert rvae.pearson_r(a, -a) == pytest.approx(-1.0)
    angles = np.linspace(-3, 3, 50).reshape(5, 10)
    assert rvae.circular_correlation(angles, angles + 0.5) == pytest.approx(1.0)
    assert rvae.circular_correlation(angles, -angles) == pytest.approx(-1.0)
    mask = np.zeros((5, 10), bool)
    mask[:, :5] = True
    assert rvae.pearson_r(a, np.where(mask, a, -a), mask) == pytest.approx(1.0)


def test_signal_rms_of_counts_uses_the_known_poisson_noise():
    """The likelihood's σ is set from the signal RMS: for Poisson counts the variance less the
    mean per pixel (1 after the Anscombe transform). With fewer patterns than pixels and a weak
    signal, the principal-component estimate counts leading noise eigenvalues as signal."""
    from napari_4dstem_rvae.rvae.data import as_patterns, signal_rms

    rng = np.random.default_rng(0)
    n, pixels = 600, 1024
    profile = rng.uniform(0.5, 1.5, pixels)
    amplitude = rng.normal(size=(n, 1))
    mean = 3.0 * profile * (1 + 0.1 * amplitude)       # the signal: ±10 % of a 3-count pattern
    truth = float(np.sqrt(np.mean((0.3 * profile) ** 2)))
    counts = rng.poisson(mean).astype(np.float32).reshape(n, 1, 32, 32)
    patterns = as_patterns(counts)
    index = np.arange(n)
    exact = signal_rms(patterns, index, None, 0, fallback=1.0, poisson=True)
    pca = signal_rms(patterns, index, None, 0, fallback=1.0)
    assert abs(exact / truth - 1) < 0.1, (exact, truth)
    assert pca / truth > 1.3  # what the counts' estimate corrects
    anscombe = signal_rms(patterns, index, None, 0, fallback=1.0, counts=True, poisson=True)
    # after 2√(y + 3/8) the signal's RMS is about the raw one / √mean
    assert abs(anscombe / np.sqrt(np.mean((0.3 * profile) ** 2 / (3.0 * profile))) - 1) < 0.15


def test_a_stratified_subsample_of_a_huge_region_trains_and_spreads_over_the_scan():
    from napari_4dstem_rvae.rvae.data import split_positions, stratified_sample

    rng = np.random.default_rng(0)
    chosen = np.arange(60 * 80)
    sample = stratified_sample(chosen, (60, 80), 300, rng)
    assert sample.size == 300 and np.unique(sample).size == 300
    # every 4 × 4 tile (16 positions for 300 of 4,800: one per tile) gets exactly one
    tiles = (sample // 80 // 4) * 20 + (sample % 80) // 4
    assert np.bincount(tiles, minlength=300).max() == 1
    # a plain random draw of the same size leaves tiles empty and doubles others
    plain = rng.choice(chosen, 300, replace=False)
    assert np.bincount((plain // 80 // 4) * 20 + (plain % 80) // 4, minlength=300).max() > 1
    # the region mask is honoured; the split is deterministic for a seed
    roi = np.zeros((60, 80), bool)
    roi[10:50, 5:45] = True
    train, test = split_positions(roi, 4800, 0.25, 7, (60, 80), 400)
    both = np.concatenate([train, test])
    assert both.size == 400 and roi.ravel()[both].all() and test.size == 100
    again = split_positions(roi, 4800, 0.25, 7, (60, 80), 400)
    assert np.array_equal(again[0], train)
    # the trainer uses it; the maps still cover every position
    data = comet_data(scan=(10, 12))[0]
    trainer = Trainer(data, RVAEConfig(**TINY, epochs=1, train_positions=40))
    assert trainer.train_index.size + trainer.test_index.size == 40
    maps = trainer.maps()
    assert maps.angle.shape == (10, 12) and np.isfinite(maps.angle).all()
    with pytest.raises(ValueError, match="train_positions"):
        RVAEConfig(train_positions=1)
