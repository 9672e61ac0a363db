"""Readers on files written by each format's own software where possible, otherwise built
byte by byte from the published format description; checks of shape, orientation and the
calibration mapping (``None`` wherever a file says nothing).

Every test data set is small and non-square in every direction where the format allows it,
with a distinct value per (scan_y, scan_x, det_y, det_x), so that a swapped or flipped axis
cannot pass unnoticed.
"""

from __future__ import annotations

import datetime as dt
import warnings

import h5py
import numpy as np
import pytest
from helpers import cube

from napari_4dstem_rvae import io
from napari_4dstem_rvae.dataset import Calibration


def assert_same(ds, expected):
    assert ds.shape == expected.shape
    assert ds.is_lazy
    np.testing.assert_array_equal(np.asarray(ds.data), expected)
    y, x = expected.shape[0] - 1, expected.shape[1] - 1
    np.testing.assert_array_equal(ds.pattern(y, x), expected[y, x])


def rsciio_signal(data, nav=((0.5, "nm"), (0.25, "nm")), sig=((0.02, "mrad"), (0.02, "mrad")),
                  sig_offset=None, energy_kev=None, semiangle_mrad=None, title="test",
                  original_metadata=None):
    """A signal dictionary as RosettaSciIO's writers expect it (HyperSpy's layout)."""
    ny, nx, ky, kx = data.shape
    axes = []
    for i, ((scale, units), name, size, navigate) in enumerate(
            zip((*nav, *sig), ("y", "x", "ky", "kx"), data.shape, (True, True, False, False))):
        offset = 0.0
        if not navigate and sig_offset is not None:
            offset = -sig_offset[i - 2] * scale
        axes.append(dict(name=name, scale=scale, offset=offset, units=units, navigate=navigate,
                         size=size, index_in_array=i))
    tem = {}
    if energy_kev is not None:
        tem["beam_energy"] = energy_kev
    if semiangle_mrad is not None:
        tem["convergence_angle"] = semiangle_mrad
    metadata = {"General": {"title": title}, "Signal": {"signal_type": "electron_diffraction"}}
    if tem:
        metadata["Acquisition_instrument"] = {"TEM": tem}
    return dict(data=data, axes=axes, metadata=metadata, original_metadata=original_metadata or {},
                attributes={"_lazy": False}, tmp_parameters={}, learning_results={}, models={},
                package_info={"name": "napari-4dstem-rvae-tests", "version": "0"})


def _zarr_major():
    import zarr
    return int(zarr.__version__.split(".")[0])


# ----------------------------------------------------------------------------------------
# Generic HDF5 written by h5py
# ----------------------------------------------------------------------------------------
def test_hdf5_generic_several_4d_datasets(tmp_path):
    big, small = cube((4, 5, 6, 8)), cube((2, 3, 6, 8), start=7)
    path = tmp_path / "generic.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("experiment/raw", data=big, chunks=(1, 5, 6, 8))
        f.create_dataset("experiment/binned", data=small)
        f.create_dataset("experiment/haadf", data=np.ones((4, 5)))
    with pytest.warns(UserWarning, match="several 4D datasets.*/experiment/raw"):
        ds = io.read(path)
    assert_same(ds, big)
    assert ds.metadata["dataset"] == "/experiment/raw"
    assert ds.calibration == Calibration()  # nothing in the file: nothing invented
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chosen = io.read(path, dataset="/experiment/binned")
    assert_same(chosen, small)
    assert io.read(path, dataset="experiment/binned").shape == small.shape  # no leading '/'
    assert sorted(io.list_datasets(path)) == [("/experiment/binned", small.shape),
                                              ("/experiment/raw", big.shape)]


def test_hdf5_flat_stack_with_scan_shape(tmp_path):
    data = cube((12, 6, 8))
    path = tmp_path / "flat.h5"
    with h5py.File(path, "w") as f:
        f["frames"] = data
    ds = io.read(path, scan_shape=(3, 4))
    assert_same(ds, data.reshape(3, 4, 6, 8))
    with pytest.raises(io.ReadError, match="flat.h5"):
        io.read(path, scan_shape=(5, 5))


def test_hdf5_attributes_calibration(tmp_path):
    path = tmp_path / "attrs.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("data", data=cube())
        d.attrs["energy_kev"] = 300.0
        d.attrs["convergence_semiangle_mrad"] = 21.4
    cal = io.read(path).calibration
    assert (cal.energy_kev, cal.semiangle_mrad) == (300.0, 21.4)
    assert cal.scan_step is None and cal.det_pixel_size is None


# ----------------------------------------------------------------------------------------
# py4DSTEM / emdfile EMD 1.0, written with h5py following emdfile's layout
# ----------------------------------------------------------------------------------------
def _emdfile_metadata_value(group, key, value):
    """emdfile's Metadata.to_h5: every value is a dataset with a 'type' attribute."""
    if isinstance(value, str):
        dset = group.create_dataset(key, data=value.encode("utf-8"))
        dset.attrs["type"] = b"string"
    elif isinstance(value, bool):
        dset = group.create_dataset(key, data=value, dtype=bool)
        dset.attrs["type"] = b"bool"
    else:
        dset = group.create_dataset(key, data=value, dtype=type(value))
        dset.attrs["type"] = b"number"


