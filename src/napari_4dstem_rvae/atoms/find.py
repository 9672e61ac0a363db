"""Atoms in atom-resolved images: found, refined, classified, linked over frames, and the
windows around them cut for the rVAE (Kalinin et al., Sci. Adv. 7, eabd5084, 2021).

Classical atom finding (:func:`find_atoms`):

1. **Band-pass.** The image is filtered with a Laplacian of Gaussian of the atom's width
   (σ = FWHM / 2.355; the matched filter of a Gaussian blob, which also removes slowly varying
   background), negated so that atoms are maxima.
2. **Peaks.** Local maxima at least ``min_distance`` apart (default 0.6 × the smallest
   interatomic distance of graphene, 1.42 Å) above a threshold: by default the valley of the
   histogram of the filtered values at the candidate maxima (an Otsu split into "noise" and
   "atom" maxima), so that the dark holes give no atoms.
3. **Sub-pixel refinement.** A paraboloid fitted to the logarithm of the smoothed image in the
   3 × 3 neighbourhood of each maximum (exact for a Gaussian blob), clipped to ±1 px.
4. **Intensity and class.** The mean raw intensity within 0.5 × FWHM of the centre, minus the
   local background; with ``classes`` = 2, heavier atoms are brighter in HAADF (Z-contrast,
   I ∝ Z^1.7): a two-component Gaussian mixture on the log intensity splits them when the
   two modes are clearly apart (else every atom is class 0).

:func:`link_frames` follows atoms over frames (nearest neighbour after removing the median
drift between frames). :func:`cut_windows` samples a square window of a physical size around
every atom at its sub-pixel centre (bilinear), resampled to ``pixels`` × ``pixels``; windows
crossing the frame edge are dropped (or padded with the frame's median, ``edge="pad"``; ``"auto"``, the default, pads in small fields).

Only numpy and scipy/scikit-image/scikit-learn; nothing here imports torch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .table import ATOM_FWHM, MIN_SPACING, AtomTable, atom_intensity, classify_intensity, empty_table
from .track import link_frames


def _pixels(value_angstrom: float, pixel_size: float | None, default_px: float) -> float:
    return default_px if pixel_size is None else value_angstrom / pixel_size


def find_atoms(image: np.ndarray, pixel_size: float | None = None, *, fwhm: float = ATOM_FWHM,
               min_spacing: float = MIN_SPACING, threshold: float | str = "auto", classes: int = 2,
               frame: int = 0) -> AtomTable:
    """Atoms of one image (see the module docstring).

    ``pixel_size`` in Å (``None``: ``fwhm`` and ``min_spacing`` are in pixels); ``threshold``:
    ``"auto"`` or a value of the band-passed image (in units of its robust standard deviation).
    """
    from scipy import ndimage
    from skimage.feature import peak_local_max

    image = np.asarray(image, np.float64)
    if image.ndim != 2:
        raise ValueError(f"find_atoms takes one image (y, x); got shape {image.shape}")
    if not np.isfinite(image).all():
        image = np.where(np.isfinite(image), image, np.nanmedian(image))
    sigma = _pixels(fwhm, pixel_size, fwhm) / (2 * math.sqrt(2 * math.log(2)))
    if sigma < 0.5:
        raise ValueError(f"atoms of {fwhm} Å FWHM are {2.355 * sigma:.2f} px wide at this pixel size: "
                         "too small to find (expected ≥ 1.2 px); check the pixel size")
    spacing = _pixels(min_spacing, pixel_size, min_spacing)
    z = band_pass_z(image, sigma)
    # local maxima within a disk of 0.4 × the spacing (a square footprint would reach the
    # shoulder of a brighter diagonal neighbour), then at least 0.6 × the spacing apart
    radius = max(1, int(round(0.4 * spacing)))
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    candidates = peak_local_max(z, min_distance=max(1, int(math.floor(0.6 * spacing))),
                                footprint=(yy**2 + xx**2 <= radius**2), p_norm=2,
                                exclude_border=False, threshold_abs=3.0)
    if len(candidates) == 0:
        return empty_table()
    values = z[candidates[:, 0], candidates[:, 1]]
    cut = _threshold(values) if threshold == "auto" else float(threshold)
    peaks = candidates[values >= cut]
    if len(peaks) == 0:
        return empty_table()
    smooth = ndimage.gaussian_filter(image, sigma)
    y, x = _refine(smooth, peaks)
    intensity = atom_intensity(image, y, x, max(1.0, 1.1 * sigma))
    cls, names = classify_intensity(intensity, classes)
    return AtomTable(np.full(len(y), frame), y, x, intensity, cls, z[peaks[:, 0], peaks[:, 1]], None,
                     "log", names)


def band_pass_z(image: np.ndarray, sigma: float) -> np.ndarray:
    """The image band-passed at the atom size (negated, scale-normalised Laplacian of Gaussian
    of ``sigma`` px) in units of the noise it carries: the pixel noise (:func:`pixel_noise`)
    through the filter's L2 norm."""
    from scipy import ndimage

    image = np.asarray(image, np.float64)
    band = -ndimage.gaussian_laplace(image, sigma) * sigma**2
    return band / (pixel_noise(image) * _filter_norm(sigma))


