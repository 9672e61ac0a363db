"""The whole workflow as a microscopist walks it: the analysis dock opened from the Plugins menu
(napari hands it proxies), the real buttons clicked, every step run twice — layers are updated
in place by name, never piled up — and no error notification on the way."""

import warnings

import numpy as np
import pytest
from helpers import PLUGIN, click_enabled, wait_for_worker
from napari.utils._test_utils import read_only_mouse_event
from napari.utils.interactions import (
    mouse_move_callbacks,
    mouse_press_callbacks,
    mouse_release_callbacks,
)
from napari.utils.notifications import NotificationSeverity, notification_manager
from qtpy.QtCore import Qt

from napari_4dstem_rvae._napari.analysis import scale_bar
from napari_4dstem_rvae._napari.layers import find_dataset
from napari_4dstem_rvae._napari.regions import region_mask


@pytest.fixture
def notifications():
    seen = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


def _problems(seen):
    return [f"{n.severity}: {n.message}" for n in seen if n.severity >= NotificationSeverity.WARNING]


def _drag_rectangle(layer, start, end):
    """Draw a rectangle with the Shapes layer's own tool: press, drag, release (world coordinates)."""
    layer.mode = "add_rectangle"
    mouse_press_callbacks(layer, read_only_mouse_event(type="mouse_press", position=start))
    mouse_move_callbacks(layer, read_only_mouse_event(type="mouse_move", is_dragging=True, position=end))
    mouse_release_callbacks(layer, read_only_mouse_event(type="mouse_release", position=end))


