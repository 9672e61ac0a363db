"""Widget fields built from the options objects of the core (``RVAEConfig``, ``COMOptions``,
``PreprocessOptions``): the default, the type and the allowed values of every field come from
the dataclass, so that defaults live in one place; the widget only chooses labels.

Optional numbers (``int | None``, ``float | None``) show ``0`` for ``None`` (say what 0 means
in the label, e.g. "epochs (0 = auto)"); optional strings show ``"none"``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, SpinBox

NONE_TEXT = "none"


def _base_type(hint: Any) -> tuple[type, bool]:
    """(type, optional) of a field's type hint (``float | None`` -> (float, True))."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if args:
        inner = [a for a in args if a is not type(None)]
        hint = inner[0] if len(inner) == 1 else Any
    return hint, optional


def option_field(cls: type, name: str, label: str | None = None, *, choices: Any = None,
                 minimum: float | None = None, maximum: float | None = None, step: float | None = None,
                 decimals: int | None = None, tooltip: str | None = None):
    """One magicgui widget for field ``name`` of dataclass ``cls``, set to its default.

    ``choices``: allowed values of a text field (``None`` allowed when the field is optional).
    """
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    hint, optional = _base_type(typing.get_type_hints(cls)[name])
    default = field.default
    label = label or name.replace("_", " ")
    common: dict[str, Any] = {"label": label, "name": name}
    if tooltip:
        common["tooltip"] = tooltip
    if choices is not None:
        values = [NONE_TEXT if c is None else c for c in choices]
        value = NONE_TEXT if default is None else default
        return ComboBox(choices=values, value=value, **common)
    if hint is bool:
        return CheckBox(value=bool(default), **common)
    if hint is int:
        value = 0 if default is None else int(default)
        return SpinBox(value=value, min=int(minimum if minimum is not None else 0),
                       max=int(maximum if maximum is not None else 2**31 - 1), **common)
    if hint is float:
        value = 0.0 if default is None or (isinstance(default, float) and math.isinf(default)) else float(default)
        widget = FloatSpinBox(value=value, min=minimum if minimum is not None else 0.0,
                              max=maximum if maximum is not None else 1e9, step=step or 0.1, **common)
        if decimals is not None:
            widget.native.setDecimals(decimals)
        return widget
    raise TypeError(f"{cls.__name__}.{name}: no widget for type {hint!r}; give choices=")


def field_value(cls: type, widget: Any) -> Any:
    """The value of a field widget as the dataclass expects it (0 / "none" -> ``None`` for
    optional fields)."""
    hint, optional = _base_type(typing.get_type_hints(cls)[widget.name])
    value = widget.value
    if value == NONE_TEXT:
        return None
    if optional and isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
        return None
    return value


def options_from(cls: type, widgets: list, base: Any = None, **changes: Any) -> Any:
    """An instance of ``cls`` (or ``base`` replaced) with the values of the field ``widgets``."""
    values = {w.name: field_value(cls, w) for w in widgets}
    values.update(changes)
    return dataclasses.replace(base, **values) if base is not None else cls(**values)
