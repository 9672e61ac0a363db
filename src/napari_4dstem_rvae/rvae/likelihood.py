"""Likelihoods of a pattern given its reconstruction, and the transforms they use.

- ``gaussian`` — fixed noise σ (in units of the normalised data); for data whose noise is
  unknown (simulations, processed data).
- ``anscombe`` — counts: the variance-stabilising transform a = 2·√(y + 3/8) (Anscombe 1948)
  makes Poisson noise Gaussian with unit variance, whatever the count, so bright and dark
  pixels weigh by the information they carry; a Gaussian likelihood on ``a``.
- ``poisson`` — counts: the exact Poisson likelihood of the raw counts y given the decoded
  rate λ = m·exp(f), m the mean pattern: Σ λ − y·log λ + log y!.

The per-pattern *deviance* (twice the log-likelihood ratio of the pattern against its own
saturated fit) is the novelty score: how poorly the model explains a pattern, in units in
which the noise alone gives about one per pixel.
"""

from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2 * math.pi)
COUNT_LIKELIHOODS = ("anscombe", "poisson")


def anscombe(counts: torch.Tensor) -> torch.Tensor:
    """2·√(y + 3/8): Poisson counts → approximately unit-variance Gaussian values."""
    return 2.0 * torch.sqrt(torch.clamp(counts, min=0.0) + 0.375)


def inverse_anscombe(values: torch.Tensor) -> torch.Tensor:
    """The algebraic inverse (a/2)² − 3/8, clipped at 0 (for showing reconstructions as counts)."""
    return torch.clamp((values / 2.0) ** 2 - 0.375, min=0.0)


def gaussian_nll(target: torch.Tensor, mean: torch.Tensor, log_noise: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood summed over the last axis: ½Σ((t−m)/σ)² + n(log σ + ½ log 2π)."""
    n = target.shape[-1]
    sq = ((target - mean) ** 2).sum(-1)
    return 0.5 * sq * torch.exp(-2 * log_noise) + n * (log_noise + 0.5 * LOG_2PI)


def poisson_nll(counts: torch.Tensor, log_rate: torch.Tensor) -> torch.Tensor:
    """Poisson negative log-likelihood summed over the last axis: Σ λ − y·log λ + log y!."""
    return (torch.exp(log_rate) - counts * log_rate + torch.lgamma(counts + 1.0)).sum(-1)


def gaussian_deviance(target: torch.Tensor, mean: torch.Tensor, log_noise: torch.Tensor) -> torch.Tensor:
    """Σ((t − m)/σ)² over the last axis."""
    return ((target - mean) ** 2).sum(-1) * torch.exp(-2 * log_noise)


def poisson_deviance(counts: torch.Tensor, log_rate: torch.Tensor) -> torch.Tensor:
    """2 Σ [y·log(y/λ) − (y − λ)] over the last axis (y = 0 terms: 2λ)."""
    rate = torch.exp(log_rate)
    term = torch.where(counts > 0, counts * (torch.log(counts.clamp_min(1e-12)) - log_rate), torch.zeros_like(counts))
    return 2.0 * (term - (counts - rate)).sum(-1)
