"""Physics-based 4D-STEM simulation of monolayer graphene (sample data, tests, benchmarks).

The default call reproduces the conditions of the published rVAE study of graphene
(Oxley, Ziatdinov, Kalinin et al.): 60 kV, aberration-free probe with a 31 mrad
convergence semi-angle, a 64 × 64 pixel detector, a 32 × 32 raster scan.

Physics (references: E. J. Kirkland, *Advanced Computing in Electron Microscopy*,
2nd ed., Springer 2010 — "Kirkland" below)

- **Wavelength and interaction constant.** Relativistic wavelength λ (0.0487 Å at
  60 kV, :func:`napari_4dstem_rvae.dataset.electron_wavelength_angstrom`) and
  σ = 2π / (λ V) · (m0c² + eV) / (2 m0c² + eV) in rad / (V·Å) (Kirkland ch. 5).
- **Projected atomic potential.** Kirkland's fit of the electron scattering factor
  (Kirkland appendix C, three Lorentzians plus three Gaussians),
  f_e(q) = Σ a_i / (q² + b_i) + Σ c_i exp(−d_i q²), q in 1/Å, coefficients for C (Z = 6)
  and Si (Z = 14). In real space the projected potential of one atom is
  v_z(r) = 4π² a0 e Σ a_i K0(2π r √b_i) + 2π² a0 e Σ (c_i/d_i) exp(−π² r² / d_i)
  (Kirkland ch. 5, :func:`atom_projected_potential`). Its 2D Fourier transform is
  2π a0 e f_e(q), which is how :func:`projected_potential` builds the potential of the
  whole periodic supercell: Σ_atoms 2π a0 e f_e(q) exp(−2πi q·r_j) on the FFT grid, cut at
  the Nyquist circle. This is exact for a periodic box, places atoms at sub-pixel
  positions exactly and avoids the logarithmic singularity of K0 at r = 0.
- **Transmission function.** Single slice, phase-object approximation:
  t(r) = exp(iσ v_z(r)) (Kirkland ch. 5–6). Valid for a monolayer: one atom thick, the
  phase of a carbon atom peaks at ≈ 0.25 rad at the default sampling, and propagation
  within the atom's thickness is negligible at 60 kV. |t| = 1, so the total intensity is
  conserved; :func:`transmission_function` computes t on a 2× finer grid and keeps its
  spectrum below the band limit q_max (see *Sampling*), which removes only the
  scattering beyond q_max (< 0.1 % of the beam for graphene with the defaults).
- **Probe.** ψ(r − r_p) = IFFT[A(k) exp(−iχ(k)) exp(−2πi k·r_p)] with a circular aperture
  A of semi-angle α (edge anti-aliased over one reciprocal pixel), χ(k) = −π λ Δf k² (no
  spherical aberration; Δf > 0 is underfocus, Kirkland's convention, ch. 3), normalised
  to unit total intensity. The Fourier phase ramp makes sub-pixel probe positions exact.
- **Diffraction pattern.** I(k) = |FFT[ψ(r − r_p) t(r)]|² with orthonormal FFTs, so
  Σ_k I(k) = 1 over the whole FFT box. Forward FFT convention exp(−2πi k·r): a wave whose
  phase grows towards +y/+x in real space lands at +row/+col of the detector. A positive
  (attractive) atomic potential deflects the beam *towards* the atom, so the centre of
  mass of a pattern points, in detector (row, col), towards the atom in real space (y, x).
  There is no scan rotation or flip between the scan and the detector.
- **Detector.** The FFT box samples angles in steps of λ / L. The box side L is chosen
  (a whole number of rectangular graphene cells) so that this step is at most half a
  detector pixel; the intensity is then integrated onto detector pixels of the requested
  angular size (area-weighted rebinning, which conserves intensity). The direct beam
  (zero angle) is at the geometric centre of the detector, ``((det_y−1)/2, (det_x−1)/2)``.
  Intensity scattered beyond the detector edge is lost, as on a real detector (≤ 0.15 %
  of the beam for the default field of view of 2α).
- **Sampling.** t is band-limited at q_max and the probe at k_α = α/λ, so the product
  ψ·t holds frequencies up to q_max + k_α, which the periodic FFT wraps to
  ≥ 2 k_Nyquist − q_max − k_α. The grid is chosen so that q_max reaches the detector
  corners while the wrapped frequencies stay beyond the detector edge
  (2 k_Nyquist ≥ k_edge + k_corner + k_α: 0.27 Å pixels, 192 × 192 for the defaults).
  Within the band the potential's spectrum is exactly Kirkland's f_e(q); the hard cut
  only makes the real-space potential ring weakly (≲ 0.1 V·Å).
- **Partial spatial coherence.** A finite source of Gaussian profile (FWHM
  ``source_size_angstrom``) is an incoherent sum of patterns over probe positions. It is
  applied as a Gaussian convolution of the 4D data over the two scan axes, computed on a
  scan padded by 3σ on each side (then cropped), so the edges of the scan are exact.
- **Noise.** With ``dose`` (electrons per probe position), each pattern is multiplied by the
  dose and replaced by a Poisson draw (``seed``); the data are then electron counts.
  Without it, they are the fraction of the incident beam per pixel (each pattern sums to
  ≈ 1).

Graphene: lattice constant a = 2.46 Å, orthorhombic cell a × √3a with 4 atoms, x along
the zigzag direction (a) and y along the armchair direction (√3a). The periodic
supercell is a whole number of such cells. One carbon atom sits exactly at the scan
position ``(scan_y // 2, scan_x // 2)``; the ``defect`` options remove it (vacancy) or
replace it by silicon.

Only numpy is imported at module level; scipy is imported inside functions.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .dataset import Calibration, Dataset4D, electron_wavelength_angstrom

#: Graphene lattice constant (Å).
GRAPHENE_LATTICE_CONSTANT = 2.46

#: Bohr radius (Å) and the elementary charge in V·Å (e² / 4πε0), as in Kirkland.
BOHR_RADIUS_ANGSTROM = 0.529177210903
ELECTRON_CHARGE_VOLT_ANGSTROM = 14.399645

#: Kirkland's electron scattering factor fit (Kirkland 2010, appendix C):
#: Z -> (a, b, c, d), f_e(q) = Σ a/(q² + b) + Σ c exp(−d q²), q in 1/Å, f_e in Å.
KIRKLAND_COEFFICIENTS: dict[int, tuple[tuple[float, ...], ...]] = {
    6: (
        (2.12080767e-01, 1.99811865e-01, 1.68254385e-01),
        (2.08605417e-01, 2.08610186e-01, 5.57870773e00),
        (1.42048360e-01, 3.63830672e-01, 8.35012044e-04),
        (1.33311887e00, 3.80800263e00, 4.03982620e-02),
    ),
    14: (
        (1.06543892e00, 1.20143691e-01, 1.80915263e-01),
        (1.04118455e00, 6.87113368e01, 8.87533926e-02),
        (1.12065620e00, 3.05452816e-02, 1.59963502e00),
        (3.70062619e00, 2.14097897e-01, 9.99096638e00),
    ),
}

DEFECTS = (None, "vacancy", "si")

# FFT pixels (angular steps λ/L) per detector pixel, at least, along each axis.
_FFT_PIXELS_PER_DETECTOR_PIXEL = 2.0
# Probe positions per FFT batch (bounds memory at ~ batch × grid × 8 bytes per array).
_BATCH = 64


# -- constants of the beam ---------------------------------------------------------------
def interaction_constant(energy_kev: float) -> float:
    """Relativistic interaction constant σ in rad / (V·Å) (Kirkland ch. 5).

    σ = 2π / (λ V) · (m0c² + eV) / (2 m0c² + eV), e.g. 1.136e-3 at 60 kV.
    """
    rest_energy_kev = 510.99895
    volts = energy_kev * 1e3
    wavelength = electron_wavelength_angstrom(energy_kev)
    return (2 * math.pi / (wavelength * volts)
            * (rest_energy_kev + energy_kev) / (2 * rest_energy_kev + energy_kev))


# -- atomic potentials -------------------------------------------------------------------
def _coefficients(z: int) -> tuple[np.ndarray, ...]:
    try:
        return tuple(np.asarray(c, dtype=float) for c in KIRKLAND_COEFFICIENTS[int(z)])
    except KeyError:
        raise ValueError(
            f"No scattering-factor coefficients for Z = {z}; available: "
            f"{sorted(KIRKLAND_COEFFICIENTS)}"
        ) from None


def electron_scattering_factor(q: Any, z: int) -> np.ndarray:
    """Kirkland's electron scattering factor f_e(q) in Å.

    q is the spatial frequency in 1/Å (q = 1/d = 2 sin(θ/2)/λ ≈ θ/λ for a scattering
    angle θ), not sin(θ/2)/λ as in some X-ray tables.
    """
    a, b, c, d = _coefficients(z)
    q2 = np.asarray(q, dtype=float)[..., None] ** 2
    return np.sum(a / (q2 + b) + c * np.exp(-d * q2), axis=-1)


def atom_projected_potential(r: Any, z: int) -> np.ndarray:
    """Projected potential v_z(r) of one isolated atom in V·Å, r in Å (Kirkland ch. 5).

    Diverges logarithmically at r = 0.
    """
    from scipy.special import k0

    a, b, c, d = _coefficients(z)
    r = np.asarray(r, dtype=float)[..., None]
    a0e = BOHR_RADIUS_ANGSTROM * ELECTRON_CHARGE_VOLT_ANGSTROM
    with np.errstate(divide="ignore"):
        lorentz = 4 * math.pi**2 * a0e * np.sum(a * k0(2 * math.pi * r * np.sqrt(b)), axis=-1)
    gauss = 2 * math.pi**2 * a0e * np.sum(c / d * np.exp(-(math.pi**2) * r**2 / d), axis=-1)
    return lorentz + gauss


def _frequencies(box: tuple[float, float], grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Spatial frequencies (1/Å) of the FFT grid along y and x, in FFT order."""
    (ly, lx), (ny, nx) = box, grid
    return np.fft.fftfreq(ny, ly / ny), np.fft.fftfreq(nx, lx / nx)


