import numpy as np
import pytest
from napari.layers import Labels, Shapes

from napari_4dstem_rvae import Calibration, Dataset4D
from napari_4dstem_rvae._napari.regions import RegionError, region_mask


@pytest.fixture
def dataset():
    cal = Calibration(scan_step=0.5, scan_unit="Å", scan_origin=(1.0, 2.0))
    return Dataset4D(np.zeros((10, 12, 2, 2), np.float32), cal)


def test_rectangle_in_world_coordinates(dataset):
    # world y in [2, 4] -> scan rows (2-1)/0.5=2 .. 6 ; world x in [3, 5] -> cols 2 .. 6
    layer = Shapes([np.array([[2.0, 3.0], [2.0, 5.0], [4.0, 5.0], [4.0, 3.0]])], shape_type="rectangle")
    mask = region_mask(layer, dataset)
    expected = np.zeros((10, 12), bool)
    expected[2:7, 2:7] = True
    # probe centres on the drawn edge count as inside
    np.testing.assert_array_equal(mask, expected)


def test_shapes_layer_with_its_own_scale(dataset):
    # the same rectangle drawn in a layer whose data are in scan pixels (scale = step, translate = origin)
    layer = Shapes([np.array([[3.0, 3.0], [3.0, 5.0], [5.0, 5.0], [5.0, 3.0]])], shape_type="rectangle",
                   scale=(0.5, 0.5), translate=(1.0, 2.0))
    mask = region_mask(layer, dataset)
    assert mask[4, 4] and mask[3, 3] and not mask[0, 0] and not mask[7, 7]


def test_ellipse_and_union(dataset):
    centre = np.array([1.0 + 5 * 0.5, 2.0 + 6 * 0.5])  # world coords of scan (5, 6)
    r = 1.0  # 2 scan pixels
    box = np.array([centre + [-r, -r], centre + [-r, r], centre + [r, r], centre + [r, -r]])
    layer = Shapes([box], shape_type="ellipse")
    mask = region_mask(layer, dataset)
    yy, xx = np.mgrid[0:10, 0:12]
    np.testing.assert_array_equal(mask, (yy - 5) ** 2 + (xx - 6) ** 2 <= 4)


def test_labels_layer_and_chosen_label(dataset):
    labels = np.zeros((10, 12), int)
    labels[0:3, 0:3] = 1
    labels[5:8, 5:9] = 2
    layer = Labels(labels, scale=(0.5, 0.5), translate=(1.0, 2.0))
    np.testing.assert_array_equal(region_mask(layer, dataset), labels > 0)
    np.testing.assert_array_equal(region_mask(layer, dataset, label=2), labels == 2)


def test_empty_regions_are_clear_errors(dataset):
    with pytest.raises(RegionError, match="no shapes"):
        region_mask(Shapes(), dataset)
    far = Shapes([np.array([[100.0, 100.0], [100.0, 101.0], [101.0, 101.0], [101.0, 100.0]])], shape_type="rectangle")
    with pytest.raises(RegionError, match="covers no probe position"):
        region_mask(far, dataset)
    with pytest.raises(RegionError, match="label 7"):
        region_mask(Labels(np.ones((10, 12), int), scale=(0.5, 0.5), translate=(1, 2)), dataset, label=7)
    from napari.layers import Image

    with pytest.raises(RegionError, match="Shapes or Labels"):
        region_mask(Image(np.zeros((3, 3))), dataset)


def test_labels_of_another_shape_is_a_clear_error(dataset):
    with pytest.raises(RegionError, match=r"shape \(5, 5\).*10×12"):
        region_mask(Labels(np.ones((5, 5), int)), dataset)
