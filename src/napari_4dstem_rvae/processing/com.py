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

The masks of the pass and the raw shifts they give are in :mod:`.com_moments`, the
reference correction in :mod:`.com_reference`, the rotation calibration in :mod:`.field`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..dataset import Calibration
from ..options import option
from .arrays import as_array
from .com_moments import MOMENTS, base_mask, moment_shifts, pass_masks
from .com_result import COMResult
from .com_reference import is_vacuum_scan, reference_shift, vacuum_shift
from .engine import reduce_masks
from .field import (
    RotationCalibration,
    calibrate_rotation,
    divergence_curl,
    rotate_field,
)
from .virtual import RADIUS_UNITS, DiskGeometry, detector_geometry

__all__ = ["COMOptions", "COMResult", "RotationCalibration", "calibrate_rotation", "compute_com",
           "divergence_curl", "rotate_field"]


MASKS = ("whole", "disk", "annulus")


def degrees_or_auto(text: Any) -> float | str:
    """``"auto"`` or an angle in degrees, from text."""
    if str(text).strip().lower() == "auto":
        return "auto"
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"rotation must be 'auto' or a finite angle in degrees, got {text!r}")
    return value
REFERENCES = ("mean", "plane", None)


@dataclass(frozen=True)
class COMOptions:
    """The choices a user makes for a COM/DPC computation, as one small frozen object shared
    by the API (:func:`compute_com`), the CLI (``stem-rvae com``) and the COM widget; see
    :func:`compute_com` for what each means. ``None`` radii take the defaults (disk: 1.2 ×
    the bright-field radius; annulus: from 1.25 × that radius to the detector edge)."""

    mask: Any = option("whole", "pixels that count: the whole detector, a disk or an annulus (the API also takes a "
                       "VirtualDetector or an array of weights)", choices=MASKS, label="mask")
    radius: float | None = option(None, "radius of the disk mask, in the radius unit", label="disk radius",
                                  none="1.2 bf", minimum=0.0, maximum=1e4)
    inner: float | None = option(None, "inner radius of the annulus mask, in the radius unit", label="annulus inner",
                                 none="1.25 bf", minimum=0.0, maximum=1e4)
    outer: float | None = option(None, "outer radius of the annulus mask, in the radius unit", label="annulus outer",
                                 none="the detector edge", minimum=0.0, maximum=1e4)
    unit: str = option("bf", "unit of the radii: bf (multiples of the bright-field disk radius), mrad (needs the "
                       "detector calibration) or px", choices=RADIUS_UNITS, label="radius unit")
    threshold: float | None = option(None, "in each pattern, ignore pixels below this fraction of its maximum",
                                     label="threshold (× max)", none="every pixel", minimum=0.0, maximum=0.99,
                                     step=0.05)
    reference: Any = option("mean", "what is subtracted as the descan: the scan's mean shift, a plane fitted over "
                            "the scan, or nothing (the API also takes a vacuum scan)",
                            choices={"mean": "mean", "plane": "plane", "none": None})
    rotation: float | str = option("auto", "scan rotation: auto (the exact curl minimum) or an angle in degrees",
                                   parse=lambda text: degrees_or_auto(text),
                                   label="rotation (auto or °)")
    flip: bool | str = option("auto", "flip the detector's rows before rotating: auto (the smaller curl), yes or no",
                              choices={"auto": "auto", "yes": True, "no": False})

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
    opts = _checked_options(options, changes, sign_from)
    data = as_array(dataset)
    calibration = getattr(dataset, "calibration", None)
    shape = tuple(int(s) for s in data.shape)
    if len(shape) != 4:
        raise ValueError(f"data must have 4 axes (scan_y, scan_x, det_y, det_x), got shape {shape}")
    det_shape = shape[2:]
    center = _checked_center(center)
    want_adf = opts.rotation == "auto" and isinstance(sign_from, str)

    # the masks, placed on the detector
    geometry, origin = _geometry(data, calibration, center, opts.mask, bool(detectors) or want_adf)
    base, mask_description = base_mask(opts.mask, det_shape, geometry, calibration, opts.radius,
                                       opts.inner, opts.outer, opts.unit)
    stack, want_adf = pass_masks(base, origin, det_shape, geometry, calibration, detectors, want_adf)

    # the pass, and the raw shifts in the detector frame
    sums = reduce_masks(data, stack, threshold=opts.threshold, client=client, n_threads=n_threads,
                        precision=precision, nonfinite="keep", progress=progress)
    sums, total, valid, det_y, det_x = moment_shifts(sums, mask_description, stacklevel=3)

    # reference correction (detector frame)
    ref_y, ref_x, reference_kind = _reference(opts.reference, det_y, det_x, valid, origin, dict(
        mask=opts.mask, radius=opts.radius, inner=opts.inner, outer=opts.outer, unit=opts.unit,
        threshold=opts.threshold, center=center, client=client, n_threads=n_threads, precision=precision))
    corr_y = np.where(valid, det_y - ref_y, 0.0)
    corr_x = np.where(valid, det_x - ref_x, 0.0)

    # into the scan frame
    spacing = calibration.scan_step_yx if calibration is not None else (1.0, 1.0)
    image = sums.get("adf") if want_adf else (None if isinstance(sign_from, str) or sign_from is None
                                              else sign_from)
    rotation_deg, use_flip, calibrated = _scan_rotation(corr_y, corr_x, valid, spacing, opts.rotation,
                                                        opts.flip, image)
    vy, vx = rotate_field(corr_y, corr_x, rotation_deg, use_flip)
    div, curl = divergence_curl(vy, vx, spacing)
    virtual = {k: v for k, v in sums.items() if k not in MOMENTS}
    return COMResult(
        y=vy, x=vx, divergence=div, curl=curl, intensity=total, valid=valid,
        detector_y=det_y, detector_x=det_x, origin=origin,
        reference_y=np.broadcast_to(ref_y, det_y.shape).copy(),
        reference_x=np.broadcast_to(ref_x, det_x.shape).copy(),
        rotation_deg=rotation_deg, flip=use_flip, rotation=calibrated,
        reference=reference_kind, mask=mask_description, calibration=calibration,
        virtual=virtual,
    )


