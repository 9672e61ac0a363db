"""Training as a generator of progress events: stoppable, seeded, resumable.

>>> trainer = Trainer(dataset, RVAEConfig(epochs=50))
>>> for event in trainer.run():       # stop any time: break, .close(), or a threading.Event
...     print(event.epoch, event.train_loss)

Randomness comes only from the trainer's own generators (a ``torch.Generator`` for
shuffling, pixel subsets and posterior samples; a ``numpy.random.Generator`` for the
train/test split), all derived from ``config.seed``: torch's global generator, default
dtype and flags are never touched. A requested thread count is set while the generator
runs and restored when it finishes, is closed or is stopped (:func:`.runtime.torch_threads`).

This module holds the :class:`Trainer`'s set-up and its run loop. The test loss, maps and
epoch selection are in :mod:`.evaluation` (a part of the class), its checkpoint state in
:mod:`.trainer_state`; events, the loss parts, the device, the optimiser and the thread count
live in :mod:`.runtime`, data access in :mod:`.data`, files in :mod:`.checkpoint`.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from . import checkpoint, parallel, trainer_state
from .config import COUNT_LIKELIHOOD, RVAEConfig
from .data import (
    TrainingSource,
    as_patterns,
    input_statistics,
    looks_like_counts,
    signal_rms,
    split_positions,
)
from .diagnostics import Diagnostics
from .evaluation import Evaluation
from .infer import to_device
from .likelihood import COUNT_LIKELIHOODS
from .model import RVAE
from .runtime import (
    PARTS,
    TrainEvent,
    TrainingDiverged,
    adam,
    check_mask,
    empty_sums,
    plain,
    resolve_device,
    torch_threads,
)


class Trainer(Evaluation):
    """Trains an :class:`~napari_4dstem_rvae.rvae.model.RVAE` on 4D-STEM data.

    Parameters
    ----------
    data
        :class:`~napari_4dstem_rvae.dataset.Dataset4D`, numpy or dask array
        ``(scan_y, scan_x, det_y, det_x)``, e.g. binned and mean-subtracted (signed values
        are fine). ``None`` only for a trainer loaded from a checkpoint for inference.
    config
        :class:`RVAEConfig` (or a dict of its fields); defaults otherwise.
    roi_mask
        Boolean ``(scan_y, scan_x)``: train on these probe positions only (inference still
        covers the whole scan).
    det_mask
        Boolean ``(det_y, det_x)``: encode and decode only these detector pixels.
    com_magnitude, com_angle
        ``(scan_y, scan_x)`` COM maps for the diagnostics (``config.correlate_every``).
    """

    def __init__(self, data: Any, config: RVAEConfig | dict[str, Any] | None = None, *,
                 roi_mask: Any = None, det_mask: Any = None, com_magnitude: Any = None,
                 com_angle: Any = None, restart: int = 0):
        self._init_common(data, config)
        self.restart = int(restart)
        if self.patterns is None:
            raise ValueError("data is required to create a Trainer (or use Trainer.load / from_state)")
        self._setup_new(roi_mask, det_mask)
        self._finish_init(com_magnitude, com_angle, optimizer_state=None)

    def _init_common(self, data: Any, config: RVAEConfig | dict[str, Any] | None) -> None:
        if config is None:
            config = RVAEConfig()
        elif isinstance(config, dict):
            config = RVAEConfig.from_dict(config)
        self.config = config
        self.device = resolve_device(config.device)
        self.patterns = None if data is None else as_patterns(data)
        self.history: list[dict[str, Any]] = []
        self.diagnostics: list[Diagnostics] = []
        self.best: dict[str, Any] | None = None
        self.selected_epoch: int | None = None
        self.epoch = 0
        self.step = 0
        self.elapsed = 0.0
        self._plan: torch.Tensor | None = None
        self._position = 0
        self._epoch_sums: dict[str, float] | None = None
        self._running = False

    def _finish_init(self, com_magnitude: Any, com_angle: Any, optimizer_state: Any) -> None:
        self.com_magnitude = self._com_map(com_magnitude, "com_magnitude")
        self.com_angle = self._com_map(com_angle, "com_angle")
        if self.patterns is not None:
            self._source = TrainingSource(self.patterns, self.train_index)
        self.optimizer = adam([p for p in self.model.parameters() if p.requires_grad], self.config.learning_rate)
        if optimizer_state:
            self.optimizer.load_state_dict(optimizer_state)
        self._last_good = self._snapshot()

    # -- set-up ----------------------------------------------------------------------------
    def _setup_new(self, roi_mask: Any, det_mask: Any) -> None:
        cfg, patterns = self.config, self.patterns
        self.scan_shape, self.det_shape = patterns.scan_shape, patterns.det_shape
        self.roi_mask = check_mask(roi_mask, self.scan_shape, "roi_mask")
        if self.roi_mask is not None and not self.roi_mask.any():
            raise ValueError("roi_mask selects no probe positions: draw a region over the scan "
                             "(or pass None to train on every position)")
        det = check_mask(det_mask, self.det_shape, "det_mask")
        n_det = self.det_shape[0] * self.det_shape[1] if det is None else int(det.sum())
        if cfg.latent_dim >= n_det:
            raise ValueError(f"latent_dim={cfg.latent_dim} must be smaller than the number of detector "
                             f"pixels used ({n_det})")
        self.train_index, self.test_index = split_positions(
            self.roi_mask, patterns.n_positions, cfg.test_fraction, cfg.seed, patterns.scan_shape,
            cfg.max_train_positions())
        if cfg.latent_dim > self.train_index.size:
            raise ValueError(f"latent_dim={cfg.latent_dim} is more than the {self.train_index.size} "
                             f"training positions: use fewer latents or a larger region")
        cfg = self.config = cfg.replace(likelihood=resolve_likelihood(cfg, patterns, self.train_index))
        counts = cfg.likelihood in COUNT_LIKELIHOODS
        self._count_data = counts or looks_like_counts(patterns, self.train_index, seed=cfg.seed)
        stats = input_statistics(patterns, self.train_index, det, counts)
        if not stats["std"] > 0:
            raise ValueError("data: the training patterns are all equal (zero standard deviation); "
                             "there is nothing to learn")
        signal = signal_rms(patterns, self.train_index, det, cfg.seed, fallback=stats["std"], counts=counts,
                            poisson=self._count_data)
        normalise = ("std" if counts else "signal") if cfg.normalise == "auto" else cfg.normalise
        scale = {"std": stats["std"], "signal": signal, "none": 1.0}[normalise]
        sigma = cfg.noise_std * signal           # the likelihood's σ, in the (transformed) data's units
        if cfg.likelihood == "anscombe":
            sigma = max(sigma, 1.0)              # never below the known Poisson noise
        center = cfg.center
        if center is None and patterns.calibration is not None and patterns.calibration.det_origin:
            center = tuple(patterns.calibration.det_origin)
        log_mean = np.log(stats["raw_mean"] + 1e-3) if cfg.likelihood == "poisson" else None
        self.model = self._new_model(det, center, scale, stats["offset"], log_mean, sigma / scale)
        seed = self.run_seed
        self.generator = torch.Generator().manual_seed(seed)
        self.device_generator = self._device_generator(seed)
        self.calibration = patterns.calibration
        self.provenance = tuple(plain(list(patterns.provenance)))
        self.source = patterns.source

    @property
    def run_seed(self) -> int:
        """Seed of the weights and of the run's generators: ``config.seed`` for the first start,
        another one for each restart (the train/test split always comes from ``config.seed``)."""
        return int(self.config.seed) + 1_000_003 * int(getattr(self, "restart", 0))

    def _new_model(self, det: Any, center: Any, scale: float, offset: Any, log_mean: Any, noise: float) -> RVAE:
        model = RVAE(self.config, self.det_shape, det, center, scale, offset, log_mean, init_seed=self.run_seed,
                     noise=noise, count_data=self._count_data)
        return model.to(self.device)

    def _device_generator(self, seed: int) -> torch.Generator:
        if self.device.type == "cpu":
            return self.generator
        return torch.Generator(device=self.device).manual_seed(seed + 1)

    def _com_map(self, values: Any, name: str) -> np.ndarray | None:
        if values is None:
            return None
        values = np.asarray(values, dtype=np.float64)
        if values.shape != tuple(self.scan_shape):
            raise ValueError(f"{name} has shape {values.shape}, expected the scan shape {tuple(self.scan_shape)}")
        return values

    # -- schedule ----------------------------------------------------------------------------
    def kl_weight_at(self, epoch: int) -> float:
        """KL weight during epoch ``epoch`` (0-based): linear warm-up to ``config.kl_weight``."""
        warm = self.config.kl_warmup_epochs
        if warm <= 0:
            return self.config.kl_weight
        return self.config.kl_weight * min(1.0, (epoch + 1) / warm)

    @property
    def total_epochs(self) -> int:
        """``config.epochs``, or the epochs that make about ``config.steps`` steps."""
        return self.config.epochs_for(self.n_train)

    def learning_rate_at(self, epoch: float) -> float:
        """Learning rate at fractional epoch ``epoch`` (cosine schedule over ``total_epochs``)."""
        cfg = self.config
        total = self.total_epochs
        if cfg.lr_schedule == "constant" or total <= 0:
            return cfg.learning_rate
        progress = min(max(epoch / total, 0.0), 1.0)
        final = cfg.learning_rate * cfg.lr_final
        return final + (cfg.learning_rate - final) * 0.5 * (1 + math.cos(math.pi * progress))

    @property
    def n_train(self) -> int:
        return int(self.train_index.size)

    @property
    def n_test(self) -> int:
        return int(self.test_index.size)

    @property
    def steps_per_epoch(self) -> int:
        return self.config.steps_per_epoch(self.n_train)

    # -- training ----------------------------------------------------------------------------
    def run(self, epochs: int | None = None, stop: threading.Event | None = None, *,
            step_events: bool = False, checkpoint_path: Any = None,
            checkpoint_every: int = 0) -> Iterator[TrainEvent]:
        """Train until ``epochs`` epochs are completed in total (default :attr:`total_epochs`).

        Yields a :class:`TrainEvent` after every epoch (and every step with
        ``step_events``). Stop at any time: stop iterating (or ``.close()`` the generator)
        or set ``stop`` (checked before every step: a stop mid-epoch returns within one
        step with a ``"stopped"`` event). The trainer keeps its state; ``run`` again
        continues exactly where it stopped. With ``checkpoint_path``, a checkpoint is
        written every ``checkpoint_every`` epochs (0: only at the end or stop).

        A NaN/Inf loss puts the trainer back to its state after the last good epoch and
        raises :class:`TrainingDiverged` with the likely cause.
        """
        if self.patterns is None:
            raise ValueError("this trainer was loaded without data: pass the data to "
                             "load_checkpoint(path, data) to continue training")
        if self._running:
            raise RuntimeError("this trainer is already running")
        target = self.total_epochs if epochs is None else int(epochs)
        if target < 0:
            raise ValueError(f"epochs must be ≥ 0, got {epochs}")
        self._running = True
        try:
            with torch_threads(self.config.threads):
                yield from self._run(target, stop, step_events, checkpoint_path, checkpoint_every)
        finally:
            self._running = False

    def _run(self, target: int, stop: threading.Event | None, step_events: bool,
             checkpoint_path: Any, checkpoint_every: int) -> Iterator[TrainEvent]:
        cfg, model = self.config, self.model
        model.train()
        n_pixels = model.n_pixels
        subset = cfg.pixels_per_step is not None and cfg.pixels_per_step < n_pixels
        ranks = parallel.world()[1]        # > 1: one of several data-parallel processes (torchrun)
        main = parallel.is_main()
        if ranks > 1:
            parallel.broadcast_parameters(model)
        while self.epoch < target:
            if self._plan is None:
                self._plan = self.epoch_plan()
                self._position = 0
                self._epoch_sums = empty_sums()
            beta = self.kl_weight_at(self.epoch)
            while self._position < self._plan.numel():
                if stop is not None and stop.is_set():
                    if checkpoint_path is not None and main:
                        self.save(checkpoint_path)
                    yield self._event("stopped", target, message=(
                        f"stopped in epoch {self.epoch + 1} after step {self.step}; run again to continue"))
                    return
                started = time.perf_counter()
                index = self._plan[self._position:self._position + cfg.batch_size]
                mine = parallel.local_share(index)   # this rank's patterns of the minibatch
                x, y = model.prepare(to_device(self._source.batch(mine), self.device))
                pixels = None
                if subset:
                    pixels = torch.randperm(n_pixels, generator=self.generator)[:cfg.pixels_per_step]
                    pixels = pixels.to(self.device)
                lr = self.learning_rate_at(self.epoch + self._position / self._plan.numel())
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                self.optimizer.zero_grad(set_to_none=True)
                # the sampling noise of the whole minibatch, drawn on every rank: each uses its share
                noise = parallel.local_rows(model.draw_noise(index.numel(), self.device_generator, self.device))
                if mine.numel():
                    loss, parts = model.loss(x, y, pixels=pixels, kl_weight=beta, noise=noise)
                    loss.backward()
                    loss_value = float(loss.detach())
                else:  # a minibatch smaller than the number of ranks
                    loss_value, parts = 0.0, {name: torch.zeros(()) for name in PARTS}
                if ranks > 1:  # the whole minibatch's gradient on every rank, the same step everywhere
                    loss_value = parallel.average_gradients(model, loss_value, mine.numel(), index.numel())
                if not math.isfinite(loss_value):
                    self._diverged()
                self.optimizer.step()
                self._position += index.numel()
                self.step += 1
                b = index.numel()
                sums = self._epoch_sums
                sums["loss"] += loss_value * b
                for name in PARTS:
                    sums[name] += float(parts[name].detach()) * b
                sums["n"] += b
                self.elapsed += time.perf_counter() - started
                if step_events:
                    yield self._event("step", target, train_loss=loss_value,
                                      train_parts={k: float(v.detach()) for k, v in parts.items()}, kl_weight=beta)
            started = time.perf_counter()
            sums = self._epoch_sums
            train_loss = sums["loss"] / sums["n"]
            train_parts = {name: sums[name] / sums["n"] for name in PARTS}
            test_loss, test_parts = self.test_loss(beta)
            self.epoch += 1
            self._plan = None
            if self.config.epoch_selection == "held_out" and self.keeps_best and test_loss is not None \
                    and math.isfinite(test_loss):
                self._keep_if_best(-test_loss, test_losses=self._test_losses)
            record = {"epoch": self.epoch, "step": self.step, "kl_weight": beta,
                      "learning_rate": float(self.optimizer.param_groups[0]["lr"]),
                      "train_loss": train_loss, **{f"train_{k}": v for k, v in train_parts.items()},
                      "test_loss": test_loss, **{f"test_{k}": v for k, v in test_parts.items()},
                      "noise_std": model.noise_std}
            self.elapsed += time.perf_counter() - started
            record["elapsed"] = self.elapsed
            self.history.append(record)
            diagnostics = None
            every = self.correlate_every
            if every and (self.epoch % every == 0 or self.epoch == target):
                diagnostics = self.correlate()      # not counted as training time
            self._last_good = self._snapshot()
            event = self._event("epoch", target, train_loss=train_loss, train_parts=train_parts,
                                test_loss=test_loss, test_parts=test_parts, kl_weight=beta,
                                diagnostics=diagnostics)
            if checkpoint_path is not None and checkpoint_every and self.epoch % checkpoint_every == 0 and main:
                self.save(checkpoint_path)
            yield event
        if checkpoint_path is not None and main:
            self.save(checkpoint_path)
        yield self._event("finished", target, message=f"finished {self.epoch} epochs")

    def epoch_plan(self) -> torch.Tensor:
        return self._source.epoch_plan(self.generator)

    def _event(self, kind: str, target: int, **values: Any) -> TrainEvent:
        return TrainEvent(kind=kind, epoch=self.epoch, step=self.step, epochs_total=target,
                          elapsed=self.elapsed, **values)

    def _diverged(self) -> None:
        step, epoch = self.step + 1, self.epoch + 1  # before the state (and its counters) is restored
        self._restore_snapshot(self._last_good)
        raise TrainingDiverged(
            f"the loss became NaN/Inf at step {step} (epoch {epoch}); the model was "
            f"put back to its state after epoch {self.epoch}. Likely causes: the learning rate "
            f"({self.config.learning_rate:g}) is too high — try 10× lower — or the data are unscaled "
            f"(normalise={self.config.normalise}) or hold extreme values")

    # -- the last good state, put back after a NaN/Inf loss ------------------------------------
    def _snapshot(self) -> dict[str, Any]:
        return {
            "model": copy.deepcopy(self.model.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "rng": self.generator.get_state(),
            "device_rng": None if self.device_generator is self.generator else self.device_generator.get_state(),
            "epoch": self.epoch, "step": self.step, "history": len(self.history),
        }

    def _restore_snapshot(self, snap: dict[str, Any]) -> None:
        self.model.load_state_dict(snap["model"])
        self.optimizer.load_state_dict(snap["optimizer"])
        self.generator.set_state(snap["rng"])
        if snap["device_rng"] is not None:
            self.device_generator.set_state(snap["device_rng"])
        self.epoch, self.step = snap["epoch"], snap["step"]
        del self.history[snap["history"]:]
        self._plan = None
        self._position = 0

    # -- checkpoints ----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything needed to continue or to use the model, as plain values and tensors
        (what a checkpoint file holds, see :mod:`.checkpoint`; :func:`.trainer_state.state_of`)."""
        return trainer_state.state_of(self)

    @classmethod
    def from_state(cls, state: dict[str, Any], data: Any = None, *, com_magnitude: Any = None,
                   com_angle: Any = None, **changes: Any) -> Trainer:
        """A trainer rebuilt from :meth:`state` (e.g. read from a checkpoint file;
        :func:`.trainer_state.from_state`).

        No original argument is needed: the configuration, geometry, data scale and split are
        in the state. Pass the same ``data`` to continue training (``run()`` continues exactly);
        without data the trainer still offers ``model``, ``history`` and ``save``. ``changes``
        may set training parameters (``epochs``, ``device``, ``threads``, ``correlate_every``,
        ``epoch_selection`` …) but not the architecture nor what defines the data split.
        Anything inconsistent in ``state`` is a ValueError in one sentence (never an IndexError
        or a RuntimeError from deep inside).
        """
        return trainer_state.from_state(cls, state, data, com_magnitude=com_magnitude, com_angle=com_angle,
                                        **changes)

    def save(self, path: Any) -> str:
        """Write a checkpoint file atomically (:func:`.checkpoint.write_checkpoint`)."""
        return checkpoint.write_checkpoint(self.state(), path)

    @classmethod
    def load(cls, path: Any, data: Any = None, **kwargs: Any) -> Trainer:
        """A trainer from a checkpoint file (see :meth:`from_state` for the arguments)."""
        return cls.from_state(checkpoint.read_checkpoint(path), data, **kwargs)


