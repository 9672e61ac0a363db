"""Throughput of the one-pass COM / virtual-detector engine against two baselines.

For an in-memory float32 data set (≥ 1 GB by default) and for the same data on disk
(a ``.npy`` file, read through ``np.memmap`` and through a chunked dask array), prints
GB/s for:

- ``floor``: a plain ``numpy.sum`` over the same array — one read of every byte, the
  memory-bandwidth floor the engine is compared with;
- ``engine``: :func:`napari_4dstem_rvae.processing.reduce_masks` with the three COM masks
  (and with COM + bright field + annular dark field), single-threaded and with the
  default thread count;
- ``compute_com``: the whole call (disk detection, one pass, reference, rotation
  calibration);
- ``BLAS gemv engine``: the engine without its compiled (numba) loop: one BLAS
  matrix–vector product per mask over cache-sized runs of frames (its fallback);
- ``thin-gemm engine``: the engine as it was before its matrix–vector path (every mask
  group one thin BLAS gemm), single-threaded;
- ``per-pattern loop``: a straightforward per-pattern numpy COM (float64, one pattern at
  a time), timed on a subset of the frames;
- ``LiberTEM CoMUDF``: when LiberTEM is installed (an optional benchmark dependency, never a
  runtime one: ``pip install libertem``), its centre-of-mass UDF on the same array (a
  ``memory`` data set in memory, a ``npy`` data set on disk) with the inline executor (one
  thread, LiberTEM's own tiling) and with a ``threads`` executor of the engine's thread count.

Ratios are printed against the floor and the loop measured in the same run (these
machines are shared and noisy: every timing is the best of ``--repeat`` runs).

The on-disk file is freshly written, so it is read from the page cache, not from the
disk itself (dropping the cache needs root); the figures are the engine's cost of
reading through memmap/dask, not the disk's speed.

Usage::

    python benchmarks/bench_com.py                 # ~1.07 GB, 128×128 detector
    python benchmarks/bench_com.py --size-gb 2 --det 256 --repeat 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from napari_4dstem_rvae.processing import com_masks, compute_com, reduce_masks
from napari_4dstem_rvae.processing import engine as engine_module
from napari_4dstem_rvae.processing.drivers import default_threads
from napari_4dstem_rvae.processing.engine import MaskStack
from napari_4dstem_rvae.processing.virtual import (annular_dark_field, annulus_mask, build_mask_stack,
                                                   detector_geometry, disk_mask)


def best_time(function, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def make_data(scan: tuple[int, int], det: int, seed: int = 0) -> np.ndarray:
    """A float32 data set: a bright disk with random counts, made row by row."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices((det, det))
    disk = (np.hypot(yy - det / 2, xx - det / 2) < det / 6).astype(np.float32)
    base = 50 * disk + 1
    data = np.empty((*scan, det, det), dtype=np.float32)
    for i in range(scan[0]):
        data[i] = base * rng.random((scan[1], det, det), dtype=np.float32)
    return data


