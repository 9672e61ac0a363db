"""The one unit table: every spelling of a unit this package reads or writes.

Readers see lengths and reciprocal lengths spelled in many ways (``"A"``, ``"Å"``,
``"[n_m]"``, ``"1/nm"``, ``"A^-1"`` …); writers must spell them the way each consumer
expects (napari/pint: ``"angstrom"``; EMD dim vectors: ``"A"``; ImageJ TIFF: ``"\\u00C5"``).
Everything about units goes through the functions here, from the canonical names:

- lengths (scan steps): ``"Å"``, ``"nm"``, ``"µm"``, ``"pm"``, ``"mm"``, ``"m"``;
- detector pixel sizes: ``"mrad"``, ``"1/Å"`` or ``"px"`` (uncalibrated).

No imports beyond the standard library.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any

#: Canonical length units -> (napari/pint name, EMD spelling, ImageJ spelling, metres).
LENGTHS: dict[str, tuple[str, str, str, float]] = {
    "pm": ("picometer", "pm", "pm", 1e-12),
    "Å": ("angstrom", "A", "\\u00C5", 1e-10),
    "nm": ("nanometer", "nm", "nm", 1e-9),
    "µm": ("micrometer", "um", "micron", 1e-6),
    "mm": ("millimeter", "mm", "mm", 1e-3),
    "m": ("meter", "m", "m", 1.0),
}

#: Detector units -> EMD spelling.
DETECTOR_UNITS: dict[str, str] = {"mrad": "mrad", "1/Å": "A^-1", "px": "pixels"}

_LENGTH_ALIASES = {
    "a": "Å", "å": "Å", "ang": "Å", "angstrom": "Å", "angstroms": "Å", "ångström": "Å",
    "nm": "nm", "nanometer": "nm", "nanometers": "nm", "nanometre": "nm",
    "um": "µm", "µm": "µm", "micron": "µm", "microns": "µm", "micrometer": "µm",
    "pm": "pm", "picometer": "pm", "mm": "mm", "millimeter": "mm", "m": "m", "meter": "m",
}
# reciprocal or angular unit -> (canonical, factor to the canonical unit)
_DETECTOR_ALIASES = {
    "mrad": ("mrad", 1.0), "milliradian": ("mrad", 1.0), "milliradians": ("mrad", 1.0),
    "rad": ("mrad", 1e3), "radian": ("mrad", 1e3), "radians": ("mrad", 1e3),
    "1/å": ("1/Å", 1.0), "1/a": ("1/Å", 1.0), "a^-1": ("1/Å", 1.0), "å^-1": ("1/Å", 1.0),
    "a-1": ("1/Å", 1.0), "å-1": ("1/Å", 1.0), "1/angstrom": ("1/Å", 1.0),
    "angstrom^-1": ("1/Å", 1.0),
    "1/nm": ("1/Å", 0.1), "nm^-1": ("1/Å", 0.1), "nm-1": ("1/Å", 0.1), "1/nanometer": ("1/Å", 0.1),
    "1/pm": ("1/Å", 100.0), "pm^-1": ("1/Å", 100.0),
    "1/m": ("1/Å", 1e-10), "m^-1": ("1/Å", 1e-10),
}
_PIXEL_ALIASES = ("px", "pixel", "pixels", "pix")


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def unit_key(unit: Any) -> str | None:
    """A unit string reduced to a lookup key: no brackets, spaces or underscores
    (RosettaSciIO's EMD writer spells 'nm' as '[n_m]'), Unicode normalised (Å sign
    U+212B, micro sign), lower case. ``None`` for anything that is not text."""
    u = _text(unit)
    if not isinstance(u, str):
        return None
    u = unicodedata.normalize("NFKC", u).strip().strip("[]").replace("_", "").replace(" ", "")
    return u.replace("μ", "µ").replace("**", "^").lower()


def length_unit(unit: Any) -> str | None:
    """The canonical length unit (``"Å"``, ``"nm"`` …) of a spelling; ``None`` for pixels,
    undefined or unknown units."""
    key = unit_key(unit)
    return _LENGTH_ALIASES.get(key) if key else None


def length_factor(unit: Any, to: Any = "Å") -> float | None:
    """The factor from length ``unit`` to ``to`` (``length_factor("nm") == 10``); ``None``
    when either is not a known length unit."""
    a, b = length_unit(unit), length_unit(to)
    if a is None or b is None:
        return None
    return LENGTHS[a][3] / LENGTHS[b][3]


def detector_unit(unit: Any, size: Any = 1.0) -> tuple[float | None, str | None]:
    """A detector pixel size in any angular or reciprocal unit, as ``(size, "mrad" | "1/Å")``;
    ``(None, None)`` when the unit is unknown or the size not a positive number."""
    key = unit_key(unit)
    try:
        value = float(size)
    except (TypeError, ValueError):
        return None, None
    if not key or not math.isfinite(value) or value <= 0 or key not in _DETECTOR_ALIASES:
        return None, None
    canonical, factor = _DETECTOR_ALIASES[key]
    return value * factor, canonical


def canonical_detector_unit(unit: Any) -> str | None:
    """``"mrad"``, ``"1/Å"`` or ``"px"`` for any spelling of them (a unit without a scale
    factor: ``"rad"`` is not accepted here); ``None`` when unknown."""
    if unit in DETECTOR_UNITS:
        return unit
    key = unit_key(unit)
    if key in _PIXEL_ALIASES:
        return "px"
    if key in _DETECTOR_ALIASES and _DETECTOR_ALIASES[key][1] == 1.0:
        return _DETECTOR_ALIASES[key][0]
    return None


def unit_kind(unit: Any) -> str | None:
    """``"real"`` for a length, ``"reciprocal"`` for a reciprocal length or an angle, else None."""
    if length_unit(unit):
        return "real"
    if detector_unit(unit)[1]:
        return "reciprocal"
    return None


def napari_unit(unit: str | None) -> str | None:
    """The name napari (pint) knows for a canonical length unit, else ``None``."""
    return LENGTHS[unit][0] if unit in LENGTHS else None


def from_napari_unit(name: Any) -> str | None:
    """The canonical length unit of a napari/pint unit name (``"angstrom"`` -> ``"Å"``)."""
    text = str(name) if name is not None else ""
    for canonical, (pint_name, *_rest) in LENGTHS.items():
        if text == pint_name:
            return canonical
    return length_unit(text)


def emd_unit(unit: str | None, detector: bool = False) -> str:
    """The spelling of a canonical unit in EMD dim vectors (``"pixels"`` when uncalibrated)."""
    if detector:
        return DETECTOR_UNITS.get(unit or "", "pixels")
    return LENGTHS[unit][1] if unit in LENGTHS else "pixels"


def imagej_unit(unit: str | None) -> str:
    """The spelling ImageJ reads from an ASCII TIFF description (``"pixel"`` when uncalibrated)."""
    return LENGTHS[unit][2] if unit in LENGTHS else "pixel"


def format_bytes(n: float) -> str:
    """A size for people: ``"512 B"``, ``"3.4 MiB"``, ``"1.07 GiB"``."""
    n = float(n)
    for name in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or name == "TiB":
            return f"{n:.0f} {name}" if name == "B" else f"{n:.3g} {name}"
        n /= 1024
    return f"{n:.3g} TiB"  # pragma: no cover


def parse_quantity(text: Any, what: str = "value") -> tuple[float, str | None]:
    """``"0.16Å"`` → (0.16, "Å"), ``"1.5 nm"`` → (1.5, "nm"), ``"40px"`` → (40.0, "px"),
    ``"0.5"`` → (0.5, None): a number and the canonical spelling of the unit that follows it
    (a length, a detector unit, or ``"px"``). A ValueError naming ``what`` otherwise."""
    import re

    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text), None
    match = re.fullmatch(r"\s*([-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)\s*(\S*)\s*", str(text))
    if not match:
        raise ValueError(f"{what} must be a number, optionally with a unit (e.g. 0.16Å), got {text!r}")
    value, spelled = float(match.group(1)), match.group(2)
    if not spelled:
        return value, None
    key = unit_key(spelled)
    if key in _PIXEL_ALIASES:
        return value, "px"
    unit = length_unit(spelled) or canonical_detector_unit(spelled)
    if unit is None:
        raise ValueError(f"{what}: unknown unit {spelled!r} in {text!r}; use Å, nm, pm, µm, mrad, 1/Å or px")
    return value, unit


def parse_length(text: Any, what: str = "--window") -> tuple[float, str]:
    """``"1.5nm"`` → (15.0, "Å"); ``"12A"``/``"12Å"`` → (12.0, "Å"); ``"40px"`` → (40.0, "px");
    a bare number is Å."""
    if isinstance(text, (int, float)):
        value, unit = float(text), "Å"
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-ZÅµ]*)\s*", str(text))
        if not match:
            raise ValueError(f"{what} must be a length such as 1.5nm, 12Å or 40px, got {text!r}")
        value, unit = float(match.group(1)), match.group(2) or "Å"
    if unit.lower() in ("px", "pixel", "pixels"):
        unit = "px"
    else:
        factor = length_factor(unit, "Å")
        if factor is None:
            raise ValueError(f"{what}: unknown unit {unit!r} in {text!r}; use Å, nm, pm or px")
        value, unit = value * factor, "Å"
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{what} must be positive, got {text!r}")
    return value, unit
