"""Pooling across probe positions: the patterns of a scan finer than the probe share what they
show, so a pattern is estimated from its neighbours as well as itself before the rVAE sees it.

Modes (:func:`pool_patterns`):

- ``"none"`` — each pattern as it is;
- ``"neighbours"`` — a Gaussian-weighted mean of the patterns within ``0.1 Å`` (the smoothing a
  microscopist applies to a COM map: it blurs what changes within the width);
- ``"lattice"`` — the scan's periodic average (a truncated Fourier series of the lattice fitted
  to every detector pixel over the whole scan, as :mod:`.novelty` fits it) plus the residual
  pooled over a width the counts choose (:func:`residual_width`: 0.05–0.5 Å by binomial
  thinning; ``0.25 Å`` for data that are not counts) and kept where it is significant: what repeats with the lattice is
  averaged over every unit cell of the scan, what does not (a defect, strain) over the
  neighbours only. The pooled residual of each position is shrunk by ``max(0, 1 − k/χ²)``
  (a positive-part James–Stein factor), χ² its squared projection on the ``k`` leading
  directions of the periodic variation in units of its pooled noise: near 0 where the
  lattice explains the pattern (noise is not added back), near 1 at a defect. Unlike
  ``"neighbours"`` it does not blur the lattice's own variation, which is what the centre of
  mass follows. Without a lattice it is ``"neighbours"``.

Measured on simulated graphene (COM of the pooled patterns against the noise-free COM, and the
rVAE on them): ``benchmarks/bench_rvae_quality.py``. Widths and the width rule tried on seed 1
only. With the fixed 0.25 Å the pooled COM lost to a COM smoothed over one step next to a
single vacancy at 10⁵ e⁻ (|r| 0.991 against 0.994); the chosen width (0.15 Å there) gives 0.997.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

POOLINGS = ("none", "neighbours", "lattice")
#: Width (Å) of the Gaussian of ``"neighbours"`` pooling.
NEIGHBOURS_ANGSTROM = 0.1
#: Width (Å) of the Gaussian that pools the residual of ``"lattice"`` pooling when it cannot be
#: chosen from the data (not counts, or no scan step).
RESIDUAL_ANGSTROM = 0.25
#: The widths (Å) that :func:`residual_width` chooses from for counts.
RESIDUAL_WIDTHS_ANGSTROM = (0.05, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5)


@dataclass
class Pooled:
    """Pooled patterns ``(scan_y, scan_x, det_y, det_x)`` float32, the mode used, the width of
    its Gaussian (probe steps), notes, and the lattice (reciprocal vectors) when one was used."""

    data: np.ndarray
    mode: str
    sigma: float | None
    scores: dict = field(default_factory=dict)
    g: np.ndarray | None = None

    def describe(self, step_angstrom: float | None = None) -> dict[str, Any]:
        """Plain values for results files and logs."""
        out: dict[str, Any] = {"mode": self.mode, "sigma_steps": self.sigma}
        if step_angstrom and self.sigma is not None and np.isfinite(self.sigma):
            out["sigma_angstrom"] = float(self.sigma * step_angstrom)
        if self.scores:
            out["sigma_chosen_by"] = "binomial thinning of the counts (cross-validated centre of mass)"
        return out


def _smooth(values: np.ndarray, sigma: float, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Gaussian sums over the scan axes of ``values * weight`` and of ``weight`` (zero outside
    the scan) and the kernel's centre weight."""
    from scipy.ndimage import gaussian_filter

    spread = (sigma, sigma) + (0,) * (values.ndim - 2)
    total = gaussian_filter(values * weight.reshape(weight.shape + (1,) * (values.ndim - 2)), spread,
                            mode="constant")
    norm = gaussian_filter(weight.astype(np.float64), sigma, mode="constant")
    delta = np.zeros((9, 9))
    delta[4, 4] = 1.0
    centre = float(gaussian_filter(delta, sigma, mode="constant")[4, 4])
    return total, norm, centre


def _pooled(values: np.ndarray, sigma: float, weight: np.ndarray) -> np.ndarray:
    total, norm, _ = _smooth(values, sigma, weight)
    norm = np.where(norm > 1e-12, norm, np.inf)
    return total / norm.reshape(norm.shape + (1,) * (values.ndim - 2))


