"""The quick runs: the overview images (``stem-rvae image``) and the COM/DPC maps (``stem-rvae
com`` and the COM tab), each a generator of events that owns its outputs."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

from ..dataset import Dataset4D
from .cluster import cluster, describe
from .events import Done, Event, Message, reporting
from .stem import open_dataset, output_paths, overview_masks


def _results_args(dataset: Dataset4D) -> dict[str, Any]:
    return {"calibration": dataset.calibration, "scan_shape": dataset.scan_shape, "source": dataset.source,
            "provenance": dataset.provenance, "inputs": [dataset.source] if dataset.source else []}


class ImageRun:
    """The overview images of a data set (the total intensity and, when calibrated, the ADF) in
    one pass; with ``out``, written as ``images.h5`` and one PNG each."""

    def __init__(self, source: Any, out: Any = None, *, read_options: dict | None = None, client: Any = None):
        self.source, self.out, self.read_options, self.client = source, out, dict(read_options or {}), client
        self.dataset: Dataset4D | None = source if isinstance(source, Dataset4D) else None
        self.images: dict | None = None
        self.outputs: dict[str, str] = {}

    def events(self, stop: threading.Event | None = None) -> Iterator[Event]:
        from ..processing.engine import reduce_masks
        from ..results import claim_output, image_figure, write_results

        ds = self.dataset = open_dataset(self.source, **self.read_options)
        with ExitStack() as hold:
            results_file = None
            if self.out is not None:
                results_file, _ = output_paths(self.out, "images", [ds.source])
                hold.enter_context(claim_output(results_file, [ds.source] if ds.source else [], "--out"))
            client = hold.enter_context(cluster(self.client))
            where = "" if client is None else describe(client)
            self.images = yield from reporting(reduce_masks, "images", ds.data, overview_masks(ds), nonfinite="nan",
                                               client=client, where=where, stop=stop)
            if results_file is not None:
                self.outputs = {"images": write_results(results_file, images=self.images, what="--out",
                                                        **_results_args(ds))}
                for name, image in self.images.items():
                    self.outputs[f"{name}_png"] = image_figure(results_file.with_name(f"{name}.png"), image, name,
                                                               ds.calibration)
        yield Done(dict(self.outputs))


class COMRun:
    """COM/DPC maps of a data set (:func:`~napari_4dstem_rvae.processing.compute_com` with a
    :class:`~napari_4dstem_rvae.processing.COMOptions`), on this process or a dask cluster;
    with ``out``, written as ``com.h5`` (reopens in napari) and ``com.png``."""

    def __init__(self, source: Any, out: Any = None, *, options: Any = None, read_options: dict | None = None,
                 client: Any = None):
        from ..processing.com import COMOptions

        self.source, self.out, self.read_options, self.client = source, out, dict(read_options or {}), client
        self.options = options if options is not None else COMOptions()
        self.dataset: Dataset4D | None = source if isinstance(source, Dataset4D) else None
        self.result: Any = None
        self.where = ""
        self.outputs: dict[str, str] = {}

    def events(self, stop: threading.Event | None = None) -> Iterator[Event]:
        from ..processing import compute_com
        from ..results import claim_output, com_figure, write_results

        ds = self.dataset = open_dataset(self.source, **self.read_options)
        with ExitStack() as hold:
            h5 = png = None
            if self.out is not None:
                h5, png = output_paths(self.out, "com", [ds.source])
                hold.enter_context(claim_output(h5, [ds.source] if ds.source else [], "--out"))
            client = hold.enter_context(cluster(self.client, what="dask scheduler"))
            if client is not None:
                self.where = describe(client)
                yield Message(f"COM on {self.where}")
            self.result = result = yield from reporting(
                compute_com, "COM", ds, self.options, client=client, unit="tasks" if client is not None else "blocks",
                where=self.where, stop=stop)
            if h5 is not None:
                self.outputs = {"h5": write_results(h5, com=result, what="--out", **_results_args(ds)),
                                "png": com_figure(png, result)}
        problem = result.rotation.problem if result.rotation is not None else None
        how = ("given" if result.rotation is None else "calibrated (min curl)" if problem is None
               else "used instead of an unreliable automatic value")
        yield Message(f"COM: rotation {result.rotation_deg:.2f}° {how}, flip {result.flip}, "
                      f"reference {result.reference}")
        yield Done(dict(self.outputs))


def run_to_end(events: Iterator[Event], log: Any = None) -> Done:
    """Drive a run's events to its :class:`Done` (messages to ``log`` when given)."""
    done = Done()
    for event in events:
        if isinstance(event, Message) and log is not None:
            log(event.text)
        elif isinstance(event, Done):
            done = event
    return done


def images(dataset: Any, out: Any, log: Any = None) -> dict[str, str]:
    """:class:`ImageRun` to the end; the written paths."""
    run = ImageRun(dataset, out)
    run_to_end(run.events(), log)
    return run.outputs


def com(dataset: Any, out: Any, options: Any = None, log: Any = None, client: Any = None,
        **changes: Any) -> tuple[Any, dict[str, str]]:
    """:class:`COMRun` to the end: (the COM result, the written paths); ``changes``: single
    fields of the options."""
    from ..processing.com import COMOptions

    run = COMRun(dataset, out, options=(options or COMOptions()).replace(**changes), client=client)
    run_to_end(run.events(), log)
    return run.result, run.outputs
