"""Checkpoint files: one ``torch.save`` file of plain values and tensors.

A checkpoint holds what :meth:`Trainer.state() <napari_4dstem_rvae.rvae.train.Trainer.state>`
returns: the weights, every hyperparameter (:class:`RVAEConfig` as a dict), the detector
geometry and data scale, the preprocessing provenance and calibration, the train/test split,
the loss history and diagnostics, the optimizer state and the random generators' states (so
a resumed run continues exactly as if it had not stopped, even mid-epoch). Nothing is
pickled as an object: the file loads with ``torch.load(path, weights_only=True)``.

This module knows the file, not the trainer: the trainer builds and reads the state
(:meth:`~napari_4dstem_rvae.rvae.train.Trainer.from_state`).
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any

import torch

from ..atomic import write_bytes
from .config import RVAEConfig
from .model import RVAE

FORMAT = "napari-4dstem-rvae checkpoint"
#: 2: projected-normal angle, likelihoods for counts, input offset (version 0.2).
VERSION = 2
#: Keys every checkpoint must hold.
REQUIRED = ("config", "det_shape", "scan_shape", "model", "center", "data_scale")


#: First bytes of a checkpoint file: the magic, then the SHA-256 of the rest (the torch.save
#: archive) in hex and a newline. Files without it are read as plain archives (version 0.1).
MAGIC = b"NAPARI-4DSTEM-RVAE-CHECKPOINT"


def write_checkpoint(state: dict[str, Any], path: Any) -> str:
    """Write a state dictionary to ``path`` atomically (a partial file never replaces a good
    one), with a SHA-256 checksum of its content."""
    path = os.fspath(path)
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **state}, buffer)
    payload = buffer.getvalue()
    return write_bytes(path, MAGIC + b" " + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)


def read_checkpoint(path: Any) -> dict[str, Any]:
    """The checkpoint dictionary (``weights_only=True``), its checksum verified and every
    field checked; a damaged, edited or foreign file is a ValueError in one sentence naming it."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"checkpoint {path!r} does not exist")
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ValueError(f"checkpoint {path!r} cannot be read ({exc})") from exc
    if raw.startswith(MAGIC):
        head, _, payload = raw.partition(b"\n")
        digest = head[len(MAGIC):].strip().decode("ascii", "replace")
        if hashlib.sha256(payload).hexdigest() != digest:
            raise ValueError(f"checkpoint {path!r} is damaged: its content does not match its checksum "
                             "(the file was changed or corrupted after it was written)")
    else:
        payload = raw
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200]
        raise ValueError(f"{path!r} is not a readable rVAE checkpoint ({type(exc).__name__}: {reason})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not a napari-4dstem-rvae rVAE checkpoint")
    if not isinstance(state.get("version", 0), int) or state.get("version", 0) > VERSION:
        raise ValueError(f"{path!r} was written by a newer version (checkpoint format "
                         f"{state.get('version')}); this version reads format ≤ {VERSION}")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise ValueError(f"checkpoint {path!r} lacks {missing}")
    problem = _check_fields(state)
    if problem:
        raise ValueError(f"checkpoint {path!r} is damaged or was edited: {problem}")
    state["_path"] = path
    return state


def _check_fields(state: dict[str, Any]) -> str | None:
    """What is wrong with the fields of a checkpoint dictionary, in words, or ``None``."""
    import math

    def pair(value: Any) -> bool:
        return isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value)

    if not pair(state["det_shape"]) or not pair(state["scan_shape"]):
        return f"scan/detector shapes {state['scan_shape']!r}, {state['det_shape']!r} are not two positive integers"
    if not (isinstance(state["center"], (list, tuple)) and len(state["center"]) == 2
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in state["center"])):
        return f"the rotation centre {state['center']!r} is not two numbers"
    if not (isinstance(state["data_scale"], (int, float)) and math.isfinite(state["data_scale"])
            and state["data_scale"] > 0):
        return f"the data scale {state['data_scale']!r} is not a positive number"
    if not isinstance(state["config"], dict) or not isinstance(state["model"], dict) \
            or not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        return "the configuration or the weights are not what a checkpoint holds"
    if any(not torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()):
        return "some weights are NaN or infinite"
    n = state["scan_shape"][0] * state["scan_shape"][1]
    for name in ("train_index", "test_index"):
        index = state.get(name)
        if index is None:
            continue
        if not isinstance(index, torch.Tensor) or index.dtype != torch.int64 or index.ndim != 1:
            return f"{name} is not a vector of probe positions"
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
            return f"{name} holds positions outside the scan of {n} positions"
    for name in ("epoch", "step", "position"):
        if name in state and not (isinstance(state[name], int) and state[name] >= 0):
            return f"{name} = {state[name]!r} is not a count"
    plan = state.get("plan")
    if plan is not None:
        if not isinstance(plan, torch.Tensor) or plan.ndim != 1 or (plan.numel() and (
                int(plan.min()) < 0 or int(plan.max()) >= n)):
            return "the epoch plan holds positions outside the scan"
        if state.get("position", 0) > plan.numel():
            return "the position in the epoch plan is past its end"
    roi = state.get("roi_mask")
    if roi is not None and (not isinstance(roi, torch.Tensor) or tuple(roi.shape) != tuple(state["scan_shape"])):
        return "the training region does not have the scan's shape"
    return None


def config_of(state: dict[str, Any]) -> RVAEConfig:
    """The :class:`RVAEConfig` stored in a checkpoint dictionary (format-1 checkpoints: the
    Gaussian angle of version 0.1); invalid settings are a ValueError naming the file."""
    values = dict(state["config"])
    if state.get("version", 1) < 2:
        values.setdefault("angle_posterior", "gaussian")
    where = f"checkpoint {state.get('_path', '')!r}"
    try:
        return RVAEConfig.from_dict(values, source=where)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where} holds invalid settings: {exc}") from None


def model_from_state(state: dict[str, Any], config: RVAEConfig | None = None) -> RVAE:
    """The :class:`RVAE` of a checkpoint dictionary with its weights (on the CPU)."""
    path = state.get("_path", "checkpoint")
    config = config_of(state) if config is None else config
    det_mask = state["model"].get("det_mask")
    try:
        model = RVAE(config, tuple(state["det_shape"]),
                     None if det_mask is None else det_mask.numpy(), tuple(state["center"]),
                     float(state["data_scale"]))
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ValueError(f"the model in {path!r} cannot be rebuilt (damaged or edited): {exc}") from None
    weights = dict(state["model"])
    for name in ("offset", "log_mean", "count_data"):  # format 1: data were centred outside the model
        weights.setdefault(name, getattr(model, name))
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise ValueError(f"the weights in {path!r} do not fit the model its configuration describes: {exc}") from exc
    return model


def load_model(path: Any, device: str | torch.device = "cpu") -> RVAE:
    """The trained model of a checkpoint, ready for inference (``model.config`` holds every parameter)."""
    model = model_from_state(read_checkpoint(path)).to(device)
    model.eval()
    return model
