"""Centre of mass / DPC: correctness against independent calculations, conventions,
rotation calibration, reference correction, bad input and the results writer."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import soft_disk

from napari_4dstem_rvae.processing import (
    calibrate_rotation,
    compute_com,
    divergence_curl,
    rotate_field,
)


# -- helpers ---------------------------------------------------------------------------
def com_per_pattern(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Straightforward per-pattern centre of mass (row, col) in float64: the reference."""
    ny, nx, ky, kx = data.shape
    total = np.zeros((ny, nx))
    rows = np.zeros((ny, nx))
    cols = np.zeros((ny, nx))
    for i in range(ny):
        for j in range(nx):
            pattern = data[i, j].astype(np.float64)
            s = pattern.sum()
            total[i, j] = s
            rows[i, j] = (pattern.sum(axis=1) * np.arange(ky)).sum() / s
            cols[i, j] = (pattern.sum(axis=0) * np.arange(kx)).sum() / s
    return total, rows, cols


def gaussian_potential(scan_shape, centres, sigma):
    """V = Σ exp(−r²/2σ²) and its exact gradient (gy, gx): a curl-free field."""
    yy, xx = np.indices(scan_shape, dtype=np.float64)
    v = np.zeros(scan_shape)
    gy = np.zeros(scan_shape)
    gx = np.zeros(scan_shape)
    for cy, cx in centres:
        g = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
        v += g
        gy += -(yy - cy) / sigma**2 * g
        gx += -(xx - cx) / sigma**2 * g
    return v, gy, gx


def to_detector(gy, gx, rotation_deg, flip):
    """The detector-frame field d with R(θ)·F·d = g (F negates the row component)."""
    dy, dx = rotate_field(gy, gx, -rotation_deg, flip=False)
    return (-dy if flip else dy), dx


def angle_error(a, b):
    return abs((a - b + 180.0) % 360.0 - 180.0)


# -- correctness ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16])
def test_com_equals_per_pattern_numpy(dtype):
    rng = np.random.default_rng(1)
    data = (rng.random((6, 7, 24, 40)) * 1000).astype(dtype)
    before = data.copy()
    total, rows, cols = com_per_pattern(data)
    # Origin (0, 0), no reference, no rotation: the shift is the COM position itself.
    result = compute_com(data, center=(0.0, 0.0), reference=None, rotation=0.0, flip=False)
    np.testing.assert_allclose(result.y, rows, rtol=1e-6)
    np.testing.assert_allclose(result.x, cols, rtol=1e-6)
    np.testing.assert_allclose(result.intensity, total, rtol=1e-6)
    # Default origin (the detected disk): position = origin + raw shift.
    result = compute_com(data, reference=None, rotation=0.0)
    np.testing.assert_allclose(result.detector_y + result.origin[0], rows, rtol=1e-6)
    np.testing.assert_allclose(result.detector_x + result.origin[1], cols, rtol=1e-6)
    np.testing.assert_array_equal(data, before)


def test_com_of_subpixel_shifted_disk():
    shifts = [(0.0, 0.0), (0.13, -0.41), (-0.77, 0.25), (1.37, 2.91), (-2.5, -0.05)]
    center = (23.5, 24.0)
    data = np.stack([soft_disk((48, 48), (center[0] + dy, center[1] + dx), 9.3)
                     for dy, dx in shifts]).reshape(1, len(shifts), 48, 48).astype(np.float32)
    result = compute_com(data, center=center, reference=None, rotation=0.0, flip=False)
    expected = np.array(shifts)
    assert np.max(np.abs(result.y[0] - expected[:, 0])) < 0.02
    assert np.max(np.abs(result.x[0] - expected[:, 1])) < 0.02
    # A disk mask large enough for the shifted disks gives the same shifts.
    masked = compute_com(data, mask="disk", radius=13, unit="px", center=center, reference=None, rotation=0.0)
    assert np.max(np.abs(masked.y[0] - expected[:, 0])) < 0.02
    assert np.max(np.abs(masked.x[0] - expected[:, 1])) < 0.02


def test_zero_intensity_patterns_give_zero_shift():
    rng = np.random.default_rng(2)
    data = rng.random((5, 5, 16, 16)).astype(np.float32)
    data[2, 3] = 0
    result = compute_com(data, reference="mean", rotation=0.0)
    assert np.all(np.isfinite(result.x)) and np.all(np.isfinite(result.divergence))
    assert result.x[2, 3] == 0 and result.y[2, 3] == 0
    assert not result.valid[2, 3] and result.valid.sum() == 24
    # The reference mean ignores the empty pattern.
    assert abs(result.x[result.valid].mean()) < 1e-9


