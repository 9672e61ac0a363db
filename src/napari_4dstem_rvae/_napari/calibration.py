"""Calibration by hand: fields for every :class:`~napari_4dstem_rvae.dataset.Calibration` value,
used by the Open tab both to override what a file says when it is opened and to edit the
calibration of a data set already loaded (every layer over it follows: scale, origin, units).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from magicgui.widgets import Container, Label, PushButton

from ..workflows import Calibration, Dataset4D
from .common import chosen_layer, dataset_combo
from .fields import OptionForm
from .layers import DATASET_KEY, find_dataset, scan_geometry
from .workers import notify_error


class CalibrationFields(OptionForm):
    """Every calibration value (:class:`Calibration`'s options); 0, "none" or −1 for the origin
    mean "not given"."""

    def __init__(self) -> None:
        super().__init__(Calibration)
        self.append(self.advanced)  # the scan origin, rarely set by hand

    def given(self) -> dict[str, Any]:
        """The values filled in, as :class:`Calibration` fields (for ``read(..., **given)``)."""
        out = {k: v for k, v in self.values().items() if v is not None}
        step = out.get("scan_step")
        if step is not None:
            y, x = step
            if y <= 0:
                del out["scan_step"]
            else:
                out["scan_step"] = y if x <= 0 or x == y else (y, x)
        if out.get("scan_origin") == (0.0, 0.0):
            del out["scan_origin"]
        return out

    def show(self, calibration: Calibration) -> None:
        """Fill the fields with ``calibration`` (unknown values blank)."""
        super().show(calibration)
        if calibration.scan_step is not None:
            self.scan_step.value = calibration.scan_step_yx


def recalibrate(viewer: Any, dataset: Dataset4D, calibration: Calibration) -> Dataset4D:
    """A copy of ``dataset`` with ``calibration`` (recorded in its provenance); every layer over
    ``dataset`` gets the new data set and its scan geometry (scale, origin, units)."""
    entry = {"step": "calibration", "overridden": "by hand", "calibration": calibration.to_dict(),
             "before": dataset.calibration.to_dict()}
    new = dataclasses.replace(dataset, calibration=calibration, provenance=dataset.provenance + (entry,))
    geometry = scan_geometry(new)
    for layer in list(viewer.layers):
        if find_dataset(layer) is dataset:
            layer.metadata[DATASET_KEY] = new
            layer.scale = geometry["scale"]
            layer.translate = geometry["translate"]
            layer.units = geometry.get("units", ("pixel", "pixel"))
    return new


class CalibrationPanel(Container):
    """Edit the calibration of a loaded data set."""

    def __init__(self, viewer: Any):
        super().__init__(labels=True)
        self.viewer = viewer
        self.layer = dataset_combo(viewer)
        self.fields = CalibrationFields()
        self.apply_button = PushButton(text="Apply calibration")
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.extend([self.layer, self.fields, self.apply_button, self.status])
        self.layer.changed.connect(self.refresh)
        self.apply_button.clicked.connect(self.apply)
        self.refresh()

    def refresh(self, *_: Any) -> None:
        try:
            _, dataset = chosen_layer(self.viewer, self.layer)
        except ValueError:
            return
        self.fields.show(dataset.calibration)

    def apply(self) -> Dataset4D | None:
        try:
            layer, dataset = chosen_layer(self.viewer, self.layer)
            given = self.fields.given()
            cleared = {name: None for name in self.fields.cls.__dataclass_fields__
                       if name not in given and name != "scan_origin"}
            calibration = dataset.calibration.replace(**cleared, **given)
        except ValueError as exc:
            message = f"Calibration not applied: {exc}"
            self.status.value = message
            notify_error(message)
            return None
        new = recalibrate(self.viewer, dataset, calibration)
        self.status.value = f"'{layer.name}' recalibrated; every layer over it follows."
        return new
