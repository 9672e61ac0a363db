"""The angle read from the decoder (:mod:`napari_4dstem_rvae.rvae.pose`): the posterior over a
grid of angles with the latents held — checked with a stand-in model whose decoder is a known
three-fold window (so the right answer is known), and on a trained rVAE for its bookkeeping."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_4dstem_rvae.rvae import pose

SIDE = 24


class ThreeFold:
    """A stand-in rVAE: its decoder is three Gaussian atoms 120° apart around a centre one,
    turned by the angle (counter-clockwise), Gaussian likelihood of width ``sigma``; its encoder
    gives no latents and no shift."""

    training = False

    def __init__(self, sigma: float = 0.1):
        y, x = np.mgrid[:SIDE, :SIDE] - (SIDE - 1) / 2
        self.coords = torch.tensor(np.column_stack([x.ravel(), -y.ravel()]) / (SIDE / 2), dtype=torch.float32)
        self.n_pixels = SIDE * SIDE
        self.sigma = sigma

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def prepare(self, patterns):
        x = patterns.reshape(len(patterns), -1)
        return x, x

    def encode(self, x):
        return {"z": torch.zeros(len(x), 0), "angle": torch.zeros(len(x))}

    def decode(self, z, angle, shift=None, coords=None):
        coords = self.coords if coords is None else coords
        out = torch.exp(-(coords ** 2).sum(-1) / 0.02).expand(len(angle), -1).clone()
        for k in range(3):
            t = angle[:, None] + 2 * math.pi * k / 3
            centre = 0.6 * torch.stack([torch.cos(t), torch.sin(t)], -1)          # (B, 1, 2)
            out = out + torch.exp(-((coords[None] - centre) ** 2).sum(-1) / 0.02)
        return out

    def nll(self, target, decoded, pixels=None):
        if pixels is not None:
            target = target[:, pixels]
        return ((target - decoded) ** 2).sum(-1) / (2 * self.sigma ** 2) * (self.n_pixels / decoded.shape[1])


def _windows(model, angles, noise, seed=0):
    clean = model.decode(torch.zeros(len(angles), 0), torch.tensor(angles, dtype=torch.float32)).numpy()
    rng = np.random.default_rng(seed)
    return (clean + rng.normal(0, noise, clean.shape)).reshape(-1, SIDE, SIDE).astype(np.float32)


def _mod(a, period):
    return (np.asarray(a) + period / 2) % period - period / 2


def test_the_decoders_angle_is_the_angle_its_windows_were_turned_by():
    model = ThreeFold()
    rng = np.random.default_rng(1)
    truth = rng.uniform(-math.pi, math.pi, 64)
    windows = _windows(model, truth, 0.1)
    angle, length = pose.decoder_angles(model, windows, 3, threads=1)
    period = 2 * math.pi / 3
    error = np.degrees(np.abs(_mod(angle - truth, period)))
    assert error.max() < 1.2, error.max()                 # a grid of 10°, interpolated: read within it
    assert np.all(np.abs(angle) <= period / 2 + 1e-6)     # in one period around 0
    assert np.all(length > 0.9)                           # one angle fits at this noise
    # much noisier windows under a likelihood that knows it: the posterior spreads (a shorter resultant)
    noisy = ThreeFold(sigma=2.0)
    _, spread = pose.decoder_angles(noisy, _windows(noisy, truth, 2.0, seed=2), 3, threads=1)
    assert np.median(spread) < np.median(length) - 0.15


@pytest.mark.parametrize("n", [12, 13])
def test_the_periodic_interpolation_passes_through_the_samples_and_is_exact_for_smooth_curves(n):
    rng = np.random.default_rng(n)
    values = torch.from_numpy(rng.normal(size=(5, n)))          # any samples, the Nyquist term included
    fine = pose.periodic_upsample(values, 8)
    assert fine.shape == (5, 8 * n)
    assert torch.allclose(fine[:, ::8], values, atol=1e-9)
    t = 2 * math.pi * np.arange(8 * n) / (8 * n)                # a curve the samples resolve
    curve = 1.5 + np.cos(t - 0.3) - 0.4 * np.sin(3 * t + 1.0)
    got = pose.periodic_upsample(torch.from_numpy(curve[::8].copy())[None], 8)[0].numpy()
    assert np.allclose(got, curve, atol=1e-9)


def test_the_pixel_budget_shrinks_the_profile_then_gives_up_unless_forced(monkeypatch):
    model = ThreeFold()
    assert pose.profile_pixels(model, 10) is None                            # small: every pixel
    monkeypatch.setattr(pose, "DECODED_CPU", 200 * pose.ANGLES * 300)
    pick = pose.profile_pixels(model, 200)
    assert len(pick) == 300 and torch.all(pick[1:] > pick[:-1])             # a sorted subset
    assert torch.equal(pick, pose.profile_pixels(model, 200))                # the same every call
    assert pose.profile_pixels(model, 10_000) is False                       # under MIN_PIXELS a pattern
    assert len(pose.profile_pixels(model, 10_000, force=True)) == pose.MIN_PIXELS
    rng = np.random.default_rng(3)
    truth = rng.uniform(-1, 1, 200)
    angle, _ = pose.decoder_angles(model, _windows(model, truth, 0.1), 3, threads=1)   # on 300 pixels
    assert np.degrees(np.abs(_mod(angle - truth, 2 * math.pi / 3))).max() < 2.0
    assert pose.decoder_angles(model, np.zeros((10_000, SIDE, SIDE), np.float32), 3) is None


@pytest.mark.parametrize("source", ["auto", "decoder", "encoder"])
def test_the_run_keeps_the_angle_that_splits_more_and_says_which(source):
    """On a trained rVAE: the note records both shares (two modes 60° apart of the aligned angle)
    and which angle was kept; "auto" keeps the larger, "decoder"/"encoder" the one asked for."""
    import warnings

    from napari_4dstem_rvae.atoms.windows import two_mode_share
    from napari_4dstem_rvae.simulate.haadf import haadf_series
    from napari_4dstem_rvae.workflows.atoms import analyse

    series, _ = haadf_series(n_frames=1, shape=(120, 120), seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = analyse(series, pixels=24, edge="drop", epochs=3, threads=1, with_baselines=False,
                         angle_from=source)
    note = result.windows_note
    kept = note["two_mode_share"]
    if source == "encoder":
        assert "two_mode_share_decoder" not in note and "angle_from" not in note
        return
    enc, dec = note["two_mode_share_encoder"], note["two_mode_share_decoder"]
    expected = "decoder" if source == "decoder" or dec > enc else "encoder"
    assert note["angle_from"] == expected and kept == (dec if expected == "decoder" else enc)
    aligned = result.values["angle"] - result.values["lattice_orientation"]
    assert two_mode_share(aligned, 3) == pytest.approx(kept, abs=1e-6)   # the values are the kept angle's
    std = result.values["angle_std"]
    assert np.all(np.isfinite(std)) and np.all(std >= 0)
    # the concentration as the encoder gives it: exp(−σ²/2) of the angle's own spread
    assert np.allclose(result.values["angle_concentration"], np.exp(-0.5 * std.astype(np.float64) ** 2), atol=1e-5)


def test_without_aligned_windows_auto_keeps_the_encoders_angle_and_decoder_still_reads_it():
    import warnings

    from napari_4dstem_rvae.simulate.haadf import haadf_series
    from napari_4dstem_rvae.workflows.atoms import analyse

    series, _ = haadf_series(n_frames=1, shape=(120, 120), seed=5)
    for source, expected in (("auto", None), ("decoder", "decoder")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = analyse(series, pixels=24, edge="drop", epochs=2, threads=1, with_baselines=False,
                             align=False, angle_from=source)
        assert result.windows_note.get("angle_from") == expected


def test_a_run_with_too_many_windows_for_the_decoder_keeps_the_encoders_angle_and_says_so(monkeypatch):
    import warnings

    from napari_4dstem_rvae.simulate.haadf import haadf_series
    from napari_4dstem_rvae.workflows import Message
    from napari_4dstem_rvae.workflows.atoms import AtomOptions, AtomRun

    monkeypatch.setattr(pose, "DECODED_CPU", 1)           # as if the windows were the study's 120,000
    series, _ = haadf_series(n_frames=1, shape=(120, 120), seed=5)
    run = AtomRun(series, options=AtomOptions(pixels=24, edge="drop"), rvae={"epochs": 1, "threads": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        said = [e.text for e in run.train_events() if isinstance(e, Message)]
    note = run.result.windows_note
    assert note["angle_from"].startswith("encoder (too many windows")
    assert note["two_mode_share"] == note["two_mode_share_encoder"] and "two_mode_share_decoder" not in note
    assert any("the angle is the encoder's: too many windows" in text for text in said), said
