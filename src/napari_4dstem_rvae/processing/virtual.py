"""Virtual detectors: bright field, annular dark field, any disk or annulus.

Geometry is in detector pixels ``(row, col)``; pixel ``(i, j)`` has its centre at
``(i, j)``. A pixel belongs to a disk of radius R about ``(cy, cx)`` when the distance
of its centre is ≤ R, to an annulus [inner, outer) when inner ≤ distance < outer.
Radii can be given in pixels (``"px"``), in mrad (``"mrad"``, needs an angular
calibration) or in multiples of the bright-field disk radius (``"bf"``). Unless a centre
is given, detectors are centred on the bright-field disk found in a sample of patterns.

All images are computed in one pass by :func:`.engine.reduce_masks`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..dataset import Calibration
from .arrays import as_array
from .engine import MaskStack, reduce_masks
from .sampling import sample_mean_pattern

#: Units for detector radii.
RADIUS_UNITS = ("px", "mrad", "bf")
#: The default ADF inner radius, in bright-field disk radii: clear of the disk's blurred edge.
#: The one rule for the default annular dark field everywhere (images, COM sign, figures).
ADF_INNER_BF = 1.25


@dataclass(frozen=True)
class DiskGeometry:
    """The bright-field disk on the detector: centre ``(row, col)`` and radius, in pixels."""

    center: tuple[float, float]
    radius: float


def find_disk(pattern: Any, threshold: float = 0.5) -> DiskGeometry:
    """Centre and radius of the bright-field disk in one pattern (pixels, sub-pixel).

    The disk is the largest connected region of pixels brighter than
    ``background + threshold × (peak − background)``
    (background: the 5th percentile; peak: the 99.5th percentile, so one hot pixel does
    not set the scale). The centre is the intensity-weighted centroid of that region
    above the background; the radius is √(area / π), the area counting edge pixels by
    their fraction of the disk level (sub-pixel).

    Parameters
    ----------
    pattern
        2D ``(det_y, det_x)`` array.
    threshold
        Fraction between background and peak, in (0, 1).
    """
    from scipy import ndimage

    image = np.asarray(pattern, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"pattern must be 2D (det_y, det_x), got shape {image.shape}")
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    image = np.where(np.isfinite(image), image, 0.0)
    background, peak = (float(v) for v in np.percentile(image, [5, 99.5]))
    if not peak > background:
        peak = float(image.max())
    if not peak > background:
        raise ValueError(
            "cannot find a bright-field disk: the pattern is uniform "
            f"(every pixel ≈ {background:g}); give the centre and radius explicitly"
        )
    above = image > background + threshold * (peak - background)
    labels, count = ndimage.label(above)
    if count > 1:
        # The largest region: a hot pixel may be brighter, never larger.
        sizes = np.bincount(labels.ravel())[1:]
        above = labels == (1 + int(np.argmax(sizes)))
    level = float(np.median(image[above])) - background
    weight = np.where(above, image - background, 0.0)
    total = weight.sum()
    center = (float(weight.sum(axis=1) @ np.arange(image.shape[0]) / total),
              float(weight.sum(axis=0) @ np.arange(image.shape[1]) / total))
    # Sub-pixel area: pixels of the disk and its one-pixel rim (its four neighbours; ten
    # times faster than ndimage.binary_dilation here), by fraction of the level.
    rim = above.copy()
    rim[1:] |= above[:-1]
    rim[:-1] |= above[1:]
    rim[:, 1:] |= above[:, :-1]
    rim[:, :-1] |= above[:, 1:]
    fraction = np.clip((image - background) / level, 0.0, 1.0) if level > 0 else above
    area = float(np.sum(np.where(rim, fraction, 0.0)))
    return DiskGeometry(center=center, radius=math.sqrt(max(area, 1.0) / math.pi))


def pixel_distance(det_shape: tuple[int, int], center: tuple[float, float]) -> np.ndarray:
    """Distance of every pixel centre from ``center`` (row, col), in pixels."""
    rows = np.arange(det_shape[0], dtype=np.float64)[:, None] - center[0]
    cols = np.arange(det_shape[1], dtype=np.float64)[None, :] - center[1]
    return np.hypot(rows, cols)


def disk_mask(det_shape: tuple[int, int], center: tuple[float, float], radius: float) -> np.ndarray:
    """float32 ``(det_y, det_x)``: 1 where the pixel centre is within ``radius`` px."""
    return (pixel_distance(det_shape, center) <= radius).astype(np.float32)


def annulus_mask(det_shape: tuple[int, int], center: tuple[float, float], inner: float,
                 outer: float = math.inf) -> np.ndarray:
    """float32 ``(det_y, det_x)``: 1 where inner ≤ distance < outer (pixels)."""
    distance = pixel_distance(det_shape, center)
    return ((distance >= inner) & (distance < outer)).astype(np.float32)


@dataclass(frozen=True)
class VirtualDetector:
    """A detector shape, resolved to a mask against a data set's geometry.

    Attributes
    ----------
    kind
        ``"disk"`` (``outer`` is the radius), ``"annulus"`` (``inner`` ≤ r < ``outer``)
        or ``"mask"`` (explicit ``weights``).
    inner, outer
        Radii in ``unit``; ``None`` takes the default of the factory that made it
        (see :func:`bright_field`, :func:`annular_dark_field`); ``outer = inf`` reaches
        the detector corners.
    unit
        ``"px"``, ``"mrad"`` or ``"bf"`` (multiples of the bright-field disk radius).
    center
        ``(row, col)`` in pixels; ``None``: the detected bright-field disk centre.
    weights
        ``(det_y, det_x)`` weights for ``kind="mask"``.
    """

    kind: str
    inner: float | None = None
    outer: float | None = None
    unit: str = "px"
    center: tuple[float, float] | None = None
    weights: Any = None
    label: str = "detector"

    def __post_init__(self) -> None:
        if self.kind not in ("disk", "annulus", "mask"):
            raise ValueError(f"kind must be 'disk', 'annulus' or 'mask', got {self.kind!r}")
        if self.unit not in RADIUS_UNITS:
            raise ValueError(f"unit of {self.label} must be one of {RADIUS_UNITS}, got {self.unit!r}")
        for name in ("inner", "outer"):
            value = getattr(self, name)
            if value is not None and not (value >= 0 and not math.isnan(value)):
                raise ValueError(
                    f"{self.label}: {name} radius must be ≥ 0 {self.unit}, got {value!r}"
                )
        if (self.inner is not None and self.outer is not None and self.kind == "annulus"
                and not self.inner < self.outer):
            raise ValueError(
                f"{self.label}: inner radius ({self.inner} {self.unit}) must be smaller than "
                f"the outer radius ({self.outer} {self.unit})"
            )
        if self.kind == "mask" and self.weights is None:
            raise ValueError(f"{self.label}: kind='mask' needs weights")


def bright_field(radius: float | None = None, unit: str = "px",
                 center: tuple[float, float] | None = None) -> VirtualDetector:
    """Disk detector; ``radius=None``: the bright-field disk radius."""
    return VirtualDetector("disk", outer=radius, unit=unit, center=center, label="bright_field")


def annular_dark_field(inner: float | None = None, outer: float | None = None, unit: str = "px",
                       center: tuple[float, float] | None = None) -> VirtualDetector:
    """Annulus outside the bright-field disk.

    ``inner=None``: :data:`ADF_INNER_BF` × the disk radius (clear of its blurred edge);
    ``outer=None``: the detector corners (every pixel beyond ``inner``).
    """
    return VirtualDetector("annulus", inner=inner, outer=outer, unit=unit, center=center,
                           label="annular_dark_field")


def annulus(inner: float, outer: float = math.inf, unit: str = "px",
            center: tuple[float, float] | None = None) -> VirtualDetector:
    """Annulus inner ≤ r < outer (``unit``: px, mrad or bf)."""
    return VirtualDetector("annulus", inner=inner, outer=outer, unit=unit, center=center,
                           label="annulus")


def disk(radius: float, unit: str = "px", center: tuple[float, float] | None = None) -> VirtualDetector:
    """Disk r ≤ radius (``unit``: px, mrad or bf)."""
    return VirtualDetector("disk", outer=radius, unit=unit, center=center, label="disk")


def pixels_per_mrad(calibration: Calibration | None) -> float | None:
    """Detector pixels per mrad, or ``None`` when the detector has no angular calibration.

    ``1/Å`` calibrations are converted with the wavelength (θ = λ·q) when the beam
    energy is known.
    """
    if calibration is None or calibration.det_pixel_size is None:
        return None
    if calibration.det_unit == "mrad":
        return 1.0 / calibration.det_pixel_size
    if calibration.det_unit == "1/Å" and calibration.wavelength_angstrom is not None:
        return 1.0 / (calibration.det_pixel_size * calibration.wavelength_angstrom * 1e3)
    return None


def radius_to_pixels(value: float, unit: str, calibration: Calibration | None,
                     disk_radius: float | None, what: str = "radius") -> float:
    """A radius in ``unit`` converted to detector pixels."""
    if unit == "px" or math.isinf(value):
        return float(value)
    if unit == "mrad":
        scale = pixels_per_mrad(calibration)
        if scale is None:
            raise ValueError(
                f"{what} = {value} mrad needs an angular detector calibration "
                f"(Calibration.det_pixel_size in mrad, or 1/Å with energy_kev); this data set "
                f"has det_pixel_size={getattr(calibration, 'det_pixel_size', None)!r} "
                f"det_unit={getattr(calibration, 'det_unit', None)!r}. Give it in px instead."
            )
        return float(value) * scale
    if unit == "bf":
        if disk_radius is None:
            raise ValueError(f"{what} = {value} bf needs the bright-field disk radius")
        return float(value) * disk_radius
    raise ValueError(f"unit must be one of {RADIUS_UNITS}, got {unit!r}")


def detector_geometry(data: Any, center: tuple[float, float] | None = None,
                      radius: float | None = None, threshold: float = 0.5) -> DiskGeometry:
    """Bright-field disk of a data set (pixels), from a sample of its patterns.

    ``center`` / ``radius`` given here override the detected values. Reads at most ~256
    patterns from a few scan rows (see :func:`.engine.sample_mean_pattern`).
    """
    if center is not None and radius is not None:
        return DiskGeometry((float(center[0]), float(center[1])), float(radius))
    found = find_disk(sample_mean_pattern(as_array(data)), threshold=threshold)
    return DiskGeometry(
        found.center if center is None else (float(center[0]), float(center[1])),
        found.radius if radius is None else float(radius),
    )


def detector_mask(detector: VirtualDetector | Any, det_shape: tuple[int, int],
                  geometry: DiskGeometry, calibration: Calibration | None = None,
                  name: str = "detector") -> np.ndarray:
    """The float ``(det_y, det_x)`` weights of one detector, checked to hold pixels.

    Raises ``ValueError`` (naming ``name``, the radii and the detector's extent) when the
    detector would contain no pixel, e.g. an annulus outside the detector.
    """
    if not isinstance(detector, VirtualDetector):
        weights = np.asarray(detector, dtype=np.float64)
        if weights.shape != tuple(det_shape):
            raise ValueError(
                f"{name} has shape {weights.shape}, expected the detector shape {tuple(det_shape)}"
            )
        if not np.all(np.isfinite(weights)):
            raise ValueError(f"{name} contains NaN or Inf weights")
        if not np.any(weights != 0):
            raise ValueError(
                f"{name} excludes every detector pixel (all weights are 0); "
                f"expected at least one non-zero pixel"
            )
        return weights
    if detector.kind == "mask":
        return detector_mask(detector.weights, det_shape, geometry, calibration, name)
    center = geometry.center if detector.center is None else tuple(float(c) for c in detector.center)
    distance = pixel_distance(det_shape, center)
    farthest = float(distance.max())

    def px(value: float, what: str) -> float:
        return radius_to_pixels(value, detector.unit, calibration, geometry.radius, f"{name}: {what}")

    if detector.kind == "disk":
        radius = geometry.radius if detector.outer is None else px(detector.outer, "radius")
        weights = (distance <= radius).astype(np.float64)
        described = f"disk of radius {radius:.3g} px"
    else:
        inner = ADF_INNER_BF * geometry.radius if detector.inner is None else px(detector.inner, "inner radius")
        outer = math.inf if detector.outer is None else px(detector.outer, "outer radius")
        if not inner < outer:
            raise ValueError(
                f"{name}: inner radius {inner:.4g} px must be smaller than the outer radius "
                f"{outer:.4g} px"
            )
        if inner > farthest:
            given = (f"the default {ADF_INNER_BF:g} bf" if detector.inner is None else
                     "" if detector.unit == "px" else f"{detector.inner:g} {detector.unit}")
            raise ValueError(
                f"{name}: annulus inner radius {inner:.4g} px{f' ({given})' if given else ''} "
                f"lies outside the detector: its farthest pixel is {farthest:.4g} px from the "
                f"centre ({center[0]:.4g}, {center[1]:.4g}); expected inner < {farthest:.4g} px"
            )
        weights = ((distance >= inner) & (distance < outer)).astype(np.float64)
        described = f"annulus {inner:.4g}–{outer:.4g} px"
    if not weights.any():
        raise ValueError(
            f"{name}: the {described} about ({center[0]:.4g}, {center[1]:.4g}) contains no "
            f"detector pixel (detector {det_shape[0]}×{det_shape[1]}); expected a detector "
            f"that overlaps the pixels"
        )
    return weights


def calibrated_disk(calibration: Calibration | None, det_shape: tuple[int, int]) -> DiskGeometry | None:
    """The bright-field disk from the calibration alone (no data read): centre ``det_origin``
    (else the detector centre) and radius semi-angle / pixel size; ``None`` when the detector
    has no angular calibration or the semi-angle is unknown."""
    scale = pixels_per_mrad(calibration)
    if scale is None or calibration is None or not calibration.semiangle_mrad:
        return None
    ky, kx = det_shape
    center = calibration.det_origin if calibration.det_origin is not None else ((ky - 1) / 2, (kx - 1) / 2)
    return DiskGeometry((float(center[0]), float(center[1])), float(calibration.semiangle_mrad * scale))


def default_image_detector(calibration: Calibration | None,
                           det_shape: tuple[int, int]) -> tuple[str, np.ndarray]:
    """The detector of the default real-space image, from the calibration alone: the annular
    dark field beyond :data:`ADF_INNER_BF` × the bright-field radius (to the detector edge)
    when the disk is known from the calibration and the annulus holds ≥ 2 % of the pixels,
    else the total intensity. Returns ``(name, float32 (det_y, det_x) mask)`` with ``name``
    ``"adf"`` or ``"sum"`` (keys of :data:`napari_4dstem_rvae.schema.MAPS`)."""
    geometry = calibrated_disk(calibration, det_shape)
    if geometry is not None:
        mask = annulus_mask(tuple(det_shape), geometry.center, ADF_INNER_BF * geometry.radius)
        if mask.sum() >= 0.02 * mask.size:
            return "adf", mask
    return "sum", np.ones(tuple(det_shape), np.float32)


def default_detectors() -> dict[str, VirtualDetector]:
    """``{"bf": bright_field(), "adf": annular_dark_field()}``."""
    return {"bf": bright_field(), "adf": annular_dark_field()}


def build_mask_stack(detectors: Mapping[str, Any] | Sequence[VirtualDetector],
                     det_shape: tuple[int, int], geometry: DiskGeometry,
                     calibration: Calibration | None = None) -> MaskStack:
    """Resolve named detectors (or raw ``(det_y, det_x)`` masks) into a :class:`MaskStack`."""
    if not isinstance(detectors, Mapping):
        detectors = {d.label if isinstance(d, VirtualDetector) else f"mask{i}": d
                     for i, d in enumerate(detectors)}
    if not detectors:
        raise ValueError("detectors is empty: expected at least one virtual detector")
    masks = {str(name): detector_mask(det, tuple(det_shape), geometry, calibration,
                                      f"detector {str(name)!r}")
             for name, det in detectors.items()}
    return MaskStack.from_dict(masks)


def virtual_images(
    dataset: Any,
    detectors: Mapping[str, Any] | Sequence[VirtualDetector] | None = None,
    *,
    center: tuple[float, float] | None = None,
    disk_radius: float | None = None,
    client: Any = None,
    n_threads: int | None = None,
) -> dict[str, np.ndarray]:
    """Virtual detector images, all in one pass over the data.

    Parameters
    ----------
    dataset
        :class:`~napari_4dstem_rvae.dataset.Dataset4D` or 4D array
        ``(scan_y, scan_x, det_y, det_x)`` (numpy or dask). Never modified.
    detectors
        ``{name: VirtualDetector or (det_y, det_x) weights}``; default
        ``{"bf": bright_field(), "adf": annular_dark_field()}``.
    center, disk_radius
        Bright-field disk centre ``(row, col)`` and radius in pixels; detected from a
        sample of patterns when ``None``. Detectors without their own centre are
        centred here.
    client
        ``dask.distributed`` client or scheduler address (see :func:`.engine.reduce_masks`).

    Returns
    -------
    ``{name: (scan_y, scan_x) float64}``: the summed intensity inside each detector.
    """
    data = as_array(dataset)
    calibration = getattr(dataset, "calibration", None)
    geometry = detector_geometry(data, center, disk_radius)
    stack = build_mask_stack(default_detectors() if detectors is None else detectors,
                             tuple(int(s) for s in data.shape[2:]), geometry, calibration)
    return reduce_masks(data, stack, client=client, n_threads=n_threads, nonfinite="nan")