def pixel_noise(image: np.ndarray) -> float:
    """Standard deviation of the pixel noise: the median absolute 3 × 3 second difference
    (kernel [[1,−2,1],[−2,4,−2],[1,−2,1]], L2 norm 6) over 0.6745 · 6 (Immerkær's estimator,
    Comput. Vis. Image Underst. 64, 300 (1996), in its robust form); smooth structure wider
    than a few pixels barely contributes."""
    from scipy import ndimage

    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float64)
    response = ndimage.convolve(np.asarray(image, np.float64), kernel, mode="reflect")[1:-1, 1:-1]
    value = float(np.median(np.abs(response))) / (0.6745 * 6.0)
    return value if value > 0 else float(np.std(image)) or 1.0


def _filter_norm(sigma: float) -> float:
    from scipy import ndimage

    k = int(math.ceil(5 * sigma))
    delta = np.zeros((2 * k + 1, 2 * k + 1))
    delta[k, k] = 1.0
    return float(np.sqrt(np.sum((ndimage.gaussian_laplace(delta, sigma) * sigma**2) ** 2)))


def _threshold(values: np.ndarray) -> float:
    """Atoms among the candidate maxima (in noise units): at least 5 (false maxima of pure
    noise beyond 5 SD are rare) and at least a third of the typical atom's response (ripples
    between atoms and half-atoms at hole edges are weaker)."""
    strong = values[values >= 5.0]
    if len(strong) == 0:
        return 5.0
    return max(5.0, 0.3 * float(np.median(strong)))


def _refine(smooth: np.ndarray, peaks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ny, nx = smooth.shape
    py = np.clip(peaks[:, 0], 1, ny - 2)
    px = np.clip(peaks[:, 1], 1, nx - 2)
    floor = smooth.min() - 1e-6 * (abs(smooth.min()) + 1)
    log = lambda a: np.log(np.maximum(a - floor, 1e-12))  # noqa: E731
    c = log(smooth[py, px])
    up, down = log(smooth[py - 1, px]), log(smooth[py + 1, px])
    left, right = log(smooth[py, px - 1]), log(smooth[py, px + 1])
    dy_den = up - 2 * c + down
    dx_den = left - 2 * c + right
    with np.errstate(divide="ignore", invalid="ignore"):
        dy = np.where(dy_den < 0, 0.5 * (up - down) / dy_den, 0.0)
        dx = np.where(dx_den < 0, 0.5 * (left - right) / dx_den, 0.0)
    dy = np.clip(np.nan_to_num(dy), -1, 1)
    dx = np.clip(np.nan_to_num(dx), -1, 1)
    # border peaks kept where they were found
    y = np.where((peaks[:, 0] == py), py + dy, peaks[:, 0]).astype(np.float64)
    x = np.where((peaks[:, 1] == px), px + dx, peaks[:, 1]).astype(np.float64)
    return y, x


def find_atoms_series(series: Any, *, fwhm: float = ATOM_FWHM, min_spacing: float = MIN_SPACING,
                      threshold: float | str = "auto", classes: int = 2, link: bool = True,
                      progress: Any = None) -> AtomTable:
    """:func:`find_atoms` on every frame of an :class:`ImageSeries`; the classes are decided on
    the atoms of all frames together; ``link``: tracks over frames (:func:`link_frames`)."""
    pixel_size = series.pixel_size_angstrom
    tables = []
    for f in range(series.n_frames):
        tables.append(find_atoms(series.frame(f), pixel_size, fwhm=fwhm, min_spacing=min_spacing,
                                 threshold=threshold, classes=0, frame=f))
        if progress is not None:
            progress(f + 1, series.n_frames)
    table = AtomTable.concatenate(tables)
    if len(table) == 0:
        return table
    cls, names = classify_intensity(table.intensity, classes)
    table.cls, table.class_names = cls, names
    if link and series.n_frames > 1:
        table.track = link_frames(table, _pixels(min_spacing, pixel_size, min_spacing))
    return table


