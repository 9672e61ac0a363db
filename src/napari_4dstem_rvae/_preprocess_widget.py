"""Preprocessing dock widget: crop, bin, bad pixels, centring, transforms, mean-pattern
subtraction, PCA denoising. Preview shows the raw and processed pattern at the current
probe position; Apply runs the chain in a worker and adds the result as a new data set
(its real-space image, aligned with the original)."""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, PushButton, SpinBox

from ._layers import upsert_layer
from ._qt_common import chosen_layer, dataset_combo, notify_error, start_worker

#: Processed data smaller than this are computed into memory once (fast later stages).
IN_MEMORY_LIMIT = 4 * 2**30


def _spin(label: str, value: int = 0, minimum: int = 0, maximum: int = 1_000_000) -> SpinBox:
    return SpinBox(label=label, value=value, min=minimum, max=maximum)


class PreprocessWidget(Container):
    def __init__(self, napari_viewer: Any):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.layer = dataset_combo(napari_viewer)
        self.do_crop = CheckBox(label="crop", value=False)
        self.scan_y0, self.scan_y1 = _spin("scan rows from"), _spin("scan rows to")
        self.scan_x0, self.scan_x1 = _spin("scan cols from"), _spin("scan cols to")
        self.det_r0, self.det_r1 = _spin("detector rows from"), _spin("detector rows to")
        self.det_c0, self.det_c1 = _spin("detector cols from"), _spin("detector cols to")
        self.bin_scan = _spin("bin scan ×", 1, 1, 64)
        self.bin_detector = _spin("bin detector ×", 1, 1, 64)
        self.bin_method = ComboBox(label="bin method", choices=["sum", "mean"], value="sum")
        self.repair = CheckBox(label="repair hot/dead pixels", value=False)
        self.center = CheckBox(label="centre direct beam (descan plane)", value=False)
        self.transform = ComboBox(label="transform", choices=["none", "log1p", "sqrt"], value="none")
        self.normalize = ComboBox(label="normalise", choices=["none", "pattern", "global"], value="none")
        self.subtract_mean = CheckBox(label="subtract mean pattern", value=True)
        self.pca = _spin("PCA components (0 = off)", 0, 0, 4096)
        self.preview_button = PushButton(text="Preview at current position")
        self.apply_button = PushButton(text="Apply")
        self.status = Label(value="")
        self._crop_fields = [self.scan_y0, self.scan_y1, self.scan_x0, self.scan_x1,
                             self.det_r0, self.det_r1, self.det_c0, self.det_c1]
        self.extend([self.layer, self.do_crop, *self._crop_fields, self.bin_scan, self.bin_detector,
                     self.bin_method, self.repair, self.center, self.transform, self.normalize,
                     self.subtract_mean, self.pca, self.preview_button, self.apply_button, self.status])
        self._controls = [w for w in self if w is not self.status]
        self.do_crop.changed.connect(self._sync_crop)
        self.layer.changed.connect(self._fill_crop)
        self.preview_button.clicked.connect(self.preview)
        self.apply_button.clicked.connect(self.apply)
        self.worker = None
        self.result = None
        self._fill_crop()
        self._sync_crop()

    def _sync_crop(self, *_: Any) -> None:
        for field in self._crop_fields:
            field.visible = self.do_crop.value

    def _fill_crop(self, *_: Any) -> None:
        try:
            _, ds = chosen_layer(self.viewer, self.layer)
        except ValueError:
            return
        ny, nx, ky, kx = ds.shape
        for field, value in zip(self._crop_fields, (0, ny, 0, nx, 0, ky, 0, kx)):
            field.value = value

    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "bin_scan": self.bin_scan.value, "bin_detector": self.bin_detector.value,
            "bin_method": self.bin_method.value, "repair_bad_pixels": self.repair.value,
            "center": self.center.value,
            "transform": None if self.transform.value == "none" else self.transform.value,
            "normalize": None if self.normalize.value == "none" else self.normalize.value,
            "subtract_mean": self.subtract_mean.value, "pca_components": self.pca.value,
        }
        if self.do_crop.value:
            options["crop_scan"] = tuple(f.value for f in self._crop_fields[:4])
            options["crop_detector"] = tuple(f.value for f in self._crop_fields[4:])
        return options

    # -- preview ------------------------------------------------------------------------
    def _current_position(self, ds) -> tuple[int, int]:
        browser = self.viewer.window.dock_widgets.get("Diffraction browser (napari-4dstem-rvae)") \
            if getattr(self.viewer, "window", None) is not None else None
        position = getattr(browser, "current_position", None)
        if position is None:
            position = (ds.scan_shape[0] // 2, ds.scan_shape[1] // 2)
        return position

    def preview(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Raw and processed pattern at the current probe position (PCA left out: it needs a
        fit over all patterns; the mean pattern is estimated from a sample of patterns)."""
        from .pipeline import preprocess
        from .processing import sample_mean_pattern

        try:
            _, ds = chosen_layer(self.viewer, self.layer)
            options = dict(self.options(), pca_components=0)
            y, x = self._current_position(ds)
            raw = ds.pattern(y, x)
            processed_ds = preprocess(ds, **options)
            # map the position through crop and binning
            if "crop_scan" in options:
                y, x = y - options["crop_scan"][0], x - options["crop_scan"][2]
            y, x = y // options["bin_scan"], x // options["bin_scan"]
            py, px = processed_ds.scan_shape
            y, x = min(max(y, 0), py - 1), min(max(x, 0), px - 1)
            if options["subtract_mean"] and processed_ds.nbytes > 256 * 2**20:
                # large data: estimate the mean pattern from a sample instead of a full pass
                before_mean = preprocess(ds, **dict(options, subtract_mean=False))
                mean = sample_mean_pattern(before_mean.data)
                processed_ds = preprocess(ds, **dict(options, mean_pattern=mean))
            processed = processed_ds.pattern(y, x)
        except Exception as exc:
            notify_error(f"Preview failed: {exc}")
            return None
        self._show_preview(raw, processed, (y, x))
        return raw, processed

    def _show_preview(self, raw: np.ndarray, processed: np.ndarray, position) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        if not hasattr(self, "_figure"):
            self._figure = Figure(figsize=(4, 2.1), tight_layout=True)
            self._canvas = FigureCanvasQTAgg(self._figure)
            self.native.layout().addWidget(self._canvas)
        self._figure.clear()
        for i, (title, image) in enumerate((("raw", raw), (f"processed {position}", processed))):
            ax = self._figure.add_subplot(1, 2, i + 1)
            shown = ax.imshow(image, cmap="coolwarm" if np.nanmin(image) < 0 else "inferno",
                              interpolation="nearest")
            if np.nanmin(image) < 0:
                bound = float(np.nanmax(np.abs(image))) or 1.0
                shown.set_clim(-bound, bound)
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        self._canvas.draw_idle()

    # -- apply --------------------------------------------------------------------------
    def apply(self):
        from ._reader import layer_data_for
        from .pipeline import preprocess

        try:
            source_layer, ds = chosen_layer(self.viewer, self.layer)
        except ValueError as exc:
            notify_error(str(exc))
            return None
        options = self.options()
        self.status.value = "processing …"

        def work():
            result = preprocess(ds, **options)
            if result.is_lazy and result.nbytes <= IN_MEMORY_LIMIT:
                # computed once here, so that COM and training do not recompute the chain
                from dataclasses import replace

                result = replace(result, data=np.asarray(result.data.compute()))
            return result

        def done(result):
            self.result = result
            result.metadata["name"] = f"{ds.name} processed"
            for item in layer_data_for(result, viewer=self.viewer):
                if item[0] is None:
                    continue
                data, kwargs, layer_type = item
                kwargs["name"] = f"{source_layer.name} processed"
                upsert_layer(self.viewer, (data, kwargs, layer_type))
            steps = ", ".join(p["step"] for p in result.provenance[len(ds.provenance):]) or "no step"
            self.status.value = f"{steps}: {result.shape}"

        def failed(exc):
            self.status.value = "failed"
            notify_error(f"Preprocessing of '{ds.name}' failed: {exc}")

        self.worker = start_worker(work, controls=self._controls, on_returned=done, on_error=failed)
        return self.worker
