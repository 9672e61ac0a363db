"""Preprocess, COM and virtual-detector widgets: results as layers aligned with the ADF image."""

import re

import numpy as np
import pytest
from helpers import PLUGIN, click, shifted_disks, wait_for_worker

from napari_4dstem_rvae import Calibration, Dataset4D
from napari_4dstem_rvae._napari.layers import find_dataset
from napari_4dstem_rvae._napari.reader import layer_data_for


@pytest.fixture
def viewer_with_data(make_napari_viewer):
    viewer = make_napari_viewer()
    cal = Calibration(scan_step=0.5, scan_unit="Å", det_pixel_size=2.0, det_unit="mrad",
                      energy_kev=60, semiangle_mrad=10.0, det_origin=(15.5, 15.5), scan_origin=(1.0, 2.0))
    ds = Dataset4D(shifted_disks()[0], cal, metadata={"name": "disks"})
    data, kwargs, _ = layer_data_for(ds)[0]
    layer = viewer.add_image(data, **kwargs)
    return viewer, layer, ds


def _dock(viewer):
    """The analysis dock as a user opens it: Plugins > 4D-STEM rVAE > 4D-STEM analysis."""
    return viewer.window.add_plugin_dock_widget(PLUGIN, "4D-STEM analysis")[1]


def test_com_widget_layers_match_compute_com(viewer_with_data, qtbot):
    from napari_4dstem_rvae.processing import compute_com

    viewer, adf, ds = viewer_with_data
    widget = _dock(viewer).com
    assert widget.layer.value == adf.name
    widget.rotation.value = "0"
    widget.flip.value = "no"
    click(qtbot, widget.run_button)
    wait_for_worker(qtbot, widget)
    expected = compute_com(ds, rotation=0.0, flip=False)
    names = [f"COM {n} · disks" for n in ("x", "y", "magnitude", "angle", "divergence", "curl", "colour wheel")]
    for name in names:
        layer = viewer.layers[name]
        assert layer.data.shape[:2] == ds.scan_shape
        np.testing.assert_allclose(layer.scale, adf.scale)
        np.testing.assert_allclose(layer.translate, adf.translate)
    np.testing.assert_allclose(viewer.layers["COM x · disks"].data, expected.x_mrad, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(viewer.layers["COM angle · disks"].data, np.degrees(expected.angle), rtol=1e-5, atol=1e-4)
    assert viewer.layers["COM angle · disks"].colormap.name == "twilight_shifted"
    assert viewer.layers["COM colour wheel · disks"].rgb
    # re-running updates by name: no copies pile up
    n_layers = len(viewer.layers)
    click(qtbot, widget.run_button)
    wait_for_worker(qtbot, widget)
    assert len(viewer.layers) == n_layers
    assert all(w.enabled for w in widget._controls)


@pytest.mark.slow
def test_com_widget_runs_on_a_dask_scheduler_given_by_address(viewer_with_data, qtbot, monkeypatch):
    from distributed import LocalCluster

    viewer, adf, ds = viewer_with_data
    widget = _dock(viewer).com
    widget.rotation.value = "0"
    widget.flip.value = "no"
    click(qtbot, widget.run_button)
    wait_for_worker(qtbot, widget)
    here = viewer.layers["COM x · disks"].data.copy()
    n_layers = len(viewer.layers)
    statuses = []                                  # every text the status label shows
    show = widget.status._widget._mgui_set_value
    monkeypatch.setattr(widget.status._widget, "_mgui_set_value", lambda v: (statuses.append(str(v)), show(v)))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        widget.scheduler.value = cluster.scheduler_address
        click(qtbot, widget.run_button)
        wait_for_worker(qtbot, widget)
        assert f"on {cluster.scheduler_address} (dashboard http" in widget.status.value
        assert cluster.scheduler.task_prefixes   # the fresh cluster's workers ran the pass
    # while it ran, the status line counted the cluster's tasks up to all of them
    counts = [tuple(map(int, m.groups())) for m in (re.search(r"COM: (\d+)/(\d+) tasks on ", v) for v in statuses) if m]
    assert counts and counts[0][0] == 0 and counts[-1][0] == counts[-1][1] >= 1, statuses
    assert [done for done, _ in counts] == sorted(done for done, _ in counts)
    assert len(viewer.layers) == n_layers                       # the same layers, updated
    np.testing.assert_allclose(viewer.layers["COM x · disks"].data, here, rtol=1e-6, atol=1e-7)
    messages = []
    monkeypatch.setattr("napari_4dstem_rvae._napari.com_widget.notify_error", messages.append)
    widget.scheduler.value = "tcp://127.0.0.1:9"                # nothing listens there
    click(qtbot, widget.run_button)
    wait_for_worker(qtbot, widget)
    assert len(messages) == 1 and "dask scheduler tcp://127.0.0.1:9: no dask scheduler answers there" in messages[0]
    assert len(viewer.layers) == n_layers
    assert all(w.enabled for w in widget._controls)


def test_com_widget_bad_mask_is_a_notification(viewer_with_data, qtbot, monkeypatch):

    messages = []
    monkeypatch.setattr("napari_4dstem_rvae._napari.com_widget.notify_error", messages.append)
    viewer, adf, ds = viewer_with_data
    widget = _dock(viewer).com
    widget.mask.value = "annulus"
    widget.unit.value = "px"
    widget.inner.value, widget.outer.value = 500.0, 600.0  # outside the 32-px detector
    n_layers = len(viewer.layers)
    click(qtbot, widget.run_button)
    wait_for_worker(qtbot, widget)
    assert len(messages) == 1 and "COM of 'disks' failed" in messages[0]
    assert len(viewer.layers) == n_layers
    assert all(w.enabled for w in widget._controls)  # re-enabled after the error


def test_preprocess_widget_adds_processed_dataset(viewer_with_data, qtbot):

    viewer, adf, ds = viewer_with_data
    widget = _dock(viewer).preprocess
    widget.bin_detector.value = 2
    widget.subtract_mean.value = True
    raw, processed = widget.preview()
    assert raw.shape == (32, 32) and processed.shape == (16, 16)
    click(qtbot, widget.apply_button)
    wait_for_worker(qtbot, widget)
    layer = viewer.layers[f"{adf.name} processed"]
    result = find_dataset(layer)
    assert result.shape == (8, 9, 16, 16)
    binned = ds.data.reshape(8, 9, 16, 2, 16, 2).sum(axis=(3, 5))
    np.testing.assert_allclose(result.data, binned - binned.mean(axis=(0, 1)), rtol=1e-4, atol=1e-4)
    assert [p["step"] for p in result.provenance] == ["bin", "subtract_mean_pattern"]
    assert result.calibration.det_pixel_size == pytest.approx(4.0)
    np.testing.assert_allclose(layer.scale, adf.scale)
    assert np.isfinite(layer.data).all()


def test_virtual_detector_widget_matches_masked_sum(viewer_with_data, qtbot):

    viewer, adf, ds = viewer_with_data
    widget = _dock(viewer).virtual
    widget.unit.value = "px"
    widget.inner.value, widget.outer.value = 7.0, 14.0
    click(qtbot, widget.run_button)
    wait_for_worker(qtbot, widget)
    layer = viewer.layers["virtual detector · disks"]
    centre, inner, outer = widget.radii_px(ds)
    yy, xx = np.mgrid[0:32, 0:32]
    r = np.hypot(yy - centre[0], xx - centre[1])
    mask = (r >= inner) & (r < outer)
    np.testing.assert_allclose(layer.data, (ds.data * mask).sum(axis=(2, 3)), rtol=1e-4)
    np.testing.assert_allclose(layer.scale, adf.scale)
    browser = widget.browser  # the analysis dock's own browser shows the detector
    browser.show_position(1, 1, adf)
    widget.inner.value = 6.0  # changing a radius redraws the annulus on the pattern
    assert browser.annulus_px[0] == pytest.approx(6.0) and browser.annulus_px[1] == pytest.approx(14.0)


def test_calibration_by_hand_on_open_and_for_a_loaded_data_set(make_napari_viewer, qtbot, tmp_path):
    """A file whose calibration the readers cannot find: calibrated in the Open tab when it is
    opened, then corrected in the calibration panel — every layer over the data set follows."""
    viewer = make_napari_viewer()
    dock = _dock(viewer)
    path = tmp_path / "uncalibrated.npy"
    np.save(path, shifted_disks()[0])
    dock.open.path.value = str(path)
    fields = dock.open.calibration
    fields.scan_step_y.value, fields.scan_unit.value = 0.5, "Å"
    fields.det_pixel_size.value, fields.det_unit.value, fields.semiangle_mrad.value = 2.0, "mrad", 10.0
    click(qtbot, dock.open.open_button)
    layer = viewer.layers[-1]
    ds = find_dataset(layer)
    assert ds.calibration.scan_step == 0.5 and ds.calibration.det_unit == "mrad"
    assert ds.provenance[-1]["step"] == "calibration"
    assert layer.name.startswith("ADF · ")  # the calibration given makes the ADF image possible
    np.testing.assert_allclose(layer.scale, (0.5, 0.5))
    click(qtbot, dock.com.run_button)
    wait_for_worker(qtbot, dock.com)
    com_x = viewer.layers[f"COM x · {ds.name}"]
    panel = dock.calibration
    panel.layer.value = layer.name
    assert panel.fields.scan_step_y.value == 0.5
    panel.fields.scan_step_y.value = panel.fields.scan_step_x.value = 0.25
    panel.fields.scan_unit.value = "nm"
    click(qtbot, panel.apply_button)
    new = find_dataset(layer)
    assert new is not ds and new.calibration.scan_step == 0.25 and new.calibration.scan_unit == "nm"
    assert new.provenance[-1]["before"]["scan_step"] == 0.5
    for follower in (layer, com_x):
        np.testing.assert_allclose(follower.scale, (0.25, 0.25))
        assert str(follower.units[0]) == "nanometer"
    panel.fields.semiangle_mrad.value = 0.0  # cleared: no longer known
    click(qtbot, panel.apply_button)
    assert find_dataset(layer).calibration.semiangle_mrad is None
