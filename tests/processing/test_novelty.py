"""The novelty map against the scan's periodic average: a single vacancy and a single Si
dopant in graphene, with counting noise, against the simulator's known defect position."""

from __future__ import annotations

import numpy as np
import pytest

from napari_4dstem_rvae.processing.novelty import (
    detector_blocks,
    find_lattice,
    lattice_novelty,
)
from napari_4dstem_rvae.simulate import graphene


def _defect_distance(ds) -> np.ndarray:
    step = ds.calibration.scan_step_yx[0]
    y0, x0 = ds.metadata["defect"]["position_angstrom"]
    yy, xx = np.mgrid[0:ds.scan_shape[0], 0:ds.scan_shape[1]] * step
    return np.hypot(yy - y0, xx - x0)


def _novelty(ds, counts: bool):
    x = np.asarray(ds.data)
    return lattice_novelty(detector_blocks(x.reshape(-1, *x.shape[2:])), ds.scan_shape,
                           ds.calibration.scan_step_yx[0], counts=counts)


def test_detector_blocks_sum_every_pixel_once():
    x = np.arange(2 * 10 * 13, dtype=np.float32).reshape(2, 10, 13)
    blocks = detector_blocks(x, grid=4)
    assert blocks.shape == (2, 16)
    np.testing.assert_allclose(blocks.sum(1), x.sum((1, 2)))
    np.testing.assert_allclose(blocks[0, 0], x[0, :2, :3].sum())  # rows 0–1 (10 / 4 rounded), cols 0–2


@pytest.mark.parametrize("defect", ["vacancy", "si"])
@pytest.mark.slow
def test_a_single_defect_is_marked_at_1e5_electrons(defect):
    """Poisson counts, 10⁵ e⁻ per pattern (a few per cent of a pattern change at the defect):
    robust contrast > 5 within 1.5 Å, the top 1 % of the map within 3 Å."""
    ds = graphene(scan_shape=(32, 32), det_shape=(64, 64), defect=defect, dose=1e5, seed=7)
    result = _novelty(ds, counts=True)
    assert result is not None and result.periodic_share > 0.8
    dist = _defect_distance(ds)
    z = result.novelty
    outside = z[dist > 4]
    contrast = abs(z[dist <= 1.5].mean() - np.median(z)) / np.median(np.abs(outside - np.median(outside)))
    top = z >= np.quantile(z, 0.99)
    assert contrast > 5, contrast
    assert (dist[top] <= 3).all()


@pytest.mark.slow
def test_lattice_found_and_perfect_lattice_quiet():
    """The reciprocal vectors of graphene (d = 2.13 Å planes) found from the data; a perfect
    lattice with noise shows nothing like a defect: its highest score is what counting noise
    gives a χ² of a few degrees of freedom over a thousand positions, far below a single
    vacancy's in the same scan at ten times less dose."""
    ds = graphene(scan_shape=(32, 32), det_shape=(64, 64), dose=1e5, seed=8)
    result = _novelty(ds, counts=True)
    assert result is not None
    spacing = ds.calibration.scan_step_yx[0] / np.linalg.norm(result.g, axis=1)
    np.testing.assert_allclose(spacing, 2.46 * np.sqrt(3) / 2, rtol=0.03)
    quiet = np.nanmax(result.novelty)
    assert quiet < 12
    vacancy = _novelty(graphene(scan_shape=(32, 32), det_shape=(64, 64), defect="vacancy", dose=1e4, seed=8),
                       counts=True)
    assert np.nanmax(vacancy.novelty) > 2 * quiet


