"""The results file: one HDF5 layout for every map the package makes, written in one place and
read back in one place.

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
target when complete, so a crash never leaves a half-written file under the final name.

Files written by version 0.1 (four different layouts) are read too (:func:`read_results`).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from ..atomic import atomic_path
from ..dataset import Calibration
from ..schema import LEGACY, MAPS, MapSpec, resolve_unit, spec_for

#: Root attribute that marks our results files (its value is the format version).
RESULTS_MARK = "napari_4dstem_rvae_results"
FORMAT_VERSION = 2

#: The rVAE's maps, in the order they are written (``LatentMaps`` attributes of these names).
RVAE_MAPS = ("angle", "angle_std", "angle_concentration", "angle_symmetric", "latents", "latents_std",
             "shift", "shift_std", "novelty")

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


def _same_or_inside(path: str, other: str) -> bool:
    """Whether ``path`` is ``other`` (resolving links) or lies inside the folder ``other``."""
    a, b = os.path.realpath(path), os.path.realpath(other)
    if a == b:
        return True
    if os.path.exists(path) and os.path.exists(other):
        try:
            if os.path.samefile(path, other):
                return True
        except OSError:
            pass
    return os.path.isdir(b) and a.startswith(b.rstrip(os.sep) + os.sep)


@contextlib.contextmanager
def claim_output(path: str | os.PathLike, inputs: Any = (), what: str = "--out") -> Iterator[str]:
    """Check an output file before any work and hold it while the work runs.

    Refused, each with one sentence: a path that is (or resolves to, or lies inside) one of
    ``inputs``; a folder; an existing file that is not a results file of this package (it
    would be lost); a folder that cannot be written. While the block runs an exclusive lock
    (``fcntl.flock`` on ``.NAME.lock`` beside it; released by the system even if the process
    is killed) keeps a second writer of the same path out: it is refused at once.
    """
    path = os.path.abspath(os.fspath(path))
    for source in inputs:
        if source and _same_or_inside(path, os.fspath(source)):
            raise ValueError(f"{what} {path} is the input {os.fspath(source)} (or inside it); "
                             "choose another output so that the input is not overwritten")
    if os.path.isdir(path):
        raise ValueError(f"{what} {path} is a folder; expected a results file name (e.g. results.h5)")
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{what} {path}: the folder {folder} cannot be written")
    if os.path.exists(path) and not is_results_file(path):
        raise ValueError(f"{what} {path} exists and is not a results file of napari-4dstem-rvae; "
                         "it is left untouched — choose another output name")
    import fcntl

    lock_path = os.path.join(folder, f".{os.path.basename(path)}.lock")
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ValueError(f"{what} {path} is being written by another process; wait for it to "
                             "finish or choose another output") from None
        try:  # the lock file may have been removed by its last holder meanwhile: lock the new one
            if os.fstat(fd).st_ino == os.stat(lock_path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield path
    finally:
        try:
            os.remove(lock_path)
        except OSError:
            pass
        os.close(fd)


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
                  roi_mask: Any = None) -> str:
    """Write a results file (see the module docstring), atomically.

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
    """
    import h5py

    path = os.fspath(path)
    scan_shape = tuple(int(s) for s in scan_shape)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
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
                     calibration: Calibration | None = None) -> str:
    """Maps saved from napari layers, atomically: each ``{"name", "values" (stored units),
    "map" (schema name), "unit", "scale", "translate", "units"}`` goes to ``/layers/<name>``.
    Reopens with :func:`read_results` (and in napari) as the same layers."""
    import h5py

    path = os.fspath(path)
    shapes = {tuple(np.shape(layer["values"])[-2:]) for layer in layers}
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
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


# ------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------
@dataclass
class StoredMap:
    """One map read from a results file.

    ``values`` are in ``unit`` (radians for angles) unless ``displayed`` is true (maps saved
    by version 0.1's napari writer, stored as shown, with their ``colormap`` and
    ``contrast_limits``). ``scale``/``translate``/``units`` are set when the file stores a
    geometry of its own for the map (else the file's calibration applies)."""

    name: str
    title: str
    spec: MapSpec
    values: np.ndarray
    unit: str
    path: str
    displayed: bool = False
    colormap: str | None = None
    contrast_limits: tuple[float, float] | None = None
    scale: tuple[float, float] | None = None
    translate: tuple[float, float] | None = None
    units: tuple[str, str] | None = None


@dataclass
class ResultsFile:
    """What :func:`read_results` returns."""

    path: str
    version: int
    calibration: Calibration | None
    scan_shape: tuple[int, int] | None
    maps: list[StoredMap] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str) -> StoredMap:
        for item in self.maps:
            if item.name == name:
                return item
        raise KeyError(f"{self.path}: no map {name!r}; maps: {[m.name for m in self.maps]}")


