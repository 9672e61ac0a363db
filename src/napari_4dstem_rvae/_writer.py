"""Writers for map layers (TIFF, HDF5 with calibration) and the results-file reader.

A results file written here or by the headless pipeline (:func:`pipeline.write_results`)
reopens as the same layers, aligned with the ADF image (scan scale, origin and units).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import numpy as np

#: Root attribute that marks our results files.
RESULTS_MARK = "napari_4dstem_rvae_results"


def _plain_metadata(metadata: dict) -> dict:
    """Layer metadata without the Dataset4D object (not serialisable)."""
    from ._layers import DATASET_KEY, ROLE_KEY

    out = {}
    role = metadata.get(ROLE_KEY)
    if isinstance(role, dict):
        out.update({k: v for k, v in role.items() if isinstance(v, (str, int, float, bool, list, type(None)))})
    return out


def _calibration_of(metadata: dict) -> dict | None:
    from ._layers import find_dataset

    holder = type("L", (), {"metadata": metadata})()
    ds = find_dataset(holder)
    return ds.calibration.to_dict() if ds is not None else None


def _dataset_name(name: str, taken: set) -> str:
    base = re.sub(r"[^0-9A-Za-z_.\- ]+", "_", name).strip() or "map"
    candidate, i = base, 1
    while candidate in taken:
        i += 1
        candidate = f"{base} ({i})"
    taken.add(candidate)
    return candidate


def write_hdf5(path: str, layer_data: list[tuple]) -> list[str]:
    """napari writer: image layers -> one HDF5 dataset each, with scale/translate/units and
    the calibration of the data set behind them; reopens with this plugin."""
    import h5py

    if not layer_data:
        return []
    taken: set = set()
    with h5py.File(path, "w") as f:
        f.attrs[RESULTS_MARK] = 1
        for data, meta, layer_type in layer_data:
            if layer_type != "image":
                continue
            name = _dataset_name(meta.get("name", "map"), taken)
            dset = f.create_dataset(name, data=np.asarray(data))
            dset.attrs["scale"] = np.asarray(meta.get("scale", (1.0,) * np.ndim(data)), float)
            dset.attrs["translate"] = np.asarray(meta.get("translate", (0.0,) * np.ndim(data)), float)
            units = meta.get("units")
            if units is not None:
                dset.attrs["units"] = json.dumps([str(u) for u in units])
            dset.attrs["layer_json"] = json.dumps(_plain_metadata(meta.get("metadata", {})))
            if "colormap" in meta:
                cmap = meta["colormap"]
                name_of = cmap.get("name") if isinstance(cmap, dict) else getattr(cmap, "name", cmap)
                dset.attrs["colormap"] = str(name_of)
            if meta.get("contrast_limits") is not None:
                dset.attrs["contrast_limits"] = np.asarray(meta["contrast_limits"], float)
            calibration = _calibration_of(meta.get("metadata", {}))
            if calibration is not None:
                f.attrs.setdefault("calibration_json", json.dumps(calibration))
    return [path]


def write_tiff(path: str, layer_data: list[tuple]) -> list[str]:
    """napari writer: image layers of one shape -> an ImageJ TIFF (a stack if several), with
    the scan calibration as pixel size and the layer names as slice labels."""
    import tifffile

    images = [(np.asarray(d, np.float32), m) for d, m, t in layer_data if t == "image"]
    if not images:
        return []
    shapes = {img.shape for img, _ in images}
    if len(shapes) != 1:
        raise ValueError(f"{path}: TIFF stacks need layers of one shape, got {sorted(shapes)}; "
                         "save them one by one or as HDF5")
    stack = np.stack([img for img, _ in images]) if len(images) > 1 else images[0][0]
    meta0 = images[0][1]
    scale = meta0.get("scale", (1.0, 1.0))[-2:]
    units = meta0.get("units")
    unit = str(units[-1]) if units is not None else "pixel"
    # ImageJ descriptions are ASCII; ImageJ reads Å as the escape \u00C5
    unit = {"angstrom": "\\u00C5", "nanometer": "nm", "micrometer": "micron"}.get(unit, unit)
    imagej_meta: dict[str, Any] = {"unit": unit, "spacing": float(scale[0])}
    if len(images) > 1:
        imagej_meta["axes"] = "ZYX"
        imagej_meta["Labels"] = [m.get("name", f"map {i}") for i, (_, m) in enumerate(images)]
    tifffile.imwrite(path, stack, imagej=True, resolution=(1.0 / float(scale[1]), 1.0 / float(scale[0])),
                     metadata=imagej_meta)
    return [path]


def is_results_file(path: str) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return bool(f.attrs.get(RESULTS_MARK, 0))
    except OSError:
        return False


def read_results(path: str) -> list[tuple]:
    """Layers of a results file: each 2D map (and each plane of a (k, ny, nx) stack such as
    ``latents``) with the stored scale/translate/units or, for pipeline files, the scan
    calibration, so they overlay the ADF image of the same data set exactly."""
    import h5py

    from ._layers import MAP_STYLES, ROLE_KEY, map_kind
    from .dataset import Calibration

    layers: list[tuple] = []
    with h5py.File(path, "r") as f:
        cal = None
        if "calibration_json" in f.attrs:
            try:
                cal = Calibration.from_dict(json.loads(f.attrs["calibration_json"]))
            except (ValueError, TypeError):
                cal = None
        scan_shape = tuple(int(v) for v in f.attrs["scan_shape"]) if "scan_shape" in f.attrs else None
        items: list[tuple[str, Any]] = []
        f.visititems(lambda n, o: items.append((n, o)) if isinstance(o, h5py.Dataset) else None)
        for name, dset in items:
            if dset.dtype.kind not in "fiub" or dset.ndim < 2:
                continue
            if scan_shape is not None and tuple(dset.shape[-2:]) != scan_shape:
                continue
            data = dset[()]
            attrs = dset.attrs
            base: dict[str, Any] = {}
            if "scale" in attrs:
                base["scale"] = tuple(attrs["scale"])[-2:]
                base["translate"] = tuple(attrs["translate"])[-2:]
            elif cal is not None:
                base["scale"] = cal.scan_step_yx
                base["translate"] = tuple(cal.scan_origin)
            if "units" in attrs:
                base["units"] = tuple(json.loads(attrs["units"]))[-2:]
            elif cal is not None and cal.scan_unit in ("Å", "nm", "µm"):
                base["units"] = ({"Å": "angstrom", "nm": "nanometer", "µm": "micrometer"}[cal.scan_unit],) * 2
            role = json.loads(attrs["layer_json"]) if "layer_json" in attrs else {}
            role.setdefault("kind", "map")
            role["source_file"] = os.fspath(path)
            short = name.split("/")[-1]
            planes = [(short, data)] if data.ndim == 2 else [(f"{short} {i + 1}", data[i]) for i in range(data.shape[0])]
            for label, plane in planes:
                kwargs = dict(base, name=label, metadata={ROLE_KEY: dict(role)})
                if "colormap" in attrs:
                    kwargs["colormap"] = str(attrs["colormap"])
                    if "contrast_limits" in attrs:
                        kwargs["contrast_limits"] = tuple(attrs["contrast_limits"])
                else:
                    kind = map_kind(label)
                    plane = np.degrees(plane) if kind == "angle" else plane
                    kwargs["colormap"] = MAP_STYLES[kind]["colormap"]
                    if kind == "angle":
                        kwargs["contrast_limits"] = MAP_STYLES["angle"]["limits"]
                layers.append((np.asarray(plane), kwargs, "image"))
    return layers
