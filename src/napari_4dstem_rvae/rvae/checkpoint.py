"""Checkpoints: one ``torch.save`` file of plain values and tensors.

It holds the weights, every hyperparameter (:class:`RVAEConfig` as a dict), the detector
geometry and data scale, the preprocessing provenance and calibration, the train/test split,
the loss history and diagnostics, the optimizer state and the random generators' states
(so a resumed run continues exactly as if it had not stopped, even mid-epoch). Nothing is
pickled as an object: the file loads with ``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from .config import RVAEConfig
from .data import as_patterns
from .diagnostics import Diagnostics
from .model import RVAE

FORMAT = "napari-4dstem-rvae checkpoint"
VERSION = 1


def _cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu(v) for v in value)
    return value


def _fingerprint(patterns: Any, index: np.ndarray) -> list[float]:
    """Sum and sum of squares of the first and last training pattern (detects other data)."""
    picks = np.unique(index[[0, -1]])
    frames = patterns.read(picks).astype(np.float64)
    return [float(v) for f in frames for v in (f.sum(), (f * f).sum())]


def trainer_state(trainer: Any) -> dict[str, Any]:
    """The checkpoint dictionary of a :class:`~napari_4dstem_rvae.rvae.train.Trainer`."""
    from .. import __version__

    model = trainer.model
    sums = getattr(trainer, "_epoch_sums", None) if trainer._plan is not None else None
    fingerprint = getattr(trainer, "fingerprint", None)
    if fingerprint is None and trainer.patterns is not None:
        fingerprint = _fingerprint(trainer.patterns, trainer.train_index)
    cal = trainer.calibration
    return {
        "format": FORMAT,
        "version": VERSION,
        "library_version": str(__version__),
        "config": trainer.config.to_dict(),
        "scan_shape": list(trainer.scan_shape),
        "det_shape": list(trainer.det_shape),
        "center": list(model.center),
        "data_scale": float(model.data_scale),
        "model": _cpu(model.state_dict()),
        "optimizer": _cpu(trainer.optimizer.state_dict()),
        "rng": trainer.generator.get_state(),
        "device_rng": (None if trainer.device_generator is trainer.generator
                       else trainer.device_generator.get_state()),
        "epoch": int(trainer.epoch),
        "step": int(trainer.step),
        "elapsed": float(trainer.elapsed),
        "plan": None if trainer._plan is None else trainer._plan.clone(),
        "position": int(trainer._position),
        "epoch_sums": None if sums is None else {k: float(v) for k, v in sums.items()},
        "train_index": torch.from_numpy(np.asarray(trainer.train_index, dtype=np.int64)),
        "test_index": torch.from_numpy(np.asarray(trainer.test_index, dtype=np.int64)),
        "roi_mask": None if trainer.roi_mask is None else torch.from_numpy(trainer.roi_mask.copy()),
        "fingerprint": fingerprint,
        "history": [dict(record) for record in trainer.history],
        "diagnostics": [d.to_dict() for d in trainer.diagnostics],
        "best": None if trainer.best is None else {
            "epoch": int(trainer.best["epoch"]), "max_abs_r": float(trainer.best["max_abs_r"]),
            "model": _cpu(trainer.best["model"])},
        "calibration": None if cal is None else cal.to_dict(),
        "provenance": list(trainer.provenance),
        "source": trainer.source,
    }


def save_checkpoint(trainer: Any, path: Any) -> str:
    """Write ``trainer``'s state to ``path`` atomically (a partial file never replaces a good one)."""
    path = os.fspath(path)
    state = trainer_state(trainer)
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
    missing = [k for k in ("config", "det_shape", "scan_shape", "model", "center", "data_scale")
               if k not in state]
    if missing:
        raise ValueError(f"checkpoint {path!r} lacks {missing}")
    state["_path"] = path
    return state


def _model_from_state(state: dict[str, Any], config: RVAEConfig) -> RVAE:
    path = state.get("_path", "checkpoint")
    det_mask = state["model"].get("det_mask")
    model = RVAE(config, tuple(state["det_shape"]),
                 None if det_mask is None else det_mask.numpy(), tuple(state["center"]),
                 float(state["data_scale"]))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ValueError(f"the weights in {path!r} do not fit the model its configuration describes: {exc}") from exc
    return model


def load_model(path: Any, device: str | torch.device = "cpu") -> RVAE:
    """The trained model of a checkpoint, ready for inference (``model.config`` holds every parameter)."""
    state = read_checkpoint(path)
    config = RVAEConfig.from_dict(state["config"], source=f"checkpoint {state['_path']!r}")
    model = _model_from_state(state, config).to(device)
    model.eval()
    return model


