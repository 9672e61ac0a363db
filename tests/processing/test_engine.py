"""The one-pass engine and virtual detectors: explicit masked sums, numpy = dask =
dask.distributed, bounded memory on data larger than a limit, bad input."""

from __future__ import annotations

import math
import os
import tracemalloc

import numpy as np
import pytest

from napari_4dstem_rvae.dataset import Calibration, Dataset4D
from napari_4dstem_rvae.processing import (
    MaskStack,
    annular_dark_field,
    annulus,
    bright_field,
    compute_com,
    detector_geometry,
    disk,
    find_disk,
    reduce_masks,
    virtual_images,
)
from napari_4dstem_rvae.processing.drivers import reduce_frames as _reduce_frames
from napari_4dstem_rvae.processing.engine import _make_plan


def disk_data(scan_shape=(6, 7), det_shape=(32, 36), center=(15.2, 17.6), radius=7.0, seed=0,
              dtype=np.float32):
    """Random patterns: a bright disk plus dim random dark-field counts."""
    rng = np.random.default_rng(seed)
    r = np.hypot(*(np.indices(det_shape) - np.array(center)[:, None, None]))
    base = np.where(r <= radius, 100.0, 2.0)
    noise = rng.random((*scan_shape, *det_shape))
    return (base * (0.5 + noise)).astype(dtype)


def test_reduce_masks_equals_explicit_masked_sums():
    rng = np.random.default_rng(1)
    data = rng.random((5, 6, 20, 24)).astype(np.float32)
    masks = {"a": rng.random((20, 24)), "b": (rng.random((20, 24)) > 0.5).astype(float),
             "c": -rng.random((20, 24)), "d": np.ones((20, 24)), "e": rng.random((20, 24))}
    result = reduce_masks(data, masks)
    for name, mask in masks.items():
        expected = np.einsum("ijkl,kl->ij", data.astype(np.float64), mask)
        np.testing.assert_allclose(result[name], expected, rtol=2e-6)
        assert result[name].dtype == np.float64


def test_identical_masks_are_reduced_once(monkeypatch):
    from napari_4dstem_rvae.processing import engine

    rng = np.random.default_rng(2)
    data = rng.random((4, 5, 12, 14)).astype(np.float32)
    a, b = rng.random((12, 14)), rng.random((12, 14))
    planned = []
    make_plan = engine._make_plan
    monkeypatch.setattr(engine, "_make_plan", lambda masks, *args: planned.append(len(masks)) or make_plan(masks, *args))
    result = reduce_masks(data, {"a": a, "ones": np.ones((12, 14)), "b": b, "a_again": a.copy(),
                                 "sum": np.ones((12, 14))})
    assert planned == [3]  # a, ones, b: the copies are not read again
    for name, mask in {"a": a, "ones": 1.0, "b": b, "a_again": a, "sum": 1.0}.items():
        expected = np.einsum("ijkl,kl->ij", data.astype(np.float64), np.broadcast_to(mask, (12, 14)))
        np.testing.assert_allclose(result[name], expected, rtol=2e-6)
    np.testing.assert_array_equal(result["sum"], result["ones"])


def test_kernel_pixel_blocks_and_mask_groups():
    """Large detectors are summed in float64 over pixel blocks; masks in groups of ≤ 4."""
    rng = np.random.default_rng(2)
    frames = rng.random((3, 300 * 300)).astype(np.float32)  # > 65 536 pixels: 2 blocks
    masks = rng.random((6, 300, 300))
    plan = _make_plan(masks, np.dtype(np.float32), None)
    assert len(plan.pixel_blocks) == 2 and [g.shape[1] for g in plan.mask_groups] == [4, 2]
    out = np.empty((3, 6))
    _reduce_frames(frames, plan, out)
    np.testing.assert_allclose(out, frames.astype(np.float64) @ masks.reshape(6, -1).T, rtol=1e-6)


def test_virtual_detectors_equal_explicit_masked_sums():
    data = disk_data()
    center, radius = (15.2, 17.6), 7.0
    geometry = detector_geometry(data)
    assert abs(geometry.center[0] - center[0]) < 0.3 and abs(geometry.center[1] - center[1]) < 0.3
    assert abs(geometry.radius - radius) < 0.5
    images = virtual_images(data, {"bf": bright_field(radius, center=center),
                                   "adf": annular_dark_field(9.0, 14.0, center=center),
                                   "ring": annulus(1.5, 2.0, unit="bf", center=center)})
    r = np.hypot(*(np.indices((32, 36)) - np.array(center)[:, None, None]))
    d64 = data.astype(np.float64)
    np.testing.assert_allclose(images["bf"], d64[..., r <= radius].sum(-1), rtol=1e-6)
    np.testing.assert_allclose(images["adf"], d64[..., (r >= 9) & (r < 14)].sum(-1), rtol=1e-6)
    ring = (r >= 1.5 * geometry.radius) & (r < 2.0 * geometry.radius)
    np.testing.assert_allclose(images["ring"], d64[..., ring].sum(-1), rtol=1e-6)


