"""Rotationally invariant variational autoencoder (rVAE) for 4D-STEM diffraction patterns.

A spatial-VAE (Bepler et al. 2019) as applied to 4D-STEM by Oxley, Ziatdinov, Kalinin et
al.: each pattern is encoded to an in-plane rotation angle, an optional shift and a few
content latents; a coordinate decoder draws the pattern on the rotated/shifted detector
grid. Mapped over the scan, the angle and latent maps show symmetry breaking.

- :mod:`.config` — :class:`RVAEConfig`, every hyperparameter.
- :mod:`.model` — :class:`RVAE`, the grid convention (angle counter-clockwise on screen,
  about the direct beam) and the loss.
- :mod:`.data` — access to patterns (numpy in place, dask streamed), split, data scale.
- :mod:`.train` — :class:`Trainer`: set-up and training as a generator of :class:`TrainEvent`.
- :mod:`.evaluation` — the trainer's test loss, maps, diagnostics and kept best state.
- :mod:`.trainer_state` — the trainer's checkpoint state (:meth:`Trainer.state`,
  :meth:`Trainer.from_state`).
- :mod:`.runtime` — events, the device, the optimiser, torch's thread count.
- :mod:`.selection` — the one epoch-selection rule.
- :mod:`.checkpoint` — the checkpoint file (``weights_only``), :func:`load_model`.
- :mod:`.infer` — :func:`encode` → :class:`LatentMaps`, :func:`reconstruct`, :func:`traverse`.
- :mod:`.diagnostics` — latent–COM correlations.
- :mod:`.fitting` — :func:`fit`, the pipeline's one call → :class:`RVAEResult`.

No Qt, napari, files of results or figures here (:mod:`napari_4dstem_rvae.results` writes
them); torch is imported by this subpackage only.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# name -> module that defines it, imported on first use: ``rvae.config`` and
# ``rvae.selection`` stay importable without torch (the CLI's parser, the results writer).
_LAZY = {
    "load_model": ".checkpoint", "read_checkpoint": ".checkpoint", "write_checkpoint": ".checkpoint",
    "RVAEConfig": ".config",
    "Diagnostics": ".diagnostics", "circular_correlation": ".diagnostics", "correlate": ".diagnostics",
    "pearson_r": ".diagnostics",
    "RVAEResult": ".fitting", "collapsed": ".fitting", "fit": ".fitting", "start": ".fitting",
    "LatentMaps": ".infer", "decode": ".infer", "encode": ".infer", "reconstruct": ".infer",
    "reconstruct_positions": ".infer", "traverse": ".infer",
    "RVAE": ".model",
    "EPOCH_SELECTIONS": ".selection",
    "TrainEvent": ".runtime", "TrainingDiverged": ".runtime", "resolve_device": ".runtime",
    "Trainer": ".train", "load_checkpoint": ".train", "resolve_likelihood": ".train",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
