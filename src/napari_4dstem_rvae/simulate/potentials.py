"""Beam constants and Kirkland's projected atomic potentials; the single-slice transmission
function (phase-object approximation). See the package docstring for the physics."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..dataset import electron_wavelength_angstrom

#: Bohr radius (Å) and the elementary charge in V·Å (e² / 4πε0), as in Kirkland.
BOHR_RADIUS_ANGSTROM = 0.529177210903
ELECTRON_CHARGE_VOLT_ANGSTROM = 14.399645

#: Kirkland's electron scattering factor fit (Kirkland 2010, appendix C):
#: Z -> (a, b, c, d), f_e(q) = Σ a/(q² + b) + Σ c exp(−d q²), q in 1/Å, f_e in Å.
#: Zn and S: the same table (Kirkland's ``fparams`` data, appendix C; his file lists each
#: element as a1 b1 a2 b2 a3 b3 c1 d1 c2 d2 c3 d3), the numbers cross-checked between
#: several public copies of it. f_e(0) agrees with Peng et al.'s independent fit (Acta
#: Cryst. A52, 257 (1996), Σ a_i) to 0.3 % and the large-q tail with Mott–Bethe (tests).
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
    16: (
        (1.01646916e00, 4.41766748e-01, 1.21503863e-01),
        (1.69181965e00, 1.74180288e-01, 1.67011091e02),
        (8.27966670e-01, 2.33022533e-02, 1.18302846e00),
        (2.30342810e00, 1.56954150e-01, 5.85782891e00),
    ),
    30: (
        (5.70893973e-01, 1.98908856e00, 3.06060585e-01),
        (1.26534614e-01, 2.17781965e00, 3.78619003e01),
        (2.35600223e-01, 3.97061102e-01, 6.85657228e-03),
        (3.67019041e-01, 8.66419596e-01, 3.35778823e-02),
    ),
}


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
