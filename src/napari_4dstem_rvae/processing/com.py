"""Centre of mass (COM) / differential phase contrast (DPC).

Conventions (read these before comparing with another program)
----------------------------------------------------------------
- **Detector frame.** A pattern's centre of mass ``(row, col)`` in detector pixels, minus
  an origin (``Calibration.det_origin``, or the detected bright-field disk centre), is the
  raw shift ``(detector_y, detector_x)``: +y = towards higher detector rows, +x = towards
  higher detector columns.
- **Reference correction** (descan, beam tilt) is subtracted in the detector frame:
  the scan mean, a plane ``a + b·scan_row + c·scan_col`` fitted over the scan, or a vacuum
  reference measured by the user.
- **Scan frame.** The corrected shift ``d = (dx, dy)`` is mapped to the scan frame by
  ``v = R(θ) · F · d`` where ``F = diag(1, −1)`` when ``flip`` is true (the detector's
  row component is negated first) and ``R(θ)`` is the rotation
  ``vx = cosθ·dx − sinθ·dy``, ``vy = sinθ·dx + cosθ·dy`` in the (x = column, y = row)
  frame. With rows drawn downwards (napari, matplotlib ``imshow``), a positive θ turns
  vectors clockwise on screen. ``x``/``y`` of :class:`COMResult` are ``vx``/``vy``.
- **Calibration of θ.** For a deflection field that is the gradient of a potential the
  curl vanishes. Rotating a field by θ gives ``curl′ = cosθ·curl + sinθ·div`` and
  ``div′ = cosθ·div − sinθ·curl`` (exactly, also for finite differences, since both are
  linear), so Σ curl′² = (c, s)·M·(c, s)ᵀ with M = [[Σcurl², Σcurl·div], [Σcurl·div, Σdiv²]].
  Its minimiser is the eigenvector of M with the smaller eigenvalue: exact, no angle grid.
  Both flips are tried; the one with the smaller residual curl fraction
  λ_min / trace(M) wins. (The sums use fourth-order differences, which reduce the
  small bias that sampling puts on θ; the returned maps use second-order ones.)
- **180° ambiguity and sign.** θ and θ + 180° give the same curl. For a positive
  (attractive) projected potential the beam is deflected *towards* the atoms, so the COM
  field points towards atom columns and its divergence is *negative* at atom columns —
  where the annular dark-field (ADF) signal is high. We pick the θ for which
  ``corr(div′, ADF) < 0`` (ADF computed in the same pass), or the image you pass as
  ``sign_from``; without one, the θ whose divergence has negative skewness (sharp negative
  minima at atoms, shallow positive rings around them). Pass ``rotation`` (degrees) and
  ``flip`` to override.
- **angle** = ``atan2(y, x)`` in radians, from +scan x towards +scan y; **magnitude**
  = √(x² + y²); both in the scan frame.
- **divergence**, **curl** = ∂x vx + ∂y vy, ∂x vy − ∂y vx with central differences
  (one-sided at the edges) over the scan, in detector px per ``scan_unit`` (per probe step
  when the scan is not calibrated). Along a scan axis with a single probe position the
  derivative is taken as 0 (a single row gives ``div = ∂x vx``, ``curl = ∂x vy``).
- Patterns whose summed intensity inside the mask is ≤ 0 carry no information: their
  shift is 0 (never NaN) and they are left out of reference fits and of the rotation
  calibration (``COMResult.valid``).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..dataset import Calibration
from .engine import MaskStack, as_array, reduce_masks
from .virtual import (
    DiskGeometry,
    VirtualDetector,
    annular_dark_field,
    annulus,
    build_mask_stack,
    detector_geometry,
    detector_mask,
    disk,
    pixels_per_mrad,
)

_MOMENTS = ("com_total", "com_y", "com_x")


# -- vector-field helpers ------------------------------------------------------------------
def _derivative(values: np.ndarray, axis: int, spacing: float, order: int = 2) -> np.ndarray:
    """d/d(axis): central differences (one-sided at the edges); with ``order=4`` the
    fourth-order stencil (−f₊₂ + 8f₊₁ − 8f₋₁ + f₋₂)/12h where five samples are available."""
    if values.shape[axis] < 2:
        return np.zeros_like(values, dtype=np.float64)
    out = np.gradient(values.astype(np.float64, copy=False), spacing, axis=axis)
    if order == 4 and values.shape[axis] >= 5:
        f = np.moveaxis(values.astype(np.float64, copy=False), axis, 0)
        inner = np.moveaxis(out, axis, 0)  # a view: writes go to ``out``
        inner[2:-2] = (-f[4:] + 8 * f[3:-1] - 8 * f[1:-3] + f[:-4]) / (12 * spacing)
    return out


def _div_curl(fy: np.ndarray, fx: np.ndarray, spacing: tuple[float, float],
              order: int = 2) -> tuple[np.ndarray, np.ndarray]:
    sy, sx = float(spacing[0]), float(spacing[1])
    div = _derivative(fx, 1, sx, order) + _derivative(fy, 0, sy, order)
    curl = _derivative(fy, 1, sx, order) - _derivative(fx, 0, sy, order)
    return div, curl


def divergence_curl(field_y: Any, field_x: Any,
                    spacing: tuple[float, float] = (1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Divergence and curl of a 2D vector field sampled on the scan.

    Parameters
    ----------
    field_y, field_x
        ``(scan_y, scan_x)`` components along the scan's y (rows) and x (columns).
    spacing
        ``(step_y, step_x)`` between probe positions.

    Returns
    -------
    ``(div, curl)``: ``∂x fx + ∂y fy`` and ``∂x fy − ∂y fx``, in field units per spacing
    unit. Central differences inside, one-sided at the edges; the derivative along an
    axis with a single sample is 0.
    """
    fy = np.asarray(field_y, dtype=np.float64)
    fx = np.asarray(field_x, dtype=np.float64)
    if fy.shape != fx.shape or fy.ndim != 2:
        raise ValueError(
            f"field_y and field_x must be 2D (scan_y, scan_x) arrays of one shape, got "
            f"{fy.shape} and {fx.shape}"
        )
    return _div_curl(fy, fx, spacing)


