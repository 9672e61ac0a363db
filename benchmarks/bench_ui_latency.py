"""Event-loop latency of napari while the rVAE trains in the background (run under Xvfb):

    xvfb-run -a .venv/bin/python benchmarks/bench_ui_latency.py [--epochs 8]

A 50 ms QTimer measures how late each tick fires: first idle (baseline, same process),
then while the Train rVAE widget trains on the simulated graphene with 1 and 2 torch
threads. Prints median / 95th percentile / max extra delay in ms and the ratio to idle.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_4dstem_rvae._napari.plots import LatencyProbe
    from napari_4dstem_rvae._napari.train_widget import TrainWidget

    viewer = napari.Viewer(show=True)
    adf = viewer.open_sample("napari-4dstem-rvae", "graphene_vacancy")[0]
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Train rVAE")
    widget.layer.value = adf.name
    widget.correlate.value = True

    def pump(seconds: float) -> None:
        end = time.time() + seconds
        while time.time() < end:
            QApplication.processEvents()
            time.sleep(0.001)

    probe = LatencyProbe()
    probe.start()
    pump(5.0)
    probe.stop()
    idle = probe.summary()
    rows = [("idle", idle, 0.0)]
    for threads in (1, 2):
        widget.threads.value = threads
        widget.epochs.value = args.epochs
        t0 = time.time()
        worker = widget.start()
        while not worker.done:
            pump(0.05)
        rows.append((f"training, {threads} thread(s)", widget.latency.summary(), time.time() - t0))
    print(f"{'case':<26}{'median ms':>10}{'p95 ms':>10}{'max ms':>10}{'ticks':>8}{'p95/idle':>10}{'train s':>9}")
    for name, stats, seconds in rows:
        ratio = stats["p95_ms"] / max(idle["p95_ms"], 1.0)
        print(f"{name:<26}{stats['median_ms']:>10.1f}{stats['p95_ms']:>10.1f}{stats['max_ms']:>10.1f}"
              f"{stats['n']:>8}{ratio:>10.1f}{seconds:>9.1f}")
    viewer.close()


if __name__ == "__main__":
    main()