def write_py4dstem_emd(path, data, calibration, dim_units=("pixels", "pixels", "pixels", "pixels"),
                       dim_steps=(1, 1, 1, 1), extra_4d=None):
    """An EMD 1.0 file as emdfile (py4DSTEM >= 0.14) writes a DataCube with its Calibration:

    /                         emd_group_type='file', version_major=1, version_minor=0
    /<root>                   emd_group_type='root', python_class='Root'
    /<root>/metadatabundle    emd_group_type='metadatabundle'
    /<root>/metadatabundle/calibration   emd_group_type='metadata', python_class='Calibration',
                              one dataset per value (attribute 'type': number/string/bool)
    /<root>/datacube          emd_group_type='array', python_class='DataCube'
    /<root>/datacube/data     (Rx, Ry, Qx, Qy); dim0..dim3 with attributes name and units
    """
    with h5py.File(path, "w") as f:
        f.attrs["emd_group_type"] = "file"
        f.attrs["version_major"] = 1
        f.attrs["version_minor"] = 0
        f.attrs["UUID"] = "00000000-0000-0000-0000-000000000000"
        f.attrs["authoring_program"] = "emdfile"
        f.attrs["authoring_user"] = ""
        root = f.create_group("py4DSTEM_root")
        root.attrs["emd_group_type"] = "root"
        root.attrs["python_class"] = "Root"
        bundle = root.create_group("metadatabundle")
        bundle.attrs["emd_group_type"] = "metadatabundle"
        cal = bundle.create_group("calibration")
        cal.attrs["emd_group_type"] = "metadata"
        cal.attrs["python_class"] = "Calibration"
        for key, value in calibration.items():
            _emdfile_metadata_value(cal, key, value)
        targets = cal.create_group("_target_paths")  # a list of strings
        targets.attrs["type"] = b"list_of_strings"
        targets.attrs["length"] = 1
        targets.create_dataset("0", data=b"/datacube")
        if extra_4d is not None:  # a larger, unrelated 4D array elsewhere in the tree
            other = root.create_group("bigger")
            other.attrs["emd_group_type"] = "array"
            other.attrs["python_class"] = "Array"
            other.create_dataset("data", data=extra_4d)
        dc = root.create_group("datacube")
        dc.attrs["emd_group_type"] = "array"
        dc.attrs["python_class"] = "DataCube"
        d = dc.create_dataset("data", data=data, chunks=(1, 1) + data.shape[2:])
        d.attrs["units"] = "pixel intensity"
        for n, (name, unit, step) in enumerate(zip(("Rx", "Ry", "Qx", "Qy"), dim_units, dim_steps)):
            dim = dc.create_dataset(f"dim{n}", data=np.array([0.0, step]))  # linear: 2 values
            dim.attrs["name"] = name
            dim.attrs["units"] = unit


def test_py4dstem_emd1_angstrom(tmp_path):
    data = cube((3, 4, 6, 8), np.float32)
    path = tmp_path / "py4dstem.emd"
    write_py4dstem_emd(
        path, data,
        {"Q_pixel_size": 0.0125, "R_pixel_size": 2.5, "Q_pixel_units": "A^-1", "R_pixel_units": "A",
         "qx0_mean": 2.75, "qy0_mean": 3.5, "QR_rotation_degrees": 0.0, "QR_flip": False,
         "convergence_semiangle_mrad": 20.5},
        dim_units=("A", "A", "A^-1", "A^-1"), dim_steps=(2.5, 2.5, 0.0125, 0.0125),
        extra_4d=cube((5, 5, 6, 8), np.float32))
    assert io.detect_format(path) == "hdf5"
    with pytest.warns(UserWarning, match="several 4D datasets"):
        ds = io.read(path)
    assert ds.metadata["dataset"] == "/py4DSTEM_root/datacube/data"  # the DataCube, not the largest
    assert_same(ds, data)  # (Rx, Ry, Qx, Qy): Rx is the first (row) axis, as ours
    cal = ds.calibration
    assert cal.scan_step == 2.5 and cal.scan_unit == "Å"
    assert cal.det_pixel_size == pytest.approx(0.0125) and cal.det_unit == "1/Å"
    assert cal.det_origin == (2.75, 3.5)  # (qx0, qy0) = (row, col)
    assert cal.semiangle_mrad == 20.5
    assert cal.energy_kev is None  # py4DSTEM's Calibration stores no beam energy


