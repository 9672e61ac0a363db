"""The data model shared by every stage: a lazy 4D array plus its calibration.

Axes are always ``(scan_y, scan_x, det_y, det_x)``. ``data`` is a dask array for
anything read from disk (nothing is loaded until a computation asks for it) and
may be a plain numpy array for small, in-memory data (simulations, tests).

Nothing here imports torch, Qt or napari.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .options import option
from .units import canonical_detector_unit, length_unit, parse_quantity

#: Units accepted for the detector pixel size.
DETECTOR_UNITS = ("mrad", "1/Å", "px")


def plain_fields(obj: Any) -> dict[str, Any]:
    """A dataclass's fields as plain values (lists for tuples): for JSON, HDF5 attributes and
    ``torch.load(weights_only=True)``."""
    out = dataclasses.asdict(obj)
    for key, value in out.items():
        if isinstance(value, tuple):
            out[key] = list(value)
    return out


def scan_mask(mask: Any, shape: tuple[int, int], name: str = "mask") -> np.ndarray | None:
    """A boolean mask over the probe positions (a training region): booleans or 0/1 values of
    ``shape``; anything else (a float mask of 0.5 everywhere, labels 0/2) is refused in one
    sentence naming ``name`` instead of being taken as "everywhere". ``None`` stays None."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise ValueError(f"{name} has shape {mask.shape}; expected the scan shape {tuple(shape)}")
    if mask.dtype != bool:
        values = np.unique(mask)
        if mask.dtype.kind not in "iuf" or not np.isin(values, (0, 1)).all():
            shown = ", ".join(f"{v:g}" for v in values[:4]) + (" …" if len(values) > 4 else "")
            raise ValueError(f"{name}: expected booleans or 0/1 values (the positions to use), found {mask.dtype} "
                             f"values {shown}; threshold it first, e.g. mask > 0.5")
        mask = mask.astype(bool)
    return mask


