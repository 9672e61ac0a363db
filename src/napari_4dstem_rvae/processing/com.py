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
  ``corr(div′, ADF) < 0`` (ADF computed in the same pass; with the whole detector as the
  COM mask, as the total less the disk the ADF leaves out, a disk the pass multiplies over
  its own rows only), or the image you pass as
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

This module is longer than 500 lines because it keeps the COM pass whole: its options, its
result, its masks, the reference correction and the rotation calibration's use.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..dataset import Calibration
from .engine import MaskStack, as_array, reduce_masks
from .kernels import is_short
from .field import (
    RotationCalibration,
    calibrate_rotation,
    divergence_curl,
    rotate_field,
)
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
_ADF_HOLE = "_adf_hole"

__all__ = ["COMOptions", "COMResult", "RotationCalibration", "calibrate_rotation", "com_masks", "compute_com",
           "divergence_curl", "rotate_field"]


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

    @property
    def map_unit(self) -> str:
        """Unit of the shift maps of :meth:`maps`: ``"mrad"`` when the detector has an angular
        calibration, else ``"px"``."""
        return "px" if self.pixels_per_mrad is None else "mrad"

    def maps(self) -> dict[str, np.ndarray]:
        """Every map by its schema name (:data:`napari_4dstem_rvae.schema.MAPS`): ``com_x``,
        ``com_y``, ``com_magnitude`` (in :attr:`map_unit`), ``com_angle`` (rad),
        ``com_divergence``, ``com_curl`` (:attr:`map_unit` per scan unit), ``com_intensity``,
        ``com_valid``; then the virtual images by their names."""
        scale = 1.0 if self.pixels_per_mrad is None else 1.0 / self.pixels_per_mrad
        out = {
            "com_x": self.x * scale, "com_y": self.y * scale, "com_magnitude": self.magnitude * scale,
            "com_angle": self.angle, "com_divergence": self.divergence * scale,
            "com_curl": self.curl * scale, "com_intensity": self.intensity,
            "com_valid": self.valid,
        }
        out.update(self.virtual)
        return out

    def attributes(self) -> dict[str, Any]:
        """How the maps were made, as plain values (for results files and layer metadata)."""
        out: dict[str, Any] = {
            "rotation_deg": float(self.rotation_deg), "flip": bool(self.flip),
            "rotation_calibrated": self.rotation is not None, "reference": self.reference,
            "mask": self.mask, "origin_px": [float(v) for v in self.origin], "unit": self.map_unit,
            "conventions": ("v = R(rotation)·F·d, F = diag(1,-1) if flip; x = columns, y = rows; "
                            "angle = atan2(y, x); COM points towards atoms (div < 0 at atom columns)"),
        }
        if self.rotation is not None:
            out.update(rotation_residual=float(self.rotation.residual),
                       rotation_residual_other_flip=float(self.rotation.residual_other_flip),
                       polarity_from=self.rotation.polarity_from,
                       rotation_found_deg=float(self.rotation.rotation_deg),
                       rotation_problem=self.rotation.problem or "")
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


MASKS = ("whole", "disk", "annulus")
REFERENCES = ("mean", "plane", None)


@dataclass(frozen=True)
class COMOptions:
    """The choices a user makes for a COM/DPC computation, as one small frozen object shared
    by the API (:func:`compute_com`), the CLI (``stem-rvae com``) and the COM widget; see
    :func:`compute_com` for what each means. ``None`` radii take the defaults (disk: 1.2 ×
    the bright-field radius; annulus: from 1.25 × that radius to the detector edge)."""

    mask: Any = "whole"
    radius: float | None = None
    inner: float | None = None
    outer: float | None = None
    unit: str = "px"
    threshold: float | None = None
    reference: Any = "mean"
    rotation: float | str = "auto"
    flip: bool | str = "auto"

    def replace(self, **changes: Any) -> COMOptions:
        import dataclasses

        return dataclasses.replace(self, **changes)

    def describe(self) -> dict[str, str]:
        """Plain strings of every option (for layer metadata and results files)."""
        import dataclasses

        return {f.name: str(getattr(self, f.name)) for f in dataclasses.fields(self)}