def projected_potential(atoms: Any, box: tuple[float, float], grid: tuple[int, int],
                        q_max: float | None = None) -> np.ndarray:
    """Projected potential (V·Å) of atoms in a periodic box, on a ``grid`` of pixels.

    ``atoms`` is an (n, 3) array of (y, x, Z) with y, x in Å; ``box`` is (L_y, L_x) in Å.
    Pixel (i, j) is at (i·L_y/n_y, j·L_x/n_x). Built in reciprocal space from Kirkland's
    f_e(q) and band-limited to spatial frequencies below ``q_max`` (1/Å; by default the
    largest circle the grid holds).
    """
    atoms = np.asarray(atoms, dtype=float).reshape(-1, 3)
    ky, kx = _frequencies(box, grid)
    q = np.hypot(ky[:, None], kx[None, :])
    nyquist = min(np.abs(ky).max(), np.abs(kx).max())
    q_max = nyquist if q_max is None else min(q_max, nyquist)
    spectrum = np.zeros(q.shape, dtype=complex)
    a0e = BOHR_RADIUS_ANGSTROM * ELECTRON_CHARGE_VOLT_ANGSTROM
    for z in np.unique(atoms[:, 2]):
        species = atoms[atoms[:, 2] == z]
        # Structure factor Σ_j exp(−2πi (ky y_j + kx x_j)) as one matrix product.
        phase_y = np.exp(-2j * np.pi * ky[:, None] * species[None, :, 0])
        phase_x = np.exp(-2j * np.pi * species[:, 1, None] * kx[None, :])
        spectrum += 2 * np.pi * a0e * electron_scattering_factor(q, int(z)) * (phase_y @ phase_x)
    spectrum[q > q_max] = 0.0
    pixel_area = (box[0] / grid[0]) * (box[1] / grid[1])
    return np.fft.ifft2(spectrum).real / pixel_area


