"""Statistics of maps, numpy only: how two maps (or two angle maps) go together.

Used by the rVAE's latent–COM diagnostics (:mod:`napari_4dstem_rvae.rvae.diagnostics`) and by
the figures (:mod:`napari_4dstem_rvae.results.figures`); it sits in the lowest layer so that
either can import it without importing the other.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _valid(a: np.ndarray, b: np.ndarray, mask: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"{name}: maps of different shapes {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != a.shape:
            raise ValueError(f"{name}: mask has shape {mask.shape}, the maps {a.shape}")
        keep &= mask
    return a[keep], b[keep]


def pearson_r(a: Any, b: Any, mask: Any = None) -> float:
    """Pearson correlation of two maps (over ``mask`` and finite values); NaN if either is constant."""
    a, b = _valid(a, b, mask, "pearson_r")
    if a.size < 2:
        return float("nan")
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def circular_correlation(a: Any, b: Any, mask: Any = None) -> float:
    """Circular correlation of two angle maps in radians (Fisher & Lee 1983).

    ρ = Σ_{i<j} sin(aᵢ−aⱼ) sin(bᵢ−bⱼ) / √(Σ_{i<j} sin²(aᵢ−aⱼ) Σ_{i<j} sin²(bᵢ−bⱼ)), computed in
    O(n) with the sums of cos/sin of a, b and their doubles (Fisher, *Statistical analysis of
    circular data*, 1993, §6.3.3). +1: the angles turn together (up to a constant offset);
    −1: in opposite senses (reversed polarity). Unlike the Jammalamadaka–SenGupta
    coefficient it stays reliable when the angles cover the whole circle.
    """
    a, b = _valid(a, b, mask, "circular_correlation")
    n = a.size
    if n < 2:
        return float("nan")
    ca, sa, cb, sb = np.cos(a), np.sin(a), np.cos(b), np.sin(b)
    A, B = np.sum(ca * cb), np.sum(sa * sb)
    C, D = np.sum(ca * sb), np.sum(sa * cb)
    E, F = np.sum(np.cos(2 * a)), np.sum(np.sin(2 * a))
    G, H = np.sum(np.cos(2 * b)), np.sum(np.sin(2 * b))
    denom = np.sqrt(max(n * n - E * E - F * F, 0.0) * max(n * n - G * G - H * H, 0.0))
    return float(4 * (A * B - C * D) / denom) if denom > 0 else float("nan")


def angle_agreement(a: Any, b: Any, sign: float = 1.0, mask: Any = None) -> float:
    """Mean resultant length of a − sign·b: 1 when the two angle maps agree up to a constant
    offset (``sign`` −1 for reversed polarity), 0 when they are unrelated."""
    a, b = _valid(a, b, mask, "angle_agreement")
    return float(np.abs(np.mean(np.exp(1j * (a - sign * b))))) if a.size else float("nan")
