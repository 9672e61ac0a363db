"""rVAE model: loss terms against hand computations, the folded decoder, grid conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import loaded_after_import

from napari_4dstem_rvae.rvae import RVAE, RVAEConfig, decode  # noqa: E402
from napari_4dstem_rvae.rvae.model import (  # noqa: E402
    gaussian_kl,
    gaussian_nll,
    rotation_matrix,
    uniform_angle_kl,
)


def small_model(**changes) -> RVAE:
    config = RVAEConfig(encoder_hidden=(16,), decoder_hidden=(16, 16), **changes)
    return RVAE(config, (8, 8), data_scale=2.0)


def test_import_of_package_does_not_import_torch():
    # the package and its Dataset4D (napari_4dstem_rvae.dataset) load without torch
    assert loaded_after_import("napari_4dstem_rvae.dataset", ("torch",)) == set()


def test_gaussian_kl_matches_hand_computation():
    # KL(N(1, 0.5²) ‖ N(0, 1)) = ½(0.25 + 1 − 1 − ln 0.25)
    kl = gaussian_kl(torch.tensor(1.0), torch.tensor(math.log(0.5)))
    assert float(kl) == pytest.approx(0.5 * (0.25 + 1 - 1 - math.log(0.25)), rel=1e-6)
    # KL(N(0.3, 0.2²) ‖ N(0, π²)) = ln(π/0.2) + (0.2² + 0.3²)/(2π²) − ½
    kl = gaussian_kl(torch.tensor(0.3), torch.tensor(math.log(0.2)), math.pi)
    expected = math.log(math.pi / 0.2) + (0.04 + 0.09) / (2 * math.pi**2) - 0.5
    assert float(kl) == pytest.approx(expected, rel=1e-6)
    # uniform prior on the circle: ln 2π − ½ ln(2πe σ²)
    kl = uniform_angle_kl(torch.tensor(math.log(0.1)))
    assert float(kl) == pytest.approx(math.log(2 * math.pi) - 0.5 * math.log(2 * math.pi * math.e * 0.01), rel=1e-6)


def test_gaussian_nll_matches_hand_computation():
    target = torch.tensor([[1.0, 2.0, 0.0]])
    mean = torch.tensor([[0.0, 2.0, 1.0]])
    sigma = 0.5
    nll = gaussian_nll(target, mean, torch.tensor(math.log(sigma)))
    expected = 0.5 * (1 + 0 + 1) / sigma**2 + 3 * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
    assert float(nll) == pytest.approx(expected, rel=1e-6)


def test_loss_parts_are_the_elbo_terms():
    """The Gaussian angle of version 0.1 with its N(0, π²) prior (``angle_posterior="gaussian"``)."""
    model = small_model(noise_std=0.7, angle_posterior="gaussian", rotation_prior=math.pi)
    x = model.flatten(torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        total, parts = model.loss(x, sample=False, kl_weight=0.5)
        post = model.encode(x)
        recon = model.decode(post["z"], post["angle"])
    sq = ((x - recon) ** 2).sum(1)
    expected_recon = 0.5 * sq / 0.49 + 64 * (math.log(0.7) + 0.5 * math.log(2 * math.pi))
    assert float(parts["recon"]) == pytest.approx(float(expected_recon.mean()), rel=1e-5)
    z, zs = post["z"], post["z_log_std"].exp()
    kl_z = 0.5 * (zs**2 + z**2 - 1 - torch.log(zs**2)).sum(1)
    assert float(parts["kl_z"]) == pytest.approx(float(kl_z.mean()), rel=1e-5)
    a, s = post["angle"], post["angle_log_std"].exp()
    kl_a = torch.log(math.pi / s) + (s**2 + a**2) / (2 * math.pi**2) - 0.5
    assert float(parts["kl_angle"]) == pytest.approx(float(kl_a.mean()), rel=1e-5)
    assert float(parts["kl_shift"]) == 0.0
    expected_total = (expected_recon + 0.5 * (kl_z + kl_a)).mean()
    assert float(total) == pytest.approx(float(expected_total), rel=1e-5)


def test_pixel_subset_is_an_unbiased_estimate_of_the_reconstruction():
    model = small_model(noise_std=1.0)
    x = model.flatten(torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():
        _, full = model.loss(x, sample=False)
        pixels = torch.arange(0, 64, 2)
        _, half = model.loss(x, sample=False, pixels=pixels)
        post = model.encode(x)
        recon = model.decode(post["z"], post["angle"])
    sub = (0.5 * ((x - recon)[:, pixels] ** 2).sum(1) + 32 * 0.5 * math.log(2 * math.pi)) * 2
    assert float(half["recon"]) == pytest.approx(float(sub.mean()), rel=1e-5)
    # averaging over a partition of the pixels gives the full term exactly
    with torch.no_grad():
        _, other = model.loss(x, sample=False, pixels=torch.arange(1, 64, 2))
    assert float(half["recon"] + other["recon"]) / 2 == pytest.approx(float(full["recon"]), rel=1e-5)


def test_folded_first_layer_equals_concatenated_coordinates():
    """decode() = the textbook spatial-VAE decoder: MLP([Rᵀ(x − Δ); z]) at every pixel."""
    model = small_model(learn_shift=True, latent_dim=3)
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(5, 3, generator=gen)
    angle = torch.rand(5, generator=gen) * 6 - 3
    shift = torch.randn(5, 2, generator=gen) * 0.1
    with torch.no_grad():
        folded = model.decode(z, angle, shift)
        u = torch.einsum("bji,bpj->bpi", rotation_matrix(angle), model.coords[None] - shift[:, None])
        inputs = torch.cat([u, z[:, None].expand(-1, u.shape[1], -1)], -1)
        w = torch.cat([model.dec_coord.weight, model.dec_latent.weight], 1)
        h = torch.tanh(inputs @ w.T + model.dec_latent.bias)
        for layer in model.dec_hidden:
            h = torch.tanh(layer(h))
        naive = model.dec_out(h).squeeze(-1)
    torch.testing.assert_close(folded, naive, rtol=1e-5, atol=1e-5)


def test_decoding_without_gradients_in_chunks_equals_one_piece(monkeypatch):
    """Inference decodes a large batch in chunks of at most DECODE_ROWS (pattern, pixel) rows
    (faster, less memory); the values are those of one piece, shift included; with gradients
    the batch stays one piece."""
    from napari_4dstem_rvae.rvae import model as model_module

    model = small_model(learn_shift=True, latent_dim=3)
    gen = torch.Generator().manual_seed(4)
    z, angle, shift = torch.randn(37, 3, generator=gen), torch.randn(37, generator=gen), torch.randn(37, 2, generator=gen)
    with torch.no_grad():
        whole = model.decode(z, angle, shift)
        calls = []
        original = model.decode
        monkeypatch.setattr(model, "decode", lambda *a, **k: (calls.append(a[0].shape[0]), original(*a, **k))[1])
        monkeypatch.setattr(model_module, "DECODE_ROWS", 5 * model.n_pixels)
        chunked = original(z, angle, shift)
    assert calls == [5] * 7 + [2]                      # 37 patterns in chunks of 5
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)
    calls.clear()
    original(z, angle, shift)                          # gradients on (training): one piece
    assert calls == []


def test_angle_is_counter_clockwise_on_screen_about_the_centre():
    model = small_model()
    z = torch.randn(1, 2, generator=torch.Generator().manual_seed(4)).numpy()
    upright = decode(model, z, 0.0)[0]
    quarter = decode(model, z, math.pi / 2)[0]
    # np.rot90 turns an image counter-clockwise as displayed with rows downwards
    np.testing.assert_allclose(quarter, np.rot90(upright), rtol=1e-4, atol=1e-5)
    half = decode(model, z, math.pi)[0]
    np.testing.assert_allclose(half, np.rot90(upright, 2), rtol=1e-4, atol=1e-5)


def test_shift_is_in_pixels_x_right_y_down():
    model = small_model(learn_shift=True)
    z = torch.randn(1, 2, generator=torch.Generator().manual_seed(5)).numpy()
    base = decode(model, z, 0.0, np.zeros((1, 2)))[0]
    moved = decode(model, z, 0.0, np.array([[2.0, 1.0]]))[0]   # 2 px right, 1 px down
    np.testing.assert_allclose(moved[1:, 2:], base[:-1, :-2], rtol=1e-4, atol=1e-5)


def test_rotation_centre_follows_the_direct_beam():
    config = RVAEConfig(encoder_hidden=(8,), decoder_hidden=(8, 8))
    model = RVAE(config, (9, 9), center=(3.0, 5.0))
    assert model.center == (3.0, 5.0)
    # the centre pixel has coordinates (0, 0): every rotation leaves its value unchanged
    z = np.zeros((1, 2), np.float32)
    values = [decode(model, z, a)[0, 3, 5] for a in (0.0, 1.0, 2.5)]
    np.testing.assert_allclose(values, values[0], rtol=1e-5)


def test_detector_mask_decodes_only_masked_pixels():
    mask = np.zeros((8, 8), bool)
    mask[2:6, 1:7] = True
    config = RVAEConfig(encoder_hidden=(8,), decoder_hidden=(8, 8))
    model = RVAE(config, (8, 8), det_mask=mask)
    assert model.n_pixels == 24
    assert model.encoder[0].in_features == 24
    out = decode(model, np.zeros((2, 2)), 0.3)
    assert out.shape == (2, 8, 8)
    assert np.all(out[:, ~mask] == 0)


def test_model_construction_leaves_global_rng_alone():
    before = torch.random.get_rng_state().clone()
    a = small_model(seed=7)
    b = small_model(seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    c = small_model(seed=8)
    assert not torch.equal(a.encoder[0].weight, c.encoder[0].weight)


@pytest.mark.parametrize("changes, name", [
    ({"latent_dim": 0}, "latent_dim"),
    ({"latent_dim": 100}, "latent_dim"),
    ({"likelihood": "laplace"}, "likelihood"),
    ({"rotation_prior": -1.0}, "rotation_prior"),
    ({"learning_rate": 0.0}, "learning_rate"),
    ({"test_fraction": 1.0}, "test_fraction"),
    ({"device": "tpu"}, "device"),
])
def test_bad_configuration_names_the_parameter(changes, name):
    with pytest.raises(ValueError, match=name):
        RVAEConfig(**changes)


def test_config_round_trips_through_plain_dict():
    config = RVAEConfig(latent_dim=3, decoder_hidden=(64, 32), rotation_prior=None, center=(31.5, 32.0))
    again = RVAEConfig.from_dict(config.to_dict())
    assert again == config
    with pytest.raises(ValueError, match="unknown"):
        RVAEConfig.from_dict({**config.to_dict(), "colour": 1})


def test_projected_normal_kl_against_numerical_integration():
    """KL(PN ‖ uniform) = ∫ p log(2π p) over the circle; against a fine grid and Monte Carlo."""
    from napari_4dstem_rvae.rvae import circular

    phi = torch.linspace(-math.pi, math.pi, 400_001, dtype=torch.float64)
    for s in (0.0, 0.5, 2.0, 7.0, 40.0):
        st = torch.tensor([s], dtype=torch.float64)
        p = circular.density(phi, st)
        assert float(torch.trapezoid(p, phi)) == pytest.approx(1.0, abs=1e-6)
        kl_numeric = float(torch.trapezoid(p * torch.log((2 * math.pi * p).clamp_min(1e-300)), phi))
        assert float(circular.kl_uniform(st)) == pytest.approx(kl_numeric, abs=2e-4)
        draws = circular.sample(torch.tensor([[s, 0.0]], dtype=torch.float64).expand(200_000, 2),
                                torch.randn((200_000, 2), generator=torch.Generator().manual_seed(0),
                                            dtype=torch.float64))
        assert float(circular.mean_resultant_length(st)) == pytest.approx(float(torch.cos(draws).mean()), abs=5e-3)
    # von Mises prior vM(0, κ): KL = ∫ p log(p / q)
    kappa, mu, s = 3.0, 0.7, 2.5
    theta = phi + mu
    q = torch.exp(kappa * torch.cos(theta)) / (2 * math.pi * torch.special.i0(torch.tensor(kappa, dtype=torch.float64)))
    p = circular.density(phi, torch.tensor([s], dtype=torch.float64))
    numeric = float(torch.trapezoid(p * torch.log(p / q), phi))
    got = float(circular.kl_von_mises(torch.tensor([s], dtype=torch.float64), torch.tensor([mu], dtype=torch.float64),
                                      kappa))
    assert got == pytest.approx(numeric, abs=2e-4)


def test_poisson_nll_and_deviance_against_a_hand_calculation():
    from napari_4dstem_rvae.rvae.likelihood import (
        anscombe,
        poisson_deviance,
        poisson_nll,
    )

    y = torch.tensor([[0.0, 1.0, 4.0]], dtype=torch.float64)
    rate = torch.tensor([[0.5, 2.0, 3.0]], dtype=torch.float64)
    by_hand = sum(lam - k * math.log(lam) + math.lgamma(k + 1) for k, lam in ((0, 0.5), (1, 2.0), (4, 3.0)))
    assert float(poisson_nll(y, torch.log(rate))) == pytest.approx(by_hand, rel=1e-12)
    dev = 2 * (0.5 + (1 * math.log(1 / 2.0) - (1 - 2.0)) + (4 * math.log(4 / 3.0) - (4 - 3.0)))
    assert float(poisson_deviance(y, torch.log(rate))) == pytest.approx(dev, rel=1e-12)
    # the Anscombe transform makes Poisson counts unit-variance (for means above a few counts)
    draws = torch.poisson(torch.full((200_000,), 20.0, dtype=torch.float64), generator=torch.Generator().manual_seed(0))
    assert float(anscombe(draws).var()) == pytest.approx(1.0, abs=0.03)


def test_model_with_count_likelihoods_reconstructs_counts():
    counts = torch.poisson(torch.full((4, 8, 8), 5.0), generator=torch.Generator().manual_seed(2))
    for likelihood in ("anscombe", "poisson"):
        model = small_model(likelihood=likelihood)
        x, target = model.prepare(counts)
        assert torch.equal(target, counts.reshape(4, 64)) == (likelihood == "poisson")
        total, parts = model.loss(x, target, sample=False)
        assert torch.isfinite(total) and float(parts["recon"]) > 0
        recon = model.unflatten(model.decode(torch.zeros(4, 2), torch.zeros(4)))
        assert recon.shape == (4, 8, 8) and float(recon.min()) >= 0   # counts are never negative
