"""The results dock of the atom-resolved workflow: per-frame histograms of the angle (modulo
120°, the 3-fold symmetry of a window around a graphene atom) and of latent 1, one curve per
frame coloured from the first (dark) to the last (bright) frame (the study's time dynamics);
the latent space (every window, coloured by its angle mod 120°); and the decoded traversal
grid of the two content latents (what each latent changes in a window)."""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtWidgets import QVBoxLayout, QWidget
from .plots import themed


class FrameHistograms(QWidget):
    @themed
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

    @themed
    def show_result(self, result: Any, n_frames: int, colour_by: str = "angle mod 120°") -> None:
        import matplotlib

        from ..results.colours import CATEGORIES, CYCLIC, angle_mod_120, feature_colours, feature_scale
        from ..workflows import frame_histograms

        columns = result.columns()
        self.figure.clear()
        model = getattr(result, "model", None)
        latent_space = "latent_1" in columns   # one latent (the split retry's): latent 1 against the angle
        moving = getattr(result, "dynamics", None)
        has_dynamics = moving is not None and bool(moving.frames) and n_frames > 1
        ratios = ([1.4, 1.4] + ([1.0] if latent_space else []) + ([1.0] if model is not None else [])
                  + ([1.2] if has_dynamics else []))
        axes = self.figure.subplots(1, len(ratios), width_ratios=ratios)
        cmap = matplotlib.colormaps["viridis"]
        self.curves = {}
        frames = columns["frame"]
        angle = angle_mod_120(columns["angle"])
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
        extra = list(axes[2:])
        self.scatter = self.traversal = self.colour_bar = None
        if latent_space:
            ax = extra.pop(0)
            second = columns["latent_2"] if "latent_2" in columns else np.degrees(angle)
            ok = np.isfinite(columns["latent_1"]) & np.isfinite(angle) & np.isfinite(second)
            values, feature = _values_of(columns, colour_by, angle)
            colours = feature_colours(values, feature)
            self.scatter = ax.scatter(columns["latent_1"][ok], second[ok], c=colours[ok], s=2,
                                      linewidths=0, rasterized=True)
            if feature not in CATEGORIES:  # the key of the atoms' colours (the canvas's too)
                from matplotlib.cm import ScalarMappable
                from matplotlib.colors import Normalize

                cmap, lo, hi = feature_scale(values, feature)
                self.colour_bar = self.figure.colorbar(ScalarMappable(Normalize(lo, hi), matplotlib.colormaps[cmap]),
                                                       ax=ax, fraction=0.08, pad=0.03)
                self.colour_bar.ax.tick_params(labelsize=6)
                self.colour_bar.set_label(feature + (" (°)" if feature in CYCLIC else ""), fontsize=7)
            ax.set_xlabel("latent 1", fontsize=8)
            ax.set_ylabel("latent 2" if "latent_2" in columns else "angle mod 120° (°)", fontsize=8)
            ax.set_title(f"latent space (colour: {colour_by})", fontsize=7)
            self.scatter_axes = ax
            ax.tick_params(labelsize=7)
        if has_dynamics:
            ax = extra.pop(-1)
            frames = moving.frames
            self.dynamics_lines = {}
            for key, style in (("atoms", "-"), ("appeared", "--"), ("lost", ":"), ("heavy_hops", "-.")):
                (self.dynamics_lines[key],) = ax.plot(frames["frame"], frames[key], style, lw=1.2,
                                                      label=key.replace("_", " "))
            ax.set_yscale("symlog", linthresh=10)
            ax.set_xlabel("frame", fontsize=8)
            ax.set_title("per frame: atoms, tracks, hops", fontsize=7)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=6)
        if model is not None and extra:
            ax = extra.pop(0)
            self.traversal = traversal_montage(model)
            one = self.traversal.shape[0] < self.traversal.shape[1] / 2   # one latent: a row
            ax.imshow(self.traversal, cmap="gray", extent=(-2, 2, 0.4, -0.4) if one else (-2, 2, 2, -2))
            ax.set_xlabel(f"latent {1 if one else 2} (prior SDs)", fontsize=8)
            ax.set_ylabel("" if one else "latent 1", fontsize=8)
            if one:
                ax.set_yticks([])
            ax.set_title("decoded windows", fontsize=7)
            ax.tick_params(labelsize=7)
        self.figure.suptitle("histograms per frame (dark: first frame, bright: last)", fontsize=8)
        self.colour_by = colour_by
        self.canvas.draw_idle()


def _values_of(columns: dict, colour_by: str, angle: np.ndarray) -> tuple[np.ndarray, str]:
    """Per window, the chosen per-atom quantity as the Points layer colours it, and its name
    (angles in degrees; an unknown name: the angle mod 120°)."""
    if colour_by == "angle" and "angle" in columns:
        return np.degrees(np.asarray(columns["angle"], np.float64)), "angle"
    if colour_by != "angle mod 120°" and colour_by in columns:
        return np.asarray(columns[colour_by], np.float64), colour_by
    return angle, "angle mod 120°"


def traversal_montage(model: Any, n: int = 5, span: float = 2.0) -> np.ndarray:
    """The decoded windows of an ``n`` × ``n`` grid over the first two content latents (±``span``
    prior SDs, angle 0) as one image, 1-pixel gaps."""
    from ..workflows import traverse

    grid = traverse(model, n=n, span=span)
    rows, cols, h, w = grid.shape
    out = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan, np.float32)
    for i in range(rows):
        for j in range(cols):
            out[i * (h + 1):i * (h + 1) + h, j * (w + 1):j * (w + 1) + w] = grid[i, j]
    return out
