"""The readers' lazy property (opening reads no chunk, one pattern reads only its chunks),
one clear ReadError per bad input, and HDF5/.npy arrays that travel to dask.distributed."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
from helpers import cube

from napari_4dstem_rvae import io


@pytest.fixture
def h5_reads(monkeypatch):
    """Every read that reaches the HDF5 file through HDF5Source: (index, shape) pairs."""
    reads = []
    original = io.HDF5Source.__getitem__

    def counting(self, index):
        out = original(self, index)
        reads.append((index, out.shape))
        return out

    monkeypatch.setattr(io.HDF5Source, "__getitem__", counting)
    return reads


# ----------------------------------------------------------------------------------------
# Lazy reading
# ----------------------------------------------------------------------------------------
def test_hdf5_open_reads_nothing_and_pattern_reads_one_frame(tmp_path, h5_reads):
    data = cube((6, 5, 16, 16))
    path = tmp_path / "lazy.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("scan/data", data=data, chunks=(1, 1, 16, 16))
    io.HDF5Source.close_all()
    ds = io.read(path)
    assert h5_reads == []  # not even dask's probe read
    assert not any(key[0] == os.path.abspath(path) for key in io.HDF5Source._handles)  # not opened
    np.testing.assert_array_equal(ds.pattern(2, 3), data[2, 3])
    assert h5_reads == [((2, 3), (16, 16))]  # exactly that frame, nothing around it
    h5_reads.clear()
    by_rows = io.read(path, chunks=(1, 5, 16, 16))
    by_rows.data[1].sum().compute()  # a reduction over one scan row reads that row's chunk only
    assert h5_reads == [((slice(1, 2), slice(0, 5), slice(0, 16), slice(0, 16)), (1, 5, 16, 16))]


def test_rsciio_emd_transposed_pattern_reads_one_frame(tmp_path, h5_reads):
    from rsciio import emd
    data = cube((4, 3, 8, 8))
    path = tmp_path / "t.emd"
    signal = dict(data=data, metadata={"General": {"title": "t"}, "Signal": {}},
                  original_metadata={}, axes=[dict(name=n, scale=1.0, offset=0.0, units="",
                                                   navigate=i < 2, size=s, index_in_array=i)
                                              for i, (n, s) in enumerate(zip("yxab", data.shape))])
    emd.file_writer(str(path), signal)
    ds = io.read(path)
    assert h5_reads == []
    np.testing.assert_array_equal(ds.pattern(3, 1), data[3, 1])
    assert [shape for _, shape in h5_reads] == [(8, 8)]


def test_zarr_counting_store(tmp_path, monkeypatch):
    import zarr
    data = cube((6, 5, 16, 16))
    path = tmp_path / "lazy.zarr"
    z = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype, chunks=(1, 1, 16, 16))
    z[...] = data

    class CountingStore(zarr.storage.LocalStore):
        keys: list = []

        async def get(self, key, prototype=None, byte_range=None):
            CountingStore.keys.append(key)
            return await super().get(key, prototype, byte_range)

    original_open = zarr.open
    monkeypatch.setattr(zarr, "open", lambda store, mode="r", **kw: original_open(
        store=CountingStore(str(store), read_only=True), mode=mode))
    ds = io.read(path)
    chunk_keys = [k for k in CountingStore.keys if k.startswith("c/")]
    assert chunk_keys == []  # metadata only
    assert CountingStore.keys  # (the wrapper really is in use)
    np.testing.assert_array_equal(ds.pattern(4, 2), data[4, 2])
    assert [k for k in CountingStore.keys if k.startswith("c/")] == ["c/4/2/0/0"]


def test_npy_larger_than_reads_stays_mapped(tmp_path):
    """A 64 MiB .npy: opening and one pattern add well under 8 MiB to the resident memory of
    a fresh process (pages of the mapped file count only once touched)."""
    path = tmp_path / "big.npy"
    big = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(32, 32, 128, 128))
    big[5, 7] = 1.0
    big.flush()
    del big
    code = textwrap.dedent("""
        import sys
        def rss():
            with open("/proc/self/status") as fh:
                return next(int(l.split()[1]) * 1024 for l in fh if l.startswith("VmRSS"))
        from napari_4dstem_rvae import io
        import dask.array, numpy
        before = rss()
        ds = io.read(sys.argv[1])
        opened = rss()
        frame = ds.pattern(5, 7)
        after = rss()
        print(opened - before, after - before, float(frame.sum()), ds.shape)
    """)
    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs /proc to measure resident memory")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    opened, after, total = int(out[0]), int(out[1]), float(out[2])
    assert total == 128 * 128
    assert opened < 8 * 2**20 and after < 8 * 2**20, (opened, after)


def test_npy_and_raw_are_picklable_file_references(tmp_path):
    data = cube((3, 4, 6, 8))
    npy = tmp_path / "small.npy"
    np.save(npy, data)
    raw = tmp_path / "small.raw"
    with open(raw, "wb") as fh:
        for frame in data.reshape(12, 6, 8):
            fh.write(b"HEAD" + frame.astype(">u2").tobytes())
    for ds in (io.read(npy), io.read(raw, scan_shape=(3, 4), det_shape=(6, 8), dtype="uint16",
                                     byteorder=">", frame_header_bytes=4)):
        blob = pickle.dumps(ds.data)
        assert len(blob) < 20_000  # a file reference, not the 1152 bytes of every frame copied
        np.testing.assert_array_equal(pickle.loads(blob).compute(), data)


# ----------------------------------------------------------------------------------------
# dask.distributed
# ----------------------------------------------------------------------------------------
def test_hdf5_source_pickles_and_computes_after_unpickling(tmp_path):
    data = cube((4, 3, 8, 8)).astype(np.float32)
    path = tmp_path / "pickle.h5"
    with h5py.File(path, "w") as f:
        f["data"] = data
    ds = io.read(path)
    ds.pattern(0, 0)  # this process now holds an open handle: it must not travel
    array = pickle.loads(pickle.dumps(ds.data))
    np.testing.assert_allclose(array.sum(axis=(2, 3)).compute(), data.sum(axis=(2, 3)))
    source = io.HDF5Source(str(path), "/data", data.shape, data.dtype)
    source[0, 0]
    state = pickle.loads(pickle.dumps(source)).__dict__
    assert set(state) == {"path", "name", "shape", "dtype", "chunks", "ndim"}
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(source))[1, 2], data[1, 2])


def test_hdf5_replaced_file_is_reopened(tmp_path):
    """A cached handle is not reused once the file at that path has been replaced."""
    path = tmp_path / "replaced.h5"
    with h5py.File(path, "w") as f:
        f["data"] = cube((2, 2, 4, 4))
    io.read(path).pattern(0, 0)  # opens and caches a handle
    with h5py.File(tmp_path / "new.h5", "w") as f:
        f["data"] = cube((2, 2, 4, 4)) + 1
    os.replace(tmp_path / "new.h5", path)  # e.g. a processing run rewrote its output
    np.testing.assert_array_equal(io.read(path).pattern(1, 1), cube((2, 2, 4, 4))[1, 1] + 1)
    io.HDF5Source.close_all(str(path))  # relative or absolute: both close it
    assert not any(key[0] == os.path.abspath(path) for key in io.HDF5Source._handles)


def test_distributed_local_cluster(tmp_path):
    import distributed
    data = np.arange(4 * 3 * 8 * 8, dtype=np.float32).reshape(4, 3, 8, 8)
    h5 = tmp_path / "cluster.h5"
    with h5py.File(h5, "w") as f:
        f["data"] = data
    npy = tmp_path / "cluster.npy"
    np.save(npy, data)
    ds_h5 = io.read(h5, chunks=(1, 3, 8, 8))
    ds_npy = io.read(npy, chunks=(2, 3, 8, 8))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        worker_pids = set(client.run(os.getpid).values())
        assert os.getpid() not in worker_pids  # really another process
        sums = client.compute([ds_h5.data.sum(axis=(2, 3)), ds_npy.data.max(axis=(0, 1))],
                              sync=True)
    np.testing.assert_allclose(sums[0], data.sum(axis=(2, 3)))
    np.testing.assert_array_equal(sums[1], data.max(axis=(0, 1)))


# ----------------------------------------------------------------------------------------
# Bad input: one ReadError sentence naming the file
# ----------------------------------------------------------------------------------------
def assert_one_sentence(exc_info, path):
    message = str(exc_info.value)
    assert str(path) in message
    assert "\n" not in message
    assert "Traceback" not in message


def test_truncated_hdf5(tmp_path):
    path = tmp_path / "truncated.h5"
    with h5py.File(path, "w") as f:
        f["data"] = cube((6, 5, 16, 16))
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)
    with pytest.raises(io.ReadError, match="truncated") as exc_info:
        io.read(path)
    assert_one_sentence(exc_info, path)


def test_not_hdf5_at_all(tmp_path):
    path = tmp_path / "fake.h5"
    path.write_bytes(b"this is not an HDF5 file" * 10)
    with pytest.raises(io.ReadError, match="cannot be opened as HDF5") as exc_info:
        io.read(path)
    assert_one_sentence(exc_info, path)


def test_hdf5_without_4d_dataset(tmp_path):
    path = tmp_path / "images.h5"
    with h5py.File(path, "w") as f:
        f["haadf"] = np.zeros((8, 8))
        f["stack"] = np.zeros((3, 8, 8))
    with pytest.raises(io.ReadError, match="no 4D dataset.*/haadf") as exc_info:
        io.read(path)
    assert_one_sentence(exc_info, path)


def test_hdf5_wrong_dataset_name(tmp_path):
    path = tmp_path / "named.h5"
    with h5py.File(path, "w") as f:
        f["a/cube"] = cube((2, 2, 4, 4))
    with pytest.raises(io.ReadError, match="no dataset '/a/cbue'.*'/a/cube'") as exc_info:
        io.read(path, dataset="/a/cbue")
    assert_one_sentence(exc_info, path)


def test_zarr_wrong_dataset_name(tmp_path):
    import zarr
    path = tmp_path / "named.zarr"
    root = zarr.open_group(str(path), mode="w")
    root.create_array("cube", shape=(2, 2, 4, 4), dtype="u2")
    with pytest.raises(io.ReadError, match="no array '/nope'") as exc_info:
        io.read(path, dataset="/nope")
    assert_one_sentence(exc_info, path)


def test_raw_size_mismatch(tmp_path):
    path = tmp_path / "frames.raw"
    path.write_bytes(b"\0" * (3 * 4 * 6 * 8 * 2 + 7))
    with pytest.raises(io.ReadError, match="file size 1159 bytes does not match") as exc_info:
        io.read(path, scan_shape=(3, 4), det_shape=(6, 8), dtype="uint16")
    assert_one_sentence(exc_info, path)
    with pytest.raises(io.ReadError, match="needs scan_shape"):
        io.read(path, det_shape=(6, 8), dtype="uint16")


def test_unknown_extension(tmp_path):
    path = tmp_path / "scan.xyz"
    path.write_bytes(b"1234")
    with pytest.raises(io.ReadError, match="unknown file type '.xyz'") as exc_info:
        io.read(path)
    assert_one_sentence(exc_info, path)
    assert io.detect_format(path) is None


def test_missing_file(tmp_path):
    with pytest.raises(io.ReadError, match="no such file"):
        io.read(tmp_path / "absent.h5")


@pytest.mark.parametrize("shape, match", [((8, 8), "expected 4D data"),
                                          ((2, 3, 4, 4, 4), "expected 4D data"),
                                          ((6, 4, 4), "pass scan_shape")])
def test_npy_wrong_dimensionality(tmp_path, shape, match):
    path = tmp_path / "wrong.npy"
    np.save(path, np.zeros(shape, np.float32))
    with pytest.raises(io.ReadError, match=match) as exc_info:
        io.read(path)
    assert_one_sentence(exc_info, path)


def test_npy_bad_content(tmp_path):
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(io.ReadError, match="expected numbers") as exc_info:
        io.read(objects)
    assert_one_sentence(exc_info, objects)
    truncated = tmp_path / "truncated.npy"
    np.save(truncated, cube((2, 2, 4, 4)))
    with open(truncated, "r+b") as fh:
        fh.truncate(truncated.stat().st_size - 10)
    with pytest.raises(io.ReadError, match="truncated") as exc_info:
        io.read(truncated)
    assert_one_sentence(exc_info, truncated)
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"not numpy")
    with pytest.raises(io.ReadError, match="garbage.npy"):
        io.read(garbage)


def test_scan_shape_mismatch(tmp_path):
    path = tmp_path / "stack.npy"
    np.save(path, np.zeros((12, 4, 4), np.uint8))
    with pytest.raises(io.ReadError, match="scan_shape \\(5, 5\\) does not match the 12") as exc_info:
        io.read(path, scan_shape=(5, 5))
    assert_one_sentence(exc_info, path)


def test_rsciio_failure_is_a_read_error(tmp_path):
    import rsciio.quantumdetector  # noqa: F401
    path = tmp_path / "broken.mib"
    path.write_bytes(b"MQ1,garbage")
    with pytest.raises(io.ReadError, match="broken.mib") as exc_info:
        io.read(path, scan_shape=(1, 1))
    assert_one_sentence(exc_info, path)


def test_calibration_given_by_the_user_overrides_the_file_and_is_recorded(tmp_path):
    """A file whose calibration is in no known layout (attributes such as ``scan_step_x_A``) is
    calibrated by the user; what was given is kept in the provenance."""
    import h5py

    path = tmp_path / "custom.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("scan", data=np.ones((4, 5, 8, 8), np.float32))
        d.attrs["scan_step_x_A"] = 0.3
        d.attrs["det_pixel_mrad"] = 1.7
    plain = io.read(path)
    assert plain.calibration.scan_step is None and plain.provenance == ()
    ds = io.read(path, scan_step=0.3, scan_unit="A", det_pixel_size=1.7, det_unit="mrad", semiangle_mrad=25,
                 det_origin=(3.5, 3.5))
    cal = ds.calibration
    assert (cal.scan_step, cal.scan_unit, cal.det_pixel_size, cal.det_unit) == (0.3, "Å", 1.7, "mrad")
    assert cal.semiangle_mrad == 25 and cal.det_origin == (3.5, 3.5)
    assert ds.provenance[-1]["step"] == "calibration"
    assert ds.provenance[-1]["overridden"] == ["det_origin", "det_pixel_size", "det_unit", "scan_step",
                                               "scan_unit", "semiangle_mrad"]
    assert io.read(path, calibration={"energy_kev": 200.0}).calibration.energy_kev == 200.0
    with pytest.raises(ValueError, match=r"custom\.h5.*scan_step must be a positive number"):
        io.read(path, scan_step=-1.0)
    with pytest.raises(ValueError, match="det_unit must be one of"):
        io.read(path, det_unit="furlong")


def test_npy_streamed_whole_without_a_copy_keeps_resident_memory_bounded(tmp_path):
    """The .npy reader hands dask read-only views of a mapping per block (no copy): a COM pass
    over a 256 MiB file reads every pattern, and the process's peak resident memory does not grow
    to the file's size (each block's pages are released with the block)."""
    path = tmp_path / "scan.npy"
    big = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=(64, 64, 128, 128))
    rng = np.random.default_rng(0)
    for row in range(64):
        big[row] = rng.poisson(3, (64, 128, 128))
    big.flush()
    expected = float(np.asarray(big[10, 20], np.float64).sum())
    del big
    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs /proc to measure resident memory")
    code = textwrap.dedent("""
        import sys
        def peak():
            with open("/proc/self/status") as fh:
                return next(int(l.split()[1]) * 1024 for l in fh if l.startswith("VmHWM"))
        from napari_4dstem_rvae import io
        from napari_4dstem_rvae.processing import compute_com
        import numpy
        ds = io.read(sys.argv[1])
        compute_com(numpy.asarray(ds.data[:4, :4]), rotation=0.0, flip=False)  # imports, compiling
        before = peak()
        com = compute_com(ds, rotation=0.0, flip=False)
        print(peak() - before, float(ds.pattern(10, 20).sum()), float(com.magnitude.sum()))
    """)
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                         timeout=300, check=True).stdout.split()
    grown, total = int(out[0]), float(out[1])
    assert total == expected and np.isfinite(float(out[2]))
    print(f"peak resident memory grew by {grown / 2**20:.0f} MiB")
    assert grown < 192 * 2**20, grown / 2**20         # not the whole file: each block's pages go with it
    # what the reader hands dask is a read-only view of the file's pages, not a copy
    from napari_4dstem_rvae.io.common import MemmapSource

    source = MemmapSource(str(path), np.uint16, (64, 64, 128, 128), offset=128)
    block = source[2:4]
    assert not block.flags.writeable and not block.flags.owndata
