"""The time-dynamics dock of the atom-resolved workflow: per-frame histograms of the angle
(modulo 120°, the 3-fold symmetry of a window around a graphene atom) and of latent 1, one
curve per frame coloured from the first (dark) to the last (bright) frame."""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtWidgets import QVBoxLayout, QWidget


class FrameHistograms(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(7.0, 2.4), dpi=100, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.canvas)
        self.setMinimumHeight(180)
        self.curves: dict[str, list] = {}

    def show_result(self, result: Any, n_frames: int) -> None:
        import matplotlib

        from ..atom_pipeline import frame_histograms

        columns = result.columns()
        self.figure.clear()
        axes = self.figure.subplots(1, 2)
        cmap = matplotlib.colormaps["viridis"]
        self.curves = {}
        frames = columns["frame"]
        angle = np.degrees((columns["angle"].astype(np.float64) + np.pi / 3) % (2 * np.pi / 3) - np.pi / 3)
        panels = [("angle mod 120° (°)", angle, (-60.0, 60.0))]
        if "latent_1" in columns:
            panels.append(("latent 1", columns["latent_1"].astype(np.float64), None))
        for ax, (label, values, value_range) in zip(axes, panels):
            hist, edges = frame_histograms(values, frames, n_frames, bins=40, value_range=value_range)
            centres = 0.5 * (edges[1:] + edges[:-1])
            lines = []
            for f in range(n_frames):
                (line,) = ax.plot(centres, hist[f], color=cmap(f / max(n_frames - 1, 1)), lw=1.0,
                                  label=f"frame {f}")
                lines.append(line)
            self.curves[label] = lines
            ax.set_xlabel(label, fontsize=8)
            ax.set_ylabel("density", fontsize=8)
            ax.tick_params(labelsize=7)
        if n_frames <= 10:
            axes[0].legend(fontsize=6, ncol=2)
        self.figure.suptitle("histograms per frame (dark: first frame, bright: last)", fontsize=8)
        self.canvas.draw_idle()
