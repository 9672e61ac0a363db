"""The reduced store of a run: binned patterns written once to a chunked zarr store beside the
results, so that training and encoding read them instead of re-reading and re-binning the raw
file at every step (:class:`napari_4dstem_rvae.workflows.STEMRun`); removed with the run's
checkpoint once the results are written."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..dataset import Dataset4D


def write_reduced_store(dataset: Dataset4D, store: Any) -> tuple[Dataset4D, bool]:
    """``dataset`` (e.g. lazily binned) written once to the zarr store ``store`` — chunks of
    whole patterns and scan rows, under a temporary name renamed when complete — and returned
    read lazily from it (same calibration and metadata), with whether an existing store was
    reused: a complete store of the same shape, dtype and source from an earlier,
    interrupted run is; anything else at ``store`` is refused. Remove it when done
    (:func:`remove_reduced_store`)."""
    import os
    import shutil

    import dask.array as da
    import zarr

    from ..dataset import default_chunks

    store = os.fspath(store)
    signature = {"shape": list(dataset.shape), "dtype": str(np.dtype(dataset.dtype)),
                 "source": os.fspath(dataset.source) if dataset.source else None,
                 "napari_4dstem_rvae": "reduced patterns"}
    if os.path.exists(store):
        try:
            found = dict(zarr.open_array(store, mode="r").attrs)
        except Exception:  # noqa: BLE001 - whatever it is, it is not our store
            found = {}
        if found.get("napari_4dstem_rvae") != "reduced patterns":
            raise ValueError(f"{store} exists and is not a store of reduced patterns written by this "
                             "package; move it or choose another output")
        if found == signature:
            return dataclasses.replace(dataset, data=da.from_zarr(store), frame_source=None), True
        shutil.rmtree(store)  # our own store of another run: replaced
    chunks = default_chunks(tuple(dataset.shape), dataset.dtype)
    lazy = dataset.data if dataset.is_lazy else da.from_array(np.asarray(dataset.data), chunks=chunks)
    lazy = lazy.rechunk(chunks)
    partial = store + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    target = zarr.create_array(partial, shape=lazy.shape, chunks=chunks, dtype=lazy.dtype)
    da.store(lazy, target, lock=False)
    target.attrs.update(signature)
    os.replace(partial, store)
    return dataclasses.replace(dataset, data=da.from_zarr(store), frame_source=None), False


def remove_reduced_store(store: Any) -> None:
    """Delete a store written by :func:`write_reduced_store` (and a partial one), if any."""
    import os
    import shutil

    for path in (os.fspath(store), os.fspath(store) + ".partial"):
        shutil.rmtree(path, ignore_errors=True)
