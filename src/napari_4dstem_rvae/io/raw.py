"""Raw binary frames (in-house detectors): the layout is given by the user."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..dataset import Calibration, Dataset4D
from .common import MemmapSource, ReadError, finish


def read_raw(path: str, scan_shape: Any = None, det_shape: Any = None, dtype: Any = None,
             file_header_bytes: int = 0, frame_header_bytes: int = 0, frame_footer_bytes: int = 0,
             byteorder: str = "<", chunks: Any = None, dataset: Any = None) -> Dataset4D:
    """Raw binary frames: ``file_header_bytes``, then per frame ``frame_header_bytes`` +
    ``det_y·det_x`` pixels of ``dtype`` + ``frame_footer_bytes``, frames in scan raster order.

    ``byteorder`` is ``"<"`` (little-endian) or ``">"`` (big-endian).
    """
    missing = [n for n, v in (("scan_shape", scan_shape), ("det_shape", det_shape), ("dtype", dtype)) if v is None]
    if missing:
        raise ReadError(f"{path}: a raw binary file needs {', '.join(missing)} "
                        "(scan_shape=(ny, nx), det_shape=(ky, kx), dtype='uint16', ...)")
    if byteorder not in ("<", ">", "little", "big"):
        raise ReadError(f"{path}: byteorder must be '<' or '>', got {byteorder!r}")
    order = {"little": "<", "big": ">"}.get(byteorder, byteorder)
    try:
        pixel = np.dtype(dtype).newbyteorder(order)
    except TypeError as exc:
        raise ReadError(f"{path}: unknown dtype {dtype!r}") from exc
    scan_shape = tuple(int(s) for s in scan_shape)
    det_shape = tuple(int(s) for s in det_shape)
    if len(scan_shape) != 2 or len(det_shape) != 2 or min(scan_shape + det_shape) < 1:
        raise ReadError(f"{path}: scan_shape and det_shape must be two positive integers each, "
                        f"got {scan_shape} and {det_shape}")
    if min(file_header_bytes, frame_header_bytes, frame_footer_bytes) < 0:
        raise ReadError(f"{path}: header and footer sizes must not be negative")
    record = np.dtype([("header", "u1", (frame_header_bytes,)), ("frame", pixel, det_shape),
                       ("footer", "u1", (frame_footer_bytes,))])
    n = scan_shape[0] * scan_shape[1]
    expected = file_header_bytes + n * record.itemsize
    actual = os.path.getsize(path)
    if actual != expected:
        raise ReadError(
            f"{path}: file size {actual} bytes does not match the given layout: {file_header_bytes} + "
            f"{n} frames × {record.itemsize} bytes = {expected} bytes "
            f"(scan {scan_shape}, detector {det_shape}, {np.dtype(dtype).name}, "
            f"header/footer {frame_header_bytes}/{frame_footer_bytes} bytes)"
        )
    frames = MemmapSource(path, record, scan_shape, file_header_bytes, field="frame")
    metadata = {"raw_layout": {"dtype": np.dtype(dtype).name, "byteorder": order,
                               "file_header_bytes": file_header_bytes,
                               "frame_header_bytes": frame_header_bytes,
                               "frame_footer_bytes": frame_footer_bytes}}
    return finish(frames, path, Calibration(), metadata, None, chunks, "raw")


