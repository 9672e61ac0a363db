"""napari reader contribution, by npe2's rules: :func:`napari_get_reader` returns a reader only
for a file this plugin reads — a 4D-STEM data set, an image series with a calibration, or a
results file of this plugin — and ``None`` for anything else (a plain TIFF image, a foreign HDF5
file, a 2D ``.npy``), so that napari can offer another reader. Deciding reads headers only.

The reader function returns layer data and does nothing else (no dock opened, no layer added
behind napari's back, no thread started): a 4D data set opens as its real-space image (ADF when
calibrated, else the total intensity) with the scan calibration as scale and units, computed at
once up to ``SYNC_LIMIT_BYTES`` and otherwise as a lazy image that napari computes when it draws
it; a series as an image stack with its pixel size; a results file as its maps (or a Points layer
of atoms). A file that fails to read raises an error whose sentence napari shows.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

SYNC_LIMIT_BYTES = 256 * 2**20


def napari_get_reader(path: str | list[str]) -> Callable | None:
    """A reader for ``path`` when this plugin reads it, else ``None`` (module docstring)."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    path = os.fspath(path)
    try:
        kind = what_it_holds(path)
    except Exception:  # noqa: BLE001 - a header we cannot read is a file we do not claim
        return None
    return None if kind is None else _READERS[kind]


def what_it_holds(path: str) -> str | None:
    """``"results"``, ``"atoms"``, ``"4d"``, ``"series"`` or ``None``, from headers only."""
    from ..results import is_atom_results, is_results_file
    from ..workflows import detect_format, list_datasets

    lower = path.lower()
    if lower.endswith((".tif", ".tiff")):
        return "series" if _calibrated_or_stack_tiff(path) else None
    fmt = detect_format(path)
    if fmt is None or fmt == "raw":
        return None  # raw binary needs its layout: the Open tab asks for it
    if fmt == "hdf5":
        if is_results_file(path):
            return "atoms" if is_atom_results(path) else "results"
        found = {len(shape) for _, shape in list_datasets(path, (3, 4))}
        return "4d" if 4 in found else ("series" if 3 in found else None)
    if fmt == "zarr":
        found = {len(shape) for _, shape in list_datasets(path, (3, 4))}
        return "4d" if 4 in found else ("series" if 3 in found else None)
    if fmt == "npy":
        shape = _npy_shape(path)
        return {4: "4d", 3: "series"}.get(len(shape))
    return "4d"  # detector formats (Merlin, blockfile, EMPAD, DM, Velox EMD, HyperSpy)


def _npy_shape(path: str) -> tuple[int, ...]:
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        shape, _, _ = (np.lib.format.read_array_header_1_0(fh) if version == (1, 0)
                       else np.lib.format.read_array_header_2_0(fh))
    return tuple(shape)


def _calibrated_or_stack_tiff(path: str) -> bool:
    """A TIFF this plugin should open: a stack of frames, or an image with a pixel size in a
    length unit (ImageJ or OME metadata); a plain 2D picture is left to other readers."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        if len(series.shape) >= 3 and not (len(series.shape) == 3 and series.shape[-1] in (3, 4)):
            return True
        imagej = tif.imagej_metadata or {}
        if str(imagej.get("unit", "")).strip() not in ("", "pixel", "\\u00B5m", "inch"):
            return True
        if tif.is_ome:
            return "PhysicalSizeX" in (tif.ome_metadata or "")
    return False


def _read_4d(path: str | list[str]) -> list:
    from ..workflows import ReadError, read, read_series

    path = path[0] if isinstance(path, (list, tuple)) else path
    try:
        dataset = read(path)
    except ReadError:
        try:  # an image stack (3D) where a 4D data set was looked for: the Atoms tab's
            return [_series_layer(read_series(path))]
        except Exception:  # noqa: BLE001 - the 4D reader's sentence says more
            pass
        raise
    return layer_data_for(dataset)


def _read_series(path: str | list[str]) -> list:
    from ..workflows import read_series

    path = path[0] if isinstance(path, (list, tuple)) else path
    return [_series_layer(read_series(path))]


def _series_layer(series: Any) -> tuple:
    from .layers import series_layer_data

    return series_layer_data(series)


def _read_results(path: str | list[str]) -> list:
    """The maps of a results file as layers named ``"<file stem> <map title>"``."""
    from ..results import read_results
    from .layers import stored_map_layers

    path = path[0] if isinstance(path, (list, tuple)) else path
    layers = stored_map_layers(read_results(path), prefix=os.path.splitext(os.path.basename(path))[0])
    if not layers:
        raise ValueError(f"{path}: the results file holds no map over the scan")
    return layers


def _read_atoms(path: str | list[str]) -> list:
    """The per-atom table of a results file as a Points layer (frame, y, x) with its features,
    scaled like the series it came from."""
    from ..results import read_atom_results
    from ..results.colours import feature_colours
    from .atoms_widget import atom_features

    path = path[0] if isinstance(path, (list, tuple)) else path
    atoms = read_atom_results(path)
    columns = atoms.columns
    coords = np.column_stack([columns["frame"], columns["y"], columns["x"]]).astype(np.float64)
    pixel = atoms.pixel_size_angstrom
    features = atom_features(columns, atoms.class_names)
    kwargs = {"name": f"{os.path.splitext(os.path.basename(path))[0]} atoms", "features": features,
              "size": 0.9 / pixel if pixel else 6.0, "border_width": 0}
    if pixel:
        kwargs.update(scale=(1.0, pixel, pixel), units=("pixel", "angstrom", "angstrom"),
                      axis_labels=("frame", "y", "x"))
    angle = features["angle mod 120°"].to_numpy() if "angle mod 120°" in features else np.full(len(coords), np.nan)
    kwargs["face_color"] = feature_colours(angle, "angle mod 120°")
    return [(coords, kwargs, "points")]


_READERS = {"4d": _read_4d, "series": _read_series, "results": _read_results, "atoms": _read_atoms}


def layer_data_for(dataset: Any) -> list:
    """Layer data of a freshly opened data set (the reader's and the Open tab's): its
    real-space image, computed now when small, else a lazy image napari computes when drawn."""
    from ..workflows import default_image_detector
    from .layers import lazy_virtual_image, real_space_layer_data, virtual_image

    label, mask = default_image_detector(dataset.calibration, dataset.det_shape)
    if dataset.nbytes <= SYNC_LIMIT_BYTES:
        return [real_space_layer_data(dataset, virtual_image(dataset, mask), label)]
    return [real_space_layer_data(dataset, lazy_virtual_image(dataset, mask), label, {"lazy": True})]
