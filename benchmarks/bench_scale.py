"""A scan larger than a worker's memory, end to end on a local dask cluster.

    python benchmarks/bench_scale.py [--size-gb 4] [--worker-memory-gb 1] [--det 128] [--epochs 2]

Writes a synthetic scan to a temporary ``.npy`` file (uint16 counts: a bright-field disk whose
position follows a smooth field, Poisson noise; ``--size-gb`` on disk, by default 4 × the
memory limit of one worker), then, for a cluster of 1 and of 2 worker processes (one thread
each, ``--worker-memory-gb`` memory limit each):

- the COM pass on the cluster (``compute_com(ds, client=...)``), on fresh workers and again
  on the same workers,
- the encoding of every pattern (detector binned to 64 × 64 by the workers as they read)
  with one model trained once in this process on a subsample of ~4,000 patterns (every
  n-th scan row, ``--epochs`` epochs; training is not distributed yet),

and prints patterns per second per stage, the share of time in each stage, the peak
resident memory of every worker process (which must stay under its limit), and the
encoding throughput of a single-process loop (:func:`rvae.encode`) in the same run.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time

import numpy as np


def write_scan(path: str, size_gb: float, det: int, seed: int = 0) -> tuple[int, int]:
    frames = int(size_gb * 1e9 / (det * det * 2))
    side = int(math.sqrt(frames))
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=(side, side, det, det))
    yy, xx = np.mgrid[:det, :det]
    for row in range(side):
        t = row / side * 2 * np.pi
        cols = np.arange(side) / side * 2 * np.pi
        dy = 3 * np.sin(t) * np.cos(cols)
        dx = 3 * np.cos(2 * t) * np.sin(cols)
        r2 = (yy[None] - det / 2 - dy[:, None, None]) ** 2 + (xx[None] - det / 2 - dx[:, None, None]) ** 2
        lam = np.where(r2 < (det / 6) ** 2, 20.0, 0.3)
        out[row] = rng.poisson(lam).astype(np.uint16)
    out.flush()
    del out
    return side, side


def worker_peaks(client) -> list[float]:
    def peak() -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
        return float("nan")

    return sorted(client.run(peak).values())


def main(argv=None) -> int:
    from distributed import Client, LocalCluster

    from napari_4dstem_rvae import read
    from napari_4dstem_rvae.processing import compute_com
    from napari_4dstem_rvae.processing.chain import detector_bin_factor, preprocess, prepare_for_rvae
    from napari_4dstem_rvae.rvae import encode, fit
    from napari_4dstem_rvae.rvae.distributed import encode_on_cluster

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=4.0)
    parser.add_argument("--worker-memory-gb", type=float, default=1.0)
    parser.add_argument("--det", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args(argv)

    folder = tempfile.mkdtemp(dir=args.dir, prefix="bench_scale_")
    try:
        path = os.path.join(folder, "scan.npy")
        t0 = time.perf_counter()
        shape = write_scan(path, args.size_gb, args.det)
        size = os.path.getsize(path) / 1e9
        n = shape[0] * shape[1]
        print(f"scan {shape[0]}×{shape[1]} × {args.det}² uint16 = {size:.2f} GB written in "
              f"{time.perf_counter() - t0:.0f} s; worker memory limit {args.worker_memory_gb:g} GB "
              f"({size / args.worker_memory_gb:.1f}× one worker's budget)", flush=True)
        ds = read(path)
        factor = detector_bin_factor(ds.det_shape, 64)
        lazy = preprocess(ds, bin_detector=factor)
        # the model: trained once, in this process, on a subsample of scan rows (streamed)
        t0 = time.perf_counter()
        rows = max(1, int(4000 / shape[1]))
        step = max(1, shape[0] // rows)
        sample = prepare_for_rvae(ds.__class__(ds.data[::step], ds.calibration, source=ds.source), 64)
        result = fit(sample, epochs=args.epochs, threads=2, seed=0)
        train_s = time.perf_counter() - t0
        print(f"training on {sample.scan_shape[0] * sample.scan_shape[1]} patterns ({args.epochs} epochs): "
              f"{train_s:.0f} s (one process)", flush=True)
        model = result.model
        t0 = time.perf_counter()
        loop_rows = max(1, 4096 // shape[1])
        encode(model, lazy.data[:loop_rows])
        loop_rate = loop_rows * shape[1] / (time.perf_counter() - t0)
        print(f"single-process encode loop: {loop_rate:.0f} patterns/s (on {loop_rows} scan rows)", flush=True)
        limit = f"{args.worker_memory_gb}GB"
        for workers in (1, 2):
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit=limit,
                              dashboard_address=None) as cluster, Client(cluster) as client:
                t0 = time.perf_counter()
                compute_com(ds, client=client)  # fresh workers: imports, compiled loops from the cache
                com_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                compute_com(ds, client=client)  # the same pass on workers that have run one
                warm_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                maps = encode_on_cluster(model, lazy, client, novelty=False)
                enc_s = time.perf_counter() - t0
                peaks = worker_peaks(client)
            assert np.isfinite(maps.angle).all()
            total = com_s + enc_s + train_s
            print(f"\n{workers} worker(s): COM {n / com_s:,.0f} patterns/s ({size / com_s:.2f} GB/s; again on the "
                  f"same workers {n / warm_s:,.0f} patterns/s, {size / warm_s:.2f} GB/s), encoding "
                  f"{n / enc_s:,.0f} patterns/s ({n / enc_s / loop_rate:.2f}× the single-process loop); "
                  f"time shares: COM {com_s / total:.0%}, training {train_s / total:.0%}, encoding "
                  f"{enc_s / total:.0%}; peak RSS per worker {', '.join(f'{p:.2f}' for p in peaks)} GB "
                  f"(limit {args.worker_memory_gb:g} GB; peaks of the processes alive at the end — the scheduler's log "
                  f"names any worker restarted for exceeding its limit)", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
