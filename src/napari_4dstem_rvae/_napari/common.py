"""Small pieces shared by the dock widgets: picking the 4D data set a widget works on.
(Running work in a thread worker and reporting errors: :mod:`.workers`.)"""

from __future__ import annotations

from typing import Any, Callable

from magicgui.widgets import ComboBox

from .layers import dataset_layers, find_dataset


def dataset_combo(viewer: Any, label: str = "data set") -> ComboBox:
    """A ComboBox listing the layers that carry a 4D data set, kept in sync with the viewer."""
    combo = ComboBox(label=label, choices=lambda _: [layer.name for layer in dataset_layers(viewer)],
                     nullable=True)

    def refresh(*_: Any) -> None:
        current = combo.value
        combo.reset_choices()
        names = [layer.name for layer in dataset_layers(viewer)]
        if current in names:
            combo.value = current
        elif names:
            combo.value = names[-1]

    for event in (viewer.layers.events.inserted, viewer.layers.events.removed,
                  viewer.layers.events.reordered):
        event.connect(refresh)
    combo.native.destroyed.connect(lambda *_: _disconnect(viewer, refresh))
    refresh()
    return combo


def _disconnect(viewer: Any, callback: Callable) -> None:
    for event in (viewer.layers.events.inserted, viewer.layers.events.removed,
                  viewer.layers.events.reordered):
        try:
            event.disconnect(callback)
        except Exception:
            pass


def chosen_layer(viewer: Any, combo: ComboBox):
    """The layer named in ``combo`` and its Dataset4D; raises ValueError with a sentence if none."""
    name = combo.value
    if not name or name not in viewer.layers:
        raise ValueError("Choose a 4D data set first: open a file or a sample (File > Open Sample).")
    layer = viewer.layers[name]
    dataset = find_dataset(layer)
    if dataset is None:
        raise ValueError(f"Layer '{name}' has no 4D data set behind it.")
    return layer, dataset


def find_browser(viewer: Any, browser: Any = None) -> Any:
    """The diffraction browser a widget works with: the one it was given (the analysis dock's),
    else a docked one, else ``None``."""
    if browser is not None:
        return browser
    window = getattr(viewer, "window", None)
    if window is None:
        return None
    docks = window.dock_widgets
    for name in ("4D-STEM analysis (napari-4dstem-rvae)", "Diffraction browser (napari-4dstem-rvae)"):
        widget = docks.get(name)
        if widget is not None:
            return getattr(widget, "browser", widget)
    return None


def reveal(widget: Any) -> None:
    """Scroll the enclosing scroll area (a tab of the analysis dock) so that ``widget`` shows."""
    from qtpy.QtWidgets import QScrollArea

    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QScrollArea):
        parent = parent.parentWidget()
    if parent is not None:
        from qtpy.QtCore import QTimer

        QTimer.singleShot(0, lambda: parent.ensureWidgetVisible(widget, 0, 0))
