"""The atom-resolved workflow, headless (Kalinin, Dyck, Jesse, Ziatdinov, Sci. Adv. 7,
eabd5084, 2021): an image series → atoms in every frame → a window around each atom → an
rVAE with an angle, two shifts and content latents → per-atom angle, shifts and latents,
per-frame histograms (time dynamics), and scikit-learn baselines on the same windows
(Gaussian mixture, PCA), as the study compared.

The same rVAE engine as for 4D-STEM: the windows are handed to it as a stack of patterns
``(n, 1, pixels, pixels)`` whose rotation centre is the window centre.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .dataset import Calibration, Dataset4D
from .processing.atoms import AtomTable, cut_windows, find_atoms_series
from .series import ImageSeries

#: rVAE settings for windows around atoms. "default": this package's engine (angle with a
#: proper posterior on the circle, uniform prior, shifts, content read from the aligned
#: window); "study": the published settings (one encoder, 2 × 128 tanh, Gaussian angle
#: with a Gaussian prior, shifts, 2 content latents, 75 % / 25 % train/test).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {"latent_dim": 2, "learn_shift": True, "shift_prior": 2.0, "test_fraction": 0.25,
                "angle_symmetry": 3},
    "study": {"latent_dim": 2, "learn_shift": True, "encoder_hidden": (128, 128), "decoder_hidden": (128, 128),
              "align_content": False, "activation": "tanh", "angle_posterior": "gaussian",
              "rotation_prior": math.pi / 3, "test_fraction": 0.25, "angle_symmetry": 3},
}
DEFAULT_WINDOW_ANGSTROM = 5.0
DEFAULT_WINDOW_PIXELS = 32


def parse_length(text: Any, what: str = "--window") -> tuple[float, str]:
    """``"1.5nm"`` → (15.0, "Å"); ``"12A"``/``"12Å"`` → (12.0, "Å"); ``"40px"`` → (40.0, "px");
    a bare number is Å."""
    if isinstance(text, (int, float)):
        value, unit = float(text), "Å"
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-ZÅµ]*)\s*", str(text))
        if not match:
            raise ValueError(f"{what} must be a length such as 1.5nm, 12Å or 40px, got {text!r}")
        value, unit = float(match.group(1)), match.group(2) or "Å"
    if unit.lower() in ("px", "pixel", "pixels"):
        unit = "px"
    else:
        from .units import length_factor

        factor = length_factor(unit, "Å")
        if factor is None:
            raise ValueError(f"{what}: unknown unit {unit!r} in {text!r}; use Å, nm, pm or px")
        value, unit = value * factor, "Å"
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{what} must be positive, got {text!r}")
    return value, unit


def windows_for(series: ImageSeries, table: AtomTable, window: Any = DEFAULT_WINDOW_ANGSTROM,
                pixels: int = DEFAULT_WINDOW_PIXELS, edge: str = "drop", source: Any = None):
    """Windows around the atoms (:func:`~.processing.atoms.cut_windows`); ``window`` in Å (or
    ``"40px"``; Å needs a calibrated series)."""
    size, unit = parse_length(window, "window")
    if unit == "Å" and series.pixel_size_angstrom is None:
        raise ValueError("the window is given in Å but the series has no pixel size; give the pixel size "
                         "(calibration) or the window in px")
    if unit == "px" and series.pixel_size_angstrom is not None:
        size = size * series.pixel_size_angstrom  # cut_windows takes Å for calibrated series
    return cut_windows(series, table, size, pixels, edge=edge, source=source)


def windows_dataset(windows: np.ndarray, source: str = "") -> Dataset4D:
    """Windows ``(n, h, w)`` as the rVAE engine's input ``(n, 1, h, w)``, centred."""
    n, h, w = windows.shape
    return Dataset4D(windows.reshape(n, 1, h, w), Calibration(det_origin=((h - 1) / 2, (w - 1) / 2)),
                     source=source, provenance=({"step": "atom_windows", "windows": int(n)},))


@dataclass
class AtomResult:
    """Per-atom results: ``table`` (every atom found) and, for the atoms with a window
    (``index`` into the table), the rVAE's posterior means and spreads."""

    table: AtomTable
    index: np.ndarray
    values: dict[str, np.ndarray]
    config: Any = None
    history: list = field(default_factory=list)
    windows_note: dict[str, Any] = field(default_factory=dict)
    window_angstrom: float | None = None
    pixel_size: float | None = None
    baselines: dict[str, np.ndarray] = field(default_factory=dict)
    model: Any = None

    def columns(self) -> dict[str, np.ndarray]:
        """One column per quantity over every atom of the table (NaN where an atom has no
        window); positions also in Å when the pixel size is known."""
        n = len(self.table)
        out = dict(self.table.columns())
        if self.pixel_size is not None:
            out["y_angstrom"] = self.table.y * self.pixel_size
            out["x_angstrom"] = self.table.x * self.pixel_size
        has = np.zeros(n, bool)
        has[self.index] = True
        out["has_window"] = has
        for name, values in {**self.values, **self.baselines}.items():
            full = np.full(n, np.nan, np.float32 if values.dtype.kind == "f" else np.float64)
            full[self.index] = values
            out[name] = full
        return out


