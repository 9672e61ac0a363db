"""What the processing modules ask of an array they are handed: the array inside a
:class:`~napari_4dstem_rvae.dataset.Dataset4D`, and whether it is a (lazy) dask array.

Nothing here imports dask.
"""

from __future__ import annotations

from typing import Any


def as_array(data: Any) -> Any:
    """The array inside a Dataset4D, or the argument itself."""
    return data.data if hasattr(data, "calibration") and hasattr(data, "data") else data


def is_dask(data: Any) -> bool:
    """True for a dask array (or any dask collection), without importing dask."""
    return type(data).__module__.split(".")[0] == "dask"