@pytest.mark.parametrize("defect", ["vacancy", "si"])
def test_a_single_defect_is_marked_at_1e4_electrons(defect):
    """10⁴ e⁻ per pattern, where one pattern's change at the defect is below its counting
    noise: the residuals projected on the lattice's own directions and pooled over 0.25 Å
    mark it (contrast > 5, the top 1 % of the map within 3 Å)."""
    ds = graphene(scan_shape=(32, 32), det_shape=(64, 64), defect=defect, dose=1e4, seed=11)
    result = _novelty(ds, counts=True)
    dist = _defect_distance(ds)
    z = result.novelty
    outside = z[dist > 4]
    contrast = abs(z[dist <= 1.5].mean() - np.median(z)) / np.median(np.abs(outside - np.median(outside)))
    assert contrast > 5, contrast
    assert (dist[z >= np.quantile(z, 0.99)] <= 3).all()


def test_pooling_raises_the_com_fidelity_and_keeps_a_one_position_defect():
    """Lattice pooling at 10³ e⁻: the COM of the pooled patterns follows the noise-free COM far
    better than the COM of the patterns as measured; a single odd pattern (a hot frame) is kept
    in the novelty map, which is made from the measured patterns."""
    from napari_4dstem_rvae.dataset import Dataset4D
    from napari_4dstem_rvae.processing import compute_com
    from napari_4dstem_rvae.processing.pooling import pool_patterns

    clean = graphene(scan_shape=(32, 32), det_shape=(32, 32))
    ds = graphene(scan_shape=(32, 32), det_shape=(32, 32), dose=1e3, seed=12)
    truth = compute_com(clean, rotation=0.0, flip=False).magnitude

    def r(data):
        com = compute_com(Dataset4D(np.asarray(data, np.float32), ds.calibration), rotation=0.0, flip=False)
        return abs(np.corrcoef(com.magnitude.ravel(), truth.ravel())[0, 1])

    pooled = pool_patterns(ds.data, "lattice", counts=True, step_angstrom=ds.calibration.scan_step_yx[0])
    assert pooled.mode == "lattice" and pooled.data.shape == ds.shape
    assert r(pooled.data) > r(ds.data) + 0.3
    none = pool_patterns(ds.data, "none", counts=True)
    np.testing.assert_array_equal(none.data, np.asarray(ds.data, np.float32))
    hot = np.array(ds.data, copy=True)
    hot[9, 21] *= 3                                  # one frame three times as bright
    z = _novelty(Dataset4D(hot, ds.calibration, metadata=ds.metadata), counts=True).novelty
    assert np.unravel_index(np.nanargmax(z), z.shape) == (9, 21)


@pytest.mark.slow
def test_no_lattice_no_lattice_novelty():
    """A scan without periodicity (patterns that change at random) has no periodic average:
    ``None`` (the caller falls back to the model's residual)."""
    rng = np.random.default_rng(0)
    blocks = rng.poisson(100 * rng.gamma(2.0, size=(32 * 32, 64)))
    assert lattice_novelty(blocks, (32, 32), 0.25, counts=True) is None
    maps = rng.normal(size=(3, 32, 32))
    found = find_lattice(maps)
    assert found is None or found[1] < 0.5


@pytest.mark.slow
def test_encode_uses_the_lattice_and_falls_back_to_the_model(tmp_path):
    """Through the rVAE: ``encode(..., novelty=True)`` gives the lattice novelty for a
    calibrated crystal (defect on top) and the model's residual for a scan without lattice;
    the results file records which."""
    import h5py

    from napari_4dstem_rvae import rvae
    from napari_4dstem_rvae.results import write_results

    ds = graphene(scan_shape=(24, 24), det_shape=(32, 32), defect="vacancy", dose=1e5, seed=9)
    result = rvae.fit(ds, steps=60, threads=2)
    maps = rvae.encode(result.model, ds, novelty=True)
    assert maps.novelty_reference == "lattice"
    where = np.unravel_index(np.nanargmax(maps.novelty), maps.novelty.shape)
    assert _defect_distance(ds)[where] <= 1.5
    path = write_results(tmp_path / "r.h5", calibration=ds.calibration, scan_shape=ds.scan_shape, rvae=maps)
    with h5py.File(path, "r") as f:
        assert f["rvae/novelty"].attrs["reference"] == "lattice"
        np.testing.assert_array_equal(f["rvae/novelty"][()], maps.novelty)

    rng = np.random.default_rng(1)
    noise = rng.poisson(5.0, size=(24, 24, 32, 32)).astype(np.float32)
    maps = rvae.encode(result.model, noise, novelty=True)
    assert maps.novelty_reference == "model" and np.isfinite(maps.novelty).all()


