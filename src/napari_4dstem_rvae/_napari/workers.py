"""The one worker lifecycle used by every widget and by the reader: run a function (plain or
generator) in a napari thread worker, lock the controls while it runs, report errors as one
sentence, keep the worker referenced until it ends, and stop it cleanly when the widget or
the viewer closes."""

from __future__ import annotations

from typing import Any, Callable, Iterable

#: Running workers, referenced until they finish (a collected worker would lose its signals).
_RUNNING: set = set()


def running_workers() -> list:
    return list(_RUNNING)


def friendly_error(exc: BaseException) -> str:
    """One sentence a microscopist understands, for errors that reach the UI."""
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return ("ran out of memory: use a smaller region, bin the detector further, "
                "or use a smaller batch size")
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


def notify_warning(message: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(message)


def warnings_as_notifications(function: Callable, *args: Any, **kwargs: Any) -> Any:
    """Call ``function`` (in the GUI thread) and show every warning it raises as a napari
    notification, one sentence each, instead of text on stderr."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = function(*args, **kwargs)
    seen = set()
    for item in caught:
        text = " ".join(str(item.message).split())
        if text not in seen and not issubclass(item.category, (DeprecationWarning, PendingDeprecationWarning)):
            seen.add(text)
            notify_warning(text)
    return result


def notify_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(message)


def start_worker(function: Callable, *, controls: Iterable[Any] = (), on_yielded: Callable | None = None,
                 on_returned: Callable | None = None, on_error: Callable | None = None,
                 on_finished: Callable | None = None, progress: dict | None = None,
                 what: str = "The computation"):
    """Run ``function`` (a plain or generator function) in a napari thread worker.

    Controls are disabled while it runs and re-enabled when it ends, also after an error;
    errors reach ``on_error`` or, by default, the user as a one-sentence notification.
    ``worker.done`` becomes True once it has finished and the callbacks have run.
    """
    from napari.qt.threading import create_worker

    controls = list(controls)
    for control in controls:
        control.enabled = False
    kwargs: dict[str, Any] = {"_ignore_errors": True}  # errors are reported below, as one sentence
    if progress:
        kwargs["_progress"] = progress
    worker = create_worker(function, **kwargs)
    worker.done = False

    def finished() -> None:
        worker.done = True
        _RUNNING.discard(worker)
        try:
            for control in controls:
                control.enabled = True
        except RuntimeError:  # the widget's Qt side is gone (viewer closed)
            return
        if on_finished is not None:
            on_finished()

    def errored(exc: Exception) -> None:
        if on_error is not None:
            on_error(exc)
        else:
            notify_error(f"{what} failed: {friendly_error(exc)}")

    if on_yielded is not None and hasattr(worker, "yielded"):
        worker.yielded.connect(on_yielded)
    if on_returned is not None:
        worker.returned.connect(on_returned)
    worker.errored.connect(errored)
    worker.finished.connect(finished)
    _RUNNING.add(worker)
    worker.start()
    return worker


def stop_worker(worker: Any, timeout: float = 10.0) -> None:
    """Ask a running worker to quit and wait for its thread (at most ``timeout`` seconds)."""
    if worker is None or getattr(worker, "done", True):
        return
    worker.quit()
    try:
        worker.await_workers(msecs=int(timeout * 1000))
    except Exception:
        pass


class WorkerMixin:
    """For dock widgets: ``self.run_worker(...)`` keeps the current worker in ``self.worker``
    and stops it when the widget's Qt side is destroyed (the dock or the viewer closes)."""

    worker: Any = None

    def run_worker(self, function: Callable, **kwargs: Any):
        if not getattr(self, "_worker_cleanup", False):
            self._worker_cleanup = True
            native = getattr(self, "native", self)
            native.destroyed.connect(lambda *_: stop_worker(self.worker))
        self.worker = start_worker(function, **kwargs)
        return self.worker