def test_py4dstem_emd1_mrad_nm_and_uncalibrated(tmp_path):
    data = cube((4, 3, 8, 6), np.uint16)
    path = tmp_path / "mrad.h5"
    write_py4dstem_emd(path, data, {"Q_pixel_size": 0.4, "R_pixel_size": 0.8,
                                    "Q_pixel_units": "mrad", "R_pixel_units": "nm"},
                       dim_units=("nm", "nm", "mrad", "mrad"), dim_steps=(0.8, 0.8, 0.4, 0.4))
    ds = io.read(path)
    assert_same(ds, data)
    cal = ds.calibration
    assert (cal.scan_step, cal.scan_unit) == (0.8, "nm")
    assert (cal.det_pixel_size, cal.det_unit) == (pytest.approx(0.4), "mrad")
    assert cal.det_origin is None and cal.semiangle_mrad is None and cal.energy_kev is None

    # py4DSTEM's defaults (pixel size 1 in 'pixels') are not a calibration
    path2 = tmp_path / "pixels.emd"
    write_py4dstem_emd(path2, data, {"Q_pixel_size": 1, "R_pixel_size": 1,
                                     "Q_pixel_units": "pixels", "R_pixel_units": "pixels"})
    assert io.read(path2).calibration == Calibration()


def test_emdfile_writer(tmp_path):
    """The same through emdfile itself (py4DSTEM's EMD 1.0 library), where it is installed."""
    import emdfile
    data = cube((3, 4, 6, 8), np.float32)
    root = emdfile.Root(name="py4DSTEM_root")
    DataCube = type("DataCube", (emdfile.Array,), {})  # emdfile records the class name
    root.tree(DataCube(name="datacube", data=data, dims=[[0, 0.5], [0, 0.5], [0, 1.2], [0, 1.2]],
                       dim_units=["nm", "nm", "mrad", "mrad"], dim_names=["Rx", "Ry", "Qx", "Qy"]))
    root.metadata = emdfile.Metadata(name="calibration", data={
        "Q_pixel_size": 1.2, "R_pixel_size": 0.5, "Q_pixel_units": "mrad", "R_pixel_units": "nm",
        "qx0_mean": 3.0, "qy0_mean": 4.0})
    path = tmp_path / "emdfile.h5"
    emdfile.save(str(path), root)
    ds = io.read(path)
    assert_same(ds, data)
    cal = ds.calibration
    assert (cal.scan_step, cal.scan_unit, cal.det_pixel_size, cal.det_unit) == (0.5, "nm", 1.2, "mrad")
    assert cal.det_origin == (3.0, 4.0) and cal.semiangle_mrad is None and cal.energy_kev is None


# ----------------------------------------------------------------------------------------
# EMD 0.1 (Berkeley), written with h5py; and RosettaSciIO's EMD writer
# ----------------------------------------------------------------------------------------
def test_emd01_layout(tmp_path):
    data = cube((3, 4, 6, 8), np.int32)
    path = tmp_path / "v01.emd"
    ny, nx, ky, kx = data.shape
    with h5py.File(path, "w") as f:
        f.attrs["version_major"] = 0
        f.attrs["version_minor"] = 1
        group = f.create_group("data/datacube_0")
        group.attrs["emd_group_type"] = 1
        group["data"] = data
        for n, (values, name, units) in enumerate([
                (np.arange(ny) * 1.5, "R_y", "[n_m]"), (np.arange(nx) * 1.5, "R_x", "[n_m]"),
                ((np.arange(ky) - 3) * 0.05, "Q_y", "[1_/_n_m]"),
                ((np.arange(kx) - 4) * 0.05, "Q_x", "[1_/_n_m]")], start=1):
            dim = group.create_dataset(f"dim{n}", data=values)
            dim.attrs["name"], dim.attrs["units"] = name, units
    ds = io.read(path)
    assert_same(ds, data)
    cal = ds.calibration
    assert (cal.scan_step, cal.scan_unit) == (1.5, "nm")
    assert cal.det_pixel_size == pytest.approx(0.005) and cal.det_unit == "1/Å"  # 0.05 /nm
    assert cal.energy_kev is None and cal.semiangle_mrad is None
    assert io.read(path, dataset="/data/datacube_0").shape == data.shape  # the EMD group


def test_emd01_without_units(tmp_path):
    data = cube((3, 4, 6, 8))
    path = tmp_path / "plain01.emd"
    with h5py.File(path, "w") as f:
        f.attrs["version_major"], f.attrs["version_minor"] = 0, 1
        group = f.create_group("data/scan")
        group.attrs["emd_group_type"] = 1
        group["data"] = data
        for n, size in enumerate(data.shape, start=1):
            group[f"dim{n}"] = np.arange(size, dtype=float)
    ds = io.read(path)
    assert_same(ds, data)  # EMD 0.1: dim1 describes the first axis; nothing transposed
    assert ds.calibration == Calibration()


