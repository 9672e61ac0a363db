"""The Atoms tab: the atom-resolved workflow of Kalinin et al. (Sci. Adv. 2021) in the viewer.

An image series (any image layer; the sample "Simulated HAADF series of Si-doped graphene",
or a TIFF stack opened with this plugin, carries its pixel size) → **Find atoms** (classical
band-pass and peaks, the U-Net, or a Points layer edited by hand) → a Points layer
``"<image> atoms"`` (frame, y, x) over the series → **Train** (background) → per-atom angle,
shifts, latents, novelty and the baselines become features of that Points layer, coloured by
the choice in *colour by*; the per-frame histograms (time dynamics) appear in the
"Atoms: histograms per frame" dock. Re-running updates both by name.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton

from ..results.colours import angle_mod_120, feature_colours
from ..workflows import RVAE_FIELDS, AtomOptions, AtomRun, Epoch, Message, RVAEConfig
from .fields import OptionForm
from .layers import SERIES_KEY
from .proxies import layer_kind, unwrap
from .workers import WorkerMixin, friendly_error, notify_error, notify_info

ATOMS_KEY = "napari_4dstem_rvae_atoms"
HISTOGRAM_DOCK = "Atoms: histograms per frame"
COLOUR_CHOICES = ("angle mod 120°", "angle", "latent_1", "latent_2", "novelty", "missing_neighbour", "rim",
                  "centre_excess", "class", "shift_x", "shift_y", "pca_1", "gmm_cluster")


def series_of(layer: Any):
    """The :class:`ImageSeries` behind an image layer (its metadata, or built from its data
    and scale)."""
    from ..workflows import ImageSeries

    layer = unwrap(layer)
    series = layer.metadata.get(SERIES_KEY)
    if series is not None:
        return series
    data = np.asarray(layer.data)
    if data.ndim not in (2, 3) or getattr(layer, "rgb", False):
        raise ValueError(f"layer '{layer.name}' is not a greyscale image or image series (shape {data.shape})")
    scale = float(layer.scale[-1])
    units = [str(u) for u in getattr(layer, "units", ())]
    unit = {"angstrom": "Å", "nanometer": "nm", "picometer": "pm"}.get(units[-1] if units else "", None)
    return ImageSeries(data, scale if unit else None, unit, source=layer.name)


def image_layers(viewer: Any) -> list:
    return [layer for layer in viewer.layers if layer_kind(layer) == "image" and
            (SERIES_KEY in layer.metadata or (np.ndim(layer.data) in (2, 3) and not getattr(layer, "rgb", False)
                                              and "dataset4d" not in layer.metadata))]


class AtomsWidget(Container, WorkerMixin):
    def __init__(self, napari_viewer: Any):
        self.viewer = viewer = unwrap(napari_viewer)
        self.layer = ComboBox(label="image series", choices=lambda _: [l.name for l in image_layers(viewer)],
                              nullable=True)
        self.form = OptionForm(AtomOptions)
        self.rvae_form = OptionForm(RVAEConfig, only=RVAE_FIELDS)
        for form in (self.form, self.rvae_form):
            for widget in form.fields:
                setattr(self, widget.name, widget)
        self.points_layer = ComboBox(label="points layer", nullable=True,
                                     choices=lambda _: [l.name for l in viewer.layers if layer_kind(l) == "points"],
                                     tooltip="with 'points': the atoms marked by hand")
        self.find_button = PushButton(text="Find atoms")
        self.train_button = PushButton(text="Train")
        self.stop_button = PushButton(text="Stop")
        self.colour_by = ComboBox(label="colour atoms by", choices=list(COLOUR_CHOICES), value="angle mod 120°")
        self.results_path = FileEdit(label="results file", mode="w", filter="*.h5")
        self.save_button = PushButton(text="Save results")
        self.status = Label(value="Open an image series (File > Open Sample > HAADF series), then Find atoms.")
        self.status.native.setWordWrap(True)
        super().__init__(widgets=[self.layer, self.form, self.points_layer, self.find_button, self.rvae_form,
                                  self.train_button, self.stop_button, self.colour_by, self.results_path,
                                  self.save_button, self.status])
        from superqt import QCollapsible

        self.advanced_section = QCollapsible("Advanced atom and rVAE options")
        self.advanced_section.addWidget(Container(widgets=[self.form.advanced, self.rvae_form.advanced]).native)
        self.native.layout().insertWidget(self.native.layout().indexOf(self.train_button.native),
                                          self.advanced_section)
        self.stop_button.enabled = False
        self.table = None
        self.result = None
        self.series = None
        self.atom_run: AtomRun | None = None
        self._stop = threading.Event()
        self.find_button.clicked.connect(self.find)
        self.train_button.clicked.connect(self.train)
        self.stop_button.clicked.connect(self.stop)
        self.save_button.clicked.connect(self.save_results)
        self.colour_by.changed.connect(lambda *_: self._recolour())
        self.method.changed.connect(self._method_changed)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            event.connect(self._refresh)
        self.native.destroyed.connect(lambda *_: self._disconnect())
        self._refresh()
        self._method_changed()

    def _method_changed(self, *_: Any) -> None:
        self.points_layer.visible = self.method.value == "points"

    # -- layers ---------------------------------------------------------------------------------
    def _disconnect(self) -> None:
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            try:
                event.disconnect(self._refresh)
            except Exception:
                pass

    def _refresh(self, *_: Any) -> None:
        current = self.layer.value
        self.layer.reset_choices()
        self.points_layer.reset_choices()
        names = [layer.name for layer in image_layers(self.viewer)]
        if current in names:
            self.layer.value = current
        elif names:
            self.layer.value = names[-1]

    def _image_layer(self):
        name = self.layer.value
        if not name or name not in self.viewer.layers:
            raise ValueError("Choose an image series first (File > Open Sample > HAADF series, or open a TIFF stack).")
        return unwrap(self.viewer.layers[name])

    def _points_name(self) -> str:
        return f"{self.layer.value} atoms"

    # -- find ---------------------------------------------------------------------------------------
    def find(self) -> Any:
        """Find the atoms of every frame in the background; the Points layer appears when done."""
        try:
            layer = self._image_layer()
            series = series_of(layer)
            options = self.form.options()
        except ValueError as exc:
            notify_error(str(exc))
            return None
        points = None
        if options.method == "points":
            name = self.points_layer.value
            if not name or name not in self.viewer.layers:
                notify_error("Choose the Points layer that marks the atoms (or another way to find them).")
                return None
            pts = unwrap(self.viewer.layers[name])
            data = np.asarray(pts.data, np.float64)
            world = data * np.asarray(pts.scale)[-data.shape[1]:] + np.asarray(pts.translate)[-data.shape[1]:]
            scale = np.asarray(layer.scale)[-data.shape[1]:]
            points = (world - np.asarray(layer.translate)[-data.shape[1]:]) / scale
        self.series = series
        self.atom_run = run = AtomRun(series, options=options, points=points)
        self.status.value = f"finding atoms in {series.n_frames} frame(s) …"

        def shown(event: Any) -> None:
            if isinstance(event, Message):
                self.status.value = event.text
                if event.level == "warning":   # e.g. a pixel size the lattice disagrees with
                    notify_info(" ".join(event.text.split()))

        return self.run_worker(run.find_events, controls=[self.find_button, self.train_button],
                               on_yielded=shown, on_finished=lambda: self._found(run.table) if run.table is not None
                               else None, what="Finding atoms")

    def _found(self, table) -> None:
        self.table = table
        self.result = None
        if self.atom_run is not None and self.atom_run.series is not None:
            self.series = self.atom_run.series     # its pixel size as the run settled it
        self._show_points()
        per_frame = np.bincount(table.frame, minlength=self.series.n_frames)
        classes = dict(zip(table.class_names, np.bincount(table.cls, minlength=len(table.class_names)).tolist()))
        self.status.value = (f"{len(table)} atoms in {self.series.n_frames} frame(s) "
                             f"({per_frame.min()}–{per_frame.max()} per frame); classes {classes}. Next: Train.")

    def _show_points(self) -> Any:
        """The Points layer of the atoms over the series (frame, y, x in the image's pixel grid,
        with the image's scale and translate), updated in place by name."""
        layer = self._image_layer()
        table = self.table
        coords = np.column_stack([table.frame, table.y, table.x]).astype(np.float64)
        scale = tuple(float(s) for s in layer.scale)
        translate = tuple(float(t) for t in layer.translate)
        if len(scale) == 2:  # a single 2D image: points in 2D
            coords = coords[:, 1:]
        features = self._features()
        pixel = self.series.pixel_size_angstrom
        size = 0.9 / pixel if pixel else 6.0  # ~0.9 Å: a dot per atom, neighbours apart
        name = self._points_name()
        metadata = {ATOMS_KEY: {"image": layer.name}}
        if name in self.viewer.layers and layer_kind(self.viewer.layers[name]) == "points":
            points = unwrap(self.viewer.layers[name])
            points.data = coords
            points.features = features
            points.size = size
            points.scale, points.translate = scale, translate
            points.metadata.update(metadata)
        else:
            kwargs: dict[str, Any] = {"name": name, "scale": scale, "translate": translate, "size": size,
                                      "features": features, "metadata": metadata, "border_width": 0}
            units = tuple(str(u) for u in getattr(layer, "units", ()))
            if units and any(u != "pixel" for u in units):
                kwargs["units"] = units
            points = self.viewer.add_points(coords, **kwargs)
        self._recolour()
        self._show_tracks(layer)
        return points

    def _tracks_name(self) -> str:
        return f"{self.layer.value} tracks"

    def _show_tracks(self, layer: Any) -> Any:
        """The atoms linked over frames as a Tracks layer (track, frame, y, x), aligned with the
        Points layer and the image, each vertex carrying its track's class, lifetime and mean
        angle; updated in place by name. Nothing for a single frame."""
        from ..workflows import dynamics

        table = self.table
        if len(np.asarray(layer.scale)) != 3 or self.series.n_frames < 2 or not (table.track >= 0).any():
            return None
        linked = np.flatnonzero(table.track >= 0)
        order = linked[np.lexsort((table.frame[linked], table.track[linked]))]
        data = np.column_stack([table.track[order], table.frame[order], table.y[order], table.x[order]]).astype(float)
        moving = self.result.dynamics if self.result is not None and self.result.dynamics is not None \
            else dynamics(table, self.series.n_frames)
        per_track = {name: dict(zip(moving.tracks["track"].tolist(), moving.tracks[name].tolist()))
                     for name in ("class", "lifetime", "mean_angle", "displacement")}
        ids = table.track[order].tolist()
        features = {"class": [per_track["class"][t] for t in ids], "lifetime": [per_track["lifetime"][t] for t in ids],
                    "mean angle": np.degrees([per_track["mean_angle"][t] for t in ids]),
                    "displacement": [per_track["displacement"][t] for t in ids]}
        name = self._tracks_name()
        scale, translate = tuple(float(v) for v in layer.scale), tuple(float(v) for v in layer.translate)
        if name in self.viewer.layers and layer_kind(self.viewer.layers[name]) == "tracks":
            tracks = unwrap(self.viewer.layers[name])
            colour_by = tracks.color_by if tracks.color_by in features else "class"
            tracks.color_by = "track_id"          # new data drop the old features: colour by id meanwhile
            tracks.data = data
            tracks.features = features
            tracks.color_by = colour_by
            tracks.scale, tracks.translate = scale, translate
        else:
            kwargs: dict[str, Any] = {"name": name, "scale": scale, "translate": translate, "features": features,
                                      "tail_length": 3, "tail_width": 1.5, "color_by": "class",
                                      "metadata": {ATOMS_KEY: {"image": layer.name}}}
            units = tuple(str(u) for u in getattr(layer, "units", ()))
            if units and any(u != "pixel" for u in units):
                kwargs["units"] = units
            tracks = self.viewer.add_tracks(data, **kwargs)
        return tracks

    def _features(self):
        if self.result is not None:
            return atom_features(self.result.columns(), self.result.table.class_names)
        return atom_features(self.table.columns(), self.table.class_names)

    def _recolour(self) -> None:
        """Face colours from the feature chosen in *colour by* (cyclic map for angles, diverging
        for latents, categories for classes/clusters); atoms without a value are grey."""
        name = self._points_name()
        if name not in self.viewer.layers:
            return
        points = unwrap(self.viewer.layers[name])
        choice = self.colour_by.value
        feature = choice if choice in points.features else "class"
        if feature not in points.features or len(points.data) == 0:
            return
        points.face_color = feature_colours(np.asarray(points.features[feature], np.float64), feature)
        points.metadata["coloured_by"] = feature
        points.refresh()
        dock = getattr(self, "_histograms", None)
        if dock is not None and _alive(dock) and self.result is not None and getattr(dock, "colour_by", None) != choice:
            dock.show_result(self.result, self.series.n_frames, colour_by=choice)  # the titles follow

    # -- train ----------------------------------------------------------------------------------------
    def train(self) -> Any:
        """Cut windows around the atoms and train the rVAE in the background."""
        if self.table is None or self.series is None or self.atom_run is None:
            notify_error("Find the atoms first (Find atoms).")
            return None
        try:
            rvae = self.rvae_form.values()
            run = self.atom_run
            run.options = self.form.options(base=run.options, method=run.options.method)
            # a seed and a latent size at their defaults are not chosen, as on the command line when
            # not given: the run's split retry may change them (AtomRun.train_events)
            untouched = {f.name: f.default for f in dataclasses.fields(RVAEConfig) if f.name in ("seed", "latent_dim")}
            run.rvae = {k: v for k, v in rvae.items() if v is not None and untouched.get(k, None) != v}
        except ValueError as exc:
            notify_error(str(exc))
            return None
        self._stop.clear()
        self.stop_button.enabled = True
        self.status.value = f"training on the windows of {len(self.table)} atoms …"
        said: list[str] = []

        def work():
            import warnings

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                yield from run.train_events(self._stop)
            said.extend(str(w.message) for w in caught if issubclass(w.category, UserWarning))

        def shown(event: Any) -> None:
            if isinstance(event, Epoch):
                self.status.value = f"epoch {event.epoch}/{event.total}: loss {event.train_loss:.4g}"
            elif isinstance(event, Message):
                self.status.value = event.text
                if event.level == "warning":
                    said.append(event.text)      # notified with the results, as the run's warnings are

        def finished() -> None:
            self._train_finished()
            if run.result is not None and not self._stop.is_set():
                self._trained((run.result, said))

        return self.run_worker(work, controls=[self.train_button, self.find_button], on_yielded=shown,
                               on_finished=finished, what="Training")

    def _train_finished(self) -> None:
        self.stop_button.enabled = False

    def _trained(self, returned) -> None:
        result, said = returned
        self.result = result
        for text in dict.fromkeys(said):
            notify_info(" ".join(text.split()))
        self._show_points()
        self._show_histograms()
        note = result.windows_note
        self.status.value = (f"rVAE on {note['windows']} windows ({len(result.history)} epochs): colour the atoms by "
                             "angle or latent; histograms per frame in their dock."
                             + (f" {note['dropped_at_edge']} atoms at frame edges have no window."
                                if note.get("dropped_at_edge") else ""))

    def stop(self) -> None:
        self._stop.set()
        self.status.value = "stopping …"

    def _show_histograms(self) -> Any:
        from .atom_plots import FrameHistograms

        dock = getattr(self, "_histograms", None)
        if dock is None or not _alive(dock):
            dock = FrameHistograms()
            self._histograms = dock
            self.viewer.window.add_dock_widget(dock, name=HISTOGRAM_DOCK, area="bottom")
        dock.show_result(self.result, self.series.n_frames, colour_by=self.colour_by.value)
        return dock

    # -- keep -------------------------------------------------------------------------------------------
    def save_results(self) -> str | None:
        if self.result is None or self.atom_run is None:
            notify_error("Nothing to save yet: find atoms and train first.")
            return None
        path = str(self.results_path.value)
        if not path or path == ".":
            notify_error("Choose a results file (.h5) first.")
            return None
        try:
            written = self.atom_run.write(path)
        except Exception as exc:  # noqa: BLE001 - one sentence to the user
            notify_error(f"Saving the results failed: {friendly_error(exc)}")
            return None
        self.status.value = f"saved {written['h5']}"
        return written["h5"]


def atom_features(columns: dict[str, np.ndarray], class_names: Any = ()) -> Any:
    """The Points layer's features of a per-atom table (:meth:`AtomResult.columns` or a results
    file's): every 1D column, angles in degrees, the angle modulo 120° and the class names."""
    import pandas as pd

    out = {k: np.asarray(v) for k, v in columns.items() if np.ndim(v) == 1}
    names = np.asarray(class_names)
    if "class" in out and len(names):
        out["class name"] = names[np.clip(out["class"].astype(int), 0, len(names) - 1)]
    if "angle_symmetric" in out:
        out["angle_symmetric"] = np.degrees(out["angle_symmetric"].astype(np.float64))
    if "angle" in out:
        out["angle mod 120°"] = angle_mod_120(out["angle"])
        out["angle"] = np.degrees(out["angle"].astype(np.float64))
    return pd.DataFrame(out)


def _alive(widget: Any) -> bool:
    try:
        widget.isVisible()
        return True
    except RuntimeError:
        return False
