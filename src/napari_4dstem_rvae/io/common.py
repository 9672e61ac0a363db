"""What every reader shares: the one error type, wrapping a file's array as a lazy
:class:`~napari_4dstem_rvae.dataset.Dataset4D` (:func:`finish`), chunking that follows the
file, and a picklable memory-mapped view of uncompressed arrays (:class:`MemmapSource`)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..dataset import Calibration, Dataset4D, default_chunks


class ReadError(Exception):
    """A file that cannot be read as 4D-STEM data; the message names the file and the reason."""


def finish(array: Any, path: str, calibration: Calibration, metadata: dict,
            scan_shape: Any = None, chunks: Any = None, fmt: str = "",
            frame_source: Any = None) -> Dataset4D:
    """Reshape a flat pattern stack if asked, wrap in dask, check the axes."""
    import dask.array as da

    if frame_source is None and not isinstance(array, da.Array):
        frame_source = array
    if scan_shape is not None or getattr(frame_source, "ndim", 0) != 4:
        frame_source = None
    if not isinstance(array, da.Array):
        # meta= spares dask its probe read (which would also open and hold an HDF5 file)
        array = da.from_array(array, chunks=chunks or aligned_chunks(array), fancy=False, lock=False,
                              meta=np.empty((0,) * len(array.shape), dtype=array.dtype))
    elif chunks is not None:
        array = array.rechunk(chunks)
    if scan_shape is not None:
        scan_shape = tuple(int(s) for s in scan_shape)
        n = int(np.prod(array.shape[:-2]))
        if len(scan_shape) != 2 or np.prod(scan_shape) != n:
            raise ReadError(
                f"{path}: scan_shape {scan_shape} does not match the {n} patterns in the file "
                f"(array shape {tuple(array.shape)})"
            )
        array = array.reshape(scan_shape + tuple(array.shape[-2:]))
    if array.ndim == 3:
        raise ReadError(
            f"{path}: holds a stack of {array.shape[0]} patterns of {tuple(array.shape[1:])} "
            "pixels but no scan shape; pass scan_shape=(scan_y, scan_x)"
        )
    if array.ndim != 4:
        raise ReadError(
            f"{path}: expected 4D data (scan_y, scan_x, det_y, det_x), found "
            f"{array.ndim}D data of shape {tuple(array.shape)}"
        )
    if 0 in array.shape:
        raise ReadError(f"{path}: the 4D data set is empty (shape {tuple(array.shape)})")
    if not array.dtype.isnative:  # big-endian detectors (Merlin, raw): native for numpy/torch
        array = array.astype(array.dtype.newbyteorder("="))
    if chunks is None and array.chunksize[2:] != array.shape[2:]:
        # Whole patterns per chunk: every reduction works frame by frame.
        array = array.rechunk(default_chunks(array.shape, array.dtype))
    metadata = {"format": fmt, **metadata}
    return Dataset4D(data=array, calibration=calibration, metadata=metadata, source=path,
                     frame_source=frame_source)


def aligned_chunks(array: Any) -> Any:
    """Dask chunks that follow the on-disk chunking (HDF5/zarr) and hold whole patterns."""
    shape = tuple(array.shape)
    if len(shape) != 4:
        if len(shape) == 3:
            n, ky, kx = shape
            target = max(1, (64 * 2**20) // max(ky * kx * np.dtype(array.dtype).itemsize, 1))
            return (min(n, target), ky, kx)
        return "auto"
    chunks = list(default_chunks(shape, array.dtype))
    disk = getattr(array, "chunks", None)
    if isinstance(disk, tuple) and len(disk) == 4 and all(isinstance(c, int) for c in disk):
        # round scan chunks to multiples of the stored chunks to avoid re-reading them
        for axis in (0, 1):
            chunks[axis] = min(shape[axis], max(disk[axis], (chunks[axis] // disk[axis]) * disk[axis]))
    return tuple(chunks)



def text(value: Any) -> Any:
    """A file attribute as plain Python: bytes decoded, one-element string arrays unwrapped,
    numpy scalars as Python numbers."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.dtype.kind in "SO" and value.size == 1:
        return text(value.reshape(-1)[0])
    if isinstance(value, np.generic):
        return value.item()
    return value


def positive(value: Any) -> float | None:
    try:
        v = float(text(value))
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None



def _fmt_index(index: Any) -> str:
    if not isinstance(index, tuple):
        index = (index,)
    parts = []
    for i in index:
        if isinstance(i, slice):
            parts.append(f"{'' if i.start is None else i.start}:{'' if i.stop is None else i.stop}")
        else:
            parts.append(str(i))
    return "[" + ", ".join(parts) + "]"



class MemmapSource:
    """A picklable, lazily mapped view of an array stored uncompressed in a file (``.npy``
    data, raw frames), for ``dask.array.from_array``.

    Unlike a ``numpy.memmap`` handed to dask directly, it is not hashed (dask would read the
    whole file to name the array), it maps only the block asked for (a read-only view of the
    file's pages, unmapped when the block is dropped), and it pickles as a file reference, so
    the same array also runs on a dask.distributed cluster.

    ``file_dtype``/``file_shape`` describe the records in the file; ``field`` selects one
    field of structured records (raw frames between per-frame headers and footers).
    """

    def __init__(self, path: str, file_dtype: Any, file_shape: tuple[int, ...], offset: int = 0,
                 order: str = "C", field: str | None = None):
        self.path = os.path.abspath(path)
        self.file_dtype = np.dtype(file_dtype)
        self.file_shape = tuple(int(n) for n in file_shape)
        self.offset, self.order, self.field = int(offset), order, field
        if field is None:
            self.shape, self.dtype = self.file_shape, self.file_dtype
        else:
            sub = self.file_dtype.fields[field][0]
            self.shape, self.dtype = self.file_shape + tuple(sub.shape), sub.base
        self.ndim = len(self.shape)

    def _array(self) -> np.ndarray:
        mm = np.memmap(self.path, dtype=self.file_dtype, mode="r", offset=self.offset,
                       shape=self.file_shape, order=self.order)
        return mm if self.field is None else mm[self.field]

    def __getitem__(self, index: Any) -> np.ndarray:
        # A fresh mapping per read, held only by the returned block: the block is a read-only
        # view of the file's pages (no copy: a copy was a second pass over the data, half the
        # engine's speed), and the mapping is released when the block is dropped, so the pages
        # of a streamed reduction never add up to the file's size in resident memory (a batch
        # scheduler limiting RSS would kill the job). Fancy indices are copied by numpy.
        try:
            view = self._array()
            out = view[index]
        except (OSError, ValueError) as exc:
            raise ReadError(f"{self.path}: could not read{_fmt_index(index)} ({exc})") from exc
        if isinstance(out, np.memmap):
            out = out.view(np.ndarray)  # a plain array over the same pages (keeps the mapping alive)
        return out

    def read_direct(self, index: Any) -> np.ndarray:
        """``self[index]``: this is a frame source that can be sliced without dask (the
        protocol :class:`napari_4dstem_rvae.processing.sampling.DirectFrames`), so a sample of
        patterns under ``dask.array.from_array(source)`` is read from it directly."""
        return self[index]

    def __dask_tokenize__(self):
        st = os.stat(self.path)
        return ("MemmapSource", self.path, st.st_ino, st.st_size, st.st_mtime_ns, self.offset,
                str(self.file_dtype), self.file_shape, self.order, self.field)


