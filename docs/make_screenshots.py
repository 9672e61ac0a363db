"""Screenshots for the docs, taken the way a user works: napari maximised on a screen of the
given size, the sample opened from File > Open Sample, the analysis dock from the Plugins menu
(``add_plugin_dock_widget``), the real buttons clicked, a region drawn with the Shapes tool.

    xvfb-run -a -s "-screen 0 1366x768x24" .venv/bin/python docs/make_screenshots.py 1366x768
    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python docs/make_screenshots.py 1920x1080

(``make screenshots`` runs both; a second argument ``4d`` or ``atoms`` takes one workflow
only.) Writes ``docs/screenshots/<size>_<step>.png``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

OUT = Path(__file__).parent / "screenshots"
PLUGIN = "napari-4dstem-rvae"


def settle(seconds: float = 0.5) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.time() + seconds
    while time.time() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def click(widget) -> None:
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    QTest.mouseClick(widget.native, Qt.MouseButton.LeftButton)


def wait_for(widget, timeout: float = 600.0) -> None:
    end = time.time() + timeout
    while not (widget.worker is not None and widget.worker.done) and time.time() < end:
        settle(0.2)
    settle(0.3)


def drag_rectangle(layer, start, end) -> None:
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import (
        mouse_move_callbacks,
        mouse_press_callbacks,
        mouse_release_callbacks,
    )

    layer.mode = "add_rectangle"
    mouse_press_callbacks(layer, read_only_mouse_event(type="mouse_press", position=start))
    mouse_move_callbacks(layer, read_only_mouse_event(type="mouse_move", is_dragging=True, position=end))
    mouse_release_callbacks(layer, read_only_mouse_event(type="mouse_release", position=end))
    layer.mode = "pan_zoom"


def main(size: str, epochs: int = 60) -> list[Path]:
    import napari
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_press_callbacks

    from napari_4dstem_rvae._napari.layers import find_dataset

    OUT.mkdir(exist_ok=True)
    shots = []

    def shot(name: str) -> None:
        settle(0.6)
        path = OUT / f"{size}_{name}.png"
        viewer.screenshot(str(path), canvas_only=False)
        shots.append(path)

    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    window = viewer.window._qt_window
    window.setGeometry(QApplication.primaryScreen().availableGeometry())  # napari restores its last size
    window.showMaximized()
    settle(0.5)
    geometry = window.geometry()
    print(f"window {geometry.width()} × {geometry.height()}")
    adf = viewer.open_sample(PLUGIN, "graphene_si")[0]
    settle(0.5)
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, "4D-STEM analysis")
    ds = find_dataset(adf)
    ny, nx = ds.scan_shape
    sy, sx = ds.calibration.scan_step_yx
    viewer.reset_view()
    # a click pins a probe position: its pattern in the browser, a cross on the canvas
    mouse_press_callbacks(viewer, read_only_mouse_event(type="mouse_press", position=(16 * sy, 20 * sx)))
    dock.show_tab("Open")
    shot("open")

    dock.show_tab("COM")
    click(dock.com.run_button)
    wait_for(dock.com)
    shot("com")

    dock.show_tab("Train")
    train = dock.train
    click(train.new_region_button)
    drag_rectangle(viewer.layers[train.region.value], (2 * sy, 2 * sx), ((ny - 3) * sy, (nx - 3) * sx))
    train.layer.value = adf.name
    train.epochs.value = epochs
    train.maps_every.value = 10
    train.threads.value = 2
    click(train.start_button)
    wait_for(train)
    for layer in viewer.layers:
        layer.visible = layer is adf or layer.name.endswith(("rVAE latent 1", "region"))
    shot("train")

    dock.show_tab("Explore")
    mouse_press_callbacks(viewer, read_only_mouse_event(type="mouse_press", position=(ny // 2 * sy, nx // 2 * sx)))
    shot("explore")
    print(train.status.value)
    viewer.close()
    return shots


def atoms(size: str) -> list[Path]:
    """The atom-resolved workflow: the simulated HAADF series from File > Open Sample, the
    Atoms tab, Find atoms, Train (default epochs), atoms coloured by angle, by latent 1 and by
    the missing neighbour,
    the per-frame histogram dock."""
    import napari
    from qtpy.QtWidgets import QApplication

    OUT.mkdir(exist_ok=True)
    shots = []
    viewer = napari.Viewer(show=True)
    window = viewer.window._qt_window
    window.setGeometry(QApplication.primaryScreen().availableGeometry())
    window.showMaximized()
    settle(0.5)

    def shot(name: str) -> None:
        settle(0.6)
        path = OUT / f"{size}_{name}.png"
        viewer.screenshot(str(path), canvas_only=False)
        shots.append(path)

    image = viewer.open_sample(PLUGIN, "haadf_series")[0]
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, "4D-STEM analysis")
    dock.show_tab("Atoms")
    widget = dock.atoms
    click(widget.find_button)
    wait_for(widget)
    click(widget.train_button)
    wait_for(widget)
    widget.colour_by.value = "angle mod 120°"
    # zoom on the hole and the grain boundary of frame 3
    viewer.dims.set_current_step(0, 3)
    pixel = image.scale[-1]
    ny, nx = image.data.shape[-2:]
    viewer.camera.center = (ny * pixel / 2, nx * pixel / 2)
    viewer.camera.zoom = viewer.camera.zoom * 1.6
    shot("atoms_angle")
    widget.colour_by.value = "latent_1"
    shot("atoms_latent")
    widget.colour_by.value = "missing_neighbour"
    shot("atoms_missing_neighbour")
    print(widget.status.value)
    viewer.close()
    return shots


if __name__ == "__main__":
    size = sys.argv[1] if len(sys.argv) > 1 else "1920x1080"
    which = sys.argv[2] if len(sys.argv) > 2 else "all"
    for path in (main(size) if which in ("all", "4d") else []) + (atoms(size) if which in ("all", "atoms") else []):
        print(path)
