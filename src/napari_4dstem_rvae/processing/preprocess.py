"""Preprocessing steps: each takes a Dataset4D (or a 4D array) and returns a new Dataset4D.

Every function is pure: the input is never modified, the result carries an updated
:class:`~napari_4dstem_rvae.dataset.Calibration` and one more provenance entry. Lazy
(dask) input gives lazy output, computed chunk by chunk when it is used; numpy input gives
numpy output (a new array, never a view of the input). Steps that need statistics of the
whole data set (mean pattern, global range, bad pixels, beam centres, PCA) make one
bounded-memory pass to get them.

Axes are ``(scan_y, scan_x, det_y, det_x)`` throughout; positions on the detector are
``(row, col)`` in pixels with pixel centres at integers.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from ..dataset import Dataset4D
from .engine import _is_dask, iter_frame_blocks, reduce_masks

# -- helpers --------------------------------------------------------------------------------


def as_dataset(dataset: Any) -> Dataset4D:
    """A Dataset4D as is; a 4D array wrapped (uncalibrated)."""
    return dataset if isinstance(dataset, Dataset4D) else Dataset4D(dataset)


def _whole_patterns(data: Any) -> Any:
    """Dask data with unchunked detector axes (per-pattern operations need whole frames)."""
    if len(data.chunks[2]) > 1 or len(data.chunks[3]) > 1:
        return data.rechunk({2: -1, 3: -1})
    return data


def _map_patterns(data: Any, block_function: Any, block_dtype: Any, **kwargs: Any) -> Any:
    """Apply ``block_function(block, **kwargs) -> block`` to whole-pattern blocks of ``data``."""
    if _is_dask(data):
        data = _whole_patterns(data)
        return data.map_blocks(block_function, dtype=block_dtype,
                               meta=np.empty((0,) * 4, dtype=block_dtype), **kwargs)
    return block_function(np.asarray(data), **kwargs)


def _float_dtype(dtype: Any) -> np.dtype:
    return np.dtype(np.float64 if np.dtype(dtype) == np.float64 else np.float32)


def _pattern_mean(data: Any) -> np.ndarray:
    """Mean pattern over the scan, float64 ``(det_y, det_x)`` (one pass)."""
    if _is_dask(data):
        return np.asarray(data.mean(axis=(0, 1), dtype=np.float64).compute())
    return np.asarray(data, dtype=data.dtype).mean(axis=(0, 1), dtype=np.float64)


def _region(region: Any, shape: tuple[int, int], name: str) -> tuple[int, int, int, int]:
    if region is None:
        return 0, shape[0], 0, shape[1]
    values = tuple(region)
    if len(values) != 4 or not all(float(v) == int(v) for v in values):
        raise ValueError(
            f"{name} must be (y_start, y_stop, x_start, x_stop) in whole pixels, got {region!r}"
        )
    y0, y1, x0, x1 = (int(v) for v in values)
    if not (0 <= y0 < y1 <= shape[0] and 0 <= x0 < x1 <= shape[1]):
        raise ValueError(
            f"{name}={region!r} is empty or outside the {shape[0]}×{shape[1]} grid; expected "
            f"0 ≤ y_start < y_stop ≤ {shape[0]} and 0 ≤ x_start < x_stop ≤ {shape[1]}"
        )
    return y0, y1, x0, x1


# -- crop -----------------------------------------------------------------------------------
def crop(dataset: Any, scan: Any = None, detector: Any = None) -> Dataset4D:
    """Keep a rectangle of probe positions and/or of detector pixels.

    Parameters
    ----------
    dataset
        Dataset4D or 4D array.
    scan
        ``(y_start, y_stop, x_start, x_stop)`` in probe positions (half-open, like
        slices), or ``None`` for the whole scan.
    detector
        ``(row_start, row_stop, col_start, col_stop)`` in detector pixels, or ``None``.

    Returns
    -------
    Dataset4D. ``det_origin`` moves by ``−(row_start, col_start)``; ``scan_origin`` moves
    by ``(y_start·step_y, x_start·step_x)``.
    """
    ds = as_dataset(dataset)
    y0, y1, x0, x1 = _region(scan, ds.scan_shape, "scan")
    r0, r1, c0, c1 = _region(detector, ds.det_shape, "detector")
    data = ds.data[y0:y1, x0:x1, r0:r1, c0:c1]
    if not _is_dask(data):
        data = np.array(data)  # a copy: the result never aliases the input
    cal = ds.calibration
    changes: dict[str, Any] = {}
    if cal.det_origin is not None:
        changes["det_origin"] = (cal.det_origin[0] - r0, cal.det_origin[1] - c0)
    step_y, step_x = cal.scan_step_yx
    changes["scan_origin"] = (cal.scan_origin[0] + y0 * step_y, cal.scan_origin[1] + x0 * step_x)
    return ds.derive(data, "crop", cal.replace(**changes), scan=[y0, y1, x0, x1],
                     detector=[r0, r1, c0, c1])


# -- binning --------------------------------------------------------------------------------
def _factors(value: Any, name: str) -> tuple[int, int]:
    values = (value, value) if np.isscalar(value) else tuple(value)
    if len(values) != 2 or not all(float(v) == int(v) and int(v) >= 1 for v in values):
        raise ValueError(f"{name} binning factor must be a whole number ≥ 1 or a (y, x) pair, got {value!r}")
    return int(values[0]), int(values[1])


def _sum_dtype(dtype: np.dtype, count: int) -> np.dtype:
    if dtype.kind == "f":
        return np.dtype(np.float64 if dtype == np.float64 else np.float32)
    wide = count > 65536 or dtype.itemsize > 2
    if dtype.kind in "ub":
        return np.dtype(np.uint64 if wide else np.uint32)
    return np.dtype(np.int64 if wide else np.int32)


def bin_data(dataset: Any, scan: Any = 1, detector: int = 1, method: str = "sum") -> Dataset4D:
    """Bin probe positions and/or detector pixels by whole factors.

    Parameters
    ----------
    dataset
        Dataset4D or 4D array.
    scan
        Factor over the scan: an int or ``(f_y, f_x)``.
    detector
        Factor over the detector (same along rows and columns, so that the pixel size stays
        one number).
    method
        ``"sum"`` (conserves counts; integers accumulate in 32/64-bit integers) or
        ``"mean"`` (float32, float64 for float64 data).

    Returns
    -------
    Dataset4D. Trailing rows/columns that do not fill a bin are dropped. ``det_pixel_size``
    and ``scan_step`` are multiplied by the factors; ``det_origin`` becomes
    ``(o + 0.5) / f − 0.5`` (pixel-centre convention); ``scan_origin`` moves to the centre
    of the first bin.
    """
    ds = as_dataset(dataset)
    fy, fx = _factors(scan, "scan")
    fd = _factors(detector, "detector")
    if fd[0] != fd[1]:
        raise ValueError(f"detector binning must be the same along rows and columns, got {detector!r}")
    fd = fd[0]
    if method not in ("sum", "mean"):
        raise ValueError(f"method must be 'sum' or 'mean', got {method!r}")
    ny, nx, ky, kx = ds.shape
    out_shape = (ny // fy, nx // fx, ky // fd, kx // fd)
    if 0 in out_shape:
        raise ValueError(
            f"binning factors scan=({fy}, {fx}), detector={fd} are larger than the data "
            f"{ds.shape}; expected factors ≤ the axis lengths"
        )
    count = fy * fx * fd * fd
    dtype = _sum_dtype(ds.dtype, count) if method == "sum" else _float_dtype(ds.dtype)
    acc = np.float64 if method == "mean" else dtype
    data = ds.data[:out_shape[0] * fy, :out_shape[1] * fx, :out_shape[2] * fd, :out_shape[3] * fd]
    if _is_dask(data):
        import dask.array as da

        rows = max(fy, (data.chunks[0][0] // fy) * fy)
        cols = max(fx, (data.chunks[1][0] // fx) * fx)
        data = data.rechunk({0: rows, 1: cols, 2: -1, 3: -1})
        func = np.sum if method == "sum" else np.mean
        binned = da.coarsen(func, data, {0: fy, 1: fx, 2: fd, 3: fd}, dtype=acc).astype(dtype)
    else:
        blocks = np.asarray(data).reshape(out_shape[0], fy, out_shape[1], fx,
                                          out_shape[2], fd, out_shape[3], fd)
        reduce = np.sum if method == "sum" else np.mean
        binned = reduce(blocks, axis=(1, 3, 5, 7), dtype=acc).astype(dtype, copy=False)
    cal = ds.calibration
    step_y, step_x = cal.scan_step_yx
    changes: dict[str, Any] = {
        "scan_origin": (cal.scan_origin[0] + (fy - 1) / 2 * step_y,
                        cal.scan_origin[1] + (fx - 1) / 2 * step_x),
    }
    if cal.scan_step is not None:
        changes["scan_step"] = (step_y * fy, step_x * fx)
    if cal.det_pixel_size is not None:
        changes["det_pixel_size"] = cal.det_pixel_size * fd
    if cal.det_origin is not None:
        changes["det_origin"] = ((cal.det_origin[0] + 0.5) / fd - 0.5,
                                 (cal.det_origin[1] + 0.5) / fd - 0.5)
    return ds.derive(binned, "bin", cal.replace(**changes), scan=[fy, fx], detector=fd,
                     method=method)


# -- mean pattern, intensity transforms -----------------------------------------------------
def subtract_mean_pattern(dataset: Any, mean_pattern: Any = None) -> Dataset4D:
    """Subtract the mean diffraction pattern (over the scan) from every pattern.

    As in the published rVAE study of graphene, this removes what all patterns share
    (the bright-field disk) and leaves the differences. The result is float32 (float64
    for float64 data) and has negative values.

    Parameters
    ----------
    mean_pattern
        ``(det_y, det_x)`` pattern to subtract; computed from the data (one pass) if ``None``.
    """
    ds = as_dataset(dataset)
    if mean_pattern is None:
        mean = _pattern_mean(ds.data)
        if not np.all(np.isfinite(mean)):
            raise ValueError(
                "the data contain NaN or Inf pixels: repair them before subtracting the mean pattern"
            )
    else:
        mean = np.asarray(mean_pattern, dtype=np.float64)
        if mean.shape != ds.det_shape:
            raise ValueError(
                f"mean_pattern has shape {mean.shape}, expected the detector shape {ds.det_shape}"
            )
    dtype = _float_dtype(ds.dtype)
    data = ds.data.astype(dtype) - mean.astype(dtype)
    return ds.derive(data, "subtract_mean_pattern", given=mean_pattern is not None)


TRANSFORMS = (None, "log1p", "sqrt")
NORMALIZATIONS = (None, "pattern", "global")


def _signed_block(block: np.ndarray, function: Any, out_dtype: Any) -> np.ndarray:
    values = block.astype(out_dtype)
    return (np.sign(values) * function(np.abs(values))).astype(out_dtype, copy=False)


def _normalize_patterns(block: np.ndarray, out_dtype: Any) -> np.ndarray:
    values = block.astype(out_dtype)
    low = values.min(axis=(2, 3), keepdims=True)
    span = values.max(axis=(2, 3), keepdims=True) - low
    scaled = (values - low) / np.where(span > 0, span, 1)
    return np.where(span > 0, scaled, 0).astype(out_dtype, copy=False)


def transform_intensity(dataset: Any, function: str | None = "log1p",
                        normalize: str | None = None) -> Dataset4D:
    """Compress the dynamic range and/or normalise intensities.

    Parameters
    ----------
    function
        ``"log1p"`` (sign(I)·log(1 + |I|)), ``"sqrt"`` (sign(I)·√|I|) or ``None``. The
        signed forms equal the plain ones for counts and stay finite for mean-subtracted
        data.
    normalize
        Applied after ``function``: ``"pattern"`` scales each pattern to [0, 1]
        (min–max of that pattern; a constant pattern becomes 0), ``"global"`` scales the
        whole data set to [0, 1] (one pass for the range), ``None`` leaves the scale.

    Returns
    -------
    Dataset4D, float32 (float64 for float64 data).
    """
    ds = as_dataset(dataset)
    if function not in TRANSFORMS:
        raise ValueError(f"function must be one of {TRANSFORMS}, got {function!r}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    dtype = _float_dtype(ds.dtype)
    lazy = _is_dask(ds.data)
    if function is not None:
        func = np.log1p if function == "log1p" else np.sqrt
        data = _map_patterns(ds.data, _signed_block, dtype, function=func, out_dtype=dtype)
    else:
        data = ds.data.astype(dtype) if lazy else np.array(ds.data, dtype=dtype)
    if normalize == "pattern":
        data = _map_patterns(data, _normalize_patterns, dtype, out_dtype=dtype)
    elif normalize == "global":
        if lazy:
            import dask

            low, high = (float(v) for v in dask.compute(data.min(), data.max()))
        else:
            low, high = float(data.min()), float(data.max())
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError("the data contain NaN or Inf pixels: repair them before normalising")
        scale = 1 / (high - low) if high > low else 0.0
        data = ((data - dtype.type(low)) * dtype.type(scale)).astype(dtype)
    return ds.derive(data, "transform_intensity", function=function, normalize=normalize)


# -- bad pixels -----------------------------------------------------------------------------
def find_bad_pixels(dataset: Any, *, n_sigma: float = 8.0, hot_ratio: float = 3.0,
                    dead_ratio: float = 0.1, mean_pattern: Any = None) -> np.ndarray:
    """Hot, dead and non-finite detector pixels, from the mean pattern over the scan.

    A pixel is

    - **hot** when its mean is above ``hot_ratio`` × the brightest of its 8 neighbours and
      exceeds it by more than ``n_sigma`` robust standard deviations of the pattern's
      pixel-to-pixel roughness (a real diffraction feature is never a single pixel far
      above all its neighbours in the mean pattern);
    - **dead** when its mean is below ``dead_ratio`` × the median of its 8 neighbours and
      below it by more than ``n_sigma`` robust standard deviations;
    - **non-finite** when it holds NaN or Inf in any pattern.

    Parameters
    ----------
    mean_pattern
        Use this ``(det_y, det_x)`` mean instead of computing it (one pass).

    Returns
    -------
    Boolean ``(det_y, det_x)`` array, True for bad pixels.
    """
    from scipy import ndimage

    ds = as_dataset(dataset)
    if not (n_sigma > 0 and hot_ratio > 1 and 0 <= dead_ratio < 1):
        raise ValueError(
            f"expected n_sigma > 0, hot_ratio > 1 and 0 ≤ dead_ratio < 1, got n_sigma={n_sigma}, "
            f"hot_ratio={hot_ratio}, dead_ratio={dead_ratio}"
        )
    mean = _pattern_mean(ds.data) if mean_pattern is None else np.asarray(mean_pattern, np.float64)
    if mean.shape != ds.det_shape:
        raise ValueError(f"mean_pattern has shape {mean.shape}, expected {ds.det_shape}")
    finite = np.isfinite(mean)
    values = np.where(finite, mean, 0.0)
    ring = np.ones((3, 3), dtype=bool)
    ring[1, 1] = False
    brightest = ndimage.maximum_filter(values, footprint=ring, mode="mirror")
    typical = ndimage.median_filter(values, footprint=ring, mode="mirror")
    roughness = values - ndimage.median_filter(values, size=3, mode="mirror")
    sigma = 1.4826 * float(np.median(np.abs(roughness - np.median(roughness))))
    sigma = max(sigma, 1e-6 * float(np.max(np.abs(values))), np.finfo(float).tiny)
    hot = (values > hot_ratio * brightest) & (values - brightest > n_sigma * sigma)
    dead = (values < dead_ratio * typical) & (typical - values > n_sigma * sigma)
    return hot | dead | ~finite


def _neighbour_table(bad: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """For each bad pixel (flat index), the flat indices of the good pixels around it
    (the 3×3 ring, or the 5×5 one if all 8 neighbours are bad)."""
    rows, cols = bad.shape
    table = []
    for r, c in zip(*np.nonzero(bad)):
        for half in (1, 2, 3):
            r0, r1 = max(0, r - half), min(rows, r + half + 1)
            c0, c1 = max(0, c - half), min(cols, c + half + 1)
            rr, cc = np.mgrid[r0:r1, c0:c1]
            good = ~bad[rr, cc]
            if good.any():
                table.append((int(r * cols + c), (rr[good] * cols + cc[good]).astype(np.intp)))
                break
        else:
            raise ValueError(
                f"bad pixel ({r}, {c}) has no good pixel within 3 pixels; expected isolated "
                f"bad pixels or small clusters"
            )
    return table


def _repair_block(block: np.ndarray, table: list[tuple[int, np.ndarray]]) -> np.ndarray:
    shape = block.shape
    frames = np.array(block).reshape(-1, shape[2] * shape[3])
    work = frames.astype(np.float64) if frames.dtype.kind != "f" else frames
    for target, neighbours in table:
        value = work[:, neighbours].mean(axis=1)
        if frames.dtype.kind != "f":
            value = np.rint(value)
        frames[:, target] = value
    return frames.reshape(shape)


def repair_bad_pixels(dataset: Any, bad_pixels: Any = None, **find_options: Any) -> Dataset4D:
    """Replace bad pixels in every pattern by the mean of their good neighbours.

    Parameters
    ----------
    bad_pixels
        Boolean ``(det_y, det_x)`` mask of pixels to repair; found with
        :func:`find_bad_pixels` (``find_options`` passed on) when ``None``.

    Returns
    -------
    Dataset4D of the same dtype (integers rounded). Provenance lists the pixels repaired.
    """
    ds = as_dataset(dataset)
    if bad_pixels is None:
        bad = find_bad_pixels(ds, **find_options)
    else:
        bad = np.asarray(bad_pixels, dtype=bool)
        if bad.shape != ds.det_shape:
            raise ValueError(f"bad_pixels has shape {bad.shape}, expected the detector shape {ds.det_shape}")
    table = _neighbour_table(bad)
    positions = [[int(r), int(c)] for r, c in zip(*np.nonzero(bad))]
    if not table:
        data = ds.data if _is_dask(ds.data) else np.array(ds.data)
    else:
        data = _map_patterns(ds.data, _repair_block, ds.dtype, table=table)
    return ds.derive(data, "repair_bad_pixels", count=len(positions),
                     pixels=positions if len(positions) <= 64 else f"{len(positions)} pixels")


# -- direct-beam centring -------------------------------------------------------------------
def find_beam_centers(dataset: Any, *, radius: float | None = None, unit: str = "px",
                      threshold: float | None = None, client: Any = None) -> np.ndarray:
    """Centre of the bright-field disk in every pattern, ``(2, scan_y, scan_x)`` as
    (row, col) detector pixels.

    The centre is the centre of mass inside a disk mask about the disk found in a sample
    of patterns (``radius`` in ``unit``; default 1.5 × the disk radius, room for the disk
    to wander). Patterns with no intensity in the mask get the mask centre.
    """
    from .com import com_masks
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


# -- PCA denoising --------------------------------------------------------------------------
def _memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 8 * 2**30


def _reconstruct_block(block: np.ndarray, mean: np.ndarray, components: np.ndarray,
                       out_dtype: Any) -> np.ndarray:
    shape = block.shape
    frames = block.reshape(-1, shape[2] * shape[3]).astype(components.dtype) - mean
    return ((frames @ components.T) @ components + mean).astype(out_dtype).reshape(shape)


def pca_denoise(dataset: Any, n_components: int, *, incremental: bool | None = None,
                batch_size: int | None = None, memory_limit: int | None = None,
                random_state: int = 0, return_model: bool = False) -> Any:
    """Denoise by projecting every pattern onto the first principal components.

    Patterns are flattened to ``(scan_y·scan_x, det_y·det_x)``; the reconstruction is
    ``mean + (X − mean)·Cᵀ·C`` with the ``n_components`` rows of C (scikit-learn).

    Parameters
    ----------
    n_components
        Components kept, 1 ≤ n ≤ min(patterns, pixels). All of them reconstruct the data.
    incremental
        Fit with ``IncrementalPCA`` over batches of patterns read chunk by chunk (bounded
        memory). ``None``: when the data are lazy and larger than ``memory_limit``.
    batch_size
        Patterns per incremental batch (≥ n_components); default about 64 MB of patterns.
    memory_limit
        Bytes; default half the physical memory.
    random_state
        Seed of the randomised solver.
    return_model
        Also return the fitted scikit-learn model.

    Returns
    -------
    Dataset4D, float32 (float64 for float64 data); lazy when the input is lazy and the
    fit was incremental. With ``return_model``: ``(dataset, model)``.
    """
    ds = as_dataset(dataset)
    n_frames = ds.scan_shape[0] * ds.scan_shape[1]
    n_pixels = ds.det_shape[0] * ds.det_shape[1]
    if not (isinstance(n_components, (int, np.integer)) and 1 <= n_components <= min(n_frames, n_pixels)):
        raise ValueError(
            f"n_components must be a whole number from 1 to min(patterns, pixels) = "
            f"{min(n_frames, n_pixels)}, got {n_components!r}"
        )
    n_components = int(n_components)
    limit = _memory_bytes() // 2 if memory_limit is None else int(memory_limit)
    if incremental is None:
        incremental = ds.is_lazy and ds.nbytes * 2 > limit
    dtype = _float_dtype(ds.dtype)
    if not incremental:
        from sklearn.decomposition import PCA

        frames = np.asarray(ds.data.compute() if ds.is_lazy else ds.data).reshape(n_frames, n_pixels)
        frames = frames.astype(dtype)
        _check_finite_frames(frames)
        solver = "full" if n_components == min(n_frames, n_pixels) else "auto"
        model = PCA(n_components=n_components, svd_solver=solver, random_state=random_state)
        scores = model.fit_transform(frames)
        data = model.inverse_transform(scores).astype(dtype).reshape(ds.shape)
    else:
        from sklearn.decomposition import IncrementalPCA

        frame_bytes = n_pixels * dtype.itemsize
        size = max(n_components, (64 * 2**20) // frame_bytes) if batch_size is None else int(batch_size)
        if size < n_components:
            raise ValueError(f"batch_size ({size}) must be ≥ n_components ({n_components})")
        model = IncrementalPCA(n_components=n_components, batch_size=size)
        buffer: list[np.ndarray] = []
        held = 0
        for _, block in iter_frame_blocks(ds.data):
            frames = block.reshape(-1, n_pixels).astype(dtype)
            _check_finite_frames(frames)
            buffer.append(frames)
            held += len(frames)
            # Keep at least one batch back so that the last partial_fit is never too small.
            while held >= 2 * size:
                stacked = np.concatenate(buffer)
                model.partial_fit(stacked[:size])
                buffer, held = [stacked[size:]], held - size
        if held:
            model.partial_fit(np.concatenate(buffer))
        mean = model.mean_.astype(dtype)
        components = model.components_.astype(dtype)
        if ds.is_lazy:
            data = _whole_patterns(ds.as_dask()).map_blocks(
                _reconstruct_block, mean, components, dtype, dtype=dtype,
                meta=np.empty((0,) * 4, dtype=dtype))
        else:
            data = np.empty(ds.shape, dtype=dtype)
            for (rows, cols), block in iter_frame_blocks(ds.data):
                data[rows, cols] = _reconstruct_block(block, mean, components, dtype)
    explained = float(np.sum(model.explained_variance_ratio_))
    out = ds.derive(data, "pca_denoise", n_components=n_components, incremental=bool(incremental),
                    explained_variance_ratio=explained)
    return (out, model) if return_model else out


def _check_finite_frames(frames: np.ndarray) -> None:
    if not np.all(np.isfinite(frames)):
        raise ValueError("the data contain NaN or Inf pixels: repair them before PCA denoising")
