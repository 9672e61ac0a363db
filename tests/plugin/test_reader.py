"""The napari side of the foundation: reader, real-space layer, diffraction browser, errors."""

from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from helpers import PLUGIN, shifted_disks

from napari_4dstem_rvae import Calibration, Dataset4D
from napari_4dstem_rvae._napari.layers import DATASET_KEY, ROLE_KEY, find_dataset
from napari_4dstem_rvae._napari.reader import napari_get_reader
from napari_4dstem_rvae._napari.workers import running_workers
from napari_4dstem_rvae.io import save_dataset
from napari_4dstem_rvae.processing import ADF_INNER_BF, default_image_detector


@pytest.fixture
def calibrated_file(tmp_path):
    data, _ = shifted_disks(6, 7, 24)
    cal = Calibration(scan_step=(0.5, 0.25), scan_unit="Å", det_pixel_size=2.0, det_unit="mrad",
                      energy_kev=60.0, semiangle_mrad=8.0, det_origin=(11.5, 11.5))
    path = save_dataset(Dataset4D(data, cal), tmp_path / "scan.h5")
    return path, data, cal


def _errors(monkeypatch):
    """Collect messages passed to napari's show_error by the plugin."""
    messages = []
    import napari.utils.notifications as notifications

    monkeypatch.setattr(notifications, "show_error", lambda msg: messages.append(str(msg)))
    return messages


def test_get_reader_claims_only_our_formats(tmp_path, calibrated_file):
    assert napari_get_reader(str(tmp_path / "image.png")) is None
    assert napari_get_reader(str(tmp_path / "frames.raw")) is None  # needs a layout: open widget
    assert callable(napari_get_reader(calibrated_file[0]))
    assert napari_get_reader([calibrated_file[0], calibrated_file[0]]) is None


def test_open_gives_calibrated_real_space_layer(make_napari_viewer, calibrated_file):
    path, data, cal = calibrated_file
    viewer = make_napari_viewer()
    layers = viewer.open(path, plugin=PLUGIN)
    assert len(layers) == 1
    layer = layers[0]
    assert layer.data.shape == data.shape[:2]
    np.testing.assert_allclose(layer.scale, [0.5, 0.25])
    assert str(layer.units[0]) == "angstrom"
    ds = find_dataset(layer)
    assert ds is not None and ds.source == path and ds.is_lazy
    # the default image is an ADF outside 1.25 × the 8 mrad disk, i.e. an explicit masked sum
    label, mask = default_image_detector(ds.calibration, ds.det_shape)
    assert label == "adf" and ADF_INNER_BF == 1.25
    yy, xx = np.mgrid[0:24, 0:24]
    explicit = (np.hypot(yy - 11.5, xx - 11.5) * 2.0 >= 1.25 * 8.0)
    np.testing.assert_allclose(mask, explicit)
    expected = (data * explicit).sum(axis=(2, 3))
    np.testing.assert_allclose(layer.data, expected, rtol=1e-5)
    assert layer.metadata[ROLE_KEY]["detector"] == "ADF"


def test_clicked_position_shows_its_pattern(make_napari_viewer, qtbot, calibrated_file):
    from napari_4dstem_rvae._napari.browser import MARKER_LAYER, DiffractionBrowser

    path, data, cal = calibrated_file
    viewer = make_napari_viewer()
    layer = viewer.open(path, plugin=PLUGIN)[0]
    browser = DiffractionBrowser(viewer)
    qtbot.addWidget(browser)
    # click at scan position (y=4, x=5): world coordinates are scaled by the scan step
    world = (4 * 0.5, 5 * 0.25)
    browser._on_click(viewer, SimpleNamespace(type="mouse_press", position=world))
    assert browser.current_position == (4, 5)
    np.testing.assert_array_equal(browser.current_pattern, data[4, 5])
    assert MARKER_LAYER in viewer.layers
    np.testing.assert_allclose(viewer.layers[MARKER_LAYER].data, [[4, 5]])
    # hovering follows the cursor once "follow" is back on
    browser.follow.setChecked(True)
    browser._on_move(viewer, SimpleNamespace(type="mouse_move", position=(1 * 0.5, 6 * 0.25)))
    qtbot.waitUntil(lambda: browser.current_position == (1, 6), timeout=3000)
    np.testing.assert_array_equal(browser.current_pattern, data[1, 6])
    # outside the scan: nothing changes
    browser._on_move(viewer, SimpleNamespace(type="mouse_move", position=(100.0, 100.0)))
    qtbot.wait(50)
    assert browser.current_position == (1, 6)
    browser.close()


