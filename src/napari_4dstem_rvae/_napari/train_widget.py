"""Train tab: a region in, rotation and latent maps out, live and responsive.

The tab only translates between layers and the core's run (:class:`~napari_4dstem_rvae.workflows.STEMRun`,
the same ``stem-rvae run`` drives): the data set and an optional region go in; the run's
events come back from a napari thread worker — the loss (and the latent–COM |r| when
computed) plotted live, passes and cluster tasks in napari's progress, the maps written as
layers aligned with the ADF image, updated in place by name. The fields come from the
options objects (:class:`RVAEConfig`, :class:`RunOptions`), so their defaults are the CLI's.
Stop returns within one step and keeps the partial model; Resume continues it. The COM the
COM tab made for the data set is reused when its options are the run's.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np
from magicgui.widgets import Container, FileEdit, Label, LineEdit, PushButton, SpinBox
from qtpy.QtWidgets import QProgressBar

from ..schema import MAPS, map_names
from ..workflows import Done, Epoch, Maps, Message, Progress, RunOptions, RVAEConfig, STEMRun
from .common import chosen_layer
from .fields import OptionForm
from .layers import COM_KEY, find_dataset, layer_name, map_layer_data, upsert_layer
from .plots import LivePlot
from .progress import ProgressBars
from .proxies import unwrap
from .region_picker import RegionPicker
from .workers import WorkerMixin, friendly_error, notify_error, stop_worker


class TrainingFailed(Exception):
    """Preparing or running the training failed in the worker (never a RuntimeError, which
    superqt's workers treat as "worker deleted" and end without a finished signal)."""


class TrainWidget(WorkerMixin, Container):
    def __init__(self, napari_viewer: Any):
        super().__init__(labels=True)
        self.viewer = napari_viewer = unwrap(napari_viewer)
        self.picker = RegionPicker(napari_viewer, self._error)
        self.layer, self.region, self.region_label, self.count = (self.picker.layer, self.picker.region,
                                                                  self.picker.region_label, self.picker.count)
        self.new_region_button = self.picker.new_region_button
        self.config_form = OptionForm(RVAEConfig)
        self.run_form = OptionForm(RunOptions)
        for form in (self.config_form, self.run_form):
            for widget in form.fields:
                setattr(self, widget.name, widget)
        self.maps_every = SpinBox(label="maps every (epochs)", value=0, min=0, max=100_000,
                                  tooltip="Update the map layers every N epochs while training; 0: at the end only")
        self.scheduler = LineEdit(label="dask scheduler", value="")
        self.scheduler.tooltip = ("optional: the address of a dask.distributed scheduler (tcp://host:8786); the "
                                  "COM pass and the final maps (every pattern encoded, novelty) are then made by "
                                  "its workers")
        self.start_button = PushButton(text="Start")
        self.stop_button = PushButton(text="Stop")
        self.resume_button = PushButton(text="Resume")
        self.checkpoint_path = FileEdit(label="checkpoint", mode="w", filter="*.pt")
        self.checkpoint_path.tooltip = ("When set, the training is also saved here while it runs (about 20 times "
                                        "and at Stop), so a crash loses little: Load checkpoint, then Resume.")
        self.save_button = PushButton(text="Save checkpoint")
        self.load_button = PushButton(text="Load checkpoint")
        self.results_path = FileEdit(label="results file", mode="w", filter="*.h5")
        self.save_results_button = PushButton(text="Save results")
        self.status = Label(value="")
        buttons = Container(widgets=[self.start_button, self.stop_button, self.resume_button],
                            layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.extend([self.picker, self.config_form, self.run_form])
        self.advanced = Container(widgets=[self.config_form.advanced, self.maps_every, self.scheduler], labels=True)
        self.keep = Container(widgets=[self.checkpoint_path, self.save_button, self.load_button,
                                       self.results_path, self.save_results_button], labels=True)
        from superqt import QCollapsible

        from .explore import ExplorePanel

        self.advanced_section = QCollapsible("Advanced training options")
        self.advanced_section.addWidget(self.advanced.native)
        self.keep_section = QCollapsible("Save / load")
        self.keep_section.addWidget(self.keep.native)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.plot = LivePlot()
        # the Explore panel is placed by the analysis dock (its own tab); it follows this run
        self.explore = ExplorePanel(napari_viewer, lambda: self.session)
        layout = self.native.layout()
        for widget in (self.advanced_section, buttons.native, self.progress, self.status.native, self.plot.widget,
                       self.keep_section):
            layout.addWidget(widget)
        self.status.native.setWordWrap(True)
        self._parameters = [self.picker, self.config_form, self.run_form, self.advanced, self.start_button,
                            self.resume_button, self.save_button, self.load_button, self.save_results_button]
        self.stop_button.enabled = False
        self.resume_button.enabled = False
        self.session: STEMRun | None = None   # the run: model + data + history (kept after a stop)
        self.maps: dict[str, np.ndarray] | None = None
        self.last_error: str | None = None
        self.bars = ProgressBars()
        self._stop = threading.Event()
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.resume_button.clicked.connect(self.resume)
        self.save_button.clicked.connect(self.save_checkpoint)
        self.load_button.clicked.connect(self.load_checkpoint)
        self.save_results_button.clicked.connect(self.save_results)
        # Closing the dock or the viewer deletes the Qt side of this widget: stop training
        # from a closure that does not need the (possibly half-deleted) widget.
        stop_event = self._stop
        self.native.destroyed.connect(lambda *_: stop_event.set())
        self.native.destroyed.connect(lambda *_: self.shutdown())

    # -- the run ----------------------------------------------------------------------------
    def region_mask(self) -> np.ndarray | None:
        return self.picker.mask()

    def update_count(self, *_: Any) -> None:
        self.picker.update_count()

    def config(self) -> RVAEConfig:
        """The :class:`RVAEConfig` the form describes."""
        return self.config_form.options()

    def _set_running(self, running: bool) -> None:
        for widget in self._parameters:
            widget.enabled = not running
        self.stop_button.enabled = running
        self.resume_button.enabled = (not running) and self.session is not None and self.session.can_resume

    def start(self) -> Any:
        """Start a new run from the form. The region and options are checked here (instant
        feedback); reading, the COM pass and the model are prepared in the worker."""
        try:
            source_layer, dataset = chosen_layer(self.viewer, self.layer)
            mask = self.region_mask()
            config, options = self.config(), self.run_form.options()
        except Exception as exc:  # noqa: BLE001 - every reason reaches the user as one sentence
            self._error(f"Training could not start: {friendly_error(exc)}")
            return None
        made = unwrap(source_layer).metadata.get(COM_KEY) or {}
        reuse = made.get("dataset") is dataset
        scheduler = self.scheduler.value.strip() or None

        def make_run() -> STEMRun:
            return STEMRun(dataset, config=config, options=options, roi=mask, client=scheduler,
                           com=made.get("result") if reuse else None,
                           com_made_with=made.get("options") if reuse else None, name=dataset.name)

        self.session = None
        self.plot.clear()
        return self._run(make_run)

    def resume(self) -> Any:
        """Continue the stopped (or finished) training for the epochs still to do."""
        if self.session is None:
            self._error("Nothing to resume: start a training first.")
            return None
        layer = self.viewer.layers[self.layer.value] if self.layer.value in self.viewer.layers else None
        if find_dataset(layer) is not self.session.dataset:
            self._error("The data set changed since this training started (another layer or new data): start "
                        "a new training instead of resuming.")
            return None
        return self._run()

    def _run(self, make_run: Any = None) -> Any:
        session, stop = self.session, self._stop
        stop.clear()
        self.last_error = None
        every = self.maps_every.value
        keep_at = str(self.checkpoint_path.value)
        keep_at = None if not keep_at or keep_at == "." or os.path.isdir(keep_at) else keep_at

        def work():
            current = session
            if current is None:
                try:
                    current = make_run()
                except Exception as exc:  # noqa: BLE001 - not a RuntimeError: see TrainingFailed
                    raise TrainingFailed(f"could not start: {friendly_error(exc)}") from exc
                yield current
            try:
                for event in current.events(stop, maps_every=every):
                    if keep_at and isinstance(event, Epoch) and current.trainer is not None and \
                            (event.epoch % max(1, event.total // 20) == 0 or event.epoch == event.total):
                        current.save_checkpoint(keep_at)
                    yield event
                if keep_at and stop.is_set() and current.trainer is not None:
                    current.save_checkpoint(keep_at)
            except (RuntimeError, ValueError, OSError, MemoryError) as exc:
                raise TrainingFailed(friendly_error(exc)) from exc

        self._set_running(True)
        self.progress.setRange(0, 0 if session is None else session.total_epochs)
        self.progress.setValue(0 if session is None else session.epochs_done)
        self.status.value = ("reading the data, COM, preparing the model …" if session is None
                             else f"training on {session.n_train} positions …")
        return self.run_worker(work, on_yielded=self._on_event, on_error=self._on_worker_error,
                               on_finished=self._on_finished)

    def stop(self) -> None:
        """Ask the worker to stop; it returns within one optimisation step."""
        self._stop.set()
        self.status.value = "stopping …"

    def _on_event(self, event: Any) -> None:
        try:
            self._handle(event)
        except RuntimeError:  # Qt side deleted while events were in flight (viewer closed)
            self._stop.set()

    def _handle(self, event: Any) -> None:
        if isinstance(event, STEMRun):
            self.session = event
        elif isinstance(event, Epoch):
            if self.progress.maximum() != event.total:
                self.progress.setRange(0, event.total)
                self.progress.setFormat("%p%")
            self.progress.setValue(int(event.epoch))
            self.plot.add_epoch(event.epoch, event.train_loss, event.test_loss)
            if event.max_abs_r is not None:
                self.plot.add_correlation(event.epoch, event.max_abs_r)
            self.status.value = (f"epoch {event.epoch}/{event.total}: loss {event.train_loss:.4g}"
                                 + (f", max |r| {event.max_abs_r:.3f}" if event.max_abs_r is not None else ""))
        elif isinstance(event, Progress):
            self.status.value = f"{event.stage}: {event.done}/{event.total} {event.unit}" + \
                (f" on {event.where}" if event.where else "")
            self.bars.update(event)   # last: making a bar may deliver the next event first
        elif isinstance(event, Maps):
            self.show_maps(event.maps, event.epoch, event.latent_r)
        elif isinstance(event, Message):
            self.status.value = event.text  # the status line says it; no pop-up over the canvas
        elif isinstance(event, Done):
            self.bars.close()

    def _on_finished(self) -> None:
        session = self.session
        try:
            self._set_running(False)
        except RuntimeError:  # the widget is being deleted (viewer closed)
            return
        self.bars.close()
        if session is not None and session.trainer is not None:
            state = "stopped" if self._stop.is_set() else "finished"
            self.progress.setRange(0, session.total_epochs)
            self.progress.setValue(session.epochs_done)
            where = f"; maps encoded on {session.where}" if session.where else ""
            self.status.value = f"{state} at epoch {session.epochs_done}/{session.total_epochs}{where}"
        self._stop.clear()

    def _on_worker_error(self, exc: BaseException) -> None:
        text = str(exc) if isinstance(exc, TrainingFailed) else friendly_error(exc)
        self._error(f"Training {text}" if text.startswith("could not start") else f"Training stopped: {text}")

    def _error(self, message: str) -> None:
        self.last_error = message
        self.status.value = message
        notify_error(message)

    # -- maps -------------------------------------------------------------------------------
    def show_maps(self, maps: dict[str, np.ndarray], epoch: int, latent_r: Any = ()) -> list:
        """Add or update the map layers (those the schema shows: angle, latents, shifts,
        certainty, novelty …), aligned with the ADF image and named ``"<data set> rVAE …"``;
        latent 1 visible over the ADF image, the others hidden."""
        session = self.session
        ds, prefix = session.dataset, session.name
        extra = {"epoch": int(epoch), "parameters": {k: str(v) for k, v in session.config.to_dict().items()},
                 "source": prefix}
        self.maps = maps
        items = []
        for name in map_names("rvae", shown=True):
            spec, values = MAPS[name], maps.get(name)
            if values is None:
                continue
            if not spec.is_stack:
                items.append(map_layer_data(spec, values, ds, extra=extra, layer_name=layer_name(spec.title, prefix)))
                continue
            for i, plane in enumerate(values):
                r = latent_r[i] if name == "latents" and i < len(latent_r) else None
                title = spec.plane_title(i)
                items.append(map_layer_data(spec, plane, ds, extra=dict(extra, plane=i, r_com_magnitude=r),
                                            title=title, layer_name=layer_name(title, prefix)))
        first = MAPS["latents"].plane_title(0)
        for _, kwargs, _ in items:
            kwargs["visible"] = kwargs["metadata"]["napari_4dstem_rvae"].get("title") == first
        layers = [upsert_layer(self.viewer, item) for item in items]
        self.explore.set_maps(maps)
        return layers

    # -- keep the work ----------------------------------------------------------------------
    def save_checkpoint(self) -> str | None:
        path = str(self.checkpoint_path.value)
        if self.session is None or self.session.trainer is None:
            self._error("No model to save: train one first.")
            return None
        if not path or path == ".":
            self._error("Choose a checkpoint file first.")
            return None
        try:
            self.session.save_checkpoint(path)
        except Exception as exc:  # noqa: BLE001
            self._error(f"Saving the checkpoint failed: {friendly_error(exc)}")
            return None
        self.status.value = f"checkpoint saved: {path}"
        return path

    def load_checkpoint(self) -> Any:
        path = str(self.checkpoint_path.value)
        try:
            layer, dataset = chosen_layer(self.viewer, self.layer)
            self.session = STEMRun.from_checkpoint(path, dataset, name=dataset.name)
        except Exception as exc:  # noqa: BLE001
            self._error(f"Loading the checkpoint failed: {friendly_error(exc)}")
            return None
        self.status.value = f"loaded {path} (epoch {self.session.epochs_done}); computing maps …"
        self._stop.clear()
        session = self.session
        self._set_running(True)
        return self.run_worker(session.maps, on_returned=lambda maps: self.show_maps(maps, session.epochs_done),
                               on_error=lambda exc: self._error(f"Computing maps failed: {friendly_error(exc)}"),
                               on_finished=self._on_finished)

    def save_results(self) -> Any:
        """Write the results file of the run (the maps computed, in a worker: the window stays
        responsive); the file is guarded like the CLI's (never the input, nor a foreign file)."""
        if self.session is None or self.maps is None:
            self._error("No maps to save: train a model first.")
            return None
        path = str(self.results_path.value)
        if not path or path == "." or os.path.isdir(path):
            self._error("Choose a results file (.h5) first.")
            return None
        session = self.session
        self.status.value = f"saving {path} …"

        def saved(outputs: dict) -> None:
            self.status.value = f"results saved: {outputs['results']}"

        return self.run_worker(lambda: session.write(path), controls=[self.save_results_button], on_returned=saved,
                               on_error=lambda exc: self._error(f"Saving the results failed: {friendly_error(exc)}"))

    # -- lifetime -----------------------------------------------------------------------------
    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop a running training and wait for its thread (closing the viewer or the dock)."""
        self._stop.set()
        stop_worker(self.worker, timeout)
        try:
            self.bars.close()
        except Exception:  # noqa: BLE001 - napari's progress may be gone with the viewer
            pass
        self.picker.disconnect_viewer()
