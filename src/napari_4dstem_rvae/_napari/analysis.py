"""The one analysis dock: the diffraction pattern under the cursor on top, the stages of the
workflow as tabs below (Open · Preprocess · COM · Virtual · Train · Explore), and the
atom-resolved workflow for image series (Atoms).

Every tab sits in a scroll area, so the dock never forces the napari window to grow: it fits
a 1366 × 768 laptop screen as well as a 1920 × 1080 one. The splitter between the pattern
and the tabs can be dragged. Opening the dock turns the scale bar on; region layers added
later (napari's own buttons or the Train tab's "New region") get the scan's units.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QScrollArea, QSplitter, QTabWidget, QVBoxLayout, QWidget

from .proxies import layer_kind, unwrap

TAB_NAMES = ("Open", "Preprocess", "COM", "Virtual", "Train", "Explore", "Atoms")


def _scrolled(widget: QWidget) -> QScrollArea:
    """``widget`` at the top of a vertical scroll area (rows packed, not spread), never wider
    than the dock: long choices in combo boxes are elided."""
    from qtpy.QtWidgets import QComboBox

    for combo in widget.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(8)
    inner = QWidget()
    layout = QVBoxLayout(inner)
    layout.setContentsMargins(0, 0, 6, 0)  # room for the scroll bar
    layout.addWidget(widget)
    layout.addStretch(1)
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setFrameShape(QScrollArea.Shape.NoFrame)
    area.setWidget(inner)
    return area


class AnalysisWidget(QWidget):
    """Dock widget "4D-STEM analysis"; ``napari_viewer`` is injected by napari."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None):
        super().__init__(parent)
        from .atoms_widget import AtomsWidget
        from .browser import DiffractionBrowser
        from .calibration import CalibrationPanel
        from .com_widget import COMWidget
        from .open_widget import OpenWidget
        from .preprocess_widget import PreprocessWidget
        from .train_widget import TrainWidget
        from .virtual_widget import VirtualDetectorWidget

        self.viewer = viewer = unwrap(napari_viewer)
        self.browser = DiffractionBrowser(viewer)
        self.open = OpenWidget(viewer)
        self.preprocess = PreprocessWidget(viewer, browser=self.browser)
        self.com = COMWidget(viewer)
        self.virtual = VirtualDetectorWidget(viewer, browser=self.browser)
        self.train = TrainWidget(viewer)
        self.explore = self.train.explore
        self.atoms = AtomsWidget(viewer)
        self.calibration = CalibrationPanel(viewer)
        opening = QWidget()
        opening_layout = QVBoxLayout(opening)
        opening_layout.setContentsMargins(0, 0, 0, 0)
        opening_layout.addWidget(self.open.native)
        from superqt import QCollapsible

        self.calibration_section = QCollapsible("Calibration of a loaded data set")
        self.calibration_section.addWidget(self.calibration.native)
        opening_layout.addWidget(self.calibration_section)
        self.tabs = QTabWidget()
        self.tabs.setUsesScrollButtons(True)
        for name, widget in zip(TAB_NAMES, (opening, self.preprocess.native, self.com.native,
                                            self.virtual.native, self.train.native, self.explore,
                                            self.atoms.native)):
            self.tabs.addTab(_scrolled(widget), name)
        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.addWidget(self.browser)
        self.splitter.addWidget(self.tabs)
        self.splitter.setStretchFactor(0, 1)
        self.splitter.setStretchFactor(1, 3)
        self._sized = False
        self.splitter.setChildrenCollapsible(True)  # the pattern can be dragged away on a small screen
        self.splitter.setCollapsible(1, False)
        # the diffraction pattern means nothing for an image series: the Atoms tab gets the
        # whole height (on a 1366 × 768 screen with the histogram dock, both would not fit)
        self.tabs.currentChanged.connect(self._tab_changed)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.splitter)
        self.setMinimumWidth(330)
        scale_bar(viewer).visible = True
        # first: before napari draws the new layer (and warns of inconsistent units)
        viewer.layers.events.inserted.connect(self._give_units, position="first")
        self.destroyed.connect(lambda *_: _disconnect(viewer, self._give_units))

    def showEvent(self, event):  # noqa: N802 - Qt's name
        super().showEvent(event)
        if not self._sized and self.height() > 0:
            # the pattern gets about 30 % of the height (140–330 px), the stages the rest; with
            # the separate diffraction browser docked too, this one steps aside
            self._sized = True
            self._separate = any("Diffraction browser" in str(name) for name in _dock_names(self.viewer))
            self.browser.setVisible(not self._separate)
            top = 0 if self._separate else int(min(330, max(140, 0.3 * self.height())))
            self.splitter.setSizes([top, max(1, self.height() - top)])

    def sizeHint(self):  # noqa: N802 - Qt's name
        from qtpy.QtCore import QSize

        return QSize(400, 700)

    def _tab_changed(self, index: int) -> None:
        self.browser.setVisible(TAB_NAMES[index] != "Atoms" and not getattr(self, "_separate", False))

    def show_tab(self, name: str) -> None:
        """Bring a stage's tab to the front (``"Train"``, ``"COM"`` …)."""
        self.tabs.setCurrentIndex(TAB_NAMES.index(name))

    def _give_units(self, event: Any) -> None:
        """A region or points layer added without units, over a calibrated scan, takes the scan's
        units (napari's own "new layer" buttons make them unitless, and napari then warns of
        inconsistent units): the layer is drawn in world coordinates, which are the scan's."""
        layer = unwrap(event.value)
        from .layers import show_colour_bar

        show_colour_bar(layer)  # maps opened from a results file show their colour bar too
        if layer_kind(layer) not in ("shapes", "labels", "points"):
            return
        if any(str(u) != "pixel" for u in layer.units):
            return
        from .layers import dataset_layers

        for reference in dataset_layers(self.viewer):
            units = tuple(reference.units)[-2:]
            if any(str(u) != "pixel" for u in units) and layer.ndim == 2:
                layer.units = units
                return


def _dock_names(viewer: Any) -> list:
    window = getattr(viewer, "window", None)
    docks = getattr(window, "dock_widgets", None) or getattr(window, "_dock_widgets", None) or {}
    try:
        return list(docks.keys())
    except Exception:  # noqa: BLE001 - napari's window API moved
        return []


def _disconnect(viewer: Any, callback: Any) -> None:
    try:
        viewer.layers.events.inserted.disconnect(callback)
    except Exception:
        pass


def scale_bar(viewer: Any) -> Any:
    """The viewer's scale bar overlay (napari ≥ 0.9: ``viewer.canvas.overlays``)."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    if overlays is not None and hasattr(overlays, "scale_bar"):
        return overlays.scale_bar
    return viewer.scale_bar
