"""The public entry point: :func:`read` opens any supported file lazily; :func:`list_datasets`
lists the 4D datasets of an HDF5 file or zarr store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..dataset import Calibration, Dataset4D
from .arrays import read_npy, read_zarr, zarr_datasets
from .common import ReadError
from .detect import SUPPORTED_EXTENSIONS, detect_format
from .detectors import read_rsciio
from .hdf5 import hdf5_datasets, read_hdf5
from .raw import read_raw


def read(path: str | os.PathLike, **options: Any) -> Dataset4D:
    """Open a 4D-STEM file lazily.

    Parameters
    ----------
    path
        File or directory (zarr store).
    dataset
        HDF5/zarr: path of the 4D dataset inside the file (default: the EMD/py4DSTEM
        datacube, else the largest 4D dataset; a warning lists the others).
    scan_shape
        ``(scan_y, scan_x)``: required for raw files; for other formats, reshapes a flat
        stack of patterns ``(n, det_y, det_x)`` (e.g. a Merlin file without scan size).
    det_shape, dtype, file_header_bytes, frame_header_bytes, frame_footer_bytes, byteorder
        Raw binary layout (see :func:`read_raw`).
    chunks
        Dask chunks of the returned array (default: whole patterns, ~64 MB chunks).
    fill_missing
        HDF5/zarr: read chunks that are not stored as 0 instead of refusing the file (an
        interrupted writer leaves them out).
    calibration
        A :class:`Calibration` or a dict of its fields overriding what the file says.
    scan_step, scan_unit, det_pixel_size, det_unit, energy_kev, semiangle_mrad, det_origin, scan_origin
        Single calibration fields overriding the file's (e.g. for files whose calibration is in
        no known layout); ``None`` keeps the file's value. Recorded in the provenance.

    Raises
    ------
    ReadError
        One sentence naming the file and why it cannot be read.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ReadError(f"{path}: no such file or directory")
    fmt = detect_format(path, **options)
    if fmt is None:
        raise ReadError(
            f"{path}: unknown file type {Path(path).suffix or '(no extension)'!r}; expected one of "
            f"{', '.join(sorted(set(SUPPORTED_EXTENSIONS)))} or a zarr directory "
            "(for raw binary give scan_shape, det_shape and dtype)"
        )
    override = _calibration_override(path, options)
    options.pop("format", None)
    if fmt in ("npy", "raw"):
        options.pop("fill_missing", None)  # uncompressed files have no chunks to miss
    if fmt == "hdf5":
        ds = read_hdf5(path, **options)
    elif fmt == "npy":
        ds = read_npy(path, **options)
    elif fmt == "zarr":
        ds = read_zarr(path, **options)
    elif fmt == "raw":
        ds = read_raw(path, **options)
    elif fmt.startswith("rsciio:"):
        ds = read_rsciio(path, plugin=fmt.split(":", 1)[1], **options)
    else:
        raise ReadError(f"{path}: unknown format {fmt!r}")
    if override:
        from_file = ds.calibration
        try:
            ds.calibration = from_file.replace(**override)
        except ValueError as exc:
            raise ValueError(f"{path}: the calibration given is not valid: {exc}") from None
        ds.provenance = ds.provenance + ({"step": "calibration", "overridden": sorted(override),
                                          "calibration": ds.calibration.to_dict(),
                                          "from_file": from_file.to_dict()},)
    return ds


def _calibration_override(path: str, options: dict[str, Any]) -> dict[str, Any]:
    """The calibration fields given to :func:`read` (``calibration=`` and single fields),
    removed from ``options``; values that are ``None`` are not given."""
    import dataclasses

    given: dict[str, Any] = {}
    whole = options.pop("calibration", None)
    if whole is not None:
        given.update(dataclasses.asdict(whole) if isinstance(whole, Calibration) else dict(whole))
    for name in CALIBRATION_FIELDS:
        if name in options:
            given[name] = options.pop(name)
    unknown = sorted(set(given) - set(CALIBRATION_FIELDS))
    if unknown:
        raise ValueError(f"{path}: unknown calibration fields {unknown}; known: {list(CALIBRATION_FIELDS)}")
    given = {k: v for k, v in given.items() if v is not None}
    for key in ("det_origin", "scan_origin", "scan_step"):
        if key in given and not isinstance(given[key], (int, float)):
            given[key] = tuple(float(v) for v in given[key])
    return given


#: Calibration fields that ``read`` accepts as keywords.
CALIBRATION_FIELDS = ("scan_step", "scan_unit", "det_pixel_size", "det_unit", "energy_kev", "semiangle_mrad",
                      "det_origin", "scan_origin")


def list_datasets(path: str | os.PathLike, ndim: int | tuple[int, ...] = 4) -> list[tuple[str, tuple]]:
    """``(name, shape)`` of the datasets with ``ndim`` axes in an HDF5 file or zarr store."""
    path = os.fspath(path)
    wanted = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if detect_format(path) == "zarr":
        return zarr_datasets(path, wanted)
    return hdf5_datasets(path, wanted)
