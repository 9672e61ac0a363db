"""Translation between :class:`Dataset4D` objects and napari layer data (no Qt imports).

The real-space canvas shows images over the scan; every such layer carries its
``Dataset4D`` in ``layer.metadata[DATASET_KEY]`` so that any widget can find the 4D data
behind it (:func:`find_dataset`).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from .dataset import Dataset4D

#: Key of the Dataset4D in a layer's metadata.
DATASET_KEY = "dataset4d"
#: Key with information about the layer's role (e.g. ``{"kind": "virtual_image"}``).
ROLE_KEY = "napari_4dstem_rvae"

_PINT_UNITS = {"Å": "angstrom", "nm": "nanometer", "µm": "micrometer", "pm": "picometer",
               "mm": "millimeter", "m": "meter"}


def scan_geometry(dataset: Dataset4D) -> dict[str, Any]:
    """``scale``, ``translate`` and ``units`` kwargs placing a scan-shaped image in real space."""
    cal = dataset.calibration
    geometry: dict[str, Any] = {
        "scale": tuple(cal.scan_step_yx),
        "translate": tuple(float(v) for v in cal.scan_origin),
    }
    if cal.scan_unit in _PINT_UNITS and cal.scan_step is not None:
        geometry["units"] = (_PINT_UNITS[cal.scan_unit],) * 2
    geometry["axis_labels"] = ("scan_y", "scan_x")
    return geometry


def default_virtual_mask(dataset: Dataset4D) -> tuple[str, np.ndarray]:
    """The detector mask of the default real-space image: an annular dark field outside the
    bright-field disk when the detector is calibrated in mrad and the semi-angle is known,
    else the total intensity. Returns ``(label, mask)`` with mask shape ``det_shape``.
    """
    ky, kx = dataset.det_shape
    cal = dataset.calibration
    if cal.det_is_angular and cal.semiangle_mrad:
        cy, cx = cal.det_origin if cal.det_origin is not None else ((ky - 1) / 2, (kx - 1) / 2)
        yy, xx = np.mgrid[0:ky, 0:kx]
        radius_mrad = np.hypot(yy - cy, xx - cx) * cal.det_pixel_size
        # Inner angle just outside the bright-field disk; outer angle: the detector edge.
        mask = radius_mrad >= 1.15 * cal.semiangle_mrad
        if mask.sum() >= 0.02 * mask.size:
            return "ADF", mask.astype(np.float32)
    return "sum", np.ones((ky, kx), np.float32)


def iter_virtual_image(dataset: Dataset4D, mask: np.ndarray,
                       target_bytes: int = 128 * 2**20) -> Iterator[tuple[tuple[slice, slice], np.ndarray]]:
    """Virtual image ``Σ_k data[y, x, k] · mask[k]`` block by block of the scan (the one-pass
    engine on each block), so that a caller can show progress and partial results.

    Yields ``((rows, cols), values)``; reads each chunk of the file once.
    """
    from .processing.engine import iter_frame_blocks, reduce_masks

    for where, block in iter_frame_blocks(dataset.data, target_bytes):
        yield where, reduce_masks(block, {"image": mask}, n_threads=1)["image"]


def virtual_image(dataset: Dataset4D, mask: np.ndarray) -> np.ndarray:
    """The whole virtual image (scan_y, scan_x), float64, in one pass."""
    from .processing.engine import reduce_masks

    return reduce_masks(dataset.data, {"image": mask})["image"]


def real_space_layer_data(dataset: Dataset4D, image: np.ndarray, label: str,
                          extra: dict | None = None) -> tuple:
    """A napari ``LayerDataTuple`` for a real-space image of ``dataset``."""
    meta = {DATASET_KEY: dataset, ROLE_KEY: {"kind": "virtual_image", "detector": label, **(extra or {})}}
    kwargs = {
        "name": f"{dataset.name} {label}",
        "metadata": meta,
        "colormap": "gray",
        **scan_geometry(dataset),
    }
    finite = np.isfinite(image)
    if finite.any() and np.ptp(image[finite]) > 0:
        kwargs["contrast_limits"] = (float(image[finite].min()), float(image[finite].max()))
    return (image, kwargs, "image")


def find_dataset(layer: Any) -> Dataset4D | None:
    """The Dataset4D behind a layer, or None."""
    if layer is None:
        return None
    ds = getattr(layer, "metadata", {}).get(DATASET_KEY)
    return ds if isinstance(ds, Dataset4D) else None


def dataset_layers(viewer: Any) -> list:
    """Layers of ``viewer`` that carry a Dataset4D, in layer order."""
    return [layer for layer in viewer.layers if find_dataset(layer) is not None]


# ----------------------------------------------------------------------------------------
# Maps over the scan (COM, rVAE) as layers aligned with the real-space image
# ----------------------------------------------------------------------------------------
#: How each kind of map is shown: colormap, symmetric limits, unit conversion.
MAP_STYLES = {
    "angle": {"colormap": "twilight_shifted", "limits": (-180.0, 180.0)},   # radians -> degrees
    "signed": {"colormap": "coolwarm", "symmetric": True},                  # latents, COM x/y, div, curl
    "magnitude": {"colormap": "viridis"},
    "image": {"colormap": "gray"},
}


def map_kind(name: str) -> str:
    """The display kind of a map from its name (``angle``, ``latent 1``, ``com_magnitude`` ...)."""
    n = name.lower()
    if "angle" in n or "rotation" in n:
        return "angle"
    if "spread" in n or "magnitude" in n or "sigma" in n or n.endswith("std"):
        return "magnitude"
    if any(k in n for k in ("latent", "com_x", "com_y", "divergence", "curl", "shift")) or n in ("x", "y"):
        return "signed"
    return "image"


def map_layer_data(name: str, values: np.ndarray, dataset: Dataset4D, kind: str | None = None,
                   extra: dict | None = None, layer_name: str | None = None) -> tuple:
    """A napari ``LayerDataTuple`` for a scan-shaped map, aligned with the ADF image.

    ``angle`` maps are given in radians and shown in degrees with a cyclic colormap;
    ``signed`` maps with a diverging colormap centred on zero.
    """
    values = np.asarray(values, np.float32)
    if values.shape[:2] != tuple(dataset.scan_shape) and values.shape != tuple(dataset.scan_shape):
        raise ValueError(f"map '{name}' has shape {values.shape}; expected the scan shape {dataset.scan_shape}")
    kind = kind or map_kind(name)
    style = MAP_STYLES[kind]
    unit = None
    if kind == "angle":
        values = np.degrees(values)
        unit = "degree"
    kwargs: dict[str, Any] = {"name": layer_name or name, "colormap": style["colormap"], **scan_geometry(dataset)}
    finite = values[np.isfinite(values)]
    if "limits" in style:
        kwargs["contrast_limits"] = style["limits"]
    elif finite.size:
        if style.get("symmetric"):
            bound = float(np.abs(finite).max()) or 1.0
            kwargs["contrast_limits"] = (-bound, bound)
        elif np.ptp(finite) > 0:
            kwargs["contrast_limits"] = (float(finite.min()), float(finite.max()))
    kwargs["metadata"] = {DATASET_KEY: dataset,
                          ROLE_KEY: {"kind": "map", "map": name, "map_kind": kind, "value_unit": unit, **(extra or {})}}
    return (values, kwargs, "image")


def upsert_layer(viewer: Any, layer_data: tuple):
    """Add a layer, or update the layer of the same name in place (no piling up of copies)."""
    data, kwargs, layer_type = layer_data
    name = kwargs["name"]
    if name in viewer.layers and type(viewer.layers[name]).__name__.lower() == layer_type:
        layer = viewer.layers[name]
        layer.data = data
        for key in ("scale", "translate", "units", "colormap", "contrast_limits"):
            if key in kwargs:
                setattr(layer, key, kwargs[key])
        layer.metadata.update(kwargs.get("metadata", {}))
        return layer
    return getattr(viewer, f"add_{layer_type}")(data, **kwargs)
