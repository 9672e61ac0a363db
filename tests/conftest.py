"""Fixtures the tests share (helpers in :mod:`helpers`). Multi-minute tests carry
``@pytest.mark.slow``: ``make test-fast`` leaves them out; CI (``make test``) runs everything."""

from __future__ import annotations

import pytest



@pytest.fixture
def graphene_file(tmp_path):
    """A small simulated graphene scan (8 × 8 positions, 32 × 32 pixels) written as EMD 1.0."""
    from napari_4dstem_rvae.io import save_dataset
    from napari_4dstem_rvae.simulate import graphene

    return save_dataset(graphene(scan_shape=(8, 8), det_shape=(32, 32)), tmp_path / "scan.h5")
