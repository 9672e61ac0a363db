"""Readers of image series ``(frames, y, x)`` and single images (one frame): TIFF stacks
(tifffile: ImageJ and OME pixel sizes, frame interval), ``.npy``, HDF5/EMD, zarr, and DM3/DM4,
Velox ``.emd`` and HyperSpy files through RosettaSciIO. A 2D image is a series of one frame.

Calibration by hand (``pixel_size``, ``unit``, ``frame_time``) overrides the file's and is
recorded in the provenance.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..series import ImageSeries
from ..units import length_unit
from .common import ReadError, positive, text

SERIES_EXTENSIONS = (".tif", ".tiff", ".npy", ".h5", ".hdf5", ".emd", ".dm3", ".dm4", ".hspy", ".zarr")


def read_series(path: str | os.PathLike, *, dataset: str | None = None, pixel_size: float | None = None,
                unit: str | None = None, frame_time: float | None = None) -> ImageSeries:
    """Open an image series (see the module docstring). Raises :class:`ReadError` in one
    sentence naming the file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ReadError(f"{path}: no such file or directory")
    ext = Path(path).suffix.lower()
    try:
        if ext in (".tif", ".tiff"):
            series = _read_tiff(path)
        elif ext == ".npy":
            series = _read_npy(path)
        elif ext in (".h5", ".hdf5", ".hdf") or (ext == ".emd" and not _velox(path)):
            series = _read_hdf5(path, dataset)
        elif ext == ".zarr" or os.path.isdir(path):
            series = _read_zarr(path, dataset)
        elif ext in (".dm3", ".dm4", ".emd", ".hspy"):
            series = _read_rsciio(path)
        else:
            raise ReadError(f"{path}: unknown image-series type {ext or '(no extension)'!r}; expected one of "
                            f"{', '.join(SERIES_EXTENSIONS)}")
    except ReadError:
        raise
    except ValueError as exc:  # ImageSeries' own checks
        raise ReadError(f"{path}: {exc}") from exc
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200]
        raise ReadError(f"{path}: could not be read as an image series ({type(exc).__name__}: {reason})") from exc
    overrides = {k: v for k, v in (("pixel_size", pixel_size), ("unit", unit), ("frame_time", frame_time))
                 if v is not None}
    if pixel_size is not None and unit is None and series.unit is None:
        overrides["unit"] = "Å"  # a pixel size given by hand without a unit is in Å
    if overrides:
        before = {k: getattr(series, k) for k in overrides}
        try:
            series = series.replace(**overrides)
        except ValueError as exc:
            raise ValueError(f"{path}: the calibration given is not valid: {exc}") from None
        series.provenance = series.provenance + ({"step": "calibration", "overridden": sorted(overrides),
                                                  "from_file": before},)
    return series


def _check_frames(path: str, shapes: list[tuple[int, ...]]) -> None:
    first = shapes[0]
    for i, shape in enumerate(shapes):
        if shape != first:
            raise ReadError(f"{path}: frames of different sizes: frame 0 is {first[0]}×{first[1]} px, frame {i} "
                            f"is {shape[0]}×{shape[1]} px; expected one size (crop or split the series)")


def _read_tiff(path: str) -> ImageSeries:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        pages = tif.pages
        if len(pages) == 0:
            raise ReadError(f"{path}: the TIFF holds no image")
        shapes = [tuple(int(s) for s in p.shape[-2:]) for p in pages] if len(pages) < 20000 else \
            [tuple(pages[0].shape[-2:])]
        _check_frames(path, shapes)
        data = tif.asarray()
        pixel_size, unit, frame_time = None, None, None
        ij = tif.imagej_metadata or {}
        page = pages[0]
        xres = page.tags.get("XResolution")
        if xres is not None:
            num, den = xres.value
            per_unit = num / den if den else 0
            if per_unit > 0:
                pixel_size = 1.0 / per_unit
        if ij:
            unit = length_unit(str(ij.get("unit", "")).replace("\\u00C5", "Å").replace("micron", "µm"))
            frame_time = positive(ij.get("finterval"))
        elif tif.ome_metadata:
            import re

            meta = tif.ome_metadata
            size = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', meta)
            size_unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', meta)
            pixel_size = positive(size.group(1)) if size else pixel_size
            unit = length_unit(size_unit.group(1)) if size_unit else "µm"
        else:
            res_unit = page.tags.get("ResolutionUnit")
            unit = {3: "cm", 2: None}.get(int(res_unit.value) if res_unit is not None else 1)
            if unit == "cm":
                pixel_size, unit = (pixel_size * 1e4, "µm") if pixel_size else (None, None)
    data = np.asarray(data)
    if data.ndim == 4 and data.shape[-1] in (3, 4):
        raise ReadError(f"{path}: holds colour (RGB) images; expected greyscale intensities")
    if data.ndim > 3:
        data = data.reshape(-1, *data.shape[-2:])
    if unit is None:
        pixel_size = None
    return ImageSeries(data, pixel_size, unit, frame_time, source=path, metadata={"format": "tiff"})