def find(series: ImageSeries, method: str = "auto", points: Any = None, **options: Any) -> AtomTable:
    """Atoms of every frame: ``"log"`` (classical, :func:`find_atoms_series`), ``"unet"`` (the
    study's way: a small U-Net trained on simulated images gives class probabilities whose
    blobs are the atoms), ``"auto"`` (the U-Net for a calibrated series, else the band-pass)
    or ``"points"`` (``points``: ``(n, 3)`` frame, y, x in pixels, e.g. a napari Points layer
    edited by hand).

    Why the U-Net by default: on series simulated differently from its training images (a
    probe with tails, a background gradient, scan-line noise) it kept recall ≥ 0.975 where
    the band-pass fell to 0.72 at 12 counts per atom and 0.97 at 25 (README)."""
    if method == "auto":
        method = "unet" if series.pixel_size_angstrom is not None else "log"
        if method == "log":
            options = {k: v for k, v in options.items() if k not in ("weights", "min_significance")}
    if method == "log":
        table = find_atoms_series(series, **options)
    elif method == "unet":
        from .rvae.unet import find_atoms_unet

        table = find_atoms_unet(series, **options)
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
        from .processing.atoms import _intensity, classify_intensity

        intensity = np.empty(len(pts))
        for f in np.unique(frames):
            m = frames == f
            intensity[m] = _intensity(series.frame(int(f)), pts[m, 1], pts[m, 2], 2.0)
        cls, names = classify_intensity(intensity, options.get("classes", 2))
        table = AtomTable(frames, pts[:, 1], pts[:, 2], intensity, cls, np.full(len(pts), np.nan), None,
                          "points", names)
    else:
        raise ValueError(f"method must be 'auto', 'log', 'unet' or 'points', got {method!r}")
    if len(table) == 0:
        raise ValueError(f"no atoms were found in {series.name} ({series.n_frames} frames): check the pixel "
                         "size (atoms are expected about 1 Å wide) or lower the threshold")
    return table


