"""A model that learnt nothing is told apart from one whose latents are quiet because the data
differ only by rotation: both conditions (latent KL near zero, the angle's posterior at its
broadest) must hold."""

from __future__ import annotations

from napari_4dstem_rvae.rvae import RVAEConfig, collapsed


def epoch(kl_z, kl_angle):
    return {"epoch": 1, "train_loss": 2513.4, "train_kl_z": kl_z, "train_kl_angle": kl_angle}


def test_the_grain_boundary_frames_collapse_is_named_and_a_trained_model_is_not():
    config = RVAEConfig()
    # the last epochs of the real grain-boundary frame (docs/quality.md)
    why = collapsed([epoch(0.22, 1.2), epoch(0.001, 0.659)], config)
    assert why is not None and "latent KL 0.001 nats per window" in why and "floor 0.659" in why
    assert collapsed([epoch(0.001, 2.4)], config) is None      # quiet latents, a sharp angle: learnt rotation
    assert collapsed([epoch(1.3, 0.659)], config) is None      # latents in use
    assert collapsed([epoch(0.001, 0.659), epoch(0.3, 0.7)], config) is None   # judged on the last epoch
    assert collapsed([], config) is None
    # the Gaussian angle posterior has another floor: not judged
    assert collapsed([epoch(0.001, 0.659)], config.replace(angle_posterior="gaussian")) is None
