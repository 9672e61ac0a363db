"""What breaks the crystal's periodicity: each pattern against the scan's periodic average.

A crystal scanned with a probe gives patterns that repeat with the lattice: the pattern at a
probe position ``p`` equals the pattern at ``p + n₁a₁ + n₂a₂``. A single vacancy or dopant
breaks that symmetry only near itself, and by little (a few per cent of the pattern at
10⁵ e⁻, less than the counting noise of one pattern at 10⁴ e⁻), far less than the patterns
change across the unit cell. A model that explains every pattern from a few latents (the
rVAE, PCA) does not separate the two: its misfit of the lattice is as large as the defect.
The periodic average does (the Bragg filter of high-resolution imaging, applied to every
detector region of a 4D scan):

1. **Periodic average.** For every coarse detector region (an ``8 × 8`` grid of blocks,
   where a defect's change is smooth and the counting noise averages out) the intensity over
   the scan is fitted by a truncated Fourier series of the lattice,
   ``I(p) = Σ_G c_G exp(2πi G·p)``, ``G = n₁g₁ + n₂g₂`` (|n| ≤ 3); the fit is iterated once
   without the positions that deviate most, so that a defect does not bend the average. The
   residuals are put in units of the noise (Pearson residuals for counts).
2. **Where a defect shows.** A defect changes the patterns the way the lattice changes them
   (the beam deflected, more or less scattered to dark field), so the residual of each
   position is projected on the ``3`` leading directions of the (noise-whitened) periodic
   variation: a χ² of 3 degrees of freedom under counting noise, instead of 64 (most of the
   64 blocks carry noise only: 2.1–2.4 robust SD at a vacancy at 10⁴ e⁻ became > 20).
3. **Pooled before squaring.** A defect changes every pattern within the probe's reach the
   same way, so the projected residuals are averaged over ``0.25 Å`` (a Gaussian, normalised
   at the scan's edges) before they are squared: the defect's change adds up, the noise
   averages out (squaring first would pool the noise's variance too).
4. The novelty is the largest of the robust z-scores of the pooled and the single-position
   χ² and of the single position's χ² over all blocks (a single odd pattern keeps its own
   score, also when it changes the pattern unlike the lattice does).

The lattice (``g₁, g₂``, in cycles per probe step) is found from the data: the strongest peaks
of the power spectrum of the leading principal-component maps of the block intensities
(smoothed over one probe step for counts, so that low doses still show it; two steps would
lend random noise a lattice), refined by least
squares. When the scan shows no lattice (the periodic fit explains less than half of the
variation of the principal-component maps), :func:`lattice_novelty` returns ``None`` and the
caller falls back to the model's own residual. Measured in ``benchmarks/bench_rvae_quality.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Detector blocks per side for the novelty (the patterns are summed over an 8 × 8 grid).
GRID = 8
#: Harmonics of the lattice in the periodic average (|n₁|, |n₂| ≤ HARMONICS).
HARMONICS = 3
#: Share of the principal-component maps' variation the lattice must explain.
MIN_PERIODIC_SHARE = 0.5
#: Width (Å) of the Gaussian that pools the residuals over neighbouring probe positions.
SMOOTH_ANGSTROM = 0.25
#: Directions of the periodic variation the residuals are projected on.
DIRECTIONS = 3


@dataclass
class LatticeNovelty:
    """The novelty map (robust z-scores, ``(scan_y, scan_x)``), the lattice's reciprocal
    vectors ``g`` (2 × (gy, gx), cycles per probe step) and the share of the principal-component
    maps' variation that the lattice explains."""

    novelty: np.ndarray
    g: np.ndarray
    periodic_share: float


def detector_blocks(patterns: np.ndarray, grid: int = GRID) -> np.ndarray:
    """Patterns ``(B, det_y, det_x)`` summed over a ``grid × grid`` grid of detector blocks →
    ``(B, grid²)`` float64 (blocks of nearly equal size when the sides do not divide)."""
    patterns = np.asarray(patterns)
    out = patterns.astype(np.float64, copy=False)
    for axis in (1, 2):
        size = patterns.shape[axis]
        n = min(grid, size)
        edges = np.linspace(0, size, n + 1).round().astype(int)[:-1]
        out = np.add.reduceat(out, edges, axis=axis)
    return out.reshape(len(out), -1)


def _design(g: np.ndarray, positions: np.ndarray, harmonics: int) -> np.ndarray:
    cols = [np.ones(len(positions))]
    for n1 in range(-harmonics, harmonics + 1):
        for n2 in range(-harmonics, harmonics + 1):
            if (n1, n2) <= (0, 0):
                continue  # each ±G pair once
            phase = 2 * np.pi * (positions @ (n1 * g[0] + n2 * g[1]))
            cols += [np.cos(phase), np.sin(phase)]
    return np.stack(cols, 1)


