"""Results of the atom-resolved workflow: the per-atom table in a results file, read back,
and the overview figure laid out like the study's (Kalinin et al., Sci. Adv. 2021): a frame
with its atoms coloured by angle and by latent 1, and the angle histogram of every frame.

Layout (HDF5, the same results mark as the maps files): ``/atoms/<column>`` one dataset per
column (``frame``, ``y``, ``x`` in px, ``y_angstrom``, ``x_angstrom``, ``class``, ``angle``
(rad), ``lattice_orientation`` (rad, the lattice's local orientation the windows were turned
by), ``shift_x``/``shift_y`` (Å or px), ``latent_1`` …, their ``_std``, ``novelty``,
``missing_neighbour`` and ``centre_excess`` (robust SDs; :func:`~napari_4dstem_rvae.rvae.local.ring_scores`),
``rim`` (``missing_neighbour`` plus the largest of it among the atom and its first neighbours),
``pca_1``/``pca_2``/``gmm_cluster`` baselines); attributes ``kind = "atoms"``, the series'
shape, pixel size and unit, window size, class names, rVAE configuration and loss history.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..atomic import atomic_path
from .claim import claim_output
from .files import _json, versions
from .reading import FORMAT_VERSION, RESULTS_MARK

#: Units of the table's columns (others are dimensionless).
COLUMN_UNITS = {"y": "px", "x": "px", "y_angstrom": "Å", "x_angstrom": "Å", "angle": "rad", "angle_std": "rad",
                "angle_symmetric": "rad", "lattice_orientation": "rad"}


def write_atom_results(path: str | os.PathLike, result: Any, series: Any, parameters: dict | None = None, *,
                       inputs: Any = (), what: str = "results file") -> str:
    """Write an :class:`~napari_4dstem_rvae.workflows.AtomResult` (atomically), under
    :func:`~.claim.claim_output` (never over one of ``inputs``, a foreign file, or a path
    another writer holds; nested in the caller's own claim it passes)."""
    import h5py

    path = os.fspath(path)
    columns = result.columns()
    with claim_output(path, inputs, what), atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs[RESULTS_MARK] = FORMAT_VERSION
        f.attrs["kind"] = "atoms"
        f.attrs["source"] = str(series.source or "")
        f.attrs["series_shape"] = np.asarray(series.shape)
        f.attrs["pixel_size"] = float(series.pixel_size) if series.pixel_size is not None else np.nan
        f.attrs["unit"] = series.unit or ""
        f.attrs["pixel_size_angstrom"] = series.pixel_size_angstrom or np.nan
        f.attrs["provenance_json"] = _json(list(series.provenance or ()))
        f.attrs["versions_json"] = _json(versions())
        f.attrs["parameters_json"] = _json({**(parameters or {}), "windows": result.windows_note,
                                            "window_angstrom": result.window_angstrom,
                                            "method": result.table.method})
        g = f.create_group("atoms")
        g.attrs["class_names"] = _json(list(result.table.class_names))
        for name, values in columns.items():
            d = g.create_dataset(name, data=np.asarray(values))
            unit = COLUMN_UNITS.get(name)
            if name.startswith("shift_"):
                unit = "Å" if series.pixel_size_angstrom else "px"
            if unit:
                d.attrs["unit"] = unit
        if result.config is not None:
            g.attrs["config"] = _json(result.config.to_dict())
        g.attrs["history_json"] = _json(result.history)
        moving = getattr(result, "dynamics", None)
        if moving is not None and moving.tracks:
            for group, columns in (("tracks", moving.tracks), ("dynamics", moving.frames)):
                h = f.create_group(group)
                for name, values in columns.items():
                    h.create_dataset(name, data=np.asarray(values))
            f["dynamics"].create_dataset("heavy_hops_table", data=np.asarray(moving.hops, np.float64))
            f["dynamics"].attrs["heavy_hops_columns"] = "frame, from track, to track, distance (px)"
            f["tracks"].attrs["units"] = _json({"displacement": "px", "path_length": "px", "mean_angle": "rad",
                                                "lifetime": "frames"})
    return path


@dataclass
class AtomFile:
    path: str
    columns: dict[str, np.ndarray]
    class_names: tuple[str, ...]
    series_shape: tuple[int, ...]
    pixel_size_angstrom: float | None
    source: str
    attrs: dict[str, Any] = field(default_factory=dict)
    tracks: dict[str, np.ndarray] = field(default_factory=dict)
    dynamics: dict[str, np.ndarray] = field(default_factory=dict)


def is_atom_results(path: str | os.PathLike) -> bool:
    import h5py

    try:
        with h5py.File(os.fspath(path), "r") as f:
            return bool(f.attrs.get(RESULTS_MARK, 0)) and "atoms" in f
    except (OSError, ValueError):
        return False


def read_atom_results(path: str | os.PathLike) -> AtomFile:
    """The per-atom table of a results file; ValueError naming the file when it holds none."""
    import h5py

    path = os.fspath(path)
    try:
        with h5py.File(path, "r") as f:
            if "atoms" not in f:
                raise ValueError(f"{path}: holds no per-atom table (no /atoms group)")
            g = f["atoms"]
            columns = {name: g[name][()] for name in g if isinstance(g[name], h5py.Dataset)}
            lengths = {len(v) for v in columns.values()}
            if len(lengths) > 1:
                raise ValueError(f"{path}: the per-atom columns have different lengths {sorted(lengths)}")
            names = tuple(json.loads(g.attrs.get("class_names", "[]")))
            size = float(f.attrs.get("pixel_size_angstrom", np.nan))
            tables = {group: {n: f[group][n][()] for n in f[group] if isinstance(f[group][n], h5py.Dataset)}
                      for group in ("tracks", "dynamics") if group in f}
            return AtomFile(path, columns, names, tuple(int(v) for v in f.attrs.get("series_shape", ())),
                            size if np.isfinite(size) else None, str(f.attrs.get("source", "")),
                            {k: f.attrs[k] for k in f.attrs}, tables.get("tracks", {}), tables.get("dynamics", {}))
    except ValueError:
        raise
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200]
        raise ValueError(f"{path}: not a readable per-atom results file ({type(exc).__name__}: {reason})") from exc


