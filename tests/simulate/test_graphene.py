"""Tests of the graphene 4D-STEM simulator against physics that does not depend on it.

Kept small (few probe positions, small detectors): the whole file runs in seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import loaded_after_import

from napari_4dstem_rvae import simulate
from napari_4dstem_rvae.dataset import (
    Calibration,
    Dataset4D,
    electron_wavelength_angstrom,
)


def centre_of_mass(patterns: np.ndarray, origin: tuple[float, float]) -> np.ndarray:
    """(..., 2) centre of mass (row, col) of patterns, relative to ``origin``, in pixels."""
    rows, cols = np.indices(patterns.shape[-2:], dtype=float)
    total = patterns.sum(axis=(-2, -1))
    com_row = (patterns * (rows - origin[0])).sum(axis=(-2, -1)) / total
    com_col = (patterns * (cols - origin[1])).sum(axis=(-2, -1)) / total
    return np.stack([com_row, com_col], axis=-1)


@pytest.fixture(scope="module")
def small_graphene() -> Dataset4D:
    # 2 Å steps over 10 Å: the defect at the centre, probes up to 7 Å away from it.
    return simulate.graphene((6, 6), (32, 32), scan_step_angstrom=2.0 / 1.5)


# -- constants -------------------------------------------------------------------------
def test_wavelength_and_interaction_constant():
    assert electron_wavelength_angstrom(60.0) == pytest.approx(0.04866, abs=5e-5)
    # Commonly tabulated values (e.g. Kirkland 2010, ch. 5), σ in rad/(V·Å).
    assert simulate.interaction_constant(100.0) == pytest.approx(9.24e-4, rel=2e-3)
    assert simulate.interaction_constant(200.0) == pytest.approx(7.29e-4, rel=2e-3)
    assert simulate.interaction_constant(60.0) == pytest.approx(1.136e-3, rel=2e-3)


@pytest.mark.parametrize("z", [6, 14])
def test_scattering_factor_tends_to_rutherford_at_large_angles(z):
    # Mott–Bethe: f_e(q) = (Z − f_x(q)) / (2π² a0 q²) → Z / (2π² a0 q²) once f_x → 0,
    # so the fit's large-q tail identifies the element's nuclear charge.
    q = 30.0
    expected = z / (2 * np.pi**2 * simulate.BOHR_RADIUS_ANGSTROM * q**2)
    assert simulate.electron_scattering_factor(q, z) == pytest.approx(expected, rel=0.03)
    # Heavier atom, stronger scatterer at every angle.
    qs = np.linspace(0, 3, 31)
    silicon, carbon = (simulate.electron_scattering_factor(qs, z) for z in (14, 6))
    assert np.all(silicon > carbon)


def test_projected_potential_matches_kirkland_real_space_formula():
    box, grid = (12.8, 12.8), (256, 256)
    potential = simulate.projected_potential([[6.4, 6.4, 6]], box, grid)
    spacing = box[0] / grid[0]
    # Total: the 2D Fourier transform of v_z at q = 0 is 2π a0 e f_e(0).
    a0e = simulate.BOHR_RADIUS_ANGSTROM * simulate.ELECTRON_CHARGE_VOLT_ANGSTROM
    total = potential.sum() * spacing**2
    assert total == pytest.approx(2 * np.pi * a0e * simulate.electron_scattering_factor(0.0, 6),
                                  rel=1e-6)
    # Shape: the Fourier-space construction equals the Bessel-K0 + Gaussian real-space sum
    # (averaged over annuli, which removes the band-limit's ringing).
    rows, cols = np.indices(grid)
    radius = np.hypot(rows - 128, cols - 128) * spacing
    for low, high in [(0.4, 0.6), (0.8, 1.2), (1.5, 2.5)]:
        ring = (radius > low) & (radius < high)
        expected = simulate.atom_projected_potential(radius[ring], 6).mean()
        assert potential[ring].mean() == pytest.approx(expected, rel=0.01)
    # Peak at the atom, on the pixel where it sits.
    assert np.unravel_index(np.argmax(potential), grid) == (128, 128)


# -- the engine --------------------------------------------------------------------------
def test_intensity_is_conserved_across_probe_positions():
    # Phase object: |t| = 1 apart from the scattering beyond the simulated band (> 4α
    # here), so every electron reaches a detector that extends to 4α, wherever the probe
    # is, on an atom or between atoms, in or out of focus.
    atoms, box = simulate.graphene_supercell((6, 10), (12.0, 12.0))
    rng = np.random.default_rng(1)
    positions = np.concatenate([[[12.0, 12.0]], rng.uniform(9, 15, size=(11, 2))])
    wide = simulate.simulate_4dstem(atoms, box, positions, det_shape=(32, 32),
                                    det_pixel_mrad=4 * 31 / 16)
    totals = wide.sum(axis=(1, 2))
    np.testing.assert_allclose(totals, 1.0, atol=1e-3)
    defocused = simulate.simulate_4dstem(atoms, box, positions, det_shape=(32, 32),
                                         det_pixel_mrad=4 * 31 / 16, defocus_angstrom=50.0)
    np.testing.assert_allclose(defocused.sum(axis=(1, 2)), 1.0, atol=1e-3)
    # The default detector (out to 2α) loses < 1 %, nearly evenly across positions.
    default = simulate.simulate_4dstem(atoms, box, positions, det_shape=(32, 32),
                                       det_pixel_mrad=31 / 8)
    totals = default.sum(axis=(1, 2))
    assert totals.max() <= 1.0 + 1e-5
    assert totals.min() > 0.99
    assert np.ptp(totals) / totals.mean() < 0.01


def test_sub_pixel_shift_is_exact():
    # Translating the atoms and the probe together by an arbitrary, off-grid vector leaves
    # the diffraction pattern unchanged: within 1e-4 in the bright field, and within 0.5 %
    # in the dark field, 1e-4 as bright (there the residue is the aliasing of exp(iσv) on
    # the oversampled grid).
    box = (15.0, 15.0)
    atoms = np.array([[7.0, 7.3, 6], [8.2, 6.1, 14]])
    shift = np.array([0.137, -0.291])
    probe = np.array([[7.4, 6.9]])
    first = simulate.simulate_4dstem(atoms, box, probe, det_shape=(32, 32), det_pixel_mrad=3.0)
    moved = atoms.copy()
    moved[:, :2] += shift
    second = simulate.simulate_4dstem(moved, box, probe + shift, det_shape=(32, 32),
                                      det_pixel_mrad=3.0)
    bright_field = first > 0.1 * first.max()
    np.testing.assert_allclose(second[bright_field], first[bright_field], rtol=1e-4)
    np.testing.assert_allclose(second, first, rtol=5e-3, atol=1e-10)


@pytest.mark.parametrize("z", [6, 14])
def test_centre_of_mass_points_towards_the_atom(z):
    # An attractive (positive) potential pulls the beam towards the nucleus; the simulator
    # maps real-space +y/+x to detector +row/+col.
    atom = np.array([10.0, 10.0])
    offsets = np.array([[0.0, 0.5], [0.0, -0.5], [0.5, 0.0], [-0.5, 0.0], [0.4, -0.3]])
    patterns = simulate.simulate_4dstem([[*atom, z]], (20.0, 20.0), atom + offsets,
                                        det_shape=(32, 32), det_pixel_mrad=4.0)
    com = centre_of_mass(patterns, (15.5, 15.5))
    towards_atom = -offsets / np.linalg.norm(offsets, axis=1, keepdims=True)
    cosine = np.sum(com * towards_atom, axis=1) / np.linalg.norm(com, axis=1)
    assert np.all(cosine > 0.999)
    assert np.all(np.linalg.norm(com, axis=1) > 0.05)
    # No deflection with the probe on the atom.
    on_atom = simulate.simulate_4dstem([[*atom, z]], (20.0, 20.0), atom[None],
                                       det_shape=(32, 32), det_pixel_mrad=4.0)
    assert np.abs(centre_of_mass(on_atom, (15.5, 15.5))).max() < 1e-3


def test_silicon_deflects_more_than_carbon():
    atom = np.array([10.0, 10.0])
    probe = atom + [0.0, 0.5]
    strength = {}
    for z in (6, 14):
        pattern = simulate.simulate_4dstem([[*atom, z]], (20.0, 20.0), probe[None],
                                           det_shape=(32, 32), det_pixel_mrad=4.0)
        strength[z] = np.linalg.norm(centre_of_mass(pattern, (15.5, 15.5)))
    assert strength[14] > 1.5 * strength[6]


# -- graphene ---------------------------------------------------------------------------
def test_bright_field_disk_radius_matches_semiangle():
    # Default detector: the 31 mrad disk has a radius of a quarter of the detector.
    dataset = simulate.graphene((3, 3))
    calibration = dataset.calibration
    mean_pattern = dataset.data.mean(axis=(0, 1))
    radius_px = np.sqrt(np.count_nonzero(mean_pattern > mean_pattern.max() / 2) / np.pi)
    assert calibration.det_pixel_size == pytest.approx(31.0 / 16)
    assert radius_px == pytest.approx(calibration.semiangle_mrad / calibration.det_pixel_size,
                                      abs=1.0)
    # Centred on det_origin.
    com = centre_of_mass(mean_pattern, calibration.det_origin)
    assert np.abs(com).max() < 0.05
    # Another aperture and pixel size.
    dataset = simulate.graphene((2, 2), (32, 32), semiangle_mrad=20.0, det_pixel_mrad=2.5)
    mean_pattern = dataset.data.mean(axis=(0, 1))
    radius_px = np.sqrt(np.count_nonzero(mean_pattern > mean_pattern.max() / 2) / np.pi)
    assert radius_px == pytest.approx(20.0 / 2.5, abs=1.0)


def test_graphene_shapes_calibration_and_metadata(small_graphene):
    dataset = small_graphene
    assert isinstance(dataset, Dataset4D)
    assert dataset.shape == (6, 6, 32, 32)
    assert dataset.dtype == np.float32
    assert isinstance(dataset.data, np.ndarray)
    assert dataset.source is None
    calibration = dataset.calibration
    assert isinstance(calibration, Calibration)
    assert calibration.scan_step == pytest.approx(2.0 / 1.5)
    assert calibration.scan_unit == "Å"
    assert calibration.det_unit == "mrad"
    assert calibration.det_pixel_size == pytest.approx(4 * 31.0 / 32)
    assert calibration.energy_kev == 60.0
    assert calibration.semiangle_mrad == 31.0
    assert calibration.det_origin == (15.5, 15.5)
    assert calibration.wavelength_angstrom == pytest.approx(0.0487, abs=1e-4)
    assert dataset.metadata["name"] == "simulated graphene (60 kV, 31 mrad)"
    assert dataset.metadata["defect"] is None
    assert dataset.metadata["simulation"]["energy_kev"] == 60.0
    atoms = dataset.metadata["atoms"]
    assert atoms.ndim == 2 and atoms.shape[1] == 3
    assert set(np.unique(atoms[:, 2])) == {6.0}
    # An atom sits exactly at the scan point (3, 3); C–C bonds are a/√3 = 1.42 Å.
    step = calibration.scan_step
    distances = np.hypot(atoms[:, 0] - 3 * step, atoms[:, 1] - 3 * step)
    order = np.sort(distances)
    assert order[0] == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(order[1:4], 2.46 / np.sqrt(3), rtol=1e-6)
    assert order[4] > 2.0
    # Atom density of graphene: 4 atoms per a × √3a cell.
    box = dataset.metadata["simulation"]["box_angstrom"]
    assert len(atoms) == pytest.approx(4 * box[0] * box[1] / (2.46**2 * np.sqrt(3)))
    # Physical content: the patterns sum to ≈ 1 and the deflection is largest between atoms.
    totals = dataset.data.sum(axis=(2, 3))
    assert np.all((totals > 0.99) & (totals <= 1.0 + 1e-5))


def test_default_scan_step_and_odd_detector():
    dataset = simulate.graphene((2, 3), (15, 17))
    assert dataset.shape == (2, 3, 15, 17)
    assert dataset.calibration.scan_step == pytest.approx(0.25)
    assert dataset.calibration.det_origin == (7.0, 8.0)
    # The pattern is centred on det_origin even with odd sizes (probe on an atom: the
    # 3-fold site symmetry cancels the deflection).
    com = centre_of_mass(dataset.data[1, 1], dataset.calibration.det_origin)
    assert np.abs(com).max() < 0.02


def test_defects_change_the_data_near_the_defect_only(small_graphene):
    perfect = small_graphene
    step = perfect.calibration.scan_step
    rows, cols = np.indices(perfect.scan_shape)
    distance = np.hypot(rows - 3, cols - 3) * step
    for defect, z in (("vacancy", None), ("si", 14.0)):
        dataset = simulate.graphene((6, 6), (32, 32), scan_step_angstrom=step, defect=defect)
        info = dataset.metadata["defect"]
        assert info["kind"] == defect
        assert info["scan_index"] == (3, 3)
        np.testing.assert_allclose(info["position_angstrom"], (3 * step, 3 * step), atol=1e-9)
        atoms = dataset.metadata["atoms"]
        at_defect = np.hypot(atoms[:, 0] - 3 * step, atoms[:, 1] - 3 * step) < 1e-6
        if z is None:
            assert not at_defect.any()
            assert len(atoms) == len(perfect.metadata["atoms"]) - 1
        else:
            assert atoms[at_defect, 2].tolist() == [z]
        change = np.abs(dataset.data - perfect.data).sum(axis=(2, 3))
        near = change[distance < 1.5]
        far = change[distance > 5.0]
        assert near.max() > 10 * far.max(), (defect, near.max(), far.max())
        assert "vacancy" in dataset.metadata["name"] or "Si" in dataset.metadata["name"]

    # High-angle scattering at the defect site: Si (Z = 14) scatters more than C,
    # a vacancy less.
    def adf(data):
        rows, cols = np.indices(data.shape[-2:])
        outer = np.hypot(rows - 15.5, cols - 15.5) > 10  # beyond the 31 mrad disk
        return (data * outer).sum(axis=(-2, -1))

    si = simulate.graphene((6, 6), (32, 32), scan_step_angstrom=step, defect="si")
    vacancy = simulate.graphene((6, 6), (32, 32), scan_step_angstrom=step, defect="vacancy")
    assert adf(si.data)[3, 3] > 1.5 * adf(perfect.data)[3, 3]
    assert adf(vacancy.data)[3, 3] < 0.8 * adf(perfect.data)[3, 3]


def test_dose_gives_reproducible_poisson_counts():
    first = simulate.graphene((3, 3), (16, 16), dose=1e4, seed=3)
    again = simulate.graphene((3, 3), (16, 16), dose=1e4, seed=3)
    other = simulate.graphene((3, 3), (16, 16), dose=1e4, seed=4)
    np.testing.assert_array_equal(first.data, again.data)
    assert not np.array_equal(first.data, other.data)
    assert first.dtype == np.float32
    np.testing.assert_array_equal(first.data, np.round(first.data))
    # Counts scatter around dose × the noise-free pattern (sum ≈ dose per pattern).
    totals = first.data.sum(axis=(2, 3))
    assert np.all(np.abs(totals - 1e4) < 5 * np.sqrt(1e4))
    clean = simulate.graphene((3, 3), (16, 16))
    np.testing.assert_array_equal(clean.data, simulate.graphene((3, 3), (16, 16)).data)
    assert simulate.graphene((2, 2), (16, 16), dtype=np.float64).dtype == np.float64


def test_source_size_blurs_the_maps_and_keeps_intensity():
    sharp = simulate.graphene((8, 8), (16, 16), scan_step_angstrom=0.3)
    blurred = simulate.graphene((8, 8), (16, 16), scan_step_angstrom=0.3,
                                source_size_angstrom=0.8)
    assert blurred.shape == sharp.shape
    com_sharp = centre_of_mass(sharp.data, sharp.calibration.det_origin)
    com_blurred = centre_of_mass(blurred.data, blurred.calibration.det_origin)
    # The incoherent source averages deflections of opposite sign: weaker COM contrast.
    contrast_sharp = np.linalg.norm(com_sharp, axis=-1).max()
    assert np.linalg.norm(com_blurred, axis=-1).max() < 0.9 * contrast_sharp
    np.testing.assert_allclose(blurred.data.sum(axis=(2, 3)), sharp.data.sum(axis=(2, 3)).mean(),
                               rtol=0.01)


def test_invalid_parameters_are_refused():
    with pytest.raises(ValueError, match="defect"):
        simulate.graphene((2, 2), (16, 16), defect="nitrogen")
    with pytest.raises(ValueError, match="dose"):
        simulate.graphene((2, 2), (16, 16), dose=-1)
    with pytest.raises(ValueError, match="Z = 79"):
        simulate.electron_scattering_factor(1.0, 79)


def test_import_is_light():
    assert loaded_after_import("napari_4dstem_rvae.simulate", ("torch", "scipy", "dask", "napari")) == set()
