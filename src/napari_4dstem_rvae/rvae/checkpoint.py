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

import os
from typing import Any

import torch

from .config import RVAEConfig
from .model import RVAE

FORMAT = "napari-4dstem-rvae checkpoint"
#: 2: projected-normal angle, likelihoods for counts, input offset (version 0.2).
VERSION = 2
#: Keys every checkpoint must hold.
REQUIRED = ("config", "det_shape", "scan_shape", "model", "center", "data_scale")


def write_checkpoint(state: dict[str, Any], path: Any) -> str:
    """Write a state dictionary to ``path`` atomically (a partial file never replaces a good one)."""
    path = os.fspath(path)
    state = {"format": FORMAT, "version": VERSION, **state}
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_checkpoint(path: Any) -> dict[str, Any]:
    """The checkpoint dictionary (``weights_only=True``), validated; ValueError naming the file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"checkpoint {path!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path!r} is not a readable rVAE checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not a napari-4dstem-rvae rVAE checkpoint")
    if state.get("version", 0) > VERSION:
        raise ValueError(f"{path!r} was written by a newer version (checkpoint format "
                         f"{state.get('version')}); this version reads format ≤ {VERSION}")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise ValueError(f"checkpoint {path!r} lacks {missing}")
    state["_path"] = path
    return state


def config_of(state: dict[str, Any]) -> RVAEConfig:
    """The :class:`RVAEConfig` stored in a checkpoint dictionary (format-1 checkpoints: the
    Gaussian angle of version 0.1)."""
    values = dict(state["config"])
    if state.get("version", 1) < 2:
        values.setdefault("angle_posterior", "gaussian")
    return RVAEConfig.from_dict(values, source=f"checkpoint {state.get('_path', '')!r}")


def model_from_state(state: dict[str, Any], config: RVAEConfig | None = None) -> RVAE:
    """The :class:`RVAE` of a checkpoint dictionary with its weights (on the CPU)."""
    path = state.get("_path", "checkpoint")
    config = config_of(state) if config is None else config
    det_mask = state["model"].get("det_mask")
    model = RVAE(config, tuple(state["det_shape"]),
                 None if det_mask is None else det_mask.numpy(), tuple(state["center"]),
                 float(state["data_scale"]))
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
