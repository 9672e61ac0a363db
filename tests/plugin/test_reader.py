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


def test_get_reader_claims_only_what_it_reads(tmp_path, calibrated_file):
    """npe2's rules: None for every file this plugin will not read, so napari can fall back."""
    import tifffile

    assert napari_get_reader(str(tmp_path / "image.png")) is None
    assert napari_get_reader(str(tmp_path / "frames.raw")) is None  # needs a layout: the Open tab
    assert callable(napari_get_reader(calibrated_file[0]))
    assert napari_get_reader([calibrated_file[0], calibrated_file[0]]) is None
    tifffile.imwrite(tmp_path / "photo.tif", np.zeros((20, 30), np.uint8))           # a plain picture
    assert napari_get_reader(str(tmp_path / "photo.tif")) is None
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((20, 30, 3), np.uint8))
    assert napari_get_reader(str(tmp_path / "rgb.tif")) is None
    tifffile.imwrite(tmp_path / "movie.tif", np.zeros((4, 20, 30), np.uint16), imagej=True)  # a series
    assert callable(napari_get_reader(str(tmp_path / "movie.tif")))
    tifffile.imwrite(tmp_path / "calibrated.tif", np.zeros((20, 30), np.uint16), imagej=True,
                     resolution=(1 / 0.16, 1 / 0.16), metadata={"unit": "angstrom"})
    assert callable(napari_get_reader(str(tmp_path / "calibrated.tif")))
    with h5py.File(tmp_path / "foreign.h5", "w") as f:                            # someone else's HDF5
        f["table"] = np.arange(10)
        f["image"] = np.zeros((10, 10))
    assert napari_get_reader(str(tmp_path / "foreign.h5")) is None
    np.save(tmp_path / "flat.npy", np.zeros((10, 10)))
    assert napari_get_reader(str(tmp_path / "flat.npy")) is None
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4, 4)))
    assert callable(napari_get_reader(str(tmp_path / "cube.npy")))
    (tmp_path / "broken.h5").write_bytes(b"not hdf5 at all")
    assert napari_get_reader(str(tmp_path / "broken.h5")) is None


def test_opening_a_4d_file_adds_its_layer_and_changes_nothing_else(make_napari_viewer, calibrated_file):
    viewer = make_napari_viewer()
    docks = set(viewer.window.dock_widgets)
    before = len(viewer.layers)
    layers = viewer.open(calibrated_file[0], plugin=PLUGIN)
    assert len(viewer.layers) == before + 1 == len(layers)
    assert set(viewer.window.dock_widgets) == docks            # no dock opened by the reader
    assert not running_workers()                               # no thread started by the reader


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


def test_a_large_file_opens_as_a_lazy_image(make_napari_viewer, calibrated_file, monkeypatch):
    """Above the size limit nothing is read when the file opens: the image is a lazy array that
    napari computes when it draws it, equal to the masked sum."""
    import dask.array as da

    import napari_4dstem_rvae._napari.reader as reader

    monkeypatch.setattr(reader, "SYNC_LIMIT_BYTES", 0)
    path, data, cal = calibrated_file
    viewer = make_napari_viewer()
    layer = viewer.open(path, plugin=PLUGIN)[0]
    assert isinstance(layer.data, da.Array) and layer.metadata[ROLE_KEY]["lazy"]
    ds = layer.metadata[DATASET_KEY]
    _, mask = default_image_detector(ds.calibration, ds.det_shape)
    np.testing.assert_allclose(np.asarray(layer.data), (data * mask).sum(axis=(2, 3)), rtol=1e-5)


def test_a_broken_file_is_one_sentence_and_keeps_the_layers(make_napari_viewer, tmp_path, calibrated_file):
    viewer = make_napari_viewer()
    existing = viewer.add_image(np.ones((5, 5)), name="keep me")
    bad = tmp_path / "broken.h5"
    bad.write_bytes(open(calibrated_file[0], "rb").read()[:2000])
    reader = napari_get_reader(str(bad))
    if reader is not None:                                     # a header that still reads
        with pytest.raises(Exception) as info:
            reader(str(bad))
        assert str(bad) in str(info.value) and "Traceback" not in str(info.value)
    assert list(viewer.layers) == [existing]


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
