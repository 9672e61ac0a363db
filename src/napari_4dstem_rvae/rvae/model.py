"""The rotationally invariant VAE: encoder, coordinate decoder, coordinate grid, loss.

Coordinate convention (the same for every run, so angles are comparable)
------------------------------------------------------------------------
Detector pixel ``(row, col)`` has coordinates ``x = col − c_col`` (right) and
``y = row − c_row`` (down), in pixels, about the rotation centre ``(c_row, c_col)``: the
direct beam (``config.center``, else the calibration's ``det_origin``, else the array centre
``((ny−1)/2, (nx−1)/2)``). Inside the network they are divided by ``scale`` = half the
larger detector side, so the grid spans about [−1, 1].

The decoder describes a *canonical* pattern ``f(u, z)``. A pattern with angle θ and shift
Δ = (Δx, Δy) (pixels, x right, y down) is the canonical pattern rotated by θ
**counter-clockwise as seen on screen** (rows drawn downwards, as napari and matplotlib's
``imshow`` do) about the centre and then moved by Δ:

    I(x) = f(R(θ)ᵀ (x − Δ), z),     R(θ) = [[cos θ, sin θ], [−sin θ, cos θ]]

(R(θ) is the counter-clockwise rotation in (x right, y down) coordinates). Rotating an input
pattern counter-clockwise by φ on screen therefore adds φ to its encoded angle.

Efficiency
----------
The first decoder layer acts on ``[u; z]``: ``W_u u + W_z z + b`` with ``u = Rᵀ(x − Δ)``
equals ``(W_u Rᵀ) x + (W_z z + b − W_u Rᵀ Δ)``: one small affine map per pattern (an
H×2 matrix and an H vector), applied to the fixed pixel grid. Per-pixel work is only that
2-input layer and the hidden layers; only pixels inside the detector mask, or a random
subset of them per step, are decoded.

Posterior and priors
--------------------
The pose encoder (an MLP on the pattern's pixels inside the mask) gives, per pattern: the
angle's mean as the direction of a 2-vector (``atan2``, so that the circle of orientations
is mapped without a seam) and its spread; the shift's mean and spread. With
``align_content`` (default) the pattern is then turned back to the canonical pose,
``D(u) = I(R(θ)u + Δ)`` (bilinear, differentiable), and a content encoder reads ``D`` to
give the content latents' means and spreads: they need not learn rotation invariance from
the data. Without it one MLP gives everything (the study's encoder). All posteriors are
Gaussian (reparameterised samples). KL terms:
content ``KL(N(μ, σ²) ‖ N(0, 1))``; angle ``KL(N(μ, σ²) ‖ N(0, s_θ²))`` or, with a
uniform rotation prior, ``log 2π − H[N(0, σ²)]``; shift ``KL(N(μ, σ²) ‖ N(0, s_Δ²))``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import circular
from .config import RVAEConfig
from .likelihood import (
    COUNT_LIKELIHOODS,
    anscombe,
    gaussian_nll,
    inverse_anscombe,
    poisson_nll,
)

_LOG_2PI = math.log(2 * math.pi)
# The angle's posterior spread is kept below this (rad): a wider Gaussian on the circle
# is no longer a Gaussian, and the uniform-prior KL formula assumes it is.
MAX_ANGLE_STD = 1.0
# The projected normal's concentration is kept above this (a circular spread ≤ ≈ 1 rad), as the
# Gaussian angle's spread is kept below MAX_ANGLE_STD: with an angle free to become uniform, a
# model of noisy patterns settles early on round templates that ignore the rotation.
MIN_CONCENTRATION = 1.5
#: Without gradients the decoder runs over at most this many (pattern, pixel) rows at a time:
#: its (rows, hidden) intermediates then stay small enough to be reused, and encoding a scan
#: runs about twice as fast as in one piece (measured: 4,096 windows of 32 × 32 px, 2 threads,
#: 5.8 s in batches of 256 patterns, 3.1 s in chunks of 16).
DECODE_ROWS = 16_384


def _activation(name: str) -> nn.Module:
    return {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}[name]()


def rotation_matrix(angle: torch.Tensor) -> torch.Tensor:
    """``(..., 2, 2)`` counter-clockwise (on screen) rotation in (x right, y down) coordinates."""
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], -2)


def pixel_grid(det_shape: tuple[int, int], center: tuple[float, float]) -> np.ndarray:
    """``(det_y·det_x, 2)`` coordinates ``(x, y)`` in pixels of every detector pixel (row-major)."""
    rows, cols = np.meshgrid(np.arange(det_shape[0], dtype=np.float64),
                             np.arange(det_shape[1], dtype=np.float64), indexing="ij")
    return np.stack([(cols - center[1]).ravel(), (rows - center[0]).ravel()], axis=1)


def gaussian_kl(mean: torch.Tensor, log_std: torch.Tensor, prior_std: float = 1.0) -> torch.Tensor:
    """``KL(N(mean, exp(log_std)²) ‖ N(0, prior_std²))`` element-wise, in nats."""
    var_ratio = torch.exp(2 * log_std) / prior_std**2
    return 0.5 * (var_ratio + mean**2 / prior_std**2 - 1.0 - torch.log(var_ratio))


def uniform_angle_kl(log_std: torch.Tensor) -> torch.Tensor:
    """``KL(N(μ, σ²) ‖ Uniform(circle))`` ≈ log 2π − ½ log(2πe σ²), for σ well below π."""
    return _LOG_2PI - 0.5 * (_LOG_2PI + 1.0) - log_std


class RVAE(nn.Module):
    """rVAE for diffraction patterns of shape ``det_shape``.

    Parameters
    ----------
    config
        :class:`RVAEConfig` (architecture, priors, likelihood).
    det_shape
        ``(det_y, det_x)``.
    det_mask
        Optional boolean ``(det_y, det_x)``: only these pixels are encoded and decoded.
    center
        Rotation centre ``(row, col)`` in pixels (see the module docstring).
    data_scale
        The data are divided by this before encoding; reconstructions are multiplied by it.
    """

    def __init__(self, config: RVAEConfig, det_shape: tuple[int, int], det_mask: Any = None,
                 center: tuple[float, float] | None = None, data_scale: float = 1.0,
                 offset: Any = None, log_mean: Any = None, init_seed: int | None = None,
                 noise: float | None = None, count_data: bool | None = None):
        super().__init__()
        if config.likelihood == "auto":  # the trainer resolves it from the data; alone, no data: Gaussian
            config = config.replace(likelihood="gaussian")
        self.config = config
        self.likelihood = config.likelihood
        self.counts = config.likelihood in COUNT_LIKELIHOODS
        self.det_shape = (int(det_shape[0]), int(det_shape[1]))
        if det_mask is None:
            det_mask = np.ones(self.det_shape, dtype=bool)
        det_mask = np.asarray(det_mask, dtype=bool)
        if det_mask.shape != self.det_shape:
            raise ValueError(f"det_mask has shape {det_mask.shape}, expected the detector shape {self.det_shape}")
        if det_mask.sum() < 4:
            raise ValueError(f"det_mask selects {int(det_mask.sum())} detector pixels; at least 4 are needed")
        if center is None:
            center = ((self.det_shape[0] - 1) / 2, (self.det_shape[1] - 1) / 2)
        self.center = (float(center[0]), float(center[1]))
        self.coord_scale = max(self.det_shape) / 2.0
        grid = pixel_grid(self.det_shape, self.center)[det_mask.ravel()] / self.coord_scale
        self.register_buffer("det_mask", torch.from_numpy(det_mask))
        self.register_buffer("pixel_index", torch.from_numpy(np.flatnonzero(det_mask.ravel())))
        self.register_buffer("coords", torch.from_numpy(grid.astype(np.float32)))
        self.register_buffer("data_scale", torch.tensor(float(data_scale), dtype=torch.float32))
        self.n_pixels = int(det_mask.sum())
        # the encoder's input: (T(pattern) − offset) / data_scale, T = Anscombe for counts
        offset = np.zeros(self.n_pixels) if offset is None else np.asarray(offset, np.float64).ravel()
        self.register_buffer("offset", torch.from_numpy(offset.astype(np.float32)))
        log_mean = np.zeros(self.n_pixels) if log_mean is None else np.asarray(log_mean, np.float64).ravel()
        self.register_buffer("log_mean", torch.from_numpy(log_mean.astype(np.float32)))  # Poisson: log mean counts
        # whether the data are detector counts (the novelty score then uses the Poisson deviance,
        # whatever likelihood trained the model)
        self.register_buffer("count_data", torch.tensor(self.counts if count_data is None else bool(count_data)))

        # Layers are created with torch's global generator, which is saved and restored here;
        # the weights are then drawn from a local generator seeded with config.seed.
        with torch.random.fork_rng(devices=[]):
            k = config.latent_dim
            self.n_shift = 2 if config.learn_shift else 0
            # angle: a 2-vector (projected normal) or a 2-vector direction and a log-std (Gaussian)
            self.circular = config.angle_posterior == "projected_normal"
            n_pose = 3 + 2 * self.n_shift
            if config.align_content:
                self.encoder = self._mlp(self.n_pixels, config.encoder_hidden, n_pose)
                content_hidden = config.encoder_hidden if config.content_hidden is None else config.content_hidden
                self.content_encoder = self._mlp(self.n_pixels, content_hidden, 2 * k)
            else:
                self.encoder = self._mlp(self.n_pixels, config.encoder_hidden, n_pose + 2 * k)
                self.content_encoder = None

            first = config.decoder_hidden[0]
            self.dec_coord = nn.Linear(2, first, bias=False)       # W_u
            self.dec_latent = nn.Linear(k, first)                  # W_z, b
            hidden_layers: list[nn.Module] = []
            width = first
            for hidden in config.decoder_hidden[1:]:
                hidden_layers.append(nn.Linear(width, hidden))
                width = hidden
            self.dec_hidden = nn.ModuleList(hidden_layers)
            self.dec_out = nn.Linear(width, 1)
            self.act = _activation(config.activation)
        self.reset_parameters(torch.Generator().manual_seed(config.seed if init_seed is None else init_seed))
        noise = config.noise_std if noise is None else float(noise)  # σ in units of the scaled inputs
        self.log_noise = nn.Parameter(torch.tensor(math.log(noise)),
                                      requires_grad=config.likelihood == "gaussian_learned")

        self.rotation_prior = config.rotation_prior
        self.shift_prior = config.shift_prior / self.coord_scale  # in grid units

    def _mlp(self, n_in: int, hidden: tuple[int, ...], n_out: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(n_in, width), _activation(self.config.activation)]
            n_in = width
        layers.append(nn.Linear(n_in, n_out))
        return nn.Sequential(*layers)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """PyTorch's default Linear initialisation U(±1/√fan_in), drawn from ``generator``."""
        for layer in self.modules():
            if isinstance(layer, nn.Linear):
                fan_in = layer.in_features
                if layer is self.dec_coord or layer is self.dec_latent:
                    fan_in = 2 + self.config.latent_dim   # the concatenated input [u; z]
                bound = 1 / math.sqrt(fan_in)
                layer.weight.uniform_(-bound, bound, generator=generator)
                if layer.bias is not None:
                    layer.bias.uniform_(-bound, bound, generator=generator)

    # -- parts ---------------------------------------------------------------------
    def _pixels(self, patterns: torch.Tensor) -> torch.Tensor:
        patterns = patterns.reshape(patterns.shape[0], -1)
        if patterns.shape[1] != self.det_shape[0] * self.det_shape[1]:
            raise ValueError(f"patterns have {patterns.shape[1]} pixels, the model expects "
                             f"{self.det_shape[0]}×{self.det_shape[1]}")
        if self.n_pixels != patterns.shape[1]:
            patterns = patterns[:, self.pixel_index]
        return patterns

    def prepare(self, patterns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, targets)`` of patterns ``(B, det_y, det_x)`` or ``(B, det_y·det_x)`` in data
        units: the encoder's input (transformed, centred, scaled pixels inside the mask) and
        what the likelihood compares the reconstruction with (the same, or the raw counts
        for the Poisson likelihood)."""
        raw = self._pixels(patterns)
        values = anscombe(raw) if self.counts else raw
        inputs = (values - self.offset) / self.data_scale
        return inputs, (raw if self.likelihood == "poisson" else inputs)

    def flatten(self, patterns: torch.Tensor) -> torch.Tensor:
        """The encoder's input for patterns in data units (see :meth:`prepare`)."""
        return self.prepare(patterns)[0]

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Posterior parameters for flattened, scaled patterns ``(B, n_pixels)``.

        Returns angle mean (rad, in (−π, π]) and log-std; shift mean and log-std (grid units,
        ``(B, 2)``, x then y) when learned; content mean and log-std ``(B, k)``.
        """
        out = self.encoder(x)
        k = self.config.latent_dim
        angle = torch.atan2(out[:, 1], out[:, 0])
        if self.circular:
            # projected normal N(s·(cos μ, sin μ), I₂): direction from the first two outputs, the
            # concentration s = 2·exp(·) from the third — s ≈ 2 (a spread of ≈ 0.6 rad) at the
            # start, so that the decoder sees oriented patterns from the first step (from s ≈ 0 the
            # angle would be uniform noise and the model would settle on round patterns)
            s = MIN_CONCENTRATION + torch.exp(torch.clamp(out[:, 2], max=8.0))
            vector = torch.stack([torch.cos(angle), torch.sin(angle)], -1) * s.unsqueeze(-1)
            post = {"angle": angle, "angle_vector": vector, "angle_s": s}
            i = 3
        else:  # σ_θ = MAX·sigmoid(·) keeps the spread on the circle meaningful
            angle_log_std = math.log(MAX_ANGLE_STD) + F.logsigmoid(out[:, 2])
            post = {"angle": angle, "angle_log_std": angle_log_std}
            i = 3
        if self.n_shift:
            post["shift"] = out[:, i:i + 2]
            post["shift_log_std"] = out[:, i + 2:i + 4]
            i += 4
        if self.content_encoder is not None:
            out = self.content_encoder(self.align(x, angle, post.get("shift")))
            i = 0
        post["z"] = out[:, i:i + k]
        post["z_log_std"] = out[:, i + k:i + 2 * k]
        return post

    def align(self, x: torch.Tensor, angle: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
        """Patterns ``(B, n_pixels)`` turned back to the canonical pose: ``D(u) = I(R(θ)u + Δ)``
        (bilinear interpolation, zero outside the detector / mask)."""
        ny, nx = self.det_shape
        # without a mask no scatter (it was half of align's cost with its backward)
        full = x if self.n_pixels == ny * nx else x.new_zeros(x.shape[0], ny * nx).index_copy(1, self.pixel_index, x)
        image = full.reshape(-1, 1, ny, nx)
        rot = rotation_matrix(angle)                                          # (B, 2, 2)
        points = self.coords @ rot.transpose(1, 2)                            # R u, (B, P, 2)
        if shift is not None:
            points = points + shift.unsqueeze(1)
        # grid units → pixel (col, row) → grid_sample's [-1, 1] (align_corners=True)
        col = points[..., 0] * self.coord_scale + self.center[1]
        row = points[..., 1] * self.coord_scale + self.center[0]
        grid = torch.stack([2 * col / max(nx - 1, 1) - 1, 2 * row / max(ny - 1, 1) - 1], -1)
        out = F.grid_sample(image, grid.unsqueeze(1), mode="bilinear", padding_mode="zeros",
                            align_corners=True)
        return out.reshape(x.shape[0], -1)

    def decode(self, z: torch.Tensor, angle: torch.Tensor, shift: torch.Tensor | None = None,
               coords: torch.Tensor | None = None) -> torch.Tensor:
        """Decoded (scaled) intensities ``(B, P)`` at ``coords`` ``(P, 2)`` (default: all mask pixels).

        ``angle`` in rad (counter-clockwise on screen), ``shift`` ``(B, 2)`` in grid units.
        """
        coords = self.coords if coords is None else coords
        chunk = max(1, DECODE_ROWS // max(1, coords.shape[0]))
        if z.shape[0] > chunk and not torch.is_grad_enabled():
            return torch.cat([self.decode(z[i:i + chunk], angle[i:i + chunk],
                                          None if shift is None else shift[i:i + chunk], coords)
                              for i in range(0, z.shape[0], chunk)])
        rot_t = rotation_matrix(angle).transpose(-1, -2)                   # Rᵀ, (B, 2, 2)
        a = self.dec_coord.weight @ rot_t                                   # W_u Rᵀ, (B, H, 2)
        c = self.dec_latent(z)                                              # W_z z + b, (B, H)
        if shift is not None:
            c = c - (a @ shift.unsqueeze(-1)).squeeze(-1)
        h = torch.baddbmm(c.unsqueeze(1), coords.expand(z.shape[0], -1, -1), a.transpose(1, 2))
        h = self.act(h)                                                     # (B, P, H)
        if self.config.bf16 and h.device.type in ("cpu", "cuda"):
            with torch.autocast(h.device.type, dtype=torch.bfloat16):
                for layer in self.dec_hidden:
                    h = self.act(layer(h))
                out = self.dec_out(h)
            return out.squeeze(-1).float()
        for layer in self.dec_hidden:
            h = self.act(layer(h))
        return self.dec_out(h).squeeze(-1)

    # -- loss ------------------------------------------------------------------------
    def kl_terms(self, post: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-pattern KL terms ``kl_z``, ``kl_angle``, ``kl_shift`` (nats, shape ``(B,)``)."""
        kl_z = gaussian_kl(post["z"], post["z_log_std"]).sum(-1)
        if self.circular:
            s = post["angle_s"]
            kl_angle = (circular.kl_uniform(s) if self.rotation_prior is None else
                        circular.kl_von_mises(s, post["angle"], 1.0 / self.rotation_prior**2))
        elif self.rotation_prior is None:
            kl_angle = uniform_angle_kl(post["angle_log_std"])
        else:
            kl_angle = gaussian_kl(post["angle"], post["angle_log_std"], self.rotation_prior)
        if self.n_shift:
            kl_shift = gaussian_kl(post["shift"], post["shift_log_std"], self.shift_prior).sum(-1)
        else:
            kl_shift = torch.zeros_like(kl_angle)
        return {"kl_z": kl_z, "kl_angle": kl_angle, "kl_shift": kl_shift}

    def draw_noise(self, n: int, generator: torch.Generator | None = None,
                   device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """The standard normal draws of :meth:`loss`'s sampling for ``n`` patterns, in the order
        it makes them (angle, latents, shift). Drawn for a whole minibatch on every rank of a
        data-parallel run and sliced to each rank's share, they make the run's model the one a
        single process trains from the same seed."""
        dtype = next(self.parameters()).dtype
        kw = {"generator": generator, "device": device, "dtype": dtype}
        noise = {"angle": torch.randn((n, 2) if self.circular else (n,), **kw),
                 "z": torch.randn((n, self.config.latent_dim), **kw)}
        if self.n_shift:
            noise["shift"] = torch.randn((n, 2), **kw)
        return noise

    def loss(self, x: torch.Tensor, target: torch.Tensor | None = None, generator: torch.Generator | None = None,
             pixels: torch.Tensor | None = None, kl_weight: float = 1.0,
             sample: bool = True, per_pattern: bool = False,
             noise: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Negative ELBO averaged over the batch, and its parts (per pattern, unweighted).

        ``x``: the encoder's inputs ``(B, n_pixels)``, ``target``: what the likelihood sees
        (:meth:`prepare`; default ``x``). ``pixels``: optional indices (into the mask pixels)
        to decode; the reconstruction term is then scaled by ``n_pixels / len(pixels)`` (an
        unbiased estimate of the full sum). ``sample=False`` decodes the posterior means.
        ``per_pattern``: the loss of each pattern ``(B,)`` instead of the mean. ``noise``: the
        draws to sample with (:meth:`draw_noise`, B rows); default: drawn from ``generator``.
        """
        target = x if target is None else target
        post = self.encode(x)
        angle, z = post["angle"], post["z"]
        shift = post.get("shift")
        if sample:
            if noise is None:
                noise = self.draw_noise(x.shape[0], generator, x.device)

            def draw(mean: torch.Tensor, log_std: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
                return mean + eps * torch.exp(log_std)

            angle = (circular.sample(post["angle_vector"], noise["angle"]) if self.circular
                     else draw(angle, post["angle_log_std"], noise["angle"]))
            z = draw(z, post["z_log_std"], noise["z"])
            if shift is not None:
                shift = draw(shift, post["shift_log_std"], noise["shift"])
        nll = self.nll(target, self.decode(z, angle, shift, None if pixels is None else self.coords[pixels]), pixels)
        kl = self.kl_terms(post)
        kl_total = kl["kl_z"] + kl["kl_angle"] + kl["kl_shift"]
        each = nll + kl_weight * kl_total
        parts = {"recon": nll.mean(), **{name: value.mean() for name, value in kl.items()}}
        return (each if per_pattern else each.mean()), parts

    def nll(self, target: torch.Tensor, decoded: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """Per-pattern negative log-likelihood of ``target`` given decoder outputs (at ``pixels``,
        scaled up to all mask pixels)."""
        factor = 1.0
        if pixels is not None:
            target = target[:, pixels]
            factor = self.n_pixels / pixels.numel()
        if self.likelihood == "poisson":
            log_mean = self.log_mean if pixels is None else self.log_mean[pixels]
            return poisson_nll(target, log_mean + decoded) * factor
        return gaussian_nll(target, decoded, self.log_noise) * factor

    @torch.no_grad()
    def residuals(self, patterns: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """Standardised residuals ``(B, P)`` of patterns (data units) against their reconstruction
        with the posterior means — what the model does not explain, in units of the noise:
        for counts the Pearson residuals (y − λ̂)/√(λ̂ + 1) (the exact counting noise, whatever
        likelihood trained the model), else (x − x̂)/σ on the scaled data; at ``pixels``
        (indices into the mask pixels; default all)."""
        x, target = self.prepare(patterns)
        post = self.encode(x)
        decoded = self.decode(post["z"], post["angle"], post.get("shift"),
                              None if pixels is None else self.coords[pixels])
        if bool(self.count_data):
            raw = self._pixels(patterns)
            if pixels is not None:
                raw = raw[:, pixels]
            if self.likelihood == "poisson":
                rate = torch.exp((self.log_mean if pixels is None else self.log_mean[pixels]) + decoded)
            else:
                offset = self.offset if pixels is None else self.offset[pixels]
                values = decoded * self.data_scale + offset
                rate = (inverse_anscombe(values) if self.counts else values).clamp_min(0.0)
            return (raw - rate) / torch.sqrt(rate + 1.0)
        if pixels is not None:
            target = target[:, pixels]
        return (target - decoded) * torch.exp(-self.log_noise)

    def to_data_units(self, decoded: torch.Tensor) -> torch.Tensor:
        """Decoder outputs ``(B, n_pixels)`` → the model's expected pattern in data units."""
        if self.likelihood == "poisson":
            return torch.exp(self.log_mean + decoded)
        values = decoded * self.data_scale + self.offset
        return inverse_anscombe(values) if self.counts else values

    # -- conveniences --------------------------------------------------------------------
    def unflatten(self, values: torch.Tensor) -> torch.Tensor:
        """Decoder outputs ``(B, n_pixels)`` → ``(B, det_y, det_x)`` in data units (0 outside the mask)."""
        values = self.to_data_units(values)
        if self.n_pixels == self.det_shape[0] * self.det_shape[1]:
            return values.reshape(values.shape[0], *self.det_shape)
        out = values.new_zeros(values.shape[0], self.det_shape[0] * self.det_shape[1])
        out[:, self.pixel_index] = values
        return out.reshape(values.shape[0], *self.det_shape)

    @property
    def noise_std(self) -> float:
        """Noise standard deviation of the Gaussian likelihood, in data units (of the transformed
        data for counts); NaN for the Poisson likelihood."""
        if self.likelihood == "poisson":
            return float("nan")
        return float(torch.exp(self.log_noise.detach()) * self.data_scale)
