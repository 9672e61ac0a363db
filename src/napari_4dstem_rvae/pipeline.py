"""The headless pipeline: the same calls the widgets make, without Qt.

``demo`` runs the whole chain on the built-in simulated graphene; the CLI (``stem-rvae``)
is a thin wrapper around the functions here.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import Dataset4D

_PHYSICAL_UNITS = {"Å": "A", "nm": "nm", "µm": "um", "pm": "pm"}


def save_dataset(dataset: Dataset4D, path: str | os.PathLike, chunks_rows: int | None = None) -> str:
    """Write a data set as an EMD 1.0 HDF5 file (readable by :func:`napari_4dstem_rvae.read`,
    py4DSTEM/emdfile and any HDF5 tool), streamed block by block from lazy data.

    Layout: root attrs ``emd_group_type="file"``, ``version_major=1``, ``version_minor=0``;
    ``/datacube_root`` (``emd_group_type="root"``) / ``datacube`` (``emd_group_type="array"``)
    with ``data`` (scan_y, scan_x, det_y, det_x) and ``dim0..dim3`` (name, units); our full
    calibration as JSON in the ``calibration_json`` attribute of the datacube group.
    """
    import h5py

    from .io import HDF5Source

    path = os.fspath(path)
    HDF5Source.close_all(path)
    ny, nx, ky, kx = dataset.shape
    cal = dataset.calibration
    dtype = dataset.dtype
    with h5py.File(path, "w") as f:
        f.attrs.update({"emd_group_type": "file", "version_major": 1, "version_minor": 0,
                        "authoring_program": "napari-4dstem-rvae"})
        root = f.create_group("datacube_root")
        root.attrs.update({"emd_group_type": "root", "python_class": "Root"})
        group = root.create_group("datacube")
        group.attrs.update({"emd_group_type": "array", "python_class": "DataCube",
                            "calibration_json": json.dumps(cal.to_dict()),
                            "provenance_json": json.dumps(list(dataset.provenance), default=str)})
        data = group.create_dataset("data", shape=dataset.shape, dtype=dtype,
                                    chunks=(1, min(nx, max(1, 2**22 // max(ky * kx * dtype.itemsize, 1))), ky, kx))
        rows = chunks_rows or max(1, (256 * 2**20) // max(nx * ky * kx * dtype.itemsize, 1))
        for start in range(0, ny, rows):
            block = dataset.data[start:start + rows]
            data[start:start + rows] = np.asarray(block.compute() if hasattr(block, "compute") else block)
        sy, sx = cal.scan_step_yx
        scan_unit = _PHYSICAL_UNITS.get(cal.scan_unit or "", "pixels") if cal.scan_step else "pixels"
        det_unit = {"mrad": "mrad", "1/Å": "A^-1"}.get(cal.det_unit or "", "pixels")
        det_step = cal.det_pixel_size or 1.0
        for i, (name, n, step, unit) in enumerate((("Rx", ny, sy, scan_unit), ("Ry", nx, sx, scan_unit),
                                                   ("Qx", ky, det_step, det_unit), ("Qy", kx, det_step, det_unit))):
            dim = group.create_dataset(f"dim{i}", data=np.arange(n) * step)
            dim.attrs.update({"name": name, "units": unit})
    return path


def write_image_png(image: np.ndarray, path: str | os.PathLike, title: str = "",
                    dataset: Dataset4D | None = None, cmap: str = "gray") -> str:
    """A figure of one real-space image with a scan-calibrated extent."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4.4), dpi=120)
    ax = fig.add_subplot(111)
    extent = None
    unit = "px"
    if dataset is not None and dataset.calibration.scan_step is not None:
        sy, sx = dataset.calibration.scan_step_yx
        ny, nx = image.shape
        extent = (-0.5 * sx, (nx - 0.5) * sx, (ny - 0.5) * sy, -0.5 * sy)
        unit = dataset.calibration.scan_unit or "px"
    shown = ax.imshow(image, cmap=cmap, extent=extent, interpolation="nearest")
    ax.set_xlabel(f"x ({unit})")
    ax.set_ylabel(f"y ({unit})")
    ax.set_title(title)
    fig.colorbar(shown, ax=ax, shrink=0.85)
    fig.savefig(os.fspath(path))
    return os.fspath(path)


