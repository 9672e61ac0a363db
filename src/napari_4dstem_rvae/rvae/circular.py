"""The angle's posterior on the circle: a projected normal.

The encoder gives a 2-vector v; the angle is the direction of a draw from N(v, I₂):
θ = atan2(v_y + ε_y, v_x + ε_x). Its mean direction is μ = atan2(v) and its spread depends
only on s = |v|: s → 0 is the uniform distribution, large s a normal of standard deviation
≈ 1/s. Unlike a Gaussian angle it lives on the circle (no seam, no bound on the spread),
it is reparameterisable (gradients flow through the draw), and its KL divergence to a
uniform or von Mises prior is proper — computed here by quadrature over the circle, since
the entropy has no closed form.

Density (angle φ = θ − μ, c = cos φ, t = s·c, Φ the normal CDF):

    p(φ) = [e^{−s²/2} + √(2π)·t·Φ(t)·e^{−s² sin²φ / 2}] / 2π

(the second factor is written so that nothing overflows for large s).
"""

from __future__ import annotations

import math

import torch

_LOG_2PI = math.log(2 * math.pi)
#: Quadrature nodes over the angle (trapezoid rule on ±min(π, 10/s)).
NODES = 129


def _grid(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes φ ``(..., NODES)`` covering the density and the trapezoid weights."""
    half = torch.clamp(10.0 / s.clamp_min(1e-6), max=math.pi)
    unit = torch.linspace(-1.0, 1.0, NODES, dtype=s.dtype, device=s.device)
    phi = half.unsqueeze(-1) * unit
    step = (2.0 * half / (NODES - 1)).unsqueeze(-1)
    weights = torch.full((NODES,), 1.0, dtype=s.dtype, device=s.device)
    weights[0] = weights[-1] = 0.5
    return phi, step * weights


def density(phi: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """p(φ | s) for angles φ relative to the mean direction (``s`` broadcast against ``phi``)."""
    c = torch.cos(phi)
    t = s * c
    cdf = 0.5 * (1.0 + torch.erf(t / math.sqrt(2.0)))
    return (torch.exp(-0.5 * s * s) + math.sqrt(2 * math.pi) * t * cdf
            * torch.exp(-0.5 * (s * torch.sin(phi)) ** 2)) / (2 * math.pi)


def entropy(s: torch.Tensor) -> torch.Tensor:
    """Differential entropy (nats) of the projected normal's angle, element-wise in ``s``."""
    phi, w = _grid(s)
    p = density(phi, s.unsqueeze(-1)).clamp_min(1e-30)
    return -(w * p * torch.log(p)).sum(-1)


def mean_resultant_length(s: torch.Tensor) -> torch.Tensor:
    """E[cos(θ − μ)] ∈ [0, 1): 0 for a uniform angle, → 1 for a certain one."""
    phi, w = _grid(s)
    p = density(phi, s.unsqueeze(-1))
    return (w * p * torch.cos(phi)).sum(-1).clamp(0.0, 1.0)


def kl_uniform(s: torch.Tensor) -> torch.Tensor:
    """KL(PN ‖ Uniform(circle)) = log 2π − H."""
    return _LOG_2PI - entropy(s)


def kl_von_mises(s: torch.Tensor, mu: torch.Tensor, kappa: float) -> torch.Tensor:
    """KL(PN(μ, s) ‖ vM(0, κ)) = −H − κ·E[cos θ] + log(2π I₀(κ)), with E[cos θ] = R(s)·cos μ."""
    log_norm = _LOG_2PI + math.log(torch.special.i0e(torch.tensor(float(kappa))).item()) + kappa
    return -entropy(s) - kappa * mean_resultant_length(s) * torch.cos(mu) + log_norm


def sample(vector: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Angles atan2 of draws from N(vector, I₂) (reparameterised with the standard normal
    ``eps``); ``vector`` and ``eps`` are ``(..., 2)`` (x, y)."""
    draw = vector + eps
    return torch.atan2(draw[..., 1], draw[..., 0])


def circular_std(s: torch.Tensor) -> torch.Tensor:
    """Circular standard deviation √(−2 ln R) (rad)."""
    return torch.sqrt(-2.0 * torch.log(mean_resultant_length(s).clamp_min(1e-12)))
