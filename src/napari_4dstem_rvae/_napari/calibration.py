"""Calibration by hand: fields for every :class:`~napari_4dstem_rvae.dataset.Calibration` value,
used by the Open tab both to override what a file says when it is opened and to edit the
calibration of a data set already loaded (every layer over it follows: scale, origin, units).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label, PushButton

from ..dataset import Calibration, Dataset4D
from .common import chosen_layer, dataset_combo
from .layers import DATASET_KEY, find_dataset, scan_geometry
from .workers import notify_error

SCAN_UNITS = ("", "Å", "nm", "pm", "µm")
DET_UNITS = ("", "mrad", "1/Å")


def _number(label: str, decimals: int = 4, maximum: float = 1e6, minimum: float = 0.0, tooltip: str = "") -> FloatSpinBox:
    widget = FloatSpinBox(label=label, value=minimum, min=minimum, max=maximum, step=0.01, tooltip=tooltip)
    widget.native.setDecimals(decimals)
    return widget


class CalibrationFields(Container):
    """Every calibration value; 0 (or an empty unit, or −1 for the origin) means "not given"."""

    def __init__(self):
        super().__init__(labels=True)
        self.scan_step_y = _number("scan step y", tooltip="distance between probe positions along the rows")
        self.scan_step_x = _number("scan step x", tooltip="0: the same as y")
        self.scan_unit = ComboBox(label="scan unit", choices=SCAN_UNITS, value="")
        self.det_pixel_size = _number("detector pixel", decimals=5, tooltip="angular size of one detector pixel")
        self.det_unit = ComboBox(label="detector unit", choices=DET_UNITS, value="")
        self.energy_kev = _number("beam energy (keV)", decimals=1, maximum=1e4)
        self.semiangle_mrad = _number("semi-angle (mrad)", decimals=2, maximum=1e3,
                                      tooltip="probe convergence semi-angle")
        self.origin_row = _number("direct beam row", decimals=2, minimum=-1.0, tooltip="−1: not known")
        self.origin_col = _number("direct beam col", decimals=2, minimum=-1.0, tooltip="−1: not known")
        self.extend([self.scan_step_y, self.scan_step_x, self.scan_unit, self.det_pixel_size, self.det_unit,
                     self.energy_kev, self.semiangle_mrad, self.origin_row, self.origin_col])

    def given(self) -> dict[str, Any]:
        """The values filled in, as :class:`Calibration` fields (for ``read(..., **given)``)."""
        out: dict[str, Any] = {}
        if self.scan_step_y.value > 0:
            x = self.scan_step_x.value or self.scan_step_y.value
            out["scan_step"] = self.scan_step_y.value if x == self.scan_step_y.value else (self.scan_step_y.value, x)
        for name in ("scan_unit", "det_unit"):
            if getattr(self, name).value:
                out[name] = getattr(self, name).value
        for name in ("det_pixel_size", "energy_kev", "semiangle_mrad"):
            if getattr(self, name).value > 0:
                out[name] = getattr(self, name).value
        if self.origin_row.value >= 0 and self.origin_col.value >= 0:
            out["det_origin"] = (self.origin_row.value, self.origin_col.value)
        return out

    def show(self, calibration: Calibration) -> None:
        """Fill the fields with ``calibration`` (unknown values blank)."""
        sy, sx = calibration.scan_step_yx if calibration.scan_step is not None else (0.0, 0.0)
        self.scan_step_y.value, self.scan_step_x.value = sy, sx
        self.scan_unit.value = calibration.scan_unit if calibration.scan_unit in SCAN_UNITS else ""
        self.det_pixel_size.value = calibration.det_pixel_size or 0.0
        self.det_unit.value = calibration.det_unit if calibration.det_unit in DET_UNITS else ""
        self.energy_kev.value = calibration.energy_kev or 0.0
        self.semiangle_mrad.value = calibration.semiangle_mrad or 0.0
        row, col = calibration.det_origin if calibration.det_origin is not None else (-1.0, -1.0)
        self.origin_row.value, self.origin_col.value = row, col


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
            cleared = {name: None for name in ("scan_step", "scan_unit", "det_pixel_size", "det_unit",
                                               "energy_kev", "semiangle_mrad", "det_origin") if name not in given}
            calibration = dataset.calibration.replace(**cleared, **given)
        except ValueError as exc:
            message = f"Calibration not applied: {exc}"
            self.status.value = message
            notify_error(message)
            return None
        new = recalibrate(self.viewer, dataset, calibration)
        self.status.value = f"'{layer.name}' recalibrated; every layer over it follows."
        return new
