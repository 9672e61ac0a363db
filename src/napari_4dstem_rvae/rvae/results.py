"""Writing the rVAE part of a results file (HDF5) and an overview figure (PNG)."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from .diagnostics import correlate
from .infer import LatentMaps

CONVENTIONS = ("angle: rotation of each pattern relative to the decoder's canonical pattern, "
               "radians in (-pi, pi], counter-clockwise as seen on screen (detector rows drawn "
               "downwards) about the direct beam; shift: (x right, y down) in detector pixels; "
               "latents: posterior means, prior N(0, 1); *_std: posterior standard deviations")


def _parts(result: Any) -> tuple[LatentMaps, Any]:
    if isinstance(result, LatentMaps):
        return result, None
    if hasattr(result, "maps"):
        return result.maps, result
    raise TypeError(f"expected an RVAEResult or LatentMaps, got {type(result).__name__}")


def _json(value: Any) -> str:
    return json.dumps(value, default=str)


def write_results(path: Any, result: Any, *, group: str = "rvae", roi_mask: Any = None) -> str:
    """Write the rVAE maps, parameters and history into ``group`` of the HDF5 file ``path``.

    The file is created if needed; other groups (e.g. ``/com`` of the same run) are kept and
    an existing ``group`` is replaced. Layout of ``/<group>``:

    - ``angle`` ``(scan_y, scan_x)`` float32, rad; ``angle_std``
    - ``latents`` ``(k, scan_y, scan_x)`` float32; ``latents_std``
    - ``shift``, ``shift_std`` ``(2, scan_y, scan_x)`` (x, y) in detector pixels, if learned
    - ``roi_mask`` ``(scan_y, scan_x)`` bool: the training positions (all when not given)
    - ``history/<column>``: one float64 array per loss-history column (per epoch)
    - ``diagnostics/epoch``, ``max_abs_r``, ``angle_rho``, ``latent_r`` ``(n, k)``
    - attributes: ``config`` (JSON, every hyperparameter) and the main ones as attributes,
      ``best_epoch``, ``latent_r``, ``max_abs_r``, ``angle_rho``, ``data_scale``,
      ``center_px``, ``noise_std``, ``conventions``, ``calibration`` and ``provenance`` (JSON).

    ``result`` is an :class:`~napari_4dstem_rvae.rvae.fit.RVAEResult` (everything) or
    :class:`~napari_4dstem_rvae.rvae.infer.LatentMaps` (maps only).
    """
    import h5py

    maps, full = _parts(result)
    path = os.fspath(path)
    with h5py.File(path, "a") as f:
        if group in f:
            del f[group]
        g = f.create_group(group)

        def put(name: str, values: Any, unit: str, axes: str) -> None:
            d = g.create_dataset(name, data=np.asarray(values, dtype=np.float32), compression="gzip")
            d.attrs["unit"] = unit
            d.attrs["axes"] = axes

        put("angle", maps.angle, "rad", "scan_y, scan_x")
        put("angle_std", maps.angle_std, "rad", "scan_y, scan_x")
        put("latents", maps.latents, "1", "latent, scan_y, scan_x")
        put("latents_std", maps.latents_std, "1", "latent, scan_y, scan_x")
        if maps.shift is not None:
            put("shift", maps.shift, "px", "(x, y), scan_y, scan_x")
            put("shift_std", maps.shift_std, "px", "(x, y), scan_y, scan_x")
        g.attrs["conventions"] = CONVENTIONS
        if full is not None:
            trainer = full.trainer
            config = full.config.to_dict()
            g.attrs["config"] = _json(config)
            for key in ("latent_dim", "learn_shift", "epochs", "batch_size", "learning_rate",
                        "pixels_per_step", "kl_weight", "noise_std", "likelihood", "seed"):
                value = config[key]
                g.attrs[f"param_{key}"] = "None" if value is None else value
            g.attrs["param_rotation_prior"] = ("uniform" if config["rotation_prior"] is None
                                               else config["rotation_prior"])
            g.attrs["best_epoch"] = int(full.best_epoch)
            g.attrs["epochs_done"] = int(trainer.epoch)
            g.attrs["latent_r"] = np.asarray(full.latent_r, dtype=np.float64)
            g.attrs["max_abs_r"] = float(full.max_abs_r)
            g.attrs["angle_rho"] = float(full.angle_rho)
            g.attrs["data_scale"] = float(full.model.data_scale)
            g.attrs["noise_std_data_units"] = full.model.noise_std
            g.attrs["center_px"] = np.asarray(full.model.center, dtype=np.float64)
            g.attrs["n_train"] = trainer.n_train
            g.attrs["n_test"] = trainer.n_test
            g.attrs["training_seconds"] = float(trainer.elapsed)
            if trainer.calibration is not None:
                g.attrs["calibration"] = _json(trainer.calibration.to_dict())
            g.attrs["provenance"] = _json(list(trainer.provenance))
            if roi_mask is None:
                roi_mask = trainer.roi_mask
            history = full.history
            if history:
                h = g.create_group("history")
                for key in history[0]:
                    column = [np.nan if r.get(key) is None else r.get(key, np.nan) for r in history]
                    h.create_dataset(key, data=np.asarray(column, dtype=np.float64))
            if full.diagnostics:
                d = g.create_group("diagnostics")
                d.create_dataset("epoch", data=np.array([x.epoch for x in full.diagnostics], np.int64))
                d.create_dataset("max_abs_r", data=np.array([x.max_abs_r for x in full.diagnostics]))
                d.create_dataset("angle_rho", data=np.array([x.angle_rho for x in full.diagnostics]))
                k = maps.latents.shape[0]
                d.create_dataset("latent_r", data=np.array(
                    [x.latent_r if len(x.latent_r) == k else (np.nan,) * k for x in full.diagnostics],
                    dtype=np.float64).reshape(-1, k))
        mask = np.ones(maps.angle.shape, bool) if roi_mask is None else np.asarray(roi_mask, bool)
        g.create_dataset("roi_mask", data=mask)
    return path


def plot_overview(path: Any, result: Any, *, adf: Any = None, com_magnitude: Any = None,
                  com_angle: Any = None, calibration: Any = None, title: str | None = None) -> str:
    """PNG laid out like the study's figures: ADF (or sum) image, COM angle, COM magnitude,
    rotation map, then each latent map with its Pearson r against the COM magnitude, and
    the loss history when ``result`` is an RVAEResult. Maps share the scan calibration.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    maps, full = _parts(result)
    if calibration is None and full is not None:
        calibration = full.trainer.calibration
    diag = correlate(maps, com_magnitude, com_angle, keep_maps=False)
    ny, nx = maps.scan_shape
    step_y, step_x = calibration.scan_step_yx if calibration is not None else (1.0, 1.0)
    unit = (calibration.scan_unit if calibration is not None and calibration.scan_step is not None
            and calibration.scan_unit else "probe steps")
    extent = (-0.5 * step_x, (nx - 0.5) * step_x, (ny - 0.5) * step_y, -0.5 * step_y)
    panels: list[tuple[str, np.ndarray, str, tuple[float, float] | None]] = []
    if adf is not None:
        panels.append(("ADF", np.asarray(adf), "gray", None))
    if com_angle is not None:
        panels.append(("COM angle (rad)", np.asarray(com_angle), "twilight", (-math.pi, math.pi)))
    if com_magnitude is not None:
        panels.append(("COM magnitude", np.asarray(com_magnitude), "viridis", None))
    rot = "rotation (rad)"
    if np.isfinite(diag.angle_rho):
        rot += f"\nρ vs COM angle = {diag.angle_rho:+.3f}"
    panels.append((rot, maps.angle, "twilight", (-math.pi, math.pi)))
    for i, latent in enumerate(maps.latents):
        name = f"latent {i}"
        if diag.latent_r:
            name += f"\nr vs COM magnitude = {diag.latent_r[i]:+.3f}"
        panels.append((name, latent, "RdBu_r", None))
    if maps.shift is not None:
        panels.append(("shift x (px)", maps.shift[0], "RdBu_r", None))
        panels.append(("shift y (px)", maps.shift[1], "RdBu_r", None))
    history = full.history if full is not None else []
    n = len(panels) + (1 if history else 0)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3.6 * cols, 3.4 * rows), dpi=100)
    FigureCanvasAgg(fig)
    for i, (name, values, cmap, limits) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        kwargs: dict[str, Any] = {"cmap": cmap, "extent": extent, "interpolation": "nearest"}
        if limits is not None:
            kwargs.update(vmin=limits[0], vmax=limits[1])
        shown = ax.imshow(values, **kwargs)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(f"x ({unit})", fontsize=8)
        ax.set_ylabel(f"y ({unit})", fontsize=8)
        ax.tick_params(labelsize=7)
        fig.colorbar(shown, ax=ax, shrink=0.8)
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
    fig.tight_layout()
    path = os.fspath(path)
    fig.savefig(path)
    return path