def test_rsciio_emd_writer(tmp_path):
    from rsciio import emd
    data = cube((3, 4, 6, 8))
    path = tmp_path / "hyperspy.emd"
    emd.file_writer(str(path), rsciio_signal(data, nav=((0.5, "nm"), (0.25, "nm")),
                                             sig=((0.2, "1/nm"), (0.2, "1/nm")), sig_offset=(3, 4)))
    # RosettaSciIO stores the transpose (det_x, det_y, scan_x, scan_y), dim1 = det_x, units
    # spelled '[1_/_n_m]'; we read it back in (scan_y, scan_x, det_y, det_x) order.
    with h5py.File(path, "r") as f:
        assert f["signals/test/data"].shape == data.shape[::-1]
    ds = io.read(path)
    assert_same(ds, data)
    assert ds.metadata["emd_axes_reversed"] is True
    cal = ds.calibration
    assert cal.scan_step == (0.5, 0.25) and cal.scan_unit == "nm"
    assert cal.det_pixel_size == pytest.approx(0.02) and cal.det_unit == "1/Å"
    assert cal.energy_kev is None and cal.semiangle_mrad is None  # not written by this writer
    # RosettaSciIO's own EMD reader agrees on the orientation
    back = emd.file_reader(str(path), lazy=False)[0]["data"]
    np.testing.assert_array_equal(back, data)


# ----------------------------------------------------------------------------------------
# NumPy .npy and zarr
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fortran", [False, True])
def test_npy(tmp_path, fortran):
    data = cube((3, 4, 6, 8), np.float32)
    path = tmp_path / "cube.npy"
    np.save(path, np.asfortranarray(data) if fortran else data)
    ds = io.read(path)
    assert_same(ds, data)
    assert ds.calibration == Calibration()
    assert ds.metadata["format"] == "npy"
    assert io.read(path, calibration={"scan_step": 0.3, "scan_unit": "nm"}).calibration.scan_step == 0.3


def test_npy_flat_stack(tmp_path):
    data = cube((12, 6, 8), np.uint8)
    path = tmp_path / "stack.npy"
    np.save(path, data)
    assert_same(io.read(path, scan_shape=(3, 4)), data.reshape(3, 4, 6, 8))


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_zarr_plain_array(tmp_path, zarr_format):
    import zarr
    if _zarr_major() < 3:
        pytest.skip("zarr.create_array needs zarr 3")
    data = cube((3, 4, 6, 8))
    path = tmp_path / "plain.zarr"
    z = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype, chunks=(1, 2, 6, 8),
                          zarr_format=zarr_format)
    z[...] = data
    z.attrs["calibration"] = {"scan_step": [0.5, 0.25], "scan_unit": "nm", "det_pixel_size": 0.1,
                              "det_unit": "mrad", "energy_kev": 200.0}
    assert (path / ("zarr.json" if zarr_format == 3 else ".zarray")).exists()
    ds = io.read(path)
    assert_same(ds, data)
    cal = ds.calibration
    assert cal.scan_step == (0.5, 0.25) and cal.det_unit == "mrad" and cal.energy_kev == 200.0
    assert cal.semiangle_mrad is None


def test_zarr_v3_group(tmp_path):
    import zarr
    big, small = cube((4, 5, 6, 8)), cube((2, 2, 6, 8), start=3)
    path = tmp_path / "group.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.create_array("scans/big", shape=big.shape, dtype=big.dtype, chunks=(2, 5, 6, 8))[...] = big
    root.create_array("scans/small", shape=small.shape, dtype=small.dtype)[...] = small
    root.create_array("haadf", shape=(4, 5), dtype="f4")
    with pytest.warns(UserWarning, match="several 4D arrays"):
        ds = io.read(path)
    assert_same(ds, big)
    assert ds.metadata["dataset"] == "/scans/big"
    assert_same(io.read(path, dataset="/scans/small"), small)
    assert ds.calibration == Calibration()


# ----------------------------------------------------------------------------------------
# RosettaSciIO writers: HyperSpy .hspy, .zspy, ASTAR blockfile
# ----------------------------------------------------------------------------------------
def test_hspy_writer(tmp_path):
    from rsciio import hspy
    data = cube((3, 4, 6, 8), np.float32)
    path = tmp_path / "signal.hspy"
    hspy.file_writer(str(path), rsciio_signal(
        data, nav=((0.5, "nm"), (0.25, "nm")), sig=((0.3, "mrad"), (0.3, "mrad")),
        sig_offset=(2.5, 3.5), energy_kev=200.0, semiangle_mrad=21.5, title="my scan"))
    ds = io.read(path)
    assert_same(ds, data)
    cal = ds.calibration
    assert cal.scan_step == (0.5, 0.25) and cal.scan_unit == "nm"  # the file's unit is kept
    assert cal.det_pixel_size == pytest.approx(0.3) and cal.det_unit == "mrad"
    assert cal.det_origin == pytest.approx((2.5, 3.5))  # zero angle where offset + i*scale == 0
    assert (cal.energy_kev, cal.semiangle_mrad) == (200.0, 21.5)
    assert ds.metadata["title"] == "my scan"


