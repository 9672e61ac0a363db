"""Dock fields built from the options objects of the core (``Calibration``, ``COMOptions``,
``PreprocessOptions``, ``RVAEConfig``, ``AtomOptions``, ``RunOptions``): the label, tooltip,
default, bounds, unit and allowed values of every field come from the option's description
(:func:`napari_4dstem_rvae.workflows.option_specs`), the same the CLI's flags come from.

Optional numbers show 0 for ``None``, labelled "(0: auto)" (the tooltip says what auto is,
e.g. "about 2,400 optimisation steps"); optional choices show ``"none"``; a tuple option is
a row of number fields, one per part (``None`` when every part is at its lowest value).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, LineEdit, SpinBox

from ..workflows import option_specs

NONE_TEXT = "none"


def _zero_means(spec: Any) -> str | None:
    """What 0 stands for in an optional number field (``None``: the option's ``none`` text)."""
    if spec.optional and spec.describe.none and spec.describe.choices is None and spec.type in (int, float):
        return spec.describe.none
    return None


def _label(spec: Any) -> str:
    # short: a long label widens the dock's label column past a laptop's dock width
    return spec.label + (" (0: auto)" if _zero_means(spec) is not None else "")


def _number(kind: type, spec: Any, value: float, label: str, name: str) -> Any:
    d = spec.describe
    common: dict[str, Any] = {"label": label, "name": name, "tooltip": d.help}
    if kind is int:
        return SpinBox(value=int(value), min=int(d.minimum if d.minimum is not None else 0),
                       max=int(d.maximum if d.maximum is not None else 2**31 - 1), **common)
    widget = FloatSpinBox(value=float(value), min=d.minimum if d.minimum is not None else 0.0,
                          max=d.maximum if d.maximum is not None else 1e9, step=d.step or 0.1, **common)
    if d.decimals is not None:
        widget.native.setDecimals(d.decimals)
    return widget


class TupleField(Container):
    """A tuple option as one number field per part; ``value`` is the tuple, or ``None`` when
    every part is at its lowest value (not given)."""

    def __init__(self, spec: Any, kind: type = float):
        self.spec = spec
        d = spec.describe
        self.parts = [_number(kind, spec, d.minimum or 0, f"{spec.label} {p}" if len(p) < 4 else p,
                              f"{spec.name}_{p.split()[-1] if len(p) < 4 else '_'.join(p.split())}")
                      for p in d.parts]
        super().__init__(widgets=self.parts, labels=True, name=spec.name)
        self.margins = (0, 0, 0, 0)
        if spec.default is not None:
            self.value = spec.default

    @property
    def value(self) -> Any:
        values = tuple(w.value for w in self.parts)
        lowest = self.spec.describe.minimum or 0
        if self.spec.optional and all(v <= lowest for v in values):
            return None
        return values

    @value.setter
    def value(self, values: Any) -> None:
        if values is None:
            values = (self.spec.describe.minimum or 0,) * len(self.parts)
        elif not isinstance(values, (tuple, list)):
            values = (values,) * len(self.parts)
        for widget, v in zip(self.parts, values):
            widget.value = v


def option_field(cls: type, name: str, label: str | None = None, **overrides: Any) -> Any:
    """The widget of option ``name`` of ``cls``, set to its default (``label`` and describe
    fields such as ``tooltip``/``maximum`` may be overridden for the dock's wording)."""
    spec = option_specs(cls)[name]
    if overrides.get("tooltip") is None:
        overrides.pop("tooltip", None)
    d = dataclasses.replace(spec.describe, **{k: v for k, v in overrides.items() if k != "tooltip"})
    spec = dataclasses.replace(spec, describe=d)
    text = label or _label(spec)
    tooltip = overrides.get("tooltip") or d.help
    choices = spec.choice_map
    if choices is not None:
        return ComboBox(choices=list(choices), value=spec.text_of(spec.default), label=text, name=name,
                        tooltip=tooltip)
    if d.parts:
        base = spec.type[0] if isinstance(spec.type, list) else spec.type
        args = [a for a in typing.get_args(base) if a is not Ellipsis]
        return TupleField(spec, int if args and args[0] is int else float)
    if spec.type is bool:
        return CheckBox(value=bool(spec.default), label=text, name=name, tooltip=tooltip)
    if spec.type in (int, float):
        default = spec.default
        value = 0 if default is None or (isinstance(default, float) and math.isinf(default)) else default
        widget = _number(spec.type, spec, value, text, name)
        zero = _zero_means(spec)
        widget.tooltip = tooltip if zero is None else f"{tooltip} (0, auto: {zero})"
        return widget
    if spec.type is str or (isinstance(spec.type, list) and d.parse is not None):
        # text, or a value of several kinds typed as text (rotation: "auto" or degrees)
        return LineEdit(value=spec.text_of(spec.default) if spec.default is not None else "", label=text,
                        name=name, tooltip=tooltip)
    raise TypeError(f"{cls.__name__}.{name}: no field for type {spec.type!r}")


def field_value(cls: type, widget: Any) -> Any:
    """The value of a field as the options object expects it (choice texts to values, 0 to
    ``None`` for optional numbers, an empty text to ``None``)."""
    spec = option_specs(cls)[widget.name]
    value = widget.value
    choices = spec.choice_map
    if choices is not None:
        return choices.get(value, value)
    if isinstance(widget, TupleField):
        return value
    if spec.optional and isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
        return None
    if spec.optional and value == "":
        return None
    if isinstance(widget, LineEdit) and spec.describe.parse is not None:
        try:
            return spec.describe.parse(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{spec.label}: {exc}") from None
    return value


def show_value(cls: type, widget: Any, value: Any) -> None:
    """Show ``value`` of the option in its field (the inverse of :func:`field_value`)."""
    spec = option_specs(cls)[widget.name]
    if spec.choice_map is not None:
        widget.value = spec.text_of(value)
    elif isinstance(widget, TupleField):
        widget.value = value
    elif value is None:
        widget.value = "" if isinstance(widget, LineEdit) else 0
    else:
        widget.value = value


def options_from(cls: type, widgets: list, base: Any = None, **changes: Any) -> Any:
    """An instance of ``cls`` (or ``base`` replaced) with the values of the field ``widgets``."""
    values = {w.name: field_value(cls, w) for w in widgets}
    values.update(changes)
    return dataclasses.replace(base, **values) if base is not None else cls(**values)


class OptionForm(Container):
    """Every option of ``cls`` the docks offer (or those named in ``only``), as fields: the plain
    ones here, the advanced ones in :attr:`advanced` (a container the dock places, e.g. in a
    collapsible section). Each field is also an attribute of the form by the option's name."""

    def __init__(self, cls: type, only: Any = None, skip: Any = (), labels: dict | None = None):
        super().__init__(labels=True)
        self.cls = cls
        self.margins = (0, 0, 0, 0)
        self.advanced = Container(labels=True)
        self.advanced.margins = (0, 0, 0, 0)
        self.fields: list = []
        for name, spec in option_specs(cls, "gui").items():
            if (only is not None and name not in only) or name in skip:
                continue
            widget = option_field(cls, name, (labels or {}).get(name))
            (self.advanced if spec.describe.advanced else self).append(widget)
            self.fields.append(widget)
            if spec.describe.advanced:  # the form's own fields are found by name already (magicgui)
                setattr(self, name, widget)
            for part in getattr(widget, "parts", ()):
                setattr(self, part.name, part)

    def values(self) -> dict[str, Any]:
        """``{name: value}`` of every field, as the options object expects them."""
        return {w.name: field_value(self.cls, w) for w in self.fields}

    def options(self, base: Any = None, **changes: Any) -> Any:
        """The options object the form describes (``base`` with these fields replaced)."""
        return options_from(self.cls, self.fields, base, **changes)

    def show(self, options: Any) -> None:
        """Fill the fields from an options object."""
        for widget in self.fields:
            show_value(self.cls, widget, getattr(options, widget.name))
