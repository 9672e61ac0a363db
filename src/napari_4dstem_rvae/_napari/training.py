"""A training session as the napari widget sees it (no Qt here): the data set, the data
prepared for the rVAE, the COM maps used for the correlation, and the engine's Trainer.

The widget runs :meth:`TrainingSession.run` in a thread worker and turns its plain-dict
events into plot points and layers; everything computed here can be computed headless.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from ..dataset import Dataset4D


class TrainingSession:
    """Everything one training needs, kept after a stop so that Resume can continue."""

    def __init__(self, dataset: Dataset4D, train_data: Dataset4D, trainer: Any, *,
                 source_layer_name: str, com: Any = None):
        self.dataset = dataset              # the data set the maps are drawn over
        self.train_data = train_data        # prepared for the rVAE (binned, mean subtracted)
        self.trainer = trainer
        self.source_layer_name = source_layer_name
        self.com = com

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def create(cls, dataset: Dataset4D, config: Any, *, train_mask: Any = None,
               study_preprocessing: bool = True, correlate: bool = True,
               source_layer_name: str = "") -> TrainingSession:
        """Prepare the data (as in the study: detector binned to 32 px and the mean pattern
        subtracted, unless ``study_preprocessing`` is off), the COM maps (``correlate``: the
        latent–COM |r| is computed every epoch, plotted live, and drives the epoch selection)
        and the trainer. ``config``: an :class:`RVAEConfig` or a dict of its fields."""
        from ..processing import compute_com
        from ..processing.chain import RVAE_DETECTOR_PIXELS, prepare_for_rvae
        from ..rvae import RVAEConfig, start

        train_data = prepare_for_rvae(dataset, RVAE_DETECTOR_PIXELS if study_preprocessing else None)
        com = compute_com(dataset) if correlate else None
        if isinstance(config, dict):
            config = RVAEConfig.from_dict(config)
        config = config.replace(correlate_every=1 if correlate else 0)
        trainer = start(train_data, config, roi_mask=train_mask,
                        com_magnitude=None if com is None else com.magnitude,
                        com_angle=None if com is None else com.angle)
        return cls(dataset, train_data, trainer, source_layer_name=source_layer_name, com=com)

    @classmethod
    def load(cls, path: str, dataset: Dataset4D, *, source_layer_name: str = "") -> TrainingSession:
        """Reopen a checkpoint over ``dataset`` (prepared the way the checkpoint says)."""
        from ..processing.chain import prepare_for_rvae
        from ..rvae import Trainer, read_checkpoint

        state = read_checkpoint(path)
        steps = [p.get("step") for p in state.get("provenance", []) if isinstance(p, dict)]
        study = "subtract_mean_pattern" in steps and "subtract_mean_pattern" not in \
            [p.get("step") for p in dataset.provenance]
        # the detector binned as the model saw it (the checkpoint's detector shape)
        target = min(int(v) for v in state["det_shape"])
        binned = target if min(dataset.det_shape) > target else None
        train_data = prepare_for_rvae(dataset, binned, subtract_mean=study)
        if tuple(train_data.scan_shape) != tuple(state.get("scan_shape", train_data.scan_shape)):
            raise ValueError(f"checkpoint {path} was trained on a scan of {tuple(state['scan_shape'])} "
                             f"positions; this data set has {train_data.scan_shape}")
        trainer = Trainer.from_state(state, train_data)
        return cls(dataset, train_data, trainer, source_layer_name=source_layer_name)

    # -- state ----------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        return self.trainer.config.to_dict()

    @property
    def total_epochs(self) -> int:
        return int(self.trainer.total_epochs)

    @property
    def epochs_done(self) -> int:
        return int(self.trainer.epoch)

    @property
    def n_train(self) -> int:
        return int(self.trainer.n_train)

    @property
    def can_resume(self) -> bool:
        return self.trainer.patterns is not None and self.epochs_done < self.total_epochs

    @property
    def display_dataset(self) -> Dataset4D:
        return self.dataset

    @property
    def correlations(self) -> dict[int, float]:
        if not self.trainer.diagnostics:
            return {}
        return {i: float(r) for i, r in enumerate(self.trainer.diagnostics[-1].latent_r)}

    def check_unchanged(self, dataset: Dataset4D | None = None) -> None:
        """Raise if the data set behind the widget is not the one this session trained on."""
        if dataset is not None and dataset is not self.dataset:
            raise ValueError("The data set changed since this training started (another layer or new "
                             "data): start a new training instead of resuming.")

    # -- work -----------------------------------------------------------------------------
    def run(self, stop: Any, maps_every: int = 0, checkpoint_path: Any = None,
            scheduler: str | None = None) -> Iterator[dict[str, Any]]:
        """Train, yielding ``{"kind": "epoch", ...}`` after each epoch and
        ``{"kind": "maps", "maps": ..., "epoch": n}`` every ``maps_every`` epochs and at the end.
        ``scheduler``: the final maps are encoded by the workers of the dask scheduler at that
        address (an ``{"kind": "info"}`` event names it and its dashboard, also under ``"cluster"``).
        With ``checkpoint_path``, the training is saved there as the CLI saves it (atomically,
        checksummed, about 20 times per training and at a stop), so a crash loses at most one
        interval: Load checkpoint + Resume continues. When training finishes, the
        epoch-selection rule (the same as the CLI's) picks the model that gives the final maps."""
        finished = False
        every = max(1, self.total_epochs // 20) if checkpoint_path else 0
        for event in self.trainer.run(stop=stop, checkpoint_path=checkpoint_path or None,
                                      checkpoint_every=every):
            if event.kind == "epoch":
                values = event.to_dict()
                yield values
                if maps_every and event.epoch % maps_every == 0 and event.epoch < self.total_epochs:
                    yield {"kind": "maps", "maps": self.maps(), "epoch": event.epoch}
            elif event.kind in ("stopped", "finished") and event.message:
                finished = event.kind == "finished"
                yield {"kind": "info", "message": event.message}
        epoch = self.trainer.finish() if finished else self.epochs_done
        if scheduler is None:
            yield {"kind": "maps", "maps": self.maps(novelty=True), "epoch": epoch}
            return
        from distributed import as_completed

        from ..pipeline import connect_scheduler
        from ..rvae.distributed import submit_encoding

        with connect_scheduler(scheduler, "dask scheduler", timeout=10) as client:
            where = f"{scheduler} (dashboard {client.dashboard_link})"
            yield {"kind": "info", "message": f"encoding every pattern on {where}", "cluster": where}
            futures, assemble = submit_encoding(self.trainer.model, self.train_data, client, novelty=True)
            total = len(futures)
            yield {"kind": "encoding", "done": 0, "total": total, "cluster": where}
            for done, _ in enumerate(as_completed(futures), 1):  # the cluster's progress, task by task
                if stop.is_set():
                    client.cancel(futures)
                    yield {"kind": "info", "message": f"stopped while encoding on {where}: the maps of the "
                                                      "last epoch shown are kept"}
                    return
                yield {"kind": "encoding", "done": done, "total": total, "cluster": where}
            maps = assemble(futures)
            yield {"kind": "maps", "maps": self._named(maps), "epoch": epoch}

    def maps(self, novelty: bool = False) -> dict[str, np.ndarray]:
        """The rVAE maps of every probe position by schema name: ``angle`` (rad), ``angle_std``,
        ``angle_concentration``, ``latents`` (k, ny, nx), ``latents_std``, when learned
        ``shift``/``shift_std`` (2, ny, nx), with ``novelty`` the novelty map (encoded in this
        process; :meth:`run` encodes on a cluster when given a scheduler)."""
        return self._named(self.trainer.maps(novelty=novelty))

    @staticmethod
    def _named(maps: Any) -> dict[str, np.ndarray]:
        from ..results.files import RVAE_MAPS

        return {name: getattr(maps, name) for name in RVAE_MAPS if getattr(maps, name, None) is not None}

    def reconstruct(self, y: int, x: int) -> tuple[np.ndarray, np.ndarray]:
        """The prepared pattern at ``(y, x)`` and its reconstruction with the inferred pose."""
        from ..rvae import reconstruct_positions

        pattern = self.train_data.pattern(y, x)
        recon = reconstruct_positions(self.trainer.model, self.train_data, [(y, x)])[0]
        return pattern, recon

    def save(self, path: str) -> str:
        return self.trainer.save(path)

    def write_results(self, path: str) -> str:
        """A results file of the model as it is now: rVAE maps, parameters, history and (when
        computed) the COM maps, with the data set's calibration."""
        from ..results import write_results
        from ..rvae import RVAEResult

        ds = self.dataset
        return write_results(path, calibration=ds.calibration, scan_shape=ds.scan_shape, source=ds.source,
                             provenance=ds.provenance, com=self.com,
                             rvae=RVAEResult.from_trainer(self.trainer))
