"""Bright amorphous contamination: no atoms drawn into it, by either finder or the lattice
completion, while the lattice beside it and bright dopants are kept."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from napari_4dstem_rvae.atoms.contamination import contamination_mask
from napari_4dstem_rvae.atoms.finding import find
from napari_4dstem_rvae.series import ImageSeries
from napari_4dstem_rvae.simulate.haadf import haadf_series

PIXEL = 0.1


def _contaminated(seed: int):
    """A simulated frame with a bright amorphous patch (~8× the lattice's mean, its own texture,
    a ragged edge) over a fifth of it, the lattice under it attenuated; and the distance (Å) of
    every pixel inside the patch's edge (negative outside)."""
    clean, truth = haadf_series(1, (320, 320), PIXEL, counts_carbon=30, seed=seed, noise=False, holes=0,
                                si_fraction=0.01)
    frame = np.asarray(clean.frame(0), np.float64)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:320, :320] * PIXEL
    r = np.hypot(yy - 24.0, xx - 22.4)
    edge = 9.0 + 2.5 * ndimage.gaussian_filter(rng.normal(size=frame.shape), 2.0 / PIXEL) / 0.02
    texture = ndimage.gaussian_filter(rng.random(frame.shape), 0.35 / PIXEL)
    texture = (texture - texture.min()) / np.ptp(texture)
    patch = 1 / (1 + np.exp((r - edge) / 0.5))
    counts = frame * (1 - 0.7 * patch) + patch * 8 * frame.mean() * (0.6 + 0.8 * texture)
    noisy = rng.poisson(np.clip(counts, 0, None)).astype(np.float32)
    return ImageSeries(noisy[None], PIXEL, "Å"), truth, edge - r


def _at(depth: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return depth[np.clip(np.round(y).astype(int), 0, depth.shape[0] - 1),
                 np.clip(np.round(x).astype(int), 0, depth.shape[1] - 1)]


@pytest.mark.parametrize("method", ["unet", "log"])
def test_no_atoms_drawn_into_contamination(method):
    series, truth, depth = _contaminated(2)
    true = np.column_stack([truth.y, truth.x]) / PIXEL
    clear = _at(depth, true[:, 0], true[:, 1]) < -1.5    # true atoms well outside the patch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = find(series, method, complete=True)
    assert any("contamination" in str(w.message) for w in caught)
    inside = _at(depth, table.y, table.x) > 1.0
    assert inside.sum() == 0
    got = np.column_stack([table.y, table.x])
    recall = np.isfinite(cKDTree(got).query(true[clear], distance_upper_bound=0.5 / PIXEL)[0]).mean()
    precision = np.isfinite(cKDTree(true).query(got, distance_upper_bound=0.5 / PIXEL)[0]).mean()
    assert recall >= (0.97 if method == "unet" else 0.9) and precision >= 0.98, (recall, precision)
    # the same frame with the option off: the finders draw atoms into the patch
    table = find(series, method, complete=True, contamination=False)
    assert (_at(depth, table.y, table.x) > 1.0).sum() >= 10


def test_dopants_and_a_clean_lattice_are_not_contamination():
    """Bright dopants (10 % Si, clusters among them) are single atoms, not a patch."""
    series, truth = haadf_series(1, (256, 256), 0.16, counts_carbon=30, seed=5, si_fraction=0.1)
    frame = np.asarray(series.frame(0))
    y, x = truth.y / 0.16, truth.x / 0.16
    assert not contamination_mask(frame, y, x, 0.16).any()
    # without atoms to read the lattice's level at, nothing is marked
    assert not contamination_mask(frame, y[:5], x[:5], 0.16).any()
