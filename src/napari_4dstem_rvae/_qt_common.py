"""Small pieces shared by the dock widgets: picking a 4D data set, running work in a
napari thread worker with the controls disabled, and reporting errors as notifications."""

from __future__ import annotations

from typing import Any, Callable, Iterable

from magicgui.widgets import ComboBox

from ._layers import dataset_layers, find_dataset


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


def notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


def notify_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(message)


def start_worker(function: Callable, *, controls: Iterable[Any] = (), on_yielded: Callable | None = None,
                 on_returned: Callable | None = None, on_error: Callable | None = None,
                 on_finished: Callable | None = None, progress: dict | None = None,
                 what: str = "The computation"):
    """Run ``function`` (a plain or generator function) in a napari thread worker.

    Controls are disabled while it runs and re-enabled when it ends, also after an error;
    errors reach the user as one-sentence notifications.
    """
    from napari.qt.threading import create_worker

    controls = list(controls)
    for control in controls:
        control.enabled = False
    kwargs: dict[str, Any] = {"_ignore_errors": True}  # errors are reported below, as one sentence
    if progress:
        kwargs["_progress"] = progress
    worker = create_worker(function, **kwargs)
    worker.done = False  # True once finished (and the callbacks below have run)

    def finished() -> None:
        worker.done = True
        for control in controls:
            control.enabled = True
        if on_finished is not None:
            on_finished()

    def errored(exc: Exception) -> None:
        if on_error is not None:
            on_error(exc)
        else:
            notify_error(f"{what} failed: {exc}")

    if on_yielded is not None and hasattr(worker, "yielded"):
        worker.yielded.connect(on_yielded)
    if on_returned is not None:
        worker.returned.connect(on_returned)
    worker.errored.connect(errored)
    worker.finished.connect(finished)
    worker.start()
    return worker
