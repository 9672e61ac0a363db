"""One-pass reduction engine: every pattern times a stack of detector masks.

A virtual detector, the three centre-of-mass moments, a bright-field disk and an annulus
are all the same operation: a weighted sum of the pixels of each diffraction pattern.
Reshaping a block of frames to ``(n_frames, det_y·det_x)`` and multiplying it by a stack
of masks reshaped to ``(det_y·det_x, n_masks)`` computes all of them in one read of the
data (the idea of LiberTEM's mask stacks). Adding a detector is adding a mask.

How the product is organised, and why:

- With numba (a dependency; the BLAS path below is the fallback) up to eight masks are
  one compiled loop per tile of frames (:mod:`.kernels`): each pixel of four frames (two
  above five masks) is read once, cast to float32 in a register and multiplied into every
  mask, the partial sums held in SIMD registers (float32 over ≤ 65 536 pixels, then
  float64). Data are read from memory once and the masks from the cache once per tile, for
  any integer or float32 input without a cast copy; a mask that fits in half the
  detector's rows is multiplied over its own run of pixels only. This reached 1.2–1.3 × a
  ``numpy.sum`` for the three COM masks and ~1.0 × for five masks where the BLAS path below
  reached 0.8 × and 0.55 × (one thread, ``benchmarks/bench_com.py``). The loops are
  generated for each layout of masks, compiled on first use (about a second per layout and
  input type) and cached on disk for the next process.
- Frames are cast to float32 (or float64 for float64 / 32-bit integer input) in small
  steps of a few frames that stay in the CPU cache. Up to eight masks, each mask is one
  matrix–vector product over a run of ≤ 512 kB of frames (read from memory once, then from
  the L2 cache for the next masks): BLAS gemv streams near the memory floor, where a thin
  gemm of three columns reached ~0.35 × (measured in ``benchmarks/bench_com.py``). More
  masks are multiplied in groups of at most four; OpenBLAS dispatches such thin products
  (rows · masks · pixels ≲ 10⁶) to its small-matrix kernel.
- Very large detectors are cut into pixel blocks of at most 65 536 pixels whose partial
  sums are added in float64: the float32 rounding error of a sum then stays below
  ~3·10⁻⁷ relative. Results are float64.
- In memory (numpy, including ``np.memmap``) the frames are split over a small thread
  pool, each thread with a single BLAS thread. Dask arrays (lazy, larger than memory) are
  reduced chunk by chunk with ``map_blocks``, on the local scheduler or on a
  ``dask.distributed`` cluster when a client or a scheduler address is given. Only the
  ``(scan_y, scan_x, n_masks)`` result is ever gathered.

Nothing here imports dask or numba at module level.

This module is longer than 500 lines because it holds the one pass whole: the mask stack,
the plan of a pass (with its dask token), the in-memory, dask and distributed drivers, the
float64 fallback and the sampled mean used to find the disk; the compiled loop itself is in
:mod:`.kernels`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from .kernels import compiled_kernel, kernel_layout

#: OpenBLAS uses its fast small-matrix kernel below about 10⁶ multiply-adds per call.
_SMALL_GEMM_LIMIT = 900_000
#: Largest number of detector pixels summed in float32 before a float64 partial sum.
_PIXEL_BLOCK = 65_536
#: Masks per BLAS call.
_MASK_GROUP = 4
#: Up to this many masks, each is a matrix–vector product over a cache-sized run of frames
#: (BLAS gemv streams at ~0.75 × the memory floor where a 3-column gemm reaches ~0.35 ×;
#: measured with OpenBLAS in benchmarks/bench_com.py).
_GEMV_MASKS = 8
#: Bytes of frames per run in the matrix–vector path (stays in the L2 cache across masks).
_GEMV_BYTES = 512 * 1024
#: Frames handed to one thread of the in-memory path at a time (bytes).
_TASK_BYTES = 8 * 2**20
#: Compiled one-pass kernels (numba) for float32 products with up to this many masks.
_KERNEL_MASKS = 8
#: Off: the BLAS path only (benchmarks compare the two in one run).
USE_COMPILED = True
#: Input types the compiled kernel reads as they are (others are cast to float32 first).
_KERNEL_INPUTS = ("float32", "uint8", "uint16", "int8", "int16")

@dataclass(frozen=True)
class MaskStack:
    """Named detector masks, reduced together in one pass.

    Attributes
    ----------
    names
        One name per mask, e.g. ``("bf", "adf")``.
    masks
        float64 array ``(n_masks, det_y, det_x)`` of pixel weights (1 inside a binary
        detector, 0 outside; any real weights, e.g. ``y · disk`` for a COM moment).
    """

    names: tuple[str, ...]
    masks: np.ndarray

    def __post_init__(self) -> None:
        masks = np.asarray(self.masks, dtype=np.float64)
        if masks.ndim == 2:
            masks = masks[None]
        if masks.ndim != 3:
            raise ValueError(
                f"masks must have shape (n_masks, det_y, det_x), got shape {masks.shape}"
            )
        names = tuple(str(n) for n in self.names)
        if len(names) != masks.shape[0]:
            raise ValueError(f"{len(names)} names for {masks.shape[0]} masks: {names}")
        if len(set(names)) != len(names):
            raise ValueError(f"mask names must be unique, got {names}")
        if not np.all(np.isfinite(masks)):
            raise ValueError("masks contain NaN or Inf weights")
        object.__setattr__(self, "masks", masks)
        object.__setattr__(self, "names", names)

    @classmethod
    def from_dict(cls, masks: Mapping[str, Any]) -> MaskStack:
        """A stack from ``{name: (det_y, det_x) array}``."""
        if not masks:
            raise ValueError("no masks given: expected at least one {name: mask}")
        arrays = [np.asarray(m, dtype=np.float64) for m in masks.values()]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"all masks must have the same (det_y, det_x) shape, got {shapes}")
        return cls(tuple(masks), np.stack(arrays))

    def __len__(self) -> int:
        return len(self.names)

    @property
    def det_shape(self) -> tuple[int, int]:
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    def __add__(self, other: MaskStack) -> MaskStack:
        return MaskStack(self.names + other.names, np.concatenate([self.masks, other.masks]))


# -- BLAS threads ------------------------------------------------------------------------
_blas_lock = threading.Lock()
_blas_users = 0
_blas_limiter: Any = None
_blas_controller: Any = None


@contextmanager
def single_blas_thread() -> Iterator[None]:
    """Limit BLAS to one thread while any caller is inside (process-wide, re-entrant).

    The engine parallelises over frames itself; a multi-threaded BLAS on top would
    oversubscribe the cores. ``threadpoolctl`` limits are process-global, so concurrent
    users (dask worker threads) share one limit, set by the first and lifted by the last.
    """
    global _blas_users, _blas_limiter, _blas_controller
    with _blas_lock:
        if _blas_users == 0:
            try:
                if _blas_controller is None:
                    # Finding the loaded BLAS libraries takes milliseconds: do it once.
                    from threadpoolctl import ThreadpoolController

                    _blas_controller = ThreadpoolController()
                _blas_limiter = _blas_controller.limit(limits=1, user_api="blas")
            except Exception:  # pragma: no cover - threadpoolctl missing or unsupported
                _blas_limiter = None
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0 and _blas_limiter is not None:
                _blas_limiter.restore_original_limits()
                _blas_limiter = None


def default_threads() -> int:
    """Threads used by the in-memory path: the CPU cores this process may use (≤ 8)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


