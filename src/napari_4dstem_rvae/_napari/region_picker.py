"""The training region of the Train tab: a data set, a Shapes or Labels layer drawn over its
scan (or a new one, in rectangle mode, with the scan's units), an optional label, and a live
count of the probe positions it selects."""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, PushButton, SpinBox

from .common import chosen_layer, dataset_combo
from .layers import scan_geometry
from .proxies import layer_kind


class RegionPicker(Container):
    def __init__(self, viewer: Any, on_error: Any):
        super().__init__(labels=True)
        self.margins = (0, 0, 0, 0)
        self.viewer, self._error = viewer, on_error
        self.layer = dataset_combo(viewer)
        self.region = ComboBox(label="region", choices=self._region_choices, nullable=True,
                               tooltip="Shapes or Labels layer over the scan: positions used for training")
        self.new_region_button = PushButton(text="New region", tooltip="A Shapes layer over the scan, in "
                                            "rectangle mode, with the scan's scale and units")
        self.region_label = SpinBox(label="label (0 = any)", value=0, min=0, max=2**31 - 1)
        self.count = Label(value="", label="positions")
        self.count.native.setWordWrap(True)
        self.extend([self.layer, self.region, self.new_region_button, self.region_label, self.count])
        self._watched = None
        self.new_region_button.clicked.connect(self.new_region)
        for widget in (self.region, self.region_label, self.layer):
            widget.changed.connect(self.update_count)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            event.connect(self._layers_changed)
        self.update_count()

    def _region_choices(self, _: Any = None) -> list[str]:
        return [layer.name for layer in self.viewer.layers if layer_kind(layer) in ("shapes", "labels")]

    def new_region(self) -> Any:
        """A Shapes layer named "region" over the chosen data set, with its scan scale and units,
        selected in rectangle mode: draw on the canvas to choose the training positions."""
        try:
            _, dataset = chosen_layer(self.viewer, self.layer)
        except ValueError as exc:
            self._error(str(exc))
            return None
        name, i = "region", 1
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

    def mask(self) -> np.ndarray | None:
        """Boolean (scan_y, scan_x) training mask from the chosen region (None: all positions)."""
        from .regions import region_mask

        if not self.region.value:
            return None
        _, ds = chosen_layer(self.viewer, self.layer)
        return region_mask(self.viewer.layers[self.region.value], ds, self.region_label.value or None)

    def update_count(self, *_: Any) -> None:
        """Live count of the selected probe positions (follows edits of the region layer)."""
        if self.region.value and self.region.value in self.viewer.layers:
            layer = self.viewer.layers[self.region.value]
            if layer is not self._watched:
                self.unwatch()
                layer.events.data.connect(self.update_count)
                if hasattr(layer.events, "paint"):
                    layer.events.paint.connect(self.update_count)
                self._watched = layer
        try:
            _, ds = chosen_layer(self.viewer, self.layer)
        except ValueError:
            self.count.value = "no data set"
            return
        total = ds.scan_shape[0] * ds.scan_shape[1]
        try:
            mask = self.mask()
        except ValueError as exc:
            self.count.value = str(exc)
            return
        self.count.value = f"{total if mask is None else int(mask.sum())} of {total} for training"

    def unwatch(self) -> None:
        layer, self._watched = self._watched, None
        for name in ("data", "paint"):
            try:
                getattr(layer.events, name).disconnect(self.update_count)
            except Exception:  # noqa: BLE001 - the layer may be gone
                pass

    def disconnect_viewer(self) -> None:
        self.unwatch()
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            try:
                event.disconnect(self._layers_changed)
            except Exception:  # noqa: BLE001
                pass
