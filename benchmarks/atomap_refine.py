"""Atomap's 2D-Gaussian refinement of given atom positions, run by ``bench_positions.py`` in the
interpreter that has Atomap (GPL-3.0: a benchmark baseline only, never imported by the package).

    python benchmarks/atomap_refine.py IN.npz OUT.npz

``IN.npz``: ``image`` (y, x) and ``y``, ``x`` (pixels); ``OUT.npz``: the refined ``y``, ``x`` and
``seconds`` (the refinement alone, without importing Atomap). Imports nothing of this package.
"""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np


def main(argv: list[str]) -> int:
    src, dst = argv
    data = np.load(src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import atomap.api as am

        t0 = time.perf_counter()
        # Atomap takes (x, y) rows; its documented flow: nearest neighbours, then the 2D Gaussians
        sub = am.Sublattice(np.column_stack([data["x"], data["y"]]), image=np.asarray(data["image"], np.float64),
                            fix_negative_values=True)
        sub.find_nearest_neighbors()
        sub.refine_atom_positions_using_2d_gaussian(show_progressbar=False)
        seconds = time.perf_counter() - t0
    np.savez(dst, y=np.asarray(sub.y_position, np.float64), x=np.asarray(sub.x_position, np.float64),
             seconds=seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
