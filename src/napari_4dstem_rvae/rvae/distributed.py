"""Encoding every pattern of a scan on a ``dask.distributed`` cluster.

The trained model is one node of the task graph, sent once to each worker that needs it;
the patterns stay where dask reads them: each block of scan rows is read on a worker and
encoded there (one torch thread per worker), and only the posterior parameters (a few
numbers per pattern, and the residuals of the novelty map when asked) come back. Tasks are
pure, so a worker lost during encoding costs a retry on another worker, not the run.

The maps are the same as :func:`.infer.encode` on one process (same model, same
per-pattern arithmetic; tested to float32 rounding).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .infer import LatentMaps, encode_batch, maps_from, novelty_pixels, scan_step_angstrom

#: Scan rows per task are chosen so that a task holds about this many bytes of patterns (a
#: worker holds a few tasks' patterns at a time, besides torch's ~0.2 GB).
TASK_BYTES = 8 * 2**20


def _encode_block(block: np.ndarray, model: Any, pixels: Any, novelty: bool, per_batch: int) -> dict:
    """One block of scan rows ``(rows, scan_x, det_y, det_x)`` → its :func:`.infer.encode_batch`
    values, and the block's positions whose patterns hold NaN/Inf (encoded as zeros)."""
    import torch

    from .runtime import set_torch_threads

    set_torch_threads(1)
    a, b, ky, kx = block.shape
    frames = np.asarray(block, np.float32).reshape(a * b, ky, kx)
    finite = np.isfinite(frames).all(axis=(1, 2))
    if not finite.all():
        frames = np.where(np.isfinite(frames), frames, 0.0).astype(np.float32)
    parts: dict[str, list] = {}
    model.eval()
    with torch.no_grad():
        for start in range(0, len(frames), per_batch):
            for key, value in encode_batch(model, frames[start:start + per_batch], novelty, pixels).items():
                parts.setdefault(key, []).append(value)
    out = {key: np.concatenate(values) for key, values in parts.items()}
    out["bad"] = np.flatnonzero(~finite)
    return out


def submit_encoding(model: Any, data: Any, client: Any, *, batch_size: int = 256, novelty: bool = False,
                    retries: int = 3) -> tuple[list, Any]:
    """Put the encoding of every pattern of ``data`` on the workers of ``client`` and return at
    once: ``(futures, assemble)``, one future per block of scan rows (watch them finish, e.g.
    with ``distributed.as_completed``, for a progress bar) and ``assemble(futures)``, which
    gathers them into the :class:`LatentMaps` of :func:`encode_on_cluster`."""
    import dask
    import dask.array as da

    array = getattr(data, "data", data)
    if not hasattr(array, "dask"):
        array = da.from_array(np.asarray(array), chunks=(1, -1, -1, -1))
    sy, sx, ky, kx = array.shape
    if (ky, kx) != tuple(model.det_shape):
        raise ValueError(f"data have patterns of {(ky, kx)} pixels; the model was trained on {model.det_shape}")
    row_bytes = sx * ky * kx * 4
    rows = int(max(1, min(sy, TASK_BYTES // max(row_bytes, 1))))
    array = array.rechunk((rows, -1, -1, -1))
    pixels = novelty_pixels(model, sy * sx) if novelty else None  # the same subset as encode()
    model = model.to("cpu").eval()
    # the model is one node of the graph (not scattered data): the scheduler holds it, sends it
    # to each worker once, and can send it again to a worker that was restarted
    node = dask.delayed(model, pure=True, traverse=False)
    encode_block = dask.delayed(_encode_block, pure=True)
    # read → (bin) → encode fused per block: only the small results wait on the workers
    tasks = [encode_block(block, node, pixels, novelty, batch_size) for block in array.to_delayed().ravel()]
    futures = client.compute(tasks, retries=retries)

    def assemble(done: list) -> LatentMaps:
        parts = client.gather(done)
        values = {key: np.concatenate([p[key] for p in parts]) for key in parts[0] if key != "bad"}
        offsets = np.cumsum([0] + [len(p["angle"]) for p in parts])
        bad = np.concatenate([p["bad"] + o for p, o in zip(parts, offsets[:-1])]).astype(np.int64)
        return maps_from(values, (sy, sx), model, bad, scan_step_angstrom(data))

    return futures, assemble


def encode_on_cluster(model: Any, data: Any, client: Any, *, batch_size: int = 256, novelty: bool = False,
                      retries: int = 3, submitted: Any = None) -> LatentMaps:
    """:func:`.infer.encode` with the patterns read and encoded on the workers of ``client``
    (a ``distributed.Client``). ``data``: Dataset4D, numpy or dask array
    ``(scan_y, scan_x, det_y, det_x)``. ``submitted``: called with the list of futures once
    the work is on the cluster (e.g. ``distributed.progress`` for a progress bar)."""
    futures, assemble = submit_encoding(model, data, client, batch_size=batch_size, novelty=novelty,
                                        retries=retries)
    if submitted is not None:
        submitted(futures)
    return assemble(futures)
