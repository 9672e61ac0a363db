"""Reading results files back: every map with its spec, unit and geometry.

:func:`read_results` reads the current layout (format 2, written by :mod:`.files`) and the four
layouts written by version 0.1 (maps of the napari writer stored as displayed, ``*_mrad`` COM
maps, ``valid`` masks, maps without a ``map`` attribute). :func:`is_results_file` tells our
files from others by the root mark :data:`RESULTS_MARK`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..dataset import Calibration
from ..schema import LEGACY, MAPS, MapSpec, resolve_unit, spec_for

#: Root attribute that marks our results files (its value is the format version).
RESULTS_MARK = "napari_4dstem_rvae_results"
FORMAT_VERSION = 2


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