def compute_com(
    dataset: Any,
    options: COMOptions | None = None,
    *,
    center: tuple[float, float] | None = None,
    sign_from: Any = "adf",
    detectors: dict[str, Any] | None = None,
    client: Any = None,
    n_threads: int | None = None,
    precision: str = "auto",
    progress: Any = None,
    **changes: Any,
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
    options
        A :class:`COMOptions`; its fields may also be given as keywords
        (``compute_com(ds, mask="disk", reference="plane")``), which override it.
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
    client, n_threads, precision, progress
        See :func:`.engine.reduce_masks` (``progress``: the main pass's tasks on the cluster).

    Returns
    -------
    :class:`COMResult`.
    """
    unknown = sorted(set(changes) - set(COMOptions.__dataclass_fields__))
    if unknown:
        raise TypeError(f"compute_com() got unknown options {unknown}; options: "
                        f"{sorted(COMOptions.__dataclass_fields__)}")
    opts = (options or COMOptions()).replace(**changes)
    mask, radius, inner, outer, unit = opts.mask, opts.radius, opts.inner, opts.outer, opts.unit
    threshold, reference, rotation, flip = opts.threshold, opts.reference, opts.rotation, opts.flip
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
                adf = detector_mask(annular_dark_field(), det_shape, geometry, calibration, "adf")
            except ValueError:
                want_adf = False  # no dark-field pixels: fall back to skewness
            else:
                hole = 1 - adf
                if np.all(base == 1) and is_short(hole):
                    # the ADF is the total less the disk it leaves out: that disk is summed over
                    # its own rows alone (exact for counts; float data: ~1e-7 × the total)
                    stack = stack + MaskStack((_ADF_HOLE,), hole[None])
                else:
                    extra["adf"] = adf
    if extra:
        stack = stack + build_mask_stack(extra, det_shape, geometry, calibration)

    sums = reduce_masks(data, stack, threshold=threshold, client=client, n_threads=n_threads,
                        precision=precision, nonfinite="keep", progress=progress)
    if _ADF_HOLE in sums:
        sums["adf"] = sums["com_total"] - sums.pop(_ADF_HOLE)
    total = sums["com_total"]
    broken = ~np.all([np.isfinite(v) for v in sums.values()], axis=0)
    if broken.all():
        raise ValueError("every pattern holds NaN or Inf pixels; expected finite intensities "
                         "(repair them with processing.repair_bad_pixels or numpy.nan_to_num)")
    if broken.any():
        where = ", ".join(f"({int(r)}, {int(c)})" for r, c in np.argwhere(broken)[:5])
        more = f" and {int(broken.sum()) - 5} more" if broken.sum() > 5 else ""
        warnings.warn(f"{int(broken.sum())} pattern(s) hold NaN or Inf pixels, at scan positions {where}{more}: "
                      "they are left out (zero shift, NaN in the virtual images, invalid in COMResult.valid)",
                      stacklevel=2)
        total = np.where(broken, 0.0, total)
        sums = {k: (v if k in _MOMENTS else np.where(broken, np.nan, v)) for k, v in sums.items()}
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
        problem = calibrated.problem
        if problem is not None and not math.isnan(calibrated.residual):
            fallback_flip = False if flip == "auto" else bool(flip)
            warnings.warn(
                f"the automatic scan rotation is unreliable here ({problem}); it found "
                f"{rotation_deg:.1f}°{' with flip' if use_flip else ''}, but 0°"
                f"{' with flip' if fallback_flip else ' without flip'} is used instead. Give the rotation "
                "(and flip) measured on a larger scan or a calibration specimen.", stacklevel=2)
            rotation_deg, use_flip = 0.0, fallback_flip
    else:
        rotation_deg, use_flip = float(rotation), bool(flip) if flip != "auto" else False
    vy, vx = rotate_field(corr_y, corr_x, rotation_deg, use_flip)
    div, curl = divergence_curl(vy, vx, spacing)
    virtual = {k: v for k, v in sums.items() if k not in _MOMENTS}
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