def test_virtual_detectors_in_mrad_and_default_centre():
    data = disk_data(det_shape=(32, 32), center=(16.0, 16.0))
    ds = Dataset4D(data, Calibration(det_pixel_size=2.0, det_unit="mrad"))
    images = virtual_images(ds, {"bf": disk(10.0, "mrad"), "adf": annulus(20.0, 28.0, "mrad")})
    geometry = detector_geometry(data)
    r = np.hypot(*(np.indices((32, 32)) - np.array(geometry.center)[:, None, None]))
    np.testing.assert_allclose(images["bf"], data.astype(np.float64)[..., r <= 5].sum(-1), rtol=1e-6)
    np.testing.assert_allclose(images["adf"], data.astype(np.float64)[..., (r >= 10) & (r < 14)].sum(-1),
                               rtol=1e-6)
    # 1/Å calibration converts through the wavelength (θ = λ q).
    lam = Calibration(energy_kev=60.0).wavelength_angstrom
    ds_q = Dataset4D(data, Calibration(det_pixel_size=2.0e-3 / lam, det_unit="1/Å", energy_kev=60.0))
    np.testing.assert_allclose(virtual_images(ds_q, {"bf": disk(10.0, "mrad")})["bf"], images["bf"],
                               rtol=1e-6)
    # Defaults: BF = the disk, ADF = beyond 1.25 × its radius.
    defaults = virtual_images(data)
    assert set(defaults) == {"bf", "adf"}


def test_find_disk_subpixel_and_hot_pixel_robust():
    yy, xx = np.indices((64, 64))
    pattern = np.clip(12.0 - np.hypot(yy - 30.3, xx - 33.8) + 0.5, 0, 1) * 50
    pattern[2, 2] = 1e6  # a hot pixel
    found = find_disk(pattern)
    assert abs(found.center[0] - 30.3) < 0.05 and abs(found.center[1] - 33.8) < 0.05
    assert abs(found.radius - 12.0) < 0.1


# -- numpy, dask, distributed ----------------------------------------------------------------
def test_same_results_numpy_dask_and_threads():
    import dask.array as da

    data = disk_data(scan_shape=(9, 10), dtype=np.float64)
    stack = MaskStack.from_dict({"bf": np.ones((32, 36)), "w": np.arange(32 * 36).reshape(32, 36) / 100})
    expected = reduce_masks(data, stack, n_threads=1)
    threaded = reduce_masks(data, stack, n_threads=3)
    # Odd chunks, split detector axes (rechunked internally).
    lazy = da.from_array(data, chunks=(4, 3, 16, 36))
    from_dask = reduce_masks(lazy, stack)
    for name in stack.names:
        np.testing.assert_allclose(threaded[name], expected[name], rtol=1e-12)
        np.testing.assert_allclose(from_dask[name], expected[name], rtol=1e-12)
    com_np = compute_com(data)
    com_dask = compute_com(Dataset4D(lazy))
    for key in ("x", "y", "divergence", "curl", "intensity"):
        np.testing.assert_allclose(getattr(com_dask, key), getattr(com_np, key), rtol=1e-9, atol=1e-12)
    assert com_dask.rotation_deg == pytest.approx(com_np.rotation_deg, abs=1e-9)
    # float32 data: float32 products, equal to float32 rounding (BLAS kernels differ by chunk).
    data32 = data.astype(np.float32)
    com32 = compute_com(Dataset4D(da.from_array(data32, chunks=(2, 5, 32, 36))))
    np.testing.assert_allclose(com32.x, com_np.x, atol=1e-4)
    np.testing.assert_allclose(com32.intensity, com_np.intensity, rtol=1e-6)


