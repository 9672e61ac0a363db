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

The mask stack, the plan of a pass (with its dask token) and :func:`reduce_masks` are here;
the in-memory, dask and distributed drivers in :mod:`.drivers`, the compiled loop in
:mod:`.kernels`, and the sampled mean used to find the disk in :mod:`.sampling`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .arrays import as_array
from .drivers import TASK_BYTES, default_threads
# bound here, where reduce_masks looks them up (a caller counting passes patches these names)
from .drivers import reduce_dask as _reduce_dask
from .drivers import reduce_numpy as _reduce_numpy
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
#: Compiled one-pass kernels (numba) for float32 products with up to this many masks.
_KERNEL_MASKS = 8
#: Off: the BLAS path only (benchmarks compare the two in one run).
USE_COMPILED = True


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


# -- the plan --------------------------------------------------------------------------
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
                steps = max(1, TASK_BYTES // (n_pixels * 4))
    return _Plan(groups, slices, pixel_blocks, steps, threshold, vectors, kernel, kernel_masks, layout)


# -- the pass --------------------------------------------------------------------------
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
        Called as ``progress(done, total)`` as the pass goes (``done`` from 0 to ``total``
        blocks): the cluster's tasks as they finish, or this process's blocks (possibly from
        a worker thread).

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
            return _reduce_numpy(data, plan, threads, progress)
        return _reduce_dask(data, plan, client, progress)

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
