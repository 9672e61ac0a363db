"""The engine's compiled one-pass loop (numba): every pattern times up to eight masks.

Each pixel of a tile of frames (four frames up to five masks, else two) is read once, cast to
float32 in a register and multiplied into every mask; each product has its own float32
accumulator, so the loop vectorises with the partial sums in SIMD registers, and the data are
read from memory once and the masks from the cache once per tile. The source is generated
for each mask count (the accumulators are separate variables, which is what lets the
compiler keep them in registers) and compiled on first use: about a second per mask count
and input type, in each process. Without numba :func:`compiled_kernel` returns None and the
engine uses its BLAS path.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

_kernels: dict[int, Any] = {}
_kernel_lock = threading.Lock()


def _kernel_source(k: int, f: int) -> str:
    """Python source of the tile function (``f`` frames × ``k`` masks, every product held in
    its own float32 accumulator) and of the loop over a block of frames."""
    acc = [f"a{i}_{j}" for i in range(f) for j in range(k)]
    frames = [f"x{i}" for i in range(f)]
    masks = [f"m{j}" for j in range(k)]
    lines = [f"def tile({', '.join(frames + masks)}):"]
    lines += [f"    {a} = np.float32(0)" for a in acc]
    lines += ["    for p in range(x0.shape[0]):"]
    lines += [f"        v{i} = np.float32(x{i}[p])" for i in range(f)]
    lines += [f"        w{j} = m{j}[p]" for j in range(k)]
    lines += [f"        a{i}_{j} += v{i} * w{j}" for i in range(f) for j in range(k)]
    lines += [f"    return ({', '.join(acc)},)", "", "",
              "def run(frames, masks, out):",
              "    n = frames.shape[0]",
              "    for i in range(0, n, " + str(f) + "):",
              "        last = n - 1"]
    rows = ", ".join(f"frames[min(i + {i}, last)]" for i in range(f))
    cols = ", ".join(f"masks[{j}]" for j in range(k))
    lines += [f"        r = tile({rows}, {cols})"]
    for i in range(f):
        lines += [f"        if i + {i} < n:"] + [f"            out[i + {i}, {j}] = r[{i * k + j}]" for j in range(k)]
    return "\n".join(lines) + "\n"


def compiled_kernel(k: int) -> Any:
    """``run(frames (n, P), masks (k, P) float32, out (n, k) float64)`` compiled by numba for
    ``k`` masks, or None without numba. Four frames per tile up to five masks, else two (the
    products then still fit the 32 vector registers of AVX-512, 16 of AVX2 with spills)."""
    with _kernel_lock:
        if k in _kernels:
            return _kernels[k]
        try:
            import numba
        except ImportError:  # pragma: no cover - numba is a dependency; the BLAS path remains
            _kernels[k] = None
            return None
        namespace: dict[str, Any] = {"np": np, "min": min}
        exec(compile(_kernel_source(k, 4 if k <= 5 else 2), f"<engine kernel {k} masks>", "exec"), namespace)
        tile = numba.njit(fastmath=True, boundscheck=False, nogil=True)(namespace["tile"])
        namespace["tile"] = tile
        run = numba.njit(boundscheck=False, nogil=True)(namespace["run"])
        _kernels[k] = run
        return run