def _residual(values: np.ndarray, design: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    if weights is None:
        coef = np.linalg.lstsq(design, values, rcond=None)[0]
    else:
        coef = np.linalg.lstsq(design * weights[:, None], values * weights[:, None], rcond=None)[0]
    return values - design @ coef


def find_lattice(maps: np.ndarray, valid: np.ndarray | None = None, harmonics: int = 2,
                 ) -> tuple[np.ndarray, float] | None:
    """Reciprocal lattice vectors ``(2, 2)`` (rows g₁, g₂ as (gy, gx), cycles per probe step)
    of scan maps ``(k, scan_y, scan_x)`` and the share of their variation a periodic fit
    explains; ``None`` when the maps show no two independent periodicities."""
    from scipy.optimize import minimize

    _, sy, sx = maps.shape
    valid = np.ones((sy, sx), bool) if valid is None else valid
    centred = np.where(valid, maps - np.array([m[valid].mean() for m in maps])[:, None, None], 0.0)
    py, px = (max(128, 1 << int(np.ceil(np.log2(4 * s)))) for s in (sy, sx))
    power = sum(np.abs(np.fft.fft2(m, (py, px))) ** 2 for m in centred)
    fy = np.fft.fftfreq(py)[:, None]
    fx = np.fft.fftfreq(px)[None, :]
    radius = np.hypot(fy, fx)
    power = np.where(radius < 1.5 / min(sy, sx), 0.0, power)  # fewer than 1.5 periods across the scan
    power = np.where(radius > 0.5, 0.0, power)

    def peak(p: np.ndarray) -> np.ndarray:
        i, j = np.unravel_index(np.argmax(p), p.shape)
        return np.array([fy[i, 0], fx[0, j]])

    if not power.any():
        return None
    g1 = peak(power)
    direction = np.arctan2(g1[0], g1[1])
    other = np.where(np.abs(np.sin(np.arctan2(fy, fx) - direction)) < 0.5, 0.0, power)
    if not other.any():
        return None
    g2 = peak(other)
    yy, xx = np.nonzero(valid)
    positions = np.stack([yy, xx], 1).astype(np.float64)
    values = centred[:, yy, xx].T
    if len(positions) > 16384:  # the refinement on a random subset of large scans
        pick = np.random.default_rng(0).choice(len(positions), 16384, replace=False)
        positions, values = positions[pick], values[pick]
    cols = (2 * harmonics + 1) ** 2
    if len(positions) < 4 * cols:
        return None

    def cost(v: np.ndarray) -> float:
        return float((_residual(values, _design(v.reshape(2, 2), positions, harmonics)) ** 2).sum())

    start = np.r_[g1, g2]
    best = minimize(cost, start, method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-9, "maxiter": 600})
    g = (best.x if best.fun < cost(start) else start).reshape(2, 2)
    total = float((values ** 2).sum())
    share = 1.0 - min(best.fun, cost(start)) / total if total > 0 else 0.0
    return g, share


def lattice_novelty(blocks: np.ndarray, scan_shape: tuple[int, int], step_angstrom: float | None = None,
                    counts: bool = False, valid: np.ndarray | None = None,
                    smooth_angstrom: float = SMOOTH_ANGSTROM) -> LatticeNovelty | None:
    """The novelty of every probe position against the scan's periodic average (module doc).

    ``blocks``: ``(n, m)`` detector-block sums of every pattern (:func:`detector_blocks`),
    flat over ``scan_shape``; ``counts``: the patterns are counts (Pearson residuals, else
    each block's residual in units of its robust spread over the scan); ``valid``: flat
    boolean mask of usable positions (others are NaN in the map); ``step_angstrom``: the scan
    step, for the ``smooth_angstrom`` pooling (1 probe step when unknown).
    Returns ``None`` when the scan shows no lattice.
    """
    sy, sx = scan_shape
    n = sy * sx
    blocks = np.asarray(blocks, np.float64)
    valid = np.ones(n, bool) if valid is None else np.asarray(valid, bool) & np.isfinite(blocks).all(1)
    if min(sy, sx) < 8 or valid.sum() < 64:
        return None
    # counts: smoothed over one probe step (wider smoothing lends random noise a "lattice")
    found = _lattice_of(blocks, valid, scan_shape, counts, 1.0 if counts else 0.0)
    if found is None or found[1] < MIN_PERIODIC_SHARE:
        return None
    g, share = found
    yy, xx = np.divmod(np.flatnonzero(valid), sx)
    positions = np.stack([yy, xx], 1).astype(np.float64)
    harmonics = HARMONICS
    while harmonics > 1 and valid.sum() < 8 * (2 * harmonics + 1) ** 2:
        harmonics -= 1
    standard, periodic = _standard_residuals(blocks[valid], _design(g, positions, harmonics), counts)
    directions = _periodic_directions(periodic, counts)
    projected = np.zeros((n, directions.shape[0]))
    projected[valid] = standard @ directions.T
    single = np.where(valid, (projected ** 2).sum(1), np.nan).reshape(sy, sx)
    everything = np.full(n, np.nan)
    everything[valid] = (standard ** 2).sum(1)  # any change, also one unlike the lattice's own
    z = np.fmax(robust_z(single), robust_z(everything.reshape(sy, sx)))
    sigma = smooth_angstrom / step_angstrom if step_angstrom else 1.0
    if sigma > 0.2:  # pooled: a defect changes every pattern within the probe's reach alike
        pooled = _pooled_chi2(projected.reshape(sy, sx, -1), valid.reshape(sy, sx), sigma)
        z = np.fmax(z, robust_z(pooled))  # a single odd pattern keeps its own score (NaN stays NaN)
    return LatticeNovelty(novelty=z.astype(np.float32), g=g, periodic_share=float(share))


