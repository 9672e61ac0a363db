"""How ``stem-rvae`` shows a run's events: progress bars (tqdm) and log lines (``logging``) on
stderr, the paths of the files written on stdout — so ``stem-rvae -q run … > files.txt``
keeps just the paths, and a script can read them."""

from __future__ import annotations

import logging
import sys
from typing import Any

LOGGER = "napari_4dstem_rvae"


class _BarSafeHandler(logging.Handler):
    """Log lines written through tqdm, so that they do not break a progress bar in the middle."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never stop a run
            self.handleError(record)


class Renderer:
    """Shows the events of a run (:mod:`napari_4dstem_rvae.workflows.events`).

    ``verbosity``: −1 quiet (warnings and errors only, no bars), 0 normal (steps, a bar per
    pass and for training), 1 every epoch too, 2 debugging detail of the libraries."""

    def __init__(self, verbosity: int = 0):
        self.verbosity = verbosity
        self.log = logging.getLogger(LOGGER)
        self.log.propagate = False
        self._handler = _BarSafeHandler()
        self._handler.setFormatter(logging.Formatter("stem-rvae: %(message)s"))
        self.log.handlers = [self._handler]
        level = {-1: logging.WARNING, 0: logging.INFO, 1: logging.INFO}.get(verbosity, logging.DEBUG)
        self.log.setLevel(level)
        if verbosity >= 2:
            logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
        self.bars: dict[str, Any] = {}

    # -- events ------------------------------------------------------------------------------
    def show(self, events: Any) -> int:
        """Show every event of a run; the paths it wrote to stdout. Returns the exit status."""
        from ..workflows.events import Done, Epoch, Maps, Message, Progress

        status = 0
        for event in events:
            if isinstance(event, Message):
                (self.log.warning if event.level == "warning" else self.log.info)(event.text)
            elif isinstance(event, Progress):
                self._progress(event.stage, event.done, event.total, event.unit,
                               f" on {event.where.split(' ')[0]}" if event.where else "")
            elif isinstance(event, Epoch):
                self._epoch(event)
            elif isinstance(event, Maps):
                pass  # maps are the files' business here
            elif isinstance(event, Done):
                self._close_bars()
                for path in event.outputs.values():
                    print(path, flush=True)
                status = 130 if event.stopped else 0
        self._close_bars()
        return status

    def _bar(self, stage: str, total: int, unit: str, where: str = "") -> Any:
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None or bar.total != total:
            for other in list(self.bars.values()):  # one pass at a time: one bar, never stacked
                other.close()
            self.bars.clear()
            bar = tqdm(total=total, desc=f"stem-rvae: {stage}{where}", unit=f" {unit}", file=sys.stderr,
                       disable=self.verbosity < 0, mininterval=0.5, leave=self.verbosity >= 0,
                       dynamic_ncols=True)
            self.bars[stage] = bar
        return bar

    def _progress(self, stage: str, done: int, total: int, unit: str, where: str = "") -> None:
        bar = self._bar(stage, total, unit, where)
        bar.update(max(0, done - bar.n))
        if done >= total:
            bar.close()
            self.bars.pop(stage, None)

    def _epoch(self, event: Any) -> None:
        bar = self._bar("training", event.total, "epochs")
        bar.update(max(0, event.epoch - bar.n))
        extra = {"loss": f"{event.train_loss:.4g}"}
        if event.max_abs_r is not None:
            extra["max |r|"] = f"{event.max_abs_r:.3f}"
        bar.set_postfix(extra, refresh=False)
        if self.verbosity >= 1:
            self.log.info(f"epoch {event.epoch}/{event.total}: loss {event.train_loss:.4g}"
                          + (f", max |r| {event.max_abs_r:.3f}" if event.max_abs_r is not None else "")
                          + f" ({event.elapsed:.0f} s)")
        if event.epoch >= event.total:
            bar.close()
            self.bars.pop("training", None)

    def _close_bars(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()

    # -- the rest ----------------------------------------------------------------------------
    def warning(self, message: Any, category: Any = None, filename: Any = None, lineno: Any = None,
                file: Any = None, line: Any = None) -> None:
        """``warnings.showwarning`` for people: one line, no source location."""
        self.log.warning("warning: " + " ".join(str(message).split()))

    def error(self, text: str) -> None:
        self._close_bars()
        self.log.error("error: " + text)

    def close(self) -> None:
        self._close_bars()
