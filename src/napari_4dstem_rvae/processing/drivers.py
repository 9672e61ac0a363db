"""The drivers of :func:`.engine.reduce_masks`: one planned product (:class:`.engine._Plan`)
run over a block of frames, over an array in memory on a small thread pool, and over a dask
array chunk by chunk, on the local scheduler or a ``dask.distributed`` cluster.

How a block is cut (the compiled loop, matrix–vector runs, mask groups, pixel blocks) and
why is told in :mod:`.engine`; this module follows the plan it is given. Nothing here
imports dask at module level.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from .arrays import is_dask

#: The plan a driver follows (:class:`.engine._Plan`; named here only in annotations, so that
#: the engine and its drivers do not import each other).
_Plan = Any

#: Frames handed to one thread of the in-memory path at a time (bytes).
TASK_BYTES = 8 * 2**20
#: Input types the compiled kernel reads as they are (others are cast to float32 first).
KERNEL_INPUTS = ("float32", "uint8", "uint16", "int8", "int16")


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


# -- one block of frames ---------------------------------------------------------------
def reduce_frames(frames: np.ndarray, plan: _Plan, out: np.ndarray) -> None:
    """``out[i, j] = Σ_p frames[i, p] · masks[j, p]``; frames (n, pixels), out (n, m) float64."""
    with np.errstate(over="ignore", invalid="ignore"):  # float32 overflow: redone in float64 by the caller
        _reduce_frames_unchecked(frames, plan, out)


def _reduce_frames_unchecked(frames: np.ndarray, plan: _Plan, out: np.ndarray) -> None:
    dtype = plan.mask_groups[0].dtype
    step = plan.frames_per_step
    single_block = len(plan.pixel_blocks) == 1
    # the compiled loop reads integers and float32 as they are; a threshold needs them cast
    direct = plan.kernel is not None and frames.dtype.name in KERNEL_INPUTS and plan.threshold is None
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


def reduce_block(block: np.ndarray, plan: _Plan) -> np.ndarray:
    """A block ``(a, b, det_y, det_x)`` → ``(a, b, 1, n_masks)`` float64 (dask task).

    The output keeps four axes: with ``drop_axis`` dask would first concatenate (copy)
    every input block along the dropped axes, a full extra pass over the data."""
    a, b = block.shape[:2]
    frames = np.asarray(block).reshape(a * b, -1)
    out = np.empty((a * b, sum(g.shape[1] for g in plan.mask_groups)), dtype=np.float64)
    with single_blas_thread():
        reduce_frames(frames, plan, out)
    return out.reshape(a, b, 1, -1)


# -- drivers ---------------------------------------------------------------------------
def _throttled(progress: Any, total: int) -> Any:
    """``progress(done, total)`` called at the start, about every 1 % and at the end."""
    if progress is None:
        return None
    step = max(1, total // 100)
    progress(0, total)

    def report(done: int) -> None:
        if done == total or done % step == 0:
            progress(done, total)
    return report


def reduce_numpy(data: np.ndarray, plan: _Plan, n_threads: int, progress: Any = None) -> np.ndarray:
    """An array in memory (also ``np.memmap``) → ``(scan_y, scan_x, n_masks)`` float64,
    runs of frames within a scan row spread over ``n_threads`` threads; ``progress(done,
    total)`` follows those runs."""
    ny, nx, ky, kx = data.shape
    n_masks = sum(g.shape[1] for g in plan.mask_groups)
    out = np.empty((ny, nx, n_masks), dtype=np.float64)
    frame_bytes = ky * kx * data.dtype.itemsize
    per_task = max(1, TASK_BYTES // max(frame_bytes, 1))
    # Tasks are runs of frames inside one scan row, so a non-contiguous view (a crop)
    # is copied a few MB at a time, never as a whole.
    tasks = [(iy, x0, min(x0 + per_task, nx)) for iy in range(ny) for x0 in range(0, nx, per_task)]

    def run(task: tuple[int, int, int]) -> None:
        iy, x0, x1 = task
        frames = data[iy, x0:x1].reshape(x1 - x0, ky * kx)
        reduce_frames(frames, plan, out[iy, x0:x1])

    report = _throttled(progress, len(tasks))
    with single_blas_thread():
        if n_threads <= 1 or len(tasks) == 1:
            for done, task in enumerate(tasks, 1):
                run(task)
                if report is not None:
                    report(done)
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=n_threads) as pool:
                for done, _ in enumerate(pool.map(run, tasks), 1):
                    if report is not None:
                        report(done)
    return out


def reduce_dask(data: Any, plan: _Plan, client: Any, progress: Any = None) -> np.ndarray:
    """A dask array (or anything dask can wrap) → ``(scan_y, scan_x, n_masks)`` float64, on
    dask's current scheduler or, with ``client`` (a client or a scheduler address), on a
    cluster; ``progress(done, total)`` follows the blocks as they are reduced (here or on the
    cluster)."""
    import dask.array as da

    darr = data if is_dask(data) else da.from_array(data, chunks=_chunks_for(data))
    if len(darr.chunks[2]) > 1 or len(darr.chunks[3]) > 1:
        # Whole patterns per chunk (a no-op for data written by our readers).
        darr = darr.rechunk({2: -1, 3: -1})
    n_masks = sum(g.shape[1] for g in plan.mask_groups)
    reduced = darr.map_blocks(
        reduce_block, plan, dtype=np.float64,
        chunks=(darr.chunks[0], darr.chunks[1], (1,), (n_masks,)),
        meta=np.empty((0, 0, 0, 0), dtype=np.float64),
    )
    if client is None:
        # Local threads share this process's BLAS: limit it once for the whole pass.
        with single_blas_thread(), _BlocksDone(reduced, progress):
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


class _BlocksDone:
    """A dask callback counting the reduced blocks of a local pass (``progress(done, total)``
    from dask's worker threads), or nothing without ``progress``."""

    def __init__(self, reduced: Any, progress: Any):
        self.name, self.total, self.progress = reduced.name, int(np.prod(reduced.numblocks)), progress
        self.done, self.callback = 0, None

    def __enter__(self) -> None:
        if self.progress is None:
            return
        from dask.callbacks import Callback

        report = _throttled(self.progress, self.total)

        def posttask(key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
            if isinstance(key, tuple) and key and key[0] == self.name:
                self.done += 1
                report(self.done)

        self.callback = Callback(posttask=posttask)
        self.callback.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self.callback is not None:
            self.callback.__exit__(*exc)


def _chunks_for(data: Any) -> Any:
    from ..dataset import default_chunks

    return default_chunks(tuple(data.shape), data.dtype)
