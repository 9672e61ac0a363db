"""The pixel size checked against, or read off, the lattice's hexagon centres: right on simulated
frames at several samplings from starts far off, a wrong given size replaced and said, a right one
kept silently, ``given`` keeping even a wrong one, and the run's results file recording it."""

from __future__ import annotations

import numpy as np
import pytest

from napari_4dstem_rvae.atoms.calibration import hexagon_pixel_size, settle_pixel_size
from napari_4dstem_rvae.series import ImageSeries
from napari_4dstem_rvae.simulate.haadf import haadf_series


@pytest.fixture(scope="module")
def fine():
    """Graphene at 0.06 Å/px, 30 counts per carbon: the power spectrum's six spots say about 0.12
    here (measured), the hexagon centres the truth."""
    series, _ = haadf_series(1, (256, 256), 0.06, counts_carbon=30.0, holes=0, seed=3)
    return np.asarray(series.frame(0), np.float64)


@pytest.mark.parametrize("pixel, start", [(0.06, 0.03), (0.06, 0.045), (0.06, 0.14), (0.16, 0.08), (0.16, 0.2),
                                          (0.25, 0.35)])
def test_hexagon_centres_give_the_pixel_size_from_starts_far_off(pixel, start, fine):
    frame = fine if pixel == 0.06 else np.asarray(haadf_series(1, (256, 256), pixel, holes=0, seed=4)[0].frame(0))
    size, centres = hexagon_pixel_size(frame, start)
    assert size == pytest.approx(pixel, rel=0.03)
    # the honeycomb's hexagon centres: one per 2 atoms, 5.24 Å² each
    assert centres > 0.6 * (256 * pixel) ** 2 / 5.24


def _atoms_on(vectors, spacing_px: float, shape=(256, 256), sigma=3.0, seed=0) -> np.ndarray:
    """Gaussian atoms on the lattice of two vectors (px), Poisson counts."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(float)
    image = np.zeros(shape)
    for i in range(-40, 40):
        for j in range(-40, 40):
            y, x = (i * np.asarray(vectors[0]) + j * np.asarray(vectors[1])) * spacing_px
            if -10 < y < shape[0] + 10 and -10 < x < shape[1] + 10:
                image += np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma ** 2))
    return np.random.default_rng(seed).poisson(20 * image + 2).astype(float)


def test_lattices_other_than_a_honeycomb_leave_the_given_size_alone():
    # a square lattice of atoms has a square lattice of minima (four neighbours, not six), a
    # triangular one a honeycomb of minima (three): neither is taken for hexagon centres
    square = _atoms_on([(1, 0), (0, 1)], 20.0)
    triangular = _atoms_on([(1, 0), (0.5, np.sqrt(3) / 2)], 20.0)
    for frame in (square, triangular):
        assert hexagon_pixel_size(frame, 0.1) is None
        assert settle_pixel_size(frame, 0.1)[:2] == (0.1, None)


def test_no_lattice_no_size():
    rng = np.random.default_rng(0)
    assert hexagon_pixel_size(rng.poisson(20.0, (256, 256)).astype(float), 0.1) is None   # noise
    assert hexagon_pixel_size(np.zeros((256, 256)), 0.1) is None                          # blank
    assert hexagon_pixel_size(rng.poisson(20.0, (32, 32)).astype(float), 0.1) is None    # too small a field


def test_a_given_size_the_lattice_contradicts_is_replaced_and_said(fine):
    size, said, record = settle_pixel_size(fine, 0.08)
    assert size == pytest.approx(0.06, rel=0.03)
    assert "0.08 Å/px" in said and "above the lattice's" in said and "--pixel-size-from given" in said
    assert record["used"] == "lattice" and record["given_angstrom"] == 0.08
    # a right one stands unremarked; "given" keeps a wrong one but says so; "lattice" always the lattice's
    assert settle_pixel_size(fine, 0.062)[:2] == (0.062, None)
    size, said, record = settle_pixel_size(fine, 0.08, source="given")
    assert size == 0.08 and "kept as given" in said and record["used"] == "given"
    assert settle_pixel_size(fine, 0.062, source="lattice")[0] == pytest.approx(0.06, rel=0.03)
    with pytest.raises(ValueError, match="--pixel-size-from must be one of"):
        settle_pixel_size(fine, 0.06, source="file")


def test_no_size_given_read_off_the_hexagons(fine):
    size, said, record = settle_pixel_size(fine, None)
    assert size == pytest.approx(0.06, rel=0.03)
    assert "no pixel size in the file" in said and "hexagon centres" in said and "--pixel-size" in said
    assert record["step"] == "pixel size from the lattice"
    size, said, _ = settle_pixel_size(np.random.default_rng(1).poisson(5.0, (128, 128)).astype(float), None)
    assert size is None and "no lattice to read it from" in said


def test_the_run_uses_the_lattice_size_and_records_it(fine, tmp_path):
    from napari_4dstem_rvae.workflows.atoms import AtomOptions, AtomRun

    run = AtomRun(ImageSeries(fine[None].astype(np.float32), 0.08, "Å", source="wrong"), options=AtomOptions())
    said = [e.text for e in run.find_events() if getattr(e, "level", "") == "warning"]
    assert len(said) == 1 and "the run uses 0.0" in said[0] and "0.08 Å/px" in said[0], said
    assert run.series.pixel_size_angstrom == pytest.approx(0.06, rel=0.03)
    assert run.series.provenance[-1]["used"] == "lattice"
    # the atoms found at the settled size are graphene's: bonds of 1.42 Å
    from scipy.spatial import cKDTree

    xy = np.column_stack([run.table.y, run.table.x]) * run.series.pixel_size_angstrom
    assert np.median(cKDTree(xy).query(xy, 2)[0][:, 1]) == pytest.approx(1.42, rel=0.06)
    kept = AtomRun(ImageSeries(fine[None].astype(np.float32), 0.08, "Å", source="kept"),
                   options=AtomOptions(pixel_size_from="given"))
    list(kept.find_events())
    assert kept.series.pixel_size_angstrom == 0.08
