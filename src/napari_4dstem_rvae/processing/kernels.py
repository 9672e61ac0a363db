"""The engine's compiled one-pass loop (numba): every pattern times up to eight masks.

Each pixel of a tile of frames (four frames while at most five masks are multiplied at a
time, else two) is read once, cast to float32 in a register and multiplied into every mask
that covers it; each product has its own float32 accumulator, so the loop vectorises with
the partial sums in SIMD registers, and the data are read from memory once and the masks
from the cache once per tile.

A mask whose non-zero pixels lie in a band of at most half the detector's rows (a
bright-field disk, an upper or lower DPC segment, COM moments inside a disk, the disk an ADF
leaves out) is multiplied only over the run of flat pixels from its first non-zero pixel to
its last: the pattern is cut at the ends of these runs, and each piece is one loop over the
masks that cover it. The sums are the same products without (most of) the zero terms, added
piece by piece in float64.

The source is generated for each layout (the mask count and which masks cover each piece;
the accumulators are separate variables, which is what lets the compiler keep them in
registers) and compiled on first use: about a second per layout and input type, in each
process. Without numba :func:`compiled_kernel` returns None and the engine uses its BLAS
path.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

#: A mask is multiplied over its own run of pixels when the run holds at most this share of them.
SHORT_RUN = 0.5

_kernels: dict[tuple, Any] = {}
_kernel_lock = threading.Lock()


def _part_source(name: str, f: int, n: int) -> list[str]:
    """A function summing ``f`` frames times ``n`` masks over the pixels ``start:end``, every
    product in its own float32 accumulator."""
    acc = [f"a{i}_{j}" for i in range(f) for j in range(n)]
    lines = [f"def {name}({', '.join([f'x{i}' for i in range(f)] + [f'm{j}' for j in range(n)])}, start, end):"]
    lines += [f"    {a} = np.float32(0)" for a in acc]
    # slices first: a loop from 0 over their length lets numba drop its negative-index check,
    # which would keep the loop from vectorising (6× slower)
    lines += [f"    y{i} = x{i}[start:end]" for i in range(f)] + [f"    q{j} = m{j}[start:end]" for j in range(n)]
    lines += ["    for p in range(y0.shape[0]):"]
    lines += [f"        v{i} = np.float32(y{i}[p])" for i in range(f)]
    lines += [f"        w{j} = q{j}[p]" for j in range(n)]
    lines += [f"        a{i}_{j} += v{i} * w{j}" for i in range(f) for j in range(n)]
    return lines + [f"    return ({', '.join(acc)},)", "", ""]


def _kernel_source(k: int, pieces: tuple[tuple[int, ...], ...], f: int) -> tuple[str, list[str]]:
    """Python source of the loop over a block of frames, ``f`` frames at a time: for each
    piece of the pattern (its pixels ``bounds[g]``), one part function over the masks that
    cover it, whose sums are added in float64 — and the names of the part functions."""
    parts = sorted({len(masks) for masks in pieces})
    lines: list[str] = []
    for n in parts:
        lines += _part_source(f"part{n}", f, n)
    lines += ["def run(frames, masks, bounds, out):",
              "    n = frames.shape[0]",
              "    for i in range(0, n, " + str(f) + "):",
              "        last = n - 1"]
    lines += [f"        s{i}_{j} = 0.0" for i in range(f) for j in range(k)]
    rows = ", ".join(f"frames[min(i + {i}, last)]" for i in range(f))
    for g, masks in enumerate(pieces):
        columns = ", ".join(f"masks[{j}]" for j in masks)
        lines += [f"        r = part{len(masks)}({rows}, {columns}, bounds[{g}, 0], bounds[{g}, 1])"]
        lines += [f"        s{i}_{j} += r[{i * len(masks) + m}]" for i in range(f) for m, j in enumerate(masks)]
    for i in range(f):
        lines += [f"        if i + {i} < n:"] + [f"            out[i + {i}, {j}] = s{i}_{j}" for j in range(k)]
    return "\n".join(lines) + "\n", [f"part{n}" for n in parts]


def nonzero_run(mask: np.ndarray) -> tuple[int, int]:
    """``[start, end)``: the run of flat (row-major) pixels from the first non-zero pixel of a
    2D mask to its last (``(0, 0)`` for an all-zero mask)."""
    nonzero = np.asarray(mask).ravel() != 0
    first = int(np.argmax(nonzero))
    if not nonzero[first]:
        return 0, 0
    return first, nonzero.size - int(np.argmax(nonzero[::-1]))


def is_short(mask: np.ndarray, run: tuple[int, int] | None = None) -> bool:
    """Whether the compiled loop multiplies ``mask`` over its own run of pixels (``run``, by
    default :func:`nonzero_run`), not over the whole pattern: the run holds at most
    :data:`SHORT_RUN` of the pixels."""
    start, end = nonzero_run(mask) if run is None else run
    return end - start <= SHORT_RUN * np.asarray(mask).size


def kernel_layout(masks: np.ndarray) -> tuple[tuple, np.ndarray]:
    """How the compiled loop visits ``masks`` ``(k, det_y, det_x)``: ``(key, bounds)``, with
    ``key = (k, pieces)``: the pattern's flat pixels are cut at the ends of every short mask's
    run (:func:`is_short`; any other mask runs over every pixel), ``pieces`` lists the masks
    covering each piece that any mask covers, and ``bounds`` ``(pieces, 2)`` int64 their
    ``[start, end)``."""
    k = masks.shape[0]
    size = masks[0].size
    runs = [nonzero_run(m) for m in masks]
    spans = [run if is_short(m, run) else (0, size) for m, run in zip(masks, runs)]
    cuts = sorted({0, size} | {v for span in spans if span[1] > span[0] for v in span})
    pieces, bounds = [], []
    for start, end in zip(cuts[:-1], cuts[1:]):
        covering = tuple(j for j, (s0, s1) in enumerate(spans) if s0 <= start and end <= s1)
        if covering:
            pieces.append(covering)
            bounds.append((start, end))
    return (k, tuple(pieces)), np.array(bounds, dtype=np.int64).reshape(-1, 2)


def compiled_kernel(key: tuple) -> Any:
    """``run(frames (n, P), masks (k, P) float32, bounds (pieces, 2) int64, out (n, k)
    float64)`` compiled by numba for a layout ``key`` of :func:`kernel_layout`, or None
    without numba. Four frames per tile while no piece has more than five masks, else two
    (the products then still fit the 32 vector registers of AVX-512, 16 of AVX2 with spills)."""
    k, pieces = int(key[0]), tuple(tuple(int(j) for j in masks) for masks in key[1])
    key = (k, pieces)
    with _kernel_lock:
        if key in _kernels:
            return _kernels[key]
        try:
            import numba
        except ImportError:  # pragma: no cover - numba is a dependency; the BLAS path remains
            _kernels[key] = None
            return None
        namespace: dict[str, Any] = {"np": np, "min": min}
        f = 4 if max((len(m) for m in pieces), default=0) <= 5 else 2
        source, parts = _kernel_source(k, pieces, f)
        exec(compile(source, f"<engine kernel: {k} masks over {len(pieces)} pieces>", "exec"), namespace)
        for name in parts:
            namespace[name] = numba.njit(fastmath=True, boundscheck=False, nogil=True)(namespace[name])
        run = numba.njit(boundscheck=False, nogil=True)(namespace["run"])
        _kernels[key] = run
        return run