# -- the kernel ------------------------------------------------------------------------
def compute_dtype_for(dtype: Any, precision: str = "auto") -> np.dtype:
    """float32 for ≤16-bit integers and float16/32 data, float64 otherwise.

    float32 holds integers up to 2²⁴ exactly, so 8/16-bit counts lose nothing.
    """
    if precision not in ("auto", "float32", "float64"):
        raise ValueError(f"precision must be 'auto', 'float32' or 'float64', got {precision!r}")
    if precision != "auto":
        return np.dtype(precision)
    dtype = np.dtype(dtype)
    if dtype.kind == "f" and dtype.itemsize <= 4:
        return np.dtype(np.float32)
    if dtype.kind in "iub" and dtype.itemsize <= 2:
        return np.dtype(np.float32)
    if dtype.kind == "c":
        raise ValueError(f"complex data ({dtype}) cannot be reduced: take abs() first")
    return np.dtype(np.float64)


@dataclass(frozen=True)
class _Plan:
    """How one frame block is cut for BLAS (see the module docstring)."""

    mask_groups: tuple[np.ndarray, ...]   # each (pixels, ≤4) Fortran, compute dtype
    group_slices: tuple[slice, ...]       # columns of the output for each group
    pixel_blocks: tuple[slice, ...]
    frames_per_step: int
    threshold: float | None
    vectors: tuple[np.ndarray, ...] = ()  # one contiguous (pixels,) row per mask: the gemv path
    kernel: Any = None                    # the compiled one-pass loop, with its masks (k, pixels) float32
    kernel_masks: np.ndarray | None = None
    kernel_layout: tuple = ()             # (key, bounds) of kernels.kernel_layout: the masks of each piece

    def __dask_tokenize__(self) -> tuple:
        # without this dask would hash the plan by pickling it, compiled loop included: ~10 ms
        # per block, more than the block's own reduction
        import hashlib

        digest = hashlib.sha1()
        for group in self.mask_groups:
            digest.update(np.ascontiguousarray(group).tobytes())
        return ("engine-plan", digest.hexdigest(), str(self.mask_groups[0].dtype), self.frames_per_step,
                self.threshold, len(self.vectors), self.kernel is not None, len(self.pixel_blocks))

    def __getstate__(self) -> dict:
        # sent to dask workers without the compiled loop: each worker compiles (or reuses) its own
        state = dict(self.__dict__)
        state["kernel"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        for key, value in state.items():
            object.__setattr__(self, key, value)
        if state.get("kernel_masks") is not None:
            object.__setattr__(self, "kernel", compiled_kernel(state["kernel_layout"][0]))


def _make_plan(masks: np.ndarray, dtype: np.dtype, threshold: float | None) -> _Plan:
    n_masks = masks.shape[0]
    flat = masks.reshape(n_masks, -1).T.astype(dtype)  # (pixels, n_masks)
    n_pixels = flat.shape[0]
    block = min(n_pixels, _PIXEL_BLOCK)
    pixel_blocks = tuple(slice(s, min(s + block, n_pixels)) for s in range(0, n_pixels, block))
    group = max(1, min(_MASK_GROUP, n_masks, _SMALL_GEMM_LIMIT // block))
    slices = tuple(slice(s, min(s + group, n_masks)) for s in range(0, n_masks, group))
    groups = tuple(np.asfortranarray(flat[:, s]) for s in slices)
    steps = max(1, _SMALL_GEMM_LIMIT // (block * group))
    vectors: tuple[np.ndarray, ...] = ()
    if n_masks <= _GEMV_MASKS and len(pixel_blocks) == 1:
        vectors = tuple(np.ascontiguousarray(flat[:, j]) for j in range(n_masks))
        steps = max(1, _GEMV_BYTES // (n_pixels * np.dtype(dtype).itemsize))
    kernel, kernel_masks, layout = None, None, ()
    if USE_COMPILED and dtype == np.float32 and n_masks <= _KERNEL_MASKS and len(pixel_blocks) == 1:
        key, bounds = kernel_layout(masks)
        kernel = compiled_kernel(key)
        if kernel is not None:
            kernel_masks = np.ascontiguousarray(flat.T)
            layout = (key, bounds)
            if threshold is None:  # one pass, nothing kept in the cache between masks: longer runs
                steps = max(1, _TASK_BYTES // (n_pixels * 4))
    return _Plan(groups, slices, pixel_blocks, steps, threshold, vectors, kernel, kernel_masks, layout)


def _reduce_frames(frames: np.ndarray, plan: _Plan, out: np.ndarray) -> None:
    """``out[i, j] = Σ_p frames[i, p] · masks[j, p]``; frames (n, pixels), out (n, m) float64."""
    with np.errstate(over="ignore", invalid="ignore"):  # float32 overflow: redone in float64 by the caller
        _reduce_frames_unchecked(frames, plan, out)


def _reduce_frames_unchecked(frames: np.ndarray, plan: _Plan, out: np.ndarray) -> None:
    dtype = plan.mask_groups[0].dtype
    step = plan.frames_per_step
    single_block = len(plan.pixel_blocks) == 1
    # the compiled loop reads integers and float32 as they are; a threshold needs them cast
    direct = plan.kernel is not None and frames.dtype.name in _KERNEL_INPUTS and plan.threshold is None
    for start in range(0, frames.shape[0], step):
        chunk = frames[start:start + step]
        if chunk.dtype != dtype and not direct:
            chunk = chunk.astype(dtype)
        if plan.threshold is not None:
            # Per-pattern threshold: pixels below threshold × the pattern's maximum count 0.
            peak = chunk.max(axis=1, keepdims=True)
            chunk = np.where(chunk >= plan.threshold * peak, chunk, 0).astype(dtype, copy=False)
        rows = out[start:start + chunk.shape[0]]
        if plan.kernel is not None:
            plan.kernel(np.ascontiguousarray(chunk), plan.kernel_masks, plan.kernel_layout[1], rows)
            continue
        if plan.vectors:
            for j, vector in enumerate(plan.vectors):
                rows[:, j] = chunk @ vector
            continue
        for cols, group in zip(plan.group_slices, plan.mask_groups):
            if single_block:
                rows[:, cols] = chunk @ group
            else:
                acc = np.zeros((chunk.shape[0], group.shape[1]), dtype=np.float64)
                for pix in plan.pixel_blocks:
                    acc += chunk[:, pix] @ group[pix]
                rows[:, cols] = acc


def _reduce_block(block: np.ndarray, plan: _Plan) -> np.ndarray:
    """A block ``(a, b, det_y, det_x)`` → ``(a, b, 1, n_masks)`` float64 (dask task).

    The output keeps four axes: with ``drop_axis`` dask would first concatenate (copy)
    every input block along the dropped axes, a full extra pass over the data."""
    a, b = block.shape[:2]
    frames = np.asarray(block).reshape(a * b, -1)
    out = np.empty((a * b, sum(g.shape[1] for g in plan.mask_groups)), dtype=np.float64)
    with single_blas_thread():
        _reduce_frames(frames, plan, out)
    return out.reshape(a, b, 1, -1)


# -- drivers ---------------------------------------------------------------------------
def _is_dask(data: Any) -> bool:
    return type(data).__module__.split(".")[0] == "dask"


def _reduce_numpy(data: np.ndarray, plan: _Plan, n_threads: int) -> np.ndarray:
    ny, nx, ky, kx = data.shape
    n_masks = sum(g.shape[1] for g in plan.mask_groups)
    out = np.empty((ny, nx, n_masks), dtype=np.float64)
    frame_bytes = ky * kx * data.dtype.itemsize
    per_task = max(1, _TASK_BYTES // max(frame_bytes, 1))
    # Tasks are runs of frames inside one scan row, so a non-contiguous view (a crop)
    # is copied a few MB at a time, never as a whole.
    tasks = [(iy, x0, min(x0 + per_task, nx)) for iy in range(ny) for x0 in range(0, nx, per_task)]

    def run(task: tuple[int, int, int]) -> None:
        iy, x0, x1 = task
        frames = data[iy, x0:x1].reshape(x1 - x0, ky * kx)
        _reduce_frames(frames, plan, out[iy, x0:x1])

    with single_blas_thread():
        if n_threads <= 1 or len(tasks) == 1:
            for task in tasks:
                run(task)
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=n_threads) as pool:
                for _ in pool.map(run, tasks):
                    pass
    return out


def _reduce_dask(data: Any, plan: _Plan, client: Any, progress: Any = None) -> np.ndarray:
    import dask.array as da

    darr = data if _is_dask(data) else da.from_array(data, chunks=_chunks_for(data))
    ky, kx = darr.shape[2:]
    if len(darr.chunks[2]) > 1 or len(darr.chunks[3]) > 1:
        # Whole patterns per chunk (a no-op for data written by our readers).
        darr = darr.rechunk({2: -1, 3: -1})
    n_masks = sum(g.shape[1] for g in plan.mask_groups)
    reduced = darr.map_blocks(
        _reduce_block, plan, dtype=np.float64,
        chunks=(darr.chunks[0], darr.chunks[1], (1,), (n_masks,)),
        meta=np.empty((0, 0, 0, 0), dtype=np.float64),
    )
    if client is None:
        # Local threads share this process's BLAS: limit it once for the whole pass.
        with single_blas_thread():
            return np.asarray(reduced.compute())[:, :, 0, :]
    own_client = None
    if isinstance(client, str):
        from distributed import Client

        own_client = client = Client(client)
    try:
        if progress is None:
            return np.asarray(client.compute(reduced).result())[:, :, 0, :]
        from distributed import as_completed, futures_of

        # the blocks' futures, watched as they finish (a progress bar over the cluster's tasks)
        persisted = client.persist(reduced)
        futures = futures_of(persisted)
        progress(0, len(futures))
        for done, _ in enumerate(as_completed(futures), 1):
            progress(done, len(futures))
        return np.asarray(client.compute(persisted).result())[:, :, 0, :]
    finally:
        if own_client is not None:
            own_client.close()


def _chunks_for(data: Any) -> Any:
    from ..dataset import default_chunks

    return default_chunks(tuple(data.shape), data.dtype)


def reduce_masks(
    data: Any,
    masks: MaskStack | Mapping[str, Any],
    *,
    threshold: float | None = None,
    client: Any = None,
    n_threads: int | None = None,
    precision: str = "auto",
    nonfinite: str = "raise",
    progress: Any = None,
) -> dict[str, np.ndarray]:
    """Weighted sums of every diffraction pattern with every mask, in one pass.

    Parameters
    ----------
    data
        4D array ``(scan_y, scan_x, det_y, det_x)``: numpy (also ``np.memmap``), a dask
        array (lazy; may be far larger than memory), or a :class:`~..dataset.Dataset4D`.
        Never modified.
    masks
        A :class:`MaskStack` or ``{name: (det_y, det_x) weights}``.
    threshold
        Optional per-pattern intensity threshold, a fraction in [0, 1): in each pattern,
        pixels below ``threshold × (that pattern's maximum)`` are ignored.
    client
        ``None`` (numpy data: a local thread pool; dask data: dask's current scheduler),
        a ``dask.distributed.Client``, or the address of a scheduler
        (``"tcp://host:8786"``; a client is opened and closed for this call).
    n_threads
        Threads of the in-memory path (default: the usable CPU cores, at most 8).
    nonfinite
        ``"raise"``: a pattern holding NaN or Inf where the masks read it is a ValueError
        naming its position (the compiled loop does not read the pixels outside the run of a
        mask that fits in half the detector's rows, :mod:`.kernels`: a NaN there leaves that
        mask's sum finite, and right);
        ``"nan"``: its sums are NaN, with a warning naming the positions (maps over the whole
        scan); ``"keep"``: left as they are, for the caller to handle.
    precision
        ``"auto"`` (float32 products for ≤ 32-bit float and ≤ 16-bit integer data,
        float64 otherwise), ``"float32"`` or ``"float64"``. Results are always float64.
    progress
        With ``client``: called as ``progress(done, total)`` while the cluster's tasks finish
        (``done`` from 0 to ``total`` blocks), in the calling thread.

    Returns
    -------
    ``{name: (scan_y, scan_x) float64 image}``, in the units of the data × mask weights.

    Raises
    ------
    ValueError
        Bad shapes or parameters, or NaN/Inf pixels in the data (which would silently
        poison every mask) — with the first affected probe position.
    """
    data = as_array(data)
    stack = masks if isinstance(masks, MaskStack) else MaskStack.from_dict(masks)
    shape = tuple(int(s) for s in data.shape)
    if len(shape) != 4:
        raise ValueError(
            f"data must have 4 axes (scan_y, scan_x, det_y, det_x), got shape {shape}"
        )
    if stack.det_shape != shape[2:]:
        raise ValueError(
            f"masks have detector shape {stack.det_shape} but the patterns are {shape[2:]}"
        )
    if threshold is not None and not (0 <= float(threshold) < 1):
        raise ValueError(
            f"threshold must be a fraction of each pattern's maximum in [0, 1), got {threshold!r}"
        )
    if n_threads is not None and int(n_threads) < 1:
        raise ValueError(f"n_threads must be at least 1, got {n_threads!r}")
    dtype = compute_dtype_for(data.dtype, precision)
    # identical masks (a COM pass's total and a "sum" image, say) are reduced once
    weights, copies = _distinct(stack.masks)
    plan = _make_plan(weights, dtype, None if threshold is None else float(threshold))
    threads = default_threads() if n_threads is None else int(n_threads)

    def reduce(plan: _Plan) -> np.ndarray:
        if client is None and isinstance(data, np.ndarray):
            return _reduce_numpy(data, plan, threads)
        return _reduce_dask(data, plan, client, progress if client is not None else None)

    values = reduce(plan)
    if dtype != np.float64 and not np.all(np.isfinite(values)):
        # Finite float32 data near its range (~3e38) overflow float32 sums: redo the pass in
        # float64 before calling any pattern non-finite.
        values = reduce(_make_plan(weights, np.float64, plan.threshold))
    if copies is not None:
        values = values[..., copies]
    if nonfinite == "raise":
        check_finite(values, "data")
    elif nonfinite == "nan":
        values = mark_nonfinite(values)
    elif nonfinite != "keep":
        raise ValueError(f"nonfinite must be 'raise', 'nan' or 'keep', got {nonfinite!r}")
    return {name: values[..., i] for i, name in enumerate(stack.names)}


def _distinct(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(distinct masks, index of each given mask among them)``, or ``(masks, None)`` when
    no two are equal."""
    flat = masks.reshape(masks.shape[0], -1)
    first: dict[bytes, int] = {}  # a mask's bytes → the position of its first copy
    index = np.array([first.setdefault(row.tobytes(), len(first)) for row in flat])
    if len(first) == len(flat):
        return masks, None
    return masks[np.unique(index, return_index=True)[1]], index


def mark_nonfinite(values: np.ndarray) -> np.ndarray:
    """``(scan_y, scan_x, n)`` sums: positions where any is NaN/Inf become NaN in all, with a
    warning naming them."""
    import warnings

    bad = ~np.isfinite(values).all(axis=-1)
    if bad.any():
        values = values.copy()
        values[bad] = np.nan
        where = ", ".join(f"({int(r)}, {int(c)})" for r, c in np.argwhere(bad)[:5])
        more = f" and {int(bad.sum()) - 5} more" if bad.sum() > 5 else ""
        warnings.warn(f"{int(bad.sum())} pattern(s) hold NaN or Inf pixels, at scan positions {where}{more}: "
                      "NaN in the images (repair or exclude them)", stacklevel=3)
    return values


def check_finite(values: np.ndarray, what: str) -> None:
    """Raise a ValueError naming the first probe position whose reduction is not finite."""
    bad = ~np.isfinite(values)
    if bad.any():
        if bad.ndim > 2:
            bad = bad.any(axis=tuple(range(2, bad.ndim)))
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{what} contain NaN or Inf pixels: {int(bad.sum())} pattern(s) affected, the first "
            f"at scan position {first}; expected finite intensities. Repair them first "
            f"(processing.repair_bad_pixels) or replace them (numpy.nan_to_num)."
        )


def iter_frame_blocks(data: Any, target_bytes: int = 64 * 2**20,
                      ) -> Iterator[tuple[tuple[slice, slice], np.ndarray]]:
    """Yield ``((rows, cols), block)`` numpy blocks of whole patterns covering the scan.

    Dask data are read one chunk (or group of scan rows) at a time, so memory stays
    bounded by ``target_bytes`` plus one chunk.
    """
    shape = tuple(int(s) for s in data.shape)
    ny, nx, ky, kx = shape
    frame_bytes = ky * kx * np.dtype(data.dtype).itemsize
    if _is_dask(data):
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
    data = _mapped_source(data) if _is_dask(data) else data
    ny, nx = int(data.shape[0]), int(data.shape[1])
    rows = np.unique(np.linspace(0, ny - 1, min(ny, max_rows)).round().astype(int))
    per_row = max(1, max_frames // len(rows))
    step = max(1, int(np.ceil(nx / per_row)))
    small = data.dtype.itemsize <= 4 and data.dtype.kind in "fiub"
    # ≤ 4-byte data summed in float32 (≤ max_frames patterns: ample for finding the disk, and
    # 2-3× faster than a float64 sum); a NaN/Inf shows in the sum
    sampled = len(rows) * len(range(0, nx, step)) * int(np.prod(data.shape[2:])) * data.dtype.itemsize
    if _is_dask(data) and sampled <= 64 * 2**20:
        import dask

        # one graph of plain slices: the sampled rows of a lazy file read in one go
        picked: Any = dask.compute(*[data[int(r), ::step] for r in rows])
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


def _mapped_source(data: Any) -> Any:
    """The array in memory or mapped from a file under a dask array that is nothing but
    ``dask.array.from_array`` of it (a numpy array, ``np.memmap`` or the readers'
    ``MemmapSource``): sampling a few hundred patterns from it directly skips dask's ~1 ms per
    slice (~8 ms for the eight scan rows of a sample, a quarter of a 1 GB COM pass). Anything
    else (a file read through h5py or zarr, a computed array): ``data`` itself."""
    try:
        layers = data.__dask_graph__().layers
        if len(layers) != 2:
            return data
        original = [dict(layer) for name, layer in layers.items() if name.startswith("original-array-")]
        if len(original) != 1 or len(original[0]) != 1:
            return data
        source = next(iter(original[0].values()))
    except Exception:  # pragma: no cover - another dask graph layout: sample through dask
        return data
    if not isinstance(source, np.ndarray):
        from ..io.common import MemmapSource

        if not isinstance(source, MemmapSource):
            return data
    if tuple(source.shape) == tuple(data.shape) and np.dtype(source.dtype) == data.dtype:
        return source
    return data


def _computed(value: Any) -> Any:
    return value.compute() if hasattr(value, "compute") else value


def as_array(data: Any) -> Any:
    """The array inside a Dataset4D, or the argument itself."""
    return data.data if hasattr(data, "calibration") and hasattr(data, "data") else data

