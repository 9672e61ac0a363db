"""Atoms followed over the frames of a series: nearest neighbours after the median drift
between frames is taken out."""

from __future__ import annotations

import numpy as np

from .table import AtomTable


def link_frames(table: AtomTable, spacing_px: float) -> np.ndarray:
    """Track ids: each atom joined to the nearest atom of the previous frame within half the
    atomic spacing, after removing the median drift between the frames (estimated from the
    nearest-neighbour displacements)."""
    from scipy.spatial import cKDTree

    track = np.full(len(table), -1, np.int64)
    frames = np.unique(table.frame)
    next_id = 0
    previous = None
    for f in frames:
        idx = np.flatnonzero(table.frame == f)
        pts = np.column_stack([table.y[idx], table.x[idx]])
        if previous is None or len(previous[0]) == 0:
            track[idx] = np.arange(next_id, next_id + len(idx))
            next_id += len(idx)
        else:
            prev_idx, prev_pts = previous
            tree = cKDTree(prev_pts)
            d, j = tree.query(pts, distance_upper_bound=spacing_px)
            ok = np.isfinite(d)
            drift = np.median(pts[ok] - prev_pts[j[ok]], axis=0) if ok.sum() > 3 else np.zeros(2)
            d, j = tree.query(pts - drift, distance_upper_bound=0.5 * spacing_px)
            ok = np.isfinite(d)
            # one atom of the previous frame continues at most one track: the closest
            order = np.argsort(d)
            taken = set()
            for i in order:
                if ok[i] and j[i] not in taken:
                    track[idx[i]] = track[prev_idx[j[i]]]
                    taken.add(j[i])
            new = track[idx] < 0
            track[idx[new]] = np.arange(next_id, next_id + int(new.sum()))
            next_id += int(new.sum())
        previous = (idx, pts)
    return track


