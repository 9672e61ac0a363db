"""Reference correction of COM shifts (descan, beam tilt), in the detector frame: the scan
mean, a plane ``a + b·scan_row + c·scan_col`` fitted over the scan, or a vacuum reference
(beam positions, or the COM of a vacuum scan). Conventions are told in :mod:`.com`; the COM
of a vacuum scan is measured there (:func:`.com.compute_com`) and handed to
:func:`vacuum_shift`.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def plane_fit(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Least-squares plane a + b·row + c·col through the valid values, on the whole grid."""
    rows, cols = np.indices(values.shape, dtype=np.float64)
    design = np.column_stack([np.ones(valid.sum()), rows[valid], cols[valid]])
    coef, *_ = np.linalg.lstsq(design, values[valid], rcond=None)
    return coef[0] + coef[1] * rows + coef[2] * cols


def is_vacuum_scan(reference: Any) -> bool:
    """True when ``reference`` is a scan of vacuum patterns (a ``Dataset4D``, a 4D array or a
    dask array) whose COM is the reference."""
    return hasattr(reference, "calibration") or np.ndim(reference) == 4 or hasattr(reference, "chunks")


def reference_shift(reference: Any, det_y: np.ndarray, det_x: np.ndarray, valid: np.ndarray,
                    origin: tuple[float, float]) -> tuple[Any, Any, str]:
    """``(ref_y, ref_x, kind)`` in detector pixels relative to ``origin``, for a reference
    that is ``None``, ``"mean"``, ``"plane"`` or beam positions ``(row, col)`` of shape
    ``(2,)`` or ``(2, scan_y, scan_x)``; a float or a ``(scan_y, scan_x)`` map each."""
    if reference is None:
        return 0.0, 0.0, "none"
    if isinstance(reference, str):
        if reference == "mean":
            return float(det_y[valid].mean()), float(det_x[valid].mean()), "mean"
        return plane_fit(det_y, valid), plane_fit(det_x, valid), "plane"
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
    return _vacuum_map(pos_y, pos_x, np.ones(pos_y.shape, dtype=bool), det_y.shape)


def vacuum_shift(vacuum: Any, origin: tuple[float, float], scan_shape: tuple[int, ...],
                 ) -> tuple[Any, Any, str]:
    """``(ref_y, ref_x, "vacuum")`` from the COM of a vacuum scan (a
    :class:`~.com.COMResult`: its raw shifts, origin and valid positions), moved to
    ``origin``; a vacuum map of another scan shape is replaced by its mean."""
    pos_y = vacuum.detector_y + vacuum.origin[0] - origin[0]
    pos_x = vacuum.detector_x + vacuum.origin[1] - origin[1]
    return _vacuum_map(pos_y, pos_x, vacuum.valid, scan_shape)


def _vacuum_map(pos_y: np.ndarray, pos_x: np.ndarray, ok: np.ndarray, scan_shape: tuple[int, ...],
                ) -> tuple[Any, Any, str]:
    if pos_y.shape == scan_shape:
        return pos_y, pos_x, "vacuum"
    return float(pos_y[ok].mean()), float(pos_x[ok].mean()), "vacuum"