def test_threshold_ignores_dim_pixels():
    data = np.zeros((1, 1, 20, 20), np.float32)
    data[0, 0, 10, 10] = 10.0
    data[0, 0, 2, 2] = 1.0  # below 0.2 × max: ignored with the threshold
    plain = compute_com(data, center=(0, 0), reference=None, rotation=0.0)
    thresholded = compute_com(data, center=(0, 0), reference=None, rotation=0.0, threshold=0.2)
    assert plain.y[0, 0] == pytest.approx((10 * 10 + 2) / 11)
    assert thresholded.y[0, 0] == pytest.approx(10.0)


def test_annulus_and_custom_mask_match_explicit_sums():
    rng = np.random.default_rng(3)
    data = rng.random((4, 5, 20, 22))
    weights = np.zeros((20, 22))
    weights[3:15, 5:9] = 1
    result = compute_com(data, mask=weights, center=(0, 0), reference=None, rotation=0.0)
    masked = data * weights
    _, rows, cols = com_per_pattern(masked)
    np.testing.assert_allclose(result.y, rows, rtol=1e-9)
    np.testing.assert_allclose(result.x, cols, rtol=1e-9)
    ring = compute_com(data, mask="annulus", inner=3, outer=8, unit="px", center=(10, 11),
                       reference=None, rotation=0.0)
    r = np.hypot(*np.indices((20, 22)) - np.array([10, 11])[:, None, None])
    ring_mask = (r >= 3) & (r < 8)
    _, rows, cols = com_per_pattern(data * ring_mask)
    np.testing.assert_allclose(ring.y + 10, rows, rtol=1e-9)
    np.testing.assert_allclose(ring.x + 11, cols, rtol=1e-9)


# -- reference correction ----------------------------------------------------------------
def _disk_scan(shift_y, shift_x, center=(15.5, 15.5), radius=6.0):
    ny, nx = shift_y.shape
    data = np.empty((ny, nx, 32, 32), np.float32)
    for i in range(ny):
        for j in range(nx):
            data[i, j] = soft_disk((32, 32), (center[0] + shift_y[i, j], center[1] + shift_x[i, j]),
                                   radius, supersample=4)
    return data


def test_plane_reference_removes_descan():
    rows, cols = np.indices((6, 7), dtype=float)
    descan_y = 0.3 + 0.11 * rows - 0.07 * cols
    descan_x = -0.2 + 0.05 * rows + 0.13 * cols
    data = _disk_scan(descan_y, descan_x)
    result = compute_com(data, center=(15.5, 15.5), reference="plane", rotation=0.0)
    assert np.max(np.abs(result.y)) < 0.02 and np.max(np.abs(result.x)) < 0.02
    mean_only = compute_com(data, center=(15.5, 15.5), reference="mean", rotation=0.0)
    assert np.max(np.abs(mean_only.y)) > 0.3
    # Vacuum reference: the same scan without a sample, as data, as a map, as a result.
    signal = np.zeros((6, 7))
    signal[3, 3] = 0.5
    sample = _disk_scan(descan_y + signal, descan_x)
    for vacuum in (data, compute_com(data, reference=None, rotation=0.0),
                   np.stack([15.5 + descan_y, 15.5 + descan_x])):
        corrected = compute_com(sample, center=(15.5, 15.5), reference=vacuum, rotation=0.0)
        assert corrected.reference == "vacuum"
        np.testing.assert_allclose(corrected.y, signal, atol=0.02)
        np.testing.assert_allclose(corrected.x, 0, atol=0.02)


# -- rotation, flip and sign -------------------------------------------------------------------
def test_rotation_of_the_field_follows_the_documented_convention():
    vy, vx = rotate_field(np.array([[0.0]]), np.array([[1.0]]), 90.0)
    assert vy[0, 0] == pytest.approx(1.0) and vx[0, 0] == pytest.approx(0.0, abs=1e-12)
    vy, vx = rotate_field(np.array([[1.0]]), np.array([[0.0]]), 0.0, flip=True)
    assert vy[0, 0] == -1.0


@pytest.mark.parametrize("rotation, flip", [(0.0, False), (17.3, False), (-123.4, True),
                                            (163.0, False), (-61.7, True), (91.0, True)])