@pytest.mark.parametrize("processes", [False, True])
def test_same_results_on_a_distributed_cluster(processes):
    import dask.array as da
    from distributed import Client, LocalCluster

    data = disk_data(scan_shape=(8, 6), dtype=np.float64)
    expected = compute_com(data, detectors={"bf": bright_field()})
    lazy = Dataset4D(da.from_array(data, chunks=(3, 6, 32, 36)))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=processes,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        result = compute_com(lazy, client=client, detectors={"bf": bright_field()})
        # A scheduler address works too (a client is opened and closed for the call).
        images = virtual_images(data, {"bf": bright_field()}, client=cluster.scheduler_address)
    for key in ("x", "y", "divergence", "curl", "intensity"):
        np.testing.assert_allclose(getattr(result, key), getattr(expected, key), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(result.virtual["bf"], expected.virtual["bf"], rtol=1e-12)
    np.testing.assert_allclose(images["bf"], expected.virtual["bf"], rtol=1e-12)


def _random_block(block_info=None):
    """One chunk of a lazy random data set, generated from its position (never stored)."""
    info = block_info[None]
    (r0, r1), (c0, c1) = info["array-location"][:2]
    rng = np.random.default_rng(r0 * 100_003 + c0)
    return rng.random((r1 - r0, c1 - c0, *info["chunk-shape"][2:]), dtype=np.float32)


def test_larger_than_memory_limit_with_bounded_memory():
    import dask
    import dask.array as da

    shape, chunks = (128, 128, 64, 64), (4, 128, 64, 64)  # 256 MiB, chunks of 8 MiB
    lazy = da.map_blocks(_random_block, dtype=np.float32, chunks=tuple(
        (c,) * (s // c) for s, c in zip(shape, chunks)))
    nbytes = int(np.prod(shape)) * 4
    limit = 64 * 2**20
    assert nbytes >= 4 * limit
    # Warm up (imports allocate memory that tracemalloc would count).
    compute_com(Dataset4D(lazy[:4, :8]), center=(31.5, 31.5), reference=None, rotation=0.0,
                detectors={"adf": annulus(20, 40)})
    tracemalloc.start()
    try:
        with dask.config.set(scheduler="threads", num_workers=2):
            result = compute_com(Dataset4D(lazy), center=(31.5, 31.5), reference=None,
                                 rotation=0.0, detectors={"adf": annulus(20, 40)})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"peak traced memory {peak / 2**20:.1f} MiB for {nbytes / 2**20:.0f} MiB of data")
    assert peak < limit, f"peak {peak / 2**20:.0f} MiB for a {nbytes / 2**20:.0f} MiB array"
    # Spot-check against the same chunk regenerated and reduced directly.
    first = _random_block({None: {"array-location": [(4, 8), (0, 128)], "chunk-shape": chunks}})
    total = first.astype(np.float64).sum(axis=(2, 3))
    rows = (first.astype(np.float64).sum(axis=3) * (np.arange(64) - 31.5)).sum(axis=2) / total
    np.testing.assert_allclose(result.y[4:8], rows, atol=1e-5)  # px; float32 products
    np.testing.assert_allclose(result.intensity[4:8], total, rtol=1e-6)


def test_memmap_input(tmp_path):
    data = disk_data(scan_shape=(5, 4))
    np.save(tmp_path / "d.npy", data)
    mapped = np.load(tmp_path / "d.npy", mmap_mode="r")
    images = virtual_images(mapped, {"bf": bright_field(7.0, center=(15.2, 17.6))})
    expected = virtual_images(data, {"bf": bright_field(7.0, center=(15.2, 17.6))})
    np.testing.assert_allclose(images["bf"], expected["bf"], rtol=1e-6)


# -- bad input -----------------------------------------------------------------------------
def test_engine_and_detector_errors():
    data = disk_data(scan_shape=(3, 3))
    before = data.copy()
    with pytest.raises(ValueError, match="detector shape"):
        reduce_masks(data, {"m": np.ones((4, 4))})
    with pytest.raises(ValueError, match=r"'adf'.*inner radius 50 px.*outside the detector.*expected inner"):
        virtual_images(data, {"adf": annulus(50, 60)})
    with pytest.raises(ValueError, match=r"'far'.*contains no detector pixel"):
        virtual_images(data, {"far": disk(2.0, center=(100.0, 100.0))})
    with pytest.raises(ValueError, match="'empty'.*excludes every detector pixel"):
        virtual_images(data, {"empty": np.zeros((32, 36))})
    with pytest.raises(ValueError, match="inner radius.*smaller than the outer"):
        annulus(5.0, 3.0)
    with pytest.raises(ValueError, match=r"20.0 mrad needs an angular detector calibration"):
        virtual_images(data, {"adf": annulus(20.0, 30.0, "mrad")})
    with pytest.raises(ValueError, match="unit"):
        disk(3.0, unit="nm")
    with pytest.raises(ValueError, match="n_threads"):
        reduce_masks(data, {"m": np.ones((32, 36))}, n_threads=0)
    bad = data.copy()
    bad[2, 1, 15, 16] = np.nan                          # inside the bright-field disk
    with pytest.warns(UserWarning, match=r"NaN or Inf pixels, at scan positions \(2, 1\)"):
        marked = virtual_images(bad, {"bf": bright_field(7.0, center=(15.0, 17.0))})["bf"]
    assert np.isnan(marked[2, 1]) and np.isfinite(np.delete(marked.ravel(), 2 * marked.shape[1] + 1)).all()
    outside = data.copy()
    outside[2, 1, 1, 1] = np.nan                        # where the disk's rows are not read
    clean = virtual_images(data, {"bf": bright_field(7.0, center=(15.0, 17.0))})["bf"]
    np.testing.assert_array_equal(virtual_images(outside, {"bf": bright_field(7.0, center=(15.0, 17.0))})["bf"], clean)
    with pytest.raises(ValueError, match=r"NaN or Inf pixels.*scan position \(2, 1\)"):
        reduce_masks(bad, {"bf": np.ones((32, 36))})  # the engine's default: refuse
    with pytest.raises(ValueError, match="uniform"):
        find_disk(np.ones((8, 8)))
    np.testing.assert_array_equal(data, before)
    assert math.isfinite(float(data.sum()))


@pytest.mark.parametrize("dtype", [np.float32, np.uint16, np.uint8, np.float16])
def test_compiled_loop_equals_float64_sums_for_every_mask_count(dtype, monkeypatch):
    """The numba loop (tiles of 4 or 2 frames × k masks) against float64 sums and the BLAS
    path, for 1–8 masks, a frame count that is not a multiple of the tile, integer input read
    as it is, and a cropped (non-contiguous) view."""
    from napari_4dstem_rvae.processing import engine

    rng = np.random.default_rng(1)
    data = (rng.random((5, 7, 24, 20)) * 200).astype(dtype)        # 35 frames: not a multiple of 4
    view = data[:, 1:6]                                              # a crop: not contiguous
    for k in range(1, 9):
        masks = rng.normal(size=(k, 24, 20))
        plan = _make_plan(masks, np.dtype(np.float32), None)
        assert plan.kernel is not None                               # the compiled loop is the one used
        for array in (data, view):
            want = np.einsum("yxij,kij->yxk", array.astype(np.float64), masks)
            got = reduce_masks(array, MaskStack(tuple(f"m{j}" for j in range(k)), masks))
            scale = np.abs(want).max()
            for j in range(k):
                np.testing.assert_allclose(got[f"m{j}"], want[..., j], atol=2e-6 * scale)
            monkeypatch.setattr(engine, "USE_COMPILED", False)       # the fallback gives the same sums
            blas = reduce_masks(array, MaskStack(tuple(f"m{j}" for j in range(k)), masks))
            monkeypatch.setattr(engine, "USE_COMPILED", True)
            for j in range(k):
                np.testing.assert_allclose(got[f"m{j}"], blas[f"m{j}"], atol=2e-6 * scale)
    # with a threshold the loop multiplies the thresholded float32 frames
    masks = rng.normal(size=(3, 24, 20))
    got = reduce_masks(data, MaskStack(("a", "b", "c"), masks), threshold=0.5)
    frames = data.astype(np.float64)
    kept = np.where(frames >= 0.5 * frames.max(axis=(2, 3), keepdims=True), frames, 0)
    np.testing.assert_allclose(got["b"], np.einsum("yxij,ij->yx", kept, masks[1]),
                               atol=2e-6 * np.abs(got["b"]).max())


def test_short_masks_equal_float64_sums(monkeypatch):
    """Masks whose non-zero pixels lie in at most half the detector's rows are multiplied over
    their own run of pixels alone (a disk, a corner, one pixel, an all-zero mask), alone and
    next to whole-detector masks: the sums equal the BLAS path's and float64 sums, and the
    layout multiplies them over their run only."""
    from napari_4dstem_rvae.processing import engine
    from napari_4dstem_rvae.processing.kernels import kernel_layout

    rng = np.random.default_rng(3)
    data = (rng.random((5, 7, 24, 20)) * 200).astype(np.uint16)
    view = data[:, 1:6]
    yy, xx = np.indices((24, 20))
    inside = np.hypot(yy - 11.3, xx - 9.6) < 5
    short = {"disk": inside * 1.0, "disk_y": inside * yy, "corner": ((yy < 5) & (xx >= 14)) * rng.random((24, 20)),
             "pixel": (yy == 23) & (xx == 19), "zero": np.zeros((24, 20))}
    whole = {"ones": np.ones((24, 20)), "noise": rng.normal(size=(24, 20)), "ring": ~inside * 1.0}
    runs = {"disk": 9 * 20 + 4, "disk_y": 9 * 20 + 4, "corner": 4 * 20 + 6, "pixel": 1, "zero": 0}
    for chosen in ([*short], ["ones", "disk", "noise", "disk_y"], ["ring", "corner", "pixel", "zero", "ones"],
                   ["disk"], ["ones", "noise", "ring", "disk", "disk_y", "corner", "pixel", "zero"]):
        weights = {**short, **whole}
        stack = MaskStack(tuple(chosen), np.stack([np.asarray(weights[n], float) for n in chosen]))
        (k, pieces), bounds = kernel_layout(stack.masks)
        for j, name in enumerate(chosen):   # pixels each mask is multiplied over
            covered = sum(int(b - a) for (a, b), masks in zip(bounds, pieces) if j in masks)
            assert covered == runs.get(name, 24 * 20), name
        for array in (data, view):
            got = reduce_masks(array, stack)
            monkeypatch.setattr(engine, "USE_COMPILED", False)
            blas = reduce_masks(array, stack)
            monkeypatch.setattr(engine, "USE_COMPILED", True)
            for j, name in enumerate(chosen):
                want = np.einsum("yxij,ij->yx", array.astype(np.float64), stack.masks[j])
                scale = max(np.abs(want).max(), 1.0)
                np.testing.assert_allclose(got[name], want, atol=2e-6 * scale, err_msg=name)
                np.testing.assert_allclose(got[name], blas[name], atol=2e-6 * scale, err_msg=name)
    assert np.all(reduce_masks(data, {"zero": np.zeros((24, 20))})["zero"] == 0)


def test_plan_token_follows_the_masks_and_pickles_without_its_compiled_loop():
    """dask names tasks by the plan's token: equal masks give equal tokens, other masks or a
    threshold another; a plan sent to a worker arrives with a working loop."""
    import pickle

    from dask.base import tokenize

    rng = np.random.default_rng(0)
    masks = rng.normal(size=(3, 16, 16))
    plan = _make_plan(masks, np.dtype(np.float32), None)
    assert tokenize(plan) == tokenize(_make_plan(masks.copy(), np.dtype(np.float32), None))
    other = masks.copy()
    other[1, 3, 4] += 1.0
    assert tokenize(plan) != tokenize(_make_plan(other, np.dtype(np.float32), None))
    assert tokenize(plan) != tokenize(_make_plan(masks, np.dtype(np.float32), 0.5))
    assert tokenize(plan) != tokenize(_make_plan(masks, np.dtype(np.float64), None))
    copy = pickle.loads(pickle.dumps(plan))
    assert copy.kernel is not None
    frames = rng.random((9, 256)).astype(np.float32)
    a, b = np.empty((9, 3)), np.empty((9, 3))
    _reduce_frames(frames, plan, a)
    _reduce_frames(frames, copy, b)
    np.testing.assert_array_equal(a, b)


def test_compiled_loops_are_cached_on_disk_for_the_next_process(tmp_path):
    """The generated loop is a file in the cache directory and numba keeps its machine code
    there: a second process loads it instead of compiling (numba's own cache statistics), with
    the same sums. Without a writable cache directory the loop is compiled in memory."""
    import json
    import subprocess
    import sys

    script = (
        "import json, numpy as np\n"
        "from napari_4dstem_rvae.processing import reduce_masks\n"
        "from napari_4dstem_rvae.processing.kernels import compiled_kernel, kernel_layout\n"
        "rng = np.random.default_rng(0)\n"
        "data = (rng.random((3, 5, 16, 16)) * 90).astype(np.uint16)\n"
        "masks = np.stack([np.ones((16, 16)), np.indices((16, 16))[0], np.eye(16)])\n"
        "sums = reduce_masks(data, {'a': masks[0], 'b': masks[1], 'c': masks[2]})\n"
        "run = compiled_kernel(kernel_layout(masks)[0])\n"
        "print(json.dumps({'hits': len(run.stats.cache_hits), 'misses': len(run.stats.cache_misses),\n"
        "                  'b': sums['b'].tolist()}))\n"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("NUMBA_CACHE_DIR", None)
    runs = [json.loads(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                      check=True).stdout.splitlines()[-1]) for _ in range(2)]
    assert runs[0]["hits"] == 0 and runs[0]["misses"] >= 1          # the first process compiles
    assert runs[1]["hits"] >= 1 and runs[1]["misses"] == 0          # the next one loads it
    assert runs[0]["b"] == runs[1]["b"]
    folder = tmp_path / "cache" / "napari-4dstem-rvae" / "kernels"
    assert list(folder.glob("engine_kernel_*.py")) and list(folder.glob("__pycache__/*.nbc"))
    # a damaged cached source is written again, not run
    for path in folder.glob("engine_kernel_*.py"):
        path.write_text("raise SystemExit('damaged')\n")
    again = json.loads(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                      check=True).stdout.splitlines()[-1])
    assert again["b"] == runs[0]["b"]
    # no writable cache: compiled in memory, the same sums
    (tmp_path / "file").write_text("not a folder")
    env["XDG_CACHE_HOME"] = str(tmp_path / "file")
    third = json.loads(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                      check=True).stdout.splitlines()[-1])
    assert third["b"] == runs[0]["b"] and third["hits"] == 0


def test_sample_of_a_mapped_file_is_read_without_dask(tmp_path):
    """The disk is found from a sample of patterns: under a dask array that only wraps an
    array or a mapped file (the .npy reader), the sample is sliced from it directly (no dask
    compute), with the same mean as numpy and as a dask array that must be computed."""
    import dask.array as da
    from dask.callbacks import Callback

    from napari_4dstem_rvae.io import read
    from napari_4dstem_rvae.processing.sampling import sample_mean_pattern

    data = disk_data(scan_shape=(20, 23))
    np.save(tmp_path / "scan.npy", data)
    opened = read(tmp_path / "scan.npy").data
    computed = []

    class Count(Callback):
        def _start(self, dsk):
            computed.append(len(dsk))

    expected = sample_mean_pattern(data)
    with Count():
        for lazy in (opened, da.from_array(np.load(tmp_path / "scan.npy", mmap_mode="r"), chunks=(4, 5, 32, 36))):
            np.testing.assert_array_equal(sample_mean_pattern(lazy), expected)
        assert computed == []                                    # sliced from the file itself
        np.testing.assert_allclose(sample_mean_pattern(opened * 1), expected, rtol=1e-6)
        assert computed                                          # a computed array goes through dask
    assert detector_geometry(opened) == detector_geometry(data)


def test_sample_reads_any_source_offering_read_direct():
    """The direct read is a protocol, not a reader's class: under ``dask.array.from_array`` of
    any frame source with ``read_direct`` (and the dask array's shape and type) the sample is
    read through that method, without a dask compute; a source without it, or a part of it,
    is sampled through dask, with the same mean."""
    import dask.array as da
    from dask.callbacks import Callback

    from napari_4dstem_rvae.processing.sampling import sample_mean_pattern

    data = disk_data(scan_shape=(12, 9), dtype=np.uint16)

    class Frames:
        # dask keeps a pickled copy of a source defined here: what is read shows in the result
        def __init__(self, array, through_dask=True):
            self.array, self.shape, self.dtype, self.ndim = array, array.shape, array.dtype, array.ndim
            self.through_dask = through_dask

        def __getitem__(self, index):
            assert self.through_dask, "read through dask"
            return self.array[index]

    class DirectFrames(Frames):
        def read_direct(self, index):
            return self.array[index]

    computed = []

    class Count(Callback):
        def _start(self, dsk):
            computed.append(len(dsk))

    expected = sample_mean_pattern(data)
    with Count():
        got = sample_mean_pattern(da.from_array(DirectFrames(data, through_dask=False), chunks=(4, 3, 32, 36)))
    assert computed == []                                        # read_direct alone
    np.testing.assert_array_equal(got, expected)
    for lazy in (da.from_array(Frames(data), chunks=(4, 3, 32, 36)),                 # no read_direct
                 da.from_array(DirectFrames(data), chunks=(4, 3, 32, 36))[:, 1:]):  # a part of the source
        computed.clear()
        with Count():
            np.testing.assert_array_equal(sample_mean_pattern(lazy), sample_mean_pattern(data[:, 9 - lazy.shape[1]:]))
        assert len(computed) == 1                                # one dask graph