def load_checkpoint(path: Any, data: Any = None, *, com_magnitude: Any = None, com_angle: Any = None,
                    **changes: Any):
    """A :class:`~napari_4dstem_rvae.rvae.train.Trainer` restored from ``path``.

    No original argument is needed: the configuration, geometry, data scale and split are
    in the file. Pass the same ``data`` to continue training (``trainer.run()`` continues
    exactly); without data the trainer still offers ``model``, ``history`` and ``save``.
    ``changes`` may set training parameters (``epochs``, ``device``, ``threads``,
    ``correlate_every``, ``keep_best``, …) but not the architecture.
    """
    from .train import Trainer

    state = read_checkpoint(path)
    where = f"checkpoint {state['_path']!r}"
    config = RVAEConfig.from_dict(state["config"], source=where)
    for name in changes:
        if name in RVAEConfig.ARCHITECTURE or name in ("seed", "test_fraction", "normalise", "center",
                                                       "steps"):
            raise ValueError(f"{name} cannot be changed when loading {where}: it was "
                             f"{getattr(config, name)!r} for the saved model (start a new training instead)")
    config = config.replace(**changes) if changes else config
    return Trainer(data, config, com_magnitude=com_magnitude, com_angle=com_angle, _state=state)


def restore_trainer(trainer: Any, state: dict[str, Any], has_data: bool) -> None:
    """Fill a new Trainer from a checkpoint dictionary (used by ``Trainer.__init__``)."""
    from ..dataset import Calibration

    path = state.get("_path", "checkpoint")
    trainer.scan_shape = tuple(int(s) for s in state["scan_shape"])
    trainer.det_shape = tuple(int(s) for s in state["det_shape"])
    if has_data:
        patterns = trainer.patterns
        if patterns.det_shape != trainer.det_shape or patterns.scan_shape != trainer.scan_shape:
            raise ValueError(
                f"checkpoint {path!r} was trained on data of scan {trainer.scan_shape} × detector "
                f"{trainer.det_shape}; the data given have scan {patterns.scan_shape} × detector "
                f"{patterns.det_shape} (use the same preprocessing, e.g. the same binning)")
    trainer.roi_mask = None if state.get("roi_mask") is None else state["roi_mask"].numpy().astype(bool)
    trainer.train_index = state["train_index"].numpy().astype(np.int64)
    trainer.test_index = state["test_index"].numpy().astype(np.int64)
    trainer.fingerprint = state.get("fingerprint")
    if has_data and trainer.fingerprint is not None:
        now = _fingerprint(trainer.patterns, trainer.train_index)
        if not np.allclose(now, trainer.fingerprint, rtol=1e-5, atol=1e-12):
            raise ValueError(f"the data given differ from those checkpoint {path!r} was trained on "
                             f"(other file or preprocessing?)")
    trainer.model = _model_from_state(state, trainer.config).to(trainer.device)
    seed = trainer.config.seed
    trainer.generator = torch.Generator().manual_seed(seed)
    if state.get("rng") is not None:
        trainer.generator.set_state(state["rng"])
    trainer.device_generator = trainer._device_generator(seed)
    if state.get("device_rng") is not None and trainer.device_generator is not trainer.generator:
        trainer.device_generator.set_state(state["device_rng"])
    trainer.epoch = int(state.get("epoch", 0))
    trainer.step = int(state.get("step", 0))
    trainer.elapsed = float(state.get("elapsed", 0.0))
    trainer._plan = state.get("plan")
    trainer._position = int(state.get("position", 0))
    if state.get("epoch_sums") is not None:
        trainer._epoch_sums = dict(state["epoch_sums"])
    elif trainer._plan is not None:
        trainer._epoch_sums = {"loss": 0.0, "recon": 0.0, "kl_z": 0.0, "kl_angle": 0.0, "kl_shift": 0.0, "n": 0}
    trainer.history = [dict(r) for r in state.get("history", [])]
    trainer.diagnostics = [Diagnostics.from_dict(d) for d in state.get("diagnostics", [])]
    best = state.get("best")
    trainer.best = None if best is None else dict(best)
    cal = state.get("calibration")
    trainer.calibration = None if cal is None else Calibration.from_dict(cal)
    trainer.provenance = tuple(state.get("provenance", []))
    trainer.source = state.get("source")
