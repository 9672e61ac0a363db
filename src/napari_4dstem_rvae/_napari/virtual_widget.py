"""Virtual detector dock widget: an annulus (or disk, inner = 0) in mrad, px or multiples of
the bright-field radius, drawn on the diffraction browser; the image over the scan is
recomputed (one pass, in a worker) whenever the radii change."""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label, PushButton

from .common import chosen_layer, dataset_combo, find_browser
from .layers import layer_name, map_layer_data, upsert_layer
from .proxies import unwrap
from .workers import WorkerMixin, friendly_error, notify_error


class VirtualDetectorWidget(WorkerMixin, Container):
    def __init__(self, napari_viewer: Any, browser: Any = None):
        super().__init__(labels=True)
        self.viewer = napari_viewer = unwrap(napari_viewer)
        self.browser = browser  # where the detector is drawn
        self.layer = dataset_combo(napari_viewer)
        self.unit = ComboBox(label="unit", choices=["bf", "px", "mrad"], value="bf",
                             tooltip="bf: multiples of the bright-field disk radius")
        self.inner = FloatSpinBox(label="inner radius", value=1.2, min=0.0, max=1e4, step=0.1)
        self.outer = FloatSpinBox(label="outer radius", value=3.0, min=0.01, max=1e4, step=0.1)
        self.run_button = PushButton(text="Compute image")
        self.status = Label(value="")
        self.extend([self.layer, self.unit, self.inner, self.outer, self.run_button])
        self.native.layout().addWidget(self.status.native)  # full width, wrapped
        self.status.native.setWordWrap(True)
        self._controls = [self.layer, self.unit, self.run_button]
        self.run_button.clicked.connect(self.run)
        for w in (self.inner, self.outer, self.unit):
            w.changed.connect(self._draw_on_browser)
        self.last_image = None
        self._geometry = None

    def _geometry_for(self, ds):
        """(centre, disk radius in px) of the bright-field disk, measured once per data set."""
        from ..workflows import detector_geometry

        if self._geometry is None or self._geometry[0] is not ds:
            self._geometry = (ds, detector_geometry(ds))
        return self._geometry[1]

    def radii_px(self, ds) -> tuple[tuple[float, float], float, float]:
        from ..workflows import radius_to_pixels

        geometry = self._geometry_for(ds)
        centre = (float(geometry.center[0]), float(geometry.center[1]))
        inner = radius_to_pixels(self.inner.value, self.unit.value, ds.calibration, geometry.radius)
        outer = radius_to_pixels(self.outer.value, self.unit.value, ds.calibration, geometry.radius)
        return centre, inner, outer

    def _draw_on_browser(self, *_: Any) -> None:
        browser = find_browser(self.viewer, self.browser)
        if browser is None:
            return
        try:
            _, ds = chosen_layer(self.viewer, self.layer)
            centre, inner, outer = self.radii_px(ds)
        except Exception:
            return
        browser.set_annulus(centre, inner, outer)

    def run(self):
        from ..workflows import annulus, virtual_images

        try:
            _, ds = chosen_layer(self.viewer, self.layer)
            if self.outer.value <= self.inner.value:
                raise ValueError(f"outer radius ({self.outer.value}) must be larger than inner radius ({self.inner.value})")
            centre, inner_px, outer_px = self.radii_px(ds)
        except Exception as exc:
            notify_error(f"Virtual detector: {exc}")
            return None
        self._draw_on_browser()
        detector = annulus(self.inner.value, self.outer.value, unit=self.unit.value, center=centre)
        label = f"{self.inner.value:g}–{self.outer.value:g} {self.unit.value}"
        self.status.value = f"computing {label} …"

        def work():
            return virtual_images(ds, {"virtual": detector}, center=centre,
                                  disk_radius=self._geometry_for(ds).radius)["virtual"]

        def done(image):
            self.last_image = np.asarray(image)
            item = map_layer_data("virtual", self.last_image, ds, layer_name=layer_name("virtual detector", ds.name),
                                  extra={"detector": label, "inner_px": inner_px, "outer_px": outer_px})
            upsert_layer(self.viewer, item)
            self.status.value = f"{label} (radii {inner_px:.1f}–{outer_px:.1f} px)"

        def failed(exc):
            self.status.value = "failed"
            notify_error(f"Virtual detector on '{ds.name}' failed: {friendly_error(exc)}")

        return self.run_worker(work, controls=self._controls, on_returned=done, on_error=failed)
