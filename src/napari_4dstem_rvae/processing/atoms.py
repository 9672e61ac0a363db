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
crossing the frame edge are dropped (or padded with the frame's median, ``edge="pad"``).

Only numpy and scipy/scikit-image/scikit-learn; nothing here imports torch.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Default size of an atom in the image (probe FWHM) and nearest-neighbour distance, Å.
ATOM_FWHM = 1.0
MIN_SPACING = 1.42


@dataclass
class AtomTable:
    """Atoms of an image series: one entry per atom per frame.

    ``y``, ``x`` are in pixels (sub-pixel, pixel centres at integer indices); ``intensity`` is
    the background-subtracted mean intensity at the atom; ``cls`` the class (0: lighter);
    ``track`` the track id over frames (−1 before linking); ``score`` the filter response.
    """

    frame: np.ndarray
    y: np.ndarray
    x: np.ndarray
    intensity: np.ndarray
    cls: np.ndarray
    score: np.ndarray
    track: np.ndarray = field(default=None)  # type: ignore[assignment]
    method: str = "log"
    class_names: tuple[str, ...] = ("atom",)

    def __post_init__(self) -> None:
        n = len(self.frame)
        if self.track is None:
            self.track = np.full(n, -1, np.int64)
        for name in ("frame", "y", "x", "intensity", "cls", "score", "track"):
            value = np.asarray(getattr(self, name))
            if len(value) != n:
                raise ValueError(f"AtomTable.{name} has {len(value)} entries, expected {n}")
            setattr(self, name, value)

    def __len__(self) -> int:
        return len(self.frame)

    def subset(self, keep: np.ndarray) -> AtomTable:
        return AtomTable(self.frame[keep], self.y[keep], self.x[keep], self.intensity[keep], self.cls[keep],
                         self.score[keep], self.track[keep], self.method, self.class_names)

    @classmethod
    def concatenate(cls, tables: list[AtomTable]) -> AtomTable:
        if not tables:
            return empty_table()
        cat = {name: np.concatenate([getattr(t, name) for t in tables])
               for name in ("frame", "y", "x", "intensity", "cls", "score", "track")}
        return cls(**cat, method=tables[0].method, class_names=tables[0].class_names)

    def columns(self) -> dict[str, np.ndarray]:
        return {"frame": self.frame, "y": self.y, "x": self.x, "intensity": self.intensity,
                "class": self.cls, "score": self.score, "track": self.track}


def empty_table(method: str = "log") -> AtomTable:
    z = np.zeros(0)
    return AtomTable(z.astype(int), z, z, z, z.astype(int), z, z.astype(int), method)


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
    intensity = _intensity(image, y, x, max(1.0, 1.1 * sigma))
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


def _intensity(image: np.ndarray, y: np.ndarray, x: np.ndarray, radius: float) -> np.ndarray:
    from scipy import ndimage

    k = int(math.ceil(radius))
    dy, dx = np.mgrid[-k:k + 1, -k:k + 1]
    disk = (dy**2 + dx**2) <= radius**2
    oy, ox = dy[disk], dx[disk]
    coords = np.stack([y[:, None] + oy[None], x[:, None] + ox[None]])
    values = ndimage.map_coordinates(image, coords.reshape(2, -1), order=1, mode="nearest").reshape(len(y), -1)
    background = np.percentile(image, 5)
    return values.mean(axis=1) - background


def classify_intensity(intensity: np.ndarray, classes: int = 2) -> tuple[np.ndarray, tuple[str, ...]]:
    """Class 1 for the brighter (heavier) atoms when the log intensities form two clear modes
    (a two-component Gaussian mixture whose means are > 4 pooled SDs apart and whose bright
    component holds ≥ 3 atoms), else class 0 for all."""
    n = len(intensity)
    if classes < 2 or n < 10:
        return np.zeros(n, np.int64), ("atom",)
    from sklearn.mixture import GaussianMixture

    v = np.log(np.maximum(intensity, np.percentile(intensity, 1) * 0.1 + 1e-9)).reshape(-1, 1)
    # the bright class is rare (dopants): start one component at the bulk, one at the top
    start = np.array([[np.median(v)], [np.percentile(v, 99.5)]])
    gm = GaussianMixture(2, means_init=start, random_state=0).fit(v)
    order = np.argsort(gm.means_.ravel())
    means = gm.means_.ravel()[order]
    sds = np.sqrt(gm.covariances_.ravel()[order])
    labels = (gm.predict(v) == order[1]).astype(np.int64)
    # a robust split: brighter than the bulk by more than 4 of its SDs
    bulk_sd = sds[0]
    if means[1] - means[0] > 4 * bulk_sd and 3 <= labels.sum() <= 0.5 * n:
        cut = means[0] + 0.5 * (means[1] - means[0])
        return (v.ravel() > cut).astype(np.int64), ("light", "heavy")
    return np.zeros(n, np.int64), ("atom",)


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


def link_frames(table: AtomTable, spacing_px: float) -> np.ndarray:
    """Track ids: each atom joined to the nearest atom of the previous frame within half the
    atomic spacing, after removing the median drift between the frames (estimated from the
    nearest-neighbour displacements)."""
    from scipy.spatial import cKDTree

    track = np.full(len(table), -1, np.int64)
    frames = np.unique(table.frame)
    next_id = 0
    previous = None
    for f in frames:
        idx = np.flatnonzero(table.frame == f)
        pts = np.column_stack([table.y[idx], table.x[idx]])
        if previous is None or len(previous[0]) == 0:
            track[idx] = np.arange(next_id, next_id + len(idx))
            next_id += len(idx)
        else:
            prev_idx, prev_pts = previous
            tree = cKDTree(prev_pts)
            d, j = tree.query(pts, distance_upper_bound=spacing_px)
            ok = np.isfinite(d)
            drift = np.median(pts[ok] - prev_pts[j[ok]], axis=0) if ok.sum() > 3 else np.zeros(2)
            d, j = tree.query(pts - drift, distance_upper_bound=0.5 * spacing_px)
            ok = np.isfinite(d)
            # one atom of the previous frame continues at most one track: the closest
            order = np.argsort(d)
            taken = set()
            for i in order:
                if ok[i] and j[i] not in taken:
                    track[idx[i]] = track[prev_idx[j[i]]]
                    taken.add(j[i])
            new = track[idx] < 0
            track[idx[new]] = np.arange(next_id, next_id + int(new.sum()))
            next_id += int(new.sum())
        previous = (idx, pts)
    return track


def window_pixels_for(size: float, pixel_size: float | None) -> float:
    """A window's side in pixels of the image for a side ``size`` in Å."""
    return size if pixel_size is None else size / pixel_size


def round_mask(pixels: int, taper: float = 0.15) -> np.ndarray:
    """A disk filling the window, its edge tapered (raised cosine over ``taper`` of the radius):
    the content of a window then turns without its square corners, so that a rotation of the
    lattice is a rotation of the window."""
    c = (pixels - 1) / 2
    yy, xx = np.mgrid[:pixels, :pixels]
    r = np.hypot(yy - c, xx - c) / (pixels / 2)
    inner = 1 - taper
    return np.where(r <= inner, 1.0, np.where(r >= 1, 0.0, 0.5 * (1 + np.cos(np.pi * (r - inner) / taper))))


def cut_windows(series: Any, table: AtomTable, size: float, pixels: int = 32, *, source: Any = None,
                edge: str = "drop", round: bool = True) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Windows ``(n, pixels, pixels)`` float32 centred on every atom (sub-pixel, bilinear).

    ``size``: side in Å (``series.pixel_size`` known) or px; ``source``: another stack of the
    series' frame shape to cut from (e.g. class-probability maps), default the frames.
    ``edge``: ``"drop"`` windows crossing the frame edge, or ``"pad"`` them with the frame's
    median. ``round``: each window minus its frame's median, times :func:`round_mask`.
    Returns the windows, the indices of the atoms they belong to and a note of what
    was dropped.
    """
    from scipy import ndimage

    if edge not in ("drop", "pad"):
        raise ValueError(f"edge must be 'drop' or 'pad', got {edge!r}")
    if pixels < 4:
        raise ValueError(f"windows need at least 4 × 4 pixels, got {pixels}")
    side = window_pixels_for(size, series.pixel_size_angstrom)
    if not side > 2:
        raise ValueError(f"a window of {size} is {side:.2f} px of the image: expected more than 2 px "
                         "(give the size in Å with a calibrated series, or in pixels)")
    ny, nx = series.frame_shape
    half = (side - 1) / 2 if side >= pixels else side / 2
    grid = (np.arange(pixels) - (pixels - 1) / 2) * (side / pixels)
    gy, gx = np.meshgrid(grid, grid, indexing="ij")
    inside = (table.y - half >= -0.5) & (table.y + half <= ny - 0.5) & \
             (table.x - half >= -0.5) & (table.x + half <= nx - 0.5)
    keep = np.flatnonzero(inside) if edge == "drop" else np.arange(len(table))
    out = np.empty((len(keep), pixels, pixels), np.float32)
    mask = round_mask(pixels).astype(np.float32) if round else None
    stack = source if source is not None else series.data
    if tuple(stack.shape[-2:]) != (ny, nx):
        raise ValueError(f"source has frames of {tuple(stack.shape[-2:])}; expected the series' {(ny, nx)}")
    for f in np.unique(table.frame[keep]):
        rows = np.flatnonzero(table.frame[keep] == f)
        image = np.asarray(stack[int(f)], np.float32)
        if hasattr(image, "compute"):
            image = image.compute()
        fill = float(np.median(image))
        at = keep[rows]
        coords = np.stack([table.y[at][:, None, None] + gy[None], table.x[at][:, None, None] + gx[None]])
        out[rows] = ndimage.map_coordinates(image, coords.reshape(2, -1), order=1, mode="constant",
                                            cval=fill).reshape(len(at), pixels, pixels)
        if round:
            out[rows] = (out[rows] - fill) * mask
    note = {"windows": int(len(keep)), "dropped_at_edge": int(len(table) - len(keep)) if edge == "drop" else 0,
            "padded_at_edge": int((~inside).sum()) if edge == "pad" else 0, "side_px": float(side),
            "pixels": int(pixels), "round": bool(round)}
    if note["dropped_at_edge"]:
        warnings.warn(f"{note['dropped_at_edge']} of {len(table)} atoms are closer to the frame edge than half a "
                      f"window ({side:.1f} px): their windows are left out (edge='pad' keeps them, padded)",
                      stacklevel=2)
    return out, keep, note