def transmission_function(atoms: Any, box: tuple[float, float], grid: tuple[int, int],
                          energy_kev: float, q_max: float | None = None,
                          oversampling: int = 2) -> np.ndarray:
    """Transmission function t = exp(iσ v_z) of a single slice, band-limited to ``q_max``.

    t is computed on a grid ``oversampling`` times finer than ``grid`` (where the
    potential reaches that grid's Nyquist frequency), then its spectrum is cut to
    spatial frequencies below ``q_max`` (1/Å, default: the largest circle ``grid``
    holds) and brought back to ``grid``. Sampling exp(iσv) directly on a coarse grid
    would alias its higher harmonics onto the weak high-angle scattering. The cut removes
    the scattering beyond ``q_max`` (so |t| is 1 only up to that loss).
    """
    fine = (grid[0] * oversampling, grid[1] * oversampling)
    potential = projected_potential(atoms, box, fine)
    spectrum = np.fft.fft2(np.exp(1j * interaction_constant(energy_kev) * potential))
    # Coarse-grid frequencies are a subset of the fine grid's (same box, same 1/L step).
    rows = np.round(np.fft.fftfreq(grid[0], 1 / grid[0])).astype(int) % fine[0]
    cols = np.round(np.fft.fftfreq(grid[1], 1 / grid[1])).astype(int) % fine[1]
    spectrum = spectrum[rows[:, None], cols] * (grid[0] * grid[1]) / (fine[0] * fine[1])
    ky, kx = _frequencies(box, grid)
    nyquist = min(np.abs(ky).max(), np.abs(kx).max())
    q_max = nyquist if q_max is None else min(q_max, nyquist)
    spectrum[np.hypot(ky[:, None], kx[None, :]) > q_max] = 0.0
    return np.fft.ifft2(spectrum)


