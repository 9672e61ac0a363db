"""Rotationally invariant variational autoencoder (rVAE) for 4D-STEM diffraction patterns.

A spatial-VAE (Bepler et al. 2019) as applied to 4D-STEM by Oxley, Ziatdinov, Kalinin et
al.: each pattern is encoded to an in-plane rotation angle, an optional shift and a few
content latents; a coordinate decoder draws the pattern on the rotated/shifted detector
grid. Mapped over the scan, the angle and latent maps show symmetry breaking.

- :mod:`.config` — :class:`RVAEConfig`, every hyperparameter.
- :mod:`.model` — :class:`RVAE`, the grid convention (angle counter-clockwise on screen,
  about the direct beam) and the loss.
- :mod:`.train` — :class:`Trainer`: training as a generator of :class:`TrainEvent`.
- :mod:`.checkpoint` — :func:`load_checkpoint`, :func:`load_model` (``weights_only`` files).
- :mod:`.infer` — :func:`encode` → :class:`LatentMaps`, :func:`reconstruct`, :func:`traverse`.
- :mod:`.diagnostics` — latent–COM correlations.
- :mod:`.fit` — :func:`fit`, the pipeline's one call → :class:`RVAEResult`.
- :mod:`.results` — :func:`write_results` (HDF5), :func:`plot_overview` (PNG).

No Qt or napari here; torch is imported by this subpackage only.
"""

from __future__ import annotations

from .checkpoint import load_checkpoint, load_model, read_checkpoint, save_checkpoint
from .config import RVAEConfig
from .diagnostics import Diagnostics, circular_correlation, correlate, pearson_r
from .fit import RVAEResult, fit
from .infer import LatentMaps, decode, encode, reconstruct, reconstruct_positions, traverse
from .model import RVAE
from .results import plot_overview, write_results
from .train import TrainEvent, Trainer, TrainingDiverged, resolve_device

__all__ = [
    "RVAE", "RVAEConfig", "RVAEResult", "Diagnostics", "LatentMaps", "TrainEvent", "Trainer",
    "TrainingDiverged", "circular_correlation", "correlate", "decode", "encode", "fit",
    "load_checkpoint", "load_model", "pearson_r", "plot_overview", "read_checkpoint",
    "reconstruct", "reconstruct_positions", "resolve_device", "save_checkpoint", "traverse",
    "write_results",
]
