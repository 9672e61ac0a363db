"""Every hyperparameter of an rVAE run in one frozen dataclass (saved in checkpoints)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..dataset import plain_fields
from ..options import option
from .selection import DEFAULT as DEFAULT_SELECTION
from .selection import EPOCH_SELECTIONS

LIKELIHOODS = ("auto", "gaussian", "gaussian_learned", "anscombe", "poisson")
ANGLE_POSTERIORS = ("projected_normal", "gaussian")
#: What ``likelihood="auto"`` picks for counts (non-negative integers) — chosen by measurement
#: (benchmarks/bench_rvae_quality.py, graphene at 10⁵ e⁻/pattern, latent–COM |r|): Gaussian on
#: the counts 0.94, Poisson 0.82, Anscombe 0.67 — the count likelihoods weigh the dark-field
#: pixels by their information, and the latents then follow the dark-field structure rather
#: than the COM. Counts are still recognised: the novelty map uses their Poisson noise.
COUNT_LIKELIHOOD = "gaussian"
ACTIVATIONS = ("tanh", "relu", "gelu", "silu")
NORMALISATIONS = ("auto", "signal", "std", "none")
LR_SCHEDULES = ("cosine", "constant")
DEVICES = ("auto", "cpu", "cuda", "mps")
MAX_LATENT_DIM = 32


@dataclass(frozen=True)
class RVAEConfig:
    """Hyperparameters of the rotationally invariant VAE and of its training.

    Model
    -----
    latent_dim
        Number of content latents *k* (besides the angle and the optional shift).
    learn_shift
        Also infer a shift of each pattern (detector pixels).
    encoder_hidden, decoder_hidden
        Widths of the hidden layers (the study: two layers of 128 tanh units each).
    align_content
        Encode the content latents from the pattern turned back by its inferred angle (and
        shift): a pose encoder (``encoder_hidden``) gives the angle, a content encoder
        (``content_hidden``) reads the aligned pattern, so the content does not have to be
        learned rotation-invariant from the data. ``False``: one encoder for everything, as
        in the study.
    content_hidden
        Hidden layers of the content encoder when ``align_content``; ``None``: as
        ``encoder_hidden``; ``()``: linear (the latent means are then a linear projection
        of the aligned pattern, which keeps them proportional to the physical quantity
        instead of reshaping them towards the Gaussian prior).
    activation
        ``"tanh"`` (study), ``"relu"``, ``"gelu"`` or ``"silu"``.
    likelihood
        ``"auto"`` (default): :data:`COUNT_LIKELIHOOD` for counts (non-negative integers, as
        detectors give them — measured best, see there), else ``"gaussian"``; the trainer
        resolves it from the data and records the choice. ``"gaussian"``: fixed noise standard deviation ``noise_std`` (in
        units of the normalised data). ``"gaussian_learned"``: one noise standard deviation
        learned with the model (its start value is ``noise_std``). ``"anscombe"``: counts
        through the variance-stabilising transform 2√(y + 3/8), whose noise is Gaussian with
        unit variance; the likelihood's σ is ``noise_std`` but never below that known noise.
        ``"poisson"``: the exact Poisson likelihood of the counts, the rate decoded as the
        mean pattern × exp(decoder output). See :mod:`.likelihood`.
    noise_std
        Noise standard deviation of the Gaussian likelihood, as a multiple of the RMS of the
        signal (see ``normalise``); for ``"anscombe"`` never below the known Poisson noise (1
        in Anscombe units). The default 4.5 treats the data as noisier than the signal, which
        makes one latent dominant and follow the physics (a β-VAE with β ≈ 20 in effect);
        chosen by measurement on simulated graphene (1 and 2 let several latents share the
        COM magnitude and the maps degrade with longer training; 3–6 reach latent–COM
        |r| ≈ 0.99 in 2,400 steps; see benchmarks/bench_rvae.py).
    angle_posterior
        ``"projected_normal"`` (default): the angle is the direction of a draw from a 2D
        normal — a distribution on the circle with a proper KL to the prior and a
        concentration mapped as the angle's uncertainty (:mod:`.circular`); ``"gaussian"``:
        a Gaussian on the unwrapped angle (version 0.1, the study's).
    rotation_prior
        ``None`` (default): a uniform prior over the circle (every orientation equally
        likely); else a concentrated prior about 0: von Mises of concentration 1/σ² for the
        projected normal, Gaussian N(0, σ²) for the Gaussian angle (σ in rad).
    angle_symmetry
        n > 1 adds a map of the angle modulo 2π/n (the lattice's n-fold symmetry, e.g. 6
        for graphene), in which rotations by a symmetry of the lattice look alike.
    shift_prior
        Standard deviation (detector pixels) of the Gaussian prior of each shift.
    kl_weight
        Weight β of the KL terms (1 = the evidence lower bound).
    kl_warmup_epochs
        The KL weight rises linearly from 0 to ``kl_weight`` over these epochs.
    center
        ``(row, col)`` of the rotation centre on the detector (the direct beam); ``None``:
        the calibration's ``det_origin`` or else the array centre ``((ny−1)/2, (nx−1)/2)``.

    Training
    --------
    epochs
        Passes over the training positions; ``None``: enough for about ``steps``
        optimisation steps (at least 10 and at most 2000 epochs), so that small and large
        scans are trained alike.
    steps
        Optimisation steps aimed at when ``epochs`` is ``None``.
    batch_size, learning_rate
        Adam optimiser.
    lr_schedule
        ``"cosine"``: the learning rate falls from ``learning_rate`` to
        ``learning_rate · lr_final`` along a half cosine over ``epochs`` (the maps settle
        instead of jittering at the end); ``"constant"``: no change.
    lr_final
        Final fraction of the learning rate for the cosine schedule.
    pixels_per_step
        Detector pixels decoded per step, drawn at random each step (an unbiased estimate
        of the reconstruction term, scaled to the full pixel count); ``None``: all pixels.
    test_fraction
        Fraction of the training positions held out for the test loss (0 for none).
    train_positions
        Positions drawn from the region for training and the held-out loss, as a subsample
        stratified over the scan when the region is larger (a huge scan need not be read
        whole to train); ``None``: as many as the step budget visits (``steps × batch_size``,
        153,600 by default), or all with ``epochs`` given. The maps always cover every position.
    seed
        Seed of the run's own random generators (split, shuffling, sampling).
    normalise
        How the encoder's inputs are scaled (the scale is stored with the model and outputs
        are returned in the original units): ``"signal"`` divides by the RMS of the *signal*
        per pixel — the variance of the training patterns in their leading principal
        components above the noise floor; ``"std"`` divides by the standard deviation of the
        training patterns (unit-variance inputs whatever the noise); ``"none"`` leaves the
        data as they are; ``"auto"`` (default): ``"std"`` for counts, ``"signal"`` otherwise.
        The likelihood's σ does not depend on it (``noise_std``).
    device
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"`` or ``"mps"``.
    threads
        CPU threads for torch during training (restored afterwards); ``None``: unchanged.
    bf16
        Autocast the decoder to bfloat16 (mixed precision: faster on CPUs with AMX/AVX-512
        BF16 and on recent GPUs; the loss and the encoder stay float32). Not measured on a GPU.
    correlate_every
        Every N epochs (and at the last one) encode the whole scan: the maps, and their
        correlations with the COM maps when given, come with that epoch's event; 0: as the
        ``epoch_selection`` rule needs (see :mod:`.selection`).
    epoch_selection
        Which epoch's model gives the maps (:mod:`.selection`): ``"held_out"`` (default: the
        lowest loss on the held-out positions), ``"com_correlation"`` (the study's rule: the
        state whose latent follows the COM magnitude best, when COM maps are given) or
        ``"last"``.
    restarts
        Start this many models (other initial weights, the same data split), train each for
        ``restart_fraction`` of the training, and continue the one with the lowest held-out
        loss (a guard against poor local optima).
    restart_fraction
        Fraction of the training the restarts compete for.
    """

    latent_dim: int = option(2, "content latents, besides the angle and the shifts (the study used 2)", flag="latent",
                             label="content latents", minimum=1, maximum=MAX_LATENT_DIM)
    learn_shift: bool = option(False, "also learn a shift of each pattern", flag="shift", label="learn shifts")
    encoder_hidden: tuple[int, ...] = (128, 128)
    decoder_hidden: tuple[int, ...] = (128, 128)
    align_content: bool = True
    content_hidden: tuple[int, ...] | None = None
    activation: str = "tanh"
    likelihood: str = option("auto", "noise model of the reconstruction: auto is a Gaussian with the counting-noise "
                             "scale for counts, chosen by measurement", choices=LIKELIHOODS, advanced=True)
    noise_std: float = 4.5
    angle_posterior: str = "projected_normal"
    rotation_prior: float | None = option(None, "standard deviation of the angle's prior about 0", unit="rad",
                                          none="uniform", maximum=100.0, step=0.1, advanced=True)
    angle_symmetry: int = option(1, "also map the angle modulo 360°/N, the lattice's N-fold symmetry (6 for "
                                 "graphene; 1: no such map)", flag="symmetry", minimum=1, maximum=12, advanced=True)
    shift_prior: float = 2.0
    kl_weight: float = 1.0
    kl_warmup_epochs: int = 0
    center: tuple[float, float] | None = None
    epochs: int | None = option(None, "passes over the training positions", none="about 2,400 optimisation steps",
                                minimum=0, maximum=100_000)
    steps: int = 2400
    batch_size: int = option(64, "patterns per optimisation step", minimum=1, maximum=65_536, advanced=True)
    learning_rate: float = option(2e-3, "Adam's learning rate (falls along a half cosine)", minimum=1e-6,
                                  maximum=1.0, step=1e-4, decimals=6, advanced=True)
    lr_schedule: str = "cosine"
    lr_final: float = 0.05
    pixels_per_step: int | None = 256
    test_fraction: float = 0.25
    train_positions: int | None = option(
        None, "train on N positions of the region, a subsample stratified over the scan; the maps cover the whole scan",
        none="as many as the step budget visits (153,600), every position with --epochs", minimum=0,
        maximum=2**31 - 1, advanced=True)
    seed: int = option(0, "seed of the run's own random generators (split, shuffling, sampling)", minimum=0,
                       maximum=2**31 - 1, advanced=True)
    normalise: str = "auto"
    device: str = option("auto", "where to train: auto (CUDA, then MPS, then CPU)", choices=DEVICES, advanced=True)
    threads: int | None = option(None, "CPU threads for training (restored afterwards)", none="torch's default",
                                 minimum=0, maximum=1024, advanced=True)
    bf16: bool = False
    correlate_every: int = option(0, "encode the whole scan every N epochs to follow the latent–COM |r| (0: as "
                                  "the epoch rule needs)", label="latent–COM |r| every", unit="epochs", minimum=0,
                                  maximum=100_000, advanced=True)
    epoch_selection: str = option(DEFAULT_SELECTION, "which epoch's model gives the maps: held_out (the lowest loss "
                                  "on the held-out positions), com_correlation (the study's rule: the epoch whose "
                                  "latent follows the COM magnitude best) or last", choices=EPOCH_SELECTIONS,
                                  label="keep the epoch by", advanced=True)
    restarts: int = option(1, "models started; the one with the lowest held-out loss continues", minimum=1,
                           maximum=16, advanced=True)
    restart_fraction: float = 0.15

    def steps_per_epoch(self, n_train: int) -> int:
        """Optimisation steps of one epoch over ``n_train`` training positions."""
        return max(1, math.ceil(int(n_train) / self.batch_size))

    def max_train_positions(self) -> int | None:
        """Positions (training and held-out) drawn from the region: ``train_positions``, or by
        default, when the training length is a step budget, as many as that budget visits
        (``steps × batch_size``: every drawn position is seen about once); all of them when
        ``epochs`` is given. Fewer than the region: a subsample stratified over the scan."""
        if self.train_positions is not None:
            return int(self.train_positions)
        return None if self.epochs is not None else self.steps * self.batch_size

    def epochs_for(self, n_train: int) -> int:
        """Epochs trained for ``n_train`` training positions: ``epochs``, or about ``steps``
        optimisation steps (at least 10 and at most 2000 epochs)."""
        if self.epochs is not None:
            return int(self.epochs)
        return int(min(2000, max(10, math.ceil(self.steps / self.steps_per_epoch(n_train)))))

    def __post_init__(self) -> None:
        def fail(name: str, expected: str) -> None:
            raise ValueError(f"RVAEConfig.{name} must be {expected}, got {getattr(self, name)!r}")

        for name in ("encoder_hidden", "decoder_hidden", "content_hidden"):
            value = getattr(self, name)
            if value is None and name == "content_hidden":
                continue
            if isinstance(value, int):
                value = (value,)
            value = tuple(int(v) for v in value)
            object.__setattr__(self, name, value)
            if (not value and name != "content_hidden") or (value and min(value) < 1):
                fail(name, "positive layer widths" + (" (at least one)" if name != "content_hidden" else ""))
        if isinstance(self.latent_dim, bool) or int(self.latent_dim) != self.latent_dim:
            fail("latent_dim", "an integer")
        if not 1 <= self.latent_dim <= MAX_LATENT_DIM:
            fail("latent_dim", f"between 1 and {MAX_LATENT_DIM} (a few content latents; the study used 2)")
        if self.activation not in ACTIVATIONS:
            fail("activation", f"one of {ACTIVATIONS}")
        if self.likelihood not in LIKELIHOODS:
            fail("likelihood", f"one of {LIKELIHOODS}")
        if not (self.noise_std > 0 and math.isfinite(self.noise_std)):
            fail("noise_std", "a positive number")
        if self.rotation_prior is not None and not (self.rotation_prior > 0 and math.isfinite(self.rotation_prior)):
            fail("rotation_prior", "a positive number of radians or None (uniform)")
        if self.angle_posterior not in ANGLE_POSTERIORS:
            fail("angle_posterior", f"one of {ANGLE_POSTERIORS}")
        if isinstance(self.angle_symmetry, bool) or int(self.angle_symmetry) != self.angle_symmetry \
                or not 1 <= self.angle_symmetry <= 12:
            fail("angle_symmetry", "an integer from 1 (none) to 12")
        if not (self.shift_prior > 0 and math.isfinite(self.shift_prior)):
            fail("shift_prior", "a positive number of detector pixels")
        if not (self.kl_weight >= 0 and math.isfinite(self.kl_weight)):
            fail("kl_weight", "a number ≥ 0")
        if self.kl_warmup_epochs < 0:
            fail("kl_warmup_epochs", "≥ 0")
        if self.center is not None:
            center = tuple(float(c) for c in self.center)
            if len(center) != 2 or not all(math.isfinite(c) for c in center):
                fail("center", "a (row, col) pair of pixels or None")
            object.__setattr__(self, "center", center)
        if self.epochs is not None and (isinstance(self.epochs, bool) or int(self.epochs) != self.epochs
                                        or self.epochs < 0):
            fail("epochs", "an integer ≥ 0 or None (from steps)")
        if self.steps < 1:
            fail("steps", "≥ 1")
        if self.batch_size < 1:
            fail("batch_size", "≥ 1")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            fail("learning_rate", "a positive number")
        if self.lr_schedule not in LR_SCHEDULES:
            fail("lr_schedule", f"one of {LR_SCHEDULES}")
        if not 0 <= self.lr_final <= 1:
            fail("lr_final", "in [0, 1]")
        if self.pixels_per_step is not None and self.pixels_per_step < 1:
            fail("pixels_per_step", "≥ 1 or None (all pixels)")
        if not 0 <= self.test_fraction < 1:
            fail("test_fraction", "in [0, 1)")
        if self.train_positions is not None and self.train_positions < 2:
            fail("train_positions", "at least 2 (or None)")
        if self.normalise not in NORMALISATIONS:
            fail("normalise", f"one of {NORMALISATIONS}")
        if self.device not in DEVICES:
            fail("device", f"one of {DEVICES}")
        if self.threads is not None and self.threads < 1:
            fail("threads", "≥ 1 or None")
        if self.correlate_every < 0:
            fail("correlate_every", "≥ 0")
        if self.epoch_selection not in EPOCH_SELECTIONS:
            fail("epoch_selection", f"one of {EPOCH_SELECTIONS}")
        if isinstance(self.restarts, bool) or int(self.restarts) != self.restarts or not 1 <= self.restarts <= 16:
            fail("restarts", "an integer from 1 to 16")
        if not 0 < self.restart_fraction < 1:
            fail("restart_fraction", "in (0, 1)")

    def replace(self, **changes: Any) -> RVAEConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (lists for tuples): safe for ``torch.load(weights_only=True)``, HDF5, JSON."""
        return plain_fields(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "the configuration") -> RVAEConfig:
        known = {f.name: f for f in dataclasses.fields(cls)}
        values = dict(values)
        if "keep_best" in values:  # version 0.1: keep_best=True was the study's rule
            keep = values.pop("keep_best")
            values.setdefault("epoch_selection", "com_correlation" if keep else "last")
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{source} has unknown rVAE parameters {unknown}; known: {sorted(known)}")
        kwargs = {}
        for key, value in values.items():
            if isinstance(value, list):
                value = tuple(value)
            kwargs[key] = value
        return cls(**kwargs)

    # Parameters that change the network's shape: a checkpoint can only be loaded into a
    # model with the same values.
    ARCHITECTURE = ("latent_dim", "learn_shift", "encoder_hidden", "decoder_hidden", "align_content",
                    "content_hidden", "activation", "likelihood", "angle_posterior")
