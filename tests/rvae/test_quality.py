"""The rVAE against physics: on simulated graphene (60 kV, 31 mrad), a content latent follows
the COM magnitude and the rotation follows the COM angle, as in the published study."""

from __future__ import annotations

import numpy as np
import pytest

from napari_4dstem_rvae import rvae  # noqa: E402


@pytest.fixture(scope="module")
def graphene():
    from napari_4dstem_rvae.processing import compute_com, subtract_mean_pattern
    from napari_4dstem_rvae.simulate import graphene as simulate

    ds = simulate(scan_shape=(24, 24), det_shape=(64, 64))
    com = compute_com(ds)
    return subtract_mean_pattern(ds), np.hypot(com.x, com.y), np.arctan2(com.y, com.x)


def test_latent_follows_com_magnitude_on_simulated_graphene(graphene, tmp_path):
    data, magnitude, angle = graphene
    # the defaults, with a shorter training than the default ~2,400 steps to fit a test budget
    result = rvae.fit(data, steps=1000, threads=2, com_magnitude=magnitude, com_angle=angle)
    assert result.maps.latents.shape == (2, 24, 24)
    assert result.max_abs_r >= 0.95, result.latent_r
    assert abs(result.angle_rho) >= 0.8, result.angle_rho
    # the maps of the saved model are the same after a round trip
    path = result.trainer.save(tmp_path / "graphene.pt")
    again = rvae.encode(rvae.load_model(path), data)
    np.testing.assert_allclose(again.latents, result.maps.latents, rtol=1e-4, atol=1e-5)