def _lattice_of(blocks: np.ndarray, valid: np.ndarray, scan_shape: tuple[int, int], counts: bool,
                smooth: float = 1.0) -> tuple[np.ndarray, float] | None:
    """:func:`find_lattice` of the leading principal-component maps of the block intensities
    (for counts variance-stabilised and smoothed over ``smooth`` probe steps)."""
    from scipy.ndimage import gaussian_filter

    sy, sx = scan_shape
    features = 2 * np.sqrt(np.clip(blocks, 0, None) + 0.375) if counts else blocks.copy()
    scale = features[valid].std(0)
    features = features / np.where(scale > 0, scale, 1.0)
    if counts and smooth > 0:  # at low doses the lattice shows only when neighbours are pooled
        features[~valid] = features[valid].mean(0)
        features = np.stack([gaussian_filter(f.reshape(sy, sx), smooth, mode="nearest").ravel()
                             for f in features.T], 1)
    k = min(4, features.shape[1], int(valid.sum()) - 1)
    # the principal-component scores by one SVD (scikit-learn's import alone took 1.5 s of each run)
    centred = features[valid] - features[valid].mean(0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    scores = u[:, :k] * s[:k]
    maps = np.zeros((k, sy * sx))
    maps[:, valid] = scores.T
    return find_lattice(maps.reshape(k, sy, sx), valid.reshape(sy, sx))


def _standard_residuals(y: np.ndarray, design: np.ndarray, counts: bool) -> tuple[np.ndarray, np.ndarray]:
    """(residuals in units of the noise, the periodic fit) of the block sums ``y``; the fit is
    done twice, the second time without the positions that deviate most (the defects)."""
    weights = np.ones(len(y))
    for _ in range(2):
        residual = _residual(y, design, weights)
        fit = y - residual
        if counts:
            standard = residual / np.sqrt(np.clip(fit, 0, None) + 1.0)
        else:
            spread = 1.4826 * np.median(np.abs(residual - np.median(residual, 0)), 0)
            spread = np.where(spread > 0, spread, residual.std(0))
            standard = residual / np.where(spread > 0, spread, 1.0)
        weights = (robust_z((standard ** 2).sum(1)) < 5).astype(np.float64)
    return standard, fit


def _periodic_directions(periodic: np.ndarray, counts: bool, k: int = DIRECTIONS) -> np.ndarray:
    """The ``k`` leading directions ``(k, m)`` (orthonormal) of the periodic variation over the
    scan, each block in units of its noise: where the lattice — and so a defect — changes the
    patterns most against the counting noise."""
    mean = periodic.mean(0)
    noise = np.sqrt(np.clip(mean, 0, None) + 1.0) if counts else periodic.std(0) + 1e-12
    whitened = np.nan_to_num((periodic - mean) / noise)
    k = min(k, whitened.shape[1])
    try:
        return np.linalg.svd(whitened, full_matrices=False)[2][:k]
    except np.linalg.LinAlgError:
        # LAPACK's divide-and-conquer SVD fails now and then on valid matrices (seen at 10³ e⁻):
        # the same directions from the eigenvectors of the (small, blocks × blocks) scatter matrix
        values, vectors = np.linalg.eigh(whitened.T @ whitened)
        return vectors[:, np.argsort(values)[::-1][:k]].T


def _pooled_chi2(projected: np.ndarray, valid: np.ndarray, sigma: float) -> np.ndarray:
    """Σ (Gaussian-pooled projections)² over the directions, in units of the pooled noise's
    variance (a normalised convolution: the scan's edges and invalid positions count less);
    χ² with as many degrees of freedom as directions under counting noise."""
    from scipy.ndimage import convolve

    r = int(np.ceil(3 * sigma))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    kernel = np.exp(-(yy ** 2 + xx ** 2) / (2 * sigma ** 2))
    weight = valid.astype(np.float64)
    norm = convolve(weight, kernel, mode="constant")
    spread = convolve(weight, kernel ** 2, mode="constant") / np.where(norm > 0, norm, 1.0) ** 2
    chi = np.zeros(valid.shape)
    for d in range(projected.shape[-1]):
        pooled = convolve(projected[..., d] * weight, kernel, mode="constant") / np.where(norm > 0, norm, 1.0)
        chi += pooled ** 2
    return np.where(valid, chi / np.where(spread > 0, spread, 1.0), np.nan)


def robust_z(values: np.ndarray) -> np.ndarray:
    """(v − median) / (1.4826 · MAD) over the finite values (NaN stays NaN): z-scores that a few
    outliers (the defects) do not inflate; the standard deviation when the MAD is 0."""
    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    median = np.median(finite)
    mad = 1.4826 * np.median(np.abs(finite - median))
    return (values - median) / (mad if mad > 0 else (finite.std() or 1.0))
