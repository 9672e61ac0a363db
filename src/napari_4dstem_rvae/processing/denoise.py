"""PCA denoising (scikit-learn): patterns projected on their leading principal components,
fitted in memory or incrementally over blocks of patterns when the data are larger than a
share of the machine's memory."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .sampling import iter_frame_blocks
from .preprocess import _float_dtype, _whole_patterns, as_dataset


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
