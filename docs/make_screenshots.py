"""Screenshots for the docs, taken from a real napari window (run under Xvfb):

    xvfb-run -a -s "-screen 0 1400x900x24" .venv/bin/python docs/make_screenshots.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

DOCS = Path(__file__).parent


def settle(seconds: float = 0.5) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.time() + seconds
    while time.time() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def open_sample() -> None:
    import napari

    from napari_4dstem_rvae._napari.browser import DiffractionBrowser

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1300, 760)
    layer = viewer.open_sample("napari-4dstem-rvae", "graphene_vacancy")[0]
    settle(1.0)
    browser = viewer.window.dock_widgets.get("Diffraction browser (napari-4dstem-rvae)")
    if browser is None:
        browser = DiffractionBrowser(viewer)
    browser.show_position(16, 20, layer)
    browser._mark(layer, (16, 20))
    settle(0.5)
    viewer.reset_view()
    settle(0.5)
    viewer.screenshot(str(DOCS / "napari_open.png"), canvas_only=False)
    viewer.close()


def com_maps() -> None:
    import napari

    from napari_4dstem_rvae._napari.com_widget import COMWidget

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1300, 760)
    viewer.open_sample("napari-4dstem-rvae", "graphene_vacancy")
    widget = COMWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Centre of mass (COM/DPC)", area="right")
    worker = widget.run()
    while not getattr(worker, "done", False):
        settle(0.2)
    for layer in viewer.layers:
        layer.visible = layer.name.endswith(("ADF", "colour wheel"))
    wheel = [layer for layer in viewer.layers if layer.name.endswith("colour wheel")][0]
    wheel.opacity = 0.75
    settle(0.5)
    viewer.reset_view()
    settle(0.5)
    viewer.screenshot(str(DOCS / "napari_com.png"), canvas_only=False)
    viewer.close()


def train(epochs: int = 60) -> None:
    import napari
    import numpy as np

    from napari_4dstem_rvae._napari.layers import find_dataset
    from napari_4dstem_rvae._napari.train_widget import TrainWidget

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    adf = viewer.open_sample("napari-4dstem-rvae", "graphene_si")[0]
    ds = find_dataset(adf)
    sy, sx = ds.calibration.scan_step_yx
    ny, nx = ds.scan_shape
    # a region covering most of the scan, drawn as a rectangle on the ADF image
    rect = np.array([[2 * sy, 2 * sx], [2 * sy, (nx - 3) * sx], [(ny - 3) * sy, (nx - 3) * sx], [(ny - 3) * sy, 2 * sx]])
    viewer.add_shapes([rect], shape_type="rectangle", name="training region", edge_color="yellow",
                      face_color="transparent", edge_width=0.1, units=adf.units)
    browser = viewer.window.dock_widgets.get("Diffraction browser (napari-4dstem-rvae)")
    if browser is not None:
        viewer.window.remove_dock_widget(browser)
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Train rVAE", area="right")
    widget.layer.value = adf.name
    widget.region.value = "training region"
    widget.epochs.value = epochs
    widget.maps_every.value = 10
    widget.threads.value = 2
    worker = widget.start()
    while not getattr(worker, "done", False):
        settle(0.3)
    settle(0.5)
    viewer.reset_view()
    settle(0.5)
    viewer.screenshot(str(DOCS / "napari_train.png"), canvas_only=False)
    for layer in viewer.layers:
        layer.visible = layer is adf or layer.name.endswith("latent 1")
    latent = [layer for layer in viewer.layers if layer.name.endswith("latent 1")][0]
    latent.opacity = 0.7
    latent.blending = "translucent"
    settle(0.5)
    viewer.screenshot(str(DOCS / "napari_maps.png"), canvas_only=False)
    widget.tabs.setCurrentIndex(1)
    widget.explore.show_position(ny // 2, nx // 2)
    settle(0.5)
    viewer.screenshot(str(DOCS / "napari_explore.png"), canvas_only=False)
    print(widget.status.value)
    viewer.close()


if __name__ == "__main__":
    targets = sys.argv[1:] or ["open", "com", "train"]
    if "open" in targets:
        open_sample()
    if "com" in targets:
        com_maps()
    if "train" in targets:
        train()
