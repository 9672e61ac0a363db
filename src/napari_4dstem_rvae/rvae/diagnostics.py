"""Latent–COM correlations: how the study chose when to stop training.

The maps are plain arrays, so this module does not depend on how the COM was computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..stats import angle_agreement, circular_correlation, pearson_r

__all__ = ["Diagnostics", "angle_agreement", "circular_correlation", "correlate", "pearson_r"]


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
