"""Train rVAE dock widget: a region in, rotation and latent maps out, live and responsive.

The widget only translates between layers and the engine (:mod:`napari_4dstem_rvae.rvae`):
the data set and an optional region (Shapes or Labels layer rasterised onto the scan) go
in; training runs in a napari thread worker that yields progress events; the loss (and,
when asked, the latent–COM correlation) is plotted live; maps are written back as layers
aligned with the ADF image, updated in place by name. Stop returns within one step and
keeps the partial model; Resume continues it.
"""

from __future__ import annotations

import os

import threading
from typing import Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    PushButton,
    SpinBox,
)
from qtpy.QtWidgets import QProgressBar

from ..processing.chain import RVAE_DETECTOR_PIXELS
from ..rvae.config import DEVICES, LIKELIHOODS, RVAEConfig
from ..rvae.selection import EPOCH_SELECTIONS
from .common import chosen_layer, dataset_combo
from .fields import option_field, options_from
from .layers import find_dataset, map_layer_data, scan_geometry, upsert_layer
from .plots import LatencyProbe, LivePlot
from .proxies import layer_kind, unwrap
from .workers import (
    WorkerMixin,
    friendly_error,
    notify_error,
    stop_worker,
)


class TrainingFailed(Exception):
    """Preparing or running the training failed in the worker (never a RuntimeError, which
    superqt's workers treat as "worker deleted" and end without a finished signal)."""

    @classmethod
    def failed(cls, exc: BaseException) -> TrainingFailed:
        return cls(friendly_error(exc))


