"""Maps as an ImageJ TIFF: one image, or a stack of maps of one shape with their titles as
slice labels, the scan calibration as pixel size (tifffile)."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from ..units import imagej_unit
from ..atomic import atomic_path


def write_tiff(path: str | os.PathLike, images: Sequence[Any], titles: Sequence[str],
               scale: tuple[float, float] = (1.0, 1.0), unit: str | None = None) -> str:
    """Write ``images`` (2D arrays of one shape) atomically; ``unit`` is a canonical length
    unit (``"Å"``, ``"nm"`` …) or ``None`` for pixels."""
    import tifffile

    path = os.fspath(path)
    images = [np.asarray(image, np.float32) for image in images]
    if not images:
        raise ValueError(f"{path}: no image to write")
    shapes = {image.shape for image in images}
    if len(shapes) != 1:
        raise ValueError(f"{path}: TIFF stacks need maps of one shape, got {sorted(shapes)}; "
                         "save them one by one or as HDF5")
    stack = np.stack(images) if len(images) > 1 else images[0]
    meta: dict[str, Any] = {"unit": imagej_unit(unit), "spacing": float(scale[0])}
    if len(images) > 1:
        meta["axes"] = "ZYX"
        meta["Labels"] = [str(t) for t in titles]
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, stack, imagej=True, resolution=(1.0 / float(scale[1]), 1.0 / float(scale[0])),
                         metadata=meta)
    return path
