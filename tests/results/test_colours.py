"""Per-atom colours and their key (results.colours)."""

from __future__ import annotations

import matplotlib
import numpy as np

from napari_4dstem_rvae.results.colours import feature_colours, feature_scale


def test_feature_colours_follow_their_scale_and_leave_nan_grey():
    rng = np.random.default_rng(0)
    signed = np.concatenate([rng.normal(0.0, 1.0, 500), [np.nan]])
    cmap, lo, hi = feature_scale(signed, "latent_1")
    assert cmap == "coolwarm" and lo == -hi and hi > 1.5          # symmetric about 0 for a signed feature
    colours = feature_colours(signed, "latent_1")
    assert colours.shape == (501, 4) and colours[-1, 3] < 1        # NaN: translucent grey
    np.testing.assert_allclose(colours[0], matplotlib.colormaps["coolwarm"]((signed[0] - lo) / (hi - lo)))
    positive = rng.exponential(1.0, 500)
    cmap, lo, hi = feature_scale(positive, "missing_neighbour")
    assert cmap == "viridis" and 0 <= lo < hi
    # on the circle: −60° and +60° of the angle mod 120° are one colour, the key spans the circle
    assert feature_scale(np.array([0.0]), "angle mod 120°")[1:] == (-60.0, 60.0)
    ends = feature_colours(np.array([-60.0, 60.0 - 1e-9]), "angle mod 120°")
    np.testing.assert_allclose(ends[0], ends[1], atol=0.02)   # a cyclic map's two ends
