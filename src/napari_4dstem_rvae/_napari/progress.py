"""A run's :class:`~napari_4dstem_rvae.workflows.Progress` events as napari progress bars (the
activity dock), one per stage, closed when the stage ends or the run does. Called in the Qt
main thread (a worker's ``yielded`` signal): no thread bridge of its own."""

from __future__ import annotations

from collections import deque
from typing import Any


class ProgressBars:
    def __init__(self) -> None:
        self.bars: dict[str, Any] = {}
        self._pending: deque[Any] = deque()
        self._busy = False

    def update(self, event: Any) -> None:
        """Show ``event``. Making a napari progress bar can run the Qt event loop, which may
        deliver the run's next event (another call) before this one is shown: such a call
        only queues its event, and the events are shown in the order they came."""
        self._pending.append(event)
        if self._busy:
            return
        self._busy = True
        try:
            while self._pending:
                self._show(self._pending.popleft())
        finally:
            self._busy = False

    def _show(self, event: Any) -> None:
        from napari.utils import progress

        bar = self.bars.get(event.stage)
        if bar is None or bar.total != event.total:
            if bar is not None:
                bar.close()
            where = f" on {event.where.split(' ')[0]}" if event.where else ""
            bar = progress(total=event.total, desc=f"{event.stage}{where}")
            self.bars[event.stage] = bar
        bar.update(max(0, event.done - bar.n))
        if event.finished:
            self.close(event.stage)

    def close(self, stage: str | None = None) -> None:
        if stage is None:
            self._pending.clear()
        for name in [stage] if stage is not None else list(self.bars):
            bar = self.bars.pop(name, None)
            if bar is not None:
                bar.close()