def periodic_average(flat: np.ndarray, scan_shape: tuple[int, int], g: np.ndarray,
                     valid: np.ndarray | None = None) -> np.ndarray:
    """Every pattern's periodic part: each detector pixel's intensity over the scan fitted by a
    truncated Fourier series of the lattice ``g`` (``(n, P)`` in, the fit out), twice — the
    second time without the positions whose patterns deviate most (a defect does not bend the
    average)."""
    from .novelty import HARMONICS, _design, robust_z

    sy, sx = scan_shape
    n = sy * sx
    valid = np.ones(n, bool) if valid is None else valid
    yy, xx = np.divmod(np.arange(n), sx)
    harmonics = HARMONICS
    while harmonics > 1 and valid.sum() < 8 * (2 * harmonics + 1) ** 2:
        harmonics -= 1
    design = _design(g, np.stack([yy, xx], 1).astype(np.float64), harmonics)
    use = valid.copy()
    for _ in range(2):
        coef = np.linalg.lstsq(design[use], flat[use], rcond=None)[0]
        fit = design @ coef
        chi = (((flat - fit) ** 2) / (np.abs(fit) + 1.0)).sum(1)
        use = valid & (robust_z(np.where(valid, chi, np.nan)) < 5)
    return fit


def pool_patterns(data: Any, mode: str = "lattice", *, counts: bool = False, valid: Any = None,
                  step_angstrom: float | None = None, lattice: np.ndarray | None = None) -> Pooled:
    """Patterns pooled across probe positions (module docstring).

    ``data``: ``(scan_y, scan_x, det_y, det_x)`` in memory; ``counts``: Poisson counts (the
    residuals are then Pearson residuals); ``valid``: boolean (scan_y, scan_x) of usable
    positions; ``step_angstrom``: the scan step (without it, the widths are 0.4 and 1 probe
    steps); ``lattice``: the reciprocal vectors to use (default: found from the data as the
    novelty finds them; ``"lattice"`` becomes ``"neighbours"`` when none is found)."""
    from .novelty import DIRECTIONS, _periodic_directions, _pooled_chi2

    if mode not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {mode!r}")
    x = np.asarray(data, np.float64)
    if x.ndim != 4:
        raise ValueError(f"pooling needs 4D data (scan_y, scan_x, det_y, det_x), got shape {x.shape}")
    sy, sx = x.shape[:2]
    finite = np.isfinite(x).all(axis=(2, 3))
    ok = finite if valid is None else np.asarray(valid, bool) & finite
    x = np.where(ok[..., None, None], x, 0.0)
    if mode == "none" or min(sy, sx) < 3:
        return Pooled(x.astype(np.float32), "none", None)
    steps = (lambda angstrom, default: angstrom / step_angstrom if step_angstrom else default)
    flat = x.reshape(sy * sx, -1)
    if mode == "lattice" and lattice is None:
        from .novelty import detector_blocks, lattice_novelty

        found = lattice_novelty(detector_blocks(x.reshape(-1, *x.shape[2:])), (sy, sx), step_angstrom,
                                counts=counts, valid=ok.ravel())
        lattice = None if found is None else found.g
    if mode == "lattice" and lattice is not None:
        g = np.asarray(lattice)
        periodic = periodic_average(flat, (sy, sx), g, ok.ravel())
        sigma, scores = steps(RESIDUAL_ANGSTROM, 1.0), {}
        if counts and step_angstrom and np.array_equal(flat, np.rint(flat)):
            sigma, scores = residual_width(flat, x.shape, g, ok, step_angstrom)
        estimate = _lattice_estimate(flat, periodic, sigma, ok, counts).reshape(x.shape)
        used = "lattice"
    else:
        sigma, scores = steps(NEIGHBOURS_ANGSTROM, 0.4), {}
        estimate = _pooled(x, sigma, ok)
        used, lattice = "neighbours", None
    estimate = np.where(ok[..., None, None], estimate, 0.0)
    if counts:
        estimate = np.clip(estimate, 0, None)  # a rate is never negative
    return Pooled(estimate.astype(np.float32), used, float(sigma), scores, lattice)


