"""Processing: pure functions on 4D-STEM data, numpy or dask in, numpy or dask out.

- :mod:`.engine` — the one-pass reduction (patterns × a stack of masks) over numpy,
  lazy dask and dask.distributed (its drivers in :mod:`.drivers`, the compiled loop in
  :mod:`.kernels`); :mod:`.sampling` — blocks of patterns and the sampled mean pattern.
- :mod:`.virtual` — virtual detectors (bright field, annular dark field, any annulus) and
  the one rule for the default real-space image.
- :mod:`.com` — centre of mass / DPC (its masks in :mod:`.com_moments`, the reference
  correction in :mod:`.com_reference`); :mod:`.field` — divergence, curl and the exact
  scan-rotation calibration.
- :mod:`.preprocess` — crop, bin, mean-pattern subtraction, intensity transforms,
  bad-pixel repair; :mod:`.centring` — direct-beam centring; :mod:`.denoise` — PCA.
- :mod:`.chain` — :class:`PreprocessOptions` and the chain in the order a microscopist
  applies it; the data prepared for the rVAE.

Axes are ``(scan_y, scan_x, det_y, det_x)``; detector positions are ``(row, col)`` pixels.
Only numpy is imported here; dask, scipy and scikit-learn load inside the functions that
need them. Nothing here writes files or draws figures (that is :mod:`napari_4dstem_rvae.results`).
"""

from __future__ import annotations

from .centring import (
    center_patterns,
    find_beam_centers,
    fit_descan_plane,
    shift_pattern,
)
from .chain import PreprocessOptions, detector_bin_factor, prepare_for_rvae, preprocess
from .com import COMOptions, COMResult, compute_com
from .com_moments import com_masks
from .denoise import pca_denoise
from .engine import MaskStack, reduce_masks
from .field import (
    RotationCalibration,
    calibrate_rotation,
    divergence_curl,
    rotate_field,
)
from .preprocess import (
    bin_data,
    crop,
    find_bad_pixels,
    repair_bad_pixels,
    subtract_mean_pattern,
    transform_intensity,
)
from .sampling import sample_mean_pattern
from .virtual import (
    ADF_INNER_BF,
    DiskGeometry,
    VirtualDetector,
    annular_dark_field,
    annulus,
    annulus_mask,
    bright_field,
    default_image_detector,
    detector_geometry,
    disk,
    disk_mask,
    find_disk,
    virtual_images,
)

__all__ = [
    "ADF_INNER_BF", "COMOptions", "COMResult", "DiskGeometry", "MaskStack", "PreprocessOptions", "RotationCalibration",
    "VirtualDetector", "annular_dark_field", "annulus", "annulus_mask", "bin_data", "bright_field",
    "calibrate_rotation", "center_patterns", "com_masks", "compute_com", "crop", "default_image_detector",
    "detector_bin_factor", "detector_geometry", "disk", "disk_mask", "divergence_curl", "find_bad_pixels",
    "find_beam_centers", "find_disk", "fit_descan_plane", "pca_denoise", "prepare_for_rvae", "preprocess",
    "reduce_masks", "repair_bad_pixels", "rotate_field", "sample_mean_pattern", "shift_pattern",
    "subtract_mean_pattern", "transform_intensity", "virtual_images",
]
