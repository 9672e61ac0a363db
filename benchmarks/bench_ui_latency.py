"""Event-loop latency of napari while the rVAE trains in the background, through the docked
analysis widget opened from the Plugins menu (run under Xvfb):

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python benchmarks/bench_ui_latency.py [--epochs 30]

A 50 ms QTimer measures how late each tick fires in napari's real event loop: first idle
(baseline, same process), then while the Train tab trains on the simulated graphene
(latent–COM correlation every epoch, maps every 5 epochs, the live plot) with 1 and 2 torch
threads. Prints median / 95th percentile / max extra delay in ms and the ratio to idle.
The goal: p95 < 50 ms with the GUI's default of 1 training thread.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--maps-every", type=int, default=5)
    args = parser.parse_args()

    import napari
    from qtpy.QtCore import QEventLoop, QTimer

    from napari_4dstem_rvae._napari.plots import LatencyProbe

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.showMaximized()
    adf = viewer.open_sample("napari-4dstem-rvae", "graphene_vacancy")[0]
    _, dock = viewer.window.add_plugin_dock_widget("napari-4dstem-rvae", "4D-STEM analysis")
    dock.show_tab("Train")
    widget = dock.train
    widget.layer.value = adf.name
    widget.correlate.value = True
    widget.maps_every.value = args.maps_every

    def run_loop(seconds: float | None = None, until=None) -> None:
        loop = QEventLoop()
        if seconds is not None:
            QTimer.singleShot(int(seconds * 1000), loop.quit)
        if until is not None:
            until.connect(loop.quit)
        loop.exec()

    probe = LatencyProbe()
    probe.start()
    run_loop(5.0)
    probe.stop()
    idle = probe.summary()
    rows = [("idle", idle, 0.0)]
    for threads in (1, 2):
        widget.threads.value = threads
        widget.epochs.value = args.epochs
        t0 = time.time()
        widget.start_button.native.click()
        worker = widget.worker
        if not worker.done:
            run_loop(until=worker.finished)
        run_loop(0.2)
        rows.append((f"training, {threads} thread(s)", widget.latency.summary(), time.time() - t0))
    print(f"{'case':<26}{'median ms':>10}{'p95 ms':>10}{'max ms':>10}{'ticks':>8}{'p95/idle':>10}{'train s':>9}")
    for name, stats, seconds in rows:
        ratio = stats["p95_ms"] / max(idle["p95_ms"], 1.0)
        print(f"{name:<26}{stats['median_ms']:>10.1f}{stats['p95_ms']:>10.1f}{stats['max_ms']:>10.1f}"
              f"{stats['n']:>8}{ratio:>10.1f}{seconds:>9.1f}")
    viewer.close()


if __name__ == "__main__":
    main()