def test_calibrate_rotation_recovers_rotation_and_flip(rotation, flip):
    rng = np.random.default_rng(4)
    centres = rng.uniform(4, 44, size=(14, 2))
    potential, gy, gx = gaussian_potential((48, 52), centres, sigma=3.0)
    dy, dx = to_detector(gy, gx, rotation, flip)
    found = calibrate_rotation(dy, dx, sign_from=potential)
    assert found.flip == flip
    assert angle_error(found.rotation_deg, rotation) < 0.1
    assert found.polarity_from == "image"
    assert found.residual < 1e-2 < found.residual_other_flip
    # Without an image, the skewness of the divergence settles the 180° as well.
    by_skew = calibrate_rotation(dy, dx)
    assert by_skew.polarity_from == "skewness"
    assert angle_error(by_skew.rotation_deg, rotation) < 0.1 and by_skew.flip == flip
    # The calibrated field points towards the atoms: negative divergence there.
    vy, vx = rotate_field(dy, dx, found.rotation_deg, found.flip)
    scale = np.max(np.hypot(gy, gx))
    np.testing.assert_allclose(vy, gy, atol=2e-3 * scale)
    np.testing.assert_allclose(vx, gx, atol=2e-3 * scale)


def test_calibration_with_fixed_flip_and_anisotropic_steps():
    rng = np.random.default_rng(5)
    centres = rng.uniform(2, 18, size=(8, 2))
    # Probe positions 0.5 apart along y and 1.0 along x; the exact gradient in those units.
    y = 0.5 * np.arange(40)[:, None]
    x = 1.0 * np.arange(20)[None, :]
    potential, gy, gx = 0.0, 0.0, 0.0
    for cy, cx in centres:
        g = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * 2.0**2))
        potential, gy, gx = potential + g, gy - (y - cy) / 4.0 * g, gx - (x - cx) / 4.0 * g
    dy, dx = to_detector(gy, gx, 33.0, False)
    found = calibrate_rotation(dy, dx, spacing=(0.5, 1.0), flip=False, sign_from=potential)
    assert not found.flip and angle_error(found.rotation_deg, 33.0) < 0.1
    # Ignoring the steps (treating the scan as square) gets it wrong.
    wrong = calibrate_rotation(dy, dx, flip=False, sign_from=potential)
    assert angle_error(wrong.rotation_deg, 33.0) > 0.5


def test_compute_com_end_to_end_rotation_from_4d_data():
    """Disks shifted by a rotated, flipped gradient field; ADF ring bright at 'atoms'."""
    rotation, flip = -47.0, True
    rng = np.random.default_rng(6)
    potential, gy, gx = gaussian_potential((24, 24), rng.uniform(2, 22, size=(6, 2)), 3.5)
    scale = 0.8 / np.max(np.abs(gy))
    dy, dx = to_detector(scale * gy, scale * gx, rotation, flip)
    data = np.empty((24, 24, 32, 32), np.float32)
    for i in range(24):
        for j in range(24):
            data[i, j] = soft_disk((32, 32), (15.5 + dy[i, j], 15.5 + dx[i, j]), 5.0)
    ring = (np.hypot(*np.indices((32, 32)) - 15.5) > 9).astype(np.float32)
    data += 0.01 * potential[:, :, None, None].astype(np.float32) * ring
    result = compute_com(data, mask="disk", radius=7.5, unit="px", center=(15.5, 15.5), reference="mean")
    assert result.flip == flip
    assert angle_error(result.rotation_deg, rotation) < 0.1
    assert result.rotation.polarity_from == "image"
    assert "adf" in result.virtual
    # Negative divergence where the ADF is bright (atom columns).
    assert np.corrcoef(result.divergence.ravel(), result.virtual["adf"].ravel())[0, 1] < -0.5


def test_graphene_com_points_towards_atoms():
    from napari_4dstem_rvae.simulate import graphene

    ds = graphene((16, 16), scan_step_angstrom=0.5)
    result = compute_com(ds)
    # The simulator has no scan rotation or flip.
    assert not result.flip and angle_error(result.rotation_deg, 0.0) < 1.0
    assert result.rotation.residual < 0.1 < result.rotation.residual_other_flip
    # COM points towards atoms: on an atom (the scan centre) the divergence is strongly negative.
    assert result.divergence[8, 8] < np.percentile(result.divergence, 10)
    assert result.x_mrad is not None
    np.testing.assert_allclose(result.x_mrad, result.x * ds.calibration.det_pixel_size)
    # A known extra rotation and flip of the detector is recovered relative to it.
    dy, dx = to_detector(result.detector_y, result.detector_x, 71.0, True)
    found = calibrate_rotation(dy - dy.mean(), dx - dx.mean(), spacing=(0.5, 0.5),
                               sign_from=result.virtual["adf"])
    assert found.flip
    assert angle_error(found.rotation_deg, 71.0 + result.rotation_deg) < 0.1


