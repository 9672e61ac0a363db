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
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import numpy as np

from ..dataset import Calibration, Dataset4D
from ..options import option
from ..atoms import ATOM_FWHM, MIN_SPACING, AtomTable, cut_windows, find_atoms_series
from ..series import ImageSeries
from .events import Done, Epoch, Event, Message, relay

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
METHODS = ("auto", "unet", "log", "points")
#: The rVAE settings offered beside the atom options (by the CLI and the Atoms tab alike).
RVAE_FIELDS = ("latent_dim", "epochs", "seed", "threads", "device")


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
        from ..units import length_factor

        factor = length_factor(unit, "Å")
        if factor is None:
            raise ValueError(f"{what}: unknown unit {unit!r} in {text!r}; use Å, nm, pm or px")
        value, unit = value * factor, "Å"
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{what} must be positive, got {text!r}")
    return value, unit



@dataclass(frozen=True)
class AtomOptions:
    """How atoms are found and windows cut around them (the rVAE's own settings are an
    :class:`~napari_4dstem_rvae.rvae.RVAEConfig`; ``preset`` sets the study's)."""

    method: str = option(
        "auto", "how atoms are found: unet (the study's network, trained on simulated images, shipped with the "
        "package), log (band-pass and peaks), points (a Points layer or table given by hand), auto (unet when the "
        "pixel size is known, else log)", choices=METHODS, label="find atoms by")
    window: str = option(
        f"{DEFAULT_WINDOW_ANGSTROM:g}Å", "side of the window around each atom: a length (5Å, 1.5nm) or pixels (40px)",
        label="window")
    pixels: int = option(DEFAULT_WINDOW_PIXELS, "window pixels after resampling", label="window pixels",
                         minimum=8, maximum=256)
    edge: str = option("drop", "windows crossing the frame edge: dropped or padded with the frame's median",
                       choices=("drop", "pad"), label="at frame edges", advanced=True)
    window_from: str = option("frames", "cut the windows from the raw frames or from the U-Net's class "
                              "probabilities", choices=("frames", "probabilities"), advanced=True)
    preset: str = option("default", "rVAE settings: this package's (default) or the published ones (study)",
                         choices=tuple(PRESETS), label="rVAE preset")
    fwhm: float = option(ATOM_FWHM, "width of an atom in the image (probe FWHM), for the band-pass finder",
                         unit="Å", label="atom FWHM", minimum=0.1, maximum=20.0, step=0.1, advanced=True)
    min_spacing: float = option(MIN_SPACING, "smallest distance between two atoms, for the band-pass finder",
                                unit="Å", minimum=0.3, maximum=20.0, step=0.05, advanced=True)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {METHODS}, got {self.method!r}")
        if self.preset not in PRESETS:
            raise ValueError(f"--preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        if self.edge not in ("drop", "pad"):
            raise ValueError(f"--edge must be 'drop' or 'pad', got {self.edge!r}")
        if self.window_from not in ("frames", "probabilities"):
            raise ValueError(f"--window-from must be 'frames' or 'probabilities', got {self.window_from!r}")
        if int(self.pixels) < 8:
            raise ValueError(f"--pixels must be at least 8, got {self.pixels}")
        parse_length(self.window, "--window")
        for name in ("fwhm", "min_spacing"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive length in Å, got "
                                 f"{getattr(self, name)!r}")

    def replace(self, **changes: Any) -> AtomOptions:
        import dataclasses

        return dataclasses.replace(self, **changes)

    def find_options(self) -> dict[str, Any]:
        """Keyword options of the band-pass finder (the others ignore them)."""
        return {"fwhm": float(self.fwhm), "min_spacing": float(self.min_spacing)}


def windows_for(series: ImageSeries, table: AtomTable, window: Any = DEFAULT_WINDOW_ANGSTROM,
                pixels: int = DEFAULT_WINDOW_PIXELS, edge: str = "drop", source: Any = None):
    """Windows around the atoms (:func:`~napari_4dstem_rvae.atoms.cut_windows`); ``window`` in Å (or
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
        from ..atoms.unet import find_atoms_unet

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
        from ..atoms import atom_intensity, classify_intensity

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
    from ..rvae import RVAEConfig, fit

    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    if window_from not in ("frames", "probabilities"):
        raise ValueError(f"window_from must be 'frames' or 'probabilities', got {window_from!r}")
    if table is None:
        table = find(series, **(find_options or {}))
    source = None
    if window_from == "probabilities":
        from ..atoms.unet import probabilities

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


def atom_output(out: str | os.PathLike) -> tuple[str, str]:
    """(results file, overview PNG) of ``out``: a results file ``RESULTS.h5`` or a folder
    (``out/atoms.h5``)."""
    out = os.fspath(out)
    if not out.lower().endswith((".h5", ".hdf5")):
        if os.path.exists(out) and not os.path.isdir(out):
            raise ValueError(f"--out {out} is an existing file, not a folder; give a folder or a name ending in .h5")
        out = os.path.join(out, "atoms.h5")
    return out, os.path.splitext(out)[0] + "_overview.png"


class AtomRun:
    """The atom-resolved study's run, once for every door (``stem-rvae atoms`` and the Atoms
    tab): read the series → find atoms → windows → rVAE → per-atom table, written as a
    results file and an overview figure.

    ``options``: :class:`AtomOptions`; ``rvae``: single fields of the rVAE's settings over the
    preset's (``{"epochs": 30}``); ``points``: ``(n, 3)`` frame, y, x of atoms marked by hand
    (``method="points"``); ``table``: atoms already found (skips finding)."""

    def __init__(self, source: Any, out: Any = None, *, options: AtomOptions | None = None,
                 rvae: dict | None = None, read_options: dict | None = None, points: Any = None,
                 table: AtomTable | None = None):
        self.source, self.read_options = source, dict(read_options or {})
        self.options = options if options is not None else AtomOptions()
        self.rvae = {k: v for k, v in (rvae or {}).items() if v is not None}
        if self.rvae.get("epochs") is not None and int(self.rvae["epochs"]) < 1:
            raise ValueError(f"--epochs must be at least 1 (an untrained model maps nothing), got {self.rvae['epochs']}")
        self.points, self.table = points, table
        self.series: ImageSeries | None = source if isinstance(source, ImageSeries) else None
        self.out = None if out is None else atom_output(out)
        self.result: AtomResult | None = None
        self.outputs: dict[str, str] = {}

    @property
    def inputs(self) -> list:
        source = self.series.source if self.series is not None else self.source
        return [os.fspath(source)] if source and not isinstance(source, ImageSeries) else []

    def find_events(self, stop: Any = None) -> Iterator[Event]:
        """Read the series (if a path) and find its atoms."""
        from ..io.series import read_series

        if self.series is None:
            self.series = read_series(self.source, **self.read_options)
        series = self.series
        yield Message(f"series: {series.shape} {series.data.dtype}"
                      + (f", {series.pixel_size:g} {series.unit}/px" if series.pixel_size else ", no pixel size")
                      + f" from {series.source}")
        self.table = table = find(series, self.options.method, points=self.points, **self.options.find_options())
        per_frame = np.bincount(table.frame, minlength=series.n_frames)
        classes = dict(zip(table.class_names, np.bincount(table.cls, minlength=len(table.class_names)).tolist()))
        yield Message(f"atoms: {len(table)} in {series.n_frames} frames ({per_frame.min()}–{per_frame.max()} per "
                      f"frame), classes {classes}")

    def train_events(self, stop: Any = None) -> Iterator[Event]:
        """Windows around the atoms → rVAE (epochs as :class:`Epoch` events) → :attr:`result`."""
        if self.table is None:
            yield from self.find_events(stop)
        o = self.options
        self.result = result = yield from relay(
            partial(analyse, stop=stop), self.series, self.table, window=o.window, pixels=o.pixels, edge=o.edge, preset=o.preset,
            window_from=o.window_from, stop=stop, callback="callback",
            convert=lambda e: Epoch(e.epoch, e.epochs_total, float(e.train_loss),
                                    None if e.test_loss is None else float(e.test_loss), None, float(e.elapsed))
            if e.kind == "epoch" else None, **self.rvae)
        note = result.windows_note
        yield Message(f"windows: {note['windows']} of {note['side_px']:.1f} px resampled to {o.pixels} × {o.pixels}"
                      + (f"; {note['dropped_at_edge']} atoms at the frame edges left out"
                         if note.get("dropped_at_edge") else ""))

    def events(self, stop: Any = None) -> Iterator[Event]:
        """The whole run; with ``out``, the output is claimed first and written at the end."""
        from ..results import claim_output

        with ExitStack() as hold:
            if self.out is not None:
                hold.enter_context(claim_output(self.out[0], self.inputs, "--out"))
            if self.table is None:
                yield from self.find_events(stop)
            yield from self.train_events(stop)
            if stop is not None and stop.is_set():
                yield Done({}, stopped=True)
                return
            if self.out is not None:
                self.write()
        yield Done(dict(self.outputs))

    def write(self, path: Any = None) -> dict[str, str]:
        """The per-atom results file and its overview figure (to ``path`` or the run's ``out``)."""
        from ..results import atoms_figure, write_atom_results

        if self.result is None:
            raise ValueError("nothing to save yet: find atoms and train first")
        h5, png = self.out if path is None else atom_output(path)
        written = write_atom_results(h5, self.result, self.series, inputs=self.inputs, what="--out")
        self.outputs = {"h5": written, "png": atoms_figure(png, self.result, self.series)}
        return dict(self.outputs)
