"""One call for the headless pipeline: train, then map the whole scan."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .config import RVAEConfig
from .diagnostics import Diagnostics, correlate
from .infer import LatentMaps
from .model import RVAE
from .train import Trainer, TrainEvent


@dataclass
class RVAEResult:
    """What :func:`fit` returns.

    Attributes
    ----------
    model
        The trained :class:`~napari_4dstem_rvae.rvae.model.RVAE`, in the state the
        ``epoch_selection`` rule chose (:mod:`.selection`).
    maps
        :class:`~napari_4dstem_rvae.rvae.infer.LatentMaps` of every probe position.
    history
        One dict per epoch: ``epoch``, ``train_loss``, ``train_recon``, ``train_kl_z``,
        ``train_kl_angle``, ``train_kl_shift``, the same for ``test_``, ``kl_weight``,
        ``noise_std``, ``elapsed`` (s) and, where computed, ``max_abs_r``/``angle_rho``.
    diagnostics
        :class:`Diagnostics` over epochs (with map snapshots), the last one for ``maps``.
    config
        The :class:`RVAEConfig` used.
    trainer
        The :class:`Trainer` (to continue, save a checkpoint, …).
    best_epoch
        The epoch whose state ``model`` holds.
    stopped
        True when training was stopped before ``config.epochs``.
    """

    model: RVAE
    maps: LatentMaps
    history: list[dict[str, Any]]
    diagnostics: list[Diagnostics]
    config: RVAEConfig
    trainer: Trainer
    best_epoch: int
    stopped: bool = False
    final: Diagnostics | None = field(default=None)

    @classmethod
    def from_trainer(cls, trainer: Trainer, stopped: bool = False, maps: LatentMaps | None = None) -> RVAEResult:
        """The result of a trainer driven step by step (e.g. by the Train widget): its model in
        the state the selection rule chose (call :meth:`Trainer.finish` first), the maps of the
        whole scan and their correlations with the COM maps, when given."""
        epoch = trainer.selected_epoch if trainer.selected_epoch is not None else trainer.epoch
        maps = trainer.maps(novelty=True) if maps is None else maps
        final = correlate(maps, trainer.com_magnitude, trainer.com_angle, epoch=epoch)
        return cls(model=trainer.model, maps=maps, history=list(trainer.history),
                   diagnostics=list(trainer.diagnostics), config=trainer.config, trainer=trainer,
                   best_epoch=int(epoch), stopped=stopped, final=final)

    @property
    def latent_r(self) -> tuple[float, ...]:
        return () if self.final is None else self.final.latent_r

    @property
    def max_abs_r(self) -> float:
        return float("nan") if self.final is None else self.final.max_abs_r

    @property
    def angle_rho(self) -> float:
        return float("nan") if self.final is None else self.final.angle_rho


def fit(data: Any, config: RVAEConfig | dict[str, Any] | None = None, *, roi_mask: Any = None,
        det_mask: Any = None, com_magnitude: Any = None, com_angle: Any = None,
        epochs: int | None = None, stop: threading.Event | None = None,
        callback: Callable[[TrainEvent], Any] | None = None, checkpoint_path: Any = None,
        checkpoint_every: int | None = 0, resume: Any = None, encoder: Callable[[Any], Any] | None = None,
        **changes: Any) -> RVAEResult | None:
    """Train an rVAE on ``data`` and map every probe position.

    Parameters
    ----------
    data
        :class:`~napari_4dstem_rvae.dataset.Dataset4D`, numpy or dask array
        ``(scan_y, scan_x, det_y, det_x)``; the pipeline passes it binned to 32 × 32 with the
        mean pattern subtracted (as in the study). Scaling is done inside.
    config
        :class:`RVAEConfig` or dict; ``changes`` override single fields
        (``fit(ds, latent_dim=3, epochs=200)``).
    roi_mask
        Boolean ``(scan_y, scan_x)``: positions to train on; maps cover the whole scan.
    det_mask
        Boolean ``(det_y, det_x)``: detector pixels to use.
    com_magnitude, com_angle
        COM maps ``(scan_y, scan_x)`` for the diagnostics (every ``config.correlate_every``
        epochs, and always at the end) and the ``"com_correlation"`` epoch selection.
    epochs
        Overrides ``config.epochs``.
    stop
        A ``threading.Event``; when set, training stops within one step and the maps are
        made from the model as it is.
    callback
        Called with every :class:`TrainEvent` (e.g. to print progress).
    checkpoint_path, checkpoint_every
        Write a checkpoint every N epochs (``None``: about 20 times per training) and at the end
        or a stop.
    resume
        A checkpoint (path) of an interrupted run of the same configuration on the same data:
        training continues from it, exactly as if it had not stopped. A checkpoint of other
        settings or other data is a ValueError.

    encoder
        Makes the maps of the trained model instead of this process (e.g.
        ``lambda model: encode_on_cluster(model, data, client, novelty=True)``).

    With ``config.restarts`` > 1 the model that goes on is picked by held-out loss after a
    short competition (:func:`start`).

    In a process group (``torchrun``, :mod:`.parallel`) every rank trains on its share of each
    minibatch; rank 0 returns the result, the other ranks ``None``.
    """
    if config is None:
        config = RVAEConfig()
    elif isinstance(config, dict):
        config = RVAEConfig.from_dict(config)
    if epochs is not None:
        changes["epochs"] = int(epochs)
    if changes:
        config = config.replace(**changes)
    if resume is not None:
        trainer = resume_trainer(resume, data, config, com_magnitude=com_magnitude, com_angle=com_angle,
                                 roi_mask=roi_mask)
    else:
        trainer = start(data, config, roi_mask=roi_mask, det_mask=det_mask, com_magnitude=com_magnitude,
                        com_angle=com_angle, stop=stop, callback=callback)
    if checkpoint_path is not None and checkpoint_every is None:
        checkpoint_every = max(1, trainer.total_epochs // 20)
    stopped = False
    for event in trainer.run(stop=stop, checkpoint_path=checkpoint_path, checkpoint_every=checkpoint_every):
        if callback is not None:
            callback(event)
        stopped = event.kind == "stopped"
    trainer.finish()
    from .parallel import is_main

    if not is_main():  # torchrun: the other ranks trained along; rank 0 makes the maps
        return None
    return RVAEResult.from_trainer(trainer, stopped=stopped, maps=None if encoder is None else encoder(trainer.model))


def start(data: Any, config: RVAEConfig, *, roi_mask: Any = None, det_mask: Any = None,
          com_magnitude: Any = None, com_angle: Any = None, stop: threading.Event | None = None,
          callback: Callable[[TrainEvent], Any] | None = None) -> Trainer:
    """A trainer ready to train: with ``config.restarts`` > 1, that many models (other initial
    weights, the same data split) train for ``config.restart_fraction`` of the training, and
    the one with the lowest held-out loss (train loss without test positions) is returned to
    continue; the others are dropped. Events of the competition reach ``callback`` too."""
    first = Trainer(data, config, roi_mask=roi_mask, det_mask=det_mask,
                    com_magnitude=com_magnitude, com_angle=com_angle)
    if config.restarts <= 1:
        return first
    pilot = max(1, round(first.total_epochs * config.restart_fraction))
    contenders = [first] + [Trainer(data, config, roi_mask=roi_mask, det_mask=det_mask, com_magnitude=com_magnitude,
                                    com_angle=com_angle, restart=i) for i in range(1, config.restarts)]
    scores = []
    for trainer in contenders:
        for event in trainer.run(epochs=pilot, stop=stop):
            if callback is not None:
                callback(event)
            if event.kind == "stopped":
                return trainer
        last = trainer.history[-1]
        score = last["test_loss"] if last.get("test_loss") is not None else last["train_loss"]
        scores.append(score if score == score else float("inf"))
    best = contenders[min(range(len(contenders)), key=scores.__getitem__)]
    best.restart_scores = scores
    return best


#: Settings a resumed run may change (how it runs, not what it computes).
RUN_SETTINGS = ("threads", "device", "correlate_every", "bf16")


def resume_trainer(path: Any, data: Any, config: RVAEConfig, *, com_magnitude: Any = None, com_angle: Any = None,
                   roi_mask: Any = None) -> Trainer:
    """The trainer saved in checkpoint ``path``, to continue training on ``data`` with ``config``:
    refused (ValueError, one sentence) when the checkpoint was made with other settings, another
    training region or other data."""
    import numpy as np

    from .checkpoint import config_of, read_checkpoint

    state = read_checkpoint(path)
    saved = config_of(state)
    wanted = config.replace(**{k: getattr(saved, k) for k in RUN_SETTINGS})
    if config.likelihood == "auto":
        wanted = wanted.replace(likelihood=saved.likelihood)
    if saved != wanted:
        differ = [k for k in saved.to_dict() if getattr(saved, k) != getattr(wanted, k)]
        raise ValueError(f"checkpoint {path} was made with other settings ({', '.join(differ)}); "
                         "use the same options or start afresh")
    saved_roi = state.get("roi_mask")
    given = None if roi_mask is None else np.asarray(roi_mask, bool)
    if (saved_roi is None) != (given is None) or (given is not None and not np.array_equal(saved_roi.numpy(), given)):
        raise ValueError(f"checkpoint {path} was trained on another region of the scan")
    return Trainer.from_state(state, data, com_magnitude=com_magnitude, com_angle=com_angle,
                              **{k: getattr(config, k) for k in RUN_SETTINGS if k != "correlate_every"})


#: A model whose latents carry less than this (nats per pattern, the KL of the last epoch) and
#: whose angle posterior is within 5 % of its broadest allowed learnt nothing (see collapsed).
COLLAPSED_KL_Z = 0.01


def collapsed(history: list[dict[str, Any]], config: RVAEConfig) -> str | None:
    """Why the model learnt nothing from its data (posterior collapse), or None: in the last
    epoch its latents carry < :data:`COLLAPSED_KL_Z` nats per pattern and its angle posterior
    (the projected normal) is as broad as it may be — the maps are then noise around the mean
    pattern, not structure. Measured on a real grain-boundary frame of graphene
    (docs/quality.md: latent KL 0.001 nats, angle KL at its floor, the angle uniform)."""
    import torch

    from . import circular
    from .model import MIN_CONCENTRATION

    if not history or config.angle_posterior != "projected_normal":
        return None
    last = history[-1]
    kl_z, kl_angle = last.get("train_kl_z"), last.get("train_kl_angle")
    if kl_z is None or kl_angle is None:
        return None
    floor = float(circular.kl_uniform(torch.tensor([MIN_CONCENTRATION], dtype=torch.float64))[0])
    if kl_z < COLLAPSED_KL_Z and kl_angle < 1.05 * floor:
        return (f"latent KL {kl_z:.3f} nats per window, the angle's posterior as broad as allowed "
                f"(KL {kl_angle:.3f} against its floor {floor:.3f})")
    return None
