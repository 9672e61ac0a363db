"""The results file: one HDF5 layout for every map the package makes, written here (and read
back in one place, :mod:`.reading`).

Layout (format 2)
-----------------
- root attributes: ``napari_4dstem_rvae_results`` (the mark, = format version), ``source``,
  ``calibration_json``, ``provenance_json``, ``parameters_json``, ``versions_json``,
  ``scan_shape``;
- ``/images/<name>``: real-space images of virtual detectors (``sum``, ``adf`` …);
- ``/com/<com_*>``: the COM maps of :meth:`COMResult.maps
  <napari_4dstem_rvae.processing.com.COMResult.maps>` (shifts in mrad when the detector is
  calibrated, else px; the group's attributes say how they were made);
- ``/rvae/``: ``angle``, ``angle_std``, ``latents`` (k, scan_y, scan_x), ``latents_std``,
  ``shift``, ``shift_std``, ``roi_mask``, ``history/<column>``, ``diagnostics/…``, and every
  hyperparameter as attributes;
- ``/layers/<name>``: maps saved from napari layers (with their scale, origin and units);
- top-level soft links ``angle``, ``latents``, ``com_magnitude`` … to the maps above.

Every map dataset carries ``map`` (its :data:`~napari_4dstem_rvae.schema.MAPS` name), ``unit``
and ``axes``. Files are written to a temporary name in the target folder and renamed over the
target when complete, so a crash never leaves a half-written file under the final name. Each
writer claims its output first (:func:`~.claim.claim_output`): it never writes over an input
or a file that is not one of ours, nor while another writer holds the same path.

Reading back (this layout and those of version 0.1): :mod:`.reading`.
"""

from __future__ import annotations

import json
import os
import platform
from typing import Any

import numpy as np

from ..atomic import atomic_path
from ..dataset import Calibration
from ..schema import MAPS, RVAE_MAPS, MapSpec, resolve_unit, spec_for
from .claim import claim_output
from .reading import FORMAT_VERSION, RESULTS_MARK

RVAE_CONVENTIONS = ("angle: rotation of each pattern relative to the decoder's canonical pattern, "
                    "radians in (-pi, pi], counter-clockwise as seen on screen (detector rows drawn "
                    "downwards) about the direct beam; shift: (x right, y down) in detector pixels; "
                    "latents: posterior means, prior N(0, 1); *_std: posterior standard deviations")


