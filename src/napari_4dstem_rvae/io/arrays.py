"""NumPy ``.npy`` files (memory-mapped, nothing read until a chunk is asked for) and zarr
stores (v2 or v3, an array or a group holding 4D arrays)."""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

from ..dataset import Calibration, Dataset4D
from .common import MemmapSource, ReadError, aligned_chunks, finish


def read_npy(path: str, scan_shape: Any = None, chunks: Any = None, dataset: Any = None) -> Dataset4D:
    """Map a ``.npy`` file (nothing is read until a chunk is asked for)."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            offset = fh.tell()
    except ValueError as exc:
        raise ReadError(f"{path}: not a readable .npy array ({exc})") from exc
    except OSError as exc:
        raise ReadError(f"{path}: cannot be read as .npy ({exc})") from exc
    if dtype.hasobject or dtype.kind not in "uifb":
        raise ReadError(f"{path}: holds {dtype} data, expected numbers")
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    actual = os.path.getsize(path)
    if actual < expected:
        raise ReadError(f"{path}: the .npy file is truncated: its header announces {shape} {dtype} "
                        f"({expected} bytes) but the file has {actual} bytes")
    if 0 in shape:
        raise ReadError(f"{path}: the array is empty (shape {tuple(shape)})")
    source = MemmapSource(path, dtype, shape, offset, order="F" if fortran else "C")
    return finish(source, path, Calibration(), {}, scan_shape, chunks, "npy")


def zarr_arrays(group, prefix=""):
    for name, member in group.members() if hasattr(group, "members") else group.items():
        full = f"{prefix}/{name}"
        if hasattr(member, "shape") and not hasattr(member, "members"):
            yield full, member
        else:
            yield from zarr_arrays(member, full)


def zarr_datasets(path: str, wanted: tuple[int, ...]) -> list[tuple[str, tuple]]:
    """``(name, shape)`` of the arrays of a zarr store with a number of axes in ``wanted``."""
    import zarr

    root = zarr.open(path, mode="r")
    if hasattr(root, "shape"):
        return [("/", tuple(root.shape))] if len(root.shape) in wanted else []
    return [(name, tuple(arr.shape)) for name, arr in zarr_arrays(root) if len(arr.shape) in wanted]


def read_zarr(path: str, dataset: str | None = None, scan_shape: Any = None,
              chunks: Any = None) -> Dataset4D:
    """Open a zarr store (array or group) lazily."""
    import dask.array as da
    import zarr

    try:
        root = zarr.open(path, mode="r")
    except Exception as exc:
        raise ReadError(f"{path}: not a readable zarr store ({exc})") from exc
    if hasattr(root, "shape") and not hasattr(root, "members"):
        array, name = root, "/"
    else:
        arrays = [(n, a) for n, a in zarr_arrays(root) if len(a.shape) in ((3, 4) if scan_shape else (4,))]
        if dataset is not None:
            key = dataset.strip("/")
            try:
                array, name = root[key], "/" + key
            except KeyError:
                raise ReadError(f"{path}: no array {dataset!r}; 4D arrays: {[n for n, _ in arrays] or 'none'}") from None
        elif not arrays:
            raise ReadError(f"{path}: contains no 4D array (scan_y, scan_x, det_y, det_x)")
        else:
            arrays.sort(key=lambda item: -int(np.prod(item[1].shape)))
            name, array = arrays[0]
            if len(arrays) > 1:
                warnings.warn(f"{path}: several 4D arrays; reading {name}; choose with dataset=...", stacklevel=3)
    attrs = dict(array.attrs)
    calibration = Calibration()
    if "calibration" in attrs and isinstance(attrs["calibration"], dict):
        try:
            calibration = Calibration.from_dict(attrs["calibration"])
        except (TypeError, ValueError) as exc:
            warnings.warn(f"{path}: ignoring an invalid calibration ({exc})", stacklevel=2)
    dask_array = da.from_zarr(array, chunks=chunks or aligned_chunks(array))
    return finish(dask_array, path, calibration, {"dataset": name}, scan_shape, None, "zarr",
                   frame_source=array)