# -- divergence, curl, degenerate scans -------------------------------------------------------
def test_divergence_and_curl_of_known_fields():
    yy, xx = np.indices((9, 11), dtype=float)
    div, curl = divergence_curl(2 * yy, 3 * xx, spacing=(1.0, 1.0))  # v = (3x, 2y)
    np.testing.assert_allclose(div, 5.0)
    np.testing.assert_allclose(curl, 0.0, atol=1e-12)
    div, curl = divergence_curl(xx, -yy, spacing=(0.5, 2.0))  # v = (−y, x) in index units
    np.testing.assert_allclose(div, 0.0, atol=1e-12)
    np.testing.assert_allclose(curl, 1 / 2.0 + 1 / 0.5)


def test_single_row_scan_does_not_crash():
    rng = np.random.default_rng(7)
    data = rng.random((1, 12, 16, 16)).astype(np.float32)
    result = compute_com(data, rotation="auto")
    assert result.x.shape == (1, 12)
    for values in (result.x, result.y, result.divergence, result.curl, result.angle):
        assert np.all(np.isfinite(values))
    # Documented: the y derivative of a single row is 0.
    np.testing.assert_allclose(result.divergence, np.gradient(result.x, axis=1))
    np.testing.assert_allclose(result.curl, np.gradient(result.y, axis=1))
    with pytest.warns(UserWarning, match="cannot be calibrated"):
        single = compute_com(data[:, :1], rotation="auto")
    assert single.rotation_deg == 0.0 and np.all(single.divergence == 0)


# -- bad input ----------------------------------------------------------------------------
def test_bad_input_raises_clear_errors():
    rng = np.random.default_rng(8)
    data = rng.random((4, 4, 16, 16)).astype(np.float32)
    before = data.copy()
    with pytest.raises(ValueError, match="mask.*excludes every detector pixel"):
        compute_com(data, mask=np.zeros((16, 16)))
    with pytest.raises(ValueError, match=r"shape \(8, 8\).*\(16, 16\)"):
        compute_com(data, mask=np.ones((8, 8)))
    with pytest.raises(ValueError, match=r"inner radius 40 px.*outside the detector"):
        compute_com(data, mask="annulus", inner=40, unit="px", center=(8, 8))
    with pytest.raises(ValueError, match="needs an angular detector calibration"):
        compute_com(data, mask="disk", radius=10, unit="mrad")
    with pytest.raises(ValueError, match="threshold"):
        compute_com(data, threshold=1.5)
    with pytest.raises(ValueError, match="rotation"):
        compute_com(data, rotation="sideways")
    with pytest.raises(ValueError, match="reference"):
        compute_com(data, reference="median")
    with pytest.raises(ValueError, match="4 axes"):
        compute_com(data[0])
    nan_data = data.copy()
    nan_data[1, 2, 3, 4] = np.nan
    # NaN/Inf patterns: named, left out (invalid, zero shift), not fatal for the maps
    with pytest.warns(UserWarning, match=r"NaN or Inf pixels, at scan positions \(1, 2\)"):
        marked = compute_com(nan_data, rotation=0.0)
    assert not marked.valid[1, 2] and marked.valid.sum() == marked.valid.size - 1
    assert np.isfinite(marked.magnitude).all() and marked.magnitude[1, 2] == 0
    inf_data = data.copy()
    inf_data[3, 0, 0, 0] = np.inf
    with pytest.warns(UserWarning, match=r"NaN or Inf pixels, at scan positions \(3, 0\)"):
        compute_com(inf_data, rotation=0.0)
    with pytest.raises(ValueError, match="every pattern holds NaN or Inf"):
        compute_com(np.full_like(data, np.nan), rotation=0.0, center=(15.0, 17.0))
    with pytest.raises(ValueError, match="no pattern has a positive intensity"):
        compute_com(np.zeros((2, 2, 8, 8), np.float32), center=(4, 4), rotation=0.0)
    np.testing.assert_array_equal(data, before)


def test_automatic_rotation_is_refused_when_unreliable():
    """Too few positions or too little signal: a clear warning, and 0° is used instead."""
    rng = np.random.default_rng(3)
    noise = rng.poisson(2.0, (12, 12, 16, 16)).astype(np.float32)  # a nearly dark scan
    with pytest.warns(UserWarning, match="too little signal.*0° without flip is used instead"):
        result = compute_com(noise, rotation="auto")
    assert result.rotation_deg == 0.0 and not result.flip and result.rotation.problem
    assert result.attributes()["rotation_problem"]
    with pytest.warns(UserWarning, match="only 9 probe positions"):
        compute_com(noise[:3, :3], rotation="auto")
