"""napari-4dstem-rvae: 4D-STEM reading, cleaning, centre of mass and rotationally
invariant VAE maps, in napari and headless.

The import is light: numpy only. Readers, processing, torch and napari parts load on
first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .dataset import Calibration, Dataset4D

try:  # pragma: no cover - set by the build
    from importlib.metadata import version as _version

    __version__ = _version("napari-4dstem-rvae")
except Exception:  # pragma: no cover
    __version__ = "0.0.0"

# name -> module that defines it; imported the first time it is asked for.
_LAZY = {
    "read": ".io",
    "ReadError": ".io",
    "compute_com": ".processing",
    "simulate": ".simulate",
    "io": ".io",
    "processing": ".processing",
    "rvae": ".rvae",
    "atoms": ".atoms",
    "workflows": ".workflows",
}

__all__ = ["Calibration", "Dataset4D", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = import_module(_LAZY[name], __name__)
        value = module if name == _LAZY[name].lstrip(".") else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
