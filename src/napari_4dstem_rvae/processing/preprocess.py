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
from typing import Any

import numpy as np

from ..dataset import Dataset4D
from .arrays import is_dask as _is_dask

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
