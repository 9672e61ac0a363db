"""How a training is judged: the held-out test loss, the maps of the whole scan and their
correlation with the COM maps, and the epoch-selection rule that keeps the best model state and
picks the epoch whose state the maps come from (:mod:`.selection`).

:class:`Evaluation` is a part of :class:`~napari_4dstem_rvae.rvae.train.Trainer` (a mixin): its
methods work on the trainer's own model, data, split, history and kept best state.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from . import selection
from .data import check_finite
from .diagnostics import Diagnostics, correlate
from .infer import LatentMaps, encode
from .runtime import PARTS

#: Test patterns used for the test loss (a fixed random subset when there are more).
MAX_TEST_PATTERNS = 2048


class Evaluation:
    """The test loss, maps, diagnostics and epoch selection of a
    :class:`~napari_4dstem_rvae.rvae.train.Trainer`, which sets the attributes below and
    provides ``kl_weight_at``, ``total_epochs`` and ``n_test``."""

    config: Any
    model: Any
    device: torch.device
    patterns: Any
    scan_shape: tuple[int, int]
    test_index: np.ndarray
    epoch: int
    history: list[dict[str, Any]]
    diagnostics: list[Diagnostics]
    best: dict[str, Any] | None
    selected_epoch: int | None
    com_magnitude: np.ndarray | None
    com_angle: np.ndarray | None

    # -- test loss ------------------------------------------------------------------------------
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
        losses, sums, n = [], dict.fromkeys(PARTS, 0.0), 0
        for start in range(0, data.shape[0], 256):
            x, target = model.prepare(data[start:start + 256].to(self.device))
            with torch.no_grad():
                each, parts = model.loss(x, target, dev_gen, pixels, beta, per_pattern=True)
            b = x.shape[0]
            losses.append(each.double().cpu())
            for name in PARTS:
                sums[name] += float(parts[name].detach()) * b
            n += b
        model.train(was)
        self._test_losses = torch.cat(losses)      # per pattern: paired comparisons between epochs
        return float(self._test_losses.mean()), {name: value / n for name, value in sums.items()}


    # -- maps and diagnostics ------------------------------------------------------------------
    def maps(self, batch_size: int = 256, novelty: bool = False, progress: Any = None) -> LatentMaps:
        """Encode every probe position (the whole scan, not only the training region);
        ``novelty``: with the novelty map; ``progress(done, total)``: patterns encoded."""
        if self.patterns is None:
            raise ValueError("this trainer has no data: use infer.encode(model, data)")
        return encode(self.model, self.patterns, batch_size, novelty=novelty, progress=progress)

    def correlate(self) -> Diagnostics:
        """Maps now and their correlation with the COM maps; keeps the best state if asked."""
        maps = self.maps()
        diag = correlate(maps, self.com_magnitude, self.com_angle, epoch=self.epoch)
        self.diagnostics.append(diag)
        if self.history and self.history[-1]["epoch"] == self.epoch:
            self.history[-1].update(max_abs_r=diag.max_abs_r, angle_rho=diag.angle_rho)
        if self.config.epoch_selection == "com_correlation" and self.keeps_best and np.isfinite(diag.max_abs_r):
            self._keep_if_best(diag.max_abs_r)
        return diag

    def _keep_if_best(self, score: float, test_losses: torch.Tensor | None = None) -> None:
        """Keep a copy of the model state if ``score`` (higher is better) beats the kept one."""
        if self.best is None or score > self.best["score"]:
            self.best = {"epoch": self.epoch, "score": float(score),
                         "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()}}
            if test_losses is not None:
                self.best["test_losses"] = test_losses.clone()

    def _worse_than_best(self) -> bool:
        """Held-out rule: whether the last epoch's held-out loss is above the kept minimum by more
        than twice its standard error (paired over the test patterns: same patterns, pixels and
        noise draws every epoch). A last state within the noise of the best is kept: training
        longer is not penalised for fluctuations."""
        kept = None if self.best is None else self.best.get("test_losses")
        last = getattr(self, "_test_losses", None)
        if kept is None or last is None or kept.shape != last.shape:
            return self.best is not None
        diff = last - kept
        se = float(diff.std()) / math.sqrt(max(diff.numel(), 1))
        return float(diff.mean()) > 2.0 * se

    def use_best(self) -> bool:
        """Load the kept best model state (if any) into ``self.model``; True if loaded."""
        if self.best is None:
            return False
        self.model.load_state_dict(self.best["model"])
        return True


    # -- the rule that picks the maps' epoch ------------------------------------------------------
    @property
    def correlate_every(self) -> int:
        """Epochs between two encodings of the whole scan (0: never), from the selection rule."""
        return selection.correlate_every(self.config, self.total_epochs, self.com_magnitude is not None)

    @property
    def keeps_best(self) -> bool:
        """Whether the selection rule keeps the best model state seen (see :mod:`.selection`)."""
        return selection.keeps_best(self.config, self.com_magnitude is not None, self.n_test > 0)

    def finish(self) -> int:
        """Apply the epoch-selection rule after training (the one rule of the CLI, the API and
        the Train widget, :mod:`.selection`): ``self.model`` then holds the chosen state.
        Returns the chosen epoch (also in :attr:`selected_epoch`)."""
        chosen = self.epoch
        if self.keeps_best:
            if self.config.epoch_selection == "com_correlation" and (
                    not self.diagnostics or self.diagnostics[-1].epoch != self.epoch):
                self.correlate()          # the final state competes with the kept one
            held_out = self.config.epoch_selection == "held_out"
            if self.best is not None and self.best["epoch"] != self.epoch and (not held_out or self._worse_than_best()):
                self.use_best()
                chosen = int(self.best["epoch"])
        self.selected_epoch = chosen
        return chosen

