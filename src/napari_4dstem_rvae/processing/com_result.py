"""The result of a COM pass: the shift maps in the scan frame, their divergence and curl, and
how they were made (:class:`COMResult`); conventions in :mod:`.com`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..dataset import Calibration
from .field import RotationCalibration
from .virtual import pixels_per_mrad


@dataclass(frozen=True, eq=False)
class COMResult:
    """Centre-of-mass maps over the scan. All maps are float64 ``(scan_y, scan_x)``.

    Attributes
    ----------
    y, x
        COM shift along the scan's y (rows) and x (columns), in detector pixels, after
        reference correction, flip and rotation (module docstring). ``x_mrad``/``y_mrad``
        give them in mrad when the detector is calibrated.
    divergence, curl
        Of (x, y) over the scan, in detector px per ``scan_unit`` (per probe step when the
        scan is uncalibrated).
    intensity
        Summed intensity inside the COM mask (data units).
    valid
        True where ``intensity > 0``; elsewhere the shift is 0.
    detector_y, detector_x
        Raw shift in the detector frame, relative to ``origin``, before reference
        correction (pixels).
    origin
        ``(row, col)`` on the detector from which the raw shift is measured.
    reference_y, reference_x
        The reference subtracted (detector frame, px; constant maps for "mean").
    rotation_deg, flip
        The scan-to-detector transformation used.
    rotation
        :class:`RotationCalibration` when the rotation was calibrated, else ``None``.
    reference
        How the reference was obtained: ``"none"``, ``"mean"``, ``"plane"`` or ``"vacuum"``.
    mask
        Description of the COM mask.
    calibration
        The data set's :class:`~napari_4dstem_rvae.dataset.Calibration` (or ``None``).
    virtual
        Virtual detector images computed in the same pass (e.g. ``"adf"``).
    """

    y: np.ndarray
    x: np.ndarray
    divergence: np.ndarray
    curl: np.ndarray
    intensity: np.ndarray
    valid: np.ndarray
    detector_y: np.ndarray
    detector_x: np.ndarray
    origin: tuple[float, float]
    reference_y: np.ndarray
    reference_x: np.ndarray
    rotation_deg: float
    flip: bool
    rotation: RotationCalibration | None = None
    reference: str = "none"
    mask: str = "whole detector"
    calibration: Calibration | None = None
    virtual: dict[str, np.ndarray] = field(default_factory=dict)

    unit = "px"

    @property
    def magnitude(self) -> np.ndarray:
        """√(x² + y²), detector pixels."""
        return np.hypot(self.x, self.y)

    @property
    def angle(self) -> np.ndarray:
        """atan2(y, x), radians in (−π, π], from +scan x towards +scan y."""
        return np.arctan2(self.y, self.x)

    @property
    def pixels_per_mrad(self) -> float | None:
        return pixels_per_mrad(self.calibration)

    def _mrad(self, values: np.ndarray) -> np.ndarray | None:
        scale = self.pixels_per_mrad
        return None if scale is None else values / scale

    @property
    def x_mrad(self) -> np.ndarray | None:
        """``x`` in mrad, or ``None`` when the detector has no angular calibration."""
        return self._mrad(self.x)

    @property
    def y_mrad(self) -> np.ndarray | None:
        """``y`` in mrad, or ``None`` when the detector has no angular calibration."""
        return self._mrad(self.y)

    @property
    def magnitude_mrad(self) -> np.ndarray | None:
        return self._mrad(self.magnitude)

    @property
    def scan_shape(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.x.shape)  # type: ignore[return-value]

    @property
    def map_unit(self) -> str:
        """Unit of the shift maps of :meth:`maps`: ``"mrad"`` when the detector has an angular
        calibration, else ``"px"``."""
        return "px" if self.pixels_per_mrad is None else "mrad"

    def maps(self) -> dict[str, np.ndarray]:
        """Every map by its schema name (:data:`napari_4dstem_rvae.schema.MAPS`): ``com_x``,
        ``com_y``, ``com_magnitude`` (in :attr:`map_unit`), ``com_angle`` (rad),
        ``com_divergence``, ``com_curl`` (:attr:`map_unit` per scan unit), ``com_intensity``,
        ``com_valid``; then the virtual images by their names."""
        scale = 1.0 if self.pixels_per_mrad is None else 1.0 / self.pixels_per_mrad
        out = {
            "com_x": self.x * scale, "com_y": self.y * scale, "com_magnitude": self.magnitude * scale,
            "com_angle": self.angle, "com_divergence": self.divergence * scale,
            "com_curl": self.curl * scale, "com_intensity": self.intensity,
            "com_valid": self.valid,
        }
        out.update(self.virtual)
        return out

    def attributes(self) -> dict[str, Any]:
        """How the maps were made, as plain values (for results files and layer metadata)."""
        out: dict[str, Any] = {
            "rotation_deg": float(self.rotation_deg), "flip": bool(self.flip),
            "rotation_calibrated": self.rotation is not None, "reference": self.reference,
            "mask": self.mask, "origin_px": [float(v) for v in self.origin], "unit": self.map_unit,
            "conventions": ("v = R(rotation)·F·d, F = diag(1,-1) if flip; x = columns, y = rows; "
                            "angle = atan2(y, x); COM points towards atoms (div < 0 at atom columns)"),
        }
        if self.rotation is not None:
            out.update(rotation_residual=float(self.rotation.residual),
                       rotation_residual_other_flip=float(self.rotation.residual_other_flip),
                       polarity_from=self.rotation.polarity_from,
                       rotation_found_deg=float(self.rotation.rotation_deg),
                       rotation_problem=self.rotation.problem or "")
        return out
