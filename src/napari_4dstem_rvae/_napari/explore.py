"""Explore a trained rVAE: the clicked probe position's pattern, its reconstruction with the
inferred pose and its latent values; the latent space as a scatter of every position
(coloured by a map) with a lasso that highlights the chosen positions on the canvas (and a
click on the canvas marks its point in the scatter); a decoded latent-traversal grid."""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .plots import themed

SELECTION_LAYER = "rVAE selection"


class ExplorePanel(QWidget):
    @themed
    def __init__(self, viewer: Any, session_getter, parent: QWidget | None = None):
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.viewer = viewer
        self._session = session_getter
        self.maps: dict[str, np.ndarray] | None = None
        self.selected = np.zeros(0, dtype=np.int64)
        self.current: tuple[int, int] | None = None

        self.pattern_figure = Figure(figsize=(4, 1.3), layout="constrained")
        self.pattern_canvas = FigureCanvasQTAgg(self.pattern_figure)
        self.latent_figure = Figure(figsize=(4, 2.0), layout="constrained")
        self.latent_canvas = FigureCanvasQTAgg(self.latent_figure)
        self.pattern_canvas.setMinimumHeight(125)
        self.latent_canvas.setMinimumHeight(175)
        self.colour_by = QComboBox()
        self.traverse_button = QPushButton("Decode traversal grid")
        self.info = QLabel("Train a model, then click a probe position.")
        self.info.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(QLabel("colour by"))
        row.addWidget(self.colour_by)
        row.addWidget(self.traverse_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.info)
        layout.addWidget(self.pattern_canvas)
        layout.addLayout(row)
        layout.addWidget(self.latent_canvas)
        self.colour_by.currentTextChanged.connect(lambda _: self.draw_scatter())
        self.traverse_button.clicked.connect(self.show_traversal)
        self._lasso = None
        self._marker = None
        viewer.mouse_drag_callbacks.append(self._on_click)
        self.destroyed.connect(lambda *_: self._disconnect(viewer))

    def _disconnect(self, viewer) -> None:
        if self._on_click in viewer.mouse_drag_callbacks:
            viewer.mouse_drag_callbacks.remove(self._on_click)

    # -- maps ---------------------------------------------------------------------------
    def set_maps(self, maps: dict[str, np.ndarray]) -> None:
        self.maps = maps
        session = self._session()
        choices = ["angle"] + [f"latent {i + 1}" for i in range(maps["latents"].shape[0])]
        if session is not None and session.com is not None:
            choices.append("COM magnitude")
        current = self.colour_by.currentText()
        self.colour_by.blockSignals(True)
        self.colour_by.clear()
        self.colour_by.addItems(choices)
        if current in choices:
            self.colour_by.setCurrentText(current)
        self.colour_by.blockSignals(False)
        if self.isVisible():
            self.draw_scatter()
        else:  # drawn when the tab is shown: no scatter redraw in the GUI thread while hidden
            self._stale = True

    def showEvent(self, event):  # noqa: N802 - Qt's name
        super().showEvent(event)
        if getattr(self, "_stale", False) and self.maps is not None:
            self._stale = False
            self.draw_scatter()

    def _colour_values(self) -> np.ndarray:
        name = self.colour_by.currentText()
        if name == "COM magnitude":
            return np.asarray(self._session().com.magnitude).ravel()
        if name.startswith("latent"):
            return self.maps["latents"][int(name.split()[1]) - 1].ravel()
        return np.degrees(self.maps["angle"]).ravel()

    @themed
    def draw_scatter(self) -> None:
        from matplotlib.widgets import LassoSelector

        if self.maps is None:
            return
        latents = self.maps["latents"]
        fig = self.latent_figure
        fig.clear()
        ax = fig.add_subplot(111)
        x = latents[0].ravel()
        y = latents[1].ravel() if latents.shape[0] > 1 else np.degrees(self.maps["angle"]).ravel()
        colours = self._colour_values()
        cmap = "twilight_shifted" if self.colour_by.currentText() == "angle" else "viridis"
        ax.scatter(x, y, c=colours, s=6, cmap=cmap, linewidths=0)
        if self.selected.size:
            ax.scatter(x[self.selected], y[self.selected], s=14, facecolors="none", edgecolors="red", linewidths=0.8)
        ax.set_xlabel("latent 1", fontsize=8)
        ax.set_ylabel("latent 2" if latents.shape[0] > 1 else "angle (deg)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_title("lasso to select positions", fontsize=8)
        self._xy = np.column_stack([x, y])
        self._scatter_axes = ax
        self._marker = None
        if self.current is not None:
            self._mark_current()
        self._lasso = LassoSelector(ax, self._on_lasso)
        self.latent_canvas.draw_idle()

    def _on_lasso(self, vertices) -> None:
        from matplotlib.path import Path

        inside = Path(vertices).contains_points(self._xy)
        self.select(np.flatnonzero(inside))

    def select(self, indices: Any) -> None:
        """Highlight probe positions (flat indices) in the scatter and on the canvas."""
        self.selected = np.asarray(indices, dtype=np.int64)
        session = self._session()
        if session is None:
            return
        ds = session.dataset
        nx = ds.scan_shape[1]
        coords = np.column_stack([self.selected // nx, self.selected % nx]).astype(float)
        sy, sx = ds.calibration.scan_step_yx
        oy, ox = ds.calibration.scan_origin
        if SELECTION_LAYER in self.viewer.layers:
            layer = self.viewer.layers[SELECTION_LAYER]
            layer.data = coords
        else:
            layer = self.viewer.add_points(coords, name=SELECTION_LAYER, scale=(sy, sx), translate=(oy, ox),
                                           size=0.8, face_color="transparent", border_color="red")
        self.info.setText(f"{self.selected.size} positions selected in latent space")
        self.draw_scatter()

    # -- a probe position ----------------------------------------------------------------------
    def _on_click(self, viewer, event) -> None:
        if event.type != "mouse_press" or self.maps is None:
            return
        session = self._session()
        if session is None:
            return
        ds = session.dataset
        sy, sx = ds.calibration.scan_step_yx
        oy, ox = ds.calibration.scan_origin
        y = int(np.floor((event.position[-2] - oy) / sy + 0.5))
        x = int(np.floor((event.position[-1] - ox) / sx + 0.5))
        if 0 <= y < ds.scan_shape[0] and 0 <= x < ds.scan_shape[1]:
            self.show_position(y, x)

    @themed
    def show_position(self, y: int, x: int) -> tuple[np.ndarray, np.ndarray]:
        """Pattern, reconstruction with the inferred pose, and latent values at ``(y, x)``."""
        session = self._session()
        pattern, recon = session.reconstruct(y, x)
        self.current = (int(y), int(x))
        fig = self.pattern_figure
        fig.clear()
        bound = float(np.nanmax(np.abs(pattern))) or 1.0
        for i, (title, image) in enumerate((("pattern", pattern), ("reconstruction", recon))):
            ax = fig.add_subplot(1, 2, i + 1)
            ax.imshow(image, cmap="coolwarm" if np.nanmin(pattern) < 0 else "inferno",
                      vmin=-bound if np.nanmin(pattern) < 0 else None, vmax=bound, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        self.pattern_canvas.draw_idle()
        latents = ", ".join(f"{v:+.2f}" for v in self.maps["latents"][:, y, x])
        self.info.setText(f"probe ({y}, {x}): angle {np.degrees(self.maps['angle'][y, x]):+.1f}°, "
                          f"latents [{latents}]")
        self._mark_current()
        return pattern, recon

    def _mark_current(self) -> None:
        if self.current is None or getattr(self, "_scatter_axes", None) is None:
            return
        index = self.current[0] * self.maps["angle"].shape[1] + self.current[1]
        if self._marker is not None:
            self._marker.remove()
        self._marker = self._scatter_axes.scatter(*self._xy[index], s=60, marker="x", color="black")
        self.latent_canvas.draw_idle()

    @themed
    def show_traversal(self, n: int = 5) -> np.ndarray | None:
        """Decode an n × n grid over the first two latents (±2 prior standard deviations)."""
        from ..workflows import traverse

        session = self._session()
        if session is None:
            return None
        grid = traverse(session.trainer.model, n=n, span=2.0)
        rows, cols, ky, kx = grid.shape
        mosaic = grid.transpose(0, 2, 1, 3).reshape(rows * ky, cols * kx)
        fig = self.pattern_figure
        fig.clear()
        ax = fig.add_subplot(111)
        bound = float(np.nanmax(np.abs(mosaic))) or 1.0
        ax.imshow(mosaic, cmap="coolwarm", vmin=-bound, vmax=bound, interpolation="nearest")
        ax.set_title("traversal: latent 1 down, latent 2 across (±2σ)", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        self.pattern_canvas.draw_idle()
        return grid