def versions() -> dict[str, str]:
    """Versions of the packages that shape the results (recorded in results files)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("napari-4dstem-rvae", "numpy", "dask", "h5py", "torch", "scikit-learn"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _json(value: Any) -> str:
    return json.dumps(value, default=str)


def _scan_unit(calibration: Calibration | None) -> str | None:
    if calibration is None or calibration.scan_step is None:
        return None
    return calibration.scan_unit


def _put_map(group: Any, name: str, values: Any, spec: MapSpec, unit: str, **attrs: Any) -> Any:
    values = np.asarray(values)
    dtype = bool if spec.kind == "mask" else (np.float64 if values.dtype == np.float64 else np.float32)
    dset = group.create_dataset(name, data=values.astype(dtype, copy=False),
                                compression="gzip" if values.size > 4096 else None)
    dset.attrs["map"] = spec.name
    dset.attrs["unit"] = unit
    dset.attrs["axes"] = "scan_y, scan_x" if values.ndim == 2 else "plane, scan_y, scan_x"
    for key, value in attrs.items():
        dset.attrs[key] = value
    return dset


def write_results(path: str | os.PathLike, *, calibration: Calibration | None, scan_shape: tuple[int, int],
                  source: str | None = None, provenance: Any = (), images: dict[str, Any] | None = None,
                  com: Any = None, rvae: Any = None, parameters: dict[str, Any] | None = None,
                  roi_mask: Any = None, inputs: Any = (), what: str = "results file") -> str:
    """Write a results file (see the module docstring), atomically, under
    :func:`~.claim.claim_output` (``ValueError`` when ``path`` is one of ``inputs``, a folder, a
    file not of ours or held by another writer; nested in the caller's own claim it passes).

    Parameters
    ----------
    calibration, scan_shape, source, provenance
        Of the data set the maps belong to (``Dataset4D.calibration`` …).
    images
        ``{name: (scan_y, scan_x)}`` virtual images (``"sum"``, ``"adf"`` …).
    com
        A :class:`~napari_4dstem_rvae.processing.com.COMResult`.
    rvae
        An :class:`~napari_4dstem_rvae.rvae.fit.RVAEResult` (maps, configuration, history,
        diagnostics) or :class:`~napari_4dstem_rvae.rvae.infer.LatentMaps` (maps only).
    parameters
        Anything else worth keeping with the maps (JSON).
    roi_mask
        The training positions (default: the trainer's).
    inputs, what
        The files the maps come from (never overwritten) and the output's name in messages.
    """
    import h5py

    path = os.fspath(path)
    scan_shape = tuple(int(s) for s in scan_shape)
    with claim_output(path, inputs, what), atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs[RESULTS_MARK] = FORMAT_VERSION
        f.attrs["source"] = str(source or "")
        f.attrs["calibration_json"] = _json(None if calibration is None else calibration.to_dict())
        f.attrs["provenance_json"] = _json(list(provenance or ()))
        f.attrs["parameters_json"] = _json(parameters or {})
        f.attrs["versions_json"] = _json(versions())
        f.attrs["scan_shape"] = np.asarray(scan_shape)
        scan_unit = _scan_unit(calibration)
        links: dict[str, str] = {}
        if images:
            group = f.create_group("images")
            for name, values in images.items():
                spec = spec_for(name)
                _put_map(group, name, values, spec, resolve_unit(spec.unit, None, scan_unit), title=spec.title)
        if com is not None:
            group = f.create_group("com")
            for name, values in com.maps().items():
                spec = spec_for(name)
                target = group if spec.group == "com" else f.require_group("images")
                if name in target:  # a virtual image of the same pass, already given in ``images``
                    continue
                _put_map(target, name, values, spec, resolve_unit(spec.unit, com.map_unit, scan_unit))
                if spec.group == "com":
                    links[name] = f"/com/{name}"
            for key, value in com.attributes().items():
                group.attrs[key] = value if not isinstance(value, (list, dict)) else _json(value)
        if rvae is not None:
            _write_rvae(f.create_group("rvae"), rvae, roi_mask)
            for name in RVAE_MAPS:
                if f"rvae/{name}" in f:
                    links[name] = f"/rvae/{name}"
        for name, target in links.items():
            if name not in f:
                f[name] = h5py.SoftLink(target)
    return path


def _write_rvae(g: Any, result: Any, roi_mask: Any) -> None:
    maps = result.maps if hasattr(result, "maps") and not hasattr(result, "angle") else result
    full = result if maps is not result else None
    for name in RVAE_MAPS:
        values = getattr(maps, name, None)
        if values is not None:
            spec = MAPS[name]
            extra = {}
            if name == "novelty" and getattr(maps, "novelty_reference", None):
                extra["reference"] = maps.novelty_reference  # "lattice" or "model" (rvae.infer.LatentMaps)
            _put_map(g, name, values, spec, spec.unit, **extra)
    g.attrs["conventions"] = RVAE_CONVENTIONS
    if full is not None:
        trainer = full.trainer
        config = full.config.to_dict()
        g.attrs["config"] = _json(config)
        for key in ("latent_dim", "learn_shift", "epochs", "batch_size", "learning_rate", "pixels_per_step",
                    "kl_weight", "noise_std", "likelihood", "seed", "epoch_selection", "angle_posterior",
                    "restarts", "angle_symmetry"):
            value = config.get(key)
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
            k = maps.latents.shape[0]
            d.create_dataset("epoch", data=np.array([x.epoch for x in full.diagnostics], np.int64))
            d.create_dataset("max_abs_r", data=np.array([x.max_abs_r for x in full.diagnostics]))
            d.create_dataset("angle_rho", data=np.array([x.angle_rho for x in full.diagnostics]))
            d.create_dataset("latent_r", data=np.array(
                [x.latent_r if len(x.latent_r) == k else (np.nan,) * k for x in full.diagnostics],
                dtype=np.float64).reshape(-1, k))
    mask = np.ones(maps.angle.shape, bool) if roi_mask is None else np.asarray(roi_mask, bool)
    _put_map(g, "roi_mask", mask, MAPS["roi_mask"], "1")


def write_layer_maps(path: str | os.PathLike, layers: list[dict[str, Any]],
                     calibration: Calibration | None = None, *, inputs: Any = (),
                     what: str = "results file") -> str:
    """Maps saved from napari layers, atomically: each ``{"name", "values" (stored units),
    "map" (schema name), "unit", "scale", "translate", "units"}`` goes to ``/layers/<name>``.
    Reopens with :func:`~.reading.read_results` (and in napari) as the same layers. Claims
    ``path`` like :func:`write_results` (never an input among ``inputs``, nor a foreign file)."""
    import h5py

    path = os.fspath(path)
    shapes = {tuple(np.shape(layer["values"])[-2:]) for layer in layers}
    with claim_output(path, inputs, what), atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs[RESULTS_MARK] = FORMAT_VERSION
        f.attrs["versions_json"] = _json(versions())
        if calibration is not None:
            f.attrs["calibration_json"] = _json(calibration.to_dict())
        if len(shapes) == 1:
            f.attrs["scan_shape"] = np.asarray(shapes.pop())
        group = f.create_group("layers")
        taken: set[str] = set()
        for layer in layers:
            name = _dataset_name(layer["name"], taken)
            spec = spec_for(layer.get("map") or layer["name"])
            dset = _put_map(group, name, layer["values"], spec, str(layer.get("unit") or spec.unit),
                            title=str(layer["name"]))
            for key in ("scale", "translate"):
                if layer.get(key) is not None:
                    dset.attrs[key] = np.asarray(layer[key], dtype=np.float64)
            if layer.get("units") is not None:
                dset.attrs["units"] = _json([str(u) for u in layer["units"]])
    return path


def _dataset_name(name: str, taken: set[str]) -> str:
    import re

    base = re.sub(r"[^0-9A-Za-z_.\- ]+", "_", str(name)).strip() or "map"
    candidate, i = base, 1
    while candidate in taken:
        i += 1
        candidate = f"{base} ({i})"
    taken.add(candidate)
    return candidate