# -- the steps of compute_com -----------------------------------------------------------
def _checked_options(options: COMOptions | None, changes: dict[str, Any], sign_from: Any) -> COMOptions:
    """The options with the keyword ``changes`` applied, checked; ``rotation`` a float or
    ``"auto"``."""
    unknown = sorted(set(changes) - set(COMOptions.__dataclass_fields__))
    if unknown:
        raise TypeError(f"compute_com() got unknown options {unknown}; options: "
                        f"{sorted(COMOptions.__dataclass_fields__)}")
    opts = (options or COMOptions()).replace(**changes)
    rotation, flip, reference = opts.rotation, opts.flip, opts.reference
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
    if rotation == "auto" and isinstance(sign_from, str) and sign_from != "adf":
        raise ValueError(f"sign_from must be 'adf', an image or None, got {sign_from!r}")
    return opts.replace(rotation=rotation)


def _checked_center(center: Any) -> tuple[float, float] | None:
    if center is None:
        return None
    values = np.asarray(center, dtype=np.float64).ravel()
    if values.shape != (2,) or not np.all(np.isfinite(values)):
        raise ValueError(f"center must be a finite (row, col) in detector pixels, got {center!r}")
    return float(values[0]), float(values[1])


def _geometry(data: Any, calibration: Calibration | None, center: tuple[float, float] | None,
              mask: Any, placed: bool) -> tuple[DiskGeometry, tuple[float, float]]:
    """``(disk geometry of the masks, origin of the shifts)``. The disk is found from a sample
    of patterns only when something is placed relative to it: a mask other than the whole
    detector or an array, or (``placed``) extra detectors or the ADF used for the sign."""
    needs_geometry = center is None or not (isinstance(mask, np.ndarray) or mask == "whole") or placed
    geometry = detector_geometry(data, center) if needs_geometry else DiskGeometry(center, 1.0)
    if center is not None:
        origin = center
    elif calibration is not None and calibration.det_origin is not None:
        origin = tuple(float(c) for c in calibration.det_origin)
    else:
        origin = geometry.center
    return geometry, origin


def _reference(reference: Any, det_y: np.ndarray, det_x: np.ndarray, valid: np.ndarray,
               origin: tuple[float, float], options: dict[str, Any]) -> tuple[Any, Any, str]:
    """(ref_y, ref_x, kind) in detector pixels relative to ``origin`` (:mod:`.com_reference`);
    the COM of a vacuum scan is measured with the same ``options``."""
    if isinstance(reference, COMResult):
        return vacuum_shift(reference, origin, det_y.shape)
    if is_vacuum_scan(reference):
        vacuum = compute_com(reference, reference=None, rotation=0.0, flip=False, sign_from=None,
                             **options)
        return vacuum_shift(vacuum, origin, det_y.shape)
    return reference_shift(reference, det_y, det_x, valid, origin)


def _scan_rotation(corr_y: np.ndarray, corr_x: np.ndarray, valid: np.ndarray,
                   spacing: tuple[float, float], rotation: float | str, flip: bool | str,
                   sign_image: Any) -> tuple[float, bool, RotationCalibration | None]:
    """``(rotation_deg, flip, calibration)``: the given rotation, or the calibrated one (0°
    with a warning when the calibration is unreliable)."""
    if rotation != "auto":
        return float(rotation), bool(flip) if flip != "auto" else False, None
    calibrated = calibrate_rotation(corr_y, corr_x, spacing=spacing, flip=flip,
                                    sign_from=sign_image, valid=valid)
    rotation_deg, use_flip = calibrated.rotation_deg, calibrated.flip
    problem = calibrated.problem
    if problem is not None and not math.isnan(calibrated.residual):
        fallback_flip = False if flip == "auto" else bool(flip)
        warnings.warn(
            f"the automatic scan rotation is unreliable here ({problem}); it found "
            f"{rotation_deg:.1f}°{' with flip' if use_flip else ''}, but 0°"
            f"{' with flip' if fallback_flip else ' without flip'} is used instead. Give the rotation "
            "(and flip) measured on a larger scan or a calibration specimen.", stacklevel=3)
        rotation_deg, use_flip = 0.0, fallback_flip
    return rotation_deg, use_flip, calibrated
