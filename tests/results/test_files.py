"""The results file (one layout, atomic writes) and the map schema it follows; files written by
version 0.1 still open."""

from pathlib import Path

import h5py
import numpy as np
import pytest

from napari_4dstem_rvae import Calibration, Dataset4D
from napari_4dstem_rvae.processing import compute_com
from napari_4dstem_rvae.results import (
    MAPS,
    com_figure,
    image_figure,
    is_results_file,
    read_results,
    spec_for,
    write_results,
)
from napari_4dstem_rvae.schema import KINDS, resolve_unit

OLD = Path(__file__).resolve().parents[1] / "data" / "v0_1_0"


def test_every_map_is_declared_once_with_a_known_kind():
    assert set(MAPS) >= {"sum", "adf", "com_x", "com_y", "com_magnitude", "com_angle", "com_divergence",
                         "com_curl", "angle", "angle_std", "latents", "latents_std", "shift", "shift_std"}
    for name, spec in MAPS.items():
        assert spec.name == name and spec.kind in KINDS and spec.description
    assert spec_for("latent 2") is MAPS["latents"] and spec_for("com_x_mrad") is MAPS["com_x"]
    assert MAPS["latents"].plane_title(1) == "rVAE latent 2"
    assert resolve_unit(MAPS["com_divergence"].unit, "mrad", "Å") == "mrad/Å"
    assert spec_for("my own map").kind == "image"


def _dataset(calibrated=True):
    rng = np.random.default_rng(9)
    cal = Calibration(scan_step=0.5, scan_unit="Å", det_pixel_size=2.0, det_unit="mrad") if calibrated \
        else Calibration()
    return Dataset4D(rng.random((6, 5, 16, 16)).astype(np.float32), cal)


@pytest.mark.parametrize("calibrated", [True, False])
def test_com_maps_written_in_the_calibrated_unit(tmp_path, calibrated):
    ds = _dataset(calibrated)
    result = compute_com(ds)
    path = write_results(tmp_path / "com.h5", calibration=ds.calibration, scan_shape=ds.scan_shape, com=result)
    scale = 2.0 if calibrated else 1.0  # 2 mrad per pixel
    unit = "mrad" if calibrated else "px"
    with h5py.File(path, "r") as f:
        np.testing.assert_allclose(f["com/com_x"][()], result.x * scale)
        assert f["com/com_x"].attrs["unit"] == unit and f["com/com_x"].attrs["map"] == "com_x"
        np.testing.assert_array_equal(f["com/com_angle"][()], result.angle)
        assert f["com/com_angle"].attrs["unit"] == "rad"
        assert f["com/com_divergence"].attrs["unit"] == (f"{unit}/Å" if calibrated else "px/probe step")
        assert f["com"].attrs["rotation_deg"] == result.rotation_deg
        np.testing.assert_allclose(f["com_magnitude"][()], result.magnitude * scale)  # top-level link
        assert "adf" in f["images"]
    read = read_results(path)
    assert read.get("com_x").unit == unit and read.calibration == ds.calibration
    png = com_figure(tmp_path / "com.png", result)
    assert Path(png).stat().st_size > 10_000


def test_write_is_atomic_and_keeps_the_old_file_on_error(tmp_path):
    ds = _dataset()
    path = write_results(tmp_path / "r.h5", calibration=ds.calibration, scan_shape=ds.scan_shape,
                         images={"sum": np.ones(ds.scan_shape)})
    before = Path(path).read_bytes()
    with pytest.raises(TypeError):
        write_results(path, calibration=ds.calibration, scan_shape=ds.scan_shape,
                      images={"sum": np.ones(ds.scan_shape), "bad": object()})
    assert Path(path).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.h5"]  # no temporary file left behind
    assert is_results_file(path) and not is_results_file(tmp_path / "missing.h5")


def test_image_figure_shows_the_image_in_its_units(tmp_path, monkeypatch):
    from matplotlib.image import imread

    from napari_4dstem_rvae.results import figures

    drawn = []
    save = figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig) or save(fig, path))
    image = np.zeros((6, 5))
    image[:3] = 100.0                                          # bright top half, dark bottom half
    png = image_figure(tmp_path / "adf.png", image, "adf", _dataset().calibration)
    (ax, *_), = (fig.axes for fig in drawn)
    assert ax.get_title() == "ADF" and ax.get_xlabel() == "x (Å)" and ax.get_ylabel() == "y (Å)"
    np.testing.assert_array_equal(ax.images[0].get_array(), image)
    assert ax.images[0].get_extent() == [-0.25, 2.25, 2.75, -0.25]  # 0.5 Å per probe step, first pixel centred at 0
    pixels = imread(png)[..., :3]
    height = pixels.shape[0]

    def colour_at(x, y):                                       # the PNG's colour at a point in Å
        px, py = ax.transData.transform((x, y))
        return pixels[int(height - py), int(px)]

    bright, dark = colour_at(1.0, 0.5), colour_at(1.0, 2.5)    # rows 1 and 5 of the image
    assert bright.mean() > 0.9 and dark.mean() < 0.1           # gray colormap over the data's range
    np.testing.assert_allclose(colour_at(0.0, 0.0), bright, atol=0.02)
    np.testing.assert_allclose(colour_at(2.0, 2.0), dark, atol=0.02)


def test_files_of_version_0_1_still_open():
    run = read_results(OLD / "results_run.h5")
    names = [m.name for m in run.maps]
    for name in ("angle", "angle_std", "latents", "latents_std", "com_magnitude", "com_angle", "roi_mask"):
        assert name in names, names
    assert run.get("angle").spec.kind == "angle" and run.get("angle_std").spec.kind == "spread"
    assert run.get("com_x").unit == "px" and run.calibration.scan_step == 0.25
    assert run.get("latents").values.shape == (2, 10, 12)
    com = read_results(OLD / "com.h5")
    com_x = com.get("com_x")
    assert com_x.unit == "mrad" and com_x.path == "com/com_x_mrad"  # the calibrated version is preferred
    assert sum(m.spec.name == "com_x" for m in com.maps) == 1
    images = read_results(OLD / "images.h5")
    assert {m.name for m in images.maps} == {"sum", "adf"}
    layers = read_results(OLD / "napari_maps.h5")
    assert layers.maps[0].displayed and layers.maps[0].colormap == "viridis"
    assert layers.maps[0].scale == (0.25, 0.25)
