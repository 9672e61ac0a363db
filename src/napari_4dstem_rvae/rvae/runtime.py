"""What a training run yields and needs around the model: the progress events and the loss parts
they report, the error for a diverged loss, the device, the optimiser, torch's thread count (the
one place that sets it), checks of masks and plain values for checkpoints."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .diagnostics import Diagnostics

#: The unweighted parts of the loss that events and the history report (nats per pattern).
PARTS = ("recon", "kl_z", "kl_angle", "kl_shift")


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the trainer was put back to its last good state."""


@dataclass
class TrainEvent:
    """Progress of a training.

    Attributes
    ----------
    kind
        ``"step"`` (after an optimisation step, only with ``step_events=True``), ``"epoch"``
        (after each epoch), ``"stopped"`` (the stop flag was seen; the trainer can continue)
        or ``"finished"`` (the target number of epochs is reached).
    epoch
        Epochs completed so far.
    step
        Optimisation steps done so far (over all runs of this trainer).
    epochs_total
        The target number of epochs of this run.
    train_loss, train_parts
        Negative ELBO per pattern (with the KL weight in force) averaged over the epoch (or
        the last step for ``"step"`` events), and its unweighted parts ``recon``, ``kl_z``,
        ``kl_angle``, ``kl_shift`` (nats per pattern).
    test_loss, test_parts
        The same on the held-out test positions (``None`` without a test set / not an epoch).
    elapsed
        Seconds spent training (over all runs of this trainer).
    kl_weight
        KL weight used in this epoch (warm-up).
    diagnostics
        :class:`~napari_4dstem_rvae.rvae.diagnostics.Diagnostics` when computed at this epoch.
    message
        A sentence for the user on ``"stopped"``/``"finished"``.
    """

    kind: str
    epoch: int
    step: int
    epochs_total: int
    train_loss: float | None = None
    train_parts: dict[str, float] = field(default_factory=dict)
    test_loss: float | None = None
    test_parts: dict[str, float] = field(default_factory=dict)
    elapsed: float = 0.0
    kl_weight: float = 1.0
    diagnostics: Diagnostics | None = None
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain values (for GUIs and logs); ``max_abs_r``/``angle_rho`` when diagnostics exist."""
        out: dict[str, Any] = {
            "kind": self.kind, "epoch": self.epoch, "step": self.step, "epochs_total": self.epochs_total,
            "train_loss": self.train_loss, "test_loss": self.test_loss, "elapsed": self.elapsed,
            "kl_weight": self.kl_weight, "message": self.message,
            **{f"train_{k}": v for k, v in self.train_parts.items()},
            **{f"test_{k}": v for k, v in self.test_parts.items()},
        }
        if self.diagnostics is not None:
            out.update({k: v for k, v in self.diagnostics.to_dict().items() if k != "epoch"})
        return out


def empty_sums() -> dict[str, float]:
    """Running sums of one epoch's loss and :data:`PARTS` (pattern-weighted) and their count."""
    return {"loss": 0.0, **dict.fromkeys(PARTS, 0.0), "n": 0}


def resolve_device(name: str) -> torch.device:
    """``"auto"``: CUDA if available, then MPS, then CPU. An unavailable device is a ValueError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but torch sees no CUDA GPU; use 'auto' or 'cpu'")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError("device='mps' was asked for but MPS is not available; use 'auto' or 'cpu'")
    return torch.device(name)


def check_mask(mask: Any, shape: tuple[int, int], name: str) -> np.ndarray | None:
    """:func:`napari_4dstem_rvae.dataset.scan_mask` (the one check of a region, for every door)."""
    from ..dataset import scan_mask

    return scan_mask(mask, shape, name)


def adam(parameters: list[torch.nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam, fused where torch supports it for the device (about 8× faster steps on CPU for
    this model's ~10⁶ parameters; the same update)."""
    try:
        return torch.optim.Adam(parameters, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(parameters, lr=lr)


def plain(value: Any) -> Any:
    """JSON-like plain values (for provenance stored in checkpoints)."""
    return json.loads(json.dumps(value, default=str))


def set_torch_threads(n: int) -> None:
    """Set torch's intra-op thread count of this process to ``n`` for good (e.g. one thread per
    dask worker); :func:`torch_threads` sets it for a block only."""
    torch.set_num_threads(int(n))


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Torch's thread count set to ``n`` inside the block (``None``: left unchanged), the previous
    count restored on leaving it — also on an exception or when a generator holding the block is
    closed."""
    previous = torch.get_num_threads()
    try:
        if n is not None:
            set_torch_threads(n)
        yield
    finally:
        if torch.get_num_threads() != previous:
            set_torch_threads(previous)
