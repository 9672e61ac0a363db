"""The EMD 1.0 writer, beside its reader (:mod:`.hdf5`): a data set written here reopens with
:func:`napari_4dstem_rvae.read`, py4DSTEM/emdfile and any HDF5 tool."""

from __future__ import annotations

import json
import os

from typing import Any

import numpy as np

from ..atomic import atomic_path
from ..dataset import Dataset4D
from ..units import emd_unit
from .hdf5 import HDF5Source


def save_dataset(dataset: Dataset4D, path: str | os.PathLike, chunks_rows: int | None = None,
                 progress: Any = None) -> str:
    """Write a data set as an EMD 1.0 HDF5 file, streamed block by block from lazy data, under a
    temporary name renamed when complete; ``progress(done, total)`` after each block of rows.

    Layout: root attrs ``emd_group_type="file"``, ``version_major=1``, ``version_minor=0``;
    ``/datacube_root`` (``emd_group_type="root"``) / ``datacube`` (``emd_group_type="array"``)
    with ``data`` (scan_y, scan_x, det_y, det_x) and ``dim0..dim3`` (name, units); our full
    calibration as JSON in the ``calibration_json`` attribute of the datacube group.
    """
    import h5py

    path = os.fspath(path)
    HDF5Source.close_all(path)
    ny, nx, ky, kx = dataset.shape
    cal = dataset.calibration
    dtype = dataset.dtype
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update({"emd_group_type": "file", "version_major": 1, "version_minor": 0,
                        "authoring_program": "napari-4dstem-rvae"})
        root = f.create_group("datacube_root")
        root.attrs.update({"emd_group_type": "root", "python_class": "Root"})
        group = root.create_group("datacube")
        group.attrs.update({"emd_group_type": "array", "python_class": "DataCube",
                            "calibration_json": json.dumps(cal.to_dict()),
                            "provenance_json": json.dumps(list(dataset.provenance), default=str)})
        data = group.create_dataset("data", shape=dataset.shape, dtype=dtype,
                                    chunks=(1, min(nx, max(1, 2**22 // max(ky * kx * dtype.itemsize, 1))), ky, kx))
        rows = chunks_rows or max(1, (256 * 2**20) // max(nx * ky * kx * dtype.itemsize, 1))
        starts = range(0, ny, rows)
        for done, start in enumerate(starts, 1):
            block = dataset.data[start:start + rows]
            data[start:start + rows] = np.asarray(block.compute() if hasattr(block, "compute") else block)
            if progress is not None:
                progress(done, len(starts))
        sy, sx = cal.scan_step_yx
        scan_unit = emd_unit(cal.scan_unit) if cal.scan_step else "pixels"
        det_unit = emd_unit(cal.det_unit, detector=True)
        det_step = cal.det_pixel_size or 1.0
        for i, (name, n, step, unit) in enumerate((("Rx", ny, sy, scan_unit), ("Ry", nx, sx, scan_unit),
                                                   ("Qx", ky, det_step, det_unit), ("Qy", kx, det_step, det_unit))):
            dim = group.create_dataset(f"dim{i}", data=np.arange(n) * step)
            dim.attrs.update({"name": name, "units": unit})
    return path
