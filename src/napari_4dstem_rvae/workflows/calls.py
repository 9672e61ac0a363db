"""The runs in one call each, for notebooks and scripts: :func:`run` (4D-STEM) and
:func:`run_atoms` (an image series), each driving its run to the end and returning it."""

from __future__ import annotations

from typing import Any

from .events import Message


def run(source: Any, out: Any = None, *, log: Any = None, **settings: Any) -> Any:
    """:class:`STEMRun` to the end in one call (notebooks, scripts): ``settings`` are fields of
    :class:`~napari_4dstem_rvae.rvae.RVAEConfig` (``epochs=50``, ``latent_dim=3`` …), of
    :class:`RunOptions` (``bin_to=16``) or arguments of :class:`STEMRun` (``roi=``,
    ``resume=``, ``client=`` …); ``log``: called with each message. The run is returned:
    ``.result`` (the :class:`~napari_4dstem_rvae.rvae.RVAEResult`), ``.outputs`` (paths)."""
    import dataclasses

    from ..rvae.config import RVAEConfig
    from .stem import RunOptions, STEMRun

    fields = {f.name for f in dataclasses.fields(RVAEConfig)}
    own = {f.name for f in dataclasses.fields(RunOptions)}
    config = RVAEConfig().replace(**{k: settings.pop(k) for k in list(settings) if k in fields
                                     and settings[k] is not None})
    options = RunOptions(**{k: settings.pop(k) for k in list(settings) if k in own})
    stem = STEMRun(source, out, config=config, options=options, **settings)
    for event in stem.events():
        if isinstance(event, Message) and log is not None:
            log(event.text)
    return stem


def run_atoms(source: Any, out: Any = None, *, log: Any = None, **settings: Any) -> Any:
    """:class:`~.atoms.AtomRun` to the end in one call: ``settings`` are fields of
    :class:`~.atoms.AtomOptions` (``window="4Å"``, ``method="log"`` …), rVAE fields
    (``epochs=30`` …) or arguments of :class:`~.atoms.AtomRun` (``read_options=``, ``points=``).
    Returns the run: ``.result`` (:class:`~.atoms.AtomResult`), ``.outputs``."""
    import dataclasses

    from .atoms import AtomOptions, AtomRun

    own = {f.name for f in dataclasses.fields(AtomOptions)}
    options = AtomOptions(**{k: settings.pop(k) for k in list(settings) if k in own})
    keep = {k: settings.pop(k) for k in ("read_options", "points", "table") if k in settings}
    atoms = AtomRun(source, out, options=options, rvae=settings, **keep)
    for event in atoms.events():
        if isinstance(event, Message) and log is not None:
            log(event.text)
    return atoms
