"""The 4D-STEM forward model: probe, exit wave, far-field pattern integrated on detector
pixels, partial spatial coherence and counting noise. See the package docstring."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..dataset import electron_wavelength_angstrom
from .potentials import _frequencies, transmission_function

# FFT pixels (angular steps λ/L) per detector pixel, at least, along each axis.
_FFT_PIXELS_PER_DETECTOR_PIXEL = 2.0
# Probe positions per FFT batch (bounds memory at ~ batch × grid × 8 bytes per array).
_BATCH = 64


def _rebinning_matrix(frequencies: np.ndarray, fft_step: float, n_pixels: int,
                      pixel: float) -> np.ndarray:
    """Weights (n_pixels, n_fft): the fraction of each FFT pixel (centre ``frequencies``,
    width ``fft_step``) falling in each detector pixel (width ``pixel``, zero at the
    detector centre)."""
    edges = (np.arange(n_pixels + 1) - n_pixels / 2) * pixel
    low = np.maximum(edges[:-1, None], frequencies[None, :] - fft_step / 2)
    high = np.minimum(edges[1:, None], frequencies[None, :] + fft_step / 2)
    return np.clip(high - low, 0, None) / fft_step


def _probe_spectrum(ky: np.ndarray, kx: np.ndarray, box: tuple[float, float],
                    wavelength: float, k_aperture: float, defocus_angstrom: float) -> np.ndarray:
    """The probe's spectrum on the FFT frequencies ``ky``, ``kx`` (1/Å) of ``box``: a
    circular aperture of radius ``k_aperture`` (1/Å) with its edge anti-aliased over one
    reciprocal pixel, the defocus phase (> 0 underfocus), unit total intensity."""
    k2 = ky[:, None] ** 2 + kx[None, :] ** 2
    k = np.sqrt(k2)
    # Aperture with its edge anti-aliased over one reciprocal pixel.
    edge_width = max(1 / box[0], 1 / box[1])
    aperture = np.clip((k_aperture - k) / edge_width + 0.5, 0.0, 1.0)
    chi = -np.pi * wavelength * defocus_angstrom * k2
    probe_spectrum = aperture * np.exp(-1j * chi)
    probe_spectrum /= np.sqrt(np.sum(np.abs(probe_spectrum) ** 2))
    return probe_spectrum


class _Probe:
    """Real-space probe waves at given positions from the probe's ``spectrum`` on the FFT
    frequencies ``ky``, ``kx``."""

    def __init__(self, spectrum: np.ndarray, ky: np.ndarray, kx: np.ndarray) -> None:
        # The probe's spectrum is zero outside the aperture: only that block is computed.
        self.grid = spectrum.shape
        self.rows = np.flatnonzero(np.abs(spectrum).any(axis=1))
        self.cols = np.flatnonzero(np.abs(spectrum).any(axis=0))
        self.block = spectrum[self.rows[:, None], self.cols].astype(np.complex64)
        self.ky, self.kx = ky[self.rows], kx[self.cols]

    def waves(self, positions: np.ndarray) -> np.ndarray:
        """complex64 (batch, n_y, n_x): the probe at each (y, x) of ``positions`` (batch, 2),
        in Å; unit total intensity (orthonormal FFT)."""
        from scipy import fft as sp_fft

        # Probe shift as a Fourier phase ramp, separable in y and x: exact sub-pixel shifts.
        ramp_y = np.exp(-2j * np.pi * positions[:, 0:1] * self.ky).astype(np.complex64)
        ramp_x = np.exp(-2j * np.pi * positions[:, 1:2] * self.kx).astype(np.complex64)
        waves = np.zeros((len(positions), *self.grid), dtype=np.complex64)
        waves[:, self.rows[:, None], self.cols] = (
            self.block * ramp_y[:, :, None] * ramp_x[:, None, :]
        )
        return sp_fft.ifft2(waves, norm="ortho", workers=-1, overwrite_x=True)


class _Detector:
    """Integration of far-field intensities |Ψ(k)|² on the FFT grid onto detector pixels of
    angular size ``det_pixel`` (1/Å), the direct beam at the detector's geometric centre."""

    def __init__(self, ky: np.ndarray, kx: np.ndarray, box: tuple[float, float],
                 det_shape: tuple[int, int], det_pixel: float) -> None:
        # Detector: only the FFT rows/columns that fall on it are kept. The x weights are
        # doubled up so that they act on the interleaved (re², im²) of the complex64 data.
        rebin_y = _rebinning_matrix(ky, 1 / box[0], det_shape[0], det_pixel)
        rebin_x = _rebinning_matrix(kx, 1 / box[1], det_shape[1], det_pixel)
        self.used_y = np.flatnonzero(rebin_y.any(axis=0))
        self.used_x = np.flatnonzero(rebin_x.any(axis=0))
        self.rebin_y = rebin_y[:, self.used_y].astype(np.float32)
        self.rebin_x_pairs = np.repeat(rebin_x[:, self.used_x].T, 2, axis=0).astype(np.float32)

    def patterns(self, spectra: np.ndarray) -> np.ndarray:
        """(batch, det_y, det_x) float32 intensities of complex64 ``spectra`` (batch, n_y, n_x)
        (far-field amplitudes, orthonormal FFT)."""
        parts = np.ascontiguousarray(spectra[:, self.used_y[:, None], self.used_x]).view(np.float32)
        np.square(parts, out=parts)
        # Single large GEMMs (tensordot) rather than a batched matmul: much faster on
        # a busy CPU.
        half = np.tensordot(parts, self.rebin_x_pairs, axes=([2], [0]))
        patterns = np.tensordot(half, self.rebin_y, axes=([1], [1]))  # (batch, det_x, det_y)
        return patterns.transpose(0, 2, 1)


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
    probe_spectrum = _probe_spectrum(ky, kx, box, wavelength, k_aperture, defocus_angstrom)

    atoms = np.asarray(atoms, dtype=float).reshape(-1, 3)
    transmission = transmission_function(atoms, box, grid, energy_kev, q_max)
    transmission = transmission.astype(np.complex64)

    detector = _Detector(ky, kx, box, det_shape, det_pixel)
    probe = _Probe(probe_spectrum, ky, kx)

    flat = positions.reshape(-1, 2)
    out = np.empty((len(flat), *det_shape), dtype=np.float32)
    for start in range(0, len(flat), _BATCH):
        waves = probe.waves(flat[start:start + _BATCH])
        waves *= transmission
        waves = sp_fft.fft2(waves, norm="ortho", workers=-1, overwrite_x=True)
        out[start:start + len(waves)] = detector.patterns(waves)
    return out.reshape(*positions.shape[:-1], *det_shape)
