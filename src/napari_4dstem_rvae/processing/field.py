"""The COM vector field over the scan: divergence and curl, rotation from the detector frame to
the scan frame, and the exact calibration of the scan rotation by curl minimisation.

The conventions (frames, sign of θ, the 180° ambiguity) are those of :mod:`.com`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np


def _derivative(values: np.ndarray, axis: int, spacing: float, order: int = 2) -> np.ndarray:
    """d/d(axis): central differences (one-sided at the edges); with ``order=4`` the
    fourth-order stencil (−f₊₂ + 8f₊₁ − 8f₋₁ + f₋₂)/12h where five samples are available."""
    if values.shape[axis] < 2:
        return np.zeros_like(values, dtype=np.float64)
    f = np.moveaxis(values.astype(np.float64, copy=False), axis, 0)
    out = np.empty(f.shape)  # written along the same moved axis, returned moved back
    out[1:-1] = (f[2:] - f[:-2]) / (2 * spacing)
    out[0] = (f[1] - f[0]) / spacing
    out[-1] = (f[-1] - f[-2]) / spacing
    if order == 4 and f.shape[0] >= 5:
        out[2:-2] = (-f[4:] + 8 * f[3:-1] - 8 * f[1:-3] + f[:-4]) / (12 * spacing)
    return np.moveaxis(out, 0, axis)


def _div_curl(fy: np.ndarray, fx: np.ndarray, spacing: tuple[float, float],
              order: int = 2) -> tuple[np.ndarray, np.ndarray]:
    sy, sx = float(spacing[0]), float(spacing[1])
    div = _derivative(fx, 1, sx, order) + _derivative(fy, 0, sy, order)
    curl = _derivative(fy, 1, sx, order) - _derivative(fx, 0, sy, order)
    return div, curl


def divergence_curl(field_y: Any, field_x: Any,
                    spacing: tuple[float, float] = (1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Divergence and curl of a 2D vector field sampled on the scan.

    Parameters
    ----------
    field_y, field_x
        ``(scan_y, scan_x)`` components along the scan's y (rows) and x (columns).
    spacing
        ``(step_y, step_x)`` between probe positions.

    Returns
    -------
    ``(div, curl)``: ``∂x fx + ∂y fy`` and ``∂x fy − ∂y fx``, in field units per spacing
    unit. Central differences inside, one-sided at the edges; the derivative along an
    axis with a single sample is 0.
    """
    fy = np.asarray(field_y, dtype=np.float64)
    fx = np.asarray(field_x, dtype=np.float64)
    if fy.shape != fx.shape or fy.ndim != 2:
        raise ValueError(
            f"field_y and field_x must be 2D (scan_y, scan_x) arrays of one shape, got "
            f"{fy.shape} and {fx.shape}"
        )
    return _div_curl(fy, fx, spacing)


