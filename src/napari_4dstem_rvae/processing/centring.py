"""Direct-beam centring: the bright-field disk centre of every pattern, a descan plane fitted
over the scan, and patterns shifted so that the direct beam sits at one detector position.

Pure functions like :mod:`.preprocess` (the input is never modified; lazy in, lazy out).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..dataset import Dataset4D
from .arrays import is_dask as _is_dask
from .engine import reduce_masks
from .preprocess import _float_dtype, _whole_patterns, as_dataset


def find_beam_centers(dataset: Any, *, radius: float | None = None, unit: str = "px",
                      threshold: float | None = None, client: Any = None) -> np.ndarray:
    """Centre of the bright-field disk in every pattern, ``(2, scan_y, scan_x)`` as
    (row, col) detector pixels.

    The centre is the centre of mass inside a disk mask about the disk found in a sample
    of patterns (``radius`` in ``unit``; default 1.5 × the disk radius, room for the disk
    to wander). Patterns with no intensity in the mask get the mask centre.
    """
    from .com_moments import com_masks
    from .virtual import detector_geometry, detector_mask, disk

    ds = as_dataset(dataset)
    geometry = detector_geometry(ds.data)
    detector = disk(1.5, "bf") if radius is None else disk(radius, unit)
    base = detector_mask(detector, ds.det_shape, geometry, ds.calibration, "radius")
    sums = reduce_masks(ds.data, com_masks(base, geometry.center), threshold=threshold, client=client)
    total = sums["com_total"]
    valid = total > 0
    safe = np.where(valid, total, 1.0)
    rows = geometry.center[0] + np.where(valid, sums["com_y"] / safe, 0.0)
    cols = geometry.center[1] + np.where(valid, sums["com_x"] / safe, 0.0)
    return np.stack([rows, cols])


def fit_descan_plane(centers: Any) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares plane through beam centres over the scan (the descan).

    Parameters
    ----------
    centers
        ``(2, scan_y, scan_x)`` (row, col) positions, e.g. from :func:`find_beam_centers`.

    Returns
    -------
    ``(plane, coefficients)``: the fitted ``(2, scan_y, scan_x)`` positions and a
    ``(2, 3)`` array of ``(a, b, c)`` per component, position = a + b·scan_row + c·scan_col.
    """
    values = np.asarray(centers, dtype=np.float64)
    if values.ndim != 3 or values.shape[0] != 2:
        raise ValueError(f"centers must have shape (2, scan_y, scan_x), got {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError("centers contain NaN or Inf")
    rows, cols = np.indices(values.shape[1:], dtype=np.float64)
    design = np.column_stack([np.ones(rows.size), rows.ravel(), cols.ravel()])
    coefficients = np.stack([np.linalg.lstsq(design, v.ravel(), rcond=None)[0] for v in values])
    plane = np.stack([c[0] + c[1] * rows + c[2] * cols for c in coefficients])
    return plane, coefficients


def _shift_axis(image: np.ndarray, shift: int, axis: int) -> np.ndarray:
    """``out[i] = image[i − shift]`` along ``axis``, zeros where nothing comes in."""
    out = np.zeros_like(image)
    n = image.shape[axis]
    if abs(shift) >= n:
        return out
    src = [slice(None)] * image.ndim
    dst = [slice(None)] * image.ndim
    if shift >= 0:
        src[axis], dst[axis] = slice(0, n - shift), slice(shift, n)
    else:
        src[axis], dst[axis] = slice(-shift, n), slice(0, n + shift)
    out[tuple(dst)] = image[tuple(src)]
    return out


def shift_pattern(image: np.ndarray, dy: float, dx: float, order: int = 1) -> np.ndarray:
    """Move a pattern's content by ``(dy, dx)`` pixels (``out[r, c] = in[r − dy, c − dx]``).

    ``order=1``: linear interpolation (a convolution with [1 − f, f] along each axis,
    which moves the centre of mass by exactly the shift when nothing leaves the
    detector); ``order=0``: the shift rounded to whole pixels (counts unchanged).
    Pixels that enter from outside are 0.
    """
    image = np.asarray(image, dtype=np.float64)
    if order == 0:
        return _shift_axis(_shift_axis(image, int(round(dy)), 0), int(round(dx)), 1)
    out = image
    for axis, shift in ((0, dy), (1, dx)):
        whole = math.floor(shift)
        frac = shift - whole
        moved = _shift_axis(out, whole, axis)
        out = moved if frac == 0 else (1 - frac) * moved + frac * _shift_axis(out, whole + 1, axis)
    return out


def _center_block(block: np.ndarray, shifts: np.ndarray, order: int, out_dtype: Any) -> np.ndarray:
    """Shift every pattern of a block; ``shifts`` is ``(a, b, 1, 2)`` (dy, dx) per pattern."""
    out = np.empty(block.shape, dtype=out_dtype)
    for i in range(block.shape[0]):
        for j in range(block.shape[1]):
            dy, dx = shifts[i, j, 0]
            out[i, j] = shift_pattern(block[i, j], dy, dx, order)
    return out


def center_patterns(dataset: Any, *, centers: Any = None, fit: str = "plane",
                    target: tuple[float, float] | None = None, order: int = 1) -> Dataset4D:
    """Move the direct beam of every pattern to one detector position.

    Parameters
    ----------
    centers
        ``(2, scan_y, scan_x)`` measured beam centres (row, col); found with
        :func:`find_beam_centers` when ``None``.
    fit
        ``"plane"`` (default): shift by a plane fitted over the scan, which removes the
        descan (a linear drift of the beam with probe position) and keeps the sample's own
        deflections (the COM/DPC signal); ``"none"``: shift each pattern by its own measured
        centre (aligns every pattern exactly and removes the COM signal with it).
    target
        Detector ``(row, col)`` to move the beam to; default the detector centre
        ``((det_y − 1)/2, (det_x − 1)/2)`` (where the rVAE rotates patterns).
    order
        1: sub-pixel shifts by linear interpolation (float output); 0: whole-pixel shifts
        (counts and dtype kept).

    Returns
    -------
    Dataset4D with ``det_origin = target``; provenance holds the plane coefficients.
    """
    ds = as_dataset(dataset)
    if fit not in ("plane", "none"):
        raise ValueError(f"fit must be 'plane' or 'none', got {fit!r}")
    if order not in (0, 1):
        raise ValueError(f"order must be 0 (whole pixels) or 1 (linear), got {order!r}")
    measured = find_beam_centers(ds) if centers is None else np.asarray(centers, dtype=np.float64)
    if measured.shape != (2, *ds.scan_shape):
        raise ValueError(
            f"centers must have shape (2, {ds.scan_shape[0]}, {ds.scan_shape[1]}), got {measured.shape}"
        )
    if target is None:
        target = ((ds.det_shape[0] - 1) / 2, (ds.det_shape[1] - 1) / 2)
    target = (float(target[0]), float(target[1]))
    plane, coefficients = fit_descan_plane(measured)
    positions = plane if fit == "plane" else measured
    # (scan_y, scan_x, 1, 2): chunked like the data's scan axes, so each task gets its own.
    shifts = np.stack([target[0] - positions[0], target[1] - positions[1]], axis=-1)[:, :, None, :]
    out_dtype = ds.dtype if order == 0 else _float_dtype(ds.dtype)
    if _is_dask(ds.data):
        import dask.array as da

        data = _whole_patterns(ds.data)
        shift_chunks = da.from_array(shifts, chunks=(data.chunks[0], data.chunks[1], 1, 2))
        data = da.map_blocks(_center_block, data, shift_chunks, order, out_dtype, dtype=out_dtype,
                             chunks=data.chunks, meta=np.empty((0,) * 4, dtype=out_dtype))
    else:
        data = _center_block(np.asarray(ds.data), shifts, order, out_dtype)
    cal = ds.calibration.replace(det_origin=target)
    return ds.derive(data, "center_patterns", cal, fit=fit, target=list(target), order=order,
                     plane_row=coefficients[0].tolist(), plane_col=coefficients[1].tolist())
