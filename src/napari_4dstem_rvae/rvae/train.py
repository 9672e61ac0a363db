"""Training as a generator of progress events: stoppable, seeded, resumable.

>>> trainer = Trainer(dataset, RVAEConfig(epochs=50))
>>> for event in trainer.run():       # stop any time: break, .close(), or a threading.Event
...     print(event.epoch, event.train_loss)

Randomness comes only from the trainer's own generators (a ``torch.Generator`` for
shuffling, pixel subsets and posterior samples; a ``numpy.random.Generator`` for the
train/test split), all derived from ``config.seed``: torch's global generator, default
dtype and flags are never touched. A requested thread count is set while the generator
runs and restored when it finishes, is closed or is stopped.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .config import RVAEConfig
from .data import Patterns, as_patterns, check_finite
from .diagnostics import Diagnostics, correlate
from .infer import LatentMaps, encode
from .model import RVAE

#: Training sets of lazy data up to this size are read into memory once; larger ones are
#: streamed from the dask array every epoch, a few blocks of scan rows at a time.
IN_MEMORY_BYTES = 2 * 2**30
#: Test patterns used for the test loss (a fixed random subset when there are more).
MAX_TEST_PATTERNS = 2048
#: Blocks of scan rows shuffled together when streaming.
SHUFFLE_BLOCKS = 4

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


def _mask(mask: Any, shape: tuple[int, int], name: str) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise ValueError(f"{name} has shape {mask.shape}, expected {tuple(shape)}")
    if mask.dtype != bool:
        if not np.isin(mask, (0, 1)).all():
            raise ValueError(f"{name} must be boolean (or 0/1), got values other than 0 and 1")
        mask = mask.astype(bool)
    return mask


def n_test_of(n_chosen: int, test_fraction: float) -> int:
    """Test positions held out of ``n_chosen``: ``test_fraction`` of them, leaving at least one
    for training."""
    return max(0, min(int(round(test_fraction * n_chosen)), n_chosen - 1))


def split_positions(roi_mask: np.ndarray | None, n_positions: int, test_fraction: float,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted flat indices of the training and test positions (``numpy.random.default_rng(seed)``)."""
    chosen = np.arange(n_positions) if roi_mask is None else np.flatnonzero(roi_mask.ravel())
    rng = np.random.default_rng(seed)
    order = rng.permutation(chosen)
    n_test = n_test_of(chosen.size, test_fraction)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


