"""Centre of mass / DPC dock widget.

Choose the data set, the mask, the reference and the scan rotation (auto: exact curl
minimisation, or manual); the maps come back as layers aligned with the ADF image:
COM x and y, magnitude, angle (cyclic colormap), a colour-wheel composite of direction and
magnitude, divergence and curl. Re-running updates the layers by name.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label, PushButton

from ._layers import ROLE_KEY, map_layer_data, scan_geometry, upsert_layer
from ._qt_common import chosen_layer, dataset_combo, notify_error, start_worker


def colour_wheel(angle: np.ndarray, magnitude: np.ndarray) -> np.ndarray:
    """RGB (scan_y, scan_x, 3) in [0, 1]: hue = direction, value = magnitude / its 99th percentile."""
    from matplotlib.colors import hsv_to_rgb

    hue = (np.mod(angle, 2 * np.pi)) / (2 * np.pi)
    finite = magnitude[np.isfinite(magnitude)]
    top = float(np.percentile(finite, 99)) if finite.size else 1.0
    value = np.clip(magnitude / (top if top > 0 else 1.0), 0, 1)
    hsv = np.stack([hue, np.ones_like(hue), value], axis=-1)
    return hsv_to_rgb(np.nan_to_num(hsv)).astype(np.float32)


def com_layer_data(com: Any, dataset: Any, extra: dict | None = None) -> list[tuple]:
    """Layer data of every COM map of ``com`` (a :class:`COMResult`) over ``dataset``."""
    prefix = f"{dataset.name} COM"
    unit = "mrad" if com.x_mrad is not None else "px"
    x = com.x_mrad if com.x_mrad is not None else com.x
    y = com.y_mrad if com.y_mrad is not None else com.y
    magnitude = np.hypot(x, y)
    info = {"unit": unit, "rotation_deg": float(com.rotation_deg), "flip": bool(com.flip),
            "reference": com.reference, "mask": com.mask, **(extra or {})}
    layers = [
        map_layer_data("com_x", x, dataset, "signed", info, f"{prefix} x"),
        map_layer_data("com_y", y, dataset, "signed", info, f"{prefix} y"),
        map_layer_data("com_magnitude", magnitude, dataset, "magnitude", info, f"{prefix} magnitude"),
        map_layer_data("com_angle", com.angle, dataset, "angle", info, f"{prefix} angle"),
        map_layer_data("com_divergence", com.divergence, dataset, "signed", info, f"{prefix} divergence"),
        map_layer_data("com_curl", com.curl, dataset, "signed", info, f"{prefix} curl"),
    ]
    rgb = colour_wheel(com.angle, magnitude)
    meta = dict(layers[0][1]["metadata"])
    meta[ROLE_KEY] = {**meta[ROLE_KEY], "map": "com_colour_wheel", "map_kind": "rgb"}
    layers.append((rgb, {"name": f"{prefix} colour wheel", "rgb": True, "metadata": meta,
                         **scan_geometry(dataset)}, "image"))
    return layers


class COMWidget(Container):
    def __init__(self, napari_viewer: Any):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.layer = dataset_combo(napari_viewer)
        self.mask = ComboBox(label="mask", choices=["whole", "disk", "annulus"], value="whole")
        self.unit = ComboBox(label="radius unit", choices=["bf", "px", "mrad"], value="bf",
                             tooltip="bf: multiples of the bright-field disk radius")
        self.radius = FloatSpinBox(label="disk radius", value=1.2, min=0.01, max=1e4, step=0.1)
        self.inner = FloatSpinBox(label="annulus inner", value=1.25, min=0.0, max=1e4, step=0.1)
        self.outer = FloatSpinBox(label="annulus outer", value=3.0, min=0.01, max=1e4, step=0.1)
        self.threshold = FloatSpinBox(label="threshold (fraction of max)", value=0.0, min=0.0, max=0.99, step=0.05)
        self.reference = ComboBox(label="reference", choices=["mean", "plane", "none"], value="mean")
        self.auto_rotation = CheckBox(label="auto rotation (min curl)", value=True)
        self.rotation = FloatSpinBox(label="rotation (deg)", value=0.0, min=-360, max=360, step=1)
        self.flip = ComboBox(label="flip", choices=["auto", "no", "yes"], value="auto")
        self.run_button = PushButton(text="Compute COM")
        self.status = Label(value="")
        self.extend([self.layer, self.mask, self.unit, self.radius, self.inner, self.outer, self.threshold,
                     self.reference, self.auto_rotation, self.rotation, self.flip, self.run_button, self.status])
        self._controls = [w for w in self if w is not self.status]
        self.mask.changed.connect(self._update_visibility)
        self.auto_rotation.changed.connect(self._update_visibility)
        self.run_button.clicked.connect(self.run)
        self._update_visibility()
        self.worker = None
        self.last_result = None

    def _update_visibility(self, *_: Any) -> None:
        self.radius.visible = self.mask.value == "disk"
        self.inner.visible = self.outer.visible = self.mask.value == "annulus"
        self.unit.visible = self.mask.value != "whole"
        self.rotation.visible = not self.auto_rotation.value

    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"mask": self.mask.value, "reference": None if self.reference.value == "none"
                                   else self.reference.value}
        if self.mask.value == "disk":
            options.update(radius=self.radius.value, unit=self.unit.value)
        elif self.mask.value == "annulus":
            options.update(inner=self.inner.value, outer=self.outer.value, unit=self.unit.value)
        if self.threshold.value > 0:
            options["threshold"] = self.threshold.value
        options["rotation"] = "auto" if self.auto_rotation.value else float(self.rotation.value)
        options["flip"] = {"auto": "auto", "no": False, "yes": True}[self.flip.value]
        return options

    def run(self):
        from .processing import compute_com

        try:
            _, dataset = chosen_layer(self.viewer, self.layer)
        except ValueError as exc:
            notify_error(str(exc))
            return None
        options = self.options()
        self.status.value = "computing …"

        def work():
            return compute_com(dataset, **options)

        def done(com):
            self.last_result = com
            for item in com_layer_data(com, dataset, {"options": {k: str(v) for k, v in options.items()}}):
                upsert_layer(self.viewer, item)
            how = "calibrated" if com.rotation is not None else "given"
            self.status.value = (f"rotation {com.rotation_deg:.2f}° ({how}), flip {'yes' if com.flip else 'no'}, "
                                 f"reference {com.reference}")

        def failed(exc):
            self.status.value = "failed"
            notify_error(f"COM of '{dataset.name}' failed: {exc}")

        self.worker = start_worker(work, controls=self._controls, on_returned=done, on_error=failed)
        return self.worker
