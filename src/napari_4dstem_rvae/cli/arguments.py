"""Command-line arguments built from the options objects (:mod:`napari_4dstem_rvae.options`):
flag, default, help, choices and unit come from the dataclass, so ``stem-rvae`` and the napari
docks offer the same settings with the same defaults."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from ..options import OptionSpec, option_specs


def _help(spec: OptionSpec) -> str:
    d = spec.describe
    text = d.help.rstrip(".")
    if d.unit:
        text += f" [{d.unit}]"
    if spec.default is None:
        shown = d.none or "none"
    elif isinstance(spec.default, tuple):
        shown = " ".join(str(v) for v in spec.default)
    else:
        shown = spec.text_of(spec.default)
    return f"{text} (default: {shown})".replace("%", "%%")


def _converter(spec: OptionSpec) -> Any:
    """The argparse ``type`` of an option."""
    d = spec.describe
    if d.parse is not None:
        return d.parse
    base = spec.type
    if isinstance(base, list):  # a union: text in, the option's own validation decides
        base = str
    if typing_tuple(base):
        inner = [a for a in getattr(base, "__args__", ()) if a is not Ellipsis]
        base = inner[0] if inner else str
    if base in (int, float, str):
        number = base

        def convert(text: str) -> Any:
            if spec.optional and text.lower() in ("none", d.none or "none"):
                return None
            try:
                return number(text)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"expected {'an integer' if number is int else 'a number' if number is float else 'text'}, "
                    f"got {text!r}") from None
        return convert
    return str


def typing_tuple(hint: Any) -> bool:
    return getattr(hint, "__origin__", None) is tuple or hint is tuple


def add_options(parser: Any, cls: type, only: Any = None, skip: Any = ()) -> list[str]:
    """Add an argument for every option of ``cls`` the CLI offers (``only``/``skip`` by name)
    to ``parser`` (a parser or an argument group); returns the names added. Defaults are the
    dataclass's own: an option not given is absent from the parsed namespace
    (``argparse.SUPPRESS``), so ``options_from_args`` of no arguments equals ``cls()`` and a
    preset or a ``base`` object is only changed by what the user typed."""
    added = []
    for name, spec in option_specs(cls, "cli").items():
        if (only is not None and name not in only) or name in skip:
            continue
        d = spec.describe
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": _help(spec)}
        choices = spec.choice_map
        if spec.type is bool and choices is None:
            if spec.default:
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs["action"] = "store_true"
        elif choices is not None:
            kwargs["choices"] = list(choices)
            if d.parse is not None:  # other spellings of a choice (A for Å)
                kwargs["type"] = d.parse
        else:
            kwargs["type"] = _converter(spec)
            kwargs["metavar"] = (d.flag or name).upper().replace("-", "_")
            if d.nargs is not None:
                kwargs["nargs"] = d.nargs
                if d.parts and isinstance(d.nargs, int):
                    kwargs["metavar"] = tuple(p.split()[-1].upper() for p in d.parts) \
                        if len({p.split()[-1] for p in d.parts}) == len(d.parts) else tuple(
                            "_".join(p.upper().split()[-2:]) for p in d.parts)
        parser.add_argument(spec.flag, **kwargs)
        added.append(name)
    return added


def given(cls: type, args: argparse.Namespace, names: Any = None) -> dict[str, Any]:
    """``{name: value}`` of the options of ``cls`` the user gave in ``args`` (choices turned back
    into values, several values into tuples)."""
    out = {}
    for name, spec in option_specs(cls, "cli").items():
        if (names is not None and name not in names) or not hasattr(args, name):
            continue
        value = getattr(args, name)
        choices = spec.choice_map
        if choices is not None and isinstance(value, str):
            value = choices[value]
        elif isinstance(value, list):
            value = tuple(value)
        out[name] = value
    return out


def options_from_args(cls: type, args: argparse.Namespace, base: Any = None, **changes: Any) -> Any:
    """An instance of ``cls`` (or ``base`` with these fields replaced) from the parsed ``args``."""
    values = {**given(cls, args), **changes}
    return dataclasses.replace(base, **values) if base is not None else cls(**values)