def resolve_likelihood(config: RVAEConfig, data: Any, index: Any = None) -> str:
    """The likelihood a training with ``config`` uses on ``data``: ``config.likelihood``, or for
    ``"auto"`` :data:`~.config.COUNT_LIKELIHOOD` when the data are counts (non-negative whole
    numbers) and ``"gaussian"`` otherwise. A count likelihood asked for data that are not
    counts is a ValueError."""
    patterns = as_patterns(data)
    index = np.arange(patterns.n_positions) if index is None else np.asarray(index)
    if config.likelihood == "auto":
        return COUNT_LIKELIHOOD if looks_like_counts(patterns, index, seed=config.seed) else "gaussian"
    if config.likelihood in COUNT_LIKELIHOODS and not looks_like_counts(patterns, index, seed=config.seed):
        raise ValueError(f"likelihood={config.likelihood!r} needs counts (non-negative whole numbers); these "
                         "data are not (mean-subtracted or scaled?): use likelihood='gaussian'")
    return config.likelihood


def load_checkpoint(path: Any, data: Any = None, *, com_magnitude: Any = None, com_angle: Any = None,
                    **changes: Any) -> Trainer:
    """A :class:`Trainer` restored from a checkpoint file (:meth:`Trainer.load`)."""
    return Trainer.load(path, data, com_magnitude=com_magnitude, com_angle=com_angle, **changes)

