"""Built-in sample data: physics-based 4D-STEM simulations of monolayer graphene."""

from __future__ import annotations


def _sample(defect=None) -> list:
    from ..workflows import graphene
    from .reader import layer_data_for

    return layer_data_for(graphene(defect=defect))


def graphene_sample() -> list:
    """Perfect graphene, 60 kV, 31 mrad probe, 32 × 32 scan, 64 × 64 detector."""
    return _sample(None)


def graphene_vacancy_sample() -> list:
    """Graphene with a single carbon vacancy at the centre of the scan."""
    return _sample("vacancy")


def graphene_si_sample() -> list:
    """Graphene with one substitutional silicon atom at the centre of the scan."""
    return _sample("si")


def haadf_series_sample() -> list:
    """A simulated HAADF-STEM movie of Si-doped graphene: 6 frames of 384 × 384 px at 0.16 Å,
    two grains 12° apart, Si dopants, two holes growing, drift and counting noise."""
    from ..workflows import haadf_series

    from .layers import series_layer_data

    series, _ = haadf_series()
    return [series_layer_data(series, "HAADF series")]


def zns_sample() -> list:
    """ZnS viewed along [011] (zincblende, 76 Å thick, multislice), 60 kV, 31 mrad, 0.75 Å
    source: the second material of the 4D-STEM study."""
    from ..workflows import zns
    from .reader import layer_data_for

    return layer_data_for(zns())