def _read_npy(path: str) -> ImageSeries:
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:160]
        raise ReadError(f"{path}: not a readable .npy array ({type(exc).__name__}: {reason})") from exc
    if data.ndim not in (2, 3):
        raise ReadError(f"{path}: expected an image (y, x) or a series (frames, y, x), found shape {data.shape}")
    return ImageSeries(data, source=path, metadata={"format": "npy"})


def _velox(path: str) -> bool:
    from .detect import _emd_flavour

    return _emd_flavour(Path(path)) == "rsciio:emd"


def _series_arrays(items: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return [(n, a) for n, a in items if len(a.shape) in (2, 3) and np.dtype(a.dtype).kind in "uif"
            and min(a.shape[-2:]) >= 8]


def _read_hdf5(path: str, dataset: str | None) -> ImageSeries:
    import h5py

    from .hdf5 import check_stored_chunks

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ReadError(f"{path}: not a readable HDF5 file ({' '.join(str(exc).split())[:120]})") from exc
    with f:
        if dataset is not None:
            if dataset not in f or not isinstance(f[dataset], h5py.Dataset):
                raise ReadError(f"{path}: no dataset {dataset!r}")
            name, dset = dataset, f[dataset]
        else:
            items: list[tuple[str, Any]] = []
            f.visititems(lambda n, o: items.append((n, o)) if isinstance(o, h5py.Dataset) else None)
            found = _series_arrays(items)
            if not found:
                raise ReadError(f"{path}: holds no image or image series (no 2D/3D numeric dataset)")
            name, dset = max(found, key=lambda item: int(np.prod(item[1].shape)))
        if dset.ndim not in (2, 3):
            raise ReadError(f"{path}: dataset {name!r} has shape {dset.shape}; expected (y, x) or (frames, y, x)")
        check_stored_chunks(dset, path)
        data = dset[()]
        pixel_size, unit = None, None
        parent = dset.parent
        dims = [parent.get(f"dim{i}") for i in range(1, dset.ndim + 1)]
        last = dims[-1]
        if last is not None and len(last) > 1:  # EMD dim vectors: the pixel size and unit of x
            pixel_size = positive(float(last[1]) - float(last[0]))
            unit = length_unit(text(last.attrs.get("units", "")))
        for key in ("pixel_size", "scale"):
            if pixel_size is None and key in dset.attrs:
                pixel_size = positive(np.ravel(dset.attrs[key])[-1])
                unit = length_unit(text(dset.attrs.get("unit", dset.attrs.get("units", "")))) or None
    if unit is None:
        pixel_size = None
    return ImageSeries(np.asarray(data), pixel_size, unit, source=path, metadata={"format": "hdf5", "dataset": name})


def _read_zarr(path: str, dataset: str | None) -> ImageSeries:
    import zarr

    from .arrays import zarr_arrays

    root = zarr.open(path, mode="r")
    if hasattr(root, "shape"):
        found = [("/", root)]
    else:
        found = _series_arrays(list(zarr_arrays(root)))
        if dataset is not None:
            found = [(n, a) for n, a in found if n.strip("/") == dataset.strip("/")]
    if not found:
        raise ReadError(f"{path}: holds no image or image series (no 2D/3D numeric array)")
    name, arr = max(found, key=lambda item: int(np.prod(item[1].shape)))
    if len(arr.shape) not in (2, 3):
        raise ReadError(f"{path}: array {name!r} has shape {arr.shape}; expected (y, x) or (frames, y, x)")
    return ImageSeries(np.asarray(arr[...]), source=path, metadata={"format": "zarr", "dataset": name})


def _read_rsciio(path: str) -> ImageSeries:
    import importlib

    ext = Path(path).suffix.lower()
    plugin = {".dm3": "digitalmicrograph", ".dm4": "digitalmicrograph", ".emd": "emd", ".hspy": "hspy"}[ext]
    try:
        module = importlib.import_module(f"rsciio.{plugin}")
    except ImportError as exc:
        raise ReadError(f"{path}: reading this format needs RosettaSciIO; install it with "
                        "`pip install napari-4dstem-rvae[formats]`") from exc
    signals = module.file_reader(path)
    images = [s for s in signals if getattr(s.get("data"), "ndim", 0) in (2, 3)
              and np.dtype(s["data"].dtype).kind in "uif"]
    if not images:
        raise ReadError(f"{path}: holds no image or image series")
    signal = max(images, key=lambda s: int(np.prod(s["data"].shape)))
    axes = sorted(signal.get("axes", []), key=lambda a: a.get("index_in_array", 0))
    pixel_size, unit, frame_time = None, None, None
    if axes:
        x = axes[-1]
        unit = length_unit(x.get("units"))
        pixel_size = positive(x.get("scale")) if unit else None
        if len(axes) == 3 and str(axes[0].get("units", "")).strip() in ("s", "sec", "seconds"):
            frame_time = positive(axes[0].get("scale"))
    return ImageSeries(np.asarray(signal["data"]), pixel_size, unit, frame_time, source=path,
                       metadata={"format": f"rsciio:{plugin}"})
