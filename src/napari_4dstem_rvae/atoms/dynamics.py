"""The time dynamics of an atom-resolved movie from its tracks (:func:`.track.link_frames`):
per track its class, lifetime, mean angle and displacement; per frame the atoms counted, the
ones that appeared and the ones lost, and the hops of heavy atoms (dopants) to a new site —
the quantities behind the study's "carbon is lost, dopants move" (Kalinin et al., Sci. Adv.
2021), measured instead of read off histograms.

A heavy atom *hops* at frame ``f`` when its track ends at ``f − 1`` and a heavy atom that was
not there before appears at ``f`` within ``hop_reach`` of it (after the frames' drift): the
linker follows an atom that stays within half a bond, so a jump to a neighbouring site starts
a new track.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .table import AtomTable


@dataclass
class Dynamics:
    """Per-track and per-frame columns (``{name: array}``) and the heavy-atom hops
    ``(frame, from track, to track, distance in px)``."""

    tracks: dict[str, np.ndarray] = field(default_factory=dict)
    frames: dict[str, np.ndarray] = field(default_factory=dict)
    hops: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))


def _sorted_steps(table: AtomTable) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by (track, frame) among linked atoms, and the mask of rows whose next row
    continues the same track one frame later."""
    linked = np.flatnonzero(table.track >= 0)
    order = linked[np.lexsort((table.frame[linked], table.track[linked]))]
    t, f = table.track[order], table.frame[order]
    follows = (t[1:] == t[:-1]) & (f[1:] == f[:-1] + 1)
    return order, follows


def _drift(table: AtomTable, n_frames: int, order: np.ndarray, follows: np.ndarray) -> np.ndarray:
    """The frames' drift (``(n_frames, 2)`` y, x px from frame 0): the median displacement of
    the atoms that continue a track, frame to frame, summed."""
    dy = table.y[order[1:]] - table.y[order[:-1]]
    dx = table.x[order[1:]] - table.x[order[:-1]]
    at = table.frame[order[1:]]
    drift = np.zeros((n_frames, 2))
    for f in range(1, n_frames):
        m = follows & (at == f)
        step = np.array([np.median(dy[m]), np.median(dx[m])]) if m.any() else np.zeros(2)
        drift[f] = drift[f - 1] + step
    return drift


def dynamics(table: AtomTable, n_frames: int, angle: np.ndarray | None = None, heavy_class: int = 1,
             hop_reach: float = 6.0) -> Dynamics:
    """:class:`Dynamics` of ``table`` (tracks linked); ``angle``: per-atom angle (rad, NaN
    without a window) for each track's circular mean; ``hop_reach``: px (about two bonds)."""
    from scipy.spatial import cKDTree

    out = Dynamics()
    if len(table) == 0 or not (table.track >= 0).any():
        return out
    order, follows = _sorted_steps(table)
    drift = _drift(table, n_frames, order, follows)
    y = table.y - drift[table.frame, 0]
    x = table.x - drift[table.frame, 1]
    t = table.track[order]
    starts = np.r_[0, np.flatnonzero(t[1:] != t[:-1]) + 1]
    ends = np.r_[starts[1:], len(order)]
    group = np.repeat(np.arange(len(starts)), ends - starts)
    n_classes = int(table.cls.max()) + 1 if len(table) else 1
    votes = np.zeros((len(starts), n_classes), np.int64)
    np.add.at(votes, (group, table.cls[order]), 1)
    step = np.hypot(np.diff(y[order]), np.diff(x[order]))
    within = np.r_[t[1:] == t[:-1], False]
    path = np.bincount(group, weights=np.where(within, np.r_[step, 0.0], 0.0), minlength=len(starts))
    first, last = table.frame[order[starts]], table.frame[order[ends - 1]]
    mean_angle = np.full(len(starts), np.nan)
    if angle is not None:
        a = np.asarray(angle, np.float64)[order]
        ok = np.isfinite(a)
        z = np.bincount(group[ok], weights=np.cos(a[ok]), minlength=len(starts)) + \
            1j * np.bincount(group[ok], weights=np.sin(a[ok]), minlength=len(starts))
        has = np.bincount(group[ok], minlength=len(starts)) > 0
        mean_angle[has] = np.angle(z[has])
    out.tracks = {"track": t[starts].astype(np.int64), "class": votes.argmax(1).astype(np.int64),
                  "first_frame": first.astype(np.int64), "last_frame": last.astype(np.int64),
                  "lifetime": (ends - starts).astype(np.int64), "mean_angle": mean_angle,
                  "displacement": np.hypot(y[order[ends - 1]] - y[order[starts]], x[order[ends - 1]] - x[order[starts]]),
                  "path_length": path}
    first_of = dict(zip(out.tracks["track"].tolist(), first.tolist()))
    last_of = dict(zip(out.tracks["track"].tolist(), last.tolist()))
    appeared = np.bincount(first[first > 0], minlength=n_frames)[:n_frames]
    lost = np.bincount(last[last < n_frames - 1] + 1, minlength=n_frames)[:n_frames]
    counts = np.bincount(table.frame, minlength=n_frames)[:n_frames]
    heavy_rows = table.cls == heavy_class
    heavy = np.bincount(table.frame[heavy_rows], minlength=n_frames)[:n_frames]
    hop_rows = []
    for f in range(1, n_frames):
        new = [i for i in np.flatnonzero(heavy_rows & (table.frame == f)) if first_of.get(table.track[i]) == f]
        gone = [i for i in np.flatnonzero(heavy_rows & (table.frame == f - 1)) if last_of.get(table.track[i]) == f - 1]
        if not new or not gone:
            continue
        tree = cKDTree(np.column_stack([y[new], x[new]]))
        taken: set = set()
        for i in gone:  # each vanished heavy atom to the nearest new one within reach, once
            d, k = tree.query([y[i], x[i]], k=min(len(new), 4), distance_upper_bound=hop_reach)
            for dist, j in zip(np.atleast_1d(d), np.atleast_1d(k)):
                if np.isfinite(dist) and j not in taken:
                    taken.add(j)
                    hop_rows.append((f, table.track[i], table.track[new[j]], float(dist)))
                    break
    hops = np.asarray(hop_rows, np.float64).reshape(-1, 4)
    out.frames = {"frame": np.arange(n_frames), "atoms": counts.astype(np.int64), "appeared": appeared.astype(np.int64),
                  "lost": lost.astype(np.int64), "heavy": heavy.astype(np.int64),
                  "heavy_hops": np.bincount(hops[:, 0].astype(int), minlength=n_frames)[:n_frames].astype(np.int64),
                  "drift_y": drift[:, 0], "drift_x": drift[:, 1]}
    out.hops = hops
    return out
