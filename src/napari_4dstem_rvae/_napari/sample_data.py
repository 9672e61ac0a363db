"""Built-in sample data: physics-based 4D-STEM simulations of monolayer graphene."""

from __future__ import annotations


def _sample(defect=None) -> list:
    from ..simulate import graphene
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
    from ..simulate.haadf import haadf_series

    series, _ = haadf_series()
    return [series_layer_data(series, "HAADF series")]


def series_layer_data(series, name: str | None = None) -> tuple:
    """Layer data of an :class:`ImageSeries`: an image layer (frames, y, x) with the pixel size
    as scale and the series in its metadata (the Atoms tab works on it)."""
    from ..units import napari_unit
    from .atoms_widget import SERIES_KEY

    pixel, unit = series.pixel_size, series.unit
    if series.pixel_size_angstrom is not None:  # one length unit for images, atoms and windows
        pixel, unit = series.pixel_size_angstrom, "Å"
    kwargs = {"name": name or series.name, "metadata": {SERIES_KEY: series}, "colormap": "gray"}
    if pixel is not None and unit:
        kwargs["scale"] = (1.0, pixel, pixel)
        kwargs["units"] = ("pixel", napari_unit(unit), napari_unit(unit))
    return (series.data, kwargs, "image")