def test_periodic_directions_survive_an_svd_that_does_not_converge(monkeypatch):
    """LAPACK's SVD can fail on a valid matrix (it did on a 10³ e⁻ scan): the same directions
    then come from the scatter matrix's eigenvectors."""
    from napari_4dstem_rvae.processing import novelty

    rng = np.random.default_rng(0)
    periodic = rng.poisson(50.0, (200, 12)).astype(np.float64) + np.outer(np.sin(np.arange(200) / 7), np.arange(12))
    expected = novelty._periodic_directions(periodic, True, 3)

    def fails(*args, **kwargs):
        raise np.linalg.LinAlgError("SVD did not converge")

    monkeypatch.setattr(novelty.np.linalg, "svd", fails)
    got = novelty._periodic_directions(periodic, True, 3)
    assert got.shape == expected.shape == (3, 12)
    np.testing.assert_allclose(np.abs((got * expected).sum(1)), 1.0, atol=1e-6)   # same up to sign


def test_the_residual_width_is_chosen_by_the_data_narrow_at_a_high_dose():
    """Lattice pooling of counts chooses how far it pools the residual by binomial thinning: at
    10⁵ e⁻ near a single vacancy, narrower than at 10³ e⁻, and its pooled COM follows the
    noise-free COM closer than the fixed width (0.25 Å) and than the COM smoothed over one step."""
    from scipy.ndimage import gaussian_filter

    from napari_4dstem_rvae.dataset import Dataset4D
    from napari_4dstem_rvae.processing import compute_com
    from napari_4dstem_rvae.processing import pooling

    options = {"scan_shape": (40, 40), "det_shape": (32, 32), "defect": "vacancy", "scan_step_angstrom": 0.1}
    clean = graphene(**options)
    truth = compute_com(clean, rotation=0.0, flip=False).magnitude

    def r(magnitude):
        return abs(np.corrcoef(magnitude.ravel(), truth.ravel())[0, 1])

    def com(data):
        return compute_com(Dataset4D(np.asarray(data, np.float32), clean.calibration), rotation=0.0, flip=False)

    widths = {}
    for dose in (1e5, 1e3):
        ds = graphene(**options, dose=dose, seed=21)
        pooled = pooling.pool_patterns(ds.data, "lattice", counts=True, step_angstrom=0.1)
        assert pooled.mode == "lattice" and set(pooled.scores) == {f"{w:g}" for w in pooling.RESIDUAL_WIDTHS_ANGSTROM}
        widths[dose] = pooled.sigma
        if dose == 1e5:
            chosen = r(com(pooled.data).magnitude)
            measured = com(ds.data)
            smoothed = np.hypot(*(gaussian_filter(v, 1.0, mode="nearest") for v in (measured.y, measured.x)))
            assert chosen > r(smoothed), (chosen, r(smoothed))
            fixed = pooling._lattice_estimate(
                np.asarray(ds.data, np.float64).reshape(1600, -1),
                pooling.periodic_average(np.asarray(ds.data, np.float64).reshape(1600, -1), (40, 40), pooled.g),
                pooling.RESIDUAL_ANGSTROM / 0.1, np.ones((40, 40), bool), True)
            assert chosen > r(com(fixed.reshape(ds.shape)).magnitude)
    assert widths[1e5] < widths[1e3], widths
    # not counts: the fixed width
    assert pooling.pool_patterns(clean.data, "lattice", step_angstrom=0.1).sigma == pytest.approx(2.5)
