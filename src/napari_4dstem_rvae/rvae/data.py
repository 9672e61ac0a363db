"""Access to patterns for training and inference: numpy in place, dask streamed by scan rows;
the train/test split, the training source (in memory or streamed) and the data scale.

A pattern is addressed by its flat probe index ``i = row · scan_x + col``. Numpy data are
indexed directly (no copy of the whole array); dask data are read one block of scan rows
at a time (about ``block_bytes``), so nothing larger than a block is ever held for them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..dataset import Calibration, Dataset4D

#: Bytes of patterns read from lazy data at a time.
BLOCK_BYTES = 64 * 2**20
#: Training sets of lazy data up to this size are read into memory once; larger ones are
#: streamed from the dask array every epoch, a few blocks of scan rows at a time.
IN_MEMORY_BYTES = 2 * 2**30
#: Blocks of scan rows shuffled together when streaming.
SHUFFLE_BLOCKS = 4


@dataclass
class Patterns:
    """A 4D array (numpy or dask) with what the rVAE needs to know about it."""

    array: Any
    calibration: Calibration | None = None
    provenance: tuple[dict[str, Any], ...] = ()
    source: str | None = None

    @property
    def scan_shape(self) -> tuple[int, int]:
        return int(self.array.shape[0]), int(self.array.shape[1])

    @property
    def det_shape(self) -> tuple[int, int]:
        return int(self.array.shape[2]), int(self.array.shape[3])

    @property
    def n_positions(self) -> int:
        return self.scan_shape[0] * self.scan_shape[1]

    @property
    def n_det(self) -> int:
        return self.det_shape[0] * self.det_shape[1]

    @property
    def is_lazy(self) -> bool:
        return not isinstance(self.array, np.ndarray)

    def rows_per_block(self, block_bytes: int = BLOCK_BYTES) -> int:
        row_bytes = self.scan_shape[1] * self.n_det * 4
        return int(max(1, min(self.scan_shape[0], block_bytes // max(row_bytes, 1))))

    def flat(self) -> np.ndarray:
        """``(n_positions, n_det)`` view of numpy data (no copy for contiguous arrays)."""
        return self.array.reshape(self.n_positions, self.n_det)

    def take(self, index: np.ndarray) -> np.ndarray:
        """float32 ``(len(index), n_det)`` patterns at the flat probe indices (numpy data)."""
        out = self.flat()[np.asarray(index)]
        return np.asarray(out, dtype=np.float32)

    def iter_blocks(self, rows: int | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(first_index, stop_index, float32 (n, n_det) patterns)`` for blocks of whole scan rows."""
        rows = rows or self.rows_per_block()
        nx = self.scan_shape[1]
        for r0 in range(0, self.scan_shape[0], rows):
            r1 = min(self.scan_shape[0], r0 + rows)
            block = self.array[r0:r1]
            if hasattr(block, "compute"):
                block = block.compute()
            block = np.asarray(block, dtype=np.float32).reshape((r1 - r0) * nx, self.n_det)
            yield r0 * nx, r1 * nx, block

    def read(self, index: np.ndarray) -> np.ndarray:
        """float32 patterns at sorted-or-not flat indices, reading lazy data block by block."""
        index = np.asarray(index, dtype=np.int64)
        if not self.is_lazy:
            return self.take(index)
        out = np.empty((index.size, self.n_det), dtype=np.float32)
        order = np.argsort(index, kind="stable")
        sorted_index = index[order]
        nx = self.scan_shape[1]
        rows = self.rows_per_block()
        for r0 in range(0, self.scan_shape[0], rows):
            r1 = min(self.scan_shape[0], r0 + rows)
            lo, hi = np.searchsorted(sorted_index, [r0 * nx, r1 * nx])
            if hi <= lo:
                continue
            wanted = sorted_index[lo:hi]
            rows_needed = np.unique(wanted // nx)
            block = self.array[int(rows_needed[0]):int(rows_needed[-1]) + 1]
            if hasattr(block, "compute"):
                block = block.compute()
            block = np.asarray(block, dtype=np.float32).reshape(-1, self.n_det)
            out[order[lo:hi]] = block[wanted - rows_needed[0] * nx]
        return out


def as_patterns(data: Any) -> Patterns:
    """Wrap a :class:`Dataset4D`, a numpy array or a dask array ``(scan_y, scan_x, det_y, det_x)``."""
    if isinstance(data, Patterns):
        return data
    if isinstance(data, Dataset4D):
        patterns = Patterns(data.data, data.calibration, tuple(data.provenance), data.source)
    else:
        if not (hasattr(data, "shape") and hasattr(data, "dtype")):
            data = np.asarray(data)
        patterns = Patterns(data)
    shape = tuple(patterns.array.shape)
    if len(shape) != 4:
        raise ValueError(f"data must have 4 axes (scan_y, scan_x, det_y, det_x); got shape {shape}")
    if 0 in shape:
        raise ValueError(f"data has an empty axis: shape {shape}")
    if np.dtype(patterns.array.dtype).kind not in "uif":
        raise ValueError(f"data must be numeric; got dtype {patterns.array.dtype}")
    return patterns


def check_finite(block: np.ndarray, first_index: int, scan_x: int, index: np.ndarray | None = None) -> None:
    """ValueError naming the first probe position whose pattern holds NaN or Inf."""
    bad = ~np.isfinite(block).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        flat = int(index[i]) if index is not None else first_index + i
        raise ValueError(
            f"data: {int(bad.sum())} pattern(s) contain NaN or Inf values (the first at probe "
            f"position (row {flat // scan_x}, col {flat % scan_x})); repair or exclude them "
            f"(e.g. with the training mask) before training"
        )


def n_test_of(n_chosen: int, test_fraction: float) -> int:
    """Test positions held out of ``n_chosen``: ``test_fraction`` of them, leaving at least one
    for training."""
    return max(0, min(int(round(test_fraction * n_chosen)), n_chosen - 1))


def split_positions(roi_mask: np.ndarray | None, n_positions: int, test_fraction: float,
                    seed: int, scan_shape: tuple[int, int] | None = None,
                    max_positions: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted flat indices of the training and test positions (``numpy.random.default_rng(seed)``).

    With ``max_positions`` smaller than the region (a huge scan), a subsample of that size
    stratified over the scan (:func:`stratified_sample`) is split instead."""
    chosen = np.arange(n_positions) if roi_mask is None else np.flatnonzero(roi_mask.ravel())
    rng = np.random.default_rng(seed)
    if max_positions is not None and chosen.size > max_positions:
        if scan_shape is None:
            raise ValueError("split_positions: a subsample needs the scan shape")
        chosen = stratified_sample(chosen, scan_shape, int(max_positions), rng)
    order = rng.permutation(chosen)
    n_test = n_test_of(chosen.size, test_fraction)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def stratified_sample(chosen: np.ndarray, scan_shape: tuple[int, int], size: int,
                      rng: np.random.Generator) -> np.ndarray:
    """``size`` of the flat positions ``chosen``, spread evenly over the scan: the scan is cut
    into square tiles of about ``len(chosen) / size`` positions, the positions of each tile
    are shuffled, and the sample takes every tile's first position, then every tile's second,
    … (in random order within each round) — so no tile gets a second sample before every tile
    has one. Sorted flat indices."""
    size = max(1, min(int(size), chosen.size))
    ny, nx = int(scan_shape[0]), int(scan_shape[1])
    side = max(1, int(np.floor(np.sqrt(chosen.size / size))))
    tile = (chosen // nx // side) * (-(-nx // side)) + (chosen % nx) // side
    shuffled = rng.permutation(chosen.size)
    by_tile = shuffled[np.argsort(tile[shuffled], kind="stable")]    # shuffled within each tile
    tiles = tile[by_tile]
    starts = np.searchsorted(tiles, tiles, side="left")
    round_ = np.arange(by_tile.size) - starts                        # 0 for each tile's first, …
    order = np.lexsort((rng.random(by_tile.size), round_))
    return np.sort(chosen[by_tile[order[:size]]])


class TrainingSource:
    """Training patterns: in memory (numpy view or a loaded copy) or streamed from dask."""

    def __init__(self, patterns: Patterns, train_index: np.ndarray):
        self.patterns = patterns
        self.train_index = train_index
        nbytes = train_index.size * patterns.n_det * 4
        self.streamed = patterns.is_lazy and nbytes > IN_MEMORY_BYTES
        self.memory: torch.Tensor | None = None
        self.lookup: np.ndarray | None = None      # flat index → row of `memory` (loaded copies)
        self.cache: dict[int, tuple[int, torch.Tensor]] = {}
        nx = patterns.scan_shape[1]
        if not patterns.is_lazy and patterns.array.dtype == np.float32 and patterns.array.flags.c_contiguous:
            # zero copy: index the user's array directly
            self.memory = torch.from_numpy(patterns.flat())
        elif not self.streamed:
            loaded = patterns.read(train_index)
            check_finite(loaded, 0, nx, train_index)
            self.memory = torch.from_numpy(loaded)
            self.lookup = np.full(patterns.n_positions, -1, np.int64)
            self.lookup[train_index] = np.arange(train_index.size)
        self.rows = patterns.rows_per_block()
        # block number of every training position (blocks of `rows` scan rows)
        self.block_of = (train_index // nx) // self.rows

    def epoch_plan(self, generator: torch.Generator) -> torch.Tensor:
        """Order of the training positions for one epoch (flat probe indices)."""
        n = self.train_index.size
        if not self.streamed:
            return torch.from_numpy(self.train_index)[torch.randperm(n, generator=generator)]
        # Streamed: shuffle blocks, then positions within groups of SHUFFLE_BLOCKS blocks, so a
        # batch needs only the blocks of one or two groups.
        blocks = np.unique(self.block_of)
        block_order = blocks[torch.randperm(blocks.size, generator=generator).numpy()]
        plan = []
        for g in range(0, block_order.size, SHUFFLE_BLOCKS):
            members = np.flatnonzero(np.isin(self.block_of, block_order[g:g + SHUFFLE_BLOCKS]))
            plan.append(self.train_index[members[torch.randperm(members.size, generator=generator).numpy()]])
        return torch.from_numpy(np.concatenate(plan))

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """float32 ``(B, n_det)`` patterns (CPU) at the flat probe indices."""
        if self.memory is not None:
            if self.lookup is None:
                return self.memory[index]
            return self.memory[torch.from_numpy(self.lookup[index.numpy()])]
        idx = index.numpy()
        nx = self.patterns.scan_shape[1]
        needed = np.unique((idx // nx) // self.rows)
        for block in list(self.cache):
            if block not in needed and len(self.cache) > 2 * SHUFFLE_BLOCKS:
                del self.cache[block]
        out = np.empty((idx.size, self.patterns.n_det), np.float32)
        for block in needed:
            if block not in self.cache:
                r0 = int(block) * self.rows
                r1 = min(self.patterns.scan_shape[0], r0 + self.rows)
                data = self.patterns.array[r0:r1]
                if hasattr(data, "compute"):
                    data = data.compute()
                data = np.asarray(data, dtype=np.float32).reshape(-1, self.patterns.n_det)
                check_finite(data, r0 * nx, nx)
                self.cache[int(block)] = (r0 * nx, torch.from_numpy(data))
            first, data = self.cache[int(block)]
            sel = (idx // nx) // self.rows == block
            out[sel] = data[torch.from_numpy(idx[sel] - first)].numpy()
        return torch.from_numpy(out)


def _transform(block: np.ndarray, counts: bool) -> np.ndarray:
    return 2.0 * np.sqrt(np.clip(block, 0, None) + 0.375) if counts else block


def input_statistics(patterns: Patterns, index: np.ndarray, det_mask: np.ndarray | None,
                     counts: bool = False) -> dict[str, Any]:
    """In one streamed pass over the patterns at ``index`` (lazy data block of scan rows by
    block; raises for NaN/Inf patterns): per pixel inside the mask, the mean of the
    encoder's values (``"offset"``: Anscombe-transformed for counts) and of the raw data
    (``"raw_mean"``), and the standard deviation of the centred values over pixels and
    patterns (``"std"``)."""
    nx = patterns.scan_shape[1]
    pixel = None if det_mask is None else np.flatnonzero(det_mask.ravel())

    def blocks():
        if not patterns.is_lazy:
            for start in range(0, index.size, 4096):
                chunk = index[start:start + 4096]
                yield chunk, patterns.take(chunk)
            return
        wanted = np.zeros(patterns.n_positions, bool)
        wanted[index] = True
        for first, stop, block in patterns.iter_blocks():
            keep = wanted[first:stop]
            if keep.any():
                yield np.arange(first, stop)[keep], block[keep]

    count, total, total_sq, raw = 0, 0.0, 0.0, 0.0
    for chunk, block in blocks():
        check_finite(block, 0, nx, chunk)
        if pixel is not None:
            block = block[:, pixel]
        block = block.astype(np.float64)
        values = _transform(block, counts)
        count += block.shape[0]
        total = total + values.sum(0)
        total_sq = total_sq + (values * values).sum(0)
        raw = raw + block.sum(0)
    mean = total / count
    var = np.clip(total_sq / count - mean * mean, 0.0, None)
    return {"offset": mean, "raw_mean": raw / count, "std": float(math.sqrt(var.mean()))}


def looks_like_counts(patterns: Patterns, index: np.ndarray, n_sample: int = 256, seed: int = 0) -> bool:
    """Whether the patterns are detector counts: non-negative integers (an integer dtype, or
    floats that are all whole numbers) in a sample of patterns, with a mean below 10⁴ per
    pixel (above that, Poisson noise no longer matters)."""
    if np.dtype(patterns.array.dtype).kind == "b":
        return False
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(index, size=min(n_sample, index.size), replace=False))
    x = patterns.read(sample)
    if not np.all(np.isfinite(x)) or x.min() < 0:
        return False
    if np.dtype(patterns.array.dtype).kind not in "ui" and not np.all(x == np.round(x)):
        return False
    return bool(x.mean() < 1e4)


def _eigvalsh_one_thread(matrix: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric matrix on one BLAS thread: the tridiagonal reduction is a
    chain of small matrix–vector steps, as fast on one thread (0.15 s for 1,024²) and, unlike
    several, not slowed 50–300× when another process holds the cores (measured: 77 s)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        return np.linalg.eigvalsh(matrix)


def signal_rms(patterns: Patterns, index: np.ndarray, det_mask: np.ndarray | None, seed: int,
               fallback: float, n_sample: int = 1024, n_components: int = 16, counts: bool = False,
               poisson: bool = False) -> float:
    """RMS per pixel of the signal in the patterns at ``index`` (Anscombe-transformed for
    ``counts``), from a random sample of ``n_sample`` patterns. ``fallback`` when it cannot be
    told.

    For Poisson counts (``poisson``: detector counts, whose noise variance is known) the
    variance of each pixel over the sample less its noise variance (the pixel's mean), averaged
    over the pixels (after the Anscombe transform: each pixel's through the transform's slope). Otherwise the variance
    in the leading ``n_components`` principal components above the noise floor (the median
    eigenvalue); with fewer patterns than pixels the leading noise eigenvalues stand above the
    median, so this overestimates a weak signal (2× at 10⁴ e⁻/pattern on simulated graphene,
    against 1.05× for the Poisson estimate), which is why counts use the exact noise."""
    rng = np.random.default_rng(seed + 104729)
    if index.size < 2 * n_components:
        return fallback
    sample = np.sort(rng.choice(index, size=min(n_sample, index.size), replace=False))
    x = patterns.read(sample).astype(np.float64)
    if det_mask is not None:
        x = x[:, det_mask.ravel()]
    if poisson:
        mean = np.clip(x, 0, None).mean(0)
        excess = x.var(0, ddof=1) - mean  # the signal's variance per pixel
        if counts:  # through the transform: d(2√(y + 3/8))/dy = 1/√(y + 3/8)
            excess = excess / (mean + 0.375)
        excess = float(np.mean(excess))
        if excess > 0:
            return math.sqrt(excess)
    x = _transform(x, counts)
    x -= x.mean(0)
    gram = x @ x.T                      # n × n: cheaper than the pixel covariance
    eig = np.sort(_eigvalsh_one_thread(gram))[::-1] / (len(x) - 1)
    eig = eig[:len(x) - 1]              # centring removes one dimension
    noise_floor = float(np.median(eig))
    signal = float(np.clip(eig[:n_components] - noise_floor, 0, None).sum())
    if not signal > 0:
        return fallback
    return math.sqrt(signal / x.shape[1])

