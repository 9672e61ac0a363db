"""``stem-rvae preprocess``: the preprocessing chain (:class:`~napari_4dstem_rvae.processing.PreprocessOptions`)
applied to a file and written as a new EMD 1.0 file — the Preprocess tab's *Apply*, headless."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

from .events import Done, Event, Message, reporting
from .stem import open_dataset


class PreprocessRun:
    """Read ``source`` lazily, preprocess it with ``options`` and write ``out`` (a new file:
    never the input, never over an existing file)."""

    def __init__(self, source: Any, out: Any, *, options: Any = None, read_options: dict | None = None):
        from ..processing.chain import PreprocessOptions

        self.source, self.out = source, os.fspath(out)
        self.options = options if options is not None else PreprocessOptions()
        self.read_options = dict(read_options or {})
        self.outputs: dict[str, str] = {}

    def events(self, stop: threading.Event | None = None) -> Iterator[Event]:
        from ..io import save_dataset
        from ..processing.chain import preprocess
        from ..results import same_or_inside

        ds = open_dataset(self.source, **self.read_options)
        if ds.source and same_or_inside(self.out, os.fspath(ds.source)):
            raise ValueError(f"--out {self.out} is the input {ds.source}; choose another output")
        if os.path.exists(self.out):
            raise ValueError(f"--out {self.out} exists; it is left untouched — choose a new file name")
        if not self.out.lower().endswith((".h5", ".hdf5", ".emd")):
            raise ValueError(f"--out {self.out}: expected a file name ending in .h5 (an EMD 1.0 HDF5 file)")
        result = preprocess(ds, self.options)
        steps = [p.get("step") for p in result.provenance[len(ds.provenance):] if isinstance(p, dict)]
        yield Message(f"{ds.shape} → {result.shape} ({', '.join(steps) or 'unchanged'})")
        os.makedirs(os.path.dirname(os.path.abspath(self.out)), exist_ok=True)
        written = yield from reporting(save_dataset, "writing", result, self.out, unit="row blocks", stop=stop)
        self.outputs = {"data": written}
        yield Done(dict(self.outputs))
