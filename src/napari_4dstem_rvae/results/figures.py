"""Figures (PNG) of the maps, styled from the map schema like the napari layers: a real-space
image, the COM maps, and the rVAE overview laid out like the study's figures.

Every panel shows the scan in its calibrated unit and each map in its unit (angles in
degrees, COM in mrad when the detector is calibrated). Matplotlib's Agg canvas only: no GUI.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from ..atomic import atomic_path
from ..dataset import Calibration
from ..schema import (
    MAPS,
    MapSpec,
    contrast_limits,
    map_names,
    display_unit,
    display_values,
    resolve_unit,
    spec_for,
)
from ..stats import circular_correlation, pearson_r

_MPL_CMAPS = {"twilight_shifted": "twilight_shifted", "coolwarm": "RdBu_r"}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _scan_axes(calibration: Calibration | None, scan_shape: tuple[int, int]) -> tuple[tuple, str]:
    ny, nx = scan_shape
    if calibration is not None and calibration.scan_step is not None and calibration.scan_unit:
        sy, sx = calibration.scan_step_yx
        unit = calibration.scan_unit
    else:
        sy = sx = 1.0
        unit = "probe steps"
    return (-0.5 * sx, (nx - 0.5) * sx, (ny - 0.5) * sy, -0.5 * sy), unit


def map_panel(fig: Any, ax: Any, spec: MapSpec, values: Any, unit: str, extent: tuple, scan_unit: str,
              title: str | None = None) -> None:
    """One map drawn on ``ax`` as the schema says (colormap, limits, display unit, colour bar)."""
    shown_values = display_values(spec, np.asarray(values, dtype=np.float64))
    limits = contrast_limits(spec, shown_values)
    kwargs: dict[str, Any] = {"cmap": _MPL_CMAPS.get(spec.cmap, spec.cmap), "extent": extent,
                              "interpolation": "nearest"}
    if limits is not None:
        kwargs.update(vmin=limits[0], vmax=limits[1])
    shown = ax.imshow(shown_values, **kwargs)
    label = display_unit(spec, unit)
    ax.set_title(f"{title or spec.title}" + (f" ({label})" if label and label != "1" else ""), fontsize=9)
    ax.set_xlabel(f"x ({scan_unit})", fontsize=8)
    ax.set_ylabel(f"y ({scan_unit})", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.colorbar(shown, ax=ax, shrink=0.8)


def _save(fig: Any, path: Any) -> str:
    path = os.fspath(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def image_figure(path: Any, image: Any, name: str, calibration: Calibration | None = None,
                 title: str | None = None) -> str:
    """A PNG of one real-space image (``name`` from the schema, e.g. ``"adf"``)."""
    image = np.asarray(image)
    extent, scan_unit = _scan_axes(calibration, image.shape)
    spec = spec_for(name)
    fig = _figure(5, 4.4)
    map_panel(fig, fig.add_subplot(111), spec, image, "", extent, scan_unit, title or spec.title)
    return _save(fig, path)


def com_figure(path: Any, com: Any) -> str:
    """A PNG of the COM maps: x, y, magnitude, angle, divergence, curl, in the units of the
    results file (mrad when the detector is calibrated)."""
    maps = com.maps()
    extent, scan_unit = _scan_axes(com.calibration, com.scan_shape)
    scan = None if scan_unit == "probe steps" else scan_unit
    fig = _figure(12, 7.5)
    for i, name in enumerate(map_names("com", shown=True)):
        spec = MAPS[name]
        map_panel(fig, fig.add_subplot(2, 3, i + 1), spec, maps[name],
                  resolve_unit(spec.unit, com.map_unit, scan), extent, scan_unit)
    fig.suptitle(f"COM: rotation {com.rotation_deg:.2f}°, flip {com.flip}, "
                 f"reference {com.reference}, mask {com.mask}")
    return _save(fig, path)


def overview_figure(path: Any, result: Any, *, adf: Any = None, com: Any = None,
                    calibration: Calibration | None = None, title: str | None = None) -> str:
    """PNG laid out like the study's figures: ADF (or sum) image, COM angle, COM magnitude,
    rotation map, then each latent map with its Pearson r against the COM magnitude, and the
    loss history when ``result`` is an :class:`~napari_4dstem_rvae.rvae.fit.RVAEResult`.

    ``result``: an ``RVAEResult`` or ``LatentMaps``; ``com``: a ``COMResult`` of the same scan.
    """
    maps = result.maps if hasattr(result, "maps") and not hasattr(result, "angle") else result
    full = result if maps is not result else None
    if calibration is None and full is not None:
        calibration = full.trainer.calibration
    com_maps = com.maps() if com is not None else {}
    latent_r = [pearson_r(latent, com_maps["com_magnitude"]) for latent in maps.latents] if com is not None else []
    angle_rho = circular_correlation(maps.angle, com_maps["com_angle"]) if com is not None else float("nan")
    extent, scan_unit = _scan_axes(calibration, maps.scan_shape)
    panels: list[tuple[MapSpec, Any, str, str | None]] = []
    if adf is not None:
        panels.append((spec_for("adf"), adf, "", None))
    if com is not None:
        panels.append((MAPS["com_angle"], com_maps["com_angle"], "rad", None))
        panels.append((MAPS["com_magnitude"], com_maps["com_magnitude"], com.map_unit, None))
    rot = MAPS["angle"].title
    if np.isfinite(angle_rho):
        rot += f"\nρ vs COM angle = {angle_rho:+.3f}"
    panels.append((MAPS["angle"], maps.angle, "rad", rot))
    for i, latent in enumerate(maps.latents):
        name = MAPS["latents"].plane_title(i)
        if latent_r:
            name += f"\nr vs COM magnitude = {latent_r[i]:+.3f}"
        panels.append((MAPS["latents"], latent, "1", name))
    if maps.shift is not None:
        for i in range(2):
            panels.append((MAPS["shift"], maps.shift[i], "px", MAPS["shift"].plane_title(i)))
    if getattr(maps, "novelty", None) is not None:
        panels.append((MAPS["novelty"], maps.novelty, "robust SD", None))
    history = full.history if full is not None else []
    n = len(panels) + (1 if history else 0)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = _figure(3.6 * cols, 3.4 * rows)
    for i, (spec, values, unit, name) in enumerate(panels):
        map_panel(fig, fig.add_subplot(rows, cols, i + 1), spec, values, unit, extent, scan_unit, name)
    if history:
        ax = fig.add_subplot(rows, cols, len(panels) + 1)
        epochs = [r["epoch"] for r in history]
        ax.plot(epochs, [r["train_loss"] for r in history], label="train")
        if history[0].get("test_loss") is not None:
            ax.plot(epochs, [r["test_loss"] for r in history], label="test")
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("loss (nats / pattern)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
        if full is not None and full.best_epoch != epochs[-1]:
            ax.axvline(full.best_epoch, color="k", lw=0.8, ls="--")
    if title is None:
        title = "rVAE"
        if full is not None:
            title += (f": {full.config.latent_dim} latents, {full.trainer.epoch} epochs"
                      + (f", maps of epoch {full.best_epoch}" if full.best_epoch != full.trainer.epoch else ""))
    fig.suptitle(title)
    return _save(fig, path)
