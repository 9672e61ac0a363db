"""The study's scale (#23, ~100,000 atom windows in minutes): the rVAE trains on a capped,
evenly drawn subset of the windows and maps every one; the novelty decodes a bounded number of
pixel values on a CPU; the PCA/GMM baselines are fitted on a subsample and score every window."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from napari_4dstem_rvae.atoms import baselines as baselines_module
from napari_4dstem_rvae.atoms.baselines import baselines
from napari_4dstem_rvae.rvae import RVAEConfig, fit
from napari_4dstem_rvae.rvae import infer
from napari_4dstem_rvae.workflows.atoms import PRESETS, TRAIN_WINDOWS, windows_dataset


def _windows(n: int, seed: int = 0) -> np.ndarray:
    """Round blobs at random offsets: ``(n, 16, 16)`` float32."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:16, :16] - 7.5
    dy, dx = rng.normal(0, 1.5, (2, n, 1, 1))
    return (np.exp(-((yy - dy) ** 2 + (xx - dx) ** 2) / 8) + 0.05 * rng.normal(size=(n, 16, 16))).astype(np.float32)


def test_the_default_preset_trains_on_a_capped_subset_and_maps_every_window():
    assert PRESETS["default"]["train_positions"] == TRAIN_WINDOWS
    assert RVAEConfig().replace(**PRESETS["default"]).max_train_positions() == TRAIN_WINDOWS
    windows = _windows(600)
    cfg = RVAEConfig().replace(**PRESETS["default"]).replace(
        train_positions=200, epochs=1, batch_size=32, encoder_hidden=(16,), decoder_hidden=(16,), threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fit(windows_dataset(windows), cfg)
    trainer = result.trainer
    used = np.concatenate([trainer.train_index, trainer.test_index])
    assert used.size == 200 and np.unique(used).size == 200
    # drawn over the whole series (windows are ordered by frame), not its first 200
    assert used.max() > 500 and used.min() < 100
    assert np.isfinite(result.maps.angle).all() and result.maps.angle.size == 600
    assert np.isfinite(result.maps.novelty).all()


def test_novelty_decodes_a_bounded_number_of_values_on_a_cpu(monkeypatch):
    cfg = RVAEConfig(latent_dim=1, encoder_hidden=(8,), decoder_hidden=(8,))
    windows = _windows(40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = fit(windows_dataset(windows), cfg.replace(epochs=1, threads=1)).model
    assert infer.novelty_pixels(model, 1000) is None               # 1000 × 256 pixels: all of them
    monkeypatch.setattr(infer, "NOVELTY_DECODED_CPU", 4000)
    picked = infer.novelty_pixels(model, 40)                        # 40 × 256 > 4000: 100 pixels
    assert picked is not None and picked.numel() == 100
    assert torch.equal(picked, torch.sort(picked).values) and picked.unique().numel() == 100
    assert torch.equal(picked, infer.novelty_pixels(model, 40))     # the same subset every call
    maps = infer.encode(model, windows_dataset(windows), novelty=True)
    assert np.isfinite(maps.novelty).all()
    # the outlier still ranks first with a tenth of its pixels decoded
    odd = windows.copy()
    odd[7] = np.flip(odd[7], 0) * 4
    maps = infer.encode(model, windows_dataset(odd), novelty=True)
    assert int(np.argmax(maps.novelty)) == 7


def test_baselines_fitted_on_a_subsample_score_every_window(monkeypatch):
    rng = np.random.default_rng(2)
    basis = rng.normal(size=(3, 64))
    windows = (rng.normal(size=(900, 3)) * [5, 2, 1]) @ basis + 0.01 * rng.normal(size=(900, 64))
    windows = windows.reshape(900, 8, 8).astype(np.float32)
    full = baselines(windows)
    monkeypatch.setattr(baselines_module, "FIT_WINDOWS", 300)
    sub = baselines(windows)
    for key in ("pca_1", "pca_2"):
        assert sub[key].shape == (900,) and np.isfinite(sub[key]).all()
        # the same components, up to their sign, from a third of the windows
        assert abs(np.corrcoef(sub[key], full[key])[0, 1]) > 0.999
    assert sub["gmm_cluster"].shape == (900,) and set(np.unique(sub["gmm_cluster"])) <= {0, 1, 2, 3}
