import numpy as np
import pytest
from helpers import loaded_after_import

from napari_4dstem_rvae import Calibration, Dataset4D
from napari_4dstem_rvae.dataset import electron_wavelength_angstrom


def test_wavelength_60kv_is_relativistic():
    # 60 kV: 0.04866 Å relativistic, 0.05006 Å non-relativistic
    assert electron_wavelength_angstrom(60) == pytest.approx(0.04866, abs=2e-5)
    assert electron_wavelength_angstrom(300) == pytest.approx(0.01969, abs=2e-5)


def test_calibration_defaults_are_unknown_not_invented():
    cal = Calibration()
    assert cal.scan_step is None and cal.det_pixel_size is None and cal.energy_kev is None
    assert cal.scan_step_yx == (1.0, 1.0)
    assert not cal.det_is_angular


@pytest.mark.parametrize("kwargs", [dict(det_unit="furlong"), dict(scan_step=-1.0),
                                    dict(energy_kev=float("nan")), dict(scan_step=(1.0, 0.0))])
def test_calibration_rejects_bad_values(kwargs):
    with pytest.raises(ValueError, match="Calibration"):
        Calibration(**kwargs)


def test_calibration_roundtrip_and_aliases():
    cal = Calibration(scan_step=(0.5, 0.25), scan_unit="nm", det_pixel_size=0.01, det_unit="1/A",
                      energy_kev=200, semiangle_mrad=20, det_origin=(10.5, 11.0))
    assert cal.det_unit == "1/Å"
    assert Calibration.from_dict(cal.to_dict()) == cal
    assert Calibration(scan_step=(2.0, 2.0)).scan_step == 2.0


def test_dataset_requires_four_axes_and_names_source():
    with pytest.raises(ValueError, match="4 axes.*in foo.h5.*3 axes"):
        Dataset4D(np.zeros((2, 3, 4)), source="foo.h5")
    with pytest.raises(ValueError, match="empty"):
        Dataset4D(np.zeros((0, 3, 4, 4)))


def test_pattern_and_derive_keep_input_untouched():
    data = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    ds = Dataset4D(data, Calibration(scan_step=1.0, scan_unit="Å"))
    assert np.array_equal(ds.pattern(1, 2), data[1, 2])
    with pytest.raises(IndexError, match="outside the scan"):
        ds.pattern(2, 0)
    derived = ds.derive(data * 2, "double", factor=2)
    assert derived.provenance == ({"step": "double", "factor": 2},)
    assert ds.provenance == () and np.array_equal(ds.data, data)
    lazy = ds.as_dask()
    assert np.array_equal(lazy.compute(), data)


def test_import_is_light():
    heavy = ("torch", "napari", "qtpy", "PyQt6", "dask", "h5py", "sklearn")
    assert loaded_after_import("napari_4dstem_rvae", heavy) == set()
