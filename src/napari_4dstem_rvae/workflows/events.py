"""What a run tells whoever watches it: typed events, one progress channel.

A run (:class:`~.stem.STEMRun`, :class:`~.atoms.AtomRun`, :class:`~.com.COMRun`) is a
generator of these events. The CLI prints them (a progress bar on stderr, log lines, the
written paths on stdout), the napari docks show them (napari's progress, a status line,
layers); neither computes anything itself.

Progress of a blocking computation (a pass over the data, the encoding of every pattern,
locally or on a dask cluster) reaches the generator through :func:`reporting`: the
computation runs in a helper thread and calls ``progress(done, total)``; the generator yields
each count as a :class:`Progress` event, and returns the computation's value.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Message:
    """A sentence for the user: ``level`` ``"info"`` (a step done, what was chosen) or
    ``"warning"`` (something the user should know; the run goes on)."""

    text: str
    level: str = "info"


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` units (``unit``: ``"tasks"``, ``"blocks"``, ``"frames"`` …) of the
    stage ``stage`` (``"COM"``, ``"encoding"``, ``"atoms"`` …); ``where``: the dask cluster
    that runs it (``"tcp://… (dashboard …)"``) or ``""`` for this process."""

    stage: str
    done: int
    total: int
    unit: str = "blocks"
    where: str = ""

    @property
    def finished(self) -> bool:
        return self.done >= self.total


@dataclass(frozen=True)
class Epoch:
    """One epoch of training done: losses (negative ELBO per pattern), the best latent–COM
    magnitude |r| when computed at this epoch, seconds of training so far."""

    epoch: int
    total: int
    train_loss: float
    test_loss: float | None = None
    max_abs_r: float | None = None
    elapsed: float = 0.0


@dataclass(frozen=True)
class Maps:
    """Maps by schema name (``angle``, ``latents`` …, :data:`~napari_4dstem_rvae.schema.MAPS`)
    of the model at ``epoch``; ``final``: the maps the results are made of."""

    maps: dict
    epoch: int
    final: bool = False
    latent_r: tuple = ()


@dataclass(frozen=True)
class Done:
    """The run ended: ``outputs`` (``{"results": path, "overview": path, …}``; empty when
    nothing was written), ``stopped`` when the user stopped it (what was done is kept)."""

    outputs: dict = field(default_factory=dict)
    stopped: bool = False


Event = Message | Progress | Epoch | Maps | Done


def every_tenth(done: int, total: int) -> bool:
    """Whether a count is worth a log line: the first, about every tenth, the last."""
    return done == 0 or done >= total or done % max(1, total // 10) == 0


def relay(function: Callable[..., Any], *args: Any, callback: str = "progress",
          convert: Callable[..., Any] = lambda *values: values, stop: threading.Event | None = None,
          **kwargs: Any) -> Iterator[Any]:
    """Run ``function(*args, <callback>=…, **kwargs)`` in a helper thread and yield what it
    reports through that callback, each report passed through ``convert`` (``None`` is not
    yielded). The generator's return value (``value = yield from relay(...)``) is the
    function's; its exception is raised here. With ``stop`` set, no more reports are yielded
    (the computation itself stops by its own means, e.g. the same ``stop`` passed to it)."""
    reports: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}
    done = object()

    def target() -> None:
        try:
            outcome["value"] = function(*args, **{callback: lambda *values: reports.put(values)}, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the generator's thread
            outcome["error"] = exc
        finally:
            reports.put(done)

    worker = threading.Thread(target=target, name=f"napari-4dstem-rvae {getattr(function, '__name__', '')}",
                              daemon=True)
    worker.start()
    while True:
        item = reports.get()
        if item is done:
            break
        if stop is None or not stop.is_set():
            event = convert(*item)
            if event is not None:
                yield event
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def reporting(function: Callable[..., Any], stage: str, *args: Any, unit: str = "blocks", where: str = "",
              stop: threading.Event | None = None, **kwargs: Any) -> Iterator[Progress]:
    """:func:`relay` for a computation that takes ``progress(done, total)``: its counts as
    :class:`Progress` events of ``stage``; returns the computation's value."""
    last: list[Progress] = []

    def convert(done: Any, total: Any) -> Progress:
        last[:] = [Progress(stage, int(done), int(total), unit, where)]
        return last[0]

    value = yield from relay(function, *args, callback="progress", stop=stop, convert=convert, **kwargs)
    if last and last[0].done < last[0].total and (stop is None or not stop.is_set()):
        yield Progress(stage, last[0].total, last[0].total, unit, where)  # a pass that ended is complete
    return value


def named_maps(maps: Any) -> dict[str, np.ndarray]:
    """:class:`~napari_4dstem_rvae.rvae.LatentMaps` as ``{schema name: array}``."""
    from ..schema import map_names

    return {name: getattr(maps, name) for name in map_names("rvae") if getattr(maps, name, None) is not None}


def epoch_event(event: Any) -> Epoch:
    """A trainer's epoch event (:class:`~napari_4dstem_rvae.rvae.TrainEvent`) as an :class:`Epoch`."""
    d = event.diagnostics
    return Epoch(event.epoch, event.epochs_total, float(event.train_loss),
                 None if event.test_loss is None else float(event.test_loss),
                 None if d is None else float(d.max_abs_r), float(event.elapsed))


# -- what a run says of its data --------------------------------------------------------------
def windows_said(note: dict, pixels: int, trained: int | None, auto_edge: bool) -> str:
    """The status line of a run's windows (``note``: the run's windows note)."""
    return (f"windows: {note['windows']} of {note['side_px']:.1f} px resampled to {pixels} × {pixels}"
            + (" from the U-Net's cleaned frame" if note.get("window_from") == "probabilities" else "")
            + (f" (the rVAE trained on {trained} of them, drawn evenly over the frames; every atom is mapped)"
               if trained is not None and note["windows"] > trained else "")
            + (", each turned by its lattice's local orientation (added back to the angle)"
               if note.get("aligned") else "")
            + (f"; the angle read from the rVAE's decoder ({note['two_mode_share_decoder']:.0%} of the atoms in two "
               f"modes, the encoder's {note['two_mode_share_encoder']:.0%})"
               if note.get("angle_from") == "decoder" else "")
            + ("; the angle is the encoder's: too many windows to read it from the decoder on a CPU (--angle-from "
               "decoder does, with fewer pixels)" if str(note.get("angle_from", "")).startswith("encoder (") else "")
            + (f"; {note['dropped_at_edge']} atoms at the frame edges left out" if note.get("dropped_at_edge") else "")
            + (f"; {note['padded_at_edge']} windows at the frame edges padded with the frame's median"
               + (" (a small field: dropping them would leave too few)" if auto_edge else "")
               if note.get("padded_at_edge") else ""))
