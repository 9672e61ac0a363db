"""Multislice 4D-STEM for specimens thicker than one atom (written for this project; Kirkland,
*Advanced Computing in Electron Microscopy*, 2nd ed., Springer 2010, ch. 6 — "Kirkland").

- **Slices.** The specimen is cut along the beam (z, from the entrance surface) into slices of
  thickness Δz. The atoms of a slice are projected onto its plane: the slice's projected
  potential v_z(r) is :func:`.potentials.projected_potential` of those atoms (Kirkland's
  parametrisation, periodic box, exact sub-pixel positions).
- **Transmission.** t(r) = exp(iσ v_z(r) − σ κ v_z(r)) per slice: the real part of the
  potential gives the phase, an imaginary part κ·v_z (``absorption`` = κ) removes electrons.
  This proportional absorptive potential is the simplest model of the loss of the elastic
  wave to thermal diffuse scattering (and other inelastic channels) at high angles; κ ≈ 0.1
  is a common choice. With κ = 0 the propagation conserves intensity up to the band limit.
  As in :func:`.potentials.transmission_function`, t is formed on a grid ``oversampling``
  times finer and its spectrum then cut at the band limit and brought back to the grid.
- **Propagation.** Between slices the wave is propagated over Δz in free space by the
  Fresnel propagator P(k) = exp(−iπλΔz k²) (Kirkland eq. 6.92), applied in Fourier space.
  The incident probe (:mod:`.stem4d`: aperture, defocus) is the wave at the entrance
  surface; ``defocus_angstrom`` > 0 puts the focus that far below it (Kirkland's convention:
  propagating by Δz changes the defocus by −Δz). No propagation follows the last slice: it
  changes only the phase of the far field, not its intensity.
- **Band limit (anti-aliasing).** t and P are both zero beyond q_max = ⅔ of the grid's
  (smaller) Nyquist frequency (Kirkland ch. 6.8): the product t·ψ of two waves limited to
  q_max holds frequencies up to 2 q_max, which the periodic FFT wraps to ≥ 2 k_N − 2 q_max
  = q_max, where the next propagator (or, after the last slice, the detector's edge, which
  must lie inside q_max) removes them. Electrons scattered beyond q_max are lost, as they
  would be beyond the detector; by default the grid is chosen so that q_max reaches the
  detector corners.
- **Far field, detector, probe positions.** As in :mod:`.stem4d`: |FFT(ψ_exit)|² with an
  orthonormal FFT, integrated onto detector pixels of ``det_pixel_mrad``; the probe moved by
  a Fourier phase ramp (exact sub-pixel positions); probe positions in batches of stacked
  FFTs.

Only numpy is imported at module level; scipy is imported inside functions.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ..dataset import electron_wavelength_angstrom
from .potentials import _frequencies, interaction_constant, projected_potential
from .stem4d import _BATCH, _Detector, _grid_for, _Probe, _probe_spectrum

#: Band limit of the multislice as a fraction of the grid's Nyquist frequency.
BAND_LIMIT_FRACTION = 2.0 / 3.0


def band_limit(box: tuple[float, float], grid: tuple[int, int]) -> float:
    """q_max (1/Å): ⅔ of the smaller Nyquist frequency of ``grid`` pixels over ``box`` (Å)."""
    return BAND_LIMIT_FRACTION * min(grid[0] / box[0], grid[1] / box[1]) / 2


def _cut(q_max: float | None, box: tuple[float, float], grid: tuple[int, int]) -> float:
    nyquist = min(grid[0] / box[0], grid[1] / box[1]) / 2
    return band_limit(box, grid) if q_max is None else min(float(q_max), nyquist)


def fresnel_propagator(box: tuple[float, float], grid: tuple[int, int], energy_kev: float,
                       dz: float, q_max: float | None = None) -> np.ndarray:
    """Fresnel propagator exp(−iπλΔz k²) over ``dz`` Å on the FFT grid (FFT order).

    Zero beyond ``q_max`` (1/Å; default :func:`band_limit`), modulus 1 within it. A negative
    ``dz`` propagates backwards.
    """
    wavelength = electron_wavelength_angstrom(energy_kev)
    ky, kx = _frequencies(box, grid)
    k2 = ky[:, None] ** 2 + kx[None, :] ** 2
    propagator = np.exp(-1j * np.pi * wavelength * dz * k2)
    propagator[k2 > _cut(q_max, box, grid) ** 2] = 0.0
    return propagator


def slice_transmission(atoms: Any, box: tuple[float, float], grid: tuple[int, int],
                       energy_kev: float, *, absorption: float = 0.0,
                       q_max: float | None = None, oversampling: int = 2) -> np.ndarray:
    """Transmission function exp(iσ(1 + iκ) v_z) of one slice, band-limited to ``q_max``.

    ``atoms``: (n, 3) array of (y, x, Z) in Å (the slice's atoms, projected); ``absorption``
    κ ≥ 0, the imaginary potential as a fraction of the real one; ``q_max`` in 1/Å, default
    :func:`band_limit`. t is formed on a grid ``oversampling`` times finer, where the
    potential reaches that grid's Nyquist frequency, and its spectrum cut at ``q_max`` and
    brought back to ``grid`` (as in :func:`.potentials.transmission_function`, which this
    equals for κ = 0 and the same ``q_max``).
    """
    if absorption < 0:
        raise ValueError(f"absorption must be ≥ 0, got {absorption}")
    fine = (grid[0] * oversampling, grid[1] * oversampling)
    potential = projected_potential(np.asarray(atoms, dtype=float).reshape(-1, 3), box, fine)
    sigma = interaction_constant(energy_kev)
    spectrum = np.fft.fft2(np.exp((1j - absorption) * sigma * potential))
    # Coarse-grid frequencies are a subset of the fine grid's (same box, same 1/L step).
    rows = np.round(np.fft.fftfreq(grid[0], 1 / grid[0])).astype(int) % fine[0]
    cols = np.round(np.fft.fftfreq(grid[1], 1 / grid[1])).astype(int) % fine[1]
    spectrum = spectrum[rows[:, None], cols] * (grid[0] * grid[1]) / (fine[0] * fine[1])
    ky, kx = _frequencies(box, grid)
    spectrum[np.hypot(ky[:, None], kx[None, :]) > _cut(q_max, box, grid)] = 0.0
    return np.fft.ifft2(spectrum)


def slice_atoms(atoms: Any, slice_thickness: float, n_slices: int | None = None
                ) -> list[np.ndarray]:
    """Cut a specimen into slices: ``atoms`` (n, 4) of (y, x, z, Z) in Å, z along the beam from
    the entrance surface. Slice k holds the atoms with k·Δz ≤ z < (k + 1)·Δz, as (n_k, 3)
    arrays of (y, x, Z); ``n_slices`` defaults to enough slices for the deepest atom."""
    atoms = np.asarray(atoms, dtype=float).reshape(-1, 4)
    if not slice_thickness > 0:
        raise ValueError(f"slice_thickness must be positive, got {slice_thickness}")
    index = np.floor(atoms[:, 2] / slice_thickness).astype(int)
    if len(atoms) and index.min() < 0:
        raise ValueError("atoms must have z ≥ 0 (the entrance surface is at z = 0)")
    if n_slices is None:
        n_slices = int(index.max()) + 1 if len(atoms) else 1
    if len(atoms) and index.max() >= n_slices:
        raise ValueError(f"atoms lie deeper than {n_slices} slices of {slice_thickness} Å")
    return [atoms[index == k][:, [0, 1, 3]] for k in range(n_slices)]


def multislice(waves: np.ndarray, transmissions: Sequence[np.ndarray], propagator: np.ndarray,
               repeats: int = 1) -> np.ndarray:
    """Exit waves of the incident ``waves`` (…, n_y, n_x; real space) through ``repeats``
    repetitions of the slices whose ``transmissions`` are given, propagating with
    ``propagator`` (Fourier space, FFT order) between consecutive slices:
    ψ ← t_1·ψ, then ψ ← t_j · IFFT[P · FFT ψ] for every further slice. Computed in complex64
    on a copy (``waves`` is left unchanged)."""
    from scipy import fft as sp_fft

    waves = np.array(waves, dtype=np.complex64)
    propagator = np.asarray(propagator, dtype=np.complex64)
    transmissions = [np.asarray(t, dtype=np.complex64) for t in transmissions]
    first = True
    for _ in range(int(repeats)):
        for transmission in transmissions:
            if not first:
                waves = sp_fft.fft2(waves, workers=-1, overwrite_x=True)
                waves *= propagator
                waves = sp_fft.ifft2(waves, workers=-1, overwrite_x=True)
            waves *= transmission
            first = False
    return waves


def simulate_multislice(
    slices: Sequence[Any],
    box: tuple[float, float],
    probe_positions: Any,
    *,
    slice_thickness: float,
    repeats: int = 1,
    det_shape: tuple[int, int] = (64, 64),
    det_pixel_mrad: float = 31.0 / 16,
    energy_kev: float = 60.0,
    semiangle_mrad: float = 31.0,
    defocus_angstrom: float = 0.0,
    absorption: float = 0.0,
    grid: tuple[int, int] | None = None,
    q_max: float | None = None,
) -> np.ndarray:
    """Diffraction patterns of a probe at ``probe_positions`` after a multislice specimen.

    Parameters
    ----------
    slices
        The atoms of each slice of one repeat unit, in order along the beam: a sequence of
        (n_k, 3) arrays of (y, x, Z) in Å (see :func:`slice_atoms`); an empty array is a slice
        of vacuum.
    box
        (L_y, L_x) of the periodic box in Å (angular sampling λ/L of the far field).
    probe_positions
        Array (..., 2) of probe (y, x) positions in Å, in the frame of the atoms.
    slice_thickness
        Δz in Å, the propagation distance between consecutive slices.
    repeats
        The specimen is ``repeats`` repetitions of ``slices`` (thickness
        ``repeats · len(slices) · slice_thickness``); the transmissions are computed once.
    det_shape, det_pixel_mrad
        Detector pixels and their angular size; the direct beam at ``((rows−1)/2, (cols−1)/2)``.
    energy_kev, semiangle_mrad, defocus_angstrom
        Beam energy, aperture semi-angle, defocus (> 0: focus that far below the entrance
        surface).
    absorption
        κ, the imaginary potential as a fraction of the real one (0: no absorption).
    grid
        FFT grid (n_y, n_x); by default the coarsest fast size whose band limit (⅔ Nyquist)
        reaches the detector corners (or ``q_max`` when given). Thick crystals of heavy
        atoms channel the beam into sharp column states that need a wider band than the
        detector: check convergence (:func:`.zns.zns` uses at least 4 1/Å).
    q_max
        Band limit in 1/Å; default ⅔ of the grid's Nyquist frequency. Beyond ⅔ Nyquist the
        products of several slices alias.

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
    if not slice_thickness > 0 or int(repeats) < 1 or len(slices) < 1:
        raise ValueError(
            f"need at least one slice, slice_thickness > 0 and repeats ≥ 1, got {len(slices)} "
            f"slices, {slice_thickness}, {repeats}"
        )
    box = (float(box[0]), float(box[1]))
    wavelength = electron_wavelength_angstrom(energy_kev)
    det_pixel = det_pixel_mrad * 1e-3 / wavelength
    k_aperture = semiangle_mrad * 1e-3 / wavelength
    k_edge = det_pixel * max(det_shape) / 2
    k_corner = det_pixel * math.hypot(*det_shape) / 2
    if grid is None:
        needed = max(k_corner, k_aperture) if q_max is None else float(q_max)
        grid = _grid_for(box, needed / BAND_LIMIT_FRACTION)
    grid = (int(grid[0]), int(grid[1]))
    cut = _cut(q_max, box, grid)
    if cut < max(k_edge, k_aperture):
        raise ValueError(
            f"The band limit of the FFT grid {grid} over the box {box} Å, "
            f"{cut * wavelength * 1e3:.1f} mrad, is below the aperture ({semiangle_mrad:g} mrad) "
            f"or the detector edge ({k_edge * wavelength * 1e3:.1f} mrad)"
        )

    ky, kx = _frequencies(box, grid)
    probe = _Probe(_probe_spectrum(ky, kx, box, wavelength, k_aperture, defocus_angstrom), ky, kx)
    detector = _Detector(ky, kx, box, det_shape, det_pixel)
    transmissions = [
        slice_transmission(atoms, box, grid, energy_kev, absorption=absorption, q_max=cut)
        .astype(np.complex64)
        for atoms in slices
    ]
    propagator = fresnel_propagator(box, grid, energy_kev, slice_thickness, cut)

    flat = positions.reshape(-1, 2)
    out = np.empty((len(flat), *det_shape), dtype=np.float32)
    for start in range(0, len(flat), _BATCH):
        waves = multislice(probe.waves(flat[start:start + _BATCH]), transmissions, propagator,
                           repeats)
        waves = sp_fft.fft2(waves, norm="ortho", workers=-1, overwrite_x=True)
        out[start:start + len(waves)] = detector.patterns(waves)
    return out.reshape(*positions.shape[:-1], *det_shape)


def probe_grid_for_cell(cell: tuple[float, float], box: tuple[float, float], energy_kev: float,
                        semiangle_mrad: float) -> tuple[int, int]:
    """Probe positions (n_y, n_x) per period ``cell`` (Å) that sample 4D-STEM data exactly.

    For any specimen, the intensity at a detector pixel, as a function of the probe position
    R, holds spatial frequencies Q = k′ − k″ of pairs of the probe's frequencies only: |Q| <
    2 k_α + δ (δ: the aperture's anti-aliased edge, one reciprocal pixel of ``box``). For a
    specimen periodic with ``cell``, Q is also on the cell's reciprocal lattice, so an odd
    number n > 2 ⌊(2 k_α + δ) L⌋ of probe positions per period L holds every Fourier
    component: the data at any other position follow exactly (:func:`periodic_scan`).
    """
    q_max = 2 * semiangle_mrad * 1e-3 / electron_wavelength_angstrom(energy_kev) \
        + max(1 / box[0], 1 / box[1])
    return tuple(2 * math.floor(q_max * side) + 1 for side in cell)


def periodic_scan(samples: np.ndarray, cell: tuple[float, float], positions_y: Any,
                  positions_x: Any, source_sigma: float = 0.0) -> np.ndarray:
    """Data of a specimen periodic with ``cell`` at a raster of probe positions, from
    ``samples`` (n_y, n_x, ...) taken at (i·c_y/n_y, j·c_x/n_x) (see
    :func:`probe_grid_for_cell`), by their Fourier series: exact for band-limited data.

    ``positions_y``, ``positions_x``: the raster's rows and columns (Å, same frame).
    ``source_sigma`` (Å): the standard deviation of a Gaussian effective source; the
    incoherent average over it is the convolution of the data with that Gaussian over the probe
    positions, i.e. each Fourier component multiplied by exp(−2π²σ²|Q|²): exact, with no
    margin or truncation. Returns float (len(positions_y), len(positions_x), ...).
    """
    samples = np.asarray(samples)
    ny, nx = samples.shape[:2]
    coefficients = np.fft.fft2(samples.astype(np.float64), axes=(0, 1)) / (ny * nx)
    qy = np.fft.fftfreq(ny, cell[0] / ny)
    qx = np.fft.fftfreq(nx, cell[1] / nx)
    if source_sigma > 0:
        damping = np.exp(-2 * np.pi**2 * source_sigma**2 * (qy[:, None] ** 2 + qx[None, :] ** 2))
        coefficients *= damping.reshape(ny, nx, *([1] * (samples.ndim - 2)))
    phase_y = np.exp(2j * np.pi * np.outer(np.asarray(positions_y, dtype=float), qy))
    phase_x = np.exp(2j * np.pi * np.outer(np.asarray(positions_x, dtype=float), qx))
    rows = np.tensordot(phase_y, coefficients, axes=([1], [0]))       # (sy, n_x, ...)
    data = np.tensordot(phase_x, rows, axes=([1], [1]))               # (sx, sy, ...)
    return np.swapaxes(data.real, 0, 1)
