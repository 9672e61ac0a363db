"""A trainer's checkpoint state: everything needed to continue a training or to use its model, as
plain values and tensors (:func:`state_of`), and the trainer rebuilt from it (:func:`from_state`).
:class:`~napari_4dstem_rvae.rvae.train.Trainer` offers both as :meth:`Trainer.state` and
:meth:`Trainer.from_state`; the file around the state is :mod:`.checkpoint`.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import torch

from . import checkpoint
from .config import RVAEConfig
from .diagnostics import Diagnostics
from .runtime import empty_sums

#: A :class:`~.train.Trainer` (or subclass): the class is passed in, never imported here, so
#: that the trainer and its state do not import each other.
Trainer = Any
T = TypeVar("T")


def state_of(trainer: Trainer) -> dict[str, Any]:
    """Everything needed to continue ``trainer``'s training or to use its model, as plain values
    and tensors (what a checkpoint file holds, see :mod:`.checkpoint`)."""
    from .. import __version__

    model = trainer.model
    fingerprint = getattr(trainer, "fingerprint", None)
    if fingerprint is None and trainer.patterns is not None:
        fingerprint = data_fingerprint(trainer.patterns, trainer.train_index)
    cal = trainer.calibration
    sums = trainer._epoch_sums if trainer._plan is not None else None
    return {
        "library_version": str(__version__),
        "config": trainer.config.to_dict(),
        "scan_shape": list(trainer.scan_shape),
        "det_shape": list(trainer.det_shape),
        "center": list(model.center),
        "data_scale": float(model.data_scale),
        "model": _cpu(model.state_dict()),
        "optimizer": _cpu(trainer.optimizer.state_dict()),
        "rng": trainer.generator.get_state(),
        "device_rng": None if trainer.device_generator is trainer.generator else trainer.device_generator.get_state(),
        "epoch": int(trainer.epoch),
        "step": int(trainer.step),
        "elapsed": float(trainer.elapsed),
        "selected_epoch": trainer.selected_epoch,
        "restart": int(trainer.restart),
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
            "epoch": int(trainer.best["epoch"]), "score": float(trainer.best["score"]),
            "model": _cpu(trainer.best["model"]),
            **({"test_losses": trainer.best["test_losses"].clone()} if "test_losses" in trainer.best else {})},
        "calibration": None if cal is None else cal.to_dict(),
        "provenance": list(trainer.provenance),
        "source": trainer.source,
    }


def from_state(cls: type[T], state: dict[str, Any], data: Any = None, *, com_magnitude: Any = None,
               com_angle: Any = None, **changes: Any) -> T:
    """A ``cls`` trainer rebuilt from :func:`state_of` (see :meth:`Trainer.from_state
    <napari_4dstem_rvae.rvae.train.Trainer.from_state>`); anything inconsistent in ``state`` is a
    ValueError in one sentence (never an IndexError or a RuntimeError from deep inside)."""
    try:
        return _rebuild(cls, state, data, com_magnitude=com_magnitude, com_angle=com_angle, **changes)
    except ValueError:
        raise
    except (IndexError, KeyError, TypeError, RuntimeError, AttributeError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise ValueError(f"checkpoint {state.get('_path', '')!r} is damaged or was edited "
                         f"({type(exc).__name__}: {reason})") from exc


def _rebuild(cls: type[T], state: dict[str, Any], data: Any = None, *, com_magnitude: Any = None,
             com_angle: Any = None, **changes: Any) -> T:
    """The trainer of :func:`from_state`, without the translation of errors."""
    from ..dataset import Calibration

    path = state.get("_path", "checkpoint")
    where = f"checkpoint {path!r}"
    config = checkpoint.config_of(state)
    for name in changes:
        if name in RVAEConfig.ARCHITECTURE or name in ("seed", "test_fraction", "normalise", "center", "steps"):
            raise ValueError(f"{name} cannot be changed when loading {where}: it was "
                             f"{getattr(config, name)!r} for the saved model (start a new training instead)")
    trainer = cls.__new__(cls)
    trainer._init_common(data, config.replace(**changes) if changes else config)
    trainer.scan_shape = tuple(int(s) for s in state["scan_shape"])
    trainer.det_shape = tuple(int(s) for s in state["det_shape"])
    patterns = trainer.patterns
    if patterns is not None and (patterns.det_shape != trainer.det_shape
                                 or patterns.scan_shape != trainer.scan_shape):
        raise ValueError(
            f"{where} was trained on data of scan {trainer.scan_shape} × detector {trainer.det_shape}; "
            f"the data given have scan {patterns.scan_shape} × detector {patterns.det_shape} "
            "(use the same preprocessing, e.g. the same binning)")
    trainer.roi_mask = None if state.get("roi_mask") is None else state["roi_mask"].numpy().astype(bool)
    trainer.train_index = state["train_index"].numpy().astype(np.int64)
    trainer.test_index = state["test_index"].numpy().astype(np.int64)
    trainer.fingerprint = state.get("fingerprint")
    if patterns is not None and trainer.fingerprint is not None:
        now = data_fingerprint(patterns, trainer.train_index)
        if not np.allclose(now, trainer.fingerprint, rtol=1e-5, atol=1e-12):
            raise ValueError(f"the data given differ from those {where} was trained on "
                             "(other file or preprocessing?)")
    trainer.model = checkpoint.model_from_state(state, trainer.config).to(trainer.device)
    trainer.restart = int(state.get("restart", 0))
    seed = trainer.run_seed
    trainer.generator = torch.Generator().manual_seed(seed)
    if state.get("rng") is not None:
        trainer.generator.set_state(state["rng"])
    trainer.device_generator = trainer._device_generator(seed)
    if state.get("device_rng") is not None and trainer.device_generator is not trainer.generator:
        trainer.device_generator.set_state(state["device_rng"])
    trainer.epoch = int(state.get("epoch", 0))
    trainer.step = int(state.get("step", 0))
    trainer.elapsed = float(state.get("elapsed", 0.0))
    trainer.selected_epoch = state.get("selected_epoch")
    trainer._plan = state.get("plan")
    trainer._position = int(state.get("position", 0))
    if state.get("epoch_sums") is not None:
        trainer._epoch_sums = dict(state["epoch_sums"])
    elif trainer._plan is not None:
        trainer._epoch_sums = empty_sums()
    trainer.history = [dict(r) for r in state.get("history", [])]
    trainer.diagnostics = [Diagnostics.from_dict(d) for d in state.get("diagnostics", [])]
    best = state.get("best")
    trainer.best = None if best is None else dict(best)
    if trainer.best is not None and "score" not in trainer.best:  # format 1: the |r| rule
        trainer.best["score"] = float(trainer.best.pop("max_abs_r"))
    cal = state.get("calibration")
    trainer.calibration = None if cal is None else Calibration.from_dict(cal)
    trainer.provenance = tuple(state.get("provenance", []))
    trainer.source = state.get("source")
    trainer._finish_init(com_magnitude, com_angle, state.get("optimizer"))
    return trainer


def data_fingerprint(patterns: Any, index: np.ndarray) -> list[float]:
    """Sum and sum of squares of the first and last training pattern (detects other data)."""
    picks = np.unique(index[[0, -1]])
    frames = patterns.read(picks).astype(np.float64)
    return [float(v) for f in frames for v in (f.sum(), (f * f).sum())]


def _cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu(v) for v in value)
    return value
