"""napari writers: image layers as a results file (HDF5) or an ImageJ TIFF.

The layers are translated back to maps (values in their stored unit, the schema name, the
scan geometry) and written by :mod:`napari_4dstem_rvae.results`, so they reopen in napari as
the same layers, aligned with the ADF image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..schema import shown_in_degrees, spec_for
from ..workflows import from_napari_unit
from .layers import ROLE_KEY, find_dataset


def _layer_map(data: Any, meta: dict) -> dict[str, Any]:
    """One image layer as a map for :func:`results.write_layer_maps`."""
    role = meta.get("metadata", {}).get(ROLE_KEY, {}) or {}
    values = np.asarray(data)
    spec = spec_for(role["map"]) if role.get("map") else spec_for(meta.get("name", "map"))
    if role.get("map") and shown_in_degrees(spec):
        values = np.radians(values.astype(np.float64))  # shown in degrees, stored in radians
    return {"name": meta.get("name", "map"), "values": values, "map": spec.name if role.get("map") else None,
            "unit": role.get("unit"), "scale": meta.get("scale"), "translate": meta.get("translate"),
            "units": meta.get("units")}


def write_hdf5(path: str, layer_data: list[tuple]) -> list[str]:
    """napari writer: image layers -> one map each in a results file, with their scale, origin,
    units and the calibration of the data set behind them; reopens with this plugin."""
    from ..results import write_layer_maps

    images = [(d, m) for d, m, t in layer_data if t == "image"]
    if not images:
        return []
    calibration, sources = None, []
    for _, meta in images:
        holder = type("Layer", (), {"metadata": meta.get("metadata", {})})()
        dataset = find_dataset(holder)
        if dataset is not None:
            calibration = calibration or dataset.calibration
            if dataset.source:
                sources.append(dataset.source)  # never written over: the results writer refuses it
    return [write_layer_maps(path, [_layer_map(d, m) for d, m in images], calibration, inputs=sources,
                             what="the maps' file")]


def write_tiff(path: str, layer_data: list[tuple]) -> list[str]:
    """napari writer: image layers of one shape -> an ImageJ TIFF (a stack if several), with
    the scan calibration as pixel size and the layer names as slice labels (values as shown)."""
    from ..results import write_tiff as write

    images = [(np.asarray(d, np.float32), m) for d, m, t in layer_data if t == "image"]
    if not images:
        return []
    meta0 = images[0][1]
    scale = tuple(meta0.get("scale", (1.0, 1.0)))[-2:]
    units = meta0.get("units")
    unit = from_napari_unit(units[-1]) if units is not None else None
    return [write(path, [img for img, _ in images], [m.get("name", f"map {i}") for i, (_, m) in enumerate(images)],
                  scale, unit)]
