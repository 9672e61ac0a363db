"""The preprocessing chain in the order a microscopist applies it, as one small frozen object
of options (:class:`PreprocessOptions`) shared by the API, the CLI and the Preprocess widget,
and the preparation of the data the rVAE trains on (:func:`prepare_for_rvae`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..dataset import Dataset4D, plain_fields
from ..options import option

#: Detector size the rVAE sees by default. The study binned patterns to 64 × 64; 32 × 32
#: keeps what the rotation and the COM need and quarters the counting noise per pixel
#: (benchmarks/bench_rvae_quality.py, simulated graphene, latent–COM |r| on seed 0, chosen
#: there and reported on other seeds: clean 0.993 → 0.998, 10⁵ e⁻ 0.943 → 0.964, 10⁴ e⁻
#: 0.28 → 0.73; 16 × 16 gave 0.76 at 10⁴ e⁻).
RVAE_DETECTOR_PIXELS = 32
#: Prepared data up to this size are computed into memory once (training reads them often).
IN_MEMORY_LIMIT = 4 * 2**30

TRANSFORMS = ("log1p", "sqrt")
NORMALISATIONS = ("pattern", "global")
BIN_METHODS = ("sum", "mean")


@dataclass(frozen=True)
class PreprocessOptions:
    """Every step of the preprocessing chain; the defaults change nothing.

    Attributes
    ----------
    crop_scan, crop_detector
        ``(row_from, row_to, col_from, col_to)`` kept, or ``None``.
    bin_scan, bin_detector
        Binning factors of the scan and of the detector.
    bin_method
        ``"sum"`` (counts stay counts) or ``"mean"``.
    repair_bad_pixels
        Find hot/dead pixels and replace them by their neighbours' mean.
    center
        Shift every pattern so that the direct beam sits at one position (descan plane).
    transform
        ``None``, ``"log1p"`` or ``"sqrt"`` of the intensities.
    normalize
        ``None``, ``"pattern"`` (each pattern to unit sum) or ``"global"`` (to [0, 1]).
    subtract_mean
        Subtract the mean pattern over the scan.
    pca_components
        Keep this many principal components (0: no PCA denoising).
    """

    crop_scan: tuple[int, int, int, int] | None = option(
        None, "scan positions kept: ROW_FROM ROW_TO COL_FROM COL_TO", nargs=4,
        parts=("scan rows from", "scan rows to", "scan cols from", "scan cols to"), none="the whole scan",
        minimum=0, maximum=1_000_000)
    crop_detector: tuple[int, int, int, int] | None = option(
        None, "detector pixels kept: ROW_FROM ROW_TO COL_FROM COL_TO", nargs=4,
        parts=("detector rows from", "detector rows to", "detector cols from", "detector cols to"),
        none="the whole detector", minimum=0, maximum=100_000)
    bin_scan: int = option(1, "binning factor of the scan", label="bin scan ×", minimum=1, maximum=64)
    bin_detector: int = option(1, "binning factor of the detector", label="bin detector ×", minimum=1, maximum=64)
    bin_method: str = option("sum", "sum (counts stay counts) or mean", choices=BIN_METHODS)
    repair_bad_pixels: bool = option(False, "find hot and dead pixels and replace them by their neighbours' mean",
                                     label="repair hot/dead pixels", flag="repair")
    center: bool = option(False, "shift every pattern so that the direct beam sits at one position (descan "
                          "plane)", label="centre the direct beam")
    transform: str | None = option(None, "intensity transform", choices=(None, *TRANSFORMS))
    normalize: str | None = option(None, "each pattern to unit sum (pattern) or the data to [0, 1] (global)",
                                   choices=(None, *NORMALISATIONS), label="normalise")
    subtract_mean: bool = option(False, "subtract the mean pattern over the scan", label="subtract mean pattern")
    pca_components: int = option(0, "keep this many principal components (0: no PCA denoising)",
                                 label="PCA components", flag="pca", minimum=0, maximum=4096)

    def __post_init__(self) -> None:
        for name in ("crop_scan", "crop_detector"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(int(v) for v in value))
        for name in ("bin_scan", "bin_detector"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"PreprocessOptions.{name} must be ≥ 1, got {getattr(self, name)!r}")
        if self.bin_method not in BIN_METHODS:
            raise ValueError(f"PreprocessOptions.bin_method must be one of {BIN_METHODS}, got {self.bin_method!r}")
        if self.transform not in (None, *TRANSFORMS):
            raise ValueError(f"PreprocessOptions.transform must be None or one of {TRANSFORMS}, "
                             f"got {self.transform!r}")
        if self.normalize not in (None, *NORMALISATIONS):
            raise ValueError(f"PreprocessOptions.normalize must be None or one of {NORMALISATIONS}, "
                             f"got {self.normalize!r}")
        if int(self.pca_components) < 0:
            raise ValueError(f"PreprocessOptions.pca_components must be ≥ 0, got {self.pca_components!r}")

    def replace(self, **changes: Any) -> PreprocessOptions:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return plain_fields(self)


def preprocess(dataset: Dataset4D, options: PreprocessOptions | None = None, *,
               mean_pattern: Any = None, **changes: Any) -> Dataset4D:
    """The chain crop → bin → bad-pixel repair → direct-beam centring (descan plane) →
    intensity transform → mean-pattern subtraction → PCA denoising.

    ``options`` (or single fields as keywords: ``preprocess(ds, bin_detector=4)``) says which
    steps run. Each step adds a provenance entry; the input is never modified. Lazy in, lazy
    out (PCA fits in memory or incrementally). ``mean_pattern``: a mean pattern to subtract
    instead of computing it (e.g. from a sample, for a quick preview).
    """
    from .centring import center_patterns
    from .denoise import pca_denoise
    from .preprocess import (
        bin_data,
        crop,
        repair_bad_pixels,
        subtract_mean_pattern,
        transform_intensity,
    )

    opts = (options or PreprocessOptions()).replace(**changes) if changes else (options or PreprocessOptions())
    ds = dataset
    if opts.crop_scan is not None or opts.crop_detector is not None:
        ds = crop(ds, scan=opts.crop_scan, detector=opts.crop_detector)
    if opts.bin_scan != 1 or opts.bin_detector != 1:
        ds = bin_data(ds, scan=opts.bin_scan, detector=opts.bin_detector, method=opts.bin_method)
    if opts.repair_bad_pixels:
        ds = repair_bad_pixels(ds)
    if opts.center:
        ds = center_patterns(ds, fit="plane")
    if opts.transform or opts.normalize:
        ds = transform_intensity(ds, function=opts.transform, normalize=opts.normalize)
    if opts.subtract_mean:
        ds = subtract_mean_pattern(ds, mean_pattern=mean_pattern)
    if opts.pca_components:
        ds = pca_denoise(ds, int(opts.pca_components))
    return ds


def detector_bin_factor(det_shape: tuple[int, int], target: int | None) -> int:
    """Whole binning factor that brings the detector to about ``target`` pixels (≥ target);
    1 for ``None``/0 (no binning)."""
    if not target:
        return 1
    if target < 1:
        raise ValueError(f"the detector size after binning must be a positive number of pixels, got {target}")
    return max(1, min(det_shape) // int(target))


def in_memory(dataset: Dataset4D, limit: int = IN_MEMORY_LIMIT) -> Dataset4D:
    """Lazy data up to ``limit`` bytes computed into memory once (later stages read them often)."""
    if dataset.is_lazy and dataset.nbytes <= limit:
        return dataclasses.replace(dataset, data=np.asarray(dataset.data.compute()), frame_source=None)
    return dataset


def prepare_for_rvae(dataset: Dataset4D, detector_pixels: int | None = RVAE_DETECTOR_PIXELS,
                     subtract_mean: bool = False, limit: int = IN_MEMORY_LIMIT) -> Dataset4D:
    """The data the rVAE trains on: as in the study, the detector binned to about
    ``detector_pixels`` (``None``: as it is; summed, so counts stay counts); computed into
    memory when it fits (≤ ``limit`` bytes), so that training does not re-read the file every
    epoch (larger data stay lazy; a run writes them once to a store, see
    :class:`napari_4dstem_rvae.workflows.STEMRun`). The rVAE centres its input on the mean
    pattern itself (``subtract_mean`` does it here, for models of version 0.1)."""
    factor = detector_bin_factor(dataset.det_shape, detector_pixels)
    ds = preprocess(dataset, bin_detector=factor, subtract_mean=subtract_mean)
    return in_memory(ds, limit)