@pytest.mark.slow
def test_whole_workflow_through_the_plugins_menu(make_napari_viewer, qtbot, tmp_path, notifications):
    viewer = make_napari_viewer()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adf = viewer.open_sample(PLUGIN, "graphene_vacancy")[0]
        qtbot.wait(50)  # the reader docks the analysis widget once the layer is in
        dock, analysis = viewer.window.add_plugin_dock_widget(PLUGIN, "4D-STEM analysis")
        assert len([n for n in viewer.window.dock_widgets if n.startswith("4D-STEM analysis")]) == 1
        ds = find_dataset(adf)
        assert scale_bar(viewer).visible
        assert analysis.browser.current_pattern is not None  # the centre pattern is shown at once

        # -- COM, twice: same layers, updated by name ------------------------------------
        analysis.show_tab("COM")
        counts = []
        for _ in range(2):
            click_enabled(qtbot, analysis.com.run_button)
            wait_for_worker(qtbot, analysis.com)
            counts.append(len(viewer.layers))
        assert counts[0] == counts[1] == 1 + 7, [layer.name for layer in viewer.layers]
        wheel = viewer.layers[f"COM colour wheel · {ds.name}"]
        assert wheel.visible and 0 < wheel.opacity < 1
        assert not viewer.layers[f"COM x · {ds.name}"].visible  # one map at a time over the ADF
        assert viewer.layers[f"COM magnitude · {ds.name}"].metadata["napari_4dstem_rvae"]["unit"] == "mrad"
        assert not analysis.com.legend_canvas.isHidden()

        # -- virtual detector, twice ------------------------------------------------------
        analysis.show_tab("Virtual")
        for _ in range(2):
            click_enabled(qtbot, analysis.virtual.run_button)
            wait_for_worker(qtbot, analysis.virtual)
        assert len(viewer.layers) == counts[-1] + 1

        # -- preprocess, twice: one processed data set -------------------------------------
        analysis.show_tab("Preprocess")
        analysis.preprocess.bin_detector.value = 2
        for _ in range(2):
            click_enabled(qtbot, analysis.preprocess.apply_button)
            wait_for_worker(qtbot, analysis.preprocess)
        assert len(viewer.layers) == counts[-1] + 2
        n_before_regions = len(viewer.layers)

        # -- regions: one added by code, one drawn with the Shapes tool ----------------------
        sy, sx = ds.calibration.scan_step_yx
        rect = np.array([[4 * sy, 6 * sx], [4 * sy, 19 * sx], [15 * sy, 19 * sx], [15 * sy, 6 * sx]])
        viewer.add_shapes([rect], shape_type="rectangle", name="typed region", units=adf.units)
        # napari's own "new shapes layer" button: the layer comes with the scan's units
        viewer.layers.selection.active = adf
        qtbot.mouseClick(viewer.window._qt_viewer.layerButtons.newShapesButton, Qt.MouseButton.LeftButton)
        assert tuple(str(u) for u in viewer.layers[-1].units) == ("angstrom", "angstrom")
        analysis.show_tab("Train")
        train = analysis.train
        click_enabled(qtbot, train.new_region_button)
        drawn = viewer.layers[train.region.value]
        assert tuple(str(u) for u in drawn.units) == tuple(str(u) for u in adf.units)  # no unit warning
        _drag_rectangle(drawn, (2 * sy, 3 * sx), (12 * sy, 20 * sx))
        assert len(drawn.data) == 1
        mask = region_mask(drawn, ds)
        assert 0 < mask.sum() < ds.scan_shape[0] * ds.scan_shape[1]
        assert train.count.value.startswith(f"{mask.sum()} of {32 * 32}")
        assert len(viewer.layers) == n_before_regions + 3

        # -- train with the drawn region, twice ---------------------------------------------
        train.layer.value = adf.name
        train.epochs.value = 2
        train.batch_size.value = 32
        counts = []
        for _ in range(2):
            click_enabled(qtbot, train.start_button)
            wait_for_worker(qtbot, train)
            counts.append(len(viewer.layers))
        assert counts[0] == counts[1] == n_before_regions + 3 + 5  # angle, certainty, novelty, latent 1, latent 2
        trainer = train.session.trainer
        used = set(trainer.train_index.tolist()) | set(trainer.test_index.tolist())
        assert used == set(np.flatnonzero(mask.ravel()).tolist())
        latent = viewer.layers[f"rVAE latent 1 · {ds.name}"]
        np.testing.assert_allclose(latent.scale, adf.scale)
        assert latent.visible and latent.opacity < 1

        # -- explore: a click on the canvas shows that position's pattern and reconstruction --
        analysis.show_tab("Explore")
        mouse_press_callbacks(viewer, read_only_mouse_event(type="mouse_press", position=(10 * sy, 7 * sx)))
        assert analysis.explore.current == (10, 7)
        assert analysis.browser.current_position == (10, 7)  # the click also pins the pattern
        n_explored = len(viewer.layers)  # + the "probe position" marker

        # -- save / load, twice ----------------------------------------------------------------
        train.checkpoint_path.value = str(tmp_path / "model.pt")
        train.results_path.value = str(tmp_path / "results.h5")
        click_enabled(qtbot, train.save_button)
        click_enabled(qtbot, train.save_results_button)
        for _ in range(2):
            click_enabled(qtbot, train.load_button)
            wait_for_worker(qtbot, train)
        assert len(viewer.layers) == n_explored
        # a results file opens like any other file (npe2: the reader returns layer data and adds
        # nothing itself): each opening adds the same maps, aligned with the ADF image
        reopened = []
        for _ in range(2):
            added = viewer.open(str(tmp_path / "results.h5"), plugin=PLUGIN)
            reopened.append(len(viewer.layers))
            assert added and all(layer in viewer.layers for layer in added)
            maps = [layer for layer in added if layer.ndim == 2 and "latent 1" in layer.name]
            assert maps and all(np.allclose(layer.scale, adf.scale) for layer in maps)
        assert reopened[1] - reopened[0] == reopened[0] - n_explored > 0
    assert not _problems(notifications), _problems(notifications)
    units = [str(w.message) for w in caught if "nconsistent units" in str(w.message)]
    assert not units, units
