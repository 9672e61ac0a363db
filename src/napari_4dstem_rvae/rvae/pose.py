"""Each pattern's angle read from the trained decoder instead of the encoder.

The encoder gives every pattern's angle in one pass: an amortised guess, as good as one network
can be for all patterns at once. The decoder says how well each angle explains the pattern: with
the pattern's latents and shift from the encoder held fixed, the decoded pattern turned to each of
a grid of angles gives a likelihood, and the posterior over the angle (uniform prior) is its
normalised exponential. Its circular mean is the angle the model itself supports — the amortisation
gap of the encoder closed for the angle alone (Cremer, Li & Duvenaud, ICML 2018, measured the gap
for VAEs in general).

Measured on real atom-resolved frames of graphene (docs/quality.md): the encoder's angle splits
the sublattices of a small field at 82–89 % of the atoms within ±10° of two modes, the decoder's
at 92–94 %; on some trainings the decoder's angle splits less (the latents there took the
sublattices apart, and the decoded window is nearly round), so a caller compares the two
(:func:`napari_4dstem_rvae.workflows.atoms.analyse` keeps the one that splits more).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .infer import model_device, to_device
from .runtime import torch_threads

#: Angles of the grid over one period of the angle (2π / symmetry) at which the decoder is run;
#: its log-likelihood is then interpolated (trigonometric, it is periodic) to :data:`FINE` times as
#: many, so that a sharp posterior is not read at the grid's steps.
ANGLES = 12
FINE = 16
#: On a CPU, at most this many pixel values are decoded for the profiles of one call (each costs
#: the decoder's whole MLP, ≈ 1.3 µs on 2 threads: ≤ 45 s): the pixels per pattern shrink to fit,
#: down to :data:`MIN_PIXELS`; beyond that the call returns None (the encoder's angle stands).
#: Every pixel of a 32 × 32 window up to ~2,700 windows (measured on a real 6 nm frame of 1,099:
#: 91 % in two modes with every pixel, 88 % with 636 of them, 83 % with 318).
DECODED_CPU = 2**25
MIN_PIXELS = 128


def profile_pixels(model: Any, n_patterns: int, n_angles: int = ANGLES, force: bool = False) -> Any:
    """The mask pixels decoded for each pattern's angle profile (sorted indices, a fixed random
    subset; None: all), or False when even :data:`MIN_PIXELS` per pattern exceed the budget
    (``force``: then :data:`MIN_PIXELS`, whatever it costs)."""
    import torch

    if model_device(model).type != "cpu":
        return None
    keep = DECODED_CPU // max(1, n_patterns * n_angles)
    if keep >= model.n_pixels:
        return None
    if keep < MIN_PIXELS:
        if not force:
            return False
        keep = MIN_PIXELS
    pick = torch.randperm(model.n_pixels, generator=torch.Generator().manual_seed(0))[:keep]
    return torch.sort(pick).values


def periodic_upsample(values: Any, factor: int) -> Any:
    """Samples ``(B, n)`` of periodic functions at ``n`` equal steps → ``(B, n·factor)``: the
    trigonometric interpolant (zero-padded spectrum), through the given values at every
    ``factor``-th point. For even ``n`` the Nyquist bin is split between ±n/2 (counted once)."""
    import torch

    n = values.shape[-1]
    spectrum = torch.fft.rfft(values, dim=-1)
    if n % 2 == 0:
        spectrum[..., -1] = spectrum[..., -1] * 0.5
    return torch.fft.irfft(spectrum, n=n * factor, dim=-1) * factor


def decoder_angles(model: Any, patterns: np.ndarray, symmetry: int = 1, *, n_angles: int = ANGLES,
                   batch_size: int = 512, threads: int | None = None, force: bool = False
                   ) -> tuple[np.ndarray, np.ndarray] | None:
    """The posterior circular mean of each pattern's angle under the decoder and its mean
    resultant length (1: one angle fits, 0: none stands out), over a grid of ``n_angles`` angles
    in one period ``2π / symmetry`` — patterns ``(n, det_y, det_x)`` in data units, latents and
    shift the encoder's. Angles in rad in (−π/symmetry, π/symmetry]; None when the CPU budget
    (:data:`DECODED_CPU`) would not allow :data:`MIN_PIXELS` per pattern, unless ``force``."""
    import torch

    n = len(patterns)
    pixels = profile_pixels(model, n, n_angles, force)
    if pixels is False:
        return None
    device = model_device(model)
    period = 2 * math.pi / max(1, int(symmetry))
    grid = torch.arange(n_angles, dtype=torch.float32, device=device) * (period / n_angles)
    fine = n_angles * FINE
    phase = torch.exp(1j * symmetry * torch.arange(fine, dtype=torch.float64) * (period / fine))   # on the CPU
    if pixels is not None:
        pixels = pixels.to(device)
    coords = None if pixels is None else model.coords[pixels]
    angle = np.empty(n, np.float32)
    length = np.empty(n, np.float32)
    was = model.training
    model.eval()
    try:
        with torch_threads(threads), torch.no_grad():
            for start in range(0, n, batch_size):
                x, target = model.prepare(to_device(np.asarray(patterns[start:start + batch_size], np.float32),
                                                    device))
                post = model.encode(x)
                b = x.shape[0]
                z, shift = post["z"], post.get("shift")
                nll = torch.stack([model.nll(target, model.decode(z, grid[k].expand(b), shift, coords),
                                             pixels).float().cpu()
                                   for k in range(n_angles)], 1).double()   # float64 on the CPU (not on MPS)
                weight = torch.softmax(-periodic_upsample(nll, FINE), 1)
                mean = (weight * phase).sum(1)
                angle[start:start + b] = (torch.angle(mean) / symmetry).float().numpy()
                length[start:start + b] = mean.abs().float().numpy()
    finally:
        model.train(was)
    return angle, length
