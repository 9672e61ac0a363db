"""Small Qt/matplotlib pieces: the plots' colours from napari's theme (:func:`themed`), the live
loss/correlation plot and an event-loop latency probe (how responsive the UI stays while a
worker trains; for the benchmark, not shown to users)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, QTimer


def theme_rc() -> dict[str, Any]:
    """matplotlib settings in the colours of napari's current theme (dark by default): the
    figures drawn in the docks look like the rest of the window."""
    background, text, grid = "#262930", "#f0f1f2", "#5a626c"
    try:
        from napari.settings import get_settings
        from napari.utils.theme import get_theme

        theme = get_theme(get_settings().appearance.theme)
        background, text = theme.background.as_hex(), theme.text.as_hex()
        grid = theme.secondary.as_hex() if hasattr(theme, "secondary") else grid
    except Exception:  # noqa: BLE001 - napari's theme API moved: keep the dark defaults
        pass
    return {"figure.facecolor": background, "axes.facecolor": background, "savefig.facecolor": background,
            "axes.edgecolor": grid, "axes.labelcolor": text, "text.color": text, "xtick.color": text,
            "ytick.color": text, "legend.facecolor": background, "legend.edgecolor": grid,
            "axes.titlecolor": text}


def themed(function: Any) -> Any:
    """Decorator: draw inside napari's colours (``theme_rc``); figures made inside also take the
    theme's background."""
    import functools

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import matplotlib

        with matplotlib.rc_context(theme_rc()):
            return function(*args, **kwargs)
    return wrapper


class LivePlot:
    """Train/test loss per epoch (left axis) and the largest latent–COM |r| (right axis), both
    labelled, the legend below the axes; lines are updated in place and redrawn at most
    every ``min_interval_ms`` (a redraw costs tens of ms in the GUI thread)."""

    @themed
    def __init__(self, height: float = 2.3, min_interval_ms: int = 400):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        self.figure = Figure(figsize=(4, height), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(190)
        self.axes = self.figure.add_subplot(111)
        self.twin = self.axes.twinx()
        self.axes.set_xlabel("epoch", fontsize=8)
        self.axes.set_ylabel("loss (nats / pattern)", fontsize=8)
        self.twin.set_ylabel("max |r| latent–COM", fontsize=8, color="tab:green")
        self.twin.set_ylim(0, 1)
        for ax in (self.axes, self.twin):
            ax.tick_params(labelsize=7)
        self.axes.xaxis.set_major_locator(MaxNLocator(5, integer=True))
        self.axes.yaxis.set_major_locator(MaxNLocator(4))
        self.twin.tick_params(axis="y", colors="tab:green")
        (self.train_line,) = self.axes.plot([], [], "-", color="tab:blue", label="train loss")
        (self.test_line,) = self.axes.plot([], [], "--", color="tab:orange", label="test loss")
        (self.r_line,) = self.twin.plot([], [], "o-", color="tab:green", ms=3, label="max |r| latent–COM")
        self.figure.legend(handles=[self.train_line, self.test_line, self.r_line], loc="outside lower center",
                           ncols=3, fontsize=7, frameon=False)
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(min_interval_ms)
        self._timer.timeout.connect(self._draw)
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
        self._schedule()

    def add_correlation(self, epoch: float, r: float) -> None:
        self.r_epochs.append(float(epoch))
        self.r_values.append(float(r))
        self._schedule()

    def _schedule(self) -> None:
        if not self._timer.isActive():
            self._timer.start()

    def _draw(self) -> None:
        from matplotlib.ticker import ScalarFormatter

        self.train_line.set_data(self.epochs, self.train)
        self.test_line.set_data(self.epochs, self.test)
        self.r_line.set_data(self.r_epochs, self.r_values)
        values = np.array([v for v in self.train + self.test if np.isfinite(v)])
        if values.size:
            low, high = float(values.min()), float(values.max())
            log = low > 0 and high / low > 20
            self.axes.set_yscale("log" if log else "linear")
            if not log:  # plain numbers: no "1e4" multiplier nor offset above the axis
                formatter = ScalarFormatter(useOffset=False)
                formatter.set_scientific(False)
                self.axes.yaxis.set_major_formatter(formatter)
            pad = 0.05 * (high - low) if high > low else max(abs(high) * 0.05, 1e-9)
            self.axes.set_ylim(low / 1.2 if log else low - pad, high * 1.2 if log else high + pad)
            self.axes.set_xlim(0, max(self.epochs[-1], 1) * 1.02 + 0.5)
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
