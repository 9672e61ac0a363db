"""Latent–COM correlations: how the study chose when to stop training.

The maps are plain arrays, so this module does not depend on how the COM was computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass
class Diagnostics:
    """Correlations of the rVAE maps with the COM maps at one epoch.

    Attributes
    ----------
    epoch
        Epochs completed when the maps were computed.
    latent_r
        Pearson r of each content-latent map with the COM magnitude (empty without it).
    max_abs_r, best_latent
        The largest |r| and the index of its latent (NaN / −1 without COM magnitude).
    angle_rho
        Fisher–Lee circular correlation of the angle map with the COM angle (NaN without it);
        its sign depends on the conventions (the study found reversed polarity).
    angle_agreement
        Mean resultant length of angle − sign(ρ)·COM angle (1: equal up to an offset).
    maps
        Snapshot of the maps (:class:`~napari_4dstem_rvae.rvae.infer.LatentMaps`) or ``None``.
    """

    epoch: int
    latent_r: tuple[float, ...] = ()
    max_abs_r: float = float("nan")
    best_latent: int = -1
    angle_rho: float = float("nan")
    maps: Any = field(default=None, repr=False)
    angle_agreement: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        """Plain values (no maps)."""
        return {"epoch": int(self.epoch), "latent_r": [float(r) for r in self.latent_r],
                "max_abs_r": float(self.max_abs_r), "best_latent": int(self.best_latent),
                "angle_rho": float(self.angle_rho)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Diagnostics:
        return cls(epoch=int(values["epoch"]), latent_r=tuple(float(r) for r in values["latent_r"]),
                   max_abs_r=float(values["max_abs_r"]), best_latent=int(values["best_latent"]),
                   angle_rho=float(values["angle_rho"]))


def correlate(maps: Any, com_magnitude: Any = None, com_angle: Any = None, *, mask: Any = None,
              epoch: int = 0, keep_maps: bool = True) -> Diagnostics:
    """Correlate rVAE maps with COM maps.

    Parameters
    ----------
    maps
        :class:`~napari_4dstem_rvae.rvae.infer.LatentMaps` (``latents`` ``(k, scan_y, scan_x)``,
        ``angle`` ``(scan_y, scan_x)`` rad).
    com_magnitude, com_angle
        ``(scan_y, scan_x)`` COM magnitude (any unit) and angle (rad); either may be ``None``.
    mask
        Optional boolean ``(scan_y, scan_x)``: correlate over these positions only.
    """
    latent_r: tuple[float, ...] = ()
    max_abs_r, best = float("nan"), -1
    if com_magnitude is not None:
        com_magnitude = np.asarray(com_magnitude)
        if com_magnitude.shape != maps.angle.shape:
            raise ValueError(f"com_magnitude has shape {com_magnitude.shape}, expected the scan shape "
                             f"{maps.angle.shape}")
        latent_r = tuple(pearson_r(latent, com_magnitude, mask) for latent in maps.latents)
        finite = [abs(r) if np.isfinite(r) else -1.0 for r in latent_r]
        best = int(np.argmax(finite))
        max_abs_r = abs(latent_r[best]) if finite[best] >= 0 else float("nan")
    rho = float("nan")
    if com_angle is not None:
        com_angle = np.asarray(com_angle)
        if com_angle.shape != maps.angle.shape:
            raise ValueError(f"com_angle has shape {com_angle.shape}, expected the scan shape {maps.angle.shape}")
        rho = circular_correlation(maps.angle, com_angle, mask)
        agreement = angle_agreement(maps.angle, com_angle, -1.0 if rho < 0 else 1.0, mask)
    else:
        agreement = float("nan")
    return Diagnostics(epoch=epoch, latent_r=latent_r, max_abs_r=max_abs_r, best_latent=best,
                       angle_rho=rho, maps=maps if keep_maps else None, angle_agreement=agreement)
