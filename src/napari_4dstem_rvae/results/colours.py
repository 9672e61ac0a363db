"""Colours of maps that are not one colormap: the COM colour wheel (direction as hue, magnitude
as brightness) and its key, and per-atom colours of a feature (cyclic for angles, categories
for classes, diverging for signed values). Shared by the figures and the napari layers."""

from __future__ import annotations

from typing import Any

import numpy as np

#: Per-atom features coloured on a circle (angles).
CYCLIC = {"angle mod 120°", "angle", "angle_symmetric"}
#: Per-atom features coloured as categories.
CATEGORIES = {"class", "gmm_cluster"}


def colour_wheel(angle: np.ndarray, magnitude: np.ndarray, top: float | None = None) -> np.ndarray:
    """RGB (scan_y, scan_x, 3) in [0, 1]: hue = direction, value = magnitude / ``top`` (default:
    its 99th percentile)."""
    from matplotlib.colors import hsv_to_rgb

    hue = (np.mod(angle, 2 * np.pi)) / (2 * np.pi)
    if top is None:
        top = wheel_top(magnitude)
    value = np.clip(magnitude / (top if top > 0 else 1.0), 0, 1)
    hsv = np.stack([hue, np.ones_like(hue), value], axis=-1)
    return hsv_to_rgb(np.nan_to_num(hsv)).astype(np.float32)


def wheel_top(magnitude: np.ndarray) -> float:
    """The magnitude shown at full brightness: the 99th percentile (one hot pixel does not
    darken the whole map)."""
    finite = magnitude[np.isfinite(magnitude)]
    return float(np.percentile(finite, 99)) if finite.size else 1.0


def draw_wheel_legend(figure: Any, top: float, unit: str) -> None:
    """The colour-wheel key: direction as hue (x to the right, y down, as on the canvas),
    magnitude as brightness from 0 to ``top`` ``unit``."""
    figure.clear()
    ax = figure.add_subplot(111)
    n = 128
    yy, xx = np.mgrid[-1:1:n * 1j, -1:1:n * 1j]
    radius = np.hypot(xx, yy)
    rgb = colour_wheel(np.arctan2(yy, xx), radius, top=1.0)
    rgba = np.concatenate([rgb, (radius <= 1)[..., None].astype(np.float32)], axis=-1)
    ax.imshow(rgba, extent=(-1, 1, 1, -1), interpolation="bilinear")
    ax.annotate("", xy=(1.25, 0), xytext=(0, 0), arrowprops={"arrowstyle": "->", "color": "0.6"})
    ax.annotate("", xy=(0, 1.25), xytext=(0, 0), arrowprops={"arrowstyle": "->", "color": "0.6"})
    ax.text(1.3, 0, "+x", va="center", fontsize=8, color="0.6")
    ax.text(0, 1.35, "+y", ha="center", va="top", fontsize=8, color="0.6")
    ax.set_xlim(-1.5, 1.6)
    ax.set_ylim(1.7, -1.3)   # room below for the +y label
    ax.set_axis_off()
    ax.set_title(f"colour wheel: hue = direction,\nbrightness = magnitude 0–{top:.3g} {unit}", fontsize=8)


def angle_mod_120(angle: np.ndarray) -> np.ndarray:
    """Angles (rad) modulo 120° — the 3-fold symmetry of a window around a graphene atom — in
    degrees, in [−60°, 60°)."""
    angle = np.asarray(angle, np.float64)
    return np.degrees((angle + np.pi / 3) % (2 * np.pi / 3) - np.pi / 3)


def feature_scale(values: np.ndarray, feature: str) -> tuple[str, float, float]:
    """The colormap and the range (lo, hi) that :func:`feature_colours` maps a per-atom feature
    onto: a circle for angles (degrees), the 1st–99th percentiles otherwise (symmetric about 0
    for a signed feature); for categories the range of tab10's ten colours."""
    values = np.asarray(values, np.float64)
    v = values[np.isfinite(values)]
    if feature in CYCLIC:
        period = 120.0 if feature == "angle mod 120°" else 360.0
        return "twilight_shifted", -period / 2, period / 2
    if feature in CATEGORIES:
        return "tab10", 0.0, 10.0
    if not v.size:
        return "viridis", 0.0, 1.0
    lo, hi = (float(x) for x in np.percentile(v, [1, 99]))
    if lo < 0 < hi:
        m = max(-lo, hi)
        return "coolwarm", -m, m
    return "viridis", lo, hi if hi > lo else lo + 1.0


def feature_colours(values: np.ndarray, feature: str) -> np.ndarray:
    """RGBA colours ``(n, 4)`` of a per-atom feature (NaN: translucent grey), on the scale of
    :func:`feature_scale`."""
    import matplotlib

    values = np.asarray(values, np.float64)
    finite = np.isfinite(values)
    colours = np.tile(np.array([0.6, 0.6, 0.6, 0.4]), (len(values), 1))
    if not finite.any():
        return colours
    cmap, lo, hi = feature_scale(values, feature)
    v = values[finite]
    if feature in CYCLIC:
        t = np.mod(v - lo, hi - lo) / (hi - lo)
    elif feature in CATEGORIES:
        t = (np.round(v).astype(int) % 10) / 10 + 0.05
    else:
        t = (v - lo) / (hi - lo)
    colours[finite] = matplotlib.colormaps[cmap](np.clip(t, 0, 1))
    return colours