def com_loop(data: np.ndarray, n_frames: int) -> np.ndarray:
    """Per-pattern numpy COM of the first ``n_frames`` patterns (row-major), float64."""
    ny, nx, ky, kx = data.shape
    rows = np.arange(ky, dtype=np.float64)
    cols = np.arange(kx, dtype=np.float64)
    out = np.empty((n_frames, 3))
    for k in range(n_frames):
        pattern = data[k // nx, k % nx].astype(np.float64)
        total = pattern.sum()
        out[k] = total, pattern.sum(axis=1) @ rows / total, pattern.sum(axis=0) @ cols / total
    return out


def libertem_rows(array: np.ndarray, det: int, repeat: int, gb: float, threads: int) -> list[tuple[str, float]]:
    """GB/s of LiberTEM's CoMUDF on ``array`` (inline and threaded), or nothing without LiberTEM."""
    try:
        from libertem.api import Context
        from libertem.udf.com import CoMUDF
    except ImportError:
        print("(LiberTEM not installed: pip install libertem for its CoMUDF baseline)")
        return []
    rows = []
    path = getattr(array, "filename", None)
    for how, ctx in (("inline, 1 thread", Context.make_with("inline")),
                     (f"{threads} threads", Context.make_with("threads", cpus=threads))):
        try:
            if path is not None:   # a memmapped .npy: LiberTEM's own npy reader
                ds = ctx.load("npy", path=str(path), sig_dims=2)
            else:
                ds = ctx.load("memory", data=array, sig_dims=2)
            udf = CoMUDF.with_params(cy=det / 2, cx=det / 2)
            ctx.run_udf(dataset=ds, udf=udf)          # warm-up: numba compilation
            rows.append((f"LiberTEM CoMUDF, {how}", gb / best_time(lambda: ctx.run_udf(dataset=ds, udf=udf), repeat)))
        finally:
            ctx.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=1.07, help="data size in GB (default 1.07)")
    parser.add_argument("--det", type=int, default=128, help="detector side in pixels (default 128)")
    parser.add_argument("--repeat", type=int, default=3, help="timings per measurement (best kept)")
    parser.add_argument("--loop-frames", type=int, default=2048,
                        help="patterns timed in the per-pattern loop (default 2048)")
    parser.add_argument("--dir", default=None, help="folder for the on-disk file (default: temp)")
    parser.add_argument("--skip-disk", action="store_true", help="only the in-memory data set")
    parser.add_argument("--zarr", action="store_true",
                        help="also an uncompressed zarr store read through dask.array.from_zarr")
    args = parser.parse_args(argv)

    det = args.det
    frame_bytes = det * det * 4
    frames = int(np.ceil(args.size_gb * 1e9 / frame_bytes))
    nx = int(np.ceil(np.sqrt(frames)))
    ny = int(np.ceil(frames / nx))
    print(f"building float32 data {ny}×{nx} probe positions × {det}×{det} pixels ...", flush=True)
    data = make_data((ny, nx), det)
    gb = data.nbytes / 1e9
    threads = default_threads()
    print(f"data: {gb:.2f} GB; engine threads: {threads}; numpy {np.__version__}")

    center = (det / 2, det / 2)
    com_stack = com_masks(np.ones((det, det)), center)
    five = com_stack + MaskStack(("bf", "adf"), np.stack([
        disk_mask((det, det), center, det / 6), annulus_mask((det, det), center, det / 4)]))
    n_loop = min(args.loop_frames, ny * nx)
    loop_gb = n_loop * frame_bytes / 1e9

    def measure(label: str, array, lazy=None, floor_label="floor: numpy.sum") -> None:
        rows: list[tuple[str, float]] = []
        if floor_label.endswith("numpy.sum"):
            floor = gb / best_time(lambda: np.sum(array), args.repeat)
        else:  # zarr: the same chunks summed by dask (no numpy array to sum)
            floor = gb / best_time(lambda: lazy.sum().compute(), args.repeat)
        rows.append((floor_label, floor))
        loop = loop_gb / best_time(lambda: com_loop(array, n_loop), 1)
        where = "" if floor_label.endswith("numpy.sum") else ", on the memmap"
        rows.append((f"per-pattern numpy loop ({n_loop} patterns{where})", loop))
        target = array if lazy is None else lazy
        for name, stack in (("COM (3 masks)", com_stack), ("COM+BF+ADF (5 masks)", five)):
            if lazy is None:
                one = gb / best_time(lambda: reduce_masks(target, stack, n_threads=1), args.repeat)
                rows.append((f"engine {name}, 1 thread", one))
                # the engine without its compiled loop (the BLAS matrix-vector path, the fallback
                # without numba), and before that path (thin gemm only), in the same run
                compiled, engine_module.USE_COMPILED = engine_module.USE_COMPILED, False
                try:
                    blas = gb / best_time(lambda: reduce_masks(target, stack, n_threads=1), args.repeat)
                    saved, engine_module._GEMV_MASKS = engine_module._GEMV_MASKS, 0
                    try:
                        gemm = gb / best_time(lambda: reduce_masks(target, stack, n_threads=1), args.repeat)
                    finally:
                        engine_module._GEMV_MASKS = saved
                finally:
                    engine_module.USE_COMPILED = compiled
                rows.append((f"  (BLAS gemv engine {name}, 1 thread)", blas))
                rows.append((f"  (thin-gemm engine {name}, 1 thread)", gemm))
            many = gb / best_time(lambda: reduce_masks(target, stack), args.repeat)
            how = "dask threads" if lazy is not None else f"{threads} threads"
            rows.append((f"engine {name}, {how}", many))
        if lazy is None:
            rows += libertem_rows(array, det, args.repeat, gb, threads)
        # compute_com's own pass: the COM masks and the ADF it reads the rotation's sign from
        # (the total less the disk the ADF leaves out, that disk summed over its own rows)
        adf = build_mask_stack({"adf": annular_dark_field()}, (det, det), detector_geometry(array)).masks[0]
        own = com_stack + MaskStack(("adf_hole",), (1 - adf)[None])
        same = gb / best_time(lambda: reduce_masks(target, own), args.repeat)
        rows.append((f"engine COM + ADF (compute_com's 4 masks), {how}", same))
        # compute_com against the engine's three-mask pass, run by turns (pairs) so that both
        # see the same moments of this shared machine: the best of each, and the median of the
        # pairs' ratios
        pairs = []
        for _ in range(max(args.repeat, 7)):
            start = time.perf_counter()
            reduce_masks(target, com_stack)
            middle = time.perf_counter()
            compute_com(target)
            pairs.append((middle - start, time.perf_counter() - middle))
        whole = gb / min(c for _, c in pairs)
        rows.append(("compute_com (detect disk + pass + rotation)", whole))
        engine_default = gb / min(e for e, _ in pairs)
        paired = float(np.median([e / c for e, c in pairs]))
        print(f"\n== {label} ({gb:.2f} GB float32) ==")
        print(f"{'':52s} {'GB/s':>7s} {'/floor':>7s} {'/loop':>7s}")
        for name, rate in rows:
            print(f"{name:52s} {rate:7.2f} {rate / floor:7.2f} {rate / loop:7.1f}")
        # Sanity: the engine agrees with the loop.
        check = reduce_masks(target, com_stack)
        ref = com_loop(array, min(n_loop, 64))
        k = np.arange(len(ref))
        total = check["com_total"].reshape(-1)[k]
        err = np.max(np.abs(check["com_y"].reshape(-1)[k] / total + center[0] - ref[:, 1]))
        print(f"max |COM engine − COM loop| over {len(ref)} patterns: {err:.2e} px")
        print(f"compute_com end to end / the engine's pass (3 masks, {how}), run by turns: best {whole / engine_default:.2f}, "
              f"median of {len(pairs)} pairs {paired:.2f}; / the same pass as compute_com's (COM + ADF): {whole / same:.2f}")
        libertem = [rate for name, rate in rows if name.startswith("LiberTEM")]
        if libertem:
            best = max(libertem)
            print("engine / LiberTEM CoMUDF (the faster of each): COM "
                  f"{max(r for n, r in rows if n.startswith('engine COM (3')) / best:.2f}, COM+BF+ADF "
                  f"{max(r for n, r in rows if n.startswith('engine COM+BF')) / best:.2f}")

    # Warm up: imports, kernel compilation and first-call costs are not throughput.
    compute_com(data[:2, :4])
    reduce_masks(data[:1, :8], five)
    measure("in memory (numpy)", data)
    if not args.skip_disk:
        import dask.array as da

        from napari_4dstem_rvae.dataset import default_chunks

        folder = tempfile.mkdtemp(dir=args.dir, prefix="bench_com_")
        try:
            path = os.path.join(folder, "data.npy")
            start = time.perf_counter()
            np.save(path, data)
            print(f"\nwrote {path} in {time.perf_counter() - start:.1f} s (read back from the page cache)")
            del data
            mapped = np.load(path, mmap_mode="r")
            measure("on disk: np.memmap (numpy path)", mapped)
            chunks = default_chunks(mapped.shape, mapped.dtype)
            lazy = da.from_array(mapped, chunks=chunks)
            print(f"\ndask chunks {chunks} ({np.prod(chunks) * 4 / 2**20:.0f} MiB)")
            measure("on disk: chunked dask array over the memmap", mapped, lazy=lazy)
            if args.zarr:
                import zarr

                store = os.path.join(folder, "data.zarr")
                start = time.perf_counter()
                target = zarr.create_array(store, shape=mapped.shape, chunks=chunks,
                                           dtype=mapped.dtype, compressors=None)
                for i in range(0, mapped.shape[0], chunks[0]):
                    target[i:i + chunks[0]] = mapped[i:i + chunks[0]]
                print(f"\nwrote {store} (uncompressed, chunks {chunks}) in "
                      f"{time.perf_counter() - start:.1f} s")
                from_zarr = da.from_zarr(store)
                measure("on disk: zarr read by dask", mapped, lazy=from_zarr,
                        floor_label="floor: dask sum of the zarr chunks")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
