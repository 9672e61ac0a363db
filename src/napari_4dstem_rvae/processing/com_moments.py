"""The centre-of-mass moments of a COM pass (:func:`.com.compute_com`): the masks reduced in
the pass (the COM mask the user chose, its three moments, the ADF used for the sign, extra
detectors) and the raw shifts the moments give.

Conventions are told in :mod:`.com`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from ..dataset import Calibration
from .engine import MaskStack
from .kernels import is_short
from .virtual import (
    DiskGeometry,
    VirtualDetector,
    annular_dark_field,
    annulus,
    build_mask_stack,
    detector_mask,
    disk,
)

#: Names of the three moments in the sums of a pass.
MOMENTS = ("com_total", "com_y", "com_x")
#: The disk an ADF leaves out, reduced in place of the ADF with the whole detector as COM mask.
ADF_HOLE = "_adf_hole"


def com_masks(base: np.ndarray, origin: tuple[float, float]) -> MaskStack:
    """The three COM moments of a base mask: Σ M·I, Σ M·(row − oy)·I, Σ M·(col − ox)·I.

    Coordinates are taken relative to ``origin`` so that float32 sums keep their
    precision (no cancellation of large offsets).
    """
    base = np.asarray(base, dtype=np.float64)
    rows = np.arange(base.shape[0], dtype=np.float64)[:, None] - origin[0]
    cols = np.arange(base.shape[1], dtype=np.float64)[None, :] - origin[1]
    return MaskStack(MOMENTS, np.stack([base, base * rows, base * cols]))


def base_mask(mask: Any, det_shape: tuple[int, int], geometry: DiskGeometry,
              calibration: Calibration | None, radius: float | None, inner: float | None,
              outer: float | None, unit: str) -> tuple[np.ndarray, str]:
    """The COM mask's pixel weights ``(det_y, det_x)`` and its description, from the ``mask``
    option of :func:`.com.compute_com` (``"whole"``, ``"disk"``, ``"annulus"``, a detector or
    an array)."""
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


def pass_masks(base: np.ndarray, origin: tuple[float, float], det_shape: tuple[int, int],
               geometry: DiskGeometry, calibration: Calibration | None,
               detectors: dict[str, Any] | None, want_adf: bool) -> tuple[MaskStack, bool]:
    """Every mask of the pass: the three moments, the ADF for the sign when ``want_adf`` (and
    the detectors do not name one already), then the extra ``detectors``.

    Returns ``(stack, want_adf)``; ``want_adf`` turns False when the detector has no
    dark-field pixels (the sign then comes from the divergence's skewness)."""
    stack = com_masks(base, origin)
    extra = dict(detectors or {})
    if want_adf and "adf" not in extra:
        try:
            adf = detector_mask(annular_dark_field(), det_shape, geometry, calibration, "adf")
        except ValueError:
            want_adf = False  # no dark-field pixels: fall back to skewness
        else:
            hole = 1 - adf
            if np.all(base == 1) and is_short(hole):
                # the ADF is the total less the disk it leaves out: that disk is summed over
                # its own rows alone (exact for counts; float data: ~1e-7 × the total)
                stack = stack + MaskStack((ADF_HOLE,), hole[None])
            else:
                extra["adf"] = adf
    if extra:
        stack = stack + build_mask_stack(extra, det_shape, geometry, calibration)
    return stack, want_adf


def moment_shifts(sums: dict[str, np.ndarray], mask_description: str, stacklevel: int = 2,
                  ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The pass's sums → ``(sums, total, valid, det_y, det_x)``: the raw shift of every pattern
    in the detector frame, relative to the moments' origin.

    The ADF is formed from its hole; patterns holding NaN or Inf are left out with a warning
    (zero shift, NaN in the virtual images); patterns with no positive intensity inside the COM
    mask are invalid (zero shift). ``stacklevel`` of the warning: 2 names the caller of this
    function, 3 its caller's caller (the user's call of :func:`.com.compute_com`)."""
    if ADF_HOLE in sums:
        sums["adf"] = sums["com_total"] - sums.pop(ADF_HOLE)
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
                      stacklevel=stacklevel)
        total = np.where(broken, 0.0, total)
        sums = {k: (v if k in MOMENTS else np.where(broken, np.nan, v)) for k, v in sums.items()}
    valid = total > 0
    if not valid.any():
        raise ValueError(
            f"no pattern has a positive intensity inside the COM mask ({mask_description}); "
            f"expected non-negative counts with some signal in the mask"
        )
    safe = np.where(valid, total, 1.0)
    det_y = np.where(valid, sums["com_y"] / safe, 0.0)
    det_x = np.where(valid, sums["com_x"] / safe, 0.0)
    return sums, total, valid, det_y, det_x
