"""The 4D-STEM study's run, once for every door: read → COM (and the overview images, one pass)
→ bin the detector → rVAE → maps of every position → results file and overview figure.

``stem-rvae run`` iterates :meth:`STEMRun.events` and prints them; the napari Train tab
iterates the same events in a thread worker and shows them (progress, live loss, layers).
The run owns its outputs: the results file is claimed before any work (not the input, not a
foreign file, not being written by another process) and written complete or not at all;
the checkpoint and the reduced store beside it are removed once the results are written.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from functools import partial
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..dataset import Dataset4D
from ..options import option
from ..processing.chain import RVAE_DETECTOR_PIXELS
from .cluster import cluster
from .pooling import POOLING_CHOICES, pooled_data, with_measured_novelty
from .inputs import com_images, load_roi, open_dataset, output_paths, overview_masks, prepared_data
from .events import Done, Event, Maps, Message, Progress, epoch_event, named_maps, relay, reporting

REDUCED = ("auto", "always", "never")


@dataclass(frozen=True)
class RunOptions:
    """How a 4D-STEM run prepares its data and keeps its work (the rVAE's own settings are an
    :class:`~napari_4dstem_rvae.rvae.RVAEConfig`)."""

    bin_to: int | None = option(
        RVAE_DETECTOR_PIXELS, "detector pixels after binning, as the study did (it binned to 64); counts stay "
        "counts", flag="bin", label="bin the detector to", unit="px", none="no binning", minimum=0,
        maximum=4096)
    pooling: str = option(
        "auto", "pool each pattern with its neighbours before the rVAE: lattice (the scan's periodic average plus "
        "the pooled residual), neighbours (a Gaussian mean), none; auto: lattice for counts, none otherwise — "
        "the width is chosen from the data; the novelty map always uses the measured patterns",
        choices=POOLING_CHOICES)
    reduced: str = option(
        "auto", "write the binned patterns once to RESULTS.reduced.zarr and train and encode from it: when they "
        "exceed the memory budget (auto), always, or never (re-read the file)", choices=REDUCED, advanced=True,
        doors=("cli",))
    checkpoint_every: int | None = option(
        None, "epochs between checkpoints of the training", none="about 20 per training", minimum=0,
        maximum=100_000, advanced=True, doors=("cli",))

    def __post_init__(self) -> None:
        if self.bin_to is not None and int(self.bin_to) < 0:
            raise ValueError(f"--bin must be a number of detector pixels ≥ 0 (0: no binning), got {self.bin_to}")
        if self.pooling not in POOLING_CHOICES:
            raise ValueError(f"--pooling must be one of {POOLING_CHOICES}, got {self.pooling!r}")
        if self.reduced not in REDUCED:
            raise ValueError(f"reduced must be one of {REDUCED}, got {self.reduced!r}")
        if self.checkpoint_every is not None and int(self.checkpoint_every) < 1:
            raise ValueError(f"--checkpoint-every must be at least 1 epoch, got {self.checkpoint_every}")


class STEMRun:
    """One rVAE run on a 4D-STEM data set (see the module docstring).

    Parameters
    ----------
    source
        A path (read lazily with ``read_options``) or a :class:`Dataset4D`.
    out
        A folder or a results file (``RESULTS.h5``) to write, or ``None`` (the Train tab: the
        user saves when they choose, :meth:`write`).
    config
        :class:`~napari_4dstem_rvae.rvae.RVAEConfig` (or a dict of its fields).
    options
        :class:`RunOptions`.
    com_options
        :class:`~napari_4dstem_rvae.processing.COMOptions` of the COM pass (default: defaults).
    roi
        Training positions: boolean (scan_y, scan_x) mask or a ``.npy`` file of one.
    com, images
        A COM result and overview images already made for this data set (the COM tab's): used
        instead of a new pass when ``com_made_with`` equals ``com_options``.
    resume
        ``True``: continue from ``RESULTS.checkpoint.pt`` when one fits; ``False``: afresh; a
        path: that checkpoint.
    client, workers
        A dask cluster (``distributed.Client`` or scheduler address) or a local one of
        ``workers`` processes: the COM pass and the encoding of every pattern run there.
    """

    def __init__(self, source: Any, out: Any = None, *, config: Any = None, options: RunOptions | None = None,
                 com_options: Any = None, read_options: dict | None = None, roi: Any = None, com: Any = None,
                 com_made_with: Any = None, images: dict | None = None, resume: Any = True, client: Any = None,
                 workers: int | None = None, name: str = ""):
        from ..processing.com import COMOptions
        from ..rvae.config import RVAEConfig

        if isinstance(config, dict):
            config = RVAEConfig.from_dict(config)
        self.config = config if config is not None else RVAEConfig()
        if self.config.epochs == 0:
            raise ValueError("--epochs 0 would write an untrained model as results; give at least 1 "
                             "(or leave it out for the default length)")
        self.options = options if options is not None else RunOptions()
        self.com_options = com_options if com_options is not None else COMOptions()
        if workers is not None and int(workers) < 1:
            raise ValueError(f"--workers must be at least 1, got {workers}")
        self.source, self.read_options, self.roi_given = source, dict(read_options or {}), roi
        self.resume, self.client, self.workers = resume, client, workers
        self.com = com if com is not None and (com_made_with is None or com_made_with == self.com_options) else None
        self.images = images
        self.dataset: Dataset4D | None = source if isinstance(source, Dataset4D) else None
        self.name = name or (self.dataset.name if self.dataset is not None else Path(os.fspath(source)).stem)
        self.results_file = self.png_file = None
        if out is not None:
            self.results_file, self.png_file = output_paths(out, "results", self.inputs)
            if self.png_file.name == "results.png":
                self.png_file = self.png_file.with_name("overview.png")
        self.prepared: Dataset4D | None = None   # what the rVAE sees (binned, pooled)
        self.measured: Dataset4D | None = None   # binned, as measured (the novelty's)
        self.pooled: Any = None                  # processing.pooling.Pooled, when pooled
        self.counts = False
        self.trainer: Any = None
        self.result: Any = None        # rvae.RVAEResult of the final maps
        self.roi: np.ndarray | None = None
        self.started_from: str | None = None
        self.where = ""                 # "<address> (dashboard …)" when a cluster is used
        self.outputs: dict[str, str] = {}

    # -- the inputs -------------------------------------------------------------------------
    @property
    def inputs(self) -> list:
        """Files the outputs must never overwrite."""
        given = [self.dataset.source if self.dataset is not None else self.source]
        if self.resume not in (True, False, None):
            given.append(self.resume)
        return [os.fspath(p) for p in given if p]

    @property
    def checkpoint(self) -> Path | None:
        return None if self.results_file is None else self.results_file.with_name(
            self.results_file.stem + ".checkpoint.pt")

    @property
    def store(self) -> Path | None:
        return None if self.results_file is None else self.results_file.with_name(
            self.results_file.stem + ".reduced.zarr")

    @property
    def can_resume(self) -> bool:
        return self.trainer is not None and self.trainer.epoch < self.trainer.total_epochs

    @property
    def epochs_done(self) -> int:
        return 0 if self.trainer is None else int(self.trainer.epoch)

    @property
    def total_epochs(self) -> int:
        return 0 if self.trainer is None else int(self.trainer.total_epochs)

    @property
    def n_train(self) -> int:
        return 0 if self.trainer is None else int(self.trainer.n_train)

    # -- the run ----------------------------------------------------------------------------
    def events(self, stop: threading.Event | None = None, maps_every: int = 0) -> Iterator[Event]:
        """Run (or continue, after a stop) and yield what happens; the last event is
        :class:`Done`. ``maps_every``: also yield the maps every N epochs while training."""
        from ..results import claim_output
        from ..rvae.parallel import init_from_environment, share_of_threads

        rank, ranks = init_from_environment(self.config.device or "auto")
        if ranks > 1:
            if self.client is not None or self.workers is not None:
                raise ValueError("--scheduler/--workers cannot be combined with torchrun: use one or the other")
            self.config = self.config.replace(threads=share_of_threads(self.config.threads))
        with ExitStack() as hold:
            if self.results_file is not None and not rank:
                hold.enter_context(claim_output(self.results_file, self.inputs, "--out"))
            client = hold.enter_context(cluster(self.client, self.workers))
            if client is not None:
                from .cluster import describe

                self.where = describe(client)
                yield Message(f"dask: {self.where}, {len(client.scheduler_info()['workers'])} workers")
            if self.trainer is None:
                yield from self._prepare(client, stop, rank)
            stopped = yield from self._train(stop, maps_every)
            if stopped or (stop is not None and stop.is_set()):
                if not rank:  # the maps of the partial model: what the user keeps after a stop
                    yield Maps(named_maps(self.trainer.maps()), self.trainer.epoch)
                yield Done({}, stopped=True)
                return
            yield from self._final_maps(client, stop)
            if rank:                    # torchrun: rank 0 writes
                yield Done({})
                return
            if self.results_file is not None:
                self.write()
                yield Message(f"results: {self.outputs['results']}")
            yield Done(dict(self.outputs))

    def _prepare(self, client: Any, stop: Any, rank: int) -> Iterator[Event]:
        from ..processing import compute_com
        from ..rvae.data import as_patterns, looks_like_counts
        from ..rvae.fitting import resume_trainer, start
        from ..rvae.selection import describe
        from ..rvae.train import resolve_likelihood

        ds = self.dataset = open_dataset(self.source, **self.read_options)
        yield Message(f"data: {ds.shape} {ds.dtype} from {ds.source or ds.name}")
        self.roi = load_roi(self.roi_given, ds.scan_shape)
        if self.com is None:
            # the overview images ride along in the COM pass: one read of the data for both
            detectors = overview_masks(ds) if self.images is None else None
            where = self.where if client is not None else ""
            self.com = yield from reporting(compute_com, "COM", ds, self.com_options, detectors=detectors,
                                            client=client, unit="tasks" if client is not None else "blocks",
                                            where=where, stop=stop)
            if self.images is None:
                self.images = {k: self.com.virtual[k] for k in detectors}
        elif self.images is None:
            self.images = com_images(self.com, ds) or (yield from self._overview(ds, client, stop))
        com = self.com
        yield Message(f"COM: rotation {com.rotation_deg:.2f}°, flip {com.flip}")
        from ..processing.chain import detector_bin_factor

        factor = detector_bin_factor(ds.det_shape, self.options.bin_to)
        self.measured = yield from prepared_data(ds, factor, self.store, self.options.reduced, rank)
        self.counts = counts = looks_like_counts(as_patterns(self.measured),
                                                 np.arange(int(np.prod(self.measured.scan_shape))))
        self.prepared, self.pooled = yield from pooled_data(self.measured, self.options.pooling, counts)
        cfg = self.config
        likelihood = resolve_likelihood(cfg, self.prepared)
        yield Message(
            f"rVAE input: {self.prepared.shape} (detector binned ×{factor}), {'counts' if counts else 'not counts'}; "
            f"likelihood {likelihood}{' (auto)' if cfg.likelihood == 'auto' else ''}; novelty with "
            f"{'Poisson' if counts else 'Gaussian'} noise; epoch selection: {describe(cfg, True)}"
            + (f"; {cfg.restarts} restarts" if cfg.restarts > 1 else ""))
        self.config = cfg = cfg.replace(likelihood=likelihood)
        yield from _torchrun_note(cfg)
        start_from = self._checkpoint_to_resume()
        maps = dict(com_magnitude=com.magnitude, com_angle=com.angle)
        if start_from is not None:
            try:
                self.trainer = resume_trainer(start_from, self.prepared, cfg, roi_mask=self.roi, **maps)
                self.started_from = start_from
                yield Message(f"continuing from checkpoint {start_from} (epoch {self.trainer.epoch})")
            except ValueError as exc:
                if self.resume is not True:
                    raise
                yield Message(f"the checkpoint {start_from} does not fit this run ({exc}); starting afresh",
                              "warning")
        if self.trainer is None:
            # restarts compete first (their epochs are shown too), then the best one goes on
            self.trainer = yield from relay(partial(start, stop=stop), self.prepared, cfg, roi_mask=self.roi, **maps,
                                            callback="callback",
                                            convert=lambda e: epoch_event(e) if e.kind == "epoch" else None)

    def _overview(self, ds: Dataset4D, client: Any, stop: Any) -> Iterator[Event]:
        from ..processing.engine import reduce_masks

        images = yield from reporting(reduce_masks, "images", ds.data, overview_masks(ds), nonfinite="nan",
                                      client=client, stop=stop)
        return images

    def _checkpoint_to_resume(self) -> str | None:
        if self.resume not in (True, False, None):
            path = os.fspath(self.resume)
            if not os.path.exists(path):
                raise ValueError(f"--resume {path}: no such checkpoint")
            return path
        if self.resume and self.checkpoint is not None and self.checkpoint.exists():
            return os.fspath(self.checkpoint)
        return None

    def _train(self, stop: Any, maps_every: int) -> Iterator[Event]:
        """Train to the end (or the stop); True when stopped."""
        from ..rvae.parallel import is_main

        trainer = self.trainer
        every = self.options.checkpoint_every or max(1, trainer.total_epochs // 20)
        stopped = False
        for event in trainer.run(stop=stop, checkpoint_path=self.checkpoint, checkpoint_every=every):
            if event.kind == "epoch":
                yield epoch_event(event)
                if maps_every and event.epoch % maps_every == 0 and event.epoch < event.epochs_total and is_main():
                    yield Maps(named_maps(trainer.maps()), event.epoch)
            elif event.kind == "stopped":
                stopped = True
                yield Message(event.message)
        return stopped

    def _final_maps(self, client: Any, stop: Any) -> Iterator[Event]:
        from ..rvae.fitting import RVAEResult
        from ..rvae.parallel import is_main
        from ..rvae.selection import describe

        trainer = self.trainer
        chosen = trainer.finish()
        if not is_main():
            return
        if chosen != trainer.epoch:
            yield Message(f"maps from epoch {chosen} of {trainer.epoch} ({describe(trainer.config, True)})")
        if client is None or self.pooled is not None:  # pooled patterns live in this process
            maps = yield from reporting(trainer.maps, "encoding", novelty=True, unit="patterns", stop=stop)
            if self.pooled is not None:
                maps = with_measured_novelty(maps, self.measured, self.counts)
        else:
            maps = yield from self._encode_on_cluster(client, stop)
            if maps is None:
                return
        self.result = result = RVAEResult.from_trainer(trainer, maps=maps)
        if maps.novelty is not None:
            where = tuple(int(v) for v in np.unravel_index(np.nanargmax(maps.novelty), maps.novelty.shape))
            against = ("the scan's periodic average" if maps.novelty_reference == "lattice"
                       else "the model's reconstruction (no lattice found in the scan)")
            yield Message(f"novelty (against {against}): highest {float(np.nanmax(maps.novelty)):.1f} robust SD "
                          f"at probe {where}")
        yield Message(f"latent–COM magnitude r: {', '.join(f'{r:+.3f}' for r in result.latent_r)}; "
                      f"angle–COM angle ρ (Fisher–Lee): {result.angle_rho:+.3f}")
        yield Maps(named_maps(maps), int(chosen), final=True, latent_r=tuple(result.latent_r))

    def _encode_on_cluster(self, client: Any, stop: Any) -> Iterator[Event]:
        from distributed import as_completed

        from ..processing.chain import preprocess
        from ..rvae.distributed import submit_encoding

        ds, prepared = self.dataset, self.prepared
        # the workers read their own blocks: of the reduced store when there is one, else of
        # the file, binned as they read (not the copy in this process)
        factor = ds.det_shape[0] // prepared.det_shape[0]
        lazy = prepared if prepared.is_lazy else (preprocess(ds, bin_detector=factor) if factor > 1 else ds)
        futures, assemble = submit_encoding(self.trainer.model, lazy, client, novelty=True)
        total = len(futures)
        yield Message(f"encoding {int(np.prod(ds.scan_shape))} patterns on {self.where} in {total} tasks")
        yield Progress("encoding", 0, total, "tasks", self.where)
        for done, _ in enumerate(as_completed(futures), 1):
            if stop is not None and stop.is_set():
                client.cancel(futures)
                yield Message(f"stopped while encoding on {self.where}: the maps of the last epoch shown are kept")
                return None
            yield Progress("encoding", done, total, "tasks", self.where)
        return assemble(futures)

    # -- what it keeps --------------------------------------------------------------------------
    def parameters(self) -> dict[str, Any]:
        """The settings recorded in the results file (beside the rVAE's own)."""
        from ..processing.chain import detector_bin_factor
        from ..rvae.selection import describe

        factor = detector_bin_factor(self.dataset.det_shape, self.options.bin_to)
        config = self.trainer.config
        return {"bin_to": self.options.bin_to, "bin_factor": factor, "likelihood": config.likelihood,
                "roi_positions": None if self.roi is None else int(self.roi.sum()),
                "epoch_selection": describe(config, True), "rvae": config.to_dict(),
                "com_options": self.com_options.describe(),
                "pooling": {"asked": self.options.pooling, **(self.pooled.describe(self._step()) if self.pooled
                                                              else {"mode": "none"})},
                "restart_scores": getattr(self.trainer, "restart_scores", None), "resumed_from": self.started_from}

    def _step(self) -> float | None:
        from ..rvae.infer import scan_step_angstrom

        return scan_step_angstrom(self.dataset)

    def write(self, path: Any = None) -> dict[str, str]:
        """Write the results file (images, COM, rVAE maps, parameters, provenance) and the
        overview figure: to ``path`` (a results file or folder) or to the run's ``out``. The
        maps are those computed (encoded again only for a training that was stopped before
        its final maps). The output is guarded by the results writer."""
        from ..results import overview_figure, write_results
        from ..rvae.fitting import RVAEResult

        if self.trainer is None:
            raise ValueError("nothing to write yet: the training has not started")
        results_file, png_file = (self.results_file, self.png_file) if path is None else output_paths(path, "results")
        if path is not None and png_file.name == "results.png":
            png_file = png_file.with_name("overview.png")
        result = self.result
        if result is None or result.trainer is not self.trainer or result.trainer.epoch != self.trainer.epoch:
            result = RVAEResult.from_trainer(self.trainer)
        ds = self.dataset
        written = write_results(results_file, images=self.images, com=self.com, rvae=result,
                                parameters=self.parameters(), calibration=ds.calibration, scan_shape=ds.scan_shape,
                                source=ds.source, provenance=ds.provenance, inputs=self.inputs, what="--out")
        if path is None:  # the run's own output: its checkpoint and store are no longer needed
            if self.checkpoint is not None and self.checkpoint.exists():
                self.checkpoint.unlink()
            if self.store is not None:
                from ..io.reduced import remove_reduced_store

                remove_reduced_store(self.store)
        images = self.images or {}
        adf = images.get("adf", images.get("sum"))
        png = overview_figure(png_file, result, adf=adf, com=self.com, calibration=ds.calibration)
        self.outputs = {"results": written, "overview": png}
        return dict(self.outputs)

    # -- the Train tab's extras ------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: Any, dataset: Dataset4D, name: str = "") -> STEMRun:
        """A run over ``dataset`` continuing the training saved in checkpoint ``path`` (the
        detector binned as the checkpoint says)."""
        from ..rvae import Trainer, read_checkpoint
        from .inputs import data_of_checkpoint

        state = read_checkpoint(path)
        prepared, binned = data_of_checkpoint(state, dataset, path)
        trainer = Trainer.from_state(state, prepared)
        run = cls(dataset, config=trainer.config, options=RunOptions(bin_to=binned), name=name)
        run.prepared, run.trainer, run.started_from = prepared, trainer, os.fspath(path)
        return run

    def maps(self, novelty: bool = False) -> dict[str, np.ndarray]:
        """The maps of the model as it is now, by schema name."""
        return named_maps(self.trainer.maps(novelty=novelty))

    def reconstruct(self, y: int, x: int) -> tuple[np.ndarray, np.ndarray]:
        """The prepared pattern at ``(y, x)`` and its reconstruction with the inferred pose."""
        from ..rvae import reconstruct_positions

        pattern = self.prepared.pattern(y, x)
        return pattern, reconstruct_positions(self.trainer.model, self.prepared, [(y, x)])[0]

    def save_checkpoint(self, path: Any) -> str:
        if self.trainer is None:
            raise ValueError("no model to save: train one first")
        return self.trainer.save(path)


def _torchrun_note(config: Any) -> Iterator[Message]:
    """Under torchrun: a message saying how many processes train together."""
    from ..rvae.parallel import world

    ranks = world()[1]
    if ranks > 1:
        import torch.distributed as dist

        yield Message(f"training on {ranks} processes together (torchrun, {dist.get_backend()}; "
                      f"{config.threads or 'default'} threads each); rank 0 writes the results")
