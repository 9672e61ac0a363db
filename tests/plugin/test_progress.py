"""napari progress bars of a run's Progress events, shown in the order the events came even
when making a bar runs the Qt event loop and delivers the next event inside the first call."""

from __future__ import annotations


def test_an_event_delivered_while_a_bar_is_made_is_shown_after_it(monkeypatch):
    import napari.utils

    from napari_4dstem_rvae._napari.progress import ProgressBars
    from napari_4dstem_rvae.workflows import Progress

    bars = ProgressBars()
    shown, made = [], []

    class Bar:   # napari's progress, whose construction lets the next event in (as Qt's loop can)
        def __init__(self, total, desc):
            self.total, self.n, self.closed = total, 0, False
            made.append(self)
            if len(made) == 1:
                bars.update(Progress("COM", 1, 1, "tasks", ""))

        def update(self, step):
            self.n += step
            shown.append((self.n, self.total))

        def close(self):
            self.closed = True

    monkeypatch.setattr(napari.utils, "progress", Bar)
    bars.update(Progress("COM", 0, 1, "tasks", ""))
    assert shown == [(0, 1), (1, 1)]                  # in the order the run reported them
    assert len(made) == 1 and made[0].closed and not bars.bars   # the finished stage's bar closed
