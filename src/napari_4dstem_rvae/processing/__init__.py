"""Processing: pure functions on 4D-STEM data, numpy or dask in, numpy or dask out.

- :mod:`.engine` — the one-pass reduction (patterns × a stack of masks) over numpy,
  lazy dask and dask.distributed.
- :mod:`.virtual` — virtual detectors (bright field, annular dark field, any annulus).
- :mod:`.com` — centre of mass / DPC, scan rotation calibration, divergence and curl,
  results writer.
- :mod:`.preprocess` — crop, bin, mean-pattern subtraction, intensity transforms,
  bad-pixel repair, direct-beam centring, PCA denoising.

Axes are ``(scan_y, scan_x, det_y, det_x)``; detector positions are ``(row, col)`` pixels.
Only numpy is imported here; dask, scipy, scikit-learn, h5py and matplotlib load inside
the functions that need them.
"""

from __future__ import annotations

from .com import (
    COMResult,
    RotationCalibration,
    calibrate_rotation,
    com_masks,
    compute_com,
    divergence_curl,
    rotate_field,
    write_com_results,
)
from .engine import MaskStack, reduce_masks, sample_mean_pattern
from .preprocess import (
    bin_data,
    center_patterns,
    crop,
    find_bad_pixels,
    find_beam_centers,
    fit_descan_plane,
    pca_denoise,
    repair_bad_pixels,
    shift_pattern,
    subtract_mean_pattern,
    transform_intensity,
)
from .virtual import (
    DiskGeometry,
    VirtualDetector,
    annular_dark_field,
    annulus,
    annulus_mask,
    bright_field,
    detector_geometry,
    disk,
    disk_mask,
    find_disk,
    virtual_images,
)

__all__ = [
    "COMResult", "DiskGeometry", "MaskStack", "RotationCalibration", "VirtualDetector",
    "annular_dark_field", "annulus", "annulus_mask", "bin_data", "bright_field",
    "calibrate_rotation", "center_patterns", "com_masks", "compute_com", "crop",
    "detector_geometry", "disk", "disk_mask", "divergence_curl", "find_bad_pixels",
    "find_beam_centers", "find_disk", "fit_descan_plane", "pca_denoise", "reduce_masks",
    "repair_bad_pixels", "rotate_field", "sample_mean_pattern", "shift_pattern",
    "subtract_mean_pattern", "transform_intensity", "virtual_images", "write_com_results",
]
