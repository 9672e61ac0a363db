"""Options objects that describe themselves, so that every door builds its fields from them.

An options object (:class:`~napari_4dstem_rvae.dataset.Calibration`, ``COMOptions``,
``PreprocessOptions``, ``RVAEConfig``, ``AtomOptions``, ``RunOptions``) is a frozen dataclass
whose user-facing fields are declared with :func:`option`: the default once, and beside it
what a person needs to set it — a sentence of help, a short label, the unit, the allowed
values, bounds, what ``None`` means. The CLI (``stem-rvae``) turns these into arguments and
the napari docks into widgets (:func:`option_specs` is all either reads), so a default, a
choice or a unit exists in one place whichever door the user comes in by.

Fields declared without :func:`option` are API-only (expert settings, internal state).

Only the standard library here; every stage may use it.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Callable

_KEY = "napari_4dstem_rvae_option"


@dataclass(frozen=True)
class Describe:
    """What a person needs to set one option.

    Attributes
    ----------
    help
        One sentence (CLI help, dock tooltip).
    label
        Short label of the dock's field (default: the name with spaces).
    flag
        The CLI flag without dashes (default: the name with hyphens).
    unit
        Unit of the value, shown in the label and the help.
    choices
        Allowed values, or ``{text: value}`` when the text people type or pick differs from
        the value (``{"yes": True, "no": False, "auto": "auto"}``).
    minimum, maximum, step, decimals
        Bounds and stepping of a number field.
    none
        What ``None`` means (``"auto"``, ``"all"`` …); optional numbers are entered as 0 in
        the dock for ``None``.
    nargs
        Several values on the command line (``2``, ``"+"``) for tuple options.
    parse
        Turns the CLI text into the value (when a plain type conversion is not enough).
    parts
        Labels of the parts of a tuple option in the dock (``("y", "x")``).
    advanced
        Shown under the dock's advanced section.
    doors
        Which doors offer it: ``"cli"``, ``"gui"`` or both (default).
    """

    help: str
    label: str | None = None
    flag: str | None = None
    unit: str | None = None
    choices: Any = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    decimals: int | None = None
    none: str | None = None
    nargs: int | str | None = None
    parse: Callable[[str], Any] | None = None
    parts: tuple[str, ...] | None = None
    advanced: bool = False
    doors: tuple[str, ...] = ("cli", "gui")


def option(default: Any, help: str, **describe: Any) -> Any:  # noqa: A002 - the word people use
    """A dataclass field with a default and its :class:`Describe` (see the module docstring)."""
    return dataclasses.field(default=default, metadata={_KEY: Describe(help=help, **describe)})


@dataclass(frozen=True)
class OptionSpec:
    """One described option of an options class: its name, default, base type, whether
    ``None`` is allowed, and its :class:`Describe`."""

    name: str
    default: Any
    type: Any
    optional: bool
    describe: Describe

    @property
    def label(self) -> str:
        text = self.describe.label or self.name.replace("_", " ")
        return f"{text} ({self.describe.unit})" if self.describe.unit and "(" not in text else text

    @property
    def flag(self) -> str:
        return "--" + (self.describe.flag or self.name.replace("_", "-"))

    @property
    def choice_map(self) -> dict[str, Any] | None:
        """``{text: value}`` of the allowed values (``None`` shown as ``"none"``), or None."""
        choices = self.describe.choices
        if choices is None:
            return None
        if isinstance(choices, dict):
            return dict(choices)
        return {("none" if c is None else str(c)): c for c in choices}

    def text_of(self, value: Any) -> str:
        """The text shown for ``value`` (a choice's text, ``"none"`` for None)."""
        for text, candidate in (self.choice_map or {}).items():
            if candidate == value and type(candidate) is type(value):
                return text
        return "none" if value is None else str(value)

    def in_doors(self, door: str) -> bool:
        return door in self.describe.doors


def _base_type(hint: Any) -> tuple[Any, bool]:
    """(type, optional) of a field's type hint (``float | None`` -> (float, True))."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if args and typing.get_origin(hint) is not tuple:
        inner = [a for a in args if a is not type(None)]
        hint = inner[0] if len(inner) == 1 else inner
    return hint, optional


def option_specs(cls: type, door: str | None = None) -> dict[str, OptionSpec]:
    """The described options of dataclass ``cls`` in field order (those offered by ``door``
    when given: ``"cli"`` or ``"gui"``)."""
    hints = typing.get_type_hints(cls)
    out: dict[str, OptionSpec] = {}
    for f in dataclasses.fields(cls):
        describe = f.metadata.get(_KEY)
        if describe is None:
            continue
        hint, optional = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        spec = OptionSpec(f.name, default, hint, optional or default is None, describe)
        if door is None or spec.in_doors(door):
            out[f.name] = spec
    return out


def defaults(cls: type, door: str | None = None) -> dict[str, Any]:
    """``{name: default}`` of the described options of ``cls``."""
    return {name: spec.default for name, spec in option_specs(cls, door).items()}