class _Source:
    """Training patterns: in memory (numpy view or a loaded copy) or streamed from dask."""

    def __init__(self, patterns: Patterns, train_index: np.ndarray):
        self.patterns = patterns
        self.train_index = train_index
        nbytes = train_index.size * patterns.n_det * 4
        self.streamed = patterns.is_lazy and nbytes > IN_MEMORY_BYTES
        self.memory: torch.Tensor | None = None
        self.lookup: np.ndarray | None = None      # flat index → row of `memory` (loaded copies)
        self.cache: dict[int, tuple[int, torch.Tensor]] = {}
        nx = patterns.scan_shape[1]
        if not patterns.is_lazy and patterns.array.dtype == np.float32 and patterns.array.flags.c_contiguous:
            # zero copy: index the user's array directly
            self.memory = torch.from_numpy(patterns.flat())
        elif not self.streamed:
            loaded = patterns.read(train_index)
            check_finite(loaded, 0, nx, train_index)
            self.memory = torch.from_numpy(loaded)
            self.lookup = np.full(patterns.n_positions, -1, np.int64)
            self.lookup[train_index] = np.arange(train_index.size)
        self.rows = patterns.rows_per_block()
        # block number of every training position (blocks of `rows` scan rows)
        self.block_of = (train_index // nx) // self.rows

    def epoch_plan(self, generator: torch.Generator) -> torch.Tensor:
        """Order of the training positions for one epoch (flat probe indices)."""
        n = self.train_index.size
        if not self.streamed:
            return torch.from_numpy(self.train_index)[torch.randperm(n, generator=generator)]
        # Streamed: shuffle blocks, then positions within groups of SHUFFLE_BLOCKS blocks, so a
        # batch needs only the blocks of one or two groups.
        blocks = np.unique(self.block_of)
        block_order = blocks[torch.randperm(blocks.size, generator=generator).numpy()]
        plan = []
        for g in range(0, block_order.size, SHUFFLE_BLOCKS):
            members = np.flatnonzero(np.isin(self.block_of, block_order[g:g + SHUFFLE_BLOCKS]))
            plan.append(self.train_index[members[torch.randperm(members.size, generator=generator).numpy()]])
        return torch.from_numpy(np.concatenate(plan))

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """float32 ``(B, n_det)`` patterns (CPU) at the flat probe indices."""
        if self.memory is not None:
            if self.lookup is None:
                return self.memory[index]
            return self.memory[torch.from_numpy(self.lookup[index.numpy()])]
        idx = index.numpy()
        nx = self.patterns.scan_shape[1]
        needed = np.unique((idx // nx) // self.rows)
        for block in list(self.cache):
            if block not in needed and len(self.cache) > 2 * SHUFFLE_BLOCKS:
                del self.cache[block]
        out = np.empty((idx.size, self.patterns.n_det), np.float32)
        for block in needed:
            if block not in self.cache:
                r0 = int(block) * self.rows
                r1 = min(self.patterns.scan_shape[0], r0 + self.rows)
                data = self.patterns.array[r0:r1]
                if hasattr(data, "compute"):
                    data = data.compute()
                data = np.asarray(data, dtype=np.float32).reshape(-1, self.patterns.n_det)
                check_finite(data, r0 * nx, nx)
                self.cache[int(block)] = (r0 * nx, torch.from_numpy(data))
            first, data = self.cache[int(block)]
            sel = (idx // nx) // self.rows == block
            out[sel] = data[torch.from_numpy(idx[sel] - first)].numpy()
        return torch.from_numpy(out)


def _scale_of(patterns: Patterns, index: np.ndarray, det_mask: np.ndarray | None) -> float:
    """Standard deviation of the patterns at ``index`` (inside the detector mask), in one
    streamed pass (lazy data block of scan rows by block); raises for NaN/Inf patterns."""
    count, total, total_sq = 0, 0.0, 0.0
    nx = patterns.scan_shape[1]
    pixel = None if det_mask is None else np.flatnonzero(det_mask.ravel())

    def blocks():
        if not patterns.is_lazy:
            for start in range(0, index.size, 4096):
                chunk = index[start:start + 4096]
                yield chunk, patterns.take(chunk)
            return
        wanted = np.zeros(patterns.n_positions, bool)
        wanted[index] = True
        for first, stop, block in patterns.iter_blocks():
            keep = wanted[first:stop]
            if keep.any():
                yield np.arange(first, stop)[keep], block[keep]

    for chunk, block in blocks():
        check_finite(block, 0, nx, chunk)
        if pixel is not None:
            block = block[:, pixel]
        block = block.astype(np.float64)
        count += block.size
        total += float(block.sum())
        total_sq += float((block * block).sum())
    mean = total / count
    var = max(total_sq / count - mean * mean, 0.0)
    return math.sqrt(var)


def signal_rms(patterns: Patterns, index: np.ndarray, det_mask: np.ndarray | None, seed: int,
               fallback: float, n_sample: int = 1024, n_components: int = 16) -> float:
    """RMS per pixel of the signal in the patterns at ``index``: the variance in the leading
    ``n_components`` principal components above the noise floor (the median eigenvalue),
    from a random sample of ``n_sample`` patterns. ``fallback`` when it cannot be told."""
    rng = np.random.default_rng(seed + 104729)
    if index.size < 2 * n_components:
        return fallback
    sample = np.sort(rng.choice(index, size=min(n_sample, index.size), replace=False))
    x = patterns.read(sample).astype(np.float64)
    if det_mask is not None:
        x = x[:, det_mask.ravel()]
    x -= x.mean(0)
    gram = x @ x.T                      # n × n: cheaper than the pixel covariance
    eig = np.sort(np.linalg.eigvalsh(gram))[::-1] / (len(x) - 1)
    eig = eig[:len(x) - 1]              # centring removes one dimension
    noise_floor = float(np.median(eig))
    signal = float(np.clip(eig[:n_components] - noise_floor, 0, None).sum())
    if not signal > 0:
        return fallback
    return math.sqrt(signal / x.shape[1])


def _adam(parameters: list[torch.nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam, fused where torch supports it for the device (about 8× faster steps on CPU for
    this model's ~10⁶ parameters; the same update)."""
    try:
        return torch.optim.Adam(parameters, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(parameters, lr=lr)


def _plain(value: Any) -> Any:
    """JSON-like plain values (for provenance stored in checkpoints)."""
    import json

    return json.loads(json.dumps(value, default=str))


class Trainer:
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
                 com_angle: Any = None, _state: dict[str, Any] | None = None):
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
        self.epoch = 0
        self.step = 0
        self.elapsed = 0.0
        self._plan: torch.Tensor | None = None
        self._position = 0
        self._running = False
        if _state is not None:
            self._restore(_state, data is not None)
        else:
            if self.patterns is None:
                raise ValueError("data is required to create a Trainer (or use load_checkpoint)")
            self._setup_new(roi_mask, det_mask)
        self.com_magnitude = self._com_map(com_magnitude, "com_magnitude")
        self.com_angle = self._com_map(com_angle, "com_angle")
        if self.patterns is not None:
            self._source = _Source(self.patterns, self.train_index)
        self.optimizer = _adam([p for p in self.model.parameters() if p.requires_grad], config.learning_rate)
        if _state is not None and _state.get("optimizer"):
            self.optimizer.load_state_dict(_state["optimizer"])
        self._last_good = self._snapshot()

    # -- set-up ----------------------------------------------------------------------------
    def _setup_new(self, roi_mask: Any, det_mask: Any) -> None:
        cfg, patterns = self.config, self.patterns
        self.scan_shape, self.det_shape = patterns.scan_shape, patterns.det_shape
        self.roi_mask = _mask(roi_mask, self.scan_shape, "roi_mask")
        if self.roi_mask is not None and not self.roi_mask.any():
            raise ValueError("roi_mask selects no probe positions: draw a region over the scan "
                             "(or pass None to train on every position)")
        det = _mask(det_mask, self.det_shape, "det_mask")
        n_det = self.det_shape[0] * self.det_shape[1] if det is None else int(det.sum())
        if cfg.latent_dim >= n_det:
            raise ValueError(f"latent_dim={cfg.latent_dim} must be smaller than the number of detector "
                             f"pixels used ({n_det})")
        self.train_index, self.test_index = split_positions(
            self.roi_mask, patterns.n_positions, cfg.test_fraction, cfg.seed)
        if cfg.latent_dim > self.train_index.size:
            raise ValueError(f"latent_dim={cfg.latent_dim} is more than the {self.train_index.size} "
                             f"training positions: use fewer latents or a larger region")
        scale = 1.0
        if cfg.normalise != "none":
            scale = _scale_of(patterns, self.train_index, det)
            if not scale > 0:
                raise ValueError("data: the training patterns are all equal (zero standard deviation); "
                                 "there is nothing to learn")
            if cfg.normalise == "signal":
                scale = signal_rms(patterns, self.train_index, det, cfg.seed, fallback=scale)
        else:
            for first, _, block in patterns.iter_blocks() if patterns.is_lazy else [
                    (0, 0, patterns.take(self.train_index))]:
                check_finite(block, first, self.scan_shape[1],
                             None if patterns.is_lazy else self.train_index)
        center = cfg.center
        if center is None and patterns.calibration is not None and patterns.calibration.det_origin:
            center = tuple(patterns.calibration.det_origin)
        self.model = self._new_model(det, center, scale)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.device_generator = self._device_generator(cfg.seed)
        self.calibration = patterns.calibration
        self.provenance = tuple(_plain(list(patterns.provenance)))
        self.source = patterns.source

    def _new_model(self, det: Any, center: Any, scale: float) -> RVAE:
        model = RVAE(self.config, self.det_shape, det, center, scale)
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
        old_threads = torch.get_num_threads()
        self._running = True
        try:
            if self.config.threads is not None:
                torch.set_num_threads(int(self.config.threads))
            yield from self._run(target, stop, step_events, checkpoint_path, checkpoint_every)
        finally:
            self._running = False
            if torch.get_num_threads() != old_threads:
                torch.set_num_threads(old_threads)

    def _run(self, target: int, stop: threading.Event | None, step_events: bool,
             checkpoint_path: Any, checkpoint_every: int) -> Iterator[TrainEvent]:
        cfg, model = self.config, self.model
        model.train()
        n_pixels = model.n_pixels
        subset = cfg.pixels_per_step is not None and cfg.pixels_per_step < n_pixels
        while self.epoch < target:
            if self._plan is None:
                self._plan = self.epoch_plan()
                self._position = 0
                self._epoch_sums = {"loss": 0.0, **dict.fromkeys(PARTS, 0.0), "n": 0}
            beta = self.kl_weight_at(self.epoch)
            while self._position < self._plan.numel():
                if stop is not None and stop.is_set():
                    if checkpoint_path is not None:
                        self.save(checkpoint_path)
                    yield self._event("stopped", target, message=(
                        f"stopped in epoch {self.epoch + 1} after step {self.step}; run again to continue"))
                    return
                started = time.perf_counter()
                index = self._plan[self._position:self._position + cfg.batch_size]
                x = model.flatten(self._source.batch(index).to(self.device, non_blocking=True))
                pixels = None
                if subset:
                    pixels = torch.randperm(n_pixels, generator=self.generator)[:cfg.pixels_per_step]
                    pixels = pixels.to(self.device)
                lr = self.learning_rate_at(self.epoch + self._position / self._plan.numel())
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                loss, parts = model.loss(x, self.device_generator, pixels, beta)
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    self._diverged()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
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
            record = {"epoch": self.epoch, "step": self.step, "kl_weight": beta,
                      "learning_rate": float(self.optimizer.param_groups[0]["lr"]),
                      "train_loss": train_loss, **{f"train_{k}": v for k, v in train_parts.items()},
                      "test_loss": test_loss, **{f"test_{k}": v for k, v in test_parts.items()},
                      "noise_std": model.noise_std}
            self.elapsed += time.perf_counter() - started
            record["elapsed"] = self.elapsed
            self.history.append(record)
            diagnostics = None
            if cfg.correlate_every and (self.epoch % cfg.correlate_every == 0 or self.epoch == target):
                diagnostics = self.correlate()      # not counted as training time
            self._last_good = self._snapshot()
            event = self._event("epoch", target, train_loss=train_loss, train_parts=train_parts,
                                test_loss=test_loss, test_parts=test_parts, kl_weight=beta,
                                diagnostics=diagnostics)
            if checkpoint_path is not None and checkpoint_every and self.epoch % checkpoint_every == 0:
                self.save(checkpoint_path)
            yield event
        if checkpoint_path is not None:
            self.save(checkpoint_path)
        yield self._event("finished", target, message=f"finished {self.epoch} epochs")

    def epoch_plan(self) -> torch.Tensor:
        return self._source.epoch_plan(self.generator)

    def _event(self, kind: str, target: int, **values: Any) -> TrainEvent:
        return TrainEvent(kind=kind, epoch=self.epoch, step=self.step, epochs_total=target,
                          elapsed=self.elapsed, **values)

    def _diverged(self) -> None:
        self._restore_snapshot(self._last_good)
        raise TrainingDiverged(
            f"the loss became NaN/Inf at step {self.step + 1} (epoch {self.epoch + 1}); the model was "
            f"put back to its state after epoch {self.epoch}. Likely causes: the learning rate "
            f"({self.config.learning_rate:g}) is too high — try 10× lower — or the data are unscaled "
            f"(normalise={self.config.normalise}) or hold extreme values")

    @torch.no_grad()
    def test_loss(self, kl_weight: float | None = None) -> tuple[float | None, dict[str, float]]:
        """Loss on the held-out positions (≤ 2048 of them), with the same pixel subset and noise
        every call (own generator), so values are comparable between epochs."""
        if self.n_test == 0:
            return None, {}
        beta = self.kl_weight_at(max(self.epoch - 1, 0)) if kl_weight is None else kl_weight
        gen = torch.Generator().manual_seed(self.config.seed + 7919)
        index = self.test_index
        if index.size > MAX_TEST_PATTERNS:
            index = np.sort(index[torch.randperm(index.size, generator=gen)[:MAX_TEST_PATTERNS].numpy()])
        if not hasattr(self, "_test_patterns") or self._test_patterns[0] is not index and not np.array_equal(
                self._test_patterns[0], index):
            self._test_patterns = (index, torch.from_numpy(self.patterns.read(index)))
            check_finite(self._test_patterns[1].numpy(), 0, self.scan_shape[1], index)
        data = self._test_patterns[1]
        model = self.model
        was = model.training
        model.eval()
        n_pixels = model.n_pixels
        pixels = None
        if self.config.pixels_per_step is not None and self.config.pixels_per_step < n_pixels:
            pixels = torch.randperm(n_pixels, generator=gen)[:self.config.pixels_per_step]
            pixels = pixels.to(self.device)
        dev_gen = gen if self.device.type == "cpu" else torch.Generator(self.device).manual_seed(self.config.seed + 7919)
        total, sums, n = 0.0, dict.fromkeys(PARTS, 0.0), 0
        for start in range(0, data.shape[0], 256):
            x = model.flatten(data[start:start + 256].to(self.device))
            with torch.no_grad():
                loss, parts = model.loss(x, dev_gen, pixels, beta)
            b = x.shape[0]
            total += float(loss) * b
            for name in PARTS:
                sums[name] += float(parts[name].detach()) * b
            n += b
        model.train(was)
        return total / n, {name: value / n for name, value in sums.items()}

    # -- maps and diagnostics ------------------------------------------------------------------
    def maps(self, batch_size: int = 256) -> LatentMaps:
        """Encode every probe position (the whole scan, not only the training region)."""
        if self.patterns is None:
            raise ValueError("this trainer has no data: use infer.encode(model, data)")
        return encode(self.model, self.patterns, batch_size)

    def correlate(self) -> Diagnostics:
        """Maps now and their correlation with the COM maps; keeps the best state if asked."""
        maps = self.maps()
        diag = correlate(maps, self.com_magnitude, self.com_angle, epoch=self.epoch)
        self.diagnostics.append(diag)
        if self.history and self.history[-1]["epoch"] == self.epoch:
            self.history[-1].update(max_abs_r=diag.max_abs_r, angle_rho=diag.angle_rho)
        if self.config.keep_best and np.isfinite(diag.max_abs_r) and (
                self.best is None or diag.max_abs_r > self.best["max_abs_r"]):
            self.best = {"epoch": self.epoch, "max_abs_r": diag.max_abs_r,
                         "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()}}
        return diag

    def use_best(self) -> bool:
        """Load the kept best-|r| model state (if any) into ``self.model``; True if loaded."""
        if self.best is None:
            return False
        self.model.load_state_dict(self.best["model"])
        return True

    # -- state ------------------------------------------------------------------------------------
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

    def state(self) -> dict[str, Any]:
        """Everything needed to continue or to use the model, as plain values and tensors."""
        from .checkpoint import trainer_state

        return trainer_state(self)

    def save(self, path: Any) -> str:
        """Write a checkpoint (see :func:`~napari_4dstem_rvae.rvae.checkpoint.save_checkpoint`)."""
        from .checkpoint import save_checkpoint

        return save_checkpoint(self, path)

    def _restore(self, state: dict[str, Any], has_data: bool) -> None:
        from .checkpoint import restore_trainer

        restore_trainer(self, state, has_data)