def rotate_field(field_y: Any, field_x: Any, rotation_deg: float,
                 flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Detector-frame shifts → scan frame: ``v = R(θ)·F·d`` (see the module conventions).

    Returns ``(vy, vx)``.
    """
    dy = np.asarray(field_y, dtype=np.float64)
    dx = np.asarray(field_x, dtype=np.float64)
    if flip:
        dy = -dy
    theta = math.radians(float(rotation_deg))
    c, s = math.cos(theta), math.sin(theta)
    return s * dx + c * dy, c * dx - s * dy


@dataclass(frozen=True)
class RotationCalibration:
    """Result of :func:`calibrate_rotation`.

    Attributes
    ----------
    rotation_deg
        θ in degrees, in (−180, 180].
    flip
        Whether the detector row component is negated before rotating.
    residual
        Fraction of the field's derivative power left in the curl after the rotation,
        λ_min / trace(M), in [0, 1] (0 for a perfect gradient field); NaN when undetermined.
    residual_other_flip
        The same for the other flip (compare with ``residual`` to judge the choice).
    polarity_from
        What settled the 180° ambiguity: ``"image"`` (ADF or the given image),
        ``"skewness"``, or ``"none"``.
    n_positions
        Probe positions whose derivatives entered the fit.
    """

    rotation_deg: float
    flip: bool
    residual: float
    residual_other_flip: float
    polarity_from: str
    n_positions: int = 0

    @property
    def problem(self) -> str | None:
        """Why this calibration cannot be trusted, in words, or ``None``: fewer than
        :data:`MIN_POSITIONS` positions inside the scan, or a field that stays far from
        curl-free at its best rotation (residual ≥ :data:`MAX_RESIDUAL`; a field of pure noise
        gives ≈ 0.5: too little signal)."""
        if math.isnan(self.residual):
            return "the COM field has no spatial variation"
        if self.n_positions < MIN_POSITIONS:
            return f"only {self.n_positions} probe positions inside the scan (at least {MIN_POSITIONS} needed)"
        if self.residual >= MAX_RESIDUAL:
            return (f"{100 * self.residual:.0f}% of the field's variation stays in the curl at the best "
                    "rotation: too little signal over the noise")
        return None


#: Interior probe positions needed to trust an automatic rotation.
MIN_POSITIONS = 36
#: Curl fraction at the best rotation above which the automatic rotation is not trusted.
MAX_RESIDUAL = 0.4


def _eigen_rotation(dy: np.ndarray, dx: np.ndarray, spacing: tuple[float, float],
                    weights: np.ndarray) -> tuple[float, float]:
    """(θ mod 180° in radians, residual fraction) minimising Σ w·curl′².

    Fourth-order differences: the discretisation error of the curl of a sampled gradient
    correlates with its divergence and biases θ; the higher order cuts that bias ~5×."""
    div, curl = _div_curl(dy, dx, spacing, order=4)
    return _eigen_from(div, curl, weights)


def _eigen_from(div: np.ndarray, curl: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """:func:`_eigen_rotation` from the field's divergence and curl."""
    m = np.array([[np.sum(weights * curl * curl), np.sum(weights * curl * div)],
                  [np.sum(weights * curl * div), np.sum(weights * div * div)]])
    trace = float(np.trace(m))
    if not trace > 0:
        return 0.0, math.nan
    values, vectors = np.linalg.eigh(m)
    c, s = vectors[:, 0]
    return math.atan2(s, c), max(0.0, float(values[0])) / trace


def _skewness(values: np.ndarray) -> float:
    centred = values - values.mean()
    spread = np.sqrt(np.mean(centred**2))
    return float(np.mean(centred**3) / spread**3) if spread > 0 else 0.0


def calibrate_rotation(
    field_y: Any,
    field_x: Any,
    *,
    spacing: tuple[float, float] = (1.0, 1.0),
    flip: bool | str = "auto",
    sign_from: Any = None,
    valid: Any = None,
) -> RotationCalibration:
    """Scan-to-detector rotation (and flip) that makes the COM field curl-free.

    Parameters
    ----------
    field_y, field_x
        Detector-frame COM shifts ``(scan_y, scan_x)`` after reference correction.
    spacing
        ``(step_y, step_x)`` of the scan (only the ratio matters).
    flip
        ``"auto"`` (the flip with the smaller residual curl), ``True`` or ``False``.
    sign_from
        ``(scan_y, scan_x)`` image bright at atom columns (ADF) used to pick between θ
        and θ + 180°: the divergence of the rotated field must anti-correlate with it.
        ``None``: the divergence must have negative skewness.
    valid
        Boolean ``(scan_y, scan_x)``: positions to use (others, and their neighbours,
        are ignored).

    Returns
    -------
    :class:`RotationCalibration`. A field without any spatial variation (e.g. a single
    probe position) leaves θ undetermined: θ = 0 with a warning and NaN residuals.
    """
    dy = np.asarray(field_y, dtype=np.float64)
    dx = np.asarray(field_x, dtype=np.float64)
    if dy.shape != dx.shape or dy.ndim != 2:
        raise ValueError(
            f"field_y and field_x must be 2D (scan_y, scan_x) of one shape, got {dy.shape}, {dx.shape}"
        )
    if flip not in ("auto", True, False):
        raise ValueError(f"flip must be 'auto', True or False, got {flip!r}")
    if not (np.all(np.isfinite(dy)) and np.all(np.isfinite(dx))):
        raise ValueError("field_y/field_x contain NaN or Inf; expected finite COM shifts")
    weights = np.ones(dy.shape)
    if valid is not None and not np.all(valid):
        from scipy import ndimage

        good = np.asarray(valid, dtype=bool)
        # Derivatives next to an invalid position use its (meaningless) zero shift.
        weights = ndimage.binary_erosion(good, np.ones((3, 3)), border_value=1).astype(float)
    candidates = [False, True] if flip == "auto" else [bool(flip)]
    # the four derivatives once for both flips (a flip negates dy: div and curl follow linearly)
    sy, sx = float(spacing[0]), float(spacing[1])
    dx_x, dy_y = _derivative(dx, 1, sx, 4), _derivative(dy, 0, sy, 4)
    dy_x, dx_y = _derivative(dy, 1, sx, 4), _derivative(dx, 0, sy, 4)
    fields = {False: (dx_x + dy_y, dy_x - dx_y), True: (dx_x - dy_y, -dy_x - dx_y)}  # (div, curl)
    fits = {f: _eigen_from(*fields[f], weights) for f in (False, True)}
    if all(math.isnan(fits[f][1]) for f in candidates):
        warnings.warn(
            "the COM field has no spatial variation (uniform field or a single probe "
            "position): the scan rotation cannot be calibrated; using 0°",
            stacklevel=2,
        )
        chosen = bool(candidates[0])
        return RotationCalibration(0.0, chosen, math.nan, math.nan, "none", int((weights > 0).sum()))
    chosen = min(candidates, key=lambda f: (math.inf if math.isnan(fits[f][1]) else fits[f][1]))
    theta, residual = fits[chosen]
    other = fits[not chosen][1]

    # the rotated field's divergence, from the same derivatives (div′ = cosθ·div − sinθ·curl)
    div = math.cos(theta) * fields[chosen][0] - math.sin(theta) * fields[chosen][1]
    use = weights > 0
    polarity_from = "none"
    if use.sum() >= 2:
        if sign_from is not None:
            image = np.asarray(sign_from, dtype=np.float64)
            if image.shape != dy.shape:
                raise ValueError(
                    f"sign_from image has shape {image.shape}, expected the scan shape {dy.shape}"
                )
            a = div[use] - div[use].mean()
            b = image[use] - image[use].mean()
            score = float(np.sum(a * b))
            if score != 0:
                polarity_from = "image"
                if score > 0:
                    theta += math.pi
        if polarity_from == "none":
            skew = _skewness(div[use])
            if skew != 0:
                polarity_from = "skewness"
                if skew > 0:
                    theta += math.pi
    degrees = math.degrees(theta)
    degrees = (degrees + 180.0) % 360.0 - 180.0
    if degrees <= -180.0:
        degrees += 360.0
    return RotationCalibration(degrees, chosen, residual, other, polarity_from, int(use.sum()))