@dataclass(frozen=True)
class Calibration:
    """Physical calibration of a 4D-STEM data set.

    Every field is ``None`` when the source does not say: values are never invented.

    Attributes
    ----------
    scan_step
        Distance between neighbouring probe positions. A float (same in y and x) or a
        ``(step_y, step_x)`` tuple, in ``scan_unit``.
    scan_unit
        Unit of ``scan_step``, e.g. ``"Å"`` or ``"nm"``.
    det_pixel_size
        Angular (or reciprocal-space) size of one detector pixel, in ``det_unit``.
    det_unit
        ``"mrad"``, ``"1/Å"`` or ``"px"``.
    energy_kev
        Beam energy in keV.
    semiangle_mrad
        Probe convergence semi-angle in mrad.
    det_origin
        ``(row, col)`` of the direct beam (zero angle) on the detector, in pixels.
    scan_origin
        ``(y, x)`` of the first probe position, in ``scan_unit``.
    """

    scan_step: float | tuple[float, float] | None = option(
        None, "distance between neighbouring probe positions: one value, or STEP_Y STEP_X; a unit may follow "
        "the number (0.25Å, 0.02nm)", nargs="+", parse=lambda text: parse_quantity(text, "--scan-step"), parts=("y", "x"), none="not given", minimum=0.0, maximum=1e6,
        decimals=4, step=0.01, label="scan step")
    scan_unit: str | None = option(
        None, "unit of the scan step (A and um are read as Å and µm)", choices=(None, "Å", "nm", "pm", "µm"),
        parse=lambda text: length_unit(text) or text, label="scan unit")
    det_pixel_size: float | None = option(
        None, "angular size of one detector pixel, in the detector unit", none="not given", minimum=0.0,
        maximum=1e6, decimals=5, step=0.01, label="detector pixel")
    det_unit: str | None = option(
        None, "unit of the detector pixel size (1/A is read as 1/Å)", choices=(None, "mrad", "1/Å"),
        parse=lambda text: canonical_detector_unit(text) or text, label="detector unit")
    energy_kev: float | None = option(None, "beam energy", unit="keV", none="not given", minimum=0.0,
                                      maximum=1e4, decimals=1, label="beam energy")
    semiangle_mrad: float | None = option(None, "probe convergence semi-angle", unit="mrad", none="not given",
                                          minimum=0.0, maximum=1e3, decimals=2, label="semi-angle")
    det_origin: tuple[float, float] | None = option(
        None, "detector pixel of the direct beam (zero angle)", nargs=2, parts=("row", "col"), unit="px",
        none="not known", minimum=-1.0, maximum=1e5, decimals=2, label="direct beam")
    scan_origin: tuple[float, float] = option(
        (0.0, 0.0), "position of the first probe position, in the scan unit", nargs=2, parts=("y", "x"),
        minimum=-1e9, maximum=1e9, decimals=4, label="scan origin", advanced=True)

    def __post_init__(self) -> None:
        if self.det_unit is not None and self.det_unit not in DETECTOR_UNITS:
            canonical = canonical_detector_unit(self.det_unit)  # e.g. "A^-1", "pixels"
            if canonical is None:
                raise ValueError(
                    f"Calibration.det_unit must be one of {DETECTOR_UNITS}, got {self.det_unit!r}"
                )
            object.__setattr__(self, "det_unit", canonical)
        if self.scan_unit is not None and length_unit(self.scan_unit):
            object.__setattr__(self, "scan_unit", length_unit(self.scan_unit))  # "A" -> "Å"
        for name in ("det_pixel_size", "energy_kev", "semiangle_mrad"):
            value = getattr(self, name)
            if value is not None and not (np.isfinite(value) and value > 0):
                raise ValueError(f"Calibration.{name} must be a positive number, got {value!r}")
        step = self.scan_step
        if step is not None:
            steps = (step, step) if np.isscalar(step) else tuple(step)
            if len(steps) != 2 or not all(np.isfinite(s) and s > 0 for s in steps):
                raise ValueError(
                    f"Calibration.scan_step must be a positive number or a (y, x) pair, got {step!r}"
                )
            object.__setattr__(
                self, "scan_step", float(steps[0]) if steps[0] == steps[1] else
                (float(steps[0]), float(steps[1]))
            )

    @property
    def scan_step_yx(self) -> tuple[float, float]:
        """``(step_y, step_x)``; ``(1, 1)`` when the scan is not calibrated."""
        if self.scan_step is None:
            return (1.0, 1.0)
        if np.isscalar(self.scan_step):
            return (float(self.scan_step), float(self.scan_step))
        return tuple(float(s) for s in self.scan_step)  # type: ignore[return-value]

    @property
    def det_is_angular(self) -> bool:
        return self.det_pixel_size is not None and self.det_unit == "mrad"

    @property
    def wavelength_angstrom(self) -> float | None:
        """Relativistic electron wavelength in Å, from ``energy_kev``."""
        if self.energy_kev is None:
            return None
        return electron_wavelength_angstrom(self.energy_kev)

    def replace(self, **changes: Any) -> Calibration:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return plain_fields(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Calibration:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key not in known:
                continue
            if isinstance(value, (list, np.ndarray)):
                value = tuple(float(v) for v in value)
            elif isinstance(value, np.generic):
                value = value.item()
            if isinstance(value, bytes):
                value = value.decode()
            kwargs[key] = value
        return cls(**kwargs)


def electron_wavelength_angstrom(energy_kev: float) -> float:
    """Relativistic de Broglie wavelength of an electron, in Å.

    λ = h / sqrt(2 m0 e V (1 + e V / (2 m0 c²))), e.g. 0.0487 Å at 60 kV.
    """
    h = 6.62607015e-34
    m0 = 9.1093837015e-31
    e = 1.602176634e-19
    c = 299792458.0
    volts = energy_kev * 1e3
    momentum = np.sqrt(2 * m0 * e * volts * (1 + e * volts / (2 * m0 * c**2)))
    return float(h / momentum * 1e10)


@dataclass
class Dataset4D:
    """A 4D-STEM data set: ``data[scan_y, scan_x, det_y, det_x]`` with its calibration.

    Stages never modify a ``Dataset4D``; they return a new one (see :meth:`derive`)
    whose ``provenance`` lists the steps applied so far.
    """

    data: Any
    calibration: Calibration = field(default_factory=Calibration)
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    provenance: tuple[dict[str, Any], ...] = ()
    #: Optional array-like indexable as ``[y, x]`` that reads one frame straight from the
    #: file (an HDF5 dataset view, a memmap, a zarr array), so that showing a pattern does
    #: not read a whole dask chunk. Set by readers; dropped by :meth:`derive`.
    frame_source: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not hasattr(self.data, "shape") or not hasattr(self.data, "dtype"):
            self.data = np.asarray(self.data)
        if self.data.ndim != 4:
            where = f" in {self.source}" if self.source else ""
            raise ValueError(
                f"A 4D-STEM data set needs 4 axes (scan_y, scan_x, det_y, det_x); "
                f"the array{where} has {self.data.ndim} axes with shape {tuple(self.data.shape)}"
            )
        if 0 in self.data.shape:
            raise ValueError(f"The 4D array has an empty axis: shape {tuple(self.data.shape)}")

    # -- shape helpers -------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def scan_shape(self) -> tuple[int, int]:
        return self.shape[0], self.shape[1]

    @property
    def det_shape(self) -> tuple[int, int]:
        return self.shape[2], self.shape[3]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    @property
    def is_lazy(self) -> bool:
        return not isinstance(self.data, np.ndarray)

    @property
    def name(self) -> str:
        """A short name for layers and figures: ``metadata["name"]``, else the file name."""
        if self.metadata.get("name"):
            return str(self.metadata["name"])
        if self.source:
            import os

            return os.path.basename(os.path.normpath(str(self.source)))
        return "4D-STEM"

    # -- access --------------------------------------------------------------------
    def pattern(self, y: int, x: int) -> np.ndarray:
        """The diffraction pattern at probe position ``(y, x)`` (reads only that frame)."""
        ny, nx = self.scan_shape
        if not (0 <= y < ny and 0 <= x < nx):
            raise IndexError(f"probe position ({y}, {x}) is outside the scan of shape {(ny, nx)}")
        source = self.frame_source if self.frame_source is not None else self.data
        frame = source[int(y), int(x)]
        if hasattr(frame, "compute"):
            frame = frame.compute()
        return np.asarray(frame)

    def as_dask(self, chunks: Any = None):
        """The data as a dask array (wrapping numpy data without copying)."""
        import dask.array as da

        if isinstance(self.data, da.Array):
            return self.data if chunks is None else self.data.rechunk(chunks)
        if chunks is None:
            chunks = default_chunks(self.shape, self.dtype)
        return da.from_array(self.data, chunks=chunks)

    def derive(self, data: Any, step: str, calibration: Calibration | None = None,
               **parameters: Any) -> Dataset4D:
        """A new data set computed from this one, with ``step`` appended to the provenance."""
        entry = {"step": step, **{k: _plain(v) for k, v in parameters.items()}}
        return Dataset4D(
            data=data,
            calibration=self.calibration if calibration is None else calibration,
            metadata=dict(self.metadata),
            source=self.source,
            provenance=self.provenance + (entry,),
        )

    def __repr__(self) -> str:
        kind = "lazy" if self.is_lazy else "in memory"
        return (f"Dataset4D(shape={self.shape}, dtype={self.dtype}, {kind}, "
                f"source={self.source!r}, calibration={self.calibration})")


def default_chunks(shape: tuple[int, ...], dtype: Any, target_bytes: int = 64 * 2**20):
    """Chunks of whole patterns, whole scan rows where possible, about ``target_bytes`` each."""
    ny, nx, ky, kx = shape
    frame = ky * kx * np.dtype(dtype).itemsize
    frames = max(1, target_bytes // max(frame, 1))
    if frames >= nx:
        rows = max(1, min(ny, frames // nx))
        return (rows, nx, ky, kx)
    return (1, max(1, min(nx, frames)), ky, kx)


def _plain(value: Any) -> Any:
    """Provenance values as plain Python (JSON-friendly)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 64 else f"array{value.shape}"
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value
