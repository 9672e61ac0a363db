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
    """Map a ``.npy`` file (nothing is read until a chunk is asked for). The header is checked
    against the file: a shape or type it cannot hold, a file shorter or longer than the header
    announces, are a :class:`ReadError` naming the sizes."""
    import math

    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            offset = fh.tell()
    except OSError as exc:
        raise ReadError(f"{path}: cannot be read as .npy ({exc})") from exc
    except Exception as exc:  # a lying header: ValueError, SyntaxError, TokenError, MemoryError …
        reason = " ".join(str(exc).split())[:160]
        raise ReadError(f"{path}: not a readable .npy array: its header is damaged ({type(exc).__name__}: "
                        f"{reason})") from exc
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise ReadError(f"{path}: the .npy header announces an invalid shape {shape!r}")
    if dtype.hasobject or dtype.kind not in "uifb" or dtype.itemsize == 0:
        raise ReadError(f"{path}: holds {dtype} data, expected numbers")
    if len(shape) not in (3, 4):
        raise ReadError(f"{path}: expected 4D data (scan_y, scan_x, det_y, det_x) or 3D patterns "
                        f"with scan_shape, found {len(shape)} axes {tuple(shape)}")
    if 0 in shape:
        raise ReadError(f"{path}: the array is empty (shape {tuple(shape)})")
    expected = offset + math.prod(shape) * dtype.itemsize  # Python integers: no overflow
    actual = os.path.getsize(path)
    if actual != expected:
        what = "truncated" if actual < expected else "longer than its header says"
        raise ReadError(f"{path}: the .npy file is {what}: its header announces {tuple(shape)} {dtype} "
                        f"({expected} bytes with the header) but the file has {actual} bytes")
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


class ZarrSource:
    """A zarr array whose reading errors (a damaged or undecodable chunk) become a
    :class:`ReadError` naming the store and the part being read."""

    def __init__(self, array: Any, path: str):
        self.array, self.path = array, path
        self.shape, self.dtype, self.ndim = tuple(array.shape), np.dtype(array.dtype), len(array.shape)
        self.chunks = tuple(array.chunks)

    def __getitem__(self, index: Any) -> np.ndarray:
        from .common import _fmt_index

        try:
            return np.asarray(self.array[index])
        except Exception as exc:
            reason = " ".join(str(exc).split())[:160]
            raise ReadError(f"{self.path}: could not read {_fmt_index(index)}: a chunk of the store is damaged "
                            f"({type(exc).__name__}: {reason})") from exc

    def __dask_tokenize__(self):
        return ("ZarrSource", self.path, self.shape, str(self.dtype))


def read_zarr(path: str, dataset: str | None = None, scan_shape: Any = None,
              chunks: Any = None, fill_missing: bool = False) -> Dataset4D:
    """Open a zarr store (array or group) lazily.

    Missing chunks are an error (a store copied in part would read as zeros without a word);
    ``fill_missing=True`` reads them as the array's fill value instead. A damaged chunk is a
    :class:`ReadError` naming the store when it is read."""
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
    try:
        total, present = int(array.nchunks), int(array.nchunks_initialized)
    except Exception:  # pragma: no cover - a store that cannot list its chunks
        total = present = 0
    if present < total and not fill_missing:
        raise ReadError(f"{path}: {total - present} of the {total} chunks of {name} are missing (a store "
                        f"copied in part?); they would read as {array.fill_value!r} — pass fill_missing=True "
                        "to read them so")
    source = ZarrSource(array, path)
    dask_array = da.from_array(source, chunks=chunks or aligned_chunks(array), fancy=False, lock=False,
                               meta=np.empty((0,) * len(source.shape), dtype=source.dtype))
    return finish(dask_array, path, calibration, {"dataset": name, "missing_chunks": total - present},
                  scan_shape, None, "zarr", frame_source=source)


