"""What the atom-resolved study compared the rVAE with, on the same windows (PCA scores, a
Gaussian mixture), and the per-frame histograms of a per-atom quantity (its time dynamics)."""

from __future__ import annotations

from typing import Any

import numpy as np


#: The baselines are fitted on at most this many windows drawn at random (every window is scored):
#: at the study's scale (~100,000 windows) the fit on all of them cost 11 s of a 3-minute budget.
FIT_WINDOWS = 20_000


def baselines(windows: np.ndarray, components: int = 2, clusters: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """What the study compared the rVAE with, on the same windows: PCA (the first
    ``components`` scores) and a Gaussian mixture of ``clusters`` components (on 20 PCA
    scores, diagonal covariances), labels per window. Both are fitted on at most
    :data:`FIT_WINDOWS` windows drawn at random; every window gets its scores and label."""
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    flat = windows.reshape(len(windows), -1)
    n_keep = int(min(20, flat.shape[0] - 1, flat.shape[1]))
    if n_keep < max(components, 1) or len(flat) < clusters * 2:
        return {}
    rng = np.random.default_rng(seed)
    fit = np.sort(rng.choice(len(flat), FIT_WINDOWS, replace=False)) if len(flat) > FIT_WINDOWS else slice(None)
    sample = flat[fit].astype(np.float64)
    mean = sample.mean(axis=0)
    pca = PCA(n_keep, random_state=seed).fit(sample - mean)
    scores = np.concatenate([(flat[i:i + FIT_WINDOWS] - mean) @ pca.components_.T
                             for i in range(0, len(flat), FIT_WINDOWS)])
    gmm = GaussianMixture(clusters, covariance_type="diag", random_state=seed).fit(scores[fit])
    out = {f"pca_{i + 1}": scores[:, i].astype(np.float32) for i in range(components)}
    out["gmm_cluster"] = gmm.predict(scores).astype(np.float64)
    return out


def frame_histograms(values: np.ndarray, frames: np.ndarray, n_frames: int, bins: Any = 36,
                     value_range: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame histograms (density) of ``values``: ``(n_frames, bins)`` and the bin edges —
    the study's time dynamics (the angle histogram loses height and broadens as carbon is lost).
    Without ``value_range`` the bins span the 0.5–99.5 % percentiles of all frames (a few
    outliers would otherwise squeeze the bulk into one bin); values outside are left out."""
    values = np.asarray(values, np.float64)
    ok = np.isfinite(values)
    if value_range is None:
        value_range = tuple(float(v) for v in np.percentile(values[ok], [0.5, 99.5])) if ok.any() else (0.0, 1.0)
        if value_range[0] == value_range[1]:
            value_range = (value_range[0] - 0.5, value_range[1] + 0.5)
    edges = np.histogram_bin_edges(values[ok], bins=bins, range=value_range)
    out = np.zeros((n_frames, len(edges) - 1))
    for f in range(n_frames):
        m = ok & (frames == f)
        if m.any():
            out[f] = np.histogram(values[m], bins=edges, density=True)[0]
    return out, edges