# -- the 4D-STEM engine -----------------------------------------------------------------
def _rebinning_matrix(frequencies: np.ndarray, fft_step: float, n_pixels: int,
                      pixel: float) -> np.ndarray:
    """Weights (n_pixels, n_fft): the fraction of each FFT pixel (centre ``frequencies``,
    width ``fft_step``) falling in each detector pixel (width ``pixel``, zero at the
    detector centre)."""
    edges = (np.arange(n_pixels + 1) - n_pixels / 2) * pixel
    low = np.maximum(edges[:-1, None], frequencies[None, :] - fft_step / 2)
    high = np.minimum(edges[1:, None], frequencies[None, :] + fft_step / 2)
    return np.clip(high - low, 0, None) / fft_step


def _grid_for(box: tuple[float, float], nyquist: float) -> tuple[int, int]:
    from scipy.fft import next_fast_len

    # The smallest fast FFT size whose Nyquist frequency reaches ``nyquist`` (1/Å).
    return tuple(next_fast_len(math.ceil(2 * nyquist * side)) for side in box)


def simulate_4dstem(
    atoms: Any,
    box: tuple[float, float],
    probe_positions: Any,
    *,
    det_shape: tuple[int, int] = (64, 64),
    det_pixel_mrad: float = 31.0 / 16,
    energy_kev: float = 60.0,
    semiangle_mrad: float = 31.0,
    defocus_angstrom: float = 0.0,
    grid: tuple[int, int] | None = None,
) -> np.ndarray:
    """Diffraction patterns of a probe at ``probe_positions`` over atoms in a periodic box.

    Parameters
    ----------
    atoms
        (n, 3) array of (y, x, Z), y and x in Å inside the box ``[0, L_y) × [0, L_x)``.
    box
        (L_y, L_x) of the periodic box in Å. The angular sampling of the FFT is λ/L; it
        should be finer than ``det_pixel_mrad`` (ideally twice finer).
    probe_positions
        Array (..., 2) of probe (y, x) positions in Å, in the frame of ``atoms``.
    det_shape, det_pixel_mrad
        Detector pixels (rows, cols) and their angular size; the direct beam is at
        ``((rows−1)/2, (cols−1)/2)``.
    energy_kev, semiangle_mrad, defocus_angstrom
        Beam energy, probe-forming aperture semi-angle, defocus (> 0 underfocus).
    grid
        FFT grid (n_y, n_x). By default the coarsest fast size for which the potential
        reaches the detector corners and the aliases of ψ·t stay outside the detector:
        2 k_Nyquist ≥ k_edge + k_corner + k_aperture (see the module docstring).

    Returns
    -------
    float32 array (..., det_y, det_x): the fraction of the incident beam in each pixel.
    """
    from scipy import fft as sp_fft

    positions = np.asarray(probe_positions, dtype=float)
    if positions.shape[-1] != 2:
        raise ValueError(
            f"probe_positions must have a last axis of 2 (y, x), got shape {positions.shape}"
        )
    det_shape = (int(det_shape[0]), int(det_shape[1]))
    if min(det_shape) < 1 or det_pixel_mrad <= 0 or semiangle_mrad <= 0 or energy_kev <= 0:
        raise ValueError(
            f"det_shape, det_pixel_mrad, semiangle_mrad and energy_kev must be positive, got "
            f"{det_shape}, {det_pixel_mrad}, {semiangle_mrad}, {energy_kev}"
        )
    box = (float(box[0]), float(box[1]))
    wavelength = electron_wavelength_angstrom(energy_kev)
    # Angles (mrad) ↔ spatial frequencies (1/Å): k = θ / λ.
    det_pixel = det_pixel_mrad * 1e-3 / wavelength
    k_aperture = semiangle_mrad * 1e-3 / wavelength
    k_edge = det_pixel * max(det_shape) / 2
    k_corner = det_pixel * math.hypot(*det_shape) / 2
    if grid is None:
        grid = _grid_for(box, (k_edge + k_corner + k_aperture) / 2)
    grid = (int(grid[0]), int(grid[1]))
    nyquist = min(grid[0] / box[0], grid[1] / box[1]) / 2
    if nyquist < k_edge:
        raise ValueError(
            f"The FFT grid {grid} over the box {box} Å reaches "
            f"{nyquist * wavelength * 1e3:.1f} mrad, less than the detector edge at "
            f"{k_edge * wavelength * 1e3:.1f} mrad"
        )
    # Band limit of t: ψ (up to k_aperture) times t (up to q_max) wraps around the FFT
    # box to frequencies ≥ 2 k_Nyquist − q_max − k_aperture, outside the detector when
    # q_max is at most this.
    q_max = max(2 * nyquist - k_edge - k_aperture, k_aperture)

    ky, kx = _frequencies(box, grid)
    k2 = ky[:, None] ** 2 + kx[None, :] ** 2
    k = np.sqrt(k2)
    # Aperture with its edge anti-aliased over one reciprocal pixel.
    edge_width = max(1 / box[0], 1 / box[1])
    aperture = np.clip((k_aperture - k) / edge_width + 0.5, 0.0, 1.0)
    chi = -np.pi * wavelength * defocus_angstrom * k2
    probe_spectrum = aperture * np.exp(-1j * chi)
    probe_spectrum /= np.sqrt(np.sum(np.abs(probe_spectrum) ** 2))

    atoms = np.asarray(atoms, dtype=float).reshape(-1, 3)
    transmission = transmission_function(atoms, box, grid, energy_kev, q_max)
    transmission = transmission.astype(np.complex64)

    # Detector: only the FFT rows/columns that fall on it are kept. The x weights are
    # doubled up so that they act on the interleaved (re², im²) of the complex64 data.
    rebin_y = _rebinning_matrix(ky, 1 / box[0], det_shape[0], det_pixel)
    rebin_x = _rebinning_matrix(kx, 1 / box[1], det_shape[1], det_pixel)
    used_y = np.flatnonzero(rebin_y.any(axis=0))
    used_x = np.flatnonzero(rebin_x.any(axis=0))
    rebin_y = rebin_y[:, used_y].astype(np.float32)
    rebin_x_pairs = np.repeat(rebin_x[:, used_x].T, 2, axis=0).astype(np.float32)

    # The probe's spectrum is zero outside the aperture: only that block is computed.
    probe_rows = np.flatnonzero(np.abs(probe_spectrum).any(axis=1))
    probe_cols = np.flatnonzero(np.abs(probe_spectrum).any(axis=0))
    probe_block = probe_spectrum[probe_rows[:, None], probe_cols].astype(np.complex64)
    ky_block, kx_block = ky[probe_rows], kx[probe_cols]

    flat = positions.reshape(-1, 2)
    out = np.empty((len(flat), *det_shape), dtype=np.float32)
    for start in range(0, len(flat), _BATCH):
        batch = flat[start:start + _BATCH]
        # Probe shift as a Fourier phase ramp, separable in y and x: exact sub-pixel shifts.
        ramp_y = np.exp(-2j * np.pi * batch[:, 0:1] * ky_block).astype(np.complex64)
        ramp_x = np.exp(-2j * np.pi * batch[:, 1:2] * kx_block).astype(np.complex64)
        waves = np.zeros((len(batch), *grid), dtype=np.complex64)
        waves[:, probe_rows[:, None], probe_cols] = (
            probe_block * ramp_y[:, :, None] * ramp_x[:, None, :]
        )
        waves = sp_fft.ifft2(waves, norm="ortho", workers=-1, overwrite_x=True)
        waves *= transmission
        waves = sp_fft.fft2(waves, norm="ortho", workers=-1, overwrite_x=True)
        parts = np.ascontiguousarray(waves[:, used_y[:, None], used_x]).view(np.float32)
        np.square(parts, out=parts)
        # Single large GEMMs (tensordot) rather than a batched matmul: much faster on
        # a busy CPU.
        half = np.tensordot(parts, rebin_x_pairs, axes=([2], [0]))
        patterns = np.tensordot(half, rebin_y, axes=([1], [1]))  # (batch, det_x, det_y)
        out[start:start + len(batch)] = patterns.transpose(0, 2, 1)
    return out.reshape(*positions.shape[:-1], *det_shape)


