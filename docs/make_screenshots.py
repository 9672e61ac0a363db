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

    from napari_4dstem_rvae._browser import DiffractionBrowser

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

    from napari_4dstem_rvae._com_widget import COMWidget

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


if __name__ == "__main__":
    targets = sys.argv[1:] or ["open", "com"]
    if "open" in targets:
        open_sample()
    if "com" in targets:
        com_maps()
