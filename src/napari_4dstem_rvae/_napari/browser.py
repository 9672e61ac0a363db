"""Diffraction browser: the pattern at the probe position under the cursor (or clicked).

The real-space canvas holds images over the scan; this dock shows the diffraction pattern
of the probe position the user points at, read frame by frame from the file (never the
whole 4D array), with the detector geometry drawn on it: the bright-field disk (convergence
semi-angle) and the inner edge of the default annular dark-field detector, when calibrated.
Moving the cursor follows it; a click pins the position (shown by a marker).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from .layers import dataset_layers, find_dataset
from .proxies import unwrap
from .plots import themed

MARKER_LAYER = "probe position"


class DiffractionBrowser(QWidget):
    """Dock widget; ``napari_viewer`` is injected by napari."""

    @themed
    def __init__(self, napari_viewer: Any, parent: QWidget | None = None):
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.viewer = napari_viewer = unwrap(napari_viewer)
        self.current_position: tuple[int, int] | None = None
        self.current_pattern: np.ndarray | None = None
        self._current_layer = None
        self._pending: tuple | None = None

        self.figure = Figure(figsize=(3.4, 2.9), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumSize(160, 100)
        self.axes = self.figure.add_subplot(111)
        self.axes.set_xticks([])
        self.axes.set_yticks([])
        self.axes.set_title("pattern under the cursor", fontsize=8)
        self._image = None
        self._colorbar = None
        self._overlays: list = []
        self._geometry = None  # (origin row, origin col, unit per pixel, unit) of the shown pattern

        self.info = QLabel("Point at the real-space image to see its diffraction pattern.")
        self.info.setWordWrap(True)
        self.follow = QCheckBox("follow cursor")
        self.follow.setChecked(True)
        self.log_scale = QCheckBox("log scale")
        self.log_scale.setChecked(True)
        self.log_scale.toggled.connect(lambda _: self._redraw())
        row = QHBoxLayout()
        row.addWidget(self.follow)
        row.addWidget(self.log_scale)
        row.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        # the switches above the plot: a short dock trims the plot, never covers its axis labels
        layout.addLayout(row)
        layout.addWidget(self.canvas, 1)
        layout.addWidget(self.info)
        self.setMinimumHeight(140)

        # Hover updates are coalesced: at most one read per event-loop turn.
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(15)
        self._timer.timeout.connect(self._flush)

        self.viewer.mouse_move_callbacks.append(self._on_move)
        self.viewer.mouse_drag_callbacks.append(self._on_click)
        self.viewer.layers.events.inserted.connect(self._on_inserted)
        self.destroyed.connect(self._disconnect)
        self._show_first()

    # -- viewer callbacks -------------------------------------------------------------
    def _disconnect(self, *_: Any) -> None:
        for callbacks, func in ((self.viewer.mouse_move_callbacks, self._on_move),
                                (self.viewer.mouse_drag_callbacks, self._on_click)):
            if func in callbacks:
                callbacks.remove(func)
        try:
            self.viewer.layers.events.inserted.disconnect(self._on_inserted)
        except Exception:
            pass

    def _on_inserted(self, event: Any) -> None:
        if self.current_pattern is None and find_dataset(event.value) is not None:
            self._show_first()

    def _show_first(self) -> None:
        """The pattern at the centre of the scan, until the user points somewhere."""
        layer = self._target_layer()
        ds = find_dataset(layer)
        if ds is not None and self.current_pattern is None:
            self.show_position(ds.scan_shape[0] // 2, ds.scan_shape[1] // 2, layer=layer)

    def close(self) -> bool:
        self._disconnect()
        return super().close()

    def _target_layer(self):
        active = self.viewer.layers.selection.active
        if find_dataset(active) is not None and active.visible:
            return active
        layers = [layer for layer in dataset_layers(self.viewer) if layer.visible]
        return layers[-1] if layers else None

    def _position_of(self, layer, world_position) -> tuple[int, int] | None:
        ds = find_dataset(layer)
        data_pos = layer.world_to_data(world_position)
        y, x = (int(np.floor(v + 0.5)) for v in data_pos[-2:])
        ny, nx = ds.scan_shape
        if 0 <= y < ny and 0 <= x < nx:
            return y, x
        return None

    def _on_move(self, viewer, event) -> None:
        if not self.follow.isChecked():
            return
        layer = self._target_layer()
        if layer is None:
            return
        position = self._position_of(layer, event.position)
        if position is not None and (layer, position) != (self._current_layer, self.current_position):
            self._pending = (layer, position)
            self._timer.start()

    def _on_click(self, viewer, event) -> None:
        if event.type != "mouse_press":
            return
        layer = self._target_layer()
        if layer is None:
            return
        position = self._position_of(layer, event.position)
        if position is not None:
            self.follow.setChecked(False)  # a click pins the position
            self.show_position(*position, layer=layer)
            self._mark(layer, position)

    def _flush(self) -> None:
        if self._pending is not None:
            layer, position = self._pending
            self._pending = None
            self.show_position(*position, layer=layer)

    # -- display ----------------------------------------------------------------------
    def show_position(self, y: int, x: int, layer=None) -> np.ndarray | None:
        """Show the pattern at probe position ``(y, x)`` of ``layer``'s data set; returns it."""
        layer = layer if layer is not None else self._target_layer()
        ds = find_dataset(layer)
        if ds is None:
            return None
        try:
            pattern = ds.pattern(int(y), int(x))
        except Exception as exc:  # a damaged block of the file: say so, keep the UI alive
            self.info.setText(f"Could not read the pattern at ({y}, {x}): {exc}")
            return None
        self._current_layer = layer
        self.current_position = (int(y), int(x))
        self.current_pattern = pattern
        self._redraw()
        return pattern

    def _axes_geometry(self, ds) -> tuple[float, float, float, str | None]:
        """(origin row, origin col, unit per detector pixel, unit) of the pattern's axes: mrad (or
        1/Å) about the direct beam when the detector is calibrated, else pixels."""
        cal = ds.calibration
        ky, kx = ds.det_shape
        oy, ox = cal.det_origin if cal.det_origin is not None else ((ky - 1) / 2, (kx - 1) / 2)
        if cal.det_pixel_size is not None and cal.det_unit in ("mrad", "1/Å"):
            return float(oy), float(ox), float(cal.det_pixel_size), cal.det_unit
        return float(oy), float(ox), 1.0, None

    def _to_axes(self, row: float, col: float) -> tuple[float, float]:
        """Detector (row, col) in pixels -> (x, y) on the drawn axes."""
        oy, ox, step, _ = self._geometry
        return (col - ox) * step, (row - oy) * step

    @themed
    def _redraw(self) -> None:
        pattern, layer = self.current_pattern, self._current_layer
        ds = find_dataset(layer)
        if pattern is None or ds is None:
            return
        shown = np.asarray(pattern, np.float64)
        log = self.log_scale.isChecked()
        if log:
            # log with a floor 5 decades below the peak: shows weak dark-field scattering
            # for both counts and fractional intensities
            shown = np.clip(shown - min(0.0, float(np.nanmin(shown))), 0, None)
            peak = float(np.nanmax(shown)) if np.isfinite(shown).any() else 0.0
            shown = np.log10(shown + (peak * 1e-5 if peak > 0 else 1.0))
        geometry = self._axes_geometry(ds)
        if self._image is None or self._image.get_array().shape != shown.shape or geometry != self._geometry:
            self._geometry = geometry
            oy, ox, step, unit = geometry
            ky, kx = shown.shape
            extent = ((-0.5 - ox) * step, (kx - 0.5 - ox) * step, (ky - 0.5 - oy) * step, (-0.5 - oy) * step)
            self.axes.clear()
            self._annulus = []
            self._image = self.axes.imshow(shown, cmap="inferno", interpolation="nearest", extent=extent)
            if unit is None:
                self.axes.set_xlabel("detector x (px)", fontsize=8)
                self.axes.set_ylabel("detector y (px)", fontsize=8)
            else:
                name = "θ" if unit == "mrad" else "k"
                self.axes.set_xlabel(f"{name}x ({unit})", fontsize=8)
                self.axes.set_ylabel(f"{name}y ({unit})", fontsize=8)
            self.axes.tick_params(labelsize=7)
            self.axes.locator_params(nbins=5)
            if self._colorbar is None:
                self._colorbar = self.figure.colorbar(self._image, ax=self.axes, shrink=0.9, pad=0.02)
            else:
                self._colorbar.update_normal(self._image)
            self._colorbar.ax.tick_params(labelsize=7)
            self._draw_geometry(ds)
        else:
            self._image.set_data(shown)
        if self._colorbar is not None:
            self._colorbar.set_label("log₁₀ intensity" if log else "intensity", fontsize=8)
        finite = shown[np.isfinite(shown)]
        if finite.size:
            low, high = float(finite.min()), float(finite.max())
            self._image.set_clim(low, high if high > low else low + 1)
        y, x = self.current_position
        cal = ds.calibration
        where = f"probe ({y}, {x})"
        if cal.scan_step is not None and cal.scan_unit:
            sy, sx = cal.scan_step_yx
            where += f" = ({y * sy + cal.scan_origin[0]:.3g}, {x * sx + cal.scan_origin[1]:.3g}) {cal.scan_unit}"
        self.axes.set_title(where, fontsize=8)
        scale = f"{cal.det_pixel_size:.3g} {cal.det_unit}/px" if cal.det_pixel_size else "uncalibrated detector"
        self.info.setText(f"{ds.name}: total {float(np.nansum(pattern)):.4g}; {scale}")
        self.canvas.draw_idle()

    def _draw_geometry(self, ds) -> None:
        from matplotlib.patches import Circle

        from ..workflows import (
            ADF_INNER_BF,
            calibrated_disk,
            default_image_detector,
        )

        _, _, step, _ = self._geometry
        disk = calibrated_disk(ds.calibration, ds.det_shape)
        cx, cy = self._to_axes(*(disk.center if disk is not None else (self._geometry[0], self._geometry[1])))
        self._overlays = []
        if disk is not None:
            self._overlays.append(self.axes.add_patch(
                Circle((cx, cy), disk.radius * step, fill=False, color="cyan", lw=1, ls="--", label="BF disk")))
            name, _ = default_image_detector(ds.calibration, ds.det_shape)
            if name == "adf":
                self._overlays.append(self.axes.add_patch(
                    Circle((cx, cy), ADF_INNER_BF * disk.radius * step, fill=False, color="lime", lw=1,
                           label="ADF inner")))
        self.axes.plot([cx], [cy], "+", color="white", ms=6)

    def set_annulus(self, centre: tuple[float, float], inner_px: float, outer_px: float) -> None:
        """Draw a virtual detector (two circles, radii in pixels about ``centre`` (row, col)) on
        the pattern; replaces the last one."""
        from matplotlib.patches import Circle

        for patch in getattr(self, "_annulus", []):
            patch.remove()
        self.annulus_px = (float(inner_px), float(outer_px))
        self._annulus = []
        if self._geometry is None:
            return
        step = self._geometry[2]
        cx, cy = self._to_axes(*centre)
        self._annulus = [self.axes.add_patch(Circle((cx, cy), r * step, fill=False, color="magenta", lw=1.5))
                         for r in (inner_px, outer_px) if r > 0 and np.isfinite(r)]
        self.canvas.draw_idle()

    def _mark(self, layer, position) -> None:
        """A cross at the pinned probe position, one probe step wide, in the layer's frame."""
        coords = np.array([position], float)
        geometry = {"scale": tuple(layer.scale[-2:]), "translate": tuple(layer.translate[-2:]),
                    "units": tuple(layer.units[-2:])}
        if MARKER_LAYER in self.viewer.layers:
            marker = self.viewer.layers[MARKER_LAYER]
            marker.data = coords
            for key, value in geometry.items():
                setattr(marker, key, value)
        else:
            self.viewer.add_points(coords, name=MARKER_LAYER, size=1.0, face_color="red", border_color="white",
                                   border_width=0.15, symbol="cross", **geometry)
        self.viewer.layers.selection.active = layer