def test_hspy_writer_angstrom_and_inverse_nm_without_instrument(tmp_path):
    from rsciio import hspy
    data = cube((4, 3, 8, 6))
    path = tmp_path / "angstrom.hspy"
    hspy.file_writer(str(path), rsciio_signal(data, nav=((1.5, "Å"), (1.5, "Å")),
                                              sig=((0.5, "1/nm"), (0.5, "1/nm"))))
    ds = io.read(path)
    assert_same(ds, data)
    cal = ds.calibration
    assert (cal.scan_step, cal.scan_unit) == (1.5, "Å")
    assert (cal.det_pixel_size, cal.det_unit) == (pytest.approx(0.05), "1/Å")  # 1/nm -> 1/Å
    assert cal.det_origin is None  # offsets 0: no direct-beam position recorded
    assert cal.energy_kev is None and cal.semiangle_mrad is None


def test_hspy_uncalibrated(tmp_path):
    from rsciio import hspy
    data = cube((2, 3, 6, 8))
    path = tmp_path / "bare.hspy"
    hspy.file_writer(str(path), rsciio_signal(data, nav=((1.0, ""), (1.0, "")),
                                              sig=((1.0, ""), (1.0, ""))))
    ds = io.read(path)
    assert_same(ds, data)
    assert ds.calibration == Calibration()


def test_zspy_layout_read_by_rsciio(tmp_path):
    """The HyperSpy zarr layout (what the zspy writer produces), written with zarr 3 directly
    and read through RosettaSciIO's zspy reader."""
    import rsciio.zspy  # noqa: F401
    import zarr
    data = cube((3, 4, 6, 8))
    path = tmp_path / "layout.zspy"
    root = zarr.open_group(str(path), mode="w")
    root.attrs.update(file_format="ZSpy", file_format_version="3.3")
    exp = root.require_group("Experiments").require_group("my scan")
    exp.create_array("data", shape=data.shape, dtype=data.dtype, chunks=(1, 4, 6, 8))[...] = data
    for i, (name, scale, units, nav) in enumerate([("y", 2.0, "nm", True), ("x", 1.0, "nm", True),
                                                   ("ky", 0.25, "mrad", False),
                                                   ("kx", 0.25, "mrad", False)]):
        exp.require_group(f"axis-{i}").attrs.update(name=name, scale=scale, offset=0.0, units=units,
                                                    navigate=nav, size=data.shape[i])
    md = exp.require_group("metadata")
    md.require_group("General").attrs.update(title="my scan")
    md.require_group("Signal").attrs.update(signal_type="electron_diffraction")
    md.require_group("Acquisition_instrument").require_group("TEM").attrs.update(
        beam_energy=300.0, convergence_angle=10.0)
    for name in ("original_metadata", "attributes", "learning_results"):
        exp.require_group(name)
    assert io.detect_format(path) == "rsciio:zspy"
    ds = io.read(path)
    assert_same(ds, data)
    cal = ds.calibration
    assert cal.scan_step == (2.0, 1.0) and cal.scan_unit == "nm"
    assert (cal.det_pixel_size, cal.det_unit) == (0.25, "mrad")
    assert (cal.energy_kev, cal.semiangle_mrad) == (300.0, 10.0)


def test_blockfile_writer(tmp_path):
    from rsciio import blockfile
    data = cube((3, 4, 8, 8), np.uint8)  # blockfiles hold square uint8 patterns
    path = tmp_path / "astar.blo"
    signal = rsciio_signal(data, nav=((1.5, "nm"), (2.5, "nm")), sig=((0.25, "cm"), (0.25, "cm")),
                           original_metadata={"blockfile_header": {"Beam_energy": 200000,
                                                                   "Note": "test"}})
    blockfile.file_writer(str(path), signal, show_progressbar=False)
    ds = io.read(path)
    assert_same(ds, data)
    cal = ds.calibration
    assert cal.scan_step == (1.5, 2.5) and cal.scan_unit == "nm"  # the file's nm, kept
    assert cal.energy_kev == 200.0  # header in volts, mapped by RosettaSciIO to keV
    # the detector scale is a camera pixel size in cm (100 / pixels per cm): not reciprocal
    assert cal.det_pixel_size is None and cal.det_unit is None
    assert ds.metadata["detector_calibration_unconverted"] == {"scale": 0.25, "units": "cm"}
    assert cal.semiangle_mrad is None


# ----------------------------------------------------------------------------------------
# Quantum Detectors Merlin .mib (+ .hdr), built byte by byte
# ----------------------------------------------------------------------------------------
MIB_DEPTH = {"U08": (">u1", 6), "U16": (">u2", 12), "U32": (">u4", 24)}


def _merlin_threshold(value):
    mantissa, exponent = f"{value:.6E}".split("E")
    return f"{mantissa}E{int(exponent):+d}"


