"""Map layers aligned with the ADF image, styled from the map schema; the napari writers
(HDF5, TIFF) and results files reopened as layers."""

import numpy as np
import pytest
from helpers import PLUGIN

from napari_4dstem_rvae import Calibration, Dataset4D
from napari_4dstem_rvae._napari.layers import (
    ROLE_KEY,
    map_layer_data,
    stored_map_layers,
    upsert_layer,
)
from napari_4dstem_rvae._napari.writers import write_tiff
from napari_4dstem_rvae.results import read_results, write_results


@pytest.fixture
def dataset():
    cal = Calibration(scan_step=(0.5, 0.25), scan_unit="Å", scan_origin=(1.0, -2.0))
    return Dataset4D(np.zeros((6, 8, 4, 4), np.float32), cal)


def test_map_styles(dataset):
    angle = np.linspace(-np.pi, np.pi, 48).reshape(6, 8)
    data, kw, kind = map_layer_data("angle", angle, dataset)
    np.testing.assert_allclose(data, np.degrees(angle), rtol=1e-6)
    assert kw["colormap"] == "twilight_shifted" and kw["contrast_limits"] == (-180.0, 180.0)
    assert kw["scale"] == (0.5, 0.25) and kw["translate"] == (1.0, -2.0)
    latent = np.linspace(-1, 3, 48).reshape(6, 8)
    _, kw, _ = map_layer_data("latents", latent, dataset, title="rVAE latent 1")
    assert kw["colormap"] == "coolwarm" and kw["contrast_limits"] == (-3.0, 3.0)
    assert kw["name"] == "rVAE latent 1" and kw["metadata"][ROLE_KEY]["map"] == "latents"
    _, kw, _ = map_layer_data("angle_std", np.abs(latent), dataset)
    assert kw["colormap"] == "magma"  # a spread is not an angle: no cyclic map, no ±180 limits
    with pytest.raises(ValueError, match="scan shape"):
        map_layer_data("latents", np.zeros((3, 3)), dataset)


def test_upsert_updates_by_name(make_napari_viewer, dataset):
    viewer = make_napari_viewer()
    first = upsert_layer(viewer, map_layer_data("latents", np.ones((6, 8)), dataset, extra={"epoch": 1}))
    second = upsert_layer(viewer, map_layer_data("latents", np.full((6, 8), 2.0), dataset, extra={"epoch": 2}))
    assert first is second and len(viewer.layers) == 1
    assert np.all(second.data == 2.0) and second.metadata[ROLE_KEY]["epoch"] == 2


def test_hdf5_writer_roundtrip_through_napari(make_napari_viewer, dataset, tmp_path):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(1)
    upsert_layer(viewer, map_layer_data("angle", rng.uniform(-3, 3, (6, 8)), dataset, extra={"epoch": 5}))
    upsert_layer(viewer, map_layer_data("latents", rng.normal(size=(6, 8)), dataset, title="rVAE latent 1"))
    path = str(tmp_path / "maps.h5")
    saved = viewer.layers.save(path, plugin=PLUGIN)
    assert saved == [path]
    originals = {layer.name: (layer.data.copy(), tuple(layer.scale), tuple(layer.translate)) for layer in viewer.layers}
    viewer.layers.clear()
    viewer.open(path, plugin=PLUGIN)  # layer data, returned to napari like any other file's
    layers = list(viewer.layers)
    assert sorted(layer.name for layer in layers) == sorted(originals)
    for layer in layers:
        data, scale, translate = originals[layer.name]
        np.testing.assert_allclose(layer.data, data)
        np.testing.assert_allclose(layer.scale, scale)
        np.testing.assert_allclose(layer.translate, translate)
        assert str(layer.units[0]) == "angstrom"
    assert layers[0].metadata[ROLE_KEY]["kind"] == "map"


def test_tiff_writer_stack_with_pixel_size(dataset, tmp_path):
    import tifffile

    a = map_layer_data("latents", np.ones((6, 8)), dataset, title="latent 1")
    b = map_layer_data("latents", np.zeros((6, 8)), dataset, title="latent 2")
    path = str(tmp_path / "maps.tif")
    assert write_tiff(path, [a, b]) == [path]
    with tifffile.TiffFile(path) as tif:
        stack = tif.asarray()
        assert stack.shape == (2, 6, 8)
        assert tif.imagej_metadata["Labels"] == ["latent 1", "latent 2"]
        x_res = tif.pages[0].tags["XResolution"].value
        assert x_res[0] / x_res[1] == pytest.approx(1 / 0.25)
    with pytest.raises(ValueError, match="one shape"):
        write_tiff(path, [a, (np.zeros((2, 2)), {"name": "small"}, "image")])


def test_results_file_reopens_aligned(dataset, tmp_path):
    from napari_4dstem_rvae.rvae.infer import LatentMaps

    angle = np.full((6, 8), np.pi / 2)
    latents = np.stack([np.ones((6, 8)), 2 * np.ones((6, 8))])
    maps = LatentMaps(angle=angle, angle_std=np.full((6, 8), 0.1), latents=latents,
                      latents_std=np.full((2, 6, 8), 0.5))
    path = write_results(tmp_path / "results.h5", calibration=dataset.calibration, scan_shape=(6, 8), rvae=maps)
    layers = stored_map_layers(read_results(path), prefix="results")
    names = [kw["name"] for _, kw, _ in layers]
    assert names == ["rVAE angle · results", "rVAE angle spread · results", "rVAE latent 1 · results",
                     "rVAE latent 2 · results", "rVAE latent 1 spread · results", "rVAE latent 2 spread · results",
                     "rVAE training region · results"]
    np.testing.assert_allclose(layers[0][0], 90.0)  # radians stored, degrees shown
    assert layers[0][1]["scale"] == (0.5, 0.25) and layers[0][1]["translate"] == (1.0, -2.0)
    np.testing.assert_allclose(layers[3][0], 2.0)
    np.testing.assert_allclose(layers[1][0], np.degrees(0.1), rtol=1e-6)  # spread shown in degrees too
    assert layers[1][1]["colormap"] == "magma"


def test_the_maps_writer_never_writes_over_the_data_set_file(dataset, tmp_path):
    """The layer writer guards its output like every writer: not the file of the data set behind
    the maps (nor a foreign file); the file is left as it was."""
    from dataclasses import replace

    from napari_4dstem_rvae._napari.writers import write_hdf5
    from napari_4dstem_rvae.io import save_dataset

    source = save_dataset(dataset, tmp_path / "scan.h5")
    before = (tmp_path / "scan.h5").read_bytes()
    layer = map_layer_data("latents", np.ones((6, 8)), replace(dataset, source=source), title="rVAE latent 1")
    with pytest.raises(ValueError, match="is the input"):
        write_hdf5(source, [layer])
    assert (tmp_path / "scan.h5").read_bytes() == before
    (tmp_path / "notes.h5").write_bytes(b"someone else's file")
    with pytest.raises(ValueError, match="not a results file"):
        write_hdf5(str(tmp_path / "notes.h5"), [layer])
    assert write_hdf5(str(tmp_path / "maps.h5"), [layer]) == [str(tmp_path / "maps.h5")]
