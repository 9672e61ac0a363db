"""Translation between the package's objects and napari layer data (no Qt imports).

The real-space canvas shows images over the scan; every such layer carries its
``Dataset4D`` in ``layer.metadata[DATASET_KEY]`` so that any widget can find the 4D data
behind it (:func:`find_dataset`). Maps are styled from the one map schema
(:mod:`napari_4dstem_rvae.schema`), exactly as the figures and the results files style them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..schema import (
    KINDS,
    MapSpec,
    contrast_limits,
    display_unit,
    display_values,
    resolve_unit,
    spec_for,
)
from ..workflows import Calibration, Dataset4D, napari_unit
from .proxies import layer_kind, unwrap

#: Key of the Dataset4D in a layer's metadata.
DATASET_KEY = "dataset4d"
#: Key with information about the layer's role (e.g. ``{"kind": "virtual_image"}``).
ROLE_KEY = "napari_4dstem_rvae"
#: Key of the COM the COM tab made for a data set (``{"dataset", "options", "result"}``), on
#: the data set's layer: the Train tab reuses it when its options are the run's.
COM_KEY = "napari_4dstem_rvae_com"
#: Key of the ImageSeries behind an image layer (the Atoms tab works on it).
SERIES_KEY = "image_series"


def layer_name(title: str, source: str) -> str:
    """A layer's name: the map's title first (what the layer list shows when a long name is
    elided), then the data set or file it belongs to."""
    return f"{title} · {source}" if source else title


def _calibration(source: Dataset4D | Calibration | None) -> Calibration:
    if isinstance(source, Dataset4D):
        return source.calibration
    return source if isinstance(source, Calibration) else Calibration()


def scan_geometry(source: Dataset4D | Calibration | None) -> dict[str, Any]:
    """``scale``, ``translate``, ``units`` and ``axis_labels`` placing a scan-shaped image in
    real space (from a data set or its calibration)."""
    cal = _calibration(source)
    geometry: dict[str, Any] = {
        "scale": tuple(cal.scan_step_yx),
        "translate": tuple(float(v) for v in cal.scan_origin),
    }
    unit = napari_unit(cal.scan_unit) if cal.scan_step is not None else None
    if unit is not None:
        geometry["units"] = (unit, unit)
    geometry["axis_labels"] = ("scan_y", "scan_x")
    return geometry


def virtual_image(dataset: Dataset4D, mask: np.ndarray) -> np.ndarray:
    """The whole virtual image (scan_y, scan_x), float64, in one pass."""
    from ..workflows import reduce_masks

    return reduce_masks(dataset.data, {"image": mask}, nonfinite="nan")["image"]


def lazy_virtual_image(dataset: Dataset4D, mask: np.ndarray) -> Any:
    """The virtual image as a lazy dask array (scan_y, scan_x): each chunk of scan rows reduced
    when napari draws it, so that opening a large file reads nothing."""
    import dask.array as da

    from ..workflows import reduce_masks

    data = dataset.data if hasattr(dataset.data, "map_blocks") else da.from_array(dataset.data)
    data = data.rechunk({2: -1, 3: -1})
    weights = np.asarray(mask, np.float32)

    def block_image(block: np.ndarray) -> np.ndarray:
        return reduce_masks(block, {"image": weights}, n_threads=1, nonfinite="nan")["image"].astype(np.float32)

    return data.map_blocks(block_image, drop_axis=(2, 3), dtype=np.float32,
                           meta=np.empty((0, 0), np.float32))


def real_space_layer_data(dataset: Dataset4D, image: np.ndarray, name: str,
                          extra: dict | None = None) -> tuple:
    """A napari ``LayerDataTuple`` for a real-space image of ``dataset`` (``name`` from the
    schema: ``"adf"``, ``"sum"`` …); the layer is called ``"<data set> <title>"``."""
    spec = spec_for(name)
    meta = {DATASET_KEY: dataset, ROLE_KEY: {"kind": "virtual_image", "map": spec.name,
                                             "detector": spec.title, **(extra or {})}}
    kwargs = {"name": layer_name(spec.title, dataset.name), "metadata": meta, "colormap": spec.cmap,
              **scan_geometry(dataset)}
    if isinstance(image, np.ndarray):  # a lazy image: napari finds its range when drawn
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


def map_layer_data(name: str | MapSpec, values: np.ndarray, source: Dataset4D | Calibration | None, *,
                   unit: str | None = None, extra: dict | None = None, layer_name: str | None = None,
                   title: str | None = None, scan_shape: tuple[int, int] | None = None) -> tuple:
    """A napari ``LayerDataTuple`` for one scan-shaped map, aligned with the ADF image.

    ``name``: the schema name of the map (or its :class:`MapSpec`); values in the schema's
    stored unit (radians for angles, shown in degrees). ``source``: the data set (kept in
    the layer's metadata, so widgets find the data behind the map) or just its calibration.
    """
    spec = name if isinstance(name, MapSpec) else spec_for(name)
    values = np.asarray(values)
    dataset = source if isinstance(source, Dataset4D) else None
    expected = tuple(scan_shape or (dataset.scan_shape if dataset is not None else values.shape[-2:]))
    if values.shape != expected:
        raise ValueError(f"map '{spec.name}' has shape {values.shape}; expected the scan shape {expected}")
    cal = _calibration(source)
    stored_unit = unit or resolve_unit(spec.unit, None, cal.scan_unit if cal.scan_step else None)
    shown = display_values(spec, values).astype(np.float32)
    style = KINDS[spec.kind]
    kwargs: dict[str, Any] = {"name": layer_name or title or spec.title, "colormap": spec.cmap,
                              "opacity": style["opacity"], "blending": style["blending"], **scan_geometry(source)}
    limits = contrast_limits(spec, shown)
    if limits is not None:
        kwargs["contrast_limits"] = limits
    role = {"kind": "map", "map": spec.name, "map_kind": spec.kind, "title": title or spec.title,
            "unit": stored_unit, "value_unit": display_unit(spec, stored_unit), **(extra or {})}
    kwargs["metadata"] = {ROLE_KEY: role, **({DATASET_KEY: dataset} if dataset is not None else {})}
    return (shown, kwargs, "image")


def stored_map_layers(results: Any, prefix: str = "") -> list[tuple]:
    """Layer data of every map of a :class:`~napari_4dstem_rvae.results.ResultsFile` (each
    plane of a stack as its own layer), aligned by the file's calibration or the map's own
    geometry; named :func:`layer_name` (title · prefix; maps saved from layers keep their names)."""
    layers: list[tuple] = []
    for stored in results.maps:
        planes = ([(stored.title, stored.values)] if stored.values.ndim == 2 else
                  [(stored.spec.plane_title(i) if stored.spec.is_stack else f"{stored.title} {i + 1}", plane)
                   for i, plane in enumerate(stored.values)])
        for title, plane in planes:
            # maps saved from layers keep their layer names; others are named after the file
            label = title if stored.path.startswith("layers/") else layer_name(title, prefix)
            extra = {"source_file": results.path}
            if stored.displayed:  # version-0.1 napari files: values as shown, styling stored
                kwargs: dict[str, Any] = {"name": label, **scan_geometry(results.calibration)}
                kwargs["metadata"] = {ROLE_KEY: {"kind": "map", "map": stored.spec.name, **extra}}
                if stored.colormap:
                    kwargs["colormap"] = stored.colormap
                if stored.contrast_limits:
                    kwargs["contrast_limits"] = stored.contrast_limits
                data = (np.asarray(plane, np.float32), kwargs, "image")
            else:
                data = map_layer_data(stored.spec, plane, results.calibration, unit=stored.unit, extra=extra,
                                      layer_name=label, title=title, scan_shape=plane.shape)
            if stored.scale is not None:
                data[1]["scale"], data[1]["translate"] = stored.scale, stored.translate
            if stored.units is not None:
                data[1]["units"] = stored.units
            layers.append(data)
    _first_visible(layers)
    return layers


def _first_visible(layers: list[tuple]) -> None:
    """Of many maps opened at once, show the first real-space image (the base) and one map over
    it — the first content latent, else the COM magnitude, else the first map — and hide the
    others (all stay in the layer list)."""
    def role(item):
        return item[1].get("metadata", {}).get(ROLE_KEY, {})

    base = next((i for i, item in enumerate(layers) if spec_for(role(item).get("map", "")).kind == "image"), None)
    order = ("latents", "com_magnitude")
    top = next((i for name in order for i, item in enumerate(layers) if role(item).get("map") == name), None)
    if top is None:
        top = next((i for i in range(len(layers)) if i != base), None)
    for i, (_, kwargs, _) in enumerate(layers):
        kwargs["visible"] = i in (base, top)


def upsert_layer(viewer: Any, layer_data: tuple):
    """Add a layer, or update the layer of the same name in place (no piling up of copies)."""
    data, kwargs, layer_type = layer_data
    name = kwargs["name"]
    if name in viewer.layers and layer_kind(viewer.layers[name]) == layer_type:
        layer = unwrap(viewer.layers[name])
        layer.data = data
        for key in ("scale", "translate", "units", "colormap", "contrast_limits"):
            if key in kwargs:
                setattr(layer, key, kwargs[key])
        layer.metadata.update(kwargs.get("metadata", {}))
    else:
        layer = getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    show_colour_bar(layer)
    return layer


def show_colour_bar(layer: Any) -> None:
    """A map layer (a value per probe position with a colormap) shows its colour bar, with its
    unit (napari's layer colour-bar overlay)."""
    layer = unwrap(layer)
    role = getattr(layer, "metadata", {}).get(ROLE_KEY, {}) or {}
    if role.get("kind") != "map" or getattr(layer, "rgb", False) or not hasattr(layer, "colorbar"):
        return
    try:
        layer.colorbar.visible = True
    except Exception:  # noqa: BLE001 - an older napari without the overlay: nothing to show
        pass


def series_layer_data(series, name: str | None = None) -> tuple:
    """Layer data of an :class:`ImageSeries`: an image layer (frames, y, x) with the pixel size
    as scale and the series in its metadata (the Atoms tab works on it)."""
    pixel, unit = series.pixel_size, series.unit
    if series.pixel_size_angstrom is not None:  # one length unit for images, atoms and windows
        pixel, unit = series.pixel_size_angstrom, "Å"
    data = series.data
    kwargs: dict[str, Any] = {"name": name or series.name, "metadata": {SERIES_KEY: series}, "colormap": "gray"}
    if np.ndim(data) == 3:  # the frame slider says "frame", not an axis number
        kwargs["axis_labels"] = ("frame", "y", "x")
    if pixel is not None and unit:
        kwargs["scale"] = (1.0, pixel, pixel)
        kwargs["units"] = ("pixel", napari_unit(unit), napari_unit(unit))
        if series.frame_time:  # the frame axis in seconds when the file says how long a frame takes
            kwargs["scale"] = (float(series.frame_time), pixel, pixel)
            kwargs["units"] = ("second", napari_unit(unit), napari_unit(unit))
    return (data, kwargs, "image")
