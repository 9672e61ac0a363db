"""Preprocessing dock widget: crop, bin, bad pixels, centring, transforms, mean-pattern
subtraction, PCA denoising. Preview shows the raw and processed pattern at the current
probe position; Apply runs the chain in a worker and adds the result as a new data set
(its real-space image, aligned with the original)."""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, Container, Label, PushButton

from ..workflows import PreprocessOptions
from .common import chosen_layer, dataset_combo, find_browser
from .fields import OptionForm
from .layers import upsert_layer
from .proxies import unwrap
from .workers import WorkerMixin, friendly_error, notify_error
from .plots import themed


class PreprocessWidget(WorkerMixin, Container):
    def __init__(self, napari_viewer: Any, browser: Any = None):
        super().__init__(labels=True)
        self.viewer = napari_viewer = unwrap(napari_viewer)
        self.browser = browser  # the diffraction browser whose probe position the preview uses
        self.layer = dataset_combo(napari_viewer)
        self.do_crop = CheckBox(label="crop", value=False)
        self.form = OptionForm(PreprocessOptions)
        for widget in self.form.fields:
            setattr(self, widget.name, widget)
        self._crop_fields = [self.crop_scan, self.crop_detector]
        self.preview_button = PushButton(text="Preview at current position")
        self.apply_button = PushButton(text="Apply")
        self.status = Label(value="")
        self.extend([self.layer, self.do_crop, self.form, self.preview_button, self.apply_button])
        self.native.layout().addWidget(self.status.native)  # full width, wrapped
        self.status.native.setWordWrap(True)
        self._controls = [w for w in self if w is not self.status]
        self.do_crop.changed.connect(self._sync_crop)
        self.layer.changed.connect(self._fill_crop)
        self.preview_button.clicked.connect(self.preview)
        self.apply_button.clicked.connect(self.apply)
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
        self.crop_scan.value, self.crop_detector.value = (0, ny, 0, nx), (0, ky, 0, kx)

    def options(self) -> PreprocessOptions:
        """The :class:`PreprocessOptions` the form describes."""
        crop = {} if self.do_crop.value else {"crop_scan": None, "crop_detector": None}
        return self.form.options(**crop)

    # -- preview ------------------------------------------------------------------------
    def _current_position(self, ds) -> tuple[int, int]:
        position = getattr(find_browser(self.viewer, self.browser), "current_position", None)
        if position is None:
            position = (ds.scan_shape[0] // 2, ds.scan_shape[1] // 2)
        return position

    def preview(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Raw and processed pattern at the current probe position (PCA left out: it needs a
        fit over all patterns; the mean pattern is estimated from a sample of patterns)."""
        from ..workflows import preprocess, sample_mean_pattern

        try:
            _, ds = chosen_layer(self.viewer, self.layer)
            options = self.options().replace(pca_components=0)
            y, x = self._current_position(ds)
            raw = ds.pattern(y, x)
            processed_ds = preprocess(ds, options)
            # map the position through crop and binning
            if options.crop_scan is not None:
                y, x = y - options.crop_scan[0], x - options.crop_scan[2]
            y, x = y // options.bin_scan, x // options.bin_scan
            py, px = processed_ds.scan_shape
            y, x = min(max(y, 0), py - 1), min(max(x, 0), px - 1)
            if options.subtract_mean and processed_ds.nbytes > 256 * 2**20:
                # large data: estimate the mean pattern from a sample instead of a full pass
                before_mean = preprocess(ds, options, subtract_mean=False)
                mean = sample_mean_pattern(before_mean.data)
                processed_ds = preprocess(ds, options, mean_pattern=mean)
            processed = processed_ds.pattern(y, x)
        except Exception as exc:
            notify_error(f"Preview failed: {friendly_error(exc)}")
            return None
        self._show_preview(raw, processed, (y, x))
        return raw, processed

    @themed
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
        from ..workflows import in_memory, preprocess
        from .reader import layer_data_for

        try:
            source_layer, ds = chosen_layer(self.viewer, self.layer)
        except ValueError as exc:
            notify_error(str(exc))
            return None
        options = self.options()
        self.status.value = "processing …"

        def work():
            # computed once here (when it fits), so that COM and training do not recompute the chain
            return in_memory(preprocess(ds, options))

        def done(result):
            self.result = result
            result.metadata["name"] = f"{ds.name} processed"
            for item in layer_data_for(result):
                data, kwargs, layer_type = item
                kwargs["name"] = f"{source_layer.name} processed"
                upsert_layer(self.viewer, (data, kwargs, layer_type))
            steps = ", ".join(p["step"] for p in result.provenance[len(ds.provenance):]) or "no step"
            self.status.value = f"{steps}: {result.shape}"

        def failed(exc):
            self.status.value = "failed"
            notify_error(f"Preprocessing of '{ds.name}' failed: {friendly_error(exc)}")

        return self.run_worker(work, controls=self._controls, on_returned=done, on_error=failed)