def is_results_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an HDF5 file carrying our results mark."""
    import h5py

    try:
        with h5py.File(os.fspath(path), "r") as f:
            return bool(f.attrs.get(RESULTS_MARK, 0))
    except (OSError, ValueError):
        return False


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_results(path: str | os.PathLike) -> ResultsFile:
    """Every map of a results file with its spec, unit and geometry (format 2 and the
    version-0.1 layouts). Raises ``ValueError`` naming the file when it is not one."""
    import h5py

    path = os.fspath(path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path}: not a readable HDF5 results file ({exc})") from exc
    try:
        with f:
            return _read_results(f, path)
    except ValueError as exc:
        if path in str(exc):
            raise
        raise ValueError(f"{path}: the results file is damaged ({' '.join(str(exc).split())[:200]})") from exc
    except Exception as exc:  # a damaged file fails inside h5py in many ways: KeyError, OSError …
        reason = " ".join(str(exc).split())[:200]
        raise ValueError(f"{path}: the results file is damaged ({type(exc).__name__}: {reason})") from exc


def _read_results(f: Any, path: str) -> ResultsFile:
    import h5py

    version = int(f.attrs.get(RESULTS_MARK, 0))
    if not version:
        raise ValueError(f"{path}: not a napari-4dstem-rvae results file (no {RESULTS_MARK!r} mark)")
    cal = None
    if "calibration_json" in f.attrs:
        try:
            values = json.loads(_text(f.attrs["calibration_json"]))
            cal = None if values is None else Calibration.from_dict(values)
        except (ValueError, TypeError):
            cal = None
    scan_shape = tuple(int(v) for v in f.attrs["scan_shape"]) if "scan_shape" in f.attrs else None
    try:
        parameters = json.loads(_text(f.attrs.get("parameters_json", "{}"))) or {}
    except ValueError:
        parameters = {}
    items: list[tuple[str, Any]] = []
    f.visititems(lambda n, o: items.append((n, o)) if isinstance(o, h5py.Dataset) else None)
    names = {n for n, _ in items}
    out = ResultsFile(path, version, cal, scan_shape, parameters=parameters,
                      attrs={k: f.attrs[k] for k in f.attrs})
    for name, dset in items:
        if dset.dtype.kind not in "fiub" or dset.ndim < 2 or name.startswith(("rvae/history", "rvae/diagnostics")):
            continue
        if scan_shape is not None and tuple(dset.shape[-2:]) != scan_shape:
            continue
        stored = _stored_map(name, dset, version, names)
        if stored is not None:
            out.maps.append(stored)
    return out


def _stored_map(name: str, dset: Any, version: int, names: set[str]) -> StoredMap | None:
    attrs = dset.attrs
    short = name.split("/")[-1]
    values = dset[()]
    geometry: dict[str, Any] = {}
    if "scale" in attrs:
        geometry["scale"] = tuple(float(v) for v in np.asarray(attrs["scale"])[-2:])
        geometry["translate"] = tuple(float(v) for v in np.asarray(attrs.get("translate", (0.0, 0.0)))[-2:])
    if "units" in attrs:
        geometry["units"] = tuple(json.loads(_text(attrs["units"])))[-2:]
    if "map" in attrs:  # format 2
        spec = spec_for(_text(attrs["map"]))
        title = _text(attrs.get("title", spec.title if short == spec.name else short))
        return StoredMap(short, title, spec, values, _text(attrs.get("unit", spec.unit)), name, **geometry)
    # -- version 0.1 layouts --
    if "layer_json" in attrs or "colormap" in attrs:  # napari writer: stored as displayed
        role = json.loads(_text(attrs["layer_json"])) if "layer_json" in attrs else {}
        spec = spec_for(role.get("map") or short)
        limits = tuple(float(v) for v in attrs["contrast_limits"]) if "contrast_limits" in attrs else None
        return StoredMap(short, short, spec, values, _text(role.get("value_unit") or ""), name, displayed=True,
                         colormap=_text(attrs["colormap"]) if "colormap" in attrs else None,
                         contrast_limits=limits, **geometry)
    if short in ("com_x", "com_y", "com_magnitude") and f"{name}_mrad" in names:
        return None  # the mrad version of the same map is read instead
    if short == "valid" and name.startswith("com"):
        short = "com_valid"
    spec = spec_for(short)
    unit = _text(attrs.get("unit", ""))
    if short in LEGACY:
        unit = "mrad"
    elif spec.group == "com" and spec.unit == "{det}" and not unit:
        unit = "px"
    if unit.startswith("detector px"):
        unit = "px"
    return StoredMap(spec.name if spec.name in MAPS else short, spec.title if spec.name in MAPS else short,
                     spec, values, unit or resolve_unit(spec.unit), name, **geometry)

