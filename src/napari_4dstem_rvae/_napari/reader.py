"""napari reader contribution: a 4D-STEM file opens as a real-space image over the scan.

Small data sets (< ``SYNC_LIMIT_BYTES``) are reduced at once. Larger ones open at once
with an empty image that a napari thread worker fills block by block, with a progress
bar, so the UI never blocks. The diffraction browser is docked to show the pattern under
the cursor; the 4D array itself is never loaded for display.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

SYNC_LIMIT_BYTES = 256 * 2**20
_NOTHING = [(None,)]  # napari's "read, but no layer to add" sentinel


def napari_get_reader(path: str | list[str]) -> Callable | None:
    """Return a reader for ``path`` if it is a 4D-STEM format this plugin reads, else None."""
    from ..workflows import detect_format

    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    path = os.fspath(path)
    if path.lower().endswith((".tif", ".tiff")):
        return _series_reader  # image series (atom-resolved movies), with their pixel size
    fmt = detect_format(path)
    if fmt is None or fmt == "raw":
        return None  # raw binary needs its layout: the "Open 4D-STEM file" widget asks for it
    return _reader


def _series_reader(path: str | list[str]) -> list:
    """An image series (frames, y, x) as an image layer with its pixel size, for the Atoms tab."""
    from ..workflows import ReadError
    from ..workflows import read_series
    from .layers import series_layer_data
    from .workers import warnings_as_notifications

    if isinstance(path, (list, tuple)):
        path = path[0]
    try:
        series = warnings_as_notifications(read_series, path)
    except (ReadError, ValueError) as exc:
        _notify_error(str(exc))
        return _NOTHING
    except Exception as exc:
        _notify_error(f"{path}: could not be read ({type(exc).__name__}: {exc})")
        return _NOTHING
    return [series_layer_data(series)]


def _reader(path: str | list[str]) -> list:
    from ..workflows import ReadError, read
    from ..results import is_results_file
    from .workers import warnings_as_notifications

    if isinstance(path, (list, tuple)):
        path = path[0]
    if str(path).lower().endswith((".h5", ".hdf5")) and is_results_file(path):
        from ..results import is_atom_results

        if is_atom_results(path):
            return atom_results_layers(path)
        return results_layers(path)  # maps saved by this plugin: restore them as layers
    try:
        dataset = warnings_as_notifications(read, path)
    except ReadError as exc:
        series = _as_series(path)  # an image or image series (2D/3D) rather than 4D-STEM
        if series is not None:
            shape = "×".join(str(v) for v in series[0][0].shape)
            _notify_info(f"{path}: no 4D dataset ({exc}); opened as an image series of {shape} px for the Atoms "
                         "tab")
            return series
        _notify_error(str(exc))
        return _NOTHING
    except Exception as exc:  # a reader library failed in an unexpected way
        _notify_error(f"{path}: could not be read ({type(exc).__name__}: {exc})")
        return _NOTHING
    return layer_data_for(dataset)


def _as_series(path: str) -> list | None:
    from ..workflows import read_series
    from .layers import series_layer_data

    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            series = read_series(path)
    except Exception:
        return None
    return [series_layer_data(series)]


def atom_results_layers(path: str) -> list:
    """The per-atom table of a results file as a Points layer (frame, y, x) with its features,
    scaled like the series it came from."""
    from ..results import read_atom_results
    from ..results.colours import feature_colours
    from .atoms_widget import atom_features

    try:
        atoms = read_atom_results(path)
    except ValueError as exc:
        _notify_error(str(exc))
        return _NOTHING
    columns = atoms.columns
    coords = np.column_stack([columns["frame"], columns["y"], columns["x"]]).astype(np.float64)
    pixel = atoms.pixel_size_angstrom
    features = atom_features(columns, atoms.class_names)
    kwargs = {"name": f"{os.path.splitext(os.path.basename(path))[0]} atoms", "features": features,
              "size": 0.9 / pixel if pixel else 6.0, "border_width": 0}
    if pixel:
        kwargs.update(scale=(1.0, pixel, pixel), units=("pixel", "angstrom", "angstrom"))
    angle = features["angle mod 120°"].to_numpy() if "angle mod 120°" in features else np.full(len(coords), np.nan)
    kwargs["face_color"] = feature_colours(angle, "angle mod 120°")
    return [(coords, kwargs, "points")]


def results_layers(path: str, viewer=None) -> list:
    """The maps of a results file as layers named ``"<file stem> <map title>"``.

    With a viewer at hand (the current one), the layers are added or updated in place by name
    there — opening the same file twice does not pile up copies — and napari is told there is
    nothing more to add."""
    from ..results import read_results
    from .layers import stored_map_layers, upsert_layer

    try:
        results = read_results(path)
    except ValueError as exc:
        _notify_error(str(exc))
        return _NOTHING
    layers = stored_map_layers(results, prefix=os.path.splitext(os.path.basename(path))[0])
    if not layers:
        _notify_error(f"{path}: the results file holds no map over the scan")
        return _NOTHING
    if viewer is None:
        try:
            import napari

            viewer = napari.current_viewer()
        except Exception:
            viewer = None
    if viewer is None:
        return layers
    for item in layers:
        upsert_layer(viewer, item)
    return _NOTHING


def layer_data_for(dataset, viewer=None) -> list:
    """Layer data for a freshly opened data set (used by the reader and the open widget)."""
    from ..workflows import default_image_detector
    from .layers import real_space_layer_data, virtual_image

    label, mask = default_image_detector(dataset.calibration, dataset.det_shape)
    if dataset.nbytes <= SYNC_LIMIT_BYTES:
        try:
            image = virtual_image(dataset, mask)
        except Exception as exc:
            _notify_error(f"{dataset.source}: reading the data failed ({exc})")
            return _NOTHING
        data = [real_space_layer_data(dataset, image, label)]
        _dock_browser_later(viewer)
        return data
    image = np.zeros(dataset.scan_shape, np.float32)
    data = real_space_layer_data(dataset, image, label, {"computing": True})
    _start_background_image(dataset, mask, viewer)
    _dock_browser_later(viewer)
    return [data]


def _start_background_image(dataset, mask, viewer=None) -> Any:
    """Fill the placeholder layer of ``dataset`` in a thread worker, block by block."""
    try:
        from .workers import start_worker
    except Exception:  # no Qt: nothing to update in the background
        return None
    from .layers import DATASET_KEY, ROLE_KEY, iter_virtual_image

    chunks = getattr(dataset.data, "chunks", None)
    n_blocks = len(chunks[0]) * len(chunks[1]) if dataset.is_lazy and chunks else 0  # 0: indeterminate

    def target_layers():
        import napari

        v = viewer or napari.current_viewer()
        if v is None:
            return []
        return [layer for layer in v.layers if layer.metadata.get(DATASET_KEY) is dataset
                and layer.metadata.get(ROLE_KEY, {}).get("computing")]

    def on_yield(item):
        (rows, cols), values = item
        for layer in target_layers():
            layer.data[rows, cols] = values
            finite = layer.data[: rows.stop]
            if np.ptp(finite) > 0:
                layer.contrast_limits = (float(finite.min()), float(finite.max()))
            layer.refresh()

    def on_done():
        for layer in target_layers():
            layer.metadata[ROLE_KEY]["computing"] = False

    def on_error(exc):
        _notify_error(f"{dataset.source}: computing the real-space image failed ({exc})")

    return start_worker(lambda: (yield from iter_virtual_image(dataset, mask)), on_yielded=on_yield,
                        on_finished=on_done, on_error=on_error,
                        progress={"total": n_blocks, "desc": f"Reading {dataset.name}"})


def _dock_browser_later(viewer=None) -> None:
    """Dock the analysis widget (diffraction browser and stages; once) after napari has added
    the new layers."""
    try:
        from qtpy.QtCore import QTimer
    except Exception:
        return

    def dock():
        import napari

        v = viewer or napari.current_viewer()
        if v is None or getattr(v, "window", None) is None:
            return
        try:
            v.window.add_plugin_dock_widget("napari-4dstem-rvae", "4D-STEM analysis")
        except Exception:
            pass  # the dock is optional for reading

    QTimer.singleShot(0, dock)


def _notify_info(message: str) -> None:
    try:
        from napari.utils.notifications import show_info

        show_info(message)
    except Exception:  # pragma: no cover - napari missing
        pass


def _notify_error(message: str) -> None:
    try:
        from napari.utils.notifications import show_error

        show_error(message)
    except Exception:  # pragma: no cover - napari missing
        import warnings

        warnings.warn(message, stacklevel=2)
