"""Residuals summed over regions of the detector / window (rvae.local)."""

from __future__ import annotations

import numpy as np
import torch

from napari_4dstem_rvae.rvae import RVAE, RVAEConfig
from napari_4dstem_rvae.rvae.local import CENTRE_RADIUS, SITE_RADIUS, region_residuals, ring_regions, ring_scores


def _model(mask=None) -> RVAE:
    torch.manual_seed(0)
    return RVAE(RVAEConfig(encoder_hidden=(16,), decoder_hidden=(16, 16)), (12, 12), det_mask=mask).eval()


def test_region_sums_are_the_residuals_summed_over_each_region_inside_the_mask():
    mask = np.ones((12, 12), bool)
    mask[0, :] = False                                   # a masked row: never counted
    model = _model(mask)
    rng = np.random.default_rng(1)
    patterns = rng.normal(size=(37, 12, 12)).astype(np.float32)
    regions = np.zeros((3, 12, 12), bool)
    regions[0, 0:3, 0:3] = True                          # partly on the masked row
    regions[1, 5:8, 4:9] = True
    regions[2] = True
    got = region_residuals(model, patterns, regions, batch_size=10)   # batches of 10, 10, 10, 7
    full = model.residuals(torch.from_numpy(patterns)).numpy()        # (n, mask pixels)
    inside = regions.reshape(3, -1)[:, mask.ravel()]
    np.testing.assert_allclose(got, full @ inside.T.astype(np.float32), rtol=1e-4, atol=1e-4)


def test_ring_regions_lie_on_the_bond_ring_and_the_centre_last():
    bond = 9.0
    regions = ring_regions((32, 32), bond)
    assert regions.shape == (13, 32, 32) and regions.all(axis=(1, 2)).sum() == 0
    yy, xx = np.mgrid[:32, :32] - 15.5
    for k, region in enumerate(regions[:-1]):
        cy, cx = yy[region].mean(), xx[region].mean()
        assert abs(np.hypot(cy, cx) - bond) < 0.3                              # one bond out
        assert abs(np.angle(np.exp(1j * (np.arctan2(cy, cx) - k * np.pi / 6)))) < 0.05   # every 30°
        assert np.hypot(yy[region] - cy, xx[region] - cx).max() <= SITE_RADIUS * bond + 0.75
    assert np.hypot(yy[regions[-1]], xx[regions[-1]]).max() <= CENTRE_RADIUS * bond


def test_ring_scores_mark_a_missing_neighbour_and_a_brighter_centre():
    # windows of a honeycomb atom (three neighbours 120° apart) that a model reproduces well
    # (the mean window's content): one window lacks a neighbour, another has a brighter centre
    yy, xx = np.mgrid[:24, :24] - 11.5
    bond = 7.0

    def blob(y, x, a=1.0):
        return a * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.5**2))

    rng = np.random.default_rng(0)
    sites = [(bond * np.sin(a), bond * np.cos(a)) for a in np.radians([0, 120, 240])]
    clean = blob(0, 0) + sum(blob(y, x) for y, x in sites)
    windows = np.repeat(clean[None], 200, 0) + rng.normal(0, 0.05, (200, 24, 24))
    windows[17] -= blob(*sites[1])
    windows[42] += blob(0, 0, 0.6)
    windows = windows.astype(np.float32)

    class Mean:  # the model's expectation: the clean window, whatever the input (its residual API)
        det_shape = (24, 24)
        pixel_index = torch.arange(24 * 24)
        coords = torch.zeros(1, 2)  # where the model lives (the CPU)

        def residuals(self, x, pixels):
            return (x.reshape(len(x), -1) - torch.from_numpy(clean.astype(np.float32)).reshape(1, -1))[:, pixels] / 0.05

    scores = ring_scores(Mean(), windows, bond)
    assert np.argmax(scores["missing_neighbour"]) == 17 and scores["missing_neighbour"][17] > 10
    assert np.argmax(scores["centre_excess"]) == 42 and scores["centre_excess"][42] > 10
    assert abs(np.median(scores["missing_neighbour"])) < 2