def overview_images(dataset: Dataset4D) -> dict[str, np.ndarray]:
    """The total-intensity image and, when calibrated, the default ADF image (one pass)."""
    from ._layers import default_virtual_mask
    from .processing.engine import reduce_masks

    masks = {"sum": np.ones(dataset.det_shape, np.float32)}
    label, mask = default_virtual_mask(dataset)
    if label != "sum":
        masks[label.lower()] = mask
    return reduce_masks(dataset.data, masks)


def versions() -> dict[str, str]:
    """Versions of the packages that shape the results (for results files)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("napari-4dstem-rvae", "numpy", "dask", "h5py", "torch", "scikit-learn"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def write_results(path: str | os.PathLike, dataset: Dataset4D, maps: dict[str, np.ndarray],
                  parameters: dict[str, Any] | None = None) -> str:
    """An HDF5 results file: one dataset per map (scan_y, scan_x …), calibration and parameters."""
    import h5py

    from ._writer import RESULTS_MARK

    path = os.fspath(path)
    with h5py.File(path, "w") as f:
        f.attrs[RESULTS_MARK] = 1
        f.attrs["source"] = str(dataset.source or "")
        f.attrs["calibration_json"] = json.dumps(dataset.calibration.to_dict())
        f.attrs["provenance_json"] = json.dumps(list(dataset.provenance), default=str)
        f.attrs["parameters_json"] = json.dumps(parameters or {}, default=str)
        f.attrs["versions_json"] = json.dumps(versions())
        f.attrs["scan_shape"] = np.asarray(dataset.scan_shape)
        for name, values in maps.items():
            f.create_dataset(name, data=np.asarray(values))
    return path


def demo(out: str | os.PathLike = "out", defect: str | None = "vacancy", log=print,
         **rvae_changes: Any) -> dict[str, str]:
    """Simulate graphene → write it as HDF5 → open it lazily → virtual images → COM →
    rVAE (the CLI's defaults) → PNGs and HDF5 results in ``out``."""
    from . import io
    from .simulate import graphene

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log(f"simulating graphene 4D-STEM (60 kV, 31 mrad, defect={defect}) ...")
    simulated = graphene(defect=defect)
    data_path = save_dataset(simulated, out / "graphene_4dstem.h5")
    log(f"wrote {data_path} ({simulated.nbytes / 2**20:.1f} MiB, shape {simulated.shape})")
    dataset = io.read(data_path)
    log(f"opened {dataset}")
    images = overview_images(dataset)
    files = {"data": data_path}
    com_result, com_files = com(dataset, out, log=log)
    files.update({f"com_{k}": v for k, v in com_files.items()})
    for name, image in images.items():
        files[f"{name}_png"] = write_image_png(image, out / f"{name}.png", f"{name.upper()} image", dataset)
    files["images"] = write_results(out / "images.h5", dataset, images, {"defect": defect})
    outcome = run(dataset, out, log=log, com_result=com_result, images=images, **rvae_changes)
    files["results"], files["overview"] = outcome["results"], outcome["overview"]
    for key, value in files.items():
        log(f"{key}: {value}")
    return files

def preprocess(dataset: Dataset4D, *, crop_scan: Any = None, crop_detector: Any = None,
               bin_scan: int = 1, bin_detector: int = 1, bin_method: str = "sum",
               repair_bad_pixels: bool = False, center: bool = False, transform: str | None = None,
               normalize: str | None = None, subtract_mean: bool = False, pca_components: int = 0,
               mean_pattern: Any = None) -> Dataset4D:
    """The preprocessing chain, in the order a microscopist applies it: crop → bin →
    bad-pixel repair → direct-beam centring (descan plane) → intensity transform →
    mean-pattern subtraction → PCA denoising. Each step adds a provenance entry; the input
    is never modified. Lazy in, lazy out (PCA fits in memory or incrementally)."""
    from . import processing as proc

    ds = dataset
    if crop_scan is not None or crop_detector is not None:
        ds = proc.crop(ds, scan=crop_scan, detector=crop_detector)
    if bin_scan != 1 or bin_detector != 1:
        ds = proc.bin_data(ds, scan=bin_scan, detector=bin_detector, method=bin_method)
    if repair_bad_pixels:
        ds = proc.repair_bad_pixels(ds)
    if center:
        ds = proc.center_patterns(ds, fit="plane")
    if transform or normalize:
        ds = proc.transform_intensity(ds, function=transform, normalize=normalize)
    if subtract_mean:
        ds = proc.subtract_mean_pattern(ds, mean_pattern=mean_pattern)
    if pca_components:
        ds = proc.pca_denoise(ds, int(pca_components))
    return ds


def detector_bin_factor(det_shape: tuple[int, int], target: int | None) -> int:
    """Whole binning factor that brings the detector to about ``target`` pixels (≥ target)."""
    if not target:
        return 1
    if target < 1:
        raise ValueError(f"--bin must be a positive number of detector pixels, got {target}")
    return max(1, min(det_shape) // int(target))


def mark_results_file(path: str | os.PathLike, dataset: Dataset4D) -> None:
    """Make an HDF5 file of maps reopen in napari as layers aligned with the ADF image."""
    import h5py

    from ._writer import RESULTS_MARK

    with h5py.File(os.fspath(path), "a") as f:
        f.attrs[RESULTS_MARK] = 1
        f.attrs["scan_shape"] = np.asarray(dataset.scan_shape)
        if "calibration_json" not in f.attrs:
            f.attrs["calibration_json"] = json.dumps(dataset.calibration.to_dict())


def com(dataset: Dataset4D, out: str | os.PathLike, log=print, **options: Any) -> tuple[Any, dict[str, str]]:
    """COM/DPC maps of ``dataset`` (options of :func:`processing.compute_com`) written to
    ``out/com.h5`` (reopens in napari) and ``out/com.png``."""
    from .processing import compute_com, write_com_results

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = compute_com(dataset, **options)
    files = write_com_results(result, out / "com.h5", out / "com.png")
    mark_results_file(files["h5"], dataset)
    how = "calibrated (min curl)" if result.rotation is not None else "given"
    log(f"COM: rotation {result.rotation_deg:.2f}° {how}, flip {result.flip}, reference {result.reference}")
    return result, files


#: Detector size the rVAE sees by default (the study binned patterns to 64 × 64).
RVAE_DETECTOR_PIXELS = 64
#: Prepared data up to this size are computed into memory once (training reads them often).
RVAE_IN_MEMORY_LIMIT = 4 * 2**30


def prepare_for_rvae(dataset: Dataset4D, study_preprocessing: bool = True,
                     detector_pixels: int | None = RVAE_DETECTOR_PIXELS) -> Dataset4D:
    """The data the rVAE trains on: as in the study, the detector binned to about 64 × 64
    and the mean pattern subtracted (``study_preprocessing``); computed into memory when it
    fits, so that training does not re-read the file every epoch."""
    ds = dataset
    if study_preprocessing:
        factor = detector_bin_factor(ds.det_shape, detector_pixels)
        ds = preprocess(ds, bin_detector=factor, bin_method="sum", subtract_mean=True)
    if ds.is_lazy and ds.nbytes <= RVAE_IN_MEMORY_LIMIT:
        import dataclasses

        ds = dataclasses.replace(ds, data=np.asarray(ds.data.compute()), frame_source=None)
    return ds


def _rvae_result(trainer: Any) -> Any:
    """An :class:`rvae.RVAEResult` for a trainer driven step by step (e.g. by the widget)."""
    from .rvae import RVAEResult

    final = trainer.correlate() if trainer.com_magnitude is not None else None
    return RVAEResult(model=trainer.model, maps=trainer.maps(), history=list(trainer.history),
                      diagnostics=list(trainer.diagnostics), config=trainer.config, trainer=trainer,
                      best_epoch=trainer.epoch, final=final)


def write_rvae_results(path: str | os.PathLike, dataset: Dataset4D, result: Any, com: Any = None,
                       parameters: dict[str, Any] | None = None) -> str:
    """One HDF5 results file: ``/rvae`` (maps, spreads, parameters, loss history,
    diagnostics), ``/com`` (COM maps) and top-level ``angle`` (scan_y, scan_x, rad),
    ``latents`` (k, scan_y, scan_x), ``com_magnitude``, ``com_angle`` … (links to the
    groups), with calibration, parameters and versions; reopens in napari as layers."""
    import h5py

    from .rvae import write_results

    path = os.fspath(path)
    if hasattr(result, "epoch") and hasattr(result, "run"):  # a Trainer
        result = _rvae_result(result)
    if os.path.exists(path):
        os.remove(path)
    write_results(path, result, group="rvae")
    mark_results_file(path, dataset)
    with h5py.File(path, "a") as f:
        f.attrs["source"] = str(dataset.source or "")
        f.attrs["provenance_json"] = json.dumps(list(dataset.provenance), default=str)
        f.attrs["parameters_json"] = json.dumps(parameters or {}, default=str)
        f.attrs["versions_json"] = json.dumps(versions())
        if com is not None:
            group = f.create_group("com")
            for name, values in (("com_x", com.x), ("com_y", com.y), ("com_magnitude", com.magnitude),
                                 ("com_angle", com.angle), ("com_divergence", com.divergence),
                                 ("com_curl", com.curl)):
                group.create_dataset(name, data=np.asarray(values, np.float64))
            group.attrs["unit"] = "detector px (angle: rad)"
            group.attrs["rotation_deg"] = float(com.rotation_deg)
            group.attrs["flip"] = bool(com.flip)
        for name in ("angle", "angle_std", "latents", "latents_std", "shift"):
            if f"rvae/{name}" in f:
                f[name] = h5py.SoftLink(f"/rvae/{name}")
        if com is not None:
            for name in ("com_x", "com_y", "com_magnitude", "com_angle"):
                f[name] = h5py.SoftLink(f"/com/{name}")
    return path


def run(source: str | os.PathLike | Dataset4D, out: str | os.PathLike = "out", *, dataset: str | None = None,
        bin_to: int | None = RVAE_DETECTOR_PIXELS, subtract_mean: bool = True, roi: Any = None,
        config: Any = None, log=print, com_result: Any = None, images: dict | None = None,
        select_epoch: bool = True, **config_changes: Any) -> dict[str, Any]:
    """The headless rVAE pipeline: read → preprocess (bin to ``bin_to`` px, subtract the mean
    pattern) → COM → rVAE → ``out/results.h5`` and ``out/overview.png``; ``out`` may also be
    the results file itself (``RESULTS.h5``: the PNG goes beside it, ``RESULTS_overview.png``).

    ``roi``: boolean (scan_y, scan_x) mask or a ``.npy`` file of one (training positions).
    ``config_changes``: fields of :class:`rvae.RVAEConfig` (``latent_dim``, ``epochs`` …).
    ``com_result``/``images``: COM and overview images already computed for ``source``.
    ``select_epoch``: the study's stopping rule — the maps are correlated with the COM
    magnitude about 20 times during training and the model of the epoch with the largest
    latent–COM |r| is kept (unless ``correlate_every`` is given); ``False``: the last epoch.
    Returns the written paths and the :class:`rvae.RVAEResult`.
    """
    from . import io
    from .processing import compute_com
    from .rvae import RVAEConfig, fit, plot_overview
    from .rvae.train import n_test_of

    out = Path(out)
    if out.suffix.lower() in (".h5", ".hdf5"):
        results_file, png_file = out, out.with_name(out.stem + "_overview.png")
        out = out.parent
    else:
        results_file, png_file = out / "results.h5", out / "overview.png"
    out.mkdir(parents=True, exist_ok=True)
    ds = source if isinstance(source, Dataset4D) else io.read(source, **({"dataset": dataset} if dataset else {}))
    log(f"data: {ds.shape} {ds.dtype} from {ds.source or ds.name}")
    if roi is not None and not isinstance(roi, np.ndarray):
        roi_path = os.fspath(roi)
        try:
            roi = np.load(roi_path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"--roi {roi_path}: not a readable .npy mask ({exc})") from exc
    if roi is not None:
        roi = np.asarray(roi)
        if roi.shape != tuple(ds.scan_shape):
            raise ValueError(f"--roi mask has shape {roi.shape}; expected the scan shape {ds.scan_shape}")
        roi = roi.astype(bool)
    images = overview_images(ds) if images is None else images
    if com_result is None:
        com_result = compute_com(ds)
    log(f"COM: rotation {com_result.rotation_deg:.2f}°, flip {com_result.flip}")
    factor = detector_bin_factor(ds.det_shape, bin_to)
    prepared = preprocess(ds, bin_detector=factor, subtract_mean=subtract_mean)
    prepared = prepare_for_rvae(prepared, study_preprocessing=False)
    log(f"rVAE input: {prepared.shape} (detector binned ×{factor}, mean pattern "
        f"{'subtracted' if subtract_mean else 'kept'})")
    cfg = config if config is not None else RVAEConfig()
    if isinstance(cfg, dict):
        cfg = RVAEConfig.from_dict(cfg)
    cfg = cfg.replace(**{k: v for k, v in config_changes.items() if v is not None})
    if select_epoch and not cfg.correlate_every:
        n_chosen = int(roi.sum()) if roi is not None else int(np.prod(ds.scan_shape))
        total = cfg.epochs_for(n_chosen - n_test_of(n_chosen, cfg.test_fraction))
        cfg = cfg.replace(correlate_every=max(1, total // 20), keep_best=True)

    def progress(event):
        total = event.epochs_total
        if event.kind == "epoch" and (event.epoch % max(1, total // 10) == 0 or event.epoch == total):
            extra = "" if event.diagnostics is None else f", max |r| {event.diagnostics.max_abs_r:.3f}"
            log(f"epoch {event.epoch}/{event.epochs_total}: loss {event.train_loss:.4g}{extra} ({event.elapsed:.0f} s)")

    result = fit(prepared, cfg, roi_mask=roi, com_magnitude=com_result.magnitude, com_angle=com_result.angle,
                 callback=progress)
    parameters = {"bin_to": bin_to, "bin_factor": factor, "subtract_mean": subtract_mean,
                  "roi_positions": None if roi is None else int(roi.sum()),
                  "epoch_selection": "largest latent–COM |r|" if cfg.keep_best else "last epoch",
                  "rvae": result.config.to_dict()}
    if result.best_epoch != result.trainer.epoch:
        log(f"maps from epoch {result.best_epoch} of {result.trainer.epoch} (largest latent–COM |r|)")
    results_path = write_rvae_results(results_file, ds, result, com_result, parameters)
    adf = images.get("adf", images["sum"])
    png = plot_overview(png_file, result, adf=adf, com_magnitude=com_result.magnitude,
                        com_angle=com_result.angle, calibration=ds.calibration)
    log(f"latent–COM magnitude r: {', '.join(f'{r:+.3f}' for r in result.latent_r)}; "
        f"angle–COM angle ρ: {result.angle_rho:+.3f}")
    log(f"results: {results_path}\noverview: {png}")
    return {"results": results_path, "overview": png, "result": result}
