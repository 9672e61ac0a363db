"""The runs of the two studies, and the one public door of the core for the napari side.

- :class:`STEMRun` (+ :class:`RunOptions`): a 4D-STEM data set → COM → rVAE → maps
  (``stem-rvae run``, the Train tab);
- :class:`AtomRun` (+ :class:`AtomOptions`): an image series → atoms → windows → rVAE →
  per-atom table (``stem-rvae atoms``, the Atoms tab);
- :class:`COMRun`, :class:`ImageRun`: the COM/DPC maps and the overview images
  (``stem-rvae com``/``image``, the COM tab); :func:`demo_events` (``stem-rvae demo``).

Each run is a generator of the events of :mod:`.events` (:class:`Message`,
:class:`Progress`, :class:`Epoch`, :class:`Maps`, :class:`Done`) and owns its outputs.

The napari side imports the core only through this module (and :mod:`napari_4dstem_rvae.results`
and :mod:`~napari_4dstem_rvae.schema`); everything is loaded on first use, so importing it is
light.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# name -> module (relative to the package) that defines it
_PUBLIC = {
    # runs and their events
    "STEMRun": ".workflows.stem", "RunOptions": ".workflows.stem", "named_maps": ".workflows.stem",
    "load_roi": ".workflows.stem", "open_dataset": ".workflows.stem", "run": ".workflows.calls",
    "run_atoms": ".workflows.calls",
    "AtomRun": ".workflows.atoms", "AtomOptions": ".workflows.atoms", "AtomResult": ".workflows.atoms",
    "PRESETS": ".workflows.atoms", "RVAE_FIELDS": ".workflows.atoms", "analyse": ".workflows.atoms",
    "find": ".atoms.finding", "frame_histograms": ".atoms.baselines", "dynamics": ".atoms.dynamics", "parse_length": ".workflows.atoms",
    "COMRun": ".workflows.com", "ImageRun": ".workflows.com", "run_to_end": ".workflows.com",
    "demo_events": ".workflows.demo", "PreprocessRun": ".workflows.preprocessing", "QUICK_DEMO": ".workflows.demo",
    "Message": ".workflows.events", "Progress": ".workflows.events", "Epoch": ".workflows.events",
    "Maps": ".workflows.events", "Done": ".workflows.events", "relay": ".workflows.events",
    "reporting": ".workflows.events",
    "connect_scheduler": ".workflows.cluster", "describe_cluster": ".workflows.cluster",
    # data and reading
    "Dataset4D": ".dataset", "Calibration": ".dataset", "DETECTOR_UNITS": ".dataset",
    "ImageSeries": ".series",
    "read": ".io", "ReadError": ".io", "detect_format": ".io", "list_datasets": ".io",
    "read_series": ".io.series",
    # options and what the docks offer
    "option_specs": ".options", "OptionSpec": ".options",
    "COMOptions": ".processing.com", "MASKS": ".processing.com", "REFERENCES": ".processing.com",
    "compute_com": ".processing.com",
    "PreprocessOptions": ".processing.chain", "preprocess": ".processing.chain", "in_memory": ".processing.chain",
    "RVAE_DETECTOR_PIXELS": ".processing.chain", "BIN_METHODS": ".processing.chain",
    "NORMALISATIONS": ".processing.chain", "TRANSFORMS": ".processing.chain",
    "RADIUS_UNITS": ".processing.virtual", "radius_to_pixels": ".processing.virtual",
    "default_image_detector": ".processing.virtual", "ADF_INNER_BF": ".processing.virtual",
    "calibrated_disk": ".processing.virtual", "detector_geometry": ".processing",
    "annulus": ".processing", "virtual_images": ".processing", "sample_mean_pattern": ".processing",
    "reduce_masks": ".processing.engine", "iter_frame_blocks": ".processing.sampling",
    "RVAEConfig": ".rvae.config", "DEVICES": ".rvae.config", "LIKELIHOODS": ".rvae.config",
    "EPOCH_SELECTIONS": ".rvae.selection", "traverse": ".rvae",
    # sample data
    "graphene": ".simulate", "zns": ".simulate", "haadf_series": ".simulate.haadf",
    # units as napari names them
    "napari_unit": ".units", "from_napari_unit": ".units",
}
_RENAMED = {"describe_cluster": "describe"}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        module = import_module(_PUBLIC[name], "napari_4dstem_rvae")
        value = getattr(module, _RENAMED.get(name, name))
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
