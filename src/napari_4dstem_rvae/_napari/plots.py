"""Small Qt/matplotlib pieces for the training widget: the live loss/correlation plot and
an event-loop latency probe (how responsive the UI stays while a worker trains)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, QTimer


class LivePlot:
    """Train/test loss per epoch (left axis, log) and |r| latent–COM (right axis)."""

    def __init__(self, height: float = 2.4):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, height), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.axes = self.figure.add_subplot(111)
        self.twin = self.axes.twinx()
        self.clear()

    @property
    def widget(self):
        return self.canvas

    def clear(self) -> None:
        self.epochs: list[float] = []
        self.train: list[float] = []
        self.test: list[float] = []
        self.r_epochs: list[float] = []
        self.r_values: list[float] = []
        self._draw()

    def add_epoch(self, epoch: float, train_loss: float, test_loss: float | None) -> None:
        self.epochs.append(float(epoch))
        self.train.append(float(train_loss))
        self.test.append(float("nan") if test_loss is None else float(test_loss))
        self._draw()

    def add_correlation(self, epoch: float, r: float) -> None:
        self.r_epochs.append(float(epoch))
        self.r_values.append(float(r))
        self._draw()

    def _draw(self) -> None:
        ax, twin = self.axes, self.twin
        ax.clear()
        twin.clear()
        if self.epochs:
            ax.plot(self.epochs, self.train, "-", color="tab:blue", label="train loss")
            if np.isfinite(self.test).any():
                ax.plot(self.epochs, self.test, "--", color="tab:orange", label="test loss")
            positive = [v for v in self.train + self.test if np.isfinite(v) and v > 0]
            if positive and len(positive) == len([v for v in self.train + self.test if np.isfinite(v)]):
                ax.set_yscale("log")
            ax.legend(loc="upper right", fontsize=7)
        if self.r_epochs:
            twin.plot(self.r_epochs, self.r_values, "o-", color="tab:green", ms=3, label="max |r| latent–COM")
            twin.set_ylim(0, 1)
            twin.set_ylabel("|r|", fontsize=8, color="tab:green")
            twin.legend(loc="lower right", fontsize=7)
        else:
            twin.set_yticks([])
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("loss", fontsize=8)
        ax.tick_params(labelsize=7)
        twin.tick_params(labelsize=7)
        self.canvas.draw_idle()


class LatencyProbe(QObject):
    """Measures how late a periodic timer fires: the event-loop latency seen by the user."""

    def __init__(self, interval_ms: int = 50, parent: Any = None):
        super().__init__(parent)
        self.interval = interval_ms / 1000.0
        self.delays: list[float] = []
        self._last = None
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)

    def start(self) -> None:
        self.delays = []
        self._last = time.perf_counter()
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.delays.append(max(0.0, now - self._last - self.interval))
        self._last = now

    def summary(self) -> dict[str, float]:
        """Median, 95th percentile and max extra delay, in ms."""
        if not self.delays:
            return {"median_ms": 0.0, "p95_ms": 0.0, "max_ms": 0.0, "n": 0}
        d = np.asarray(self.delays) * 1e3
        return {"median_ms": float(np.median(d)), "p95_ms": float(np.percentile(d, 95)),
                "max_ms": float(d.max()), "n": int(d.size)}
