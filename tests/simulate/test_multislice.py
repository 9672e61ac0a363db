"""Tests of the multislice simulator and the ZnS [011] data set against physics that does not
depend on them: scattering factors of another parametrisation, the projected potential's
integral, the propagator's unitarity, intensity conservation, the single-slice limit, and
Z contrast and COM fields at the known column positions.

Kept small (tiny grids, thin crystals, one default-thickness ZnS run shared by a fixture).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_4dstem_rvae import simulate
from napari_4dstem_rvae.dataset import Calibration, Dataset4D, electron_wavelength_angstrom
from napari_4dstem_rvae.simulate.potentials import _frequencies
from napari_4dstem_rvae.simulate.stem4d import _Probe, _probe_spectrum

A0E = simulate.BOHR_RADIUS_ANGSTROM * simulate.ELECTRON_CHARGE_VOLT_ANGSTROM
WAVELENGTH = electron_wavelength_angstrom(60.0)


def probe_waves(box, grid, positions, defocus=0.0, semiangle_mrad=31.0):
    """complex64 probe waves (n, n_y, n_x) at ``positions`` (n, 2), 60 kV."""
    ky, kx = _frequencies(box, grid)
    spectrum = _probe_spectrum(ky, kx, box, WAVELENGTH, semiangle_mrad * 1e-3 / WAVELENGTH,
                               defocus)
    return _Probe(spectrum, ky, kx).waves(np.asarray(positions, dtype=float))


def centre_of_mass(patterns, origin):
    rows, cols = np.indices(patterns.shape[-2:], dtype=float)
    total = patterns.sum(axis=(-2, -1))
    return np.stack([(patterns * (rows - origin[0])).sum(axis=(-2, -1)) / total,
                     (patterns * (cols - origin[1])).sum(axis=(-2, -1)) / total], axis=-1)


# -- scattering factors and projected potentials of Zn and S ------------------------------------
# f_e(0) of Peng, Ren, Dudarev & Whelan, Acta Cryst. A52, 257 (1996), an independent fit of
# the same Hartree-Fock scattering factors: f_e(s) = Σ a_i exp(−b_i s²), so f_e(0) = Σ a_i (Å).
PENG_FE0 = {6: 0.0489 + 0.2091 + 0.7537 + 1.1420 + 0.3555,
            14: 0.0567 + 0.3365 + 0.8104 + 2.4960 + 2.1186,
            16: 0.0915 + 0.4312 + 1.0847 + 2.4671 + 1.0852,
            30: 0.1780 + 0.8096 + 1.6744 + 1.9499 + 1.4495}


@pytest.mark.parametrize("z", [6, 14, 16, 30])
def test_scattering_factor_at_zero_agrees_with_peng(z):
    assert simulate.electron_scattering_factor(0.0, z) == pytest.approx(PENG_FE0[z], rel=5e-3)


@pytest.mark.parametrize("z", [16, 30])
def test_zn_and_s_tend_to_rutherford_at_large_angles(z):
    # Mott–Bethe: f_e(q) → Z / (2π² a0 q²) once the X-ray factor f_x(q) has vanished.
    q = 30.0
    expected = z / (2 * np.pi**2 * simulate.BOHR_RADIUS_ANGSTROM * q**2)
    assert simulate.electron_scattering_factor(q, z) == pytest.approx(expected, rel=0.03)


def test_zinc_scatters_more_than_sulfur():
    qs = np.linspace(0, 6, 61)
    zinc, sulfur = (simulate.electron_scattering_factor(qs, z) for z in (30, 16))
    assert np.all(zinc > sulfur)
    assert np.all(np.diff(zinc) < 0) and np.all(np.diff(sulfur) < 0)


@pytest.mark.parametrize("z, integral", [(16, 247.6), (30, 290.7)])
def test_single_atom_projected_potential_integral(z, integral):
    from scipy.integrate import quad

    # ∫ v_z d²r is the 2D Fourier transform of v_z at q = 0: 2π a0 e f_e(0) (Kirkland ch. 5);
    # with the tabulated coefficients 247.6 V·Å² for S and 290.7 V·Å² for Zn.
    analytic = 2 * np.pi * A0E * simulate.electron_scattering_factor(0.0, z)
    assert analytic == pytest.approx(integral, abs=0.05)
    # The real-space formula (Bessel K0 + Gaussians) integrated over the plane.
    def ring(r):
        return 2 * np.pi * r * simulate.atom_projected_potential(r, z)

    radial = sum(quad(ring, low, high, limit=200)[0]
                 for low, high in [(0, 0.01), (0.01, 0.5), (0.5, 5), (5, 60)])
    assert radial == pytest.approx(analytic, rel=1e-4)
    # The potential built on an FFT grid, as the multislice slices are.
    box, grid = (10.0, 12.0), (100, 120)
    potential = simulate.projected_potential([[4.3, 6.1, z]], box, grid)
    assert potential.sum() * (box[0] / grid[0]) * (box[1] / grid[1]) == pytest.approx(
        analytic, rel=1e-6)


# -- the propagator ------------------------------------------------------------------------
def test_fresnel_propagator_is_unitary_and_reversible():
    box, grid = (10.0, 12.0), (64, 80)
    q_max = simulate.band_limit(box, grid)
    assert q_max == pytest.approx(2 / 3 * min(64 / 10.0, 80 / 12.0) / 2)
    ky, kx = _frequencies(box, grid)
    inside = np.hypot(ky[:, None], kx[None, :]) <= q_max
    propagator = simulate.fresnel_propagator(box, grid, 60.0, 2.0)
    np.testing.assert_allclose(np.abs(propagator[inside]), 1.0, atol=1e-12)
    assert np.all(propagator[~inside] == 0)
    # Exactly the Fresnel phase −πλΔz k² within the band.
    k2 = ky[:, None] ** 2 + kx[None, :] ** 2
    np.testing.assert_allclose(propagator[inside], np.exp(-1j * np.pi * WAVELENGTH * 2.0 * k2)[inside])

    rng = np.random.default_rng(0)
    spectrum = (rng.normal(size=grid) + 1j * rng.normal(size=grid)) * inside
    wave = np.fft.ifft2(spectrum)
    forward = np.fft.ifft2(propagator * np.fft.fft2(wave))
    assert np.sum(np.abs(forward) ** 2) == pytest.approx(np.sum(np.abs(wave) ** 2), rel=1e-12)
    assert np.abs(forward - wave).max() > 0.1 * np.abs(wave).max()   # it did something
    back = np.fft.ifft2(simulate.fresnel_propagator(box, grid, 60.0, -2.0) * np.fft.fft2(forward))
    np.testing.assert_allclose(back, wave, atol=1e-12 * np.abs(wave).max())
    # Two steps make one: P(Δz1)·P(Δz2) = P(Δz1 + Δz2).
    np.testing.assert_allclose(
        simulate.fresnel_propagator(box, grid, 60.0, 0.7) * simulate.fresnel_propagator(box, grid, 60.0, 1.3),
        propagator, atol=1e-12)


def test_vacuum_propagation_brings_a_defocused_probe_to_focus():
    # Defocus convention: a probe with defocus Δf > 0 is focused Δf below the entrance
    # surface; 5 vacuum slices 30 Å apart propagate it by 120 Å.
    box, grid = (16.0, 16.0), (96, 96)
    start = probe_waves(box, grid, [[8.0, 8.0]], defocus=120.0)
    vacuum = simulate.slice_transmission(np.empty((0, 3)), box, grid, 60.0)
    np.testing.assert_allclose(vacuum, 1.0, atol=1e-12)
    propagator = simulate.fresnel_propagator(box, grid, 60.0, 30.0)
    exit_wave = simulate.multislice(start, [vacuum] * 5, propagator)
    focused = probe_waves(box, grid, [[8.0, 8.0]], defocus=0.0)
    np.testing.assert_allclose(exit_wave, focused, atol=1e-5 * np.abs(focused).max())
    assert np.sum(np.abs(exit_wave) ** 2) == pytest.approx(1.0, abs=1e-5)
    assert np.abs(start).max() < 0.5 * np.abs(focused).max()
    # The input is left unchanged.
    np.testing.assert_array_equal(start, probe_waves(box, grid, [[8.0, 8.0]], defocus=120.0))


# -- intensity: conserved without absorption, lost with it ---------------------------------------
@pytest.fixture(scope="module")
def graphene_sheet():
    atoms, box = simulate.graphene_supercell((4, 7), (8.0, 8.0))
    return atoms, box


def test_pattern_sum_is_conserved_without_absorption(graphene_sheet):
    # AA-stacked graphene sheets 3.35 Å apart; probes on a column and between columns.
    atoms, box = graphene_sheet
    positions = [[8.0, 8.0], [8.7, 7.5]]
    totals = {}
    for grid in ((210, 210), (264, 264)):            # band limits 4.1 and 5.1 1/Å
        transmission = simulate.slice_transmission(atoms, box, grid, 60.0)
        propagator = simulate.fresnel_propagator(box, grid, 60.0, 3.35)
        waves = probe_waves(box, grid, positions)
        for repeats in (1, 2):
            exit_wave = simulate.multislice(waves, [transmission], propagator, repeats)
            # Orthonormal FFT: the whole far field sums to Σ|ψ|².
            far_field = np.abs(np.fft.fft2(exit_wave, norm="ortho")) ** 2
            totals[grid, repeats] = far_field.sum(axis=(1, 2))
            np.testing.assert_allclose(totals[grid, repeats], (np.abs(exit_wave) ** 2).sum(axis=(1, 2)),
                                       rtol=1e-5)
    for (grid, repeats), total in totals.items():
        # Only the scattering beyond the band limit is lost: < 1e-3 of the beam.
        assert np.all(total <= 1.0 + 1e-5) and np.all(total > 1 - 1e-3), (grid, repeats, total)
    # ... and less of it with a wider band.
    for repeats in (1, 2):
        assert np.all(1 - totals[(264, 264), repeats] < 1 - totals[(210, 210), repeats])
    # Through vacuum slices nothing is lost at all.
    grid = (210, 210)
    vacuum = simulate.slice_transmission([], box, grid, 60.0)
    exit_wave = simulate.multislice(probe_waves(box, grid, positions), [vacuum] * 5,
                                    simulate.fresnel_propagator(box, grid, 60.0, 3.35))
    np.testing.assert_allclose((np.abs(exit_wave) ** 2).sum(axis=(1, 2)), 1.0, atol=1e-5)


def test_absorption_removes_intensity_growing_with_thickness(graphene_sheet):
    atoms, box = graphene_sheet
    grid = (210, 210)
    propagator = simulate.fresnel_propagator(box, grid, 60.0, 3.35)
    waves = probe_waves(box, grid, [[8.0, 8.0], [8.7, 7.5]])
    elastic = simulate.slice_transmission(atoms, box, grid, 60.0)
    absorbing = simulate.slice_transmission(atoms, box, grid, 60.0, absorption=0.1)
    previous = np.ones(2)
    for repeats in (1, 2, 4, 8):
        kept = (np.abs(simulate.multislice(waves, [absorbing], propagator, repeats)) ** 2).sum(axis=(1, 2))
        without = (np.abs(simulate.multislice(waves, [elastic], propagator, repeats)) ** 2).sum(axis=(1, 2))
        assert np.all(kept < without - 1e-3)
        assert np.all(kept < previous)
        previous = kept
    # The probe on a column loses more than between columns.
    assert previous[0] < previous[1]
    # A plane wave through one sheet: to first order, the absorbed fraction is
    # 2σκ⟨v_z⟩, ⟨v_z⟩ = N · 2π a0 e f_e(0) / area.
    sigma = simulate.interaction_constant(60.0)
    atom_integral = 2 * np.pi * A0E * simulate.electron_scattering_factor(0.0, 6)
    mean_potential = len(atoms) * atom_integral / (box[0] * box[1])
    absorbed = 1 - np.mean(np.abs(absorbing) ** 2) / np.mean(np.abs(elastic) ** 2)
    assert absorbed == pytest.approx(2 * sigma * 0.1 * mean_potential, rel=0.03)
    with pytest.raises(ValueError, match="absorption"):
        simulate.slice_transmission(atoms, box, grid, 60.0, absorption=-0.1)


# -- one slice: the phase-object simulator ----------------------------------------------------
def test_one_slice_equals_the_single_slice_phase_object_code():
    box = (15.0, 15.0)
    atoms = np.array([[7.0, 7.3, 30], [8.2, 6.1, 16]])
    positions = np.array([[7.4, 6.9], [5.0, 5.0], [8.0, 6.5]])
    det_shape, det_pixel = (32, 32), 4.0
    # The grid and band limit simulate_4dstem chooses for this detector.
    k_pixel, k_aperture = det_pixel * 1e-3 / WAVELENGTH, 31e-3 / WAVELENGTH
    k_edge, k_corner = k_pixel * 16, k_pixel * math.hypot(32, 32) / 2
    from napari_4dstem_rvae.simulate.stem4d import _grid_for

    grid = _grid_for(box, (k_edge + k_corner + k_aperture) / 2)
    nyquist = min(grid[0] / box[0], grid[1] / box[1]) / 2
    q_max = max(2 * nyquist - k_edge - k_aperture, k_aperture)

    # The transmission function and the exit wave.
    t_multislice = simulate.slice_transmission(atoms, box, grid, 60.0, q_max=q_max)
    t_phase = simulate.transmission_function(atoms, box, grid, 60.0, q_max)
    np.testing.assert_allclose(t_multislice, t_phase, atol=1e-12)
    waves = probe_waves(box, grid, positions)
    propagator = simulate.fresnel_propagator(box, grid, 60.0, 2.0, q_max)
    exit_waves = simulate.multislice(waves, [t_multislice], propagator)
    np.testing.assert_allclose(exit_waves, waves * t_phase.astype(np.complex64), atol=1e-6)
    # The patterns.
    phase_object = simulate.simulate_4dstem(atoms, box, positions, det_shape=det_shape,
                                            det_pixel_mrad=det_pixel)
    one_slice = simulate.simulate_multislice([atoms], box, positions, slice_thickness=2.0,
                                             det_shape=det_shape, det_pixel_mrad=det_pixel,
                                             grid=grid, q_max=q_max)
    np.testing.assert_allclose(one_slice, phase_object, rtol=1e-5, atol=1e-9)


def test_slice_atoms_cuts_along_the_beam():
    atoms = np.array([[1.0, 2.0, 0.1, 6], [3.0, 4.0, 2.5, 14], [5.0, 6.0, 2.0, 30]])
    slices = simulate.slice_atoms(atoms, 2.0, 3)
    assert [len(s) for s in slices] == [1, 2, 0]
    np.testing.assert_array_equal(slices[1], [[3.0, 4.0, 14], [5.0, 6.0, 30]])
    assert len(simulate.slice_atoms(atoms, 1.0)) == 3
    with pytest.raises(ValueError, match="deeper"):
        simulate.slice_atoms(atoms, 1.0, 2)
    with pytest.raises(ValueError, match="z ≥ 0"):
        simulate.slice_atoms([[0, 0, -1.0, 6]], 1.0)


def test_a_grid_too_coarse_for_the_detector_is_refused():
    with pytest.raises(ValueError, match="band limit"):
        simulate.simulate_multislice([[[5.0, 5.0, 30]]], (10.0, 10.0), [[5.0, 5.0]],
                                     slice_thickness=2.0, det_shape=(32, 32), det_pixel_mrad=4.0,
                                     grid=(24, 24))


# -- scans of a periodic crystal ------------------------------------------------------------
def test_periodic_scan_is_exact_and_applies_the_source_blur_exactly():
    cell = (3.8, 5.4)
    n = (9, 13)
    iy, ix = np.meshgrid(np.arange(n[0]), np.arange(n[1]), indexing="ij")
    y, x = iy * cell[0] / n[0], ix * cell[1] / n[1]

    def field(y, x, sigma=0.0):
        q1, q2, q3 = 2 / cell[0], 3 / cell[1], math.hypot(1 / cell[0], 4 / cell[1])
        return (1.0 + np.cos(2 * np.pi * 2 * y / cell[0]) * np.exp(-2 * np.pi**2 * sigma**2 * q1**2)
                + 0.5 * np.sin(2 * np.pi * 3 * x / cell[1]) * np.exp(-2 * np.pi**2 * sigma**2 * q2**2)
                + 0.3 * np.cos(2 * np.pi * (y / cell[0] + 4 * x / cell[1]))
                * np.exp(-2 * np.pi**2 * sigma**2 * q3**2))

    samples = np.stack([field(y, x), 2 * field(y, x)], axis=-1)   # two "detector pixels"
    rows, cols = np.linspace(-2.0, 7.0, 11), np.linspace(-1.0, 9.0, 7)
    expected = field(rows[:, None], cols[None, :])
    np.testing.assert_allclose(simulate.periodic_scan(samples, cell, rows, cols)[..., 0],
                               expected, atol=1e-12)
    blurred = simulate.periodic_scan(samples, cell, rows, cols, source_sigma=0.4)
    np.testing.assert_allclose(blurred[..., 0], field(rows[:, None], cols[None, :], 0.4), atol=1e-12)
    np.testing.assert_allclose(blurred[..., 1], 2 * blurred[..., 0], atol=1e-12)


def test_periodic_scan_reproduces_direct_multislice():
    # A thin ZnS crystal: the data at arbitrary probe positions from the probe grid over
    # one cell agree with the multislice run at those positions.
    basis, (cell_y, cell_x, cell_z) = simulate.zincblende_011_cell()
    dz = cell_z / 2
    basis[:, 2] = np.mod(basis[:, 2] + dz / 2, cell_z)
    repeats = (5, 4)
    box = (repeats[0] * cell_y, repeats[1] * cell_x)
    from napari_4dstem_rvae.simulate.zns import _tile

    slices = simulate.slice_atoms(_tile(basis, (cell_y, cell_x), repeats), dz, 2)
    options = dict(slice_thickness=dz, repeats=2, det_shape=(16, 16), det_pixel_mrad=8.0,
                   absorption=0.1)
    n = simulate.probe_grid_for_cell((cell_y, cell_x), box, 60.0, 31.0)
    assert n == (11, 15)
    iy, ix = np.meshgrid(np.arange(n[0]), np.arange(n[1]), indexing="ij")
    samples = simulate.simulate_multislice(
        slices, box, np.stack([iy * cell_y / n[0], ix * cell_x / n[1]], axis=-1), **options)
    rows, cols = np.array([-2.1, 1.37, 6.02]), np.array([0.55, 9.9])
    direct = simulate.simulate_multislice(
        slices, box, np.stack(np.meshgrid(rows, cols, indexing="ij"), axis=-1), **options)
    interpolated = simulate.periodic_scan(samples, (cell_y, cell_x), rows, cols)
    # Agreement to the slight aperiodicity of the sampled transmission functions (< 1e-3).
    assert np.abs(interpolated - direct).max() < 1e-3 * direct.max()
    # Fewer probe positions than the criterion asks for do not suffice.
    m = (n[0] - 4, n[1] - 4)
    iy, ix = np.meshgrid(np.arange(m[0]), np.arange(m[1]), indexing="ij")
    coarse = simulate.simulate_multislice(
        slices, box, np.stack([iy * cell_y / m[0], ix * cell_x / m[1]], axis=-1), **options)
    assert np.abs(simulate.periodic_scan(coarse, (cell_y, cell_x), rows, cols) - direct).max() \
        > 1e-2 * direct.max()


# -- ZnS [011] -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def zns_default_thickness() -> Dataset4D:
    # Default physics (76 Å, 60 kV, 31 mrad, 0.75 Å source, absorptive); a small detector.
    return simulate.zns(det_shape=(32, 32))


def columns_in_scan(dataset, margin=0):
    step = dataset.calibration.scan_step
    scan_y, scan_x = dataset.scan_shape
    found = []
    for y, x, z in dataset.metadata["atoms"]:
        i, j = y / step, x / step
        if margin <= i <= scan_y - 1 - margin and margin <= j <= scan_x - 1 - margin:
            found.append((int(round(i)), int(round(j)), int(z)))
    return found


def test_zincblende_cell():
    atoms, (cell_y, cell_x, cell_z) = simulate.zincblende_011_cell()
    a = simulate.ZNS_LATTICE_CONSTANT
    assert (cell_y, cell_x, cell_z) == pytest.approx((a / np.sqrt(2), a, a / np.sqrt(2)))
    assert sorted(atoms[:, 3].tolist()) == [16, 16, 30, 30]
    # Each S has 4 Zn neighbours at √3a/4 = 2.34 Å (tetrahedral bonds), in the periodic crystal.
    from napari_4dstem_rvae.simulate.zns import _tile

    crystal = _tile(atoms, (cell_y, cell_x), (3, 3))
    crystal = np.concatenate([crystal + [0, 0, k * cell_z, 0] for k in (-1, 0, 1)])
    sulfur = atoms[atoms[:, 3] == 16][0] + [cell_y, cell_x, 0, 0]
    zinc = crystal[crystal[:, 3] == 30]
    distances = np.sort(np.linalg.norm(zinc[:, :3] - sulfur[:3], axis=1))
    np.testing.assert_allclose(distances[:4], np.sqrt(3) * a / 4, rtol=1e-9)
    assert distances[4] > 4.0
    # The projected dumbbell: Zn and S columns a/4 apart along x.
    assert atoms[1, 1] - atoms[0, 1] == pytest.approx(a / 4)
    assert atoms[1, 0] == atoms[0, 0]


def test_zns_shape_calibration_and_metadata(zns_default_thickness):
    dataset = zns_default_thickness
    assert isinstance(dataset, Dataset4D) and isinstance(dataset.data, np.ndarray)
    assert dataset.shape == (32, 32, 32, 32)
    assert dataset.dtype == np.float32
    calibration = dataset.calibration
    assert isinstance(calibration, Calibration)
    assert calibration.scan_step == pytest.approx(0.18)
    assert calibration.scan_unit == "Å" and calibration.det_unit == "mrad"
    assert calibration.det_pixel_size == pytest.approx(6 * 31.0 / 32)
    assert calibration.energy_kev == 60.0 and calibration.semiangle_mrad == 31.0
    assert calibration.det_origin == (15.5, 15.5)
    assert dataset.metadata["name"] == "simulated ZnS [011] (60 kV, 31 mrad, 77 Å)"
    structure, simulation = dataset.metadata["structure"], dataset.metadata["simulation"]
    assert structure["zone_axis"] == "[011]"
    assert structure["lattice_constant_angstrom"] == 5.41
    assert simulation["periods"] == 20 and simulation["slices"] == 40
    assert simulation["thickness_angstrom"] == pytest.approx(20 * 5.41 / np.sqrt(2))
    assert simulation["slice_thickness_angstrom"] == pytest.approx(5.41 / np.sqrt(2) / 2)
    assert simulation["absorption"] == 0.1 and simulation["frozen_phonons"] == 0
    assert simulation["source_size_angstrom"] == 0.75 and simulation["dose"] is None
    assert simulation["band_limit_mrad"] >= 195.0
    # A Zn column at the scan centre, its S partner a/4 along +x; 4 columns per cell.
    atoms = dataset.metadata["atoms"]
    centre = 16 * 0.18
    zinc = atoms[(np.abs(atoms[:, 0] - centre) < 1e-9) & (np.abs(atoms[:, 1] - centre) < 1e-9)]
    assert zinc[:, 2].tolist() == [30]
    sulfur = np.hypot(atoms[:, 0] - centre, atoms[:, 1] - centre - 5.41 / 4) < 1e-9
    assert atoms[sulfur, 2].tolist() == [16]
    # The bright-field disk: radius semi-angle / pixel, centred on det_origin.
    mean_pattern = dataset.data.mean(axis=(0, 1))
    radius = np.sqrt(np.count_nonzero(mean_pattern > mean_pattern.max() / 2) / np.pi)
    assert radius == pytest.approx(31.0 / calibration.det_pixel_size, abs=1.0)
    assert np.abs(centre_of_mass(mean_pattern, calibration.det_origin)).max() < 0.1
    # Absorption and high-angle scattering take part of the beam, most on the columns.
    totals = dataset.data.sum(axis=(2, 3))
    assert totals.max() <= 1.0 and totals.min() > 0.3
    assert totals[16, 16] < np.median(totals)


def test_zns_z_contrast_zinc_brighter_than_sulfur(zns_default_thickness):
    dataset = zns_default_thickness
    rows, cols = np.indices(dataset.det_shape)
    origin = dataset.calibration.det_origin
    angle = np.hypot(rows - origin[0], cols - origin[1]) * dataset.calibration.det_pixel_size
    adf = (dataset.data * (angle > 1.5 * 31.0)).sum(axis=(2, 3))
    found = columns_in_scan(dataset)
    zinc = [adf[i, j] for i, j, z in found if z == 30]
    sulfur = [adf[i, j] for i, j, z in found if z == 16]
    assert len(zinc) >= 2 and len(sulfur) >= 2
    assert min(zinc) > 1.2 * max(sulfur)
    # Both columns are brighter than the tunnel between dumbbells.
    assert min(sulfur) > np.percentile(adf, 25)
    assert adf.max() == pytest.approx(max(zinc), rel=0.02)


def test_zns_com_points_towards_the_columns_of_a_thin_crystal():
    from napari_4dstem_rvae.processing import compute_com

    # 4 periods (15 Å). (At the default 76 Å the whole-detector COM at the columns reverses
    # sign, the channelled beam spreading off the columns: its divergence there is positive.)
    dataset = simulate.zns((24, 24), (32, 32), thickness_angstrom=15.0, scan_step_angstrom=0.24,
                           source_size_angstrom=0.0)
    assert dataset.metadata["simulation"]["periods"] == 4
    com = compute_com(dataset, rotation=0.0, flip=False)
    found = columns_in_scan(dataset, margin=1)
    assert {z for _, _, z in found} == {16, 30}
    for i, j, _ in found:
        assert com.divergence[i, j] < 0.5 * np.percentile(com.divergence, 5)
    # Next to a column the field points at it.
    for i, j, _ in found:
        for di, dj in ((0, 1), (0, -1), (1, 0), (-1, 0)):
            vector = np.array([com.y[i + di, j + dj], com.x[i + di, j + dj]])
            cosine = -(vector @ [di, dj]) / np.linalg.norm(vector)
            assert cosine > 0.7, (i, j, di, dj, cosine)


SMALL = dict(scan_shape=(10, 12), det_shape=(16, 16), scan_step_angstrom=0.45)


def test_zns_source_size_lowers_contrast_and_keeps_intensity():
    sharp = simulate.zns(source_size_angstrom=0.0, thickness_angstrom=7.6, **SMALL)
    blurred = simulate.zns(source_size_angstrom=0.75, thickness_angstrom=7.6, **SMALL)
    # The incoherent source lowers the contrast and keeps the mean intensity over a cell.
    totals_sharp, totals_blurred = sharp.data.sum(axis=(2, 3)), blurred.data.sum(axis=(2, 3))
    assert np.ptp(totals_blurred) < 0.8 * np.ptp(totals_sharp)
    assert totals_blurred.mean() == pytest.approx(totals_sharp.mean(), rel=0.02)
    assert blurred.metadata["simulation"]["source_size_angstrom"] == 0.75


def test_zns_dose_gives_reproducible_poisson_counts():
    clean = simulate.zns(thickness_angstrom=3.8, **SMALL)
    first = simulate.zns(dose=1e4, seed=3, thickness_angstrom=3.8, **SMALL)
    again = simulate.zns(dose=1e4, seed=3, thickness_angstrom=3.8, **SMALL)
    np.testing.assert_array_equal(first.data, again.data)
    np.testing.assert_array_equal(first.data, np.round(first.data))
    assert first.dtype == np.float32 and first.metadata["simulation"]["dose"] == 1e4
    assert np.all(np.abs(first.data.sum(axis=(2, 3)) - 1e4 * clean.data.sum(axis=(2, 3)))
                  < 5 * np.sqrt(1e4))
    # Another seed, other counts (the same noise-free data underneath).
    other = np.random.default_rng(4).poisson(clean.data.astype(np.float64) * 1e4)
    assert not np.array_equal(first.data, other)


def test_zns_frozen_phonons():
    phonons = simulate.zns(frozen_phonons=2, thickness_angstrom=3.8, **SMALL)
    simulation = phonons.metadata["simulation"]
    assert "frozen phonons (2 configurations)" in simulation["model"]
    assert simulation["absorption"] == 0.0 and simulation["rms_displacement_angstrom"] == 0.087
    assert np.all(np.isfinite(phonons.data)) and phonons.data.min() >= 0
    assert np.all(phonons.data.sum(axis=(2, 3)) <= 1.0 + 1e-5)
    # Displaced atoms: close to the static crystal, not equal to it; reproducible by seed.
    static = simulate.zns(absorption=0.0, thickness_angstrom=3.8, **SMALL)
    assert 0 < np.abs(phonons.data - static.data).max() < 0.2 * static.data.max()
    np.testing.assert_array_equal(
        simulate.zns(frozen_phonons=2, thickness_angstrom=3.8, **SMALL).data, phonons.data)


def test_zns_invalid_parameters_are_refused():
    for bad, match in ((dict(absorption=-0.1), "absorption"), (dict(thickness_angstrom=0), "thickness"),
                       (dict(slices_per_period=0), "slices_per_period"),
                       (dict(frozen_phonons=-1), "frozen_phonons"), (dict(dose=0), "dose"),
                       (dict(source_size_angstrom=-1), "source_size"),
                       (dict(scan_step_angstrom=0), "scan_step"), (dict(dtype=np.int32), "dtype")):
        with pytest.raises(ValueError, match=match):
            simulate.zns((2, 2), (16, 16), **bad)
