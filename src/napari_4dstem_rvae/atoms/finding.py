"""Atoms of every frame, by the method the user chooses: the band-pass finder, the study's U-Net,
or points marked by hand — then, for a honeycomb lattice, completed where the lattice predicts an
atom the frame supports (:mod:`.complete`)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..series import ImageSeries
from .find import find_atoms_series
from .table import ATOM_FWHM, MIN_SPACING, AtomTable


def find(series: ImageSeries, method: str = "auto", points: Any = None, complete: bool = False,
         contamination: bool = True, **options: Any) -> AtomTable:
    """Atoms of every frame: ``"log"`` (classical, :func:`find_atoms_series`), ``"unet"`` (the
    study's way: a small U-Net trained on simulated images gives class probabilities whose
    blobs are the atoms), ``"auto"`` (the U-Net for a calibrated series, else the band-pass)
    or ``"points"`` (``points``: ``(n, 3)`` frame, y, x in pixels, e.g. a napari Points layer
    edited by hand).

    Why the U-Net by default: on series simulated differently from its training images (a
    probe with tails, a background gradient, scan-line noise) it kept recall ≥ 0.975 where
    the band-pass fell to 0.72 at 12 counts per atom and 0.97 at 25 (README).

    ``contamination`` (calibrated series): no atoms in bright contamination
    (:mod:`.contamination`; the U-Net also looks at such a frame again without it), stated."""
    if method == "auto":
        method = "unet" if series.pixel_size_angstrom is not None else "log"
        if method == "log":
            options = {k: v for k, v in options.items() if k not in ("weights", "min_significance")}
    if method == "log":
        table = find_atoms_series(series, **options)
        if contamination and series.pixel_size_angstrom is not None and len(table):
            from .contamination import in_contamination

            inside, share = in_contamination(series, table)
            if inside.any():
                warnings.warn(f"{series.name}: {100 * share:.1f} % of the frames' area is bright contamination; "
                              f"the {int(inside.sum())} atoms found there are left out", stacklevel=2)
                table = table.subset(np.flatnonzero(~inside))
    elif method == "unet":
        from .unet import find_atoms_unet

        table = find_atoms_unet(series, contamination=contamination, **options)
    elif method == "points":
        pts = np.asarray(points, np.float64)
        if pts.ndim != 2 or pts.shape[1] not in (2, 3) or len(pts) == 0:
            raise ValueError(f"points must be (n, 3) rows of frame, y, x (or (n, 2) for one frame); got "
                             f"shape {pts.shape}")
        if pts.shape[1] == 2:
            pts = np.column_stack([np.zeros(len(pts)), pts])
        frames = np.round(pts[:, 0]).astype(int)
        if frames.min() < 0 or frames.max() >= series.n_frames:
            raise ValueError(f"points lie in frames {frames.min()}–{frames.max()}; the series has "
                             f"{series.n_frames} frames")
        from .table import atom_intensity, classify_intensity

        intensity = np.empty(len(pts))
        for f in np.unique(frames):
            m = frames == f
            intensity[m] = atom_intensity(series.frame(int(f)), pts[m, 1], pts[m, 2], 2.0)
        cls, names = classify_intensity(intensity, options.get("classes", 2))
        table = AtomTable(frames, pts[:, 1], pts[:, 2], intensity, cls, np.full(len(pts), np.nan), None,
                          "points", names)
    else:
        raise ValueError(f"method must be 'auto', 'log', 'unet' or 'points', got {method!r}")
    if len(table) == 0:
        raise ValueError(f"no atoms were found in {series.name} ({series.n_frames} frames): check the pixel "
                         "size (atoms are expected about 1 Å wide) or lower the threshold")
    if complete and method != "points" and series.pixel_size_angstrom is not None:
        table = completed(series, table, options.get("min_spacing", MIN_SPACING), options.get("fwhm", ATOM_FWHM),
                          contamination=contamination)
    return table


def completed(series: ImageSeries, table: AtomTable, bond: float, fwhm: float, contamination: bool = True
              ) -> AtomTable:
    """``table`` with the atoms each frame's honeycomb lattice predicts and the frame supports
    (:func:`.complete.complete_honeycomb`, ``bond``: the nearest-neighbour distance, Å); the
    added ones are of the lighter class (a faint site a finder missed is not a dopant); tracks
    linked again. ``contamination``: none added in bright contamination (:mod:`.contamination`)."""
    from .complete import complete_honeycomb
    from .contamination import contamination_mask
    from .table import atom_intensity
    from .track import link_frames

    pixel = series.pixel_size_angstrom
    added = []
    for f in range(series.n_frames):
        rows = table.frame == f
        frame = np.asarray(series.frame(f), np.float64)
        mask = contamination_mask(frame, table.y[rows], table.x[rows], pixel) if contamination else None
        y, x, _ = complete_honeycomb(frame, table.y[rows], table.x[rows], pixel, bond=bond, fwhm=fwhm, mask=mask)
        if len(y):
            intensity = atom_intensity(frame, y, x, max(1.0, 0.5 * fwhm / pixel))
            added.append(AtomTable(np.full(len(y), f), y, x, intensity, np.zeros(len(y), np.int64),
                                   np.full(len(y), np.nan), None, table.method, table.class_names))
    if not added:
        return table
    both = AtomTable.concatenate([table, *added])
    order = np.lexsort((both.x, both.y, both.frame))
    both = both.subset(order)
    both.method = f"{table.method}+lattice"   # the completed sites are of the lighter class (0)
    if series.n_frames > 1:
        both.track = link_frames(both, bond / pixel)
    return both