# -- graphene --------------------------------------------------------------------------------
def graphene_cell(a: float = GRAPHENE_LATTICE_CONSTANT) -> tuple[np.ndarray, tuple[float, float]]:
    """The orthorhombic cell of graphene: 4 atoms (y, x) in Å and the cell (√3a, a) in Å.

    x is along the zigzag direction, y along the armchair direction; C–C bonds are a/√3.
    """
    height = math.sqrt(3) * a
    fractions = np.array([(0.0, 0.0), (1 / 3, 0.0), (0.5, 0.5), (5 / 6, 0.5)])
    return fractions * np.array([height, a]), (height, a)


def graphene_supercell(repeats: tuple[int, int], centre: tuple[float, float] = (0.0, 0.0),
                       a: float = GRAPHENE_LATTICE_CONSTANT
                       ) -> tuple[np.ndarray, tuple[float, float]]:
    """A periodic graphene supercell of ``repeats`` (rows, cols) orthorhombic cells.

    Returns the atoms as an (n, 3) array of (y, x, 6) in Å, inside the box, shifted so
    that an atom sits exactly at ``centre``, and the box (L_y, L_x) in Å, ready for
    :func:`simulate_4dstem`.
    """
    basis, (cell_y, cell_x) = graphene_cell(a)
    box = (repeats[0] * cell_y, repeats[1] * cell_x)
    iy, ix = np.meshgrid(np.arange(repeats[0]), np.arange(repeats[1]), indexing="ij")
    origins = np.stack([iy.ravel() * cell_y, ix.ravel() * cell_x], axis=-1)
    positions = (origins[:, None, :] + basis[None, :, :]).reshape(-1, 2)
    positions = np.mod(positions + np.asarray(centre), box)
    atoms = np.column_stack([positions, np.full(len(positions), 6.0)])
    return atoms, box