def test_large_file_fills_in_background(make_napari_viewer, qtbot, calibrated_file, monkeypatch):
    import napari_4dstem_rvae._napari.reader as reader

    monkeypatch.setattr(reader, "SYNC_LIMIT_BYTES", 0)
    path, data, cal = calibrated_file
    viewer = make_napari_viewer()
    layer = viewer.open(path, plugin=PLUGIN)[0]
    qtbot.waitUntil(lambda: not layer.metadata[ROLE_KEY]["computing"], timeout=20000)
    qtbot.waitUntil(lambda: not running_workers(), timeout=5000)
    ds = layer.metadata[DATASET_KEY]
    _, mask = default_image_detector(ds.calibration, ds.det_shape)
    np.testing.assert_allclose(layer.data, (data * mask).sum(axis=(2, 3)), rtol=1e-5)


@pytest.mark.parametrize("kind", ["truncated", "no4d"])
def test_broken_file_notifies_and_keeps_layers(make_napari_viewer, tmp_path, calibrated_file, monkeypatch, kind):
    messages = _errors(monkeypatch)
    viewer = make_napari_viewer()
    existing = viewer.add_image(np.ones((5, 5)), name="keep me")
    if kind == "truncated":
        bad = tmp_path / "broken.h5"
        bad.write_bytes(open(calibrated_file[0], "rb").read()[:2000])
    else:
        bad = tmp_path / "image.h5"
        with h5py.File(bad, "w") as f:
            f["image"] = np.zeros((10, 10))
    import napari.utils.notifications as notifications

    infos = []
    monkeypatch.setattr(notifications, "show_info", lambda msg: infos.append(str(msg)))
    viewer.open(str(bad), plugin=PLUGIN)
    if kind == "truncated":
        assert list(viewer.layers) == [existing]
        assert len(messages) == 1 and str(bad) in messages[0] and "truncated" in messages[0]
        assert "Traceback" not in messages[0]
    else:  # a 2D image and no 4D data: opened as an image series of one frame, and said so
        assert list(viewer.layers)[0] is existing and len(viewer.layers) == 2
        assert viewer.layers[1].data.shape == (1, 10, 10)
        assert not messages and len(infos) == 1
        assert str(bad) in infos[0] and "no 4D dataset" in infos[0] and "image series" in infos[0]


def test_open_widget_reads_raw_and_reports_size_mismatch(make_napari_viewer, tmp_path, monkeypatch):
    from napari_4dstem_rvae._napari.open_widget import OpenWidget

    messages = _errors(monkeypatch)
    data = shifted_disks(3, 4, 16, radius=4.0)[0].astype("<u2")
    header = b"\x00" * 8
    frames = b"".join(header + data[i, j].tobytes() for i in range(3) for j in range(4))
    path = tmp_path / "frames.raw"
    path.write_bytes(frames)
    viewer = make_napari_viewer()
    widget = OpenWidget(viewer)
    widget.path.value = str(path)
    widget.scan_y.value, widget.scan_x.value = 3, 4
    widget.det_y.value, widget.det_x.value = 16, 16
    widget.dtype.value = "uint16"
    widget.frame_header.value = 8
    added = widget.open()
    assert len(added) == 1
    ds = find_dataset(added[0])
    np.testing.assert_array_equal(ds.data.compute(), data)
    np.testing.assert_array_equal(ds.pattern(2, 3), data[2, 3])
    widget.scan_x.value = 5  # wrong layout: one clear sentence, nothing lost
    assert widget.open() == []
    assert len(viewer.layers) == 1
    assert "does not match" in messages[-1] and str(path) in messages[-1]


def test_open_widget_lists_hdf5_datasets(make_napari_viewer, tmp_path):
    from napari_4dstem_rvae._napari.open_widget import OpenWidget

    path = tmp_path / "two.h5"
    with h5py.File(path, "w") as f:
        f["a/big"] = shifted_disks(4, 4, 8, radius=2.0)[0]
        f["b/small"] = shifted_disks(2, 3, 8, radius=2.0)[0]
    viewer = make_napari_viewer()
    widget = OpenWidget(viewer)
    widget.path.value = str(path)
    assert set(widget.dataset.choices) - {None} == {"/a/big", "/b/small"}
    widget.dataset.value = "/b/small"
    layer = widget.open()[0]
    assert layer.data.shape == (2, 3)


def test_sample_data_is_simulated_graphene(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, "graphene_vacancy")
    layer = layers[0]
    ds = find_dataset(layer)
    assert ds.calibration.det_unit == "mrad" and ds.calibration.scan_unit == "Å"
    assert layer.data.shape == ds.scan_shape
    np.testing.assert_allclose(layer.scale, ds.calibration.scan_step_yx)
    assert np.isfinite(layer.data).all() and layer.data.std() > 0