def baselines(windows: np.ndarray, components: int = 2, clusters: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """What the study compared the rVAE with, on the same windows: PCA (the first
    ``components`` scores) and a Gaussian mixture of ``clusters`` components (on 20 PCA
    scores, diagonal covariances), labels per window."""
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    flat = windows.reshape(len(windows), -1).astype(np.float64)
    flat = flat - flat.mean(axis=0)
    n_keep = int(min(20, flat.shape[0] - 1, flat.shape[1]))
    if n_keep < max(components, 1) or len(flat) < clusters * 2:
        return {}
    scores = PCA(n_keep, random_state=seed).fit_transform(flat)
    gmm = GaussianMixture(clusters, covariance_type="diag", random_state=seed).fit(scores)
    out = {f"pca_{i + 1}": scores[:, i].astype(np.float32) for i in range(components)}
    out["gmm_cluster"] = gmm.predict(scores).astype(np.float64)
    return out


def analyse(series: ImageSeries, table: AtomTable | None = None, *, window: Any = DEFAULT_WINDOW_ANGSTROM,
            pixels: int = DEFAULT_WINDOW_PIXELS, edge: str = "drop", preset: str = "default",
            config: Any = None, with_baselines: bool = True, callback: Callable | None = None,
            stop: Any = None, find_options: dict | None = None, window_from: str = "frames",
            **changes: Any) -> AtomResult:
    """Atoms (found if ``table`` is None) → windows → rVAE → :class:`AtomResult`.

    ``window_from``: ``"frames"`` (the raw frames) or ``"probabilities"`` (the U-Net's class
    probabilities drawn as a cleaned image, p(C) + 2·p(Si): the study's second option)."""
    from .rvae import RVAEConfig, fit

    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    if window_from not in ("frames", "probabilities"):
        raise ValueError(f"window_from must be 'frames' or 'probabilities', got {window_from!r}")
    if table is None:
        table = find(series, **(find_options or {}))
    source = None
    if window_from == "probabilities":
        from .rvae.unet import probabilities

        prob = probabilities(series, threads=changes.get("threads"))
        source = prob[:, 1] + 2.0 * prob[:, 2]
        del prob
    windows, index, note = windows_for(series, table, window, pixels, edge, source=source)
    note["window_from"] = window_from
    if len(windows) < 8:
        raise ValueError(f"only {len(windows)} atoms have a whole window of {window} inside the frames "
                         f"({note.get('dropped_at_edge', 0)} left out at the edges); expected at least 8 — use a "
                         "smaller window or edge='pad'")
    base = RVAEConfig.from_dict(config) if isinstance(config, dict) else (config or RVAEConfig())
    cfg = base.replace(**PRESETS[preset]).replace(**{k: v for k, v in changes.items() if v is not None})
    result = fit(windows_dataset(windows, series.source), cfg, callback=callback, stop=stop)
    maps = result.maps
    values: dict[str, np.ndarray] = {"angle": maps.angle[:, 0], "angle_std": maps.angle_std[:, 0]}
    if maps.angle_symmetric is not None:
        values["angle_symmetric"] = maps.angle_symmetric[:, 0]
    if maps.angle_concentration is not None:
        values["angle_concentration"] = maps.angle_concentration[:, 0]
    for i in range(maps.latents.shape[0]):
        values[f"latent_{i + 1}"] = maps.latents[i, :, 0]
        values[f"latent_{i + 1}_std"] = maps.latents_std[i, :, 0]
    if maps.shift is not None:
        # the engine's shift is (x, y) in window pixels: in Å of the image when calibrated
        scale = note["side_px"] / pixels * (series.pixel_size_angstrom or 1.0)
        values["shift_x"] = maps.shift[0, :, 0] * scale
        values["shift_y"] = maps.shift[1, :, 0] * scale
    if maps.novelty is not None:
        values["novelty"] = maps.novelty[:, 0]
    extra = baselines(windows, seed=cfg.seed) if with_baselines else {}
    size, unit = parse_length(window, "window")
    return AtomResult(table, index, {k: np.asarray(v, np.float32) for k, v in values.items()}, result.config,
                      list(result.history), note, size if unit == "Å" else None, series.pixel_size_angstrom,
                      extra, result.model)


def frame_histograms(values: np.ndarray, frames: np.ndarray, n_frames: int, bins: Any = 36,
                     value_range: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame histograms (density) of ``values``: ``(n_frames, bins)`` and the bin edges —
    the study's time dynamics (the angle histogram loses height and broadens as carbon is lost).
    Without ``value_range`` the bins span the 0.5–99.5 % percentiles of all frames (a few
    outliers would otherwise squeeze the bulk into one bin); values outside are left out."""
    values = np.asarray(values, np.float64)
    ok = np.isfinite(values)
    if value_range is None:
        value_range = tuple(float(v) for v in np.percentile(values[ok], [0.5, 99.5])) if ok.any() else (0.0, 1.0)
        if value_range[0] == value_range[1]:
            value_range = (value_range[0] - 0.5, value_range[1] + 0.5)
    edges = np.histogram_bin_edges(values[ok], bins=bins, range=value_range)
    out = np.zeros((n_frames, len(edges) - 1))
    for f in range(n_frames):
        m = ok & (frames == f)
        if m.any():
            out[f] = np.histogram(values[m], bins=edges, density=True)[0]
    return out, edges


def run_atoms(source: str | os.PathLike | ImageSeries, out: str | os.PathLike, *, read_options: dict | None = None,
              window: Any = DEFAULT_WINDOW_ANGSTROM, pixels: int = DEFAULT_WINDOW_PIXELS, method: str = "auto",
              preset: str = "default", edge: str = "drop", window_from: str = "frames", log=print,
              **changes: Any) -> dict[str, str]:
    """``stem-rvae atoms``: read the series, find atoms, train, write ``RESULTS.h5`` (the per-atom
    table, settings, loss history) and an overview figure beside it."""
    from .io.series import read_series
    from .results import atoms_figure, claim_output, write_atom_results

    out = os.fspath(out)
    if not out.lower().endswith((".h5", ".hdf5")):
        if os.path.exists(out) and not os.path.isdir(out):
            raise ValueError(f"--out {out} is an existing file, not a folder; give a folder or a name ending in .h5")
        out = os.path.join(out, "atoms.h5")
    png = os.path.splitext(out)[0] + "_overview.png"
    inputs = [source.source] if isinstance(source, ImageSeries) else [source]
    with claim_output(out, inputs):
        series = source if isinstance(source, ImageSeries) else read_series(source, **(read_options or {}))
        log(f"series: {series.shape} {series.data.dtype}"
            + (f", {series.pixel_size:g} {series.unit}/px" if series.pixel_size else ", no pixel size")
            + f" from {series.source}")
        table = find(series, method)
        per_frame = np.bincount(table.frame, minlength=series.n_frames)
        log(f"atoms: {len(table)} in {series.n_frames} frames ({per_frame.min()}–{per_frame.max()} per frame), "
            f"classes {dict(zip(table.class_names, np.bincount(table.cls, minlength=len(table.class_names)).tolist()))}")

        def progress(event):
            total = event.epochs_total
            if event.kind == "epoch" and (event.epoch % max(1, total // 10) == 0 or event.epoch == total):
                log(f"epoch {event.epoch}/{total}: loss {event.train_loss:.4g} ({event.elapsed:.0f} s)")

        result = analyse(series, table, window=window, pixels=pixels, edge=edge, preset=preset,
                         callback=progress, window_from=window_from, **changes)
        log(f"windows: {result.windows_note['windows']} of {result.windows_note['side_px']:.1f} px resampled to "
            f"{pixels} × {pixels}" + (f"; {result.windows_note['dropped_at_edge']} atoms at the frame edges left "
                                      "out" if result.windows_note.get("dropped_at_edge") else ""))
        path = write_atom_results(out, result, series)
    figure = atoms_figure(png, result, series)
    return {"h5": path, "png": figure}
