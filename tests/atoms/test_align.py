"""Windows turned by the lattice's local orientation before the rVAE (``align``): the
orientation read off the positions, the windows' turn, and the angle and shifts turned back —
checked without training, with a stand-in for the rVAE that reads each window's orientation
and the centre atom's offset directly."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest

from napari_4dstem_rvae.atoms import AtomTable, cut_windows
from napari_4dstem_rvae.atoms.windows import lattice_orientation
from napari_4dstem_rvae.rvae.infer import LatentMaps
from napari_4dstem_rvae.series import ImageSeries

PIXEL = 0.2        # Å/px
BOND = 1.42        # Å
GRAINS = (7.0, 31.0)   # degrees: two grains of one frame, 24° apart (31° is −29° modulo 60°)


def honeycomb(degrees: float, centre: tuple[float, float], half: float) -> np.ndarray:
    """(y, x) in Å of a honeycomb turned by ``degrees`` (atan2(dy, dx), y down), within ``half`` of ``centre``."""
    a1, a2 = np.array([1.5, math.sqrt(3) / 2]) * BOND, np.array([1.5, -math.sqrt(3) / 2]) * BOND
    i, j = np.meshgrid(np.arange(-30, 30), np.arange(-30, 30))
    cells = i.reshape(-1, 1) * a1 + j.reshape(-1, 1) * a2
    xy = np.concatenate([cells, cells + [BOND, 0.0]])
    t = math.radians(degrees)
    xy = xy @ np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
    keep = (np.abs(xy) < half).all(1)
    return xy[keep][:, ::-1] + centre


@pytest.fixture(scope="module")
def two_grains():
    """One frame, two grains side by side (x), Gaussian atoms; the table in px."""
    half = 11.0
    atoms = [honeycomb(g, (half + 1, (2 * k + 1) * (half + 1)), half) for k, g in enumerate(GRAINS)]
    grain = np.concatenate([np.full(len(a), k) for k, a in enumerate(atoms)])
    yx = np.concatenate(atoms) / PIXEL
    ny, nx = int(2 * (half + 1) / PIXEL), int(4 * (half + 1) / PIXEL)
    yy, xx = np.mgrid[:ny, :nx]
    image = np.zeros((ny, nx), np.float32)
    s = 0.35 / PIXEL
    for y, x in yx:
        r0, r1, c0, c1 = int(y - 4 * s), int(y + 4 * s) + 1, int(x - 4 * s), int(x + 4 * s) + 1
        image[r0:r1, c0:c1] += np.exp(-((yy[r0:r1, c0:c1] - y) ** 2 + (xx[r0:r1, c0:c1] - x) ** 2) / (2 * s * s))
    n = len(yx)
    table = AtomTable(np.zeros(n, int), yx[:, 0], yx[:, 1], np.ones(n), np.zeros(n, int), np.ones(n))
    return ImageSeries(image[None], PIXEL, "Å"), table, grain


def test_the_lattice_orientation_is_each_grains_for_both_sublattices(two_grains):
    _, table, grain = two_grains
    found = np.degrees(lattice_orientation(table, 6))
    for k, g in enumerate(GRAINS):
        # away from the boundary (x within the grain's middle) every atom has its grain's orientation
        middle = (grain == k) & (np.abs(table.x - np.median(table.x[grain == k])) < 6 / PIXEL)
        off = (found[middle] - g + 30) % 60 - 30
        assert np.abs(off).max() < 0.5, (g, np.abs(off).max())


def test_turned_windows_put_the_atoms_direction_along_x():
    image = np.zeros((64, 64), np.float32)
    beta = math.radians(40)
    image[round(32 + 15 * math.sin(beta)), round(32 + 15 * math.cos(beta))] = 1
    one = AtomTable(np.zeros(1, int), np.array([32.0]), np.array([32.0]), np.ones(1), np.zeros(1, int), np.ones(1))
    w, _, note = cut_windows(ImageSeries(image[None], None, "px"), one, 40, 40, round=False, angles=np.array([beta]))
    y, x = np.unravel_index(np.argmax(w[0]), w[0].shape)
    assert abs(y - 19.5) <= 1 and abs(x - 19.5 - 15) <= 1 and note["aligned"]


def _stand_in(bond_px: float):
    """A stand-in for the rVAE's fit: each window's 3-fold orientation (the rVAE's convention,
    counter-clockwise on screen) and the offset (x, y) of the atom nearest its centre."""
    def fit(dataset, cfg, callback=None, stop=None):
        w = np.asarray(dataset.data)[:, 0].astype(np.float64)
        n, h, _ = w.shape
        yy, xx = np.mgrid[:h, :h] - (h - 1) / 2
        r = np.hypot(yy, xx)
        ring = w * (np.abs(r - bond_px) < 0.35 * bond_px)
        angle = -np.angle((ring * np.exp(3j * np.arctan2(yy, xx))).sum((1, 2))) / 3
        core = w * (r < 0.45 * bond_px)
        mass = core.sum((1, 2))
        shift = np.stack([(core * xx).sum((1, 2)) / mass, (core * yy).sum((1, 2)) / mass])
        maps = LatentMaps(angle=angle[:, None], angle_std=np.zeros((n, 1)), latents=np.zeros((2, n, 1)),
                        latents_std=np.zeros((2, n, 1)), shift=shift[:, :, None], angle_symmetric=angle[:, None])
        return types.SimpleNamespace(maps=maps, config=cfg, history=[], model=None)
    return fit


@pytest.mark.filterwarnings("ignore:.*closer to the frame edge than half a window")
def test_aligned_windows_give_the_same_angle_and_shifts_in_the_image(two_grains, monkeypatch):
    import napari_4dstem_rvae.rvae as rvae
    from napari_4dstem_rvae.workflows.atoms import analyse

    series, table, grain = two_grains
    # every atom off its place by (0.12, −0.08) Å: the centre atom's offset is the shift
    moved = AtomTable(table.frame, table.y - 0.12 / PIXEL, table.x + 0.08 / PIXEL, table.intensity, table.cls,
                      table.score)
    monkeypatch.setattr(rvae, "fit", _stand_in(BOND / 5.0 * 32))
    plain = analyse(series, moved, window=5.0, pixels=32, edge="drop", align=False, with_baselines=False)
    turned = analyse(series, moved, window=5.0, pixels=32, edge="drop", align=True, with_baselines=False)
    np.testing.assert_array_equal(plain.index, turned.index)
    a, b = plain.values, turned.values
    assert "lattice_orientation" in b and "lattice_orientation" not in a
    # the same angle in the image (mod 120°: the honeycomb's symmetry) although the windows differ
    # by each grain's orientation — 7° and −29° (a wrong sign would leave 14° and 58° between them)
    for k in range(2):
        sel = grain[turned.index] == k
        assert abs(np.median(np.degrees(b["lattice_orientation"][sel])) + GRAINS[k] - 60 * (k == 1)) < 0.5
        diff = np.degrees(np.angle(np.exp(3j * (a["angle"][sel] - b["angle"][sel])))) / 3
        assert np.percentile(np.abs(diff), 95) < 2.0, (k, np.percentile(np.abs(diff), 95))
    np.testing.assert_allclose(np.degrees(b["angle_symmetric"]),
                               (np.degrees(b["angle"]) + 60) % 120 - 60, atol=1e-3)
    # shifts in Å of the image, whatever the windows' turn: the atoms' offset, turned back (the
    # stand-in's centroid over a disc reads ~3/4 of it)
    for name, true in (("shift_x", -0.08), ("shift_y", 0.12)):
        assert 0.6 < np.median(a[name]) / true < 1.0, (name, np.median(a[name]))
        assert np.percentile(np.abs(b[name] - a[name]), 95) < 0.01, (name, np.percentile(np.abs(b[name] - a[name]), 95))


def test_neighbourhood_max_stays_in_its_frame_and_skips_nan():
    from napari_4dstem_rvae.atoms.windows import neighbourhood_max

    frame = np.array([0, 0, 0, 1])
    y = np.zeros(4)
    x = np.array([0.0, 1.0, 3.0, 1.0])
    values = np.array([5.0, np.nan, 1.0, 7.0])
    out = neighbourhood_max(frame, y, x, values, 1.5)
    # atom 1 takes its neighbour's 5 (its own NaN skipped); atom 2 is 2 px from the nearest; the
    # atom of frame 1 sits on atom 1's place but is not its neighbour
    np.testing.assert_array_equal(out, [5.0, 5.0, 1.0, 7.0])
    assert np.isnan(neighbourhood_max(frame[:1], y[:1], x[:1], np.array([np.nan]), 1.5))[0]
