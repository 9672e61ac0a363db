"""Reading patterns without a full reduction: numpy blocks of whole patterns covering the
scan (:func:`iter_frame_blocks`), and the mean of a sample of patterns spread over the scan
(:func:`sample_mean_pattern`, used to find the bright-field disk for default masks).

A lazy array that is nothing but ``dask.array.from_array`` of a frame source that can be
sliced without dask (:class:`DirectFrames`: a numpy array, ``np.memmap``, or a reader's
source offering ``read_direct``) is sampled from that source directly. Nothing here imports
dask at module level, nor any reader.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np

from .arrays import as_array, is_dask


class DirectFrames(Protocol):
    """A frame source that can be sliced without dask.

    A reader hands such an object to ``dask.array.from_array``; the sampler, recognising it
    under a dask array that only wraps it, reads a few patterns from it directly instead of
    through dask (~1 ms a slice). ``shape`` and ``dtype`` are those of the whole array;
    ``read_direct(index)`` returns ``source[index]`` as a numpy array (a view or a copy) for a
    tuple of integers and slices.
    """

    shape: tuple[int, ...]
    dtype: Any

    def read_direct(self, index: Any) -> np.ndarray: ...


def iter_frame_blocks(data: Any, target_bytes: int = 64 * 2**20,
                      ) -> Iterator[tuple[tuple[slice, slice], np.ndarray]]:
    """Yield ``((rows, cols), block)`` numpy blocks of whole patterns covering the scan.

    Dask data are read one chunk (or group of scan rows) at a time, so memory stays
    bounded by ``target_bytes`` plus one chunk.
    """
    shape = tuple(int(s) for s in data.shape)
    ny, nx, ky, kx = shape
    frame_bytes = ky * kx * np.dtype(data.dtype).itemsize
    if is_dask(data):
        row_bounds = np.cumsum((0,) + tuple(data.chunks[0]))
        col_bounds = np.cumsum((0,) + tuple(data.chunks[1]))
    else:
        frames = max(1, target_bytes // max(frame_bytes, 1))
        if frames >= nx:
            rows = max(1, frames // nx)
            row_bounds = np.append(np.arange(0, ny, rows), ny)
            col_bounds = np.array([0, nx])
        else:
            row_bounds = np.arange(ny + 1)
            col_bounds = np.append(np.arange(0, nx, frames), nx)
    for r0, r1 in zip(row_bounds[:-1], row_bounds[1:]):
        for c0, c1 in zip(col_bounds[:-1], col_bounds[1:]):
            sel = (slice(int(r0), int(r1)), slice(int(c0), int(c1)))
            block = data[sel]
            if hasattr(block, "compute"):
                block = block.compute()
            yield sel, np.asarray(block)


def sample_mean_pattern(data: Any, max_frames: int = 256, max_rows: int = 8) -> np.ndarray:
    """Mean of a sample of patterns spread over the scan (float64, ``(det_y, det_x)``).

    Takes up to ``max_rows`` evenly spaced scan rows and, within them, evenly spaced
    positions (``max_frames`` in all), so that a lazy file is read only in a few places: a
    lazy array's sample (≤ 64 MiB) is read in one dask graph, a larger one a row at a time.
    Non-finite pixels count as 0. Used to find the bright-field disk for default masks
    without a full pass.
    """
    data = as_array(data)
    direct = _direct_reader(data) if is_dask(data) else None
    ny, nx = int(data.shape[0]), int(data.shape[1])
    rows = np.unique(np.linspace(0, ny - 1, min(ny, max_rows)).round().astype(int))
    per_row = max(1, max_frames // len(rows))
    step = max(1, int(np.ceil(nx / per_row)))
    small = data.dtype.itemsize <= 4 and data.dtype.kind in "fiub"
    # ≤ 4-byte data summed in float32 (≤ max_frames patterns: ample for finding the disk, and
    # 2-3× faster than a float64 sum); a NaN/Inf shows in the sum
    sampled = len(rows) * len(range(0, nx, step)) * int(np.prod(data.shape[2:])) * data.dtype.itemsize
    picked: Any
    if direct is not None:  # sliced from the source itself, one row at a time
        picked = (np.asarray(direct((int(r), slice(None, None, step)))) for r in rows)
    elif is_dask(data) and sampled <= 64 * 2**20:
        import dask

        # one graph of plain slices: the sampled rows of a lazy file read in one go
        picked = dask.compute(*[data[int(r), ::step] for r in rows])
    else:  # one row in memory at a time
        picked = (np.asarray(_computed(data[int(r), ::step])) for r in rows)

    total = np.zeros(tuple(int(s) for s in data.shape[2:]), dtype=np.float64)
    count = 0
    for frames in picked:
        row = frames.sum(axis=0, dtype=np.float32 if small else np.float64)
        if data.dtype.kind in "fc" and not np.isfinite(row).all():
            row = np.where(np.isfinite(frames), frames, 0).sum(axis=0, dtype=np.float64)
        total += row
        count += frames.shape[0]
    return total / count


def _direct_reader(data: Any) -> Callable[[Any], np.ndarray] | None:
    """``read(index)`` slicing the source under a dask array that is nothing but
    ``dask.array.from_array`` of a numpy array (also ``np.memmap``) or of a
    :class:`DirectFrames` source of the same shape and type: sampling a few hundred patterns
    from it directly skips dask's ~1 ms per slice (~8 ms for the eight scan rows of a sample, a
    quarter of a 1 GB COM pass). Anything else (a file read through h5py or zarr, a computed
    array): ``None``, the sample is read through dask."""
    try:
        layers = data.__dask_graph__().layers
        if len(layers) != 2:
            return None
        original = [dict(layer) for name, layer in layers.items() if name.startswith("original-array-")]
        if len(original) != 1 or len(original[0]) != 1:
            return None
        source = next(iter(original[0].values()))
    except Exception:  # pragma: no cover - another dask graph layout: sample through dask
        return None
    if isinstance(source, np.ndarray):
        read = source.__getitem__
    elif callable(getattr(source, "read_direct", None)):
        read = source.read_direct
    else:
        return None
    if tuple(source.shape) == tuple(data.shape) and np.dtype(source.dtype) == data.dtype:
        return read
    return None


def _computed(value: Any) -> Any:
    return value.compute() if hasattr(value, "compute") else value