class TrainWidget(WorkerMixin, Container):
    def __init__(self, napari_viewer: Any):
        super().__init__(labels=True)
        self.viewer = napari_viewer = unwrap(napari_viewer)
        self.layer = dataset_combo(napari_viewer)
        self.region = ComboBox(label="region", choices=self._region_choices, nullable=True,
                               tooltip="Shapes or Labels layer over the scan: positions used for training")
        self.label = SpinBox(label="label (0 = any)", value=0, min=0, max=2**31 - 1)
        self.count = Label(value="", label="positions")
        self.study_preprocessing = CheckBox(label=f"bin the detector to {RVAE_DETECTOR_PIXELS} px", value=True,
                                            tooltip="Binned and the mean pattern subtracted, as in the published "
                                                    "study (which binned to 64 px); off for data you preprocessed")
        cfg = RVAEConfig
        self.latent = option_field(cfg, "latent_dim", "content latents", minimum=1, maximum=16)
        self.shift = option_field(cfg, "learn_shift", "learn shifts")
        self.epochs = option_field(cfg, "epochs", "epochs (0 = auto)", maximum=100_000,
                                   tooltip="0: about 2,400 optimisation steps, whatever the number of positions")
        self.batch = option_field(cfg, "batch_size", "batch size", minimum=1, maximum=65_536)
        self.lr = option_field(cfg, "learning_rate", "learning rate", minimum=1e-6, maximum=1.0, step=1e-4,
                               decimals=6)
        self.rotation_prior = option_field(cfg, "rotation_prior", "rotation prior σ (rad)", maximum=100.0,
                                           tooltip="Standard deviation of the angle's prior; 0: uniform")
        self.seed = option_field(cfg, "seed")
        self.device = option_field(cfg, "device", choices=DEVICES)
        self.threads = option_field(cfg, "threads", "threads (0 = all)", maximum=256,
                                    tooltip="CPU threads for training; 1 keeps napari responsive on small machines")
        self.threads.value = 1  # the GUI's own choice: the event loop must keep a core
        self.likelihood = option_field(cfg, "likelihood", choices=LIKELIHOODS,
                                       tooltip="auto: anscombe for counts (non-negative integers), gaussian otherwise")
        self.epoch_selection = option_field(cfg, "epoch_selection", "keep the epoch by", choices=EPOCH_SELECTIONS)
        self.restarts = option_field(cfg, "restarts", minimum=1, maximum=16,
                                     tooltip="models started; the one with the lowest held-out loss continues")
        self._config_fields = [self.latent, self.shift, self.epochs, self.batch, self.lr, self.rotation_prior,
                               self.seed, self.device, self.threads, self.likelihood, self.epoch_selection,
                               self.restarts]
        self.maps_every = SpinBox(label="maps every (epochs)", value=0, min=0, max=100_000,
                                  tooltip="Update the map layers every N epochs while training; 0: at the end only")
        self.scheduler = LineEdit(label="dask scheduler", value="")
        self.scheduler.tooltip = ("optional: the address of a dask.distributed scheduler (tcp://host:8786); the "
                                  "final maps (every pattern encoded, novelty) are then made by its workers")
        self.correlate = CheckBox(label="latent–COM correlation", value=True,
                                  tooltip="|r| of each latent map with the COM magnitude, every epoch (plotted); "
                                          "the maps of the best epoch are kept (the study's rule)")
        self.new_region_button = PushButton(text="New region", tooltip="A Shapes layer over the scan, in "
                                            "rectangle mode, with the scan's scale and units")
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
        self.extend([self.layer, self.region, self.new_region_button, self.label, self.count,
                     self.latent, self.shift, self.epochs, self.correlate])
        self.advanced = Container(widgets=[self.study_preprocessing, self.likelihood, self.epoch_selection,
                                           self.restarts, self.batch, self.lr, self.rotation_prior, self.seed,
                                           self.device, self.threads, self.maps_every, self.scheduler],
                                  labels=True)
        self.keep = Container(widgets=[self.checkpoint_path, self.save_button, self.load_button,
                                       self.results_path, self.save_results_button], labels=True)
        from superqt import QCollapsible

        self.advanced_section = QCollapsible("Advanced training options")
        self.advanced_section.addWidget(self.advanced.native)
        self.keep_section = QCollapsible("Save / load")
        self.keep_section.addWidget(self.keep.native)
        from .explore import ExplorePanel

        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.plot = LivePlot()
        # the Explore panel is placed by the analysis dock (its own tab); it follows this session
        self.explore = ExplorePanel(napari_viewer, lambda: self.session)
        layout = self.native.layout()
        layout.addWidget(self.advanced_section)
        layout.addWidget(buttons.native)
        layout.addWidget(self.progress)
        layout.addWidget(self.status.native)
        layout.addWidget(self.plot.widget)
        layout.addWidget(self.keep_section)
        self.status.native.setWordWrap(True)
        self.count.native.setWordWrap(True)
        self.latency = LatencyProbe(parent=self.native)

        self._parameters = [self.layer, self.region, self.new_region_button, self.label, self.study_preprocessing,
                            self.likelihood, self.epoch_selection, self.restarts,
                            self.latent, self.shift, self.epochs, self.batch, self.lr, self.rotation_prior,
                            self.seed, self.device, self.threads, self.maps_every, self.scheduler, self.correlate,
                            self.start_button, self.resume_button, self.save_button, self.load_button,
                            self.save_results_button]
        self.stop_button.enabled = False
        self.resume_button.enabled = False

        self.session = None           # TrainingSession: model + data + history (kept after stop)
        self.maps: dict[str, np.ndarray] | None = None
        self.last_error: str | None = None
        self._encoded_on: str | None = None   # "<scheduler> (dashboard …)" when a cluster made the maps
        self._stop = threading.Event()

        self.new_region_button.clicked.connect(self.new_region)
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.resume_button.clicked.connect(self.resume)
        self.save_button.clicked.connect(self.save_checkpoint)
        self.load_button.clicked.connect(self.load_checkpoint)
        self.save_results_button.clicked.connect(self.save_results)
        for widget in (self.region, self.label, self.layer):
            widget.changed.connect(self.update_count)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._layers_changed)
        self._watched_region = None
        # Closing the dock or the viewer deletes the Qt side of this widget: stop training
        # from a closure that does not need the (possibly half-deleted) widget.
        stop_event = self._stop
        self.native.destroyed.connect(lambda *_: stop_event.set())
        self.native.destroyed.connect(self._on_destroyed)
        self.update_count()

    # -- regions ------------------------------------------------------------------------
    def _region_choices(self, _=None) -> list[str]:
        return [layer.name for layer in self.viewer.layers if layer_kind(layer) in ("shapes", "labels")]

    def new_region(self):
        """A Shapes layer named "region" over the chosen data set, with its scan scale and units,
        selected in rectangle mode: draw on the canvas to choose the training positions."""
        try:
            _, dataset = chosen_layer(self.viewer, self.layer)
        except ValueError as exc:
            self._error(str(exc))
            return None
        name = "region"
        i = 1
        while name in self.viewer.layers:
            i += 1
            name = f"region {i}"
        geometry = scan_geometry(dataset)
        shapes = self.viewer.add_shapes(name=name, ndim=2, edge_color="yellow", face_color="transparent",
                                        edge_width=0.5 * min(geometry["scale"]), units=geometry.get("units"),
                                        axis_labels=geometry["axis_labels"])
        shapes.mode = "add_rectangle"
        self.region.value = name
        return shapes

    def _layers_changed(self, *_: Any) -> None:
        current = self.region.value
        self.region.reset_choices()
        if current in self.region.choices:
            self.region.value = current
        self.update_count()

    def region_mask(self) -> np.ndarray | None:
        """Boolean (scan_y, scan_x) training mask from the chosen region (None: all positions)."""
        from .regions import region_mask

        if not self.region.value:
            return None
        _, ds = chosen_layer(self.viewer, self.layer)
        layer = self.viewer.layers[self.region.value]
        return region_mask(layer, ds, self.label.value or None)

    def update_count(self, *_: Any) -> None:
        """Live count of the selected probe positions (follows edits of the region layer)."""
        if self.region.value and self.region.value in self.viewer.layers:
            layer = self.viewer.layers[self.region.value]
            if layer is not self._watched_region:
                self._unwatch_region()
                layer.events.data.connect(self.update_count)
                if hasattr(layer.events, "paint"):
                    layer.events.paint.connect(self.update_count)
                self._watched_region = layer
        try:
            _, ds = chosen_layer(self.viewer, self.layer)
        except ValueError:
            self.count.value = "no data set"
            return
        total = ds.scan_shape[0] * ds.scan_shape[1]
        try:
            mask = self.region_mask()
        except ValueError as exc:
            self.count.value = str(exc)
            return
        chosen = total if mask is None else int(mask.sum())
        self.count.value = f"{chosen} of {total} for training"

    def _unwatch_region(self) -> None:
        layer = self._watched_region
        if layer is None:
            return
        for name in ("data", "paint"):
            try:
                getattr(layer.events, name).disconnect(self.update_count)
            except Exception:
                pass
        self._watched_region = None

    # -- training -------------------------------------------------------------------------
    def config(self) -> RVAEConfig:
        """The :class:`RVAEConfig` the form describes."""
        return options_from(RVAEConfig, self._config_fields)

    def _set_running(self, running: bool) -> None:
        for widget in self._parameters:
            widget.enabled = not running
        self.stop_button.enabled = running
        self.resume_button.enabled = (not running) and self.session is not None and self.session.can_resume

    def start(self):
        """Start a new training from the current parameters.

        The region is checked here (instant feedback); preparing the data, the COM maps and
        the model happens in the worker, so the UI never waits for it.
        """
        from .training import TrainingSession

        try:
            source_layer, dataset = chosen_layer(self.viewer, self.layer)
            mask = self.region_mask()
            config = self.config()
        except Exception as exc:
            self._error(f"Training could not start: {friendly_error(exc)}")
            return None
        study, correlate = self.study_preprocessing.value, self.correlate.value
        name = source_layer.name

        def make_session():
            return TrainingSession.create(dataset, config, train_mask=mask, study_preprocessing=study,
                                          correlate=correlate, source_layer_name=name)

        self.session = None
        self.plot.clear()
        return self._run(make_session)

    def resume(self):
        """Continue the stopped (or finished) training for the epochs still to do."""
        if self.session is None:
            self._error("Nothing to resume: start a training first.")
            return None
        try:
            layer = self.viewer.layers[self.layer.value] if self.layer.value in self.viewer.layers else None
            self.session.check_unchanged(find_dataset(layer))
        except ValueError as exc:
            self._error(str(exc))
            return None
        return self._run()

    def _run(self, make_session=None):
        session = self.session
        stop = self._stop
        stop.clear()
        self.last_error = None
        self._encoded_on = None
        every = self.maps_every.value
        scheduler = self.scheduler.value.strip() or None
        keep_at = str(self.checkpoint_path.value)
        keep_at = None if not keep_at or keep_at == "." or os.path.isdir(keep_at) else keep_at
        self.progress.setRange(0, self.epochs.value if session is None else session.total_epochs)
        self.progress.setValue(0 if session is None else session.epochs_done)

        def work():
            current = session
            if current is None:
                try:
                    current = make_session()
                except Exception as exc:
                    # not a RuntimeError: superqt treats those as "worker deleted" and ends silently
                    raise TrainingFailed(f"could not start: {friendly_error(exc)}") from exc
                yield {"kind": "session", "session": current}
            try:
                yield from current.run(stop, maps_every=every, checkpoint_path=keep_at, scheduler=scheduler)
            except RuntimeError as exc:  # torch raises RuntimeError (e.g. device out of memory)
                raise TrainingFailed.failed(exc) from exc

        self._set_running(True)
        self.latency.start()
        self.status.value = ("preparing data and model …" if session is None
                             else f"training on {session.n_train} positions …")
        return self.run_worker(work, on_yielded=self._on_event, on_error=self._on_worker_error,
                               on_finished=self._on_finished)

    def stop(self) -> None:
        """Ask the worker to stop; it returns within one optimisation step."""
        self._stop.set()
        self.status.value = "stopping …"

    def _on_event(self, event: Any) -> None:
        try:
            self._handle_event(event)
        except RuntimeError:  # Qt side deleted while events were in flight (viewer closed)
            self._stop.set()

    def _handle_event(self, event: Any) -> None:
        kind = event.get("kind")
        if kind == "session":
            self.session = event["session"]
            self.progress.setRange(0, self.session.total_epochs)
            self.status.value = f"training on {self.session.n_train} positions …"
        elif kind == "epoch":
            self.progress.setValue(int(event["epoch"]))
            self.plot.add_epoch(event["epoch"], event["train_loss"], event.get("test_loss"))
            if event.get("max_abs_r") is not None:
                self.plot.add_correlation(event["epoch"], event["max_abs_r"])
            self.status.value = (f"epoch {event['epoch']}/{self.session.total_epochs}: loss {event['train_loss']:.4g}"
                                 + (f", max |r| {event['max_abs_r']:.3f}" if event.get("max_abs_r") is not None else ""))
        elif kind == "encoding":  # the final maps, encoded on a dask cluster: its tasks as they finish
            self._encoded_on = event.get("cluster", self._encoded_on)
            self.progress.setRange(0, int(event["total"]))
            self.progress.setValue(int(event["done"]))
            self.progress.setFormat("encoding on the cluster: %v/%m tasks")
            self.status.value = f"encoding every pattern on {self._encoded_on}: {event['done']}/{event['total']} tasks"
        elif kind == "maps":
            self.show_maps(event["maps"], event["epoch"])
        elif kind == "info":
            self.status.value = event["message"]  # the status line says it; no pop-up over the canvas
            self._encoded_on = event.get("cluster", self._encoded_on)

    def _on_finished(self) -> None:
        try:
            self.latency.stop()
        except RuntimeError:  # the widget is being deleted (viewer closed)
            return
        session = self.session
        self._set_running(False)
        lat = self.latency.summary()
        state = "stopped" if self._stop.is_set() else "finished"
        self.progress.setFormat("%p%")  # back to epochs after the cluster's task count
        if session is not None:
            self.progress.setRange(0, session.total_epochs)
            self.progress.setValue(session.epochs_done)
            self.status.value = (f"{state} at epoch {session.epochs_done}/{session.total_epochs}; "
                                 f"UI latency median {lat['median_ms']:.0f} ms, p95 {lat['p95_ms']:.0f} ms"
                                 + (f"; maps encoded on {self._encoded_on}" if self._encoded_on else ""))
        self._stop.clear()

    def _on_worker_error(self, exc: BaseException) -> None:
        text = str(exc) if isinstance(exc, TrainingFailed) else friendly_error(exc)
        self._error(f"Training {text}" if text.startswith("could not start") else f"Training stopped: {text}")

    def _error(self, message: str) -> None:
        self.last_error = message
        self.status.value = message
        notify_error(message)

    # -- maps -------------------------------------------------------------------------------
    def show_maps(self, maps: dict[str, np.ndarray], epoch: int) -> list:
        """Add or update the angle, latent (and shift) layers, aligned with the ADF image and
        named ``"<data set> rVAE angle"``, ``"<data set> rVAE latent 1"`` …"""
        from ..schema import MAPS

        session = self.session
        ds = session.display_dataset
        extra = {"epoch": int(epoch), "parameters": {k: str(v) for k, v in session.config.items()},
                 "source": session.source_layer_name}
        self.maps = maps
        items = [map_layer_data("angle", maps["angle"], ds, extra=extra,
                                layer_name=f"{session.source_layer_name} {MAPS['angle'].title}")]
        for name in ("angle_concentration", "angle_symmetric", "novelty"):
            if maps.get(name) is not None:
                items.append(map_layer_data(name, maps[name], ds, extra=extra,
                                            layer_name=f"{session.source_layer_name} {MAPS[name].title}"))
        for name in ("latents", "shift"):
            spec = MAPS[name]
            for i, plane in enumerate(maps.get(name, ())):
                info = dict(extra, plane=i, r_com_magnitude=(session.correlations or {}).get(i)
                            if name == "latents" else None)
                title = spec.plane_title(i)
                items.append(map_layer_data(spec, plane, ds, extra=info, title=title,
                                            layer_name=f"{session.source_layer_name} {title}"))
        for _, kwargs, _ in items:  # new layers: latent 1 over the ADF image, the others hidden
            kwargs["visible"] = kwargs["metadata"]["napari_4dstem_rvae"].get("title") == MAPS["latents"].plane_title(0)
        layers = [upsert_layer(self.viewer, item) for item in items]
        self.explore.set_maps(maps)
        return layers

    # -- keep the work ----------------------------------------------------------------------
    def save_checkpoint(self) -> str | None:
        if self.session is None:
            self._error("No model to save: train one first.")
            return None
        path = str(self.checkpoint_path.value)
        if not path or path == ".":
            self._error("Choose a checkpoint file first.")
            return None
        try:
            self.session.save(path)
        except Exception as exc:
            self._error(f"Saving the checkpoint failed: {exc}")
            return None
        self.status.value = f"checkpoint saved: {path}"
        return path

    def load_checkpoint(self):
        from .training import TrainingSession

        path = str(self.checkpoint_path.value)
        try:
            _, dataset = chosen_layer(self.viewer, self.layer)
            self.session = TrainingSession.load(path, dataset, source_layer_name=self.layer.value)
        except Exception as exc:
            self._error(f"Loading the checkpoint failed: {exc}")
            return None
        self.resume_button.enabled = self.session.can_resume
        self.status.value = f"loaded {path} (epoch {self.session.epochs_done}); computing maps …"
        self._stop.clear()
        return self._run_maps_only()

    def _run_maps_only(self):
        session = self.session
        self._set_running(True)
        return self.run_worker(session.maps, on_returned=lambda maps: self.show_maps(maps, session.epochs_done),
                               on_error=lambda exc: self._error(f"Computing maps failed: {friendly_error(exc)}"),
                               on_finished=self._on_finished)

    def save_results(self) -> str | None:
        if self.session is None or self.maps is None:
            self._error("No maps to save: train a model first.")
            return None
        path = str(self.results_path.value)
        try:
            self.session.write_results(path)
        except Exception as exc:
            self._error(f"Saving the results failed: {exc}")
            return None
        self.status.value = f"results saved: {path}"
        return path

    # -- lifetime ---------------------------------------------------------------------------
    def _on_destroyed(self, *_: Any) -> None:
        self.shutdown()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop a running training and wait for its thread (closing the viewer or the dock)."""
        self._stop.set()
        stop_worker(self.worker, timeout)
        self._unwatch_region()
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            try:
                event.disconnect(self._layers_changed)
            except Exception:
                pass
