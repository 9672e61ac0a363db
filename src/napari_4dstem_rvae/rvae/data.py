"""Access to patterns for training and inference: numpy in place, dask streamed by scan rows.

A pattern is addressed by its flat probe index ``i = row · scan_x + col``. Numpy data are
indexed directly (no copy of the whole array); dask data are read one block of scan rows
at a time (about ``block_bytes``), so nothing larger than a block is ever held for them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..dataset import Calibration, Dataset4D

#: Bytes of patterns read from lazy data at a time.
BLOCK_BYTES = 64 * 2**20


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
