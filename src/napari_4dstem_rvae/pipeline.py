"""The headless pipeline: the same calls the widgets make, without Qt.

- :func:`overview_images` — the total-intensity and default ADF images (one pass);
- :func:`images` — those images as a results file and PNGs;
- :func:`com` — COM/DPC maps as a results file and a PNG;
- :func:`run` — read → bin → subtract the mean pattern → COM → rVAE → results file and overview;
- :func:`demo` — the whole chain on the built-in simulated graphene.

The CLI (``stem-rvae``) is a thin wrapper around these functions. Importing this module
imports neither torch nor Qt nor napari: the rVAE engine loads when :func:`run` needs it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import Dataset4D
from .processing.chain import (
    RVAE_DETECTOR_PIXELS,
    detector_bin_factor,
    prepare_for_rvae,
    remove_reduced_store,
)


def open_dataset(source: str | os.PathLike | Dataset4D, **read_options: Any) -> Dataset4D:
    """``source`` as a Dataset4D: a Dataset4D as is, a path read lazily with ``read_options``
    (``dataset``, ``scan_shape``, raw layout, ``calibration`` …; ``None`` values are ignored)."""
    if isinstance(source, Dataset4D):
        return source
    from .io import read

    return read(source, **{k: v for k, v in read_options.items() if v is not None})


def overview_masks(dataset: Dataset4D) -> dict[str, np.ndarray]:
    """The detectors of the overview images: the total intensity (``"sum"``) and, when the
    calibration gives the bright-field disk, the default ADF (``"adf"``;
    :func:`processing.virtual.default_image_detector`)."""
    from .processing.virtual import default_image_detector

    masks = {"sum": np.ones(dataset.det_shape, np.float32)}
    name, mask = default_image_detector(dataset.calibration, dataset.det_shape)
    if name != "sum":
        masks[name] = mask
    return masks


def overview_images(dataset: Dataset4D) -> dict[str, np.ndarray]:
    """The overview images (:func:`overview_masks`) in one pass."""
    from .processing.engine import reduce_masks

    return reduce_masks(dataset.data, overview_masks(dataset), nonfinite="nan")


def _output_paths(out: str | os.PathLike, stem: str, inputs: Any = ()) -> tuple[Path, Path]:
    """(results file, PNG) for ``out``: a folder (``out/<stem>.h5``, ``out/<stem>.png``) or a
    results file ``RESULTS.h5`` (the PNG beside it, ``RESULTS_overview.png``)."""
    out = Path(out)
    if out.suffix.lower() in (".h5", ".hdf5"):
        return out, out.with_name(out.stem + "_overview.png")
    if out.exists() and not out.is_dir():
        for source in inputs:
            if source and os.path.exists(os.fspath(source)) and os.path.samefile(out, os.fspath(source)):
                raise ValueError(f"--out {out} is the input {os.fspath(source)}; choose another output "
                                 "so that the input is not overwritten")
        raise ValueError(f"--out {out} is an existing file, not a folder; give a folder or a results "
                         "file name ending in .h5 (the file is left untouched)")
    return out / f"{stem}.h5", out / f"{stem}.png"  # the folder is made by claim_output


def _results_args(dataset: Dataset4D) -> dict[str, Any]:
    return {"calibration": dataset.calibration, "scan_shape": dataset.scan_shape,
            "source": dataset.source, "provenance": dataset.provenance}


def images(dataset: Dataset4D, out: str | os.PathLike, log=print,
           maps: dict[str, np.ndarray] | None = None) -> dict[str, str]:
    """The overview images of ``dataset`` (or ``maps``) as ``out/images.h5`` and one PNG each."""
    from .results import claim_output, image_figure, write_results

    results_file, _ = _output_paths(out, "images", [dataset.source])
    with claim_output(results_file, [dataset.source]):
        maps = overview_images(dataset) if maps is None else maps
        files = {"images": write_results(results_file, images=maps, **_results_args(dataset))}
    for name, image in maps.items():
        files[f"{name}_png"] = image_figure(results_file.with_name(f"{name}.png"), image, name, dataset.calibration)
    for path in files.values():
        log(path)
    return files


def task_progress(log: Any, what: str) -> Any:
    """A ``progress(done, total)`` callback that logs a cluster's finished tasks about every
    tenth of them (the CLI's progress over dask futures)."""
    def progress(done: int, total: int) -> None:
        if done == 0:
            log(f"{what}: {total} tasks on the cluster")
        elif done == total or done % max(1, total // 10) == 0:
            log(f"{what}: {done}/{total} tasks done")
    return progress


def com(dataset: Dataset4D, out: str | os.PathLike, options: Any = None, log=print,
        **changes: Any) -> tuple[Any, dict[str, str]]:
    """COM/DPC maps of ``dataset`` (a :class:`processing.COMOptions` and/or its fields, plus
    ``client``) written to ``out/com.h5`` (reopens in napari) and ``out/com.png``."""
    from .processing import compute_com
    from .results import claim_output, com_figure, write_results

    h5, png = _output_paths(out, "com", [dataset.source])
    if changes.get("client") is not None and "progress" not in changes:
        changes["progress"] = task_progress(log, "COM")
    with claim_output(h5, [dataset.source]):
        result = compute_com(dataset, options, **changes)
        files = {"h5": write_results(h5, com=result, **_results_args(dataset)), "png": com_figure(png, result)}
    problem = result.rotation.problem if result.rotation is not None else None
    how = ("given" if result.rotation is None else "calibrated (min curl)" if problem is None
           else "used instead of an unreliable automatic value")
    log(f"COM: rotation {result.rotation_deg:.2f}° {how}, flip {result.flip}, reference {result.reference}")
    return result, files


def _load_roi(roi: Any, scan_shape: tuple[int, int]) -> np.ndarray | None:
    if roi is None:
        return None
    if not isinstance(roi, np.ndarray):
        roi_path = os.fspath(roi)
        try:
            roi = np.load(roi_path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"--roi {roi_path}: not a readable .npy mask ({exc})") from exc
    roi = np.asarray(roi)
    if roi.shape != tuple(scan_shape):
        raise ValueError(f"--roi mask has shape {roi.shape}; expected the scan shape {tuple(scan_shape)}")
    return roi.astype(bool)


def run(source: str | os.PathLike | Dataset4D, out: str | os.PathLike = "out", *,
        read_options: dict[str, Any] | None = None, bin_to: int | None = RVAE_DETECTOR_PIXELS,
        roi: Any = None, config: Any = None, log=print, com_result: Any = None, images: dict | None = None,
        resume: str | os.PathLike | bool = True, checkpoint_every: int | None = None,
        client: Any = None, workers: int | None = None, reduced: str = "auto",
        **config_changes: Any) -> dict[str, Any]:
    """The headless rVAE pipeline: read → bin the detector to ``bin_to`` px → COM → rVAE (which
    centres its input on the mean pattern, as the study did) → ``out/results.h5`` and
    ``out/overview.png``; ``out`` may also be the results file itself (``RESULTS.h5``: the PNG
    goes beside it, ``RESULTS_overview.png``).

    Nothing the user had is lost: the output is checked before any work (not an input, not a
    folder, not a foreign file, writable) and locked against a second writer; the results
    file appears complete or not at all. Training writes a checkpoint beside it
    (``RESULTS.checkpoint.pt``) every ``checkpoint_every`` epochs (default: ~20 times per
    training); when the same command runs again after a crash or a kill, it continues from
    there (``resume=True``; ``False``: start afresh; a path: that checkpoint, which must fit).
    The checkpoint is removed once the results are written.

    ``read_options``: for :func:`napari_4dstem_rvae.read` (``dataset``, ``scan_shape`` …).
    ``roi``: boolean (scan_y, scan_x) mask or a ``.npy`` file of one (training positions).
    ``config`` / ``config_changes``: an :class:`rvae.RVAEConfig` (or dict) and single fields
    of it (``latent_dim``, ``epochs``, ``epoch_selection`` …; ``None`` values are ignored).
    ``com_result``/``images``: COM and overview images already computed for ``source``.
    ``client`` (a ``distributed.Client`` or a scheduler address) or ``workers`` (a local
    cluster of that many worker processes): the COM pass and the encoding of every pattern
    run on the cluster (training itself stays in this process).
    ``reduced``: when the binned patterns exceed the memory budget (``"auto"``), or always, they
    are written once to ``RESULTS.reduced.zarr`` beside the results (by the cluster's workers
    when there is one) and training and encoding read that store instead of the raw file; it
    is reused by a rerun after a crash and removed with the checkpoint once the results are
    written (``"never"``: read and bin the file lazily at every step).
    Started by ``torchrun --nproc_per_node N`` (``WORLD_SIZE`` > 1 in the environment), the
    processes train one model together (:mod:`rvae.parallel`: each reads its share of every
    minibatch; gloo on CPUs, NCCL on GPUs); rank 0 writes the checkpoints, the results and the
    log, the other ranks return ``None`` for each entry.
    Returns the written paths and the :class:`rvae.RVAEResult`.
    """
    from .results import claim_output
    from .rvae.parallel import init_from_environment, share_of_threads

    rank, ranks = init_from_environment(config_changes.get("device") or "auto")
    if ranks > 1:
        if client is not None or workers is not None:
            raise ValueError("--scheduler/--workers cannot be combined with torchrun: use one or the other")
        config_changes["threads"] = share_of_threads(config_changes.get("threads"))

    inputs = [source] if not isinstance(source, Dataset4D) else [source.source]
    if not isinstance(resume, bool) and resume is not None:
        inputs.append(resume)
    results_file, png_file = _output_paths(out, "results", inputs)
    if png_file.name == "results.png":
        png_file = png_file.with_name("overview.png")
    if rank:  # trains along with rank 0: reads the same checkpoint, writes nothing, prints nothing
        # (no overview images: they are only written, and rank 0 writes)
        return _run(source, results_file, png_file, read_options=read_options, bin_to=bin_to, roi=roi,
                    config=config, log=lambda *_: None, com_result=com_result, images={}, resume=resume,
                    checkpoint_every=checkpoint_every, reduced=reduced, **config_changes)
    if workers is not None and int(workers) < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    with claim_output(results_file, inputs), _cluster(client, workers, log) as dask_client:
        return _run(source, results_file, png_file, read_options=read_options, bin_to=bin_to, roi=roi,
                    config=config, log=log, com_result=com_result, images=images, resume=resume,
                    checkpoint_every=checkpoint_every, client=dask_client, reduced=reduced,
                    **config_changes)


@contextmanager
def connect_scheduler(address: str, what: str = "scheduler", timeout: float = 20) -> Iterator[Any]:
    """A ``distributed.Client`` connected to the scheduler at ``address``, closed afterwards; a
    ValueError naming ``what`` (the option or field) when nothing answers there."""
    from distributed import Client

    try:
        client = Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        raise ValueError(f"{what} {address}: no dask scheduler answers there ({exc})") from None
    with client:
        yield client


@contextmanager
def _cluster(client: Any, workers: int | None, log: Any) -> Iterator[Any]:
    """The ``distributed.Client`` of a run: the one given, one connected to an address, a local
    cluster of ``workers`` processes, or None (this process only)."""
    if client is None and workers is None:
        yield None
        return
    from distributed import Client, LocalCluster

    if client is not None and not isinstance(client, str):
        yield client
        return
    if client is not None:
        with connect_scheduler(client, "--scheduler") as own:
            log(f"dask: {client}, {len(own.scheduler_info()['workers'])} workers; dashboard {own.dashboard_link}")
            yield own
        return
    with LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as own:
        log(f"dask: local cluster of {workers} worker processes; dashboard {own.dashboard_link}")
        yield own


def _prepared(ds: Dataset4D, bin_to: int | None, store: Path, reduced: str, log: Any) -> Dataset4D:
    """The binned data the rVAE reads (:func:`prepare_for_rvae`); under torchrun rank 0 writes
    the reduced store (when one is needed) and the other ranks wait for it, then read it."""
    from .rvae.parallel import world

    rank, ranks = world()
    prepared = prepare_for_rvae(ds, bin_to, store=store, reduced=reduced, log=log) if rank == 0 else None
    if ranks > 1:
        import torch.distributed as dist

        dist.barrier()
        if rank:
            prepared = prepare_for_rvae(ds, bin_to, store=store, reduced=reduced)
    return prepared


def _run(source: Any, results_file: Path, png_file: Path, *, read_options: dict | None, bin_to: int | None,
         roi: Any, config: Any, log: Any, com_result: Any, images: dict | None, resume: Any,
         checkpoint_every: int | None, client: Any = None, reduced: str = "auto",
         **config_changes: Any) -> dict[str, Any]:
    from .processing import compute_com
    from .results import overview_figure, write_results
    from .rvae import RVAEConfig, fit, resolve_likelihood
    from .rvae.data import as_patterns, looks_like_counts
    from .rvae.selection import describe

    cfg = config if config is not None else RVAEConfig()
    if isinstance(cfg, dict):
        cfg = RVAEConfig.from_dict(cfg)
    cfg = cfg.replace(**{k: v for k, v in config_changes.items() if v is not None})
    if cfg.epochs == 0:
        raise ValueError("--epochs 0 would write an untrained model as results; give at least 1 "
                         "(or leave it out for the default length)")
    ds = open_dataset(source, **(read_options or {}))
    if ds.source and os.path.exists(os.fspath(ds.source)):
        from .results.files import _same_or_inside

        if _same_or_inside(os.fspath(results_file), os.fspath(ds.source)):
            raise ValueError(f"--out {results_file} is the input {ds.source}; choose another output")
    log(f"data: {ds.shape} {ds.dtype} from {ds.source or ds.name}")
    roi = _load_roi(roi, ds.scan_shape)
    if com_result is None:
        # the overview images ride along in the COM pass: one read of the data for both, on
        # the cluster when there is one
        detectors = overview_masks(ds) if images is None else None
        com_result = compute_com(ds, detectors=detectors, client=client,
                                 progress=None if client is None else task_progress(log, "COM"))
        overview = images if detectors is None else {k: com_result.virtual[k] for k in detectors}
    else:
        overview = overview_images(ds) if images is None else images
    log(f"COM: rotation {com_result.rotation_deg:.2f}°, flip {com_result.flip}")
    factor = detector_bin_factor(ds.det_shape, bin_to)
    store = results_file.with_name(results_file.stem + ".reduced.zarr")
    prepared = _prepared(ds, bin_to, store, reduced, log)
    likelihood = resolve_likelihood(cfg, prepared)
    counts = looks_like_counts(as_patterns(prepared), np.arange(int(np.prod(prepared.scan_shape))))
    log(f"rVAE input: {prepared.shape} (detector binned ×{factor}), {'counts' if counts else 'not counts'}; "
        f"likelihood {likelihood}{' (auto)' if cfg.likelihood == 'auto' else ''}; novelty with "
        f"{'Poisson' if counts else 'Gaussian'} noise; epoch selection: {describe(cfg, True)}"
        + (f"; {cfg.restarts} restarts" if cfg.restarts > 1 else ""))
    cfg = cfg.replace(likelihood=likelihood)
    from .rvae.parallel import world

    ranks = world()[1]
    if ranks > 1:
        import torch.distributed as dist

        log(f"training on {ranks} processes together (torchrun, {dist.get_backend()}; "
            f"{cfg.threads or 'default'} threads each); this process writes the results")
    checkpoint = results_file.with_name(results_file.stem + ".checkpoint.pt")
    start_from = None
    if resume is not True and resume not in (False, None):
        start_from = os.fspath(resume)
        if not os.path.exists(start_from):
            raise ValueError(f"--resume {start_from}: no such checkpoint")
    elif resume and checkpoint.exists():
        start_from = os.fspath(checkpoint)

    def progress(event):
        total = event.epochs_total
        if event.kind == "epoch" and (event.epoch % max(1, total // 10) == 0 or event.epoch == total):
            extra = "" if event.diagnostics is None else f", max |r| {event.diagnostics.max_abs_r:.3f}"
            log(f"epoch {event.epoch}/{event.epochs_total}: loss {event.train_loss:.4g}{extra} ({event.elapsed:.0f} s)")

    fit_args = dict(roi_mask=roi, com_magnitude=com_result.magnitude, com_angle=com_result.angle,
                    callback=progress, checkpoint_path=checkpoint, checkpoint_every=checkpoint_every)
    if client is not None:
        from .rvae.distributed import encode_on_cluster

        def announce(futures: list) -> None:
            from distributed import as_completed

            total = len(futures)
            log(f"encoding {prepared.scan_shape[0] * prepared.scan_shape[1]} patterns on the cluster in "
                f"{total} tasks (dashboard {client.dashboard_link})")
            report = task_progress(log, "encoding")
            for done, _ in enumerate(as_completed(futures), 1):  # progress as the tasks finish
                report(done, total)

        from .processing.chain import preprocess

        # the workers read their own blocks: of the reduced store when there is one, else of
        # the file, binned as they read (not the copy in this process)
        lazy = prepared if prepared.is_lazy else (preprocess(ds, bin_detector=factor) if factor > 1 else ds)
        fit_args["encoder"] = lambda model: encode_on_cluster(model, lazy, client, novelty=True,
                                                              submitted=announce)
    try:
        result = fit(prepared, cfg, resume=start_from, **fit_args)
        if start_from is not None:
            log(f"continued from checkpoint {start_from}")
    except ValueError as exc:
        if start_from is None or resume is not True:
            raise
        log(f"the checkpoint {start_from} does not fit this run ({exc}); starting afresh")
        result = fit(prepared, cfg, **fit_args)
    if result is None:  # another rank of a torchrun job: rank 0 writes the results
        return {"results": None, "overview": None, "result": None}
    parameters = {"bin_to": bin_to, "bin_factor": factor, "likelihood": result.config.likelihood,
                  "roi_positions": None if roi is None else int(roi.sum()),
                  "epoch_selection": describe(result.config, True), "rvae": result.config.to_dict(),
                  "restart_scores": getattr(result.trainer, "restart_scores", None),
                  "resumed_from": start_from}
    if result.best_epoch != result.trainer.epoch:
        log(f"maps from epoch {result.best_epoch} of {result.trainer.epoch} ({describe(result.config, True)})")
    if result.maps.novelty is not None:
        top = float(np.nanmax(result.maps.novelty))
        where = tuple(int(v) for v in np.unravel_index(np.nanargmax(result.maps.novelty), result.maps.novelty.shape))
        against = ("the scan's periodic average" if result.maps.novelty_reference == "lattice"
                   else "the model's reconstruction (no lattice found in the scan)")
        log(f"novelty (against {against}): highest {top:.1f} robust SD at probe {where}")
    results_path = write_results(results_file, images=overview, com=com_result, rvae=result,
                                 parameters=parameters, **_results_args(ds))
    if checkpoint.exists():
        checkpoint.unlink()  # the results hold everything now; a new run starts afresh
    remove_reduced_store(store)
    adf = overview.get("adf", overview["sum"])
    png = overview_figure(png_file, result, adf=adf, com=com_result, calibration=ds.calibration)
    log(f"latent–COM magnitude r: {', '.join(f'{r:+.3f}' for r in result.latent_r)}; "
        f"angle–COM angle ρ (Fisher–Lee): {result.angle_rho:+.3f}")
    log(f"results: {results_path}\noverview: {png}")
    return {"results": results_path, "overview": png, "result": result}


#: The quick demo: a 16 × 16 scan and a short training (under a minute on 2 cores).
QUICK_DEMO = {"scan_shape": (16, 16), "steps": 600}


def demo(out: str | os.PathLike = "out", defect: str | None = "vacancy", log=print, quick: bool = False,
         **rvae_changes: Any) -> dict[str, str]:
    """Simulate graphene → write it as HDF5 → open it lazily → virtual images → COM →
    rVAE (the CLI's defaults) → PNGs and HDF5 results in ``out``.

    ``quick``: a 16 × 16 scan and 600 optimisation steps instead of 32 × 32 and the default
    ~2,400 (the maps are rougher; the chain is the same)."""
    from .io import read, save_dataset
    from .simulate import graphene

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log(f"simulating graphene 4D-STEM (60 kV, 31 mrad, defect={defect}) ...")
    simulated = graphene(defect=defect, **({"scan_shape": QUICK_DEMO["scan_shape"]} if quick else {}))
    if quick:
        rvae_changes.setdefault("steps", QUICK_DEMO["steps"])
    data_path = save_dataset(simulated, out / "graphene_4dstem.h5")
    log(f"wrote {data_path} ({simulated.nbytes / 2**20:.1f} MiB, shape {simulated.shape})")
    dataset = read(data_path)
    log(f"opened {dataset}")
    overview = overview_images(dataset)
    files = {"data": data_path}
    com_result, com_files = com(dataset, out, log=log)
    files.update({f"com_{k}": v for k, v in com_files.items()})
    files.update(images(dataset, out, log=lambda *_: None, maps=overview))
    outcome = run(dataset, out, log=log, com_result=com_result, images=overview, **rvae_changes)
    files["results"], files["overview"] = outcome["results"], outcome["overview"]
    for key, value in files.items():
        log(f"{key}: {value}")
    return files
