"""What a run takes in and where its outputs go: a data set opened from a path, the results
and figure paths of ``--out``, the training region, the overview detectors."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..dataset import Dataset4D


def open_dataset(source: str | os.PathLike | Dataset4D, **read_options: Any) -> Dataset4D:
    """``source`` as a Dataset4D: a Dataset4D as is, a path read lazily with ``read_options``
    (``None`` values are ignored)."""
    if isinstance(source, Dataset4D):
        return source
    from ..io import read

    return read(source, **{k: v for k, v in read_options.items() if v is not None})


def output_paths(out: str | os.PathLike, stem: str, inputs: Any = ()) -> tuple[Path, Path]:
    """(results file, PNG) for ``out``: a folder (``out/<stem>.h5``, ``out/<stem>.png``) or a
    results file ``RESULTS.h5`` (the PNG beside it, ``RESULTS_overview.png``). An existing
    file that is not a results file name is refused, saying so when it is one of ``inputs``."""
    out = Path(out)
    if out.suffix.lower() in (".h5", ".hdf5"):
        return out, out.with_name(out.stem + "_overview.png")
    if out.exists() and not out.is_dir():
        for source in inputs:
            if source and os.path.exists(os.fspath(source)) and os.path.samefile(out, os.fspath(source)):
                raise ValueError(f"--out {out} is the input {os.fspath(source)}; choose another output so that "
                                 "the input is not overwritten")
        raise ValueError(f"--out {out} is an existing file, not a folder; give a folder or a results "
                         "file name ending in .h5 (the file is left untouched)")
    return out / f"{stem}.h5", out / f"{stem}.png"


def load_roi(roi: Any, scan_shape: tuple[int, int]) -> np.ndarray | None:
    """A training region as a boolean (scan_y, scan_x) mask: an array or a ``.npy`` file of one,
    checked by :func:`~napari_4dstem_rvae.dataset.scan_mask` (booleans or 0/1 only)."""
    from ..dataset import scan_mask

    if roi is None:
        return None
    what = "--roi"
    if not isinstance(roi, np.ndarray):
        what = f"--roi {os.fspath(roi)}"
        try:
            roi = np.load(os.fspath(roi), allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{what}: not a readable .npy mask ({exc})") from exc
    roi = scan_mask(roi, scan_shape, what)
    if not roi.any():
        raise ValueError(f"{what}: the mask selects no probe position")
    return roi


def overview_masks(dataset: Dataset4D) -> dict[str, np.ndarray]:
    """The detectors of the overview images: the total intensity (``"sum"``) and, when the
    calibration gives the bright-field disk, the default ADF."""
    from ..processing.virtual import default_image_detector

    masks = {"sum": np.ones(dataset.det_shape, np.float32)}
    name, mask = default_image_detector(dataset.calibration, dataset.det_shape)
    if name != "sum":
        masks[name] = mask
    return masks


def com_images(com: Any, dataset: Dataset4D) -> dict[str, np.ndarray] | None:
    """The overview images a COM pass already made (its virtual images of the overview
    detectors), or None when it did not make them all."""
    wanted = overview_masks(dataset)
    virtual = getattr(com, "virtual", {}) or {}
    if all(name in virtual for name in wanted):
        return {name: virtual[name] for name in wanted}
    return None


def prepared_data(ds: Dataset4D, factor: int, store: Path | None, mode: str, rank: int = 0) -> Iterator[Any]:
    """The binned data the rVAE reads (a generator of messages returning them): in memory when
    they fit, else (``mode`` ``"auto"``) or always (``"always"``) written once to the reduced
    ``store`` beside the results — under torchrun by rank 0 while the others wait."""
    from ..processing.chain import IN_MEMORY_LIMIT, in_memory, preprocess
    from ..rvae.parallel import world
    from .events import Message

    binned = preprocess(ds, bin_detector=factor) if factor > 1 else ds
    fits = not binned.is_lazy or binned.nbytes <= IN_MEMORY_LIMIT
    if store is None or mode == "never" or (mode == "auto" and fits):
        return in_memory(binned)
    from ..io.reduced import write_reduced_store

    if rank == 0:
        prepared, reused = write_reduced_store(binned, store)
        yield Message(f"reduced patterns: {'reusing' if reused else 'wrote'} {store}")
    if world()[1] > 1:
        import torch.distributed as dist

        dist.barrier()
        if rank:
            prepared, _ = write_reduced_store(binned, store)
    return prepared


def data_of_checkpoint(state: dict, dataset: Dataset4D, path: Any) -> tuple[Dataset4D, int | None]:
    """The data a checkpoint's model was trained on, made again from ``dataset``: the detector
    binned to the checkpoint's size, the mean pattern subtracted and the patterns pooled when
    the checkpoint's data were. Returns the data and the binning target (None: none)."""
    from ..processing.chain import prepare_for_rvae
    from ..processing.pooling import pool_patterns

    steps = {p.get("step"): p for p in state.get("provenance", []) if isinstance(p, dict)}
    subtract = "subtract_mean_pattern" in steps and "subtract_mean_pattern" not in \
        [p.get("step") for p in dataset.provenance]
    target = min(int(v) for v in state["det_shape"])
    binned = target if min(dataset.det_shape) > target else None
    prepared = prepare_for_rvae(dataset, binned, subtract_mean=subtract)
    if tuple(prepared.scan_shape) != tuple(state.get("scan_shape", prepared.scan_shape)):
        raise ValueError(f"checkpoint {path} was trained on a scan of {tuple(state['scan_shape'])} "
                         f"positions; this data set has {prepared.scan_shape}")
    pooling = steps.get("pooling")
    if pooling is not None and not prepared.is_lazy:
        from ..rvae.data import as_patterns, looks_like_counts

        counts = looks_like_counts(as_patterns(prepared), np.arange(int(np.prod(prepared.scan_shape))))
        from ..rvae.infer import scan_step_angstrom

        pooled = pool_patterns(np.asarray(prepared.data), pooling["mode"], counts=counts,
                               step_angstrom=scan_step_angstrom(prepared))
        prepared = dataclasses.replace(prepared, data=pooled.data, frame_source=None,
                                       provenance=prepared.provenance + (dict(pooling),))
    return prepared, binned