def merlin_header(seq, ky, kx, depth, when, exposure_ns=1_000_000):
    """A 384-byte single-chip frame header as the Merlin software writes it: comma-separated
    ID, sequence number, data offset, chips, pixels X, pixels Y, pixel depth, sensor layout,
    chip select, time stamp, shutter (s), counter, colour mode, gain mode, 8 thresholds (keV),
    the DACs, then the extended part (MQ1A, ns time stamp, shutter in ns, counter depth),
    padded with NULs."""
    fields = ["MQ1", f"{seq:06d}", "00384", "01", f"{kx:04d}", f"{ky:04d}", depth, "   1x1",
              "01", when.strftime("%Y-%m-%d %H:%M:%S.%f"), f"{exposure_ns / 1e9:.6f}", "0", "0",
              "0", *[_merlin_threshold(t) for t in (150.0, 511.0, 0, 0, 0, 0, 0, 0)], "3RX",
              "175", "511", *["000"] * 6, "125", "255", "125", "125", "100", "100", "082", "100",
              "087", "030", "128", "004", "255", "129", "128", "176", "168", "511", "511", "MQ1A",
              when.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z", f"{exposure_ns}ns",
              str(MIB_DEPTH[depth][1])]
    text = (",".join(fields) + ",").encode("ascii")
    assert len(text) < 384
    return text.ljust(384, b"\x00")


def write_mib(path, frames_file_order, depth="U16", line_gap_every=None):
    """Frames in acquisition order, each (rows, cols) exactly as stored in the file
    (Merlin stores the bottom detector row first)."""
    dtype = MIB_DEPTH[depth][0]
    n, ky, kx = frames_file_order.shape
    start = dt.datetime(2024, 5, 17, 14, 8, 13)
    with open(path, "wb") as fh:
        t = start
        for i in range(n):
            if line_gap_every and i and i % line_gap_every == 0:
                t += dt.timedelta(milliseconds=5)  # flyback before each new scan line
            fh.write(merlin_header(i + 1, ky, kx, depth, t))
            fh.write(frames_file_order[i].astype(dtype).tobytes())
            t += dt.timedelta(milliseconds=1)


def write_hdr(path, n_frames, frames_per_trigger=1, scan=None, depth=12):
    lines = ["HDR,\t",
             "Time and Date Stamp (day, mnth, yr, hr, min, s):\t17/05/2024 14:08:13",
             "Chip ID:\tW529_F5,-,-,-",
             "Chip Type (Medipix 3.0, Medipix 3.1, Medipix 3RX):\tMedipix 3RX",
             "Assembly Size (NX1, 2X2):\t   1x1",
             "Chip Mode  (SPM, CSM, CM, CSCM):\tSPM",
             f"Counter Depth (number):\t{depth}",
             "Gain:\tSLGM",
             "Active Counters:\tAlternating",
             "Thresholds (keV):\t1.500000E+2,5.110000E+2,0.000000E+0,0.000000E+0,"
             "0.000000E+0,0.000000E+0,0.000000E+0,0.000000E+0",
             "DACs:\t175,511,000,000,000,000,000,000,125,255,125,125,100,100,082,100,087,030,"
             "128,004,255,129,128,176,168,511,511",
             "bpc File:\tc:\\MERLIN_Quad_Config\\W529_F5\\W529_F5_SPM.bpc,,,",
             "DAC File:\tc:\\MERLIN_Quad_Config\\W529_F5\\W529_F5_SPM.dacs,,,",
             "Gap Fill Mode:\tNone",
             "Flat Field File:\tNone",
             "Dead Time File:\tDummy (C:\\<NUL>\\)",
             "Acquisition Type (Normal, Th_scan, Config):\tNormal",
             f"Frames in Acquisition (Number):\t{n_frames}",
             f"Frames per Trigger (Number):\t{frames_per_trigger}",
             "Trigger Start (Positive, Negative, Internal):\tRising Edge",
             "Trigger Stop (Positive, Negative, Internal):\tRising Edge",
             "Sensor Bias (V):\t120 V",
             "Sensor Polarity (Positive, Negative):\tPositive",
             "Temperature (C):\tBoard Temp 37.384918 Deg C",
             "Humidity (%):\tBoard Humidity 1.331848 ",
             "Medipix Clock (MHz):\t120MHz",
             "Readout System:\tMerlin Quad",
             "Software Version:\t1.5.0.23"]
    if scan is not None:  # Merlin software >= 1.5 records the scan size
        lines += [f"ScanX:\t{scan[1]}", f"ScanY:\t{scan[0]}"]
    lines.append("End\t")
    path.write_text("\n".join(lines) + "\n")


def merlin_expected(frames_file_order, scan):
    """Merlin's detector origin is bottom-left: the first stored row is the bottom row.
    RosettaSciIO flips the rows (np.flip(axis=-2)) to put the origin top-left, like every
    other format here; we keep RosettaSciIO's orientation."""
    return frames_file_order[:, ::-1, :].reshape(scan + frames_file_order.shape[1:])


