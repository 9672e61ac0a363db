"""Image series (frames, y, x): atom-resolved STEM movies and single images.

The second kind of data the package serves (Kalinin et al., Sci. Adv. 7, eabd5084, 2021:
rVAE on windows around atoms of a HAADF-STEM movie). Kept apart from :class:`Dataset4D`:
the axes mean other things, and nothing here is a diffraction pattern.

Nothing here imports torch, Qt or napari.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .units import length_unit


@dataclass
class ImageSeries:
    """A stack of images ``(frames, y, x)``; a single image is one frame.

    Attributes
    ----------
    data
        numpy or dask array ``(frames, y, x)`` (real numbers).
    pixel_size
        Size of one pixel in ``unit`` (square pixels), or ``None`` when the file does not say.
    unit
        ``"Å"``, ``"nm"``, ... or ``None``.
    frame_time
        Seconds between frames, or ``None``.
    source
        The file read (or a description).
    metadata, provenance
        What the reader found; the steps applied, as for :class:`Dataset4D`.
    """

    data: Any
    pixel_size: float | None = None
    unit: str | None = None
    frame_time: float | None = None
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    provenance: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.data.shape)
        if len(shape) == 2:
            self.data = self.data[None]
            shape = (1, *shape)
        if len(shape) != 3:
            raise ValueError(f"an image series has axes (frames, y, x); got shape {shape}")
        if 0 in shape:
            raise ValueError(f"the image series is empty (shape {shape})")
        if np.dtype(self.data.dtype).kind not in "uif":
            raise ValueError(f"an image series holds real numbers; got {self.data.dtype}")
        if self.pixel_size is not None:
            size = float(self.pixel_size)
            if not (np.isfinite(size) and size > 0):
                raise ValueError(f"pixel_size must be a positive number, got {self.pixel_size!r}")
            self.pixel_size = size
        if self.unit is not None:
            self.unit = length_unit(self.unit) or self.unit
        if self.frame_time is not None and not (np.isfinite(self.frame_time) and self.frame_time > 0):
            self.frame_time = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)

    @property
    def n_frames(self) -> int:
        return self.shape[0]

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.shape[1:]

    @property
    def pixel_size_angstrom(self) -> float | None:
        """The pixel size in Å, if it is known in a length unit."""
        from .units import length_factor

        if self.pixel_size is None or self.unit is None:
            return None
        factor = length_factor(self.unit, "Å")
        return None if factor is None else self.pixel_size * factor

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` as float32 numpy."""
        if not 0 <= index < self.n_frames:
            raise IndexError(f"frame {index} is outside the series of {self.n_frames} frames")
        value = self.data[int(index)]
        if hasattr(value, "compute"):
            value = value.compute()
        return np.asarray(value, dtype=np.float32)

    def replace(self, **changes: Any) -> ImageSeries:
        return dataclasses.replace(self, **changes)

    @property
    def name(self) -> str:
        import os

        if self.source:
            return os.path.basename(os.path.normpath(str(self.source)))
        return "image series"
