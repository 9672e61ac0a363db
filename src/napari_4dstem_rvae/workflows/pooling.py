"""Pooling across probe positions in a run (:mod:`napari_4dstem_rvae.processing.pooling`): the
rVAE trains on, and maps, the pooled patterns; the novelty map is always made from the
patterns as they were measured, so a defect that pooling would average is never lost."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..dataset import Dataset4D
from .events import Message

POOLING_CHOICES = ("auto", "none", "neighbours", "lattice")


def resolve_pooling(choice: str, counts: bool) -> str:
    """The pooling a run uses: ``"auto"`` is ``"lattice"`` for counts (measured: it raises the
    latent–COM |r| at every dose and keeps the defects, benchmarks/bench_rvae_quality.py) and
    ``"none"`` for data that are not counts (clean or already processed)."""
    if choice not in POOLING_CHOICES:
        raise ValueError(f"--pooling must be one of {POOLING_CHOICES}, got {choice!r}")
    if choice == "auto":
        return "lattice" if counts else "none"
    return choice


def pooled_data(prepared: Dataset4D, choice: str, counts: bool) -> Iterator[Any]:
    """(a generator of messages returning) ``(pooled data set, Pooled or None)``."""
    from ..processing.pooling import pool_patterns
    from ..rvae.infer import scan_step_angstrom

    mode = resolve_pooling(choice, counts)
    if mode == "none":
        return prepared, None
    if prepared.is_lazy:
        yield Message(f"pooling ({mode}) needs the binned patterns in memory; these are too large: no pooling",
                      "warning")
        return prepared, None
    step = scan_step_angstrom(prepared)
    pooled = pool_patterns(np.asarray(prepared.data), mode, counts=counts, step_angstrom=step)
    info = pooled.describe(step)
    width = f"{pooled.sigma:.2g} probe steps" + (f" ({info['sigma_angstrom']:.2f} Å)" if "sigma_angstrom" in info else "")
    width += ", chosen from the counts by thinning" if pooled.scores else ""
    what = ("the scan's periodic average plus the residual pooled over " + width + " where it is significant"
            if pooled.mode == "lattice" else "a Gaussian mean over " + width)
    yield Message(f"pooling across probe positions ({pooled.mode}): {what}"
                  + ("" if pooled.mode == mode else f" (no lattice found for {mode} pooling)"))
    data = dataclasses.replace(prepared, data=pooled.data, frame_source=None,
                               provenance=prepared.provenance + ({"step": "pooling", **info},))
    return data, pooled


def measured_novelty(raw: Dataset4D, counts: bool) -> tuple[np.ndarray, str] | None:
    """The lattice novelty of the patterns as measured (not pooled), or None without a lattice."""
    from ..processing.novelty import detector_blocks, lattice_novelty
    from ..rvae.infer import scan_step_angstrom

    x = np.asarray(raw.data)
    sy, sx = x.shape[:2]
    found = lattice_novelty(detector_blocks(x.reshape(sy * sx, *x.shape[2:])), (sy, sx), scan_step_angstrom(raw),
                            counts=counts, valid=np.isfinite(x).all(axis=(2, 3)).ravel())
    return None if found is None else (found.novelty, "lattice")


def with_measured_novelty(maps: Any, raw: Dataset4D, counts: bool) -> Any:
    """``maps`` (of the pooled patterns) with the novelty of the measured ones when the scan
    shows a lattice (else the model's residual on the pooled patterns stays)."""
    found = measured_novelty(raw, counts)
    if found is None:
        return maps
    return dataclasses.replace(maps, novelty=found[0], novelty_reference=found[1])
