"""Regions drawn on the real-space canvas -> a boolean mask over the probe positions.

A Shapes layer (rectangles, polygons, ellipses; paths and lines count as the pixels they
cross) or a Labels layer (non-zero pixels, or one chosen label) is mapped through world
coordinates onto the scan grid of a data set, so the region layer may have any scale or
translation of its own. A probe position is inside when its centre is. No Qt here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..workflows import Dataset4D
from .proxies import layer_kind, unwrap


class RegionError(ValueError):
    """A region that cannot select probe positions (empty, other shape, unknown layer)."""


def _scan_centres_world(dataset: Dataset4D) -> tuple[np.ndarray, np.ndarray]:
    """World coordinates (y, x) of every probe position, each (ny, nx)."""
    ny, nx = dataset.scan_shape
    sy, sx = dataset.calibration.scan_step_yx
    oy, ox = dataset.calibration.scan_origin
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    return oy + yy * sy, ox + xx * sx


def _to_scan_pixels(points_world: np.ndarray, dataset: Dataset4D) -> np.ndarray:
    sy, sx = dataset.calibration.scan_step_yx
    oy, ox = dataset.calibration.scan_origin
    return (np.asarray(points_world, float) - [oy, ox]) / [sy, sx]


def _layer_points_to_world(layer: Any, points: np.ndarray) -> np.ndarray:
    """Layer data coordinates -> world, last two axes (y, x)."""
    pts = np.asarray(points, float)
    out = np.array([layer.data_to_world(p) for p in pts])
    return out[:, -2:]


def _inside_polygon(vertices: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from skimage.draw import polygon2mask

    return polygon2mask(shape, vertices)


def _inside_ellipse(corners: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """napari stores an ellipse as the 4 corners of its (possibly rotated) bounding box."""
    centre = corners.mean(axis=0)
    axis_a = (corners[1] - corners[0]) / 2.0
    axis_b = (corners[2] - corners[1]) / 2.0
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    d = np.stack([yy - centre[0], xx - centre[1]], axis=-1)
    na, nb = np.dot(axis_a, axis_a), np.dot(axis_b, axis_b)
    if na == 0 or nb == 0:
        return np.zeros(shape, bool)
    u = (d @ axis_a) / na
    v = (d @ axis_b) / nb
    return u**2 + v**2 <= 1.0


def _on_path(vertices: np.ndarray, shape: tuple[int, int], closed: bool = False) -> np.ndarray:
    from skimage.draw import line

    mask = np.zeros(shape, bool)
    pts = np.round(vertices).astype(int)
    if closed:
        pts = np.vstack([pts, pts[:1]])
    for (y0, x0), (y1, x1) in zip(pts[:-1], pts[1:]):
        rr, cc = line(y0, x0, y1, x1)
        ok = (rr >= 0) & (rr < shape[0]) & (cc >= 0) & (cc < shape[1])
        mask[rr[ok], cc[ok]] = True
    return mask


def shapes_mask(layer: Any, dataset: Dataset4D) -> np.ndarray:
    """Union of the shapes of a napari Shapes layer, rasterised onto the scan grid."""
    shape = dataset.scan_shape
    mask = np.zeros(shape, bool)
    for vertices, kind in zip(layer.data, layer.shape_type):
        pixels = _to_scan_pixels(_layer_points_to_world(layer, vertices), dataset)
        if kind in ("rectangle", "polygon"):
            mask |= _inside_polygon(pixels, shape)
        elif kind == "ellipse":
            mask |= _inside_ellipse(pixels, shape)
        else:  # path, line
            mask |= _on_path(pixels, shape)
    return mask


def labels_mask(layer: Any, dataset: Dataset4D, label: int | None = None) -> np.ndarray:
    """Probe positions whose centre falls on a non-zero (or the chosen) label."""
    data = np.asarray(layer.data)
    if data.ndim < 2:
        raise RegionError(f"Labels layer '{layer.name}' has {data.ndim} axes; expected a 2D image of the scan")
    if tuple(data.shape[-2:]) != tuple(dataset.scan_shape):
        raise RegionError(
            f"Labels layer '{layer.name}' has shape {tuple(data.shape[-2:])}, but the scan has "
            f"{dataset.scan_shape[0]}×{dataset.scan_shape[1]} probe positions: paint the region in a "
            "Labels layer made over the real-space image of this data set")
    wy, wx = _scan_centres_world(dataset)
    world = np.zeros((wy.size, layer.ndim))
    world[:, -2] = wy.ravel()
    world[:, -1] = wx.ravel()
    idx = np.array([layer.world_to_data(p) for p in world])[:, -2:]
    idx = np.floor(idx + 0.5).astype(int)
    h, w = data.shape[-2:]
    inside = (idx[:, 0] >= 0) & (idx[:, 0] < h) & (idx[:, 1] >= 0) & (idx[:, 1] < w)
    plane = data.reshape((-1, h, w))[0] if data.ndim > 2 else data
    values = np.zeros(idx.shape[0], plane.dtype)
    values[inside] = plane[idx[inside, 0], idx[inside, 1]]
    selected = values != 0 if label is None else values == label
    return selected.reshape(dataset.scan_shape)


def region_mask(layer: Any, dataset: Dataset4D, label: int | None = None) -> np.ndarray:
    """Boolean (scan_y, scan_x) mask of the probe positions selected by a region layer.

    Raises :class:`RegionError` when the layer selects no position of this scan.
    """
    layer = unwrap(layer)
    kind = layer_kind(layer)
    if kind == "shapes":
        if len(layer.data) == 0:
            raise RegionError(f"Shapes layer '{layer.name}' has no shapes: draw a region over the scan first")
        mask = shapes_mask(layer, dataset)
    elif kind == "labels":
        mask = labels_mask(layer, dataset, label)
    else:
        raise RegionError(f"Layer '{layer.name}' is a {kind} layer; a region must be a Shapes or Labels layer "
                          "drawn over the real-space image")
    if not mask.any():
        which = "" if label is None else f" with label {label}"
        raise RegionError(
            f"The region in '{layer.name}'{which} covers no probe position of the "
            f"{dataset.scan_shape[0]}×{dataset.scan_shape[1]} scan; draw it over the real-space image"
        )
    return mask