@pytest.mark.parametrize("depth", ["U08", "U16", "U32"])
def test_mib_with_hdr_scan_size(tmp_path, depth):
    import rsciio.quantumdetector  # noqa: F401
    scan = (3, 4)
    frames = cube((12, 6, 8), np.uint8 if depth == "U08" else np.uint32)
    if depth == "U32":
        frames = frames + np.uint32(70000)  # beyond 16 bits
    write_mib(tmp_path / "scan.mib", frames, depth)
    write_hdr(tmp_path / "scan.hdr", 12, scan=scan, depth=MIB_DEPTH[depth][1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ScanX/ScanY known: no guessing, no warning
        ds = io.read(tmp_path / "scan.mib")
    expected = merlin_expected(frames, scan)
    assert_same(ds, expected)
    assert ds.dtype.isnative  # big-endian on disk, native in memory
    assert ds.metadata["scan_shape_source"] == "hdr ScanX/ScanY"
    marker = np.zeros((12, 6, 8), np.uint8)
    marker[0, 0, 1] = 1  # first frame, first stored row, second column
    write_mib(tmp_path / "marker.mib", marker, depth)
    write_hdr(tmp_path / "marker.hdr", 12, scan=scan)
    assert np.argwhere(io.read(tmp_path / "marker.mib").pattern(0, 0)).tolist() == [[5, 1]]
    assert io.read(tmp_path / "scan.hdr").shape == expected.shape  # opened through the .hdr
    assert ds.calibration == Calibration()  # a .mib carries no calibration


def test_mib_hdr_frames_per_trigger(tmp_path):
    """Older Merlin software: no ScanX/ScanY, but line triggers give frames per line."""
    import rsciio.quantumdetector  # noqa: F401
    frames = cube((12, 6, 8))
    write_mib(tmp_path / "lines.mib", frames)
    write_hdr(tmp_path / "lines.hdr", 12, frames_per_trigger=4)
    ds = io.read(tmp_path / "lines.mib")
    assert_same(ds, merlin_expected(frames, (3, 4)))
    assert ds.metadata["scan_shape_source"] == "hdr frames per trigger"


def test_mib_without_hdr(tmp_path):
    import rsciio.quantumdetector  # noqa: F401
    frames = cube((12, 6, 8))
    write_mib(tmp_path / "nohdr.mib", frames)  # no line gaps in the time stamps
    ds = io.read(tmp_path / "nohdr.mib", scan_shape=(3, 4))
    assert_same(ds, merlin_expected(frames, (3, 4)))
    assert ds.metadata["scan_shape_source"] == "user"
    assert io.read(tmp_path / "nohdr.mib", scan_shape=(4, 3)).shape == (4, 3, 6, 8)
    with pytest.warns(UserWarning, match=r"holds 12 complete frames of the 20 that the scan shape \(4, 5\) \(user\) needs"):
        short = io.read(tmp_path / "nohdr.mib", scan_shape=(4, 5))  # 12 frames: 2 full lines
    assert_same(short, merlin_expected(frames[:10], (2, 5)))

    # RosettaSciIO guesses the scan width from gaps in the frame time stamps: we warn
    write_mib(tmp_path / "gaps.mib", frames, line_gap_every=4)
    with pytest.warns(UserWarning, match="guessed the scan shape \\(3, 4\\)"):
        guessed = io.read(tmp_path / "gaps.mib")
    assert_same(guessed, merlin_expected(frames, (3, 4)))
    assert guessed.metadata["scan_shape_source"] == "frame timestamps"


# ----------------------------------------------------------------------------------------
# EMPAD (.xml + .raw), built byte by byte
# ----------------------------------------------------------------------------------------
def write_empad_raw(path, frames):
    """EMPAD raw: little-endian float32 frames of 130 rows x 128 columns, the last two rows
    holding per-frame metadata (not image data)."""
    n = frames.shape[0] * frames.shape[1]
    raw = np.full((n, 130, 128), -1.0, dtype="<f4")
    raw[:, :128, :] = frames.reshape(n, 128, 128)
    raw.tofile(path)


def empad_frames(scan):
    rng = np.random.default_rng(1)
    frames = rng.random(scan + (128, 128), dtype=np.float32)
    frames[..., 0, 0] = np.arange(scan[0] * scan[1], dtype=np.float32).reshape(scan)
    return frames


def test_empad_v122(tmp_path):
    """EMPAD software 1.2.2 layout: scan size in the raw file name (scan_x<nx>_y<ny>.raw),
    field of view in iom_measurements, no diffraction calibration."""
    import rsciio.empad  # noqa: F401
    scan = (3, 5)  # (scan_y, scan_x)
    frames = empad_frames(scan)
    raw = f"scan_x{scan[1]}_y{scan[0]}.raw"
    write_empad_raw(tmp_path / raw, frames)
    fov = 0.72 * max(scan) * 2e-9  # stored as internal fov * scale factor: 2 nm steps
    xml = (
        '<root name="EMPAD_test"><timestamp timestamp="1716000000.0" '
        'isoformat="2024-05-18T02:40:00.000000"/><software_version>1.2.2  (2021-08-20)'
        f'</software_version><raw_file filename="{raw}"/><exposure_time>1</exposure_time>'
        '<scan_parameters mode="acquire"><scan_size>0.6</scan_size>'
        f'<scan_resolution_y>{scan[0]}</scan_resolution_y><scan_resolution_x>{scan[1]}'
        '</scan_resolution_x></scan_parameters><iom_measurements><scan_rotation>0.0</scan_rotation>'
        '<full_scan_field_of_view><scale_factor>0.72</scale_factor>'
        f'<x>{fov!r}</x><y>{fov!r}</y></full_scan_field_of_view>'
        '<nominal_camera_length>0.369</nominal_camera_length><high_voltage_state>True'
        '</high_voltage_state><high_voltage>300000.0</high_voltage></iom_measurements></root>')
    (tmp_path / "acquisition.xml").write_text(xml)
    assert io.detect_format(tmp_path / "acquisition.xml") == "rsciio:empad"
    ds = io.read(tmp_path / "acquisition.xml")
    assert ds.shape == scan + (128, 128)  # the two metadata rows are dropped
    assert ds.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(ds.data), frames)
    assert ds.pattern(2, 4)[0, 0] == 14.0  # raster order: frame index = y * nx + x
    cal = ds.calibration
    assert cal.scan_step == pytest.approx(2.0) and cal.scan_unit == "nm"
    assert cal.det_pixel_size is None and cal.det_unit is None and cal.det_origin is None
    assert cal.energy_kev == 300.0  # iom_measurements/high_voltage, in volts
    assert cal.semiangle_mrad is None


def test_empad_old_xml_with_calibration(tmp_path):
    """Older EMPAD layout: pix_x/pix_y, get_full_scan_field_of_view (metres) and
    calibrated_pixelsize (RosettaSciIO multiplies it by 1e9 and reads 1/nm; 1.826537e-10 in
    its test file gives 0.1826537 1/nm)."""
    import rsciio.empad  # noqa: F401
    scan = (2, 3)
    frames = empad_frames(scan)
    write_empad_raw(tmp_path / "data.raw", frames)
    xml = ('<root><timestamp isoformat="2019-06-06T13:30:00.164675"/>'
           f'<pix_x>{scan[1]}</pix_x><pix_y>{scan[0]}</pix_y><raw_file filename="data.raw"/>'
           '<iom_measurements><optics><get_full_scan_field_of_view>[6e-09, 6e-09]'
           '</get_full_scan_field_of_view></optics><calibrated_pixelsize>1.826537e-10'
           '</calibrated_pixelsize></iom_measurements></root>')
    (tmp_path / "old.xml").write_text(xml)
    ds = io.read(tmp_path / "old.xml")
    np.testing.assert_array_equal(np.asarray(ds.data), frames)
    cal = ds.calibration
    assert cal.det_pixel_size == pytest.approx(0.01826537) and cal.det_unit == "1/Å"
    assert cal.det_origin is None  # RosettaSciIO's fixed -64 px offset is not a beam position
    # a 6 nm x 6 nm field of view over 2 rows x 3 columns
    assert cal.scan_step == pytest.approx((3.0, 2.0)) and cal.scan_unit == "nm"
    assert cal.energy_kev is None


def test_empad_scan_line(tmp_path):
    """A 1 x N scan: RosettaSciIO squeezes the size-1 axis away; we put it back."""
    import rsciio.empad  # noqa: F401
    frames = empad_frames((1, 4))
    write_empad_raw(tmp_path / "scan_x4_y1.raw", frames)
    (tmp_path / "line.xml").write_text('<root><raw_file filename="scan_x4_y1.raw"/></root>')
    ds = io.read(tmp_path / "line.xml")
    assert ds.shape == (1, 4, 128, 128)
    np.testing.assert_array_equal(np.asarray(ds.data), frames)


# ----------------------------------------------------------------------------------------
# Raw binary with a user-given layout
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_raw_with_headers_and_footers(tmp_path, byteorder):
    data = cube((3, 4, 6, 8))
    path = tmp_path / "frames.raw"
    with open(path, "wb") as fh:
        fh.write(b"F" * 16)
        for frame in data.reshape(12, 6, 8):
            fh.write(b"H" * 4 + frame.astype(byteorder + "u2").tobytes() + b"T" * 2)
    ds = io.read(path, scan_shape=(3, 4), det_shape=(6, 8), dtype="uint16", byteorder=byteorder,
                 file_header_bytes=16, frame_header_bytes=4, frame_footer_bytes=2)
    assert_same(ds, data)
    assert ds.dtype == np.dtype("uint16") and ds.dtype.isnative
    assert ds.calibration == Calibration()