def rotate_field(field_y: Any, field_x: Any, rotation_deg: float,
                 flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Detector-frame shifts → scan frame: ``v = R(θ)·F·d`` (see the module conventions).

    Returns ``(vy, vx)``.
    """
    dy = np.asarray(field_y, dtype=np.float64)
    dx = np.asarray(field_x, dtype=np.float64)
    if flip:
        dy = -dy
    theta = math.radians(float(rotation_deg))
    c, s = math.cos(theta), math.sin(theta)
    return s * dx + c * dy, c * dx - s * dy


@dataclass(frozen=True)
class RotationCalibration:
    """Result of :func:`calibrate_rotation`.

    Attributes
    ----------
    rotation_deg
        θ in degrees, in (−180, 180].
    flip
        Whether the detector row component is negated before rotating.
    residual
        Fraction of the field's derivative power left in the curl after the rotation,
        λ_min / trace(M), in [0, 1] (0 for a perfect gradient field); NaN when undetermined.
    residual_other_flip
        The same for the other flip (compare with ``residual`` to judge the choice).
    polarity_from
        What settled the 180° ambiguity: ``"image"`` (ADF or the given image),
        ``"skewness"``, or ``"none"``.
    """

    rotation_deg: float
    flip: bool
    residual: float
    residual_other_flip: float
    polarity_from: str


def _eigen_rotation(dy: np.ndarray, dx: np.ndarray, spacing: tuple[float, float],
                    weights: np.ndarray) -> tuple[float, float]:
    """(θ mod 180° in radians, residual fraction) minimising Σ w·curl′².

    Fourth-order differences: the discretisation error of the curl of a sampled gradient
    correlates with its divergence and biases θ; the higher order cuts that bias ~5×."""
    div, curl = _div_curl(dy, dx, spacing, order=4)
    m = np.array([[np.sum(weights * curl * curl), np.sum(weights * curl * div)],
                  [np.sum(weights * curl * div), np.sum(weights * div * div)]])
    trace = float(np.trace(m))
    if not trace > 0:
        return 0.0, math.nan
    values, vectors = np.linalg.eigh(m)
    c, s = vectors[:, 0]
    return math.atan2(s, c), max(0.0, float(values[0])) / trace


def _skewness(values: np.ndarray) -> float:
    centred = values - values.mean()
    spread = np.sqrt(np.mean(centred**2))
    return float(np.mean(centred**3) / spread**3) if spread > 0 else 0.0


def calibrate_rotation(
    field_y: Any,
    field_x: Any,
    *,
    spacing: tuple[float, float] = (1.0, 1.0),
    flip: bool | str = "auto",
    sign_from: Any = None,
    valid: Any = None,
) -> RotationCalibration:
    """Scan-to-detector rotation (and flip) that makes the COM field curl-free.

    Parameters
    ----------
    field_y, field_x
        Detector-frame COM shifts ``(scan_y, scan_x)`` after reference correction.
    spacing
        ``(step_y, step_x)`` of the scan (only the ratio matters).
    flip
        ``"auto"`` (the flip with the smaller residual curl), ``True`` or ``False``.
    sign_from
        ``(scan_y, scan_x)`` image bright at atom columns (ADF) used to pick between θ
        and θ + 180°: the divergence of the rotated field must anti-correlate with it.
        ``None``: the divergence must have negative skewness.
    valid
        Boolean ``(scan_y, scan_x)``: positions to use (others, and their neighbours,
        are ignored).

    Returns
    -------
    :class:`RotationCalibration`. A field without any spatial variation (e.g. a single
    probe position) leaves θ undetermined: θ = 0 with a warning and NaN residuals.
    """
    dy = np.asarray(field_y, dtype=np.float64)
    dx = np.asarray(field_x, dtype=np.float64)
    if dy.shape != dx.shape or dy.ndim != 2:
        raise ValueError(
            f"field_y and field_x must be 2D (scan_y, scan_x) of one shape, got {dy.shape}, {dx.shape}"
        )
    if flip not in ("auto", True, False):
        raise ValueError(f"flip must be 'auto', True or False, got {flip!r}")
    if not (np.all(np.isfinite(dy)) and np.all(np.isfinite(dx))):
        raise ValueError("field_y/field_x contain NaN or Inf; expected finite COM shifts")
    weights = np.ones(dy.shape)
    if valid is not None:
        from scipy import ndimage

        good = np.asarray(valid, dtype=bool)
        # Derivatives next to an invalid position use its (meaningless) zero shift.
        weights = ndimage.binary_erosion(good, np.ones((3, 3)), border_value=1).astype(float)
    candidates = [False, True] if flip == "auto" else [bool(flip)]
    fits = {f: _eigen_rotation(-dy if f else dy, dx, spacing, weights) for f in (False, True)}
    if all(math.isnan(fits[f][1]) for f in candidates):
        warnings.warn(
            "the COM field has no spatial variation (uniform field or a single probe "
            "position): the scan rotation cannot be calibrated; using 0°",
            stacklevel=2,
        )
        chosen = bool(candidates[0])
        return RotationCalibration(0.0, chosen, math.nan, math.nan, "none")
    chosen = min(candidates, key=lambda f: (math.inf if math.isnan(fits[f][1]) else fits[f][1]))
    theta, residual = fits[chosen]
    other = fits[not chosen][1]

    vy, vx = rotate_field(dy, dx, math.degrees(theta), chosen)
    div, _ = divergence_curl(vy, vx, spacing)
    use = weights > 0
    polarity_from = "none"
    if use.sum() >= 2:
        if sign_from is not None:
            image = np.asarray(sign_from, dtype=np.float64)
            if image.shape != dy.shape:
                raise ValueError(
                    f"sign_from image has shape {image.shape}, expected the scan shape {dy.shape}"
                )
            a = div[use] - div[use].mean()
            b = image[use] - image[use].mean()
            score = float(np.sum(a * b))
            if score != 0:
                polarity_from = "image"
                if score > 0:
                    theta += math.pi
        if polarity_from == "none":
            skew = _skewness(div[use])
            if skew != 0:
                polarity_from = "skewness"
                if skew > 0:
                    theta += math.pi
    degrees = math.degrees(theta)
    degrees = (degrees + 180.0) % 360.0 - 180.0
    if degrees <= -180.0:
        degrees += 360.0
    return RotationCalibration(degrees, chosen, residual, other, polarity_from)


# -- result ------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class COMResult:
    """Centre-of-mass maps over the scan. All maps are float64 ``(scan_y, scan_x)``.

    Attributes
    ----------
    y, x
        COM shift along the scan's y (rows) and x (columns), in detector pixels, after
        reference correction, flip and rotation (module docstring). ``x_mrad``/``y_mrad``
        give them in mrad when the detector is calibrated.
    divergence, curl
        Of (x, y) over the scan, in detector px per ``scan_unit`` (per probe step when the
        scan is uncalibrated).
    intensity
        Summed intensity inside the COM mask (data units).
    valid
        True where ``intensity > 0``; elsewhere the shift is 0.
    detector_y, detector_x
        Raw shift in the detector frame, relative to ``origin``, before reference
        correction (pixels).
    origin
        ``(row, col)`` on the detector from which the raw shift is measured.
    reference_y, reference_x
        The reference subtracted (detector frame, px; constant maps for "mean").
    rotation_deg, flip
        The scan-to-detector transformation used.
    rotation
        :class:`RotationCalibration` when the rotation was calibrated, else ``None``.
    reference
        How the reference was obtained: ``"none"``, ``"mean"``, ``"plane"`` or ``"vacuum"``.
    mask
        Description of the COM mask.
    calibration
        The data set's :class:`~napari_4dstem_rvae.dataset.Calibration` (or ``None``).
    virtual
        Virtual detector images computed in the same pass (e.g. ``"adf"``).
    """

    y: np.ndarray
    x: np.ndarray
    divergence: np.ndarray
    curl: np.ndarray
    intensity: np.ndarray
    valid: np.ndarray
    detector_y: np.ndarray
    detector_x: np.ndarray
    origin: tuple[float, float]
    reference_y: np.ndarray
    reference_x: np.ndarray
    rotation_deg: float
    flip: bool
    rotation: RotationCalibration | None = None
    reference: str = "none"
    mask: str = "whole detector"
    calibration: Calibration | None = None
    virtual: dict[str, np.ndarray] = field(default_factory=dict)

    unit = "px"

    @property
    def magnitude(self) -> np.ndarray:
        """√(x² + y²), detector pixels."""
        return np.hypot(self.x, self.y)

    @property
    def angle(self) -> np.ndarray:
        """atan2(y, x), radians in (−π, π], from +scan x towards +scan y."""
        return np.arctan2(self.y, self.x)

    @property
    def pixels_per_mrad(self) -> float | None:
        return pixels_per_mrad(self.calibration)

    def _mrad(self, values: np.ndarray) -> np.ndarray | None:
        scale = self.pixels_per_mrad
        return None if scale is None else values / scale

    @property
    def x_mrad(self) -> np.ndarray | None:
        """``x`` in mrad, or ``None`` when the detector has no angular calibration."""
        return self._mrad(self.x)

    @property
    def y_mrad(self) -> np.ndarray | None:
        """``y`` in mrad, or ``None`` when the detector has no angular calibration."""
        return self._mrad(self.y)

    @property
    def magnitude_mrad(self) -> np.ndarray | None:
        return self._mrad(self.magnitude)

    @property
    def scan_shape(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.x.shape)  # type: ignore[return-value]

    def maps(self) -> dict[str, np.ndarray]:
        """Every map by name (``com_x``, ``com_y``, ``com_magnitude``, ``com_angle``,
        ``com_divergence``, ``com_curl``, ``com_intensity``, the mrad versions when
        calibrated, then the virtual images)."""
        out = {
            "com_x": self.x, "com_y": self.y, "com_magnitude": self.magnitude,
            "com_angle": self.angle, "com_divergence": self.divergence,
            "com_curl": self.curl, "com_intensity": self.intensity,
        }
        if self.pixels_per_mrad is not None:
            out.update(com_x_mrad=self.x_mrad, com_y_mrad=self.y_mrad,
                       com_magnitude_mrad=self.magnitude_mrad)
        out.update({f"virtual_{k}": v for k, v in self.virtual.items()})
        return out


# -- COM -------------------------------------------------------------------------------
def com_masks(base: np.ndarray, origin: tuple[float, float]) -> MaskStack:
    """The three COM moments of a base mask: Σ M·I, Σ M·(row − oy)·I, Σ M·(col − ox)·I.

    Coordinates are taken relative to ``origin`` so that float32 sums keep their
    precision (no cancellation of large offsets).
    """
    base = np.asarray(base, dtype=np.float64)
    rows = np.arange(base.shape[0], dtype=np.float64)[:, None] - origin[0]
    cols = np.arange(base.shape[1], dtype=np.float64)[None, :] - origin[1]
    return MaskStack(_MOMENTS, np.stack([base, base * rows, base * cols]))


def _plane_fit(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Least-squares plane a + b·row + c·col through the valid values, on the whole grid."""
    rows, cols = np.indices(values.shape, dtype=np.float64)
    design = np.column_stack([np.ones(valid.sum()), rows[valid], cols[valid]])
    coef, *_ = np.linalg.lstsq(design, values[valid], rcond=None)
    return coef[0] + coef[1] * rows + coef[2] * cols


def _com_mask(mask: Any, det_shape: tuple[int, int], geometry: DiskGeometry,
              calibration: Calibration | None, radius: float | None, inner: float | None,
              outer: float | None, unit: str) -> tuple[np.ndarray, str]:
    if isinstance(mask, str):
        if mask == "whole":
            return np.ones(det_shape), "whole detector"
        if mask == "disk":
            detector = disk(radius, unit) if radius is not None else disk(1.2, "bf")
            desc = (f"disk r={radius} {unit}" if radius is not None
                    else f"disk r=1.2×bf ({1.2 * geometry.radius:.3g} px)")
            return detector_mask(detector, det_shape, geometry, calibration, "mask='disk'"), desc
        if mask == "annulus":
            detector = (annular_dark_field(None, outer, unit) if inner is None
                        else annulus(inner, math.inf if outer is None else outer, unit))
            return (detector_mask(detector, det_shape, geometry, calibration, "mask='annulus'"),
                    f"annulus {inner}–{outer} {unit}")
        raise ValueError(
            f"mask must be 'whole', 'disk', 'annulus', a VirtualDetector or a (det_y, det_x) "
            f"array, got {mask!r}"
        )
    return detector_mask(mask, det_shape, geometry, calibration, "mask"), (
        "custom detector" if isinstance(mask, VirtualDetector) else "custom mask")


def compute_com(
    dataset: Any,
    *,
    mask: Any = "whole",
    radius: float | None = None,
    inner: float | None = None,
    outer: float | None = None,
    unit: str = "px",
    threshold: float | None = None,
    center: tuple[float, float] | None = None,
    reference: Any = "mean",
    rotation: float | str = "auto",
    flip: bool | str = "auto",
    sign_from: Any = "adf",
    detectors: dict[str, Any] | None = None,
    client: Any = None,
    n_threads: int | None = None,
    precision: str = "auto",
) -> COMResult:
    """Centre of mass of every pattern, corrected and rotated into the scan frame.

    One pass over the data computes the COM moments, the ADF image used for the sign
    (when needed) and any extra ``detectors``. Works on numpy, lazy dask (larger than
    memory) and, with ``client``, on a dask.distributed cluster. The input is not modified.

    Parameters
    ----------
    dataset
        :class:`~napari_4dstem_rvae.dataset.Dataset4D` or 4D array
        ``(scan_y, scan_x, det_y, det_x)``.
    mask
        Pixels that count: ``"whole"`` (every pixel, default), ``"disk"`` (radius
        ``radius`` in ``unit``; default 1.2 × the bright-field disk radius),
        ``"annulus"`` (``inner``–``outer`` in ``unit``; default from 1.25 × the disk radius
        to the corners), a :class:`~.virtual.VirtualDetector`, or a ``(det_y, det_x)``
        array of weights.
    radius, inner, outer, unit
        Mask radii and their unit: ``"px"``, ``"mrad"`` (needs an angular calibration)
        or ``"bf"`` (multiples of the bright-field disk radius).
    threshold
        Optional fraction in [0, 1): in each pattern, pixels below
        ``threshold × its maximum`` are ignored (thresholded COM).
    center
        Detector ``(row, col)`` of zero shift and the centre of the masks; default
        ``Calibration.det_origin`` for the shift and the detected bright-field disk
        centre for the masks.
    reference
        ``"mean"`` (subtract the mean shift, default), ``"plane"`` (subtract a plane fitted
        over the scan: removes linear descan), ``None``, or a vacuum reference: a
        :class:`COMResult`, a ``Dataset4D``/4D array of vacuum patterns (its COM with the
        same mask is used), or beam positions ``(row, col)`` in detector pixels — shape
        ``(2,)`` or ``(2, scan_y, scan_x)``. A vacuum map of another scan shape is
        replaced by its mean.
    rotation
        ``"auto"`` (curl minimisation, see the module docstring) or θ in degrees.
    flip
        ``"auto"`` (with ``rotation="auto"``: the smaller residual curl), ``True`` or
        ``False``; with a numeric ``rotation``, ``"auto"`` means ``False``.
    sign_from
        How to settle θ vs θ + 180° when ``rotation="auto"``: ``"adf"`` (a virtual ADF
        image from the same pass; falls back to the divergence skewness when the detector
        has no dark-field pixels), a ``(scan_y, scan_x)`` image bright at atoms, or
        ``None`` (skewness).
    detectors
        Extra virtual detectors ``{name: VirtualDetector or weights}`` reduced in the same
        pass; returned in ``COMResult.virtual``.
    client, n_threads, precision
        See :func:`.engine.reduce_masks`.

    Returns
    -------
    :class:`COMResult`.
    """
    data = as_array(dataset)
    calibration = getattr(dataset, "calibration", None)
    shape = tuple(int(s) for s in data.shape)
    if len(shape) != 4:
        raise ValueError(f"data must have 4 axes (scan_y, scan_x, det_y, det_x), got shape {shape}")
    det_shape = shape[2:]
    if rotation != "auto":
        try:
            rotation = float(rotation)
        except (TypeError, ValueError):
            raise ValueError(f"rotation must be 'auto' or an angle in degrees, got {rotation!r}") from None
        if not math.isfinite(rotation):
            raise ValueError(f"rotation must be a finite angle in degrees, got {rotation!r}")
    if flip not in ("auto", True, False):
        raise ValueError(f"flip must be 'auto', True or False, got {flip!r}")
    if reference is not None and isinstance(reference, str) and reference not in ("mean", "plane"):
        raise ValueError(
            f"reference must be 'mean', 'plane', None or a vacuum reference, got {reference!r}"
        )

    if center is not None:
        values = np.asarray(center, dtype=np.float64).ravel()
        if values.shape != (2,) or not np.all(np.isfinite(values)):
            raise ValueError(f"center must be a finite (row, col) in detector pixels, got {center!r}")
        center = (float(values[0]), float(values[1]))
    # The disk is found from a sample of patterns only when something is placed relative to it.
    needs_geometry = (center is None or not (isinstance(mask, np.ndarray) or mask == "whole")
                      or bool(detectors) or (rotation == "auto" and isinstance(sign_from, str)))
    geometry = detector_geometry(data, center) if needs_geometry else DiskGeometry(center, 1.0)
    if center is not None:
        origin = center
    elif calibration is not None and calibration.det_origin is not None:
        origin = tuple(float(c) for c in calibration.det_origin)
    else:
        origin = geometry.center

    base, mask_description = _com_mask(mask, det_shape, geometry, calibration, radius, inner,
                                       outer, unit)
    stack = com_masks(base, origin)
    extra = dict(detectors or {})
    want_adf = rotation == "auto" and isinstance(sign_from, str)
    if want_adf:
        if sign_from != "adf":
            raise ValueError(f"sign_from must be 'adf', an image or None, got {sign_from!r}")
        if "adf" not in extra:
            try:
                detector_mask(annular_dark_field(), det_shape, geometry, calibration, "adf")
                extra["adf"] = annular_dark_field()
            except ValueError:
                want_adf = False  # no dark-field pixels: fall back to skewness
    if extra:
        stack = stack + build_mask_stack(extra, det_shape, geometry, calibration)

    sums = reduce_masks(data, stack, threshold=threshold, client=client, n_threads=n_threads,
                        precision=precision)
    total = sums["com_total"]
    valid = total > 0
    if not valid.any():
        raise ValueError(
            f"no pattern has a positive intensity inside the COM mask ({mask_description}); "
            f"expected non-negative counts with some signal in the mask"
        )
    safe = np.where(valid, total, 1.0)
    det_y = np.where(valid, sums["com_y"] / safe, 0.0)
    det_x = np.where(valid, sums["com_x"] / safe, 0.0)

    ref_y, ref_x, reference_kind = _reference(reference, det_y, det_x, valid, origin, dict(
        mask=mask, radius=radius, inner=inner, outer=outer, unit=unit, threshold=threshold,
        center=center, client=client, n_threads=n_threads, precision=precision))
    corr_y = np.where(valid, det_y - ref_y, 0.0)
    corr_x = np.where(valid, det_x - ref_x, 0.0)

    spacing = calibration.scan_step_yx if calibration is not None else (1.0, 1.0)
    calibrated = None
    if rotation == "auto":
        image = sums.get("adf") if want_adf else (None if isinstance(sign_from, str) or sign_from is None
                                                  else sign_from)
        calibrated = calibrate_rotation(corr_y, corr_x, spacing=spacing, flip=flip,
                                        sign_from=image, valid=valid)
        rotation_deg, use_flip = calibrated.rotation_deg, calibrated.flip
    else:
        rotation_deg, use_flip = float(rotation), bool(flip) if flip != "auto" else False
    vy, vx = rotate_field(corr_y, corr_x, rotation_deg, use_flip)
    div, curl = divergence_curl(vy, vx, spacing)
    virtual = {k: v for k, v in sums.items() if k not in _MOMENTS and k in extra}
    return COMResult(
        y=vy, x=vx, divergence=div, curl=curl, intensity=total, valid=valid,
        detector_y=det_y, detector_x=det_x, origin=origin,
        reference_y=np.broadcast_to(ref_y, det_y.shape).copy(),
        reference_x=np.broadcast_to(ref_x, det_x.shape).copy(),
        rotation_deg=rotation_deg, flip=use_flip, rotation=calibrated,
        reference=reference_kind, mask=mask_description, calibration=calibration,
        virtual=virtual,
    )


def _reference(reference: Any, det_y: np.ndarray, det_x: np.ndarray, valid: np.ndarray,
               origin: tuple[float, float], options: dict[str, Any]):
    """(ref_y, ref_x, kind) in detector pixels relative to ``origin``."""
    if reference is None:
        return 0.0, 0.0, "none"
    if isinstance(reference, str):
        if reference == "mean":
            return float(det_y[valid].mean()), float(det_x[valid].mean()), "mean"
        return _plane_fit(det_y, valid), _plane_fit(det_x, valid), "plane"
    if isinstance(reference, COMResult):
        pos_y = reference.detector_y + reference.origin[0] - origin[0]
        pos_x = reference.detector_x + reference.origin[1] - origin[1]
        ok = reference.valid
    elif hasattr(reference, "calibration") or np.ndim(reference) == 4 or hasattr(reference, "chunks"):
        vacuum = compute_com(reference, reference=None, rotation=0.0, flip=False, sign_from=None,
                             **options)
        pos_y = vacuum.detector_y + vacuum.origin[0] - origin[0]
        pos_x = vacuum.detector_x + vacuum.origin[1] - origin[1]
        ok = vacuum.valid
    else:
        positions = np.asarray(reference, dtype=np.float64)
        if positions.shape == (2,):
            return float(positions[0] - origin[0]), float(positions[1] - origin[1]), "vacuum"
        if positions.ndim != 3 or positions.shape[0] != 2:
            raise ValueError(
                f"reference beam positions must have shape (2,) or (2, scan_y, scan_x) as "
                f"(row, col) in detector pixels, got shape {positions.shape}"
            )
        if not np.all(np.isfinite(positions)):
            raise ValueError("reference beam positions contain NaN or Inf")
        pos_y, pos_x = positions[0] - origin[0], positions[1] - origin[1]
        ok = np.ones(pos_y.shape, dtype=bool)
    if pos_y.shape == det_y.shape:
        return pos_y, pos_x, "vacuum"
    return float(pos_y[ok].mean()), float(pos_x[ok].mean()), "vacuum"


# -- writing --------------------------------------------------------------------------
def write_com_results(com: COMResult, path_h5: str | os.PathLike, png_path: str | os.PathLike | None = None,
                      calibration: Calibration | None = None) -> dict[str, str]:
    """Write the COM maps to HDF5 and, optionally, a PNG overview figure.

    HDF5 layout: group ``/com`` with one dataset per map of :meth:`COMResult.maps`
    (``com_x``, ``com_y``, ``com_magnitude``, ``com_angle``, ...), each ``(scan_y, scan_x)``
    float64 with attributes ``unit`` and ``axes``; the group's attributes hold the
    rotation, flip, residual, reference, mask, origin and the calibration (JSON).
    Virtual images go to ``/virtual/<name>``. An existing file is overwritten.

    Parameters
    ----------
    com
        The result of :func:`compute_com`.
    path_h5
        Output ``.h5`` file.
    png_path
        Optional PNG: x, y, magnitude, angle, divergence, curl (matplotlib, Agg backend).
    calibration
        Overrides ``com.calibration`` (scan axes and mrad conversion).

    Returns
    -------
    ``{"h5": path, "png": path}`` (``png`` only when written).
    """
    import json

    import h5py

    if calibration is not None:
        com = _with_calibration(com, calibration)
    cal = com.calibration
    scan_unit = (cal.scan_unit if cal is not None and cal.scan_step is not None and cal.scan_unit
                 else "probe step")
    units = {"com_x": "px", "com_y": "px", "com_magnitude": "px", "com_angle": "rad",
             "com_divergence": f"px/{scan_unit}", "com_curl": f"px/{scan_unit}",
             "com_intensity": "counts", "com_x_mrad": "mrad", "com_y_mrad": "mrad",
             "com_magnitude_mrad": "mrad"}
    path_h5 = os.fspath(path_h5)
    with h5py.File(path_h5, "w") as f:
        group = f.create_group("com")
        for name, values in com.maps().items():
            target = f.require_group("virtual") if name.startswith("virtual_") else group
            key = name[len("virtual_"):] if name.startswith("virtual_") else name
            dset = target.create_dataset(key, data=np.asarray(values, dtype=np.float64))
            dset.attrs["unit"] = units.get(name, "counts")
            dset.attrs["axes"] = "scan_y, scan_x"
        group.create_dataset("valid", data=com.valid)
        group.attrs["rotation_deg"] = com.rotation_deg
        group.attrs["flip"] = bool(com.flip)
        group.attrs["rotation_calibrated"] = com.rotation is not None
        if com.rotation is not None:
            group.attrs["rotation_residual"] = com.rotation.residual
            group.attrs["rotation_residual_other_flip"] = com.rotation.residual_other_flip
            group.attrs["polarity_from"] = com.rotation.polarity_from
        group.attrs["reference"] = com.reference
        group.attrs["mask"] = com.mask
        group.attrs["origin_px"] = np.asarray(com.origin, dtype=np.float64)
        group.attrs["conventions"] = (
            "v = R(rotation)·F·d, F = diag(1,-1) if flip; x = columns, y = rows; "
            "angle = atan2(y, x); COM points towards atoms (div < 0 at atom columns)"
        )
        if cal is not None:
            group.attrs["calibration"] = json.dumps(cal.to_dict())
    out = {"h5": path_h5}
    if png_path is not None:
        out["png"] = _write_png(com, png_path, scan_unit)
    return out


def _with_calibration(com: COMResult, calibration: Calibration) -> COMResult:
    import dataclasses

    return dataclasses.replace(com, calibration=calibration)


def _write_png(com: COMResult, png_path: str | os.PathLike, scan_unit: str) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cal = com.calibration
    step_y, step_x = cal.scan_step_yx if cal is not None else (1.0, 1.0)
    ny, nx = com.scan_shape
    extent = (-0.5 * step_x, (nx - 0.5) * step_x, (ny - 0.5) * step_y, -0.5 * step_y)
    in_mrad = com.pixels_per_mrad is not None
    unit = "mrad" if in_mrad else "px"
    panels = [
        ("COM x", com.x_mrad if in_mrad else com.x, unit, "RdBu_r", True),
        ("COM y", com.y_mrad if in_mrad else com.y, unit, "RdBu_r", True),
        ("COM magnitude", com.magnitude_mrad if in_mrad else com.magnitude, unit, "viridis", False),
        ("COM angle", com.angle, "rad", "twilight", False),
        ("divergence", com.divergence, f"px/{scan_unit}", "RdBu_r", True),
        ("curl", com.curl, f"px/{scan_unit}", "RdBu_r", True),
    ]
    fig = Figure(figsize=(12, 7.5), dpi=100)
    FigureCanvasAgg(fig)
    for i, (title, values, u, cmap, symmetric) in enumerate(panels):
        ax = fig.add_subplot(2, 3, i + 1)
        kwargs: dict[str, Any] = {"cmap": cmap, "extent": extent, "interpolation": "nearest"}
        if symmetric:
            limit = float(np.max(np.abs(values))) or 1.0
            kwargs.update(vmin=-limit, vmax=limit)
        if title == "COM angle":
            kwargs.update(vmin=-math.pi, vmax=math.pi)
        shown = ax.imshow(values, **kwargs)
        ax.set_title(f"{title} ({u})")
        ax.set_xlabel(f"x ({scan_unit})")
        ax.set_ylabel(f"y ({scan_unit})")
        fig.colorbar(shown, ax=ax, shrink=0.8)
    fig.suptitle(f"COM: rotation {com.rotation_deg:.2f}°, flip {com.flip}, "
                 f"reference {com.reference}, mask {com.mask}")
    fig.tight_layout()
    fig.savefig(os.fspath(png_path))
    return os.fspath(png_path)
