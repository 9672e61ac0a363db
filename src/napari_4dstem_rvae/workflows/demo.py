"""``stem-rvae demo``: the whole chain on the built-in simulated graphene — simulate, write as
HDF5, open lazily, overview images, COM, rVAE — as one generator of events."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .events import Done, Event, Message

#: The quick demo: a 16 × 16 scan and a short training (under a minute on 2 cores).
QUICK_DEMO = {"scan_shape": (16, 16), "steps": 600}


def demo_events(out: Any = "out", defect: str | None = "vacancy", quick: bool = False,
                **rvae_changes: Any) -> Iterator[Event]:
    """Simulate graphene → ``out/graphene_4dstem.h5`` → open it lazily → images, COM (written
    as ``images.h5``, ``com.h5`` and PNGs) → the rVAE run (``results.h5``, ``overview.png``),
    with the COM and images of the first pass reused. ``quick``: a 16 × 16 scan and 600
    optimisation steps instead of 32 × 32 and the default ~2,400."""
    from ..io import read, save_dataset
    from ..rvae.config import RVAEConfig
    from ..simulate import graphene
    from .com import COMRun, ImageRun
    from .stem import STEMRun

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    yield Message(f"simulating graphene 4D-STEM (60 kV, 31 mrad, defect={defect}) …")
    simulated = graphene(defect=defect, **({"scan_shape": QUICK_DEMO["scan_shape"]} if quick else {}))
    if quick:
        rvae_changes.setdefault("steps", QUICK_DEMO["steps"])
    data_path = save_dataset(simulated, out / "graphene_4dstem.h5")
    yield Message(f"wrote {data_path} ({simulated.nbytes / 2**20:.1f} MiB, shape {simulated.shape})")
    dataset = read(data_path)
    yield Message(f"opened {dataset}")
    outputs = {"data": str(data_path)}
    image_run = ImageRun(dataset, out)
    yield from (e for e in image_run.events() if not isinstance(e, Done))
    com_run = COMRun(dataset, out)
    yield from (e for e in com_run.events() if not isinstance(e, Done))
    outputs.update({f"com_{k}": v for k, v in com_run.outputs.items()}, **image_run.outputs)
    config = RVAEConfig().replace(**{k: v for k, v in rvae_changes.items() if v is not None})
    run = STEMRun(dataset, out, config=config, com=com_run.result, com_made_with=com_run.options,
                  images=image_run.images)
    done = Done()
    for event in run.events():
        if isinstance(event, Done):
            done = event
        else:
            yield event
    outputs.update(done.outputs)
    yield Done(outputs, stopped=done.stopped)