def _lattice_estimate(flat: np.ndarray, periodic: np.ndarray, sigma: float, ok: np.ndarray,
                      counts: bool, directions: np.ndarray | None = None) -> np.ndarray:
    """The periodic part plus the residual pooled over ``sigma`` probe steps, shrunk where the
    lattice explains the pattern (module docstring); ``(n, P)`` in and out. ``directions``: of
    the periodic variation (:func:`~.novelty._periodic_directions`), when already known."""
    from .novelty import DIRECTIONS, _periodic_directions, _pooled_chi2

    sy, sx = ok.shape
    residual = flat - periodic
    noise = np.sqrt(np.clip(periodic, 0, None) + 1.0) if counts else residual[ok.ravel()].std(0) + 1e-12
    pooled = _pooled(residual.reshape(sy, sx, -1), sigma, ok).reshape(flat.shape)
    if directions is None:
        directions = _periodic_directions(periodic, counts, DIRECTIONS)
    projected = (residual / noise) @ directions.T
    chi = _pooled_chi2(projected.reshape(sy, sx, -1), ok, sigma).ravel()
    shrink = np.clip(1.0 - directions.shape[0] / np.where(chi > 0, chi, np.inf), 0.0, 1.0)
    return periodic + np.nan_to_num(shrink)[:, None] * pooled


def _centre_of_mass(flat: np.ndarray, detector: tuple[int, int]) -> np.ndarray:
    """``(n, 2)`` centres of mass (detector pixels) of the patterns ``(n, det_y · det_x)``."""
    grid = np.indices(detector).reshape(2, -1).T.astype(np.float64)
    total = flat.sum(1, keepdims=True)
    return (flat @ grid) / np.where(total > 0, total, np.inf)


def residual_width(flat: np.ndarray, shape: tuple[int, int, int, int], g: np.ndarray, ok: np.ndarray,
                   step_angstrom: float, seed: int = 0) -> tuple[float, dict[str, float]]:
    """The width (probe steps) over which ``"lattice"`` pools the residual of counts, chosen
    from :data:`RESIDUAL_WIDTHS_ANGSTROM` by the data alone (cross-validation by binomial
    thinning): each count is split at random into two halves — two independent Poisson scans of
    half the dose. The first half is pooled at each width, and the centres of mass of its pooled
    patterns are scored against those of the second half as measured. The second half's noise
    is the same for every width, so the lowest score marks the width whose deflection map is
    closest to the true one: narrow where the dose is high or a defect's field changes fast,
    wider at a low dose. The score is on the centre of mass because the deflection is what the
    pooled patterns must keep; on the whole patterns (tried, seed 1) the score always chose the
    widest width, which blurs a defect's field. Returns (width, each width's score minus the
    best, in detector pixels² summed over the scan)."""
    from .novelty import DIRECTIONS, _periodic_directions

    rng = np.random.default_rng(seed)
    counts = np.clip(flat, 0, None).astype(np.int64)
    half = rng.binomial(counts, 0.5).astype(np.float64)
    use = ok.ravel()
    periodic = periodic_average(half, shape[:2], g, use)
    target = _centre_of_mass(counts - half, shape[2:])
    directions = _periodic_directions(periodic, True, DIRECTIONS)
    score = {}
    for width in RESIDUAL_WIDTHS_ANGSTROM:
        estimate = _lattice_estimate(half, periodic, width / step_angstrom, ok, True, directions)
        estimate = _centre_of_mass(estimate, shape[2:])
        score[f"{width:g}"] = float(((estimate - target)[use] ** 2).sum())
    best = min(score, key=score.get)
    # chosen at half the dose, and used at the full dose as it is: scaling it by 2^(-1/3) (the
    # kernel rate in 2D) was tried on seed 1 and gained 0.000–0.001 at 10⁵ and 10⁴ but lost 0.004
    # at 10³ (the vacancy's pooled-COM |r|)
    return float(best) / step_angstrom, {k: v - score[best] for k, v in score.items()}