def graphene(
    scan_shape: tuple[int, int] = (32, 32),
    det_shape: tuple[int, int] = (64, 64),
    *,
    energy_kev: float = 60.0,
    semiangle_mrad: float = 31.0,
    det_pixel_mrad: float | None = None,
    scan_step_angstrom: float | None = None,
    defect: str | None = None,
    source_size_angstrom: float = 0.0,
    defocus_angstrom: float = 0.0,
    dose: float | None = None,
    seed: int = 0,
    dtype: Any = np.float32,
) -> Dataset4D:
    """A simulated 4D-STEM scan of monolayer graphene (see the module docstring for the physics).

    Parameters
    ----------
    scan_shape
        Probe positions (rows, cols).
    det_shape
        Detector pixels (rows, cols).
    energy_kev
        Beam energy (60 keV: below the knock-on threshold of graphene, as in the study).
    semiangle_mrad
        Convergence semi-angle of the probe-forming aperture.
    det_pixel_mrad
        Angular size of a detector pixel; by default the bright-field disk has a radius of
        a quarter of the detector (``4 · semiangle / min(det_shape)``: 1.94 mrad for 64 px
        and 31 mrad), so the detector reaches twice the semi-angle.
    scan_step_angstrom
        Distance between probe positions; by default 0.25 Å (the 32 × 32 scan then covers
        8 Å × 8 Å, about two orthorhombic cells tall and three wide, finer than the
        probe's Nyquist step λ / 4α = 0.39 Å).
    defect
        ``None``, ``"vacancy"`` (the carbon atom at the scan position
        ``(scan_y // 2, scan_x // 2)`` removed) or ``"si"`` (that atom replaced by Si).
    source_size_angstrom
        FWHM of the Gaussian effective source (partial spatial coherence), applied as a
        convolution over the scan axes.
    defocus_angstrom
        Probe defocus (> 0 underfocus).
    dose
        Electrons per probe position; if given, Poisson noise is drawn with ``seed`` and
        the data are counts. Otherwise each pattern holds the fraction of the beam per pixel.
    seed
        Seed of the noise generator.
    dtype
        Floating dtype of the data.

    Returns
    -------
    Dataset4D with numpy data (scan_y, scan_x, det_y, det_x), calibrated in Å and mrad.
    ``metadata["atoms"]`` holds the (y, x, Z) of every atom in Å, in the scan frame (the
    first probe position at (0, 0), probe (i, j) at (i·step, j·step));
    ``metadata["defect"]`` the defect and its position; ``metadata["simulation"]`` the
    parameters.
    """
    scan_shape = (int(scan_shape[0]), int(scan_shape[1]))
    det_shape = (int(det_shape[0]), int(det_shape[1]))
    if min(scan_shape) < 1 or min(det_shape) < 2:
        raise ValueError(
            f"scan_shape must be ≥ 1 and det_shape ≥ 2 pixels, got {scan_shape}, {det_shape}"
        )
    if np.dtype(dtype).kind != "f":
        raise ValueError(f"dtype must be a floating-point type, got {np.dtype(dtype)}")
    if defect not in DEFECTS:
        raise ValueError(f"defect must be one of {DEFECTS}, got {defect!r}")
    if source_size_angstrom < 0:
        raise ValueError(f"source_size_angstrom must be ≥ 0, got {source_size_angstrom}")
    if dose is not None and not dose > 0:
        raise ValueError(f"dose must be a positive number of electrons per pattern, got {dose}")
    if det_pixel_mrad is None:
        det_pixel_mrad = 4 * semiangle_mrad / min(det_shape)
    step = 0.25 if scan_step_angstrom is None else float(scan_step_angstrom)
    if not step > 0:
        raise ValueError(f"scan_step_angstrom must be positive, got {scan_step_angstrom}")
    wavelength = electron_wavelength_angstrom(energy_kev)

    # Source size: simulate a margin of 3σ around the scan, convolve, crop.
    sigma = source_size_angstrom / (2 * math.sqrt(2 * math.log(2)))
    # The margin equals the radius of the discrete Gaussian kernel (truncated at 3σ).
    pad = int(3 * sigma / step + 0.5) if sigma > 0 else 0
    sim_shape = (scan_shape[0] + 2 * pad, scan_shape[1] + 2 * pad)

    # Box: holds the scan plus 6 Å of lattice on each side (the defect's periodic images
    # stay > 12 Å from the probe), and samples angles at half a detector pixel or finer.
    a = GRAPHENE_LATTICE_CONSTANT
    (cell_y, cell_x) = graphene_cell(a)[1]
    side = max(max(sim_shape) * step + 12.0,
               _FFT_PIXELS_PER_DETECTOR_PIXEL * wavelength / (det_pixel_mrad * 1e-3))
    repeats = (math.ceil(side / cell_y), math.ceil(side / cell_x))
    box = (repeats[0] * cell_y, repeats[1] * cell_x)
    centre = (box[0] / 2, box[1] / 2)
    atoms, box = graphene_supercell(repeats, centre, a)

    # Probe (i, j) of the simulated scan sits at first + (i, j)·step; probe
    # (pad + scan_y//2, pad + scan_x//2) at the box centre, on an atom.
    first = (centre[0] - (pad + scan_shape[0] // 2) * step,
             centre[1] - (pad + scan_shape[1] // 2) * step)
    defect_info = None
    if defect is not None:
        target = int(np.argmin(np.hypot(atoms[:, 0] - centre[0], atoms[:, 1] - centre[1])))
        defect_info = {
            "kind": defect,
            "position_angstrom": (float(atoms[target, 0] - first[0] - pad * step),
                                  float(atoms[target, 1] - first[1] - pad * step)),
            "scan_index": (scan_shape[0] // 2, scan_shape[1] // 2),
        }
        if defect == "vacancy":
            atoms = np.delete(atoms, target, axis=0)
        else:
            atoms[target, 2] = 14.0

    iy, ix = np.meshgrid(np.arange(sim_shape[0]), np.arange(sim_shape[1]), indexing="ij")
    positions = np.stack([first[0] + iy * step, first[1] + ix * step], axis=-1)
    data = simulate_4dstem(
        atoms, box, positions, det_shape=det_shape, det_pixel_mrad=det_pixel_mrad,
        energy_kev=energy_kev, semiangle_mrad=semiangle_mrad,
        defocus_angstrom=defocus_angstrom,
    )
    if pad:
        from scipy.ndimage import gaussian_filter1d

        for axis in (0, 1):
            data = gaussian_filter1d(data, sigma / step, axis=axis, mode="nearest",
                                     truncate=3.0)
        data = data[pad:pad + scan_shape[0], pad:pad + scan_shape[1]]
    if dose is not None:
        rng = np.random.default_rng(seed)
        data = rng.poisson(data.astype(np.float64) * dose)
    data = np.ascontiguousarray(data, dtype=dtype)

    scan_first = (first[0] + pad * step, first[1] + pad * step)
    atoms_scan = atoms.copy()
    atoms_scan[:, 0] -= scan_first[0]
    atoms_scan[:, 1] -= scan_first[1]
    calibration = Calibration(
        scan_step=step, scan_unit="Å", det_pixel_size=float(det_pixel_mrad), det_unit="mrad",
        energy_kev=float(energy_kev), semiangle_mrad=float(semiangle_mrad),
        det_origin=((det_shape[0] - 1) / 2, (det_shape[1] - 1) / 2),
    )
    name = f"simulated graphene ({energy_kev:g} kV, {semiangle_mrad:g} mrad)"
    if defect is not None:
        name += f", {'Si dopant' if defect == 'si' else 'vacancy'}"
    simulation = {
        "model": "single-slice phase object, Kirkland projected potentials",
        "energy_kev": float(energy_kev),
        "wavelength_angstrom": wavelength,
        "interaction_constant_rad_per_volt_angstrom": interaction_constant(energy_kev),
        "semiangle_mrad": float(semiangle_mrad),
        "defocus_angstrom": float(defocus_angstrom),
        "det_pixel_mrad": float(det_pixel_mrad),
        "scan_step_angstrom": step,
        "lattice_constant_angstrom": a,
        "supercell_repeats": repeats,
        "box_angstrom": box,
        "defect": defect,
        "source_size_angstrom": float(source_size_angstrom),
        "dose": None if dose is None else float(dose),
        "seed": int(seed),
    }
    return Dataset4D(
        data=data,
        calibration=calibration,
        metadata={"name": name, "atoms": atoms_scan, "defect": defect_info,
                  "simulation": simulation},
        source=None,
    )