def atoms_figure(path: str | os.PathLike, result: Any, series: Any, frame: int = 0) -> str:
    """Frame ``frame`` with its atoms coloured by angle (mod 120° when the preset maps the
    3-fold angle) and by latent 1, and the angle histogram of every frame (time dynamics)."""
    from .figures import _figure, _save

    columns = result.columns()
    moving = getattr(result, "dynamics", None)
    panels = 4 if moving is not None and moving.frames else 3
    fig = _figure(4.7 * panels, 4.6)
    axes = fig.subplots(1, panels)
    image = series.frame(frame)
    scale = series.pixel_size_angstrom
    extent = None
    unit = "px"
    if scale:
        ny, nx = image.shape
        extent = (-0.5 * scale, (nx - 0.5) * scale, (ny - 0.5) * scale, -0.5 * scale)
        unit = "Å"
    at = (columns["frame"] == frame) & columns["has_window"]
    y, x = columns["y"][at], columns["x"][at]
    if scale:
        y, x = y * scale, x * scale
    angle_name = "angle_symmetric" if "angle_symmetric" in columns else "angle"
    angle = np.degrees(columns[angle_name][at])
    for ax, values, title, cmap in ((axes[0], angle, f"{'angle mod 120°' if angle_name != 'angle' else 'angle'} (°)",
                                     "twilight_shifted"),
                                    (axes[1], columns.get("latent_1", np.zeros(len(columns["frame"])))[at],
                                     "latent 1", "RdBu_r")):
        ax.imshow(image, cmap="gray", extent=extent, interpolation="nearest")
        dots = ax.scatter(x, y, c=values, s=6, cmap=cmap, linewidths=0)
        ax.set_title(f"frame {frame}: atoms by {title}", fontsize=9)
        ax.set_xlabel(f"x ({unit})", fontsize=8)
        ax.set_ylabel(f"y ({unit})", fontsize=8)
        ax.tick_params(labelsize=7)
        fig.colorbar(dots, ax=ax, shrink=0.8)
    ax = axes[2]
    all_angle = np.degrees(columns[angle_name])
    period = 120.0 if angle_name != "angle" else 360.0
    edges = np.linspace(-period / 2, period / 2, 49)
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    n_frames = series.n_frames
    for f in range(n_frames):
        m = (columns["frame"] == f) & np.isfinite(all_angle)
        if not m.any():
            continue
        hist, _ = np.histogram(all_angle[m], bins=edges)
        ax.plot(0.5 * (edges[1:] + edges[:-1]), hist, color=cmap(f / max(n_frames - 1, 1)), lw=1,
                label=f"frame {f}" if n_frames <= 8 else None)
    ax.set_xlabel(f"{'angle mod 120°' if period == 120 else 'angle'} (°)", fontsize=8)
    ax.set_ylabel("atoms per bin", fontsize=8)
    ax.set_title("angle histogram per frame (time dynamics)", fontsize=9)
    ax.tick_params(labelsize=7)
    if n_frames <= 8:
        ax.legend(fontsize=7)
    if panels == 4:
        ax = axes[3]
        frames = moving.frames
        for name, style in (("atoms", "-"), ("appeared", "--"), ("lost", ":"), ("heavy_hops", "-.")):
            ax.plot(frames["frame"], frames[name], style, label=name.replace("_", " "), lw=1.2)
        ax.set_yscale("symlog", linthresh=10)
        ax.set_xlabel("frame", fontsize=8)
        ax.set_ylabel("atoms", fontsize=8)
        ax.set_title("dynamics: atoms per frame, tracks begun and ended, dopant hops", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    return _save(fig, path)
