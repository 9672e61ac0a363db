"""The rVAE against physics: on simulated graphene (60 kV, 31 mrad), a content latent follows
the COM magnitude and the rotation follows the COM angle, as in the published study — with the
defaults, which select the model by held-out loss, never by the COM (the maps are judged on it);
and a pattern the model has not seen stands out in the novelty map."""

from __future__ import annotations

import numpy as np
import pytest

from napari_4dstem_rvae import rvae  # noqa: E402


@pytest.fixture(scope="module")
def graphene():
    from napari_4dstem_rvae.processing import compute_com
    from napari_4dstem_rvae.simulate import graphene as simulate

    ds = simulate(scan_shape=(24, 24), det_shape=(64, 64))
    com = compute_com(ds)
    return ds, np.hypot(com.x, com.y), np.arctan2(com.y, com.x)


@pytest.fixture(scope="module")
def trained(graphene):
    """One model for the module: the defaults, with a shorter training than the default ~2,400
    steps to fit a test budget."""
    data, magnitude, angle = graphene
    return rvae.fit(data, steps=1000, threads=2, com_magnitude=magnitude, com_angle=angle)


@pytest.mark.slow
def test_latent_follows_com_magnitude_on_simulated_graphene(graphene, trained, tmp_path):
    data, magnitude, angle = graphene
    result = trained
    assert result.config.epoch_selection == "held_out" and result.config.likelihood == "gaussian"
    assert result.maps.latents.shape == (2, 24, 24)
    assert result.max_abs_r >= 0.95, result.latent_r
    assert abs(result.angle_rho) >= 0.8, result.angle_rho         # Fisher–Lee
    assert result.final.angle_agreement >= 0.8
    assert np.all((result.maps.angle_concentration > 0) & (result.maps.angle_concentration <= 1))
    # the maps of the saved model are the same after a round trip
    path = result.trainer.save(tmp_path / "graphene.pt")
    again = rvae.encode(rvae.load_model(path), data)
    np.testing.assert_allclose(again.latents, result.maps.latents, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_pattern_from_another_structure_is_novel(graphene, trained):
    """Patterns of another material injected into the scan of a trained model: the novelty map
    ranks them above every graphene position."""
    from napari_4dstem_rvae.simulate import graphene as simulate

    data, _, _ = graphene
    result = trained
    # "another structure": a honeycomb 1.4× larger (lattice constant 3.44 Å), same optics: its
    # patterns differ from graphene's by only 2–7 % of the intensity
    other = simulate(scan_shape=(24, 24), det_shape=(64, 64), lattice_constant=3.44)
    mixed = np.array(data.data, copy=True)
    where = [(3, 4), (12, 17), (20, 9)]
    for y, x in where:
        mixed[y, x] = other.data[y, x]
    maps = rvae.encode(result.model, mixed, novelty=True)
    ranked = np.argsort(maps.novelty.ravel())[::-1]
    injected = {y * 24 + x for y, x in where}
    assert set(ranked[:3].tolist()) == injected, [divmod(int(i), 24) for i in ranked[:5]]
