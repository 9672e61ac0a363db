"""Readers: every supported file becomes a lazy :class:`~napari_4dstem_rvae.dataset.Dataset4D`.

One module per family of formats:

- :mod:`.detect` — :func:`detect_format`, the one place that decides which reader handles a path;
- :mod:`.hdf5` — HDF5: py4DSTEM/emdfile EMD 1.0, EMD 0.x, any 4D dataset chosen by path;
  :mod:`.emd_writer` — the EMD 1.0 writer beside it;
- :mod:`.arrays` — NumPy ``.npy`` (memory-mapped) and zarr stores;
- :mod:`.raw` — raw binary frames with a user-given layout;
- :mod:`.detectors` — Merlin, blockfile, EMPAD, DM, Velox, HyperSpy through RosettaSciIO
  (optional, GPL, imported only when such a file is read);
- :mod:`.common` — :class:`ReadError` (the one error type: one sentence naming the file and
  the reason) and what every reader shares;
- :mod:`.dispatch` — :func:`read`, the entry point.

Nothing is read beyond headers and metadata when a file is opened: the data become a dask
array whose chunks are read on demand.
"""

from __future__ import annotations

from .arrays import read_npy, read_zarr
from .common import MemmapSource, ReadError
from .detect import (
    HDF5_EXTENSIONS,
    RAW_EXTENSIONS,
    RAW_OPTIONS,
    RSCIIO_EXTENSIONS,
    SUPPORTED_EXTENSIONS,
    detect_format,
)
from .detectors import read_rsciio
from .dispatch import list_datasets, read
from .emd_writer import save_dataset
from .hdf5 import HDF5Source, TransposedSource, read_hdf5
from .raw import read_raw

__all__ = [
    "HDF5Source", "HDF5_EXTENSIONS", "MemmapSource", "RAW_EXTENSIONS", "RAW_OPTIONS", "RSCIIO_EXTENSIONS",
    "ReadError", "SUPPORTED_EXTENSIONS", "TransposedSource", "detect_format", "list_datasets", "read",
    "read_hdf5", "read_npy", "read_raw", "read_rsciio", "read_zarr", "save_dataset",
]
