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
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import numpy as np

from ..dataset import Calibration, Dataset4D
from ..options import option
from ..atoms import ATOM_FWHM, MIN_SPACING, AtomTable, cut_windows
from ..atoms.windows import EDGES
from ..atoms.calibration import SOURCES
from ..atoms.baselines import baselines, frame_histograms  # noqa: F401 - frame_histograms: the API's name
from ..atoms.finding import find
from ..series import ImageSeries
from ..units import parse_length
from .events import Done, Epoch, Event, Message, relay, windows_said

#: The default preset trains on at most this many windows (drawn evenly over the frames; every
#: atom is mapped): ten epochs of its 2,400 steps. More windows only lengthened training past
#: the step budget (10 epochs at least): the study's scale (114,000 windows) took 735 s for the
#: same sublattice split as 20,480 windows in 1/6 of the time (docs/performance.md).
TRAIN_WINDOWS = 20_480
#: rVAE settings for windows around atoms. "default": this package's engine (angle with a
#: proper posterior on the circle, uniform prior, shifts, content read from the aligned
#: window); "study": the published settings (one encoder, 2 × 128 tanh, Gaussian angle
#: with a Gaussian prior, shifts, 2 content latents, 75 % / 25 % train/test).
PRESETS: dict[str, dict[str, Any]] = {
    # 128 of the 1,024 pixels of a window decoded per step (windows are resampled from ~20 px):
    # half the step's cost, the same sublattice split and Si AUC at the study's scale
    "default": {"latent_dim": 2, "learn_shift": True, "shift_prior": 2.0, "test_fraction": 0.25,
                "angle_symmetry": 3, "pixels_per_step": 128, "train_positions": TRAIN_WINDOWS},
    "study": {"latent_dim": 2, "learn_shift": True, "encoder_hidden": (128, 128), "decoder_hidden": (128, 128),
              "align_content": False, "activation": "tanh", "angle_posterior": "gaussian",
              "rotation_prior": math.pi / 3, "test_fraction": 0.25, "angle_symmetry": 3},
}
#: A run whose rVAE collapsed (learnt nothing) trains once more with the likelihood's σ divided by this.
COLLAPSE_RETRY = 3.0
#: A run whose encoder's aligned angle puts fewer atoms than this in two modes (the sublattices) trains once more
#: with one latent and keeps the run that splits them more (a data-only choice; docs/quality.md).
#: Measured: 0.40–0.54 where the split failed (a real 6 nm frame), 0.67 at the study's scale where it
#: holds (94 % of the atoms on their sublattice), 0.85–0.99 on the other real frames.
SPLIT_RETRY = 0.6
DEFAULT_WINDOW_ANGSTROM = 5.0
DEFAULT_WINDOW_PIXELS = 32
METHODS = ("auto", "unet", "log", "points")
ANGLE_SOURCES = ("auto", "encoder", "decoder")
#: The rVAE settings offered beside the atom options (by the CLI and the Atoms tab alike).
RVAE_FIELDS = ("latent_dim", "epochs", "seed", "threads", "device")


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
    edge: str = option("auto", "windows crossing the frame edge: dropped, padded with the frame's median, or auto "
                       "(dropped unless that leaves out more than a fifth of the atoms or leaves fewer than 64 "
                       "windows, as in small fields: then padded)", choices=EDGES, label="at frame edges",
                       advanced=True)
    window_from: str = option("frames", "cut the windows from the raw frames or from the U-Net's class "
                              "probabilities", choices=("frames", "probabilities"), advanced=True)
    align: bool = option(True, "turn each window by its neighbourhood's lattice orientation (read off the found "
                         "positions, mod 60°) before the rVAE and add it back to the angle: the rVAE then has only "
                         "the sublattices to tell apart, so that a frame with several grains splits them in each",
                         label="align windows to the lattice", advanced=True)
    angle_from: str = option("auto", "each atom's angle from the rVAE's encoder, its decoder (the posterior over 12 "
                             "angles, latents and shift held; on a CPU up to ~20,000 windows) or auto (aligned windows: "
                             "the one that splits the sublattices more)", choices=ANGLE_SOURCES, advanced=True)
    preset: str = option("default", "rVAE settings: this package's (default) or the published ones (study)",
                         choices=tuple(PRESETS), label="rVAE preset")
    complete: bool = option(True, "complete a honeycomb lattice (graphene, MoS2): add the atoms its found atoms "
                            "predict where the frame shows one (real frames leave a finder the clearest half)",
                            label="complete the lattice")
    contamination: bool = option(True, "no atoms in bright contamination (a patch of four hexagons or more, brighter "
                                 "than the lattice by 6x its atomic contrast; the U-Net looks again without it)",
                                 label="skip contamination", advanced=True)
    fwhm: float = option(ATOM_FWHM, "width of an atom in the image (probe FWHM), for the band-pass finder",
                         unit="Å", label="atom FWHM", minimum=0.1, maximum=20.0, step=0.1, advanced=True)
    min_spacing: float = option(MIN_SPACING, "nearest-neighbour distance of the lattice (graphene 1.42, MoS2 1.84): "
                                "the band-pass finder's spacing, the lattice completion's bond, and the lattice the "
                                "pixel size is estimated from when the file has none",
                                unit="Å", minimum=0.3, maximum=20.0, step=0.05, advanced=True)

    pixel_size_from: str = option(
        "auto", "the pixel size the run uses: auto (the file's or --pixel-size unless the lattice's hexagon centres "
        "disagree by more than 10 %, then the lattice's, stated; the lattice's when none is given), given (always "
        "the file's or --pixel-size), lattice (the lattice's whenever it shows)", choices=SOURCES,
        label="pixel size from", advanced=True)

    def __post_init__(self) -> None:
        if self.pixel_size_from not in SOURCES:
            raise ValueError(f"--pixel-size-from must be one of {SOURCES}, got {self.pixel_size_from!r}")
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {METHODS}, got {self.method!r}")
        if self.preset not in PRESETS:
            raise ValueError(f"--preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        if self.edge not in EDGES:
            raise ValueError(f"--edge must be one of {EDGES}, got {self.edge!r}")
        if self.angle_from not in ANGLE_SOURCES:
            raise ValueError(f"--angle-from must be one of {ANGLE_SOURCES}, got {self.angle_from!r}")
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
        """Keyword options of the finders (each ignores what it does not use)."""
        return {"fwhm": float(self.fwhm), "min_spacing": float(self.min_spacing), "complete": bool(self.complete),
                "contamination": bool(self.contamination)}


def windows_for(series: ImageSeries, table: AtomTable, window: Any = DEFAULT_WINDOW_ANGSTROM,
                pixels: int = DEFAULT_WINDOW_PIXELS, edge: str = "auto", source: Any = None, angles: Any = None):
    """Windows around the atoms (:func:`~napari_4dstem_rvae.atoms.cut_windows`); ``window`` in Å (or
    ``"40px"``; Å needs a calibrated series)."""
    size, unit = parse_length(window, "window")
    if unit == "Å" and series.pixel_size_angstrom is None:
        raise ValueError("the window is given in Å but the series has no pixel size; give the pixel size "
                         "(calibration) or the window in px")
    if unit == "px" and series.pixel_size_angstrom is not None:
        size = size * series.pixel_size_angstrom  # cut_windows takes Å for calibrated series
    return cut_windows(series, table, size, pixels, edge=edge, source=source, angles=angles)


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
    dynamics: Any = None     # atoms.dynamics.Dynamics: tracks, per-frame counts, dopant hops

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


def analyse(series: ImageSeries, table: AtomTable | None = None, *, window: Any = DEFAULT_WINDOW_ANGSTROM,
            pixels: int = DEFAULT_WINDOW_PIXELS, edge: str = "auto", preset: str = "default",
            config: Any = None, with_baselines: bool = True, callback: Callable | None = None,
            stop: Any = None, find_options: dict | None = None, window_from: str = "frames",
            align: bool = True, angle_from: str = "auto", **changes: Any) -> AtomResult:
    """Atoms (found if ``table`` is None) → windows → rVAE → :class:`AtomResult`.

    ``window_from``: ``"frames"`` (the raw frames) or ``"probabilities"`` (the U-Net's class
    probabilities drawn as a cleaned image, p(C) + 2·p(Si): the study's second option).
    ``align``: windows turned by each atom's local lattice orientation modulo 2 × the preset's
    angle symmetry (:func:`~napari_4dstem_rvae.atoms.windows.lattice_orientation`), added back
    to the angle (and the shifts turned back): one rVAE over several grains then only has the
    sublattices to learn (measured on a real two-grain frame, docs/quality.md).
    ``angle_from``: ``"encoder"``, ``"decoder"`` or ``"auto"`` (aligned: the one that splits more, ``kept_angle``)."""
    from ..atoms.windows import bond_length, kept_angle, lattice_orientation, neighbourhood_max, two_mode_share
    from ..rvae import RVAEConfig, fit
    from ..rvae.local import ring_scores
    from ..rvae.infer import symmetric_angle

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
    base = RVAEConfig.from_dict(config) if isinstance(config, dict) else (config or RVAEConfig())
    cfg = base.replace(**PRESETS[preset]).replace(**{k: v for k, v in changes.items() if v is not None})
    symmetry = int(cfg.angle_symmetry or 1)
    turn = lattice_orientation(table, 2 * symmetry) if align and symmetry > 1 else None
    windows, index, note = windows_for(series, table, window, pixels, edge, source=source, angles=turn)
    note["window_from"] = window_from
    if len(windows) < 8:
        raise ValueError(f"only {len(windows)} atoms have a whole window of {window} inside the frames "
                         f"({note.get('dropped_at_edge', 0)} left out at the edges); expected at least 8 — use a "
                         "smaller window or edge='pad' (or 'auto')")
    result = fit(windows_dataset(windows, series.source), cfg, callback=callback, stop=stop)
    maps = result.maps
    angle, angle_std = maps.angle[:, 0], maps.angle_std[:, 0]
    concentration = None if maps.angle_concentration is None else maps.angle_concentration[:, 0]
    if result.model is not None and (angle_from == "decoder" or (angle_from == "auto" and turn is not None)):
        angle, angle_std, concentration = kept_angle(result.model, windows, symmetry, angle, angle_std,
                                                     concentration, angle_from, note, cfg.threads)
    # the rVAE's angle is counter-clockwise on screen, the windows' turn clockwise (y down): the
    # angle in the image is the aligned window's minus the turn
    lattice = np.zeros(len(index)) if turn is None else -turn[index]
    values: dict[str, np.ndarray] = {"angle": symmetric_angle(angle + lattice, 1), "angle_std": angle_std}
    if turn is not None:   # the aligned angle: two modes (the sublattices) wherever the model split them
        values["lattice_orientation"] = lattice
        if "two_mode_share" not in note:   # kept_angle's when it ran
            note["two_mode_share"] = two_mode_share(angle, symmetry)
    if maps.angle_symmetric is not None:
        values["angle_symmetric"] = symmetric_angle(values["angle"], symmetry)
    if concentration is not None:
        values["angle_concentration"] = concentration
    for i in range(maps.latents.shape[0]):
        values[f"latent_{i + 1}"] = maps.latents[i, :, 0]
        values[f"latent_{i + 1}_std"] = maps.latents_std[i, :, 0]
    if maps.shift is not None:
        # the engine's shift is (x, y) in window pixels: in Å of the image when calibrated
        scale = note["side_px"] / pixels * (series.pixel_size_angstrom or 1.0)
        c, s = np.cos(-lattice), np.sin(-lattice)     # the window's (x, y) turned back to the image's
        values["shift_x"] = (maps.shift[0, :, 0] * c - maps.shift[1, :, 0] * s) * scale
        values["shift_y"] = (maps.shift[0, :, 0] * s + maps.shift[1, :, 0] * c) * scale
    if maps.novelty is not None:
        values["novelty"] = maps.novelty[:, 0]
    bond = bond_length(table)
    if bond is not None and result.model is not None:  # the residual at the atom and on its neighbours' ring
        values.update(ring_scores(result.model, windows, bond * pixels / note["side_px"], threads=cfg.threads))
        y, x, (ny, nx) = table.y[index], table.x[index], series.frame_shape   # a ring beyond the frame's edge
        cut = np.minimum(np.minimum(y, ny - 1 - y), np.minimum(x, nx - 1 - x)) < 1.2 * bond  # is not a missing atom
        values["missing_neighbour"] = np.where(cut, np.nan, values["missing_neighbour"])
        # the whole first row of a hole's rim, its atoms with three neighbours too: its own and its neighbourhood's
        values["rim"] = values["missing_neighbour"] + neighbourhood_max(table.frame[index], y, x, values[
            "missing_neighbour"], 1.25 * bond)
    extra = baselines(windows, seed=cfg.seed) if with_baselines else {}
    size, unit = parse_length(window, "window")
    from ..atoms.dynamics import dynamics

    per_atom = np.full(len(table), np.nan)
    per_atom[index] = values["angle_symmetric" if "angle_symmetric" in values else "angle"]
    return AtomResult(table, index, {k: np.asarray(v, np.float32) for k, v in values.items()}, result.config,
                      list(result.history), note, size if unit == "Å" else None, series.pixel_size_angstrom,
                      extra, result.model, dynamics(table, series.n_frames, per_atom, hop_reach=_bonds(series, 2.0)))


def _bonds(series: ImageSeries, n: float) -> float:
    """``n`` graphene bonds (1.42 Å) in pixels of ``series`` (6 px without a pixel size)."""
    return n * 1.42 / series.pixel_size_angstrom if series.pixel_size_angstrom else 3.0 * n


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
        if self.options.method != "points":
            yield from self._settle_pixel_size()
            series = self.series
        self.table = table = find(series, self.options.method, points=self.points, **self.options.find_options())
        per_frame = np.bincount(table.frame, minlength=series.n_frames)
        classes = dict(zip(table.class_names, np.bincount(table.cls, minlength=len(table.class_names)).tolist()))
        yield Message(f"atoms: {len(table)} in {series.n_frames} frames ({per_frame.min()}–{per_frame.max()} per "
                      f"frame), classes {classes}")

    def _settle_pixel_size(self) -> Iterator[Event]:
        """The pixel size checked against the lattice's hexagon centres, or read off them when the
        file has none (:func:`~napari_4dstem_rvae.atoms.calibration.settle_pixel_size`), stated."""
        import dataclasses

        from ..atoms.calibration import settle_pixel_size

        o, given = self.options, self.series.pixel_size_angstrom
        if given is not None and not o.complete and o.pixel_size_from != "lattice":
            return   # not a honeycomb: nothing to check the given size against
        size, said, record = settle_pixel_size(np.asarray(self.series.frame(0)), given, float(o.min_spacing),
                                               o.pixel_size_from)
        if said is not None:
            yield Message(said, "warning")
        if size is not None and size != given:
            self.series = dataclasses.replace(self.series, pixel_size=float(size), unit="Å",
                                              provenance=tuple(self.series.provenance) + (record,))

    def train_events(self, stop: Any = None) -> Iterator[Event]:
        """Windows around the atoms → rVAE (epochs as :class:`Epoch` events) → :attr:`result`."""
        if self.table is None:
            yield from self.find_events(stop)
        from ..rvae import collapsed

        o = self.options
        self.result = result = yield from self._analyse(stop, **self.rvae)
        why = collapsed(result.history, result.config)
        if why is not None and "noise_std" not in self.rvae and not (stop is not None and stop.is_set()):
            # Measured on a real grain-boundary frame (docs/quality.md): at the default σ the model
            # collapses to the mean window; at a third of it the angle follows the bond orientation.
            sigma = result.config.noise_std
            yield Message(f"the rVAE learnt nothing from these windows with the likelihood's σ at {sigma:g} × their "
                          f"RMS ({why}); training again with σ at {sigma / COLLAPSE_RETRY:g} × their RMS", "warning")
            self.result = result = yield from self._analyse(stop, **self.rvae, noise_std=sigma / COLLAPSE_RETRY)
            why = collapsed(result.history, result.config)
        note = result.windows_note        # the encoder's split says whether the latents took the sublattices
        share = note.get("two_mode_share_encoder", note.get("two_mode_share"))
        if share is not None and share < SPLIT_RETRY and not {"seed", "latent_dim"} & set(self.rvae) \
                and result.config.latent_dim > 1 and not (stop is not None and stop.is_set()):
            # the latents, not the angle, took the sublattices apart: one latent leaves that to the angle
            # (measured on a noisy real frame whose windows split for no seed with two, docs/quality.md)
            yield Message(f"the rVAE's encoder puts {share:.0%} of the atoms' angles in two modes (the sublattices); "
                          "training again with one latent, so that the angle has to tell them apart, and keeping the "
                          "run that splits them more", "warning")
            again = yield from self._analyse(stop, **{**self.rvae, "noise_std": result.config.noise_std},
                                             latent_dim=1)
            if again.windows_note.get("two_mode_share", 0.0) > note.get("two_mode_share", share):
                self.result = result = again
                why = collapsed(result.history, result.config)
        yield Message(windows_said(result.windows_note, o.pixels, result.config.train_positions, o.edge == "auto"))
        if why is not None:
            yield Message(f"the rVAE learnt nothing from these windows ({why}): its angle and latents are "
                          "noise, not structure (seen on noisy real frames, docs/quality.md); the atoms' "
                          "positions and classes stand", "warning")

    def _analyse(self, stop: Any, window_from: str | None = None, **rvae: Any) -> Iterator[Event]:
        """:func:`analyse` of the found atoms, its epochs relayed as :class:`Epoch` events."""
        o = self.options
        return (yield from relay(
            partial(analyse, stop=stop), self.series, self.table, window=o.window, pixels=o.pixels, edge=o.edge,
            preset=o.preset, window_from=window_from or o.window_from, align=o.align, angle_from=o.angle_from,
            stop=stop, callback="callback",
            convert=lambda e: Epoch(e.epoch, e.epochs_total, float(e.train_loss),
                                    None if e.test_loss is None else float(e.test_loss), None, float(e.elapsed))
            if e.kind == "epoch" else None, **rvae))

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
