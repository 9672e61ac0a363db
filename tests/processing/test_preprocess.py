"""Preprocessing steps: each has a check that fails if the step is wrong, on numpy and
lazy input, with calibration and provenance updated and the input untouched."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import soft_disk

from napari_4dstem_rvae.dataset import Calibration, Dataset4D
from napari_4dstem_rvae.processing import (
    bin_data,
    center_patterns,
    crop,
    find_bad_pixels,
    find_beam_centers,
    fit_descan_plane,
    pca_denoise,
    repair_bad_pixels,
    shift_pattern,
    subtract_mean_pattern,
    transform_intensity,
)

CAL = Calibration(scan_step=(0.5, 0.25), scan_unit="Å", det_pixel_size=1.5, det_unit="mrad",
                  energy_kev=60.0, semiangle_mrad=20.0, det_origin=(15.5, 16.5), scan_origin=(1.0, 2.0))


def dataset(lazy=False, shape=(6, 8, 32, 34), dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    data = (rng.poisson(5.0, size=shape)).astype(dtype)
    if lazy:
        import dask.array as da

        data = da.from_array(data, chunks=(4, 3, shape[2], shape[3]))
    return Dataset4D(data, CAL, source="test.h5")


def values(ds):
    return np.asarray(ds.data.compute() if ds.is_lazy else ds.data)


# -- crop -----------------------------------------------------------------------------------
@pytest.mark.parametrize("lazy", [False, True])
def test_crop_moves_origins(lazy):
    ds = dataset(lazy)
    before = values(ds).copy()
    out = crop(ds, scan=(1, 5, 2, 7), detector=(3, 30, 4, 20))
    np.testing.assert_array_equal(values(out), before[1:5, 2:7, 3:30, 4:20])
    assert out.calibration.det_origin == (12.5, 12.5)
    assert out.calibration.scan_origin == (1.0 + 1 * 0.5, 2.0 + 2 * 0.25)
    assert out.calibration.det_pixel_size == 1.5
    assert out.provenance[-1] == {"step": "crop", "scan": [1, 5, 2, 7], "detector": [3, 30, 4, 20]}
    assert out.is_lazy == lazy
    if not lazy:
        out.data[...] = -1  # a copy, not a view
    np.testing.assert_array_equal(values(ds), before)
    with pytest.raises(ValueError, match=r"detector=\(0, 40, 0, 10\).*outside the 32×34"):
        crop(ds, detector=(0, 40, 0, 10))
    with pytest.raises(ValueError, match="scan must be"):
        crop(ds, scan=(0, 2))


# -- binning --------------------------------------------------------------------------------
@pytest.mark.parametrize("lazy", [False, True])
def test_binning_conserves_counts_and_scales_calibration(lazy):
    ds = dataset(lazy, shape=(7, 8, 32, 34), dtype=np.uint16)
    raw = values(ds)
    out = bin_data(ds, scan=(2, 4), detector=2)
    assert out.shape == (3, 2, 16, 17) and out.dtype == np.uint32
    binned = values(out)
    # Counts conserved over the region that fills whole bins.
    assert binned.sum() == raw[:6, :8, :32, :34].sum()
    assert binned[1, 1, 3, 5] == raw[2:4, 4:8, 6:8, 10:12].sum()
    cal = out.calibration
    assert cal.scan_step_yx == (1.0, 1.0) and cal.det_pixel_size == 3.0
    assert cal.det_origin == ((15.5 + 0.5) / 2 - 0.5, (16.5 + 0.5) / 2 - 0.5)
    assert cal.scan_origin == (1.0 + 0.5 * 0.5, 2.0 + 1.5 * 0.25)
    mean = bin_data(ds, scan=1, detector=2, method="mean")
    assert mean.dtype == np.float32
    np.testing.assert_allclose(values(mean)[2, 3, 4, 5], raw[2, 3, 8:10, 10:12].mean(), rtol=1e-6)
    with pytest.raises(ValueError, match="same along rows and columns"):
        bin_data(ds, detector=(2, 1))
    with pytest.raises(ValueError, match="larger than the data"):
        bin_data(ds, scan=16)


# -- mean pattern, transforms -----------------------------------------------------------------
@pytest.mark.parametrize("lazy", [False, True])
def test_subtract_mean_pattern(lazy):
    ds = dataset(lazy)
    raw = values(ds).astype(np.float64)
    out = subtract_mean_pattern(ds)
    result = values(out)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result.mean(axis=(0, 1)), 0, atol=1e-5)
    np.testing.assert_allclose(result, raw - raw.mean(axis=(0, 1)), atol=1e-5)
    assert out.provenance[-1]["step"] == "subtract_mean_pattern"
    given = subtract_mean_pattern(ds, mean_pattern=np.ones(ds.det_shape))
    np.testing.assert_allclose(values(given), raw - 1, atol=1e-6)


@pytest.mark.parametrize("lazy", [False, True])
def test_transform_intensity(lazy):
    ds = dataset(lazy)
    raw = values(ds).astype(np.float64)
    np.testing.assert_allclose(values(transform_intensity(ds, "log1p")), np.log1p(raw), rtol=1e-6)
    np.testing.assert_allclose(values(transform_intensity(ds, "sqrt")), np.sqrt(raw), rtol=1e-6)
    per_pattern = values(transform_intensity(ds, None, normalize="pattern"))
    np.testing.assert_allclose(per_pattern.min(axis=(2, 3)), 0)
    np.testing.assert_allclose(per_pattern.max(axis=(2, 3)), 1)
    low, high = raw[1, 2].min(), raw[1, 2].max()
    np.testing.assert_allclose(per_pattern[1, 2], (raw[1, 2] - low) / (high - low), rtol=1e-6)
    whole = values(transform_intensity(ds, "log1p", normalize="global"))
    logged = np.log1p(raw)
    np.testing.assert_allclose(whole, (logged - logged.min()) / (logged.max() - logged.min()), atol=1e-6)
    # Signed forms keep mean-subtracted data finite.
    signed = values(transform_intensity(subtract_mean_pattern(ds), "log1p"))
    assert np.all(np.isfinite(signed)) and signed.min() < 0
    with pytest.raises(ValueError, match="function must be one of"):
        transform_intensity(ds, "exp")


# -- bad pixels ----------------------------------------------------------------------------
@pytest.mark.parametrize("lazy", [False, True])
def test_hot_dead_and_nan_pixels_are_found_and_repaired(lazy):
    rng = np.random.default_rng(3)
    disk = soft_disk((32, 34), (15.5, 16.5), 8.0)
    data = rng.poisson(200 * disk + 5, size=(6, 8, 32, 34)).astype(np.float32)
    data[:, :, 4, 7] = 5000.0     # hot, far outside the disk
    data[:, :, 15, 18] = 0.0      # dead, inside the disk
    data[2, 3, 25, 5] = np.nan    # one bad reading
    source = data.copy()
    if lazy:
        import dask.array as da

        data = da.from_array(data, chunks=(3, 4, 32, 34))
    ds = Dataset4D(data, CAL)
    bad = find_bad_pixels(ds)
    assert sorted(zip(*np.nonzero(bad))) == [(4, 7), (15, 18), (25, 5)]
    fixed = repair_bad_pixels(ds)
    result = values(fixed)
    assert np.all(np.isfinite(result))
    ring = [(3, 6), (3, 7), (3, 8), (4, 6), (4, 8), (5, 6), (5, 7), (5, 8)]
    expected = np.mean([source[:, :, r, c] for r, c in ring], axis=0)
    np.testing.assert_allclose(result[:, :, 4, 7], expected, rtol=1e-6)
    assert result[:, :, 15, 18].min() > 50  # the disk level, not 0
    # Nothing else changed; the input is intact.
    keep = ~bad
    np.testing.assert_array_equal(result[:, :, keep], source[:, :, keep])
    np.testing.assert_array_equal(np.isnan(values(ds)), np.isnan(source))
    assert fixed.provenance[-1]["count"] == 3 and [4, 7] in fixed.provenance[-1]["pixels"]
    # A clean data set has no bad pixels (the disk edge is not mistaken for them).
    clean = rng.poisson(200 * disk + 5, size=(6, 8, 32, 34)).astype(np.float32)
    assert not find_bad_pixels(clean).any()


def test_repair_keeps_integer_dtype():
    data = np.full((2, 2, 8, 8), 10, dtype=np.uint16)
    data[:, :, 3, 3] = 60000
    out = repair_bad_pixels(data)
    assert out.dtype == np.uint16 and np.all(out.data == 10)


# -- direct-beam centring ----------------------------------------------------------------
def _descanned_disks(lazy=False):
    rows, cols = np.indices((9, 10), dtype=float)
    plane_y = 14.2 + 0.23 * rows - 0.11 * cols
    plane_x = 17.9 - 0.08 * rows + 0.19 * cols
    data = np.stack([[soft_disk((32, 36), (plane_y[i, j], plane_x[i, j]), 6.0) for j in range(10)]
                     for i in range(9)]).astype(np.float32)
    if lazy:
        import dask.array as da

        data = da.from_array(data, chunks=(4, 5, 32, 36))
    return Dataset4D(data, Calibration()), np.stack([plane_y, plane_x])


@pytest.mark.parametrize("lazy", [False, True])
def test_centring_removes_a_known_descan_plane(lazy):
    ds, plane = _descanned_disks(lazy)
    centres = find_beam_centers(ds)
    np.testing.assert_allclose(centres, plane, atol=0.03)
    fitted, coefficients = fit_descan_plane(centres)
    np.testing.assert_allclose(coefficients[0], [14.2, 0.23, -0.11], atol=0.02)
    out = center_patterns(ds)
    assert out.calibration.det_origin == (15.5, 17.5)
    after = find_beam_centers(out)
    np.testing.assert_allclose(after[0], 15.5, atol=0.03)
    np.testing.assert_allclose(after[1], 17.5, atol=0.03)
    assert out.provenance[-1]["step"] == "center_patterns"
    # Whole-pixel shifts keep the counts.
    whole = center_patterns(ds, order=0, target=(16, 18))
    assert np.abs(find_beam_centers(whole) - np.array([16, 18])[:, None, None]).max() <= 0.5 + 0.03
    np.testing.assert_allclose(values(whole).sum(axis=(2, 3)), values(ds).sum(axis=(2, 3)), rtol=1e-6)


def test_shift_pattern_moves_the_centre_of_mass_exactly():
    image = soft_disk((24, 24), (11.0, 12.0), 4.0)
    moved = shift_pattern(image, 1.3, -0.6)
    rows, cols = np.indices(image.shape)
    assert (moved * rows).sum() / moved.sum() == pytest.approx((image * rows).sum() / image.sum() + 1.3)
    assert (moved * cols).sum() / moved.sum() == pytest.approx((image * cols).sum() / image.sum() - 0.6)
    assert moved.sum() == pytest.approx(image.sum())


# -- PCA -----------------------------------------------------------------------------------------
def test_pca_with_all_components_reconstructs_the_data():
    ds = dataset(shape=(5, 6, 6, 7), dtype=np.float64)
    full = pca_denoise(ds, n_components=30)  # min(30 patterns, 42 pixels)
    np.testing.assert_allclose(values(full), values(ds), atol=1e-9)
    assert full.provenance[-1]["explained_variance_ratio"] == pytest.approx(1.0)


@pytest.mark.parametrize("lazy", [False, True])
def test_pca_denoises_low_rank_data(lazy):
    rng = np.random.default_rng(5)
    basis = rng.random((3, 12 * 12))
    weights = rng.random((16 * 16, 3))
    clean = (weights @ basis).reshape(16, 16, 12, 12)
    noisy = clean + rng.normal(0, 0.05, clean.shape)
    data = noisy
    if lazy:
        import dask.array as da

        data = da.from_array(noisy, chunks=(3, 16, 12, 12))
    ds = Dataset4D(data)
    exact = pca_denoise(ds, 3)
    streamed, model = pca_denoise(ds, 3, incremental=True, batch_size=40, return_model=True)
    assert model.n_samples_seen_ == 256
    assert streamed.is_lazy == lazy
    for out in (exact, streamed):
        error = np.abs(values(out) - clean).mean()
        assert error < 0.4 * np.abs(noisy - clean).mean()
    np.testing.assert_allclose(values(streamed), values(exact), atol=0.02)
    # All components, incrementally: exact reconstruction.
    full = pca_denoise(ds, 144, incremental=True, batch_size=150)
    np.testing.assert_allclose(values(full), noisy, atol=1e-8)
    with pytest.raises(ValueError, match=r"n_components must be a whole number from 1 to .* = 144, got 145"):
        pca_denoise(ds, 145)


def test_pca_rejects_nan():
    data = np.ones((3, 3, 4, 4))
    data[1, 1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        pca_denoise(data, 2)
