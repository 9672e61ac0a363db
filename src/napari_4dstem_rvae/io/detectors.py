"""Detector formats through RosettaSciIO (optional extra ``[formats]``, GPL — imported only
here, only when such a file is read): Merlin ``.mib``, blockfile ``.blo``, EMPAD ``.xml``,
Gatan ``.dm3``/``.dm4``, Velox ``.emd``, HyperSpy ``.hspy``/``.zspy``."""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

from ..dataset import Calibration, Dataset4D
from ..units import detector_unit, length_unit
from .common import ReadError, finish, positive, text


def read_rsciio(path: str, plugin: str, scan_shape: Any = None, chunks: Any = None,
                dataset: Any = None, **kwargs: Any) -> Dataset4D:
    """Read a detector file with RosettaSciIO (lazy) and map its axes and metadata."""
    import importlib

    try:
        module = importlib.import_module(f"rsciio.{plugin}")
    except ImportError as exc:
        raise ReadError(
            f"{path}: reading this format needs RosettaSciIO; install it with "
            "`pip install napari-4dstem-rvae[formats]`"
        ) from exc
    scan_shape_source = "file"
    target = path
    if plugin == "quantumdetector":
        if path.lower().endswith(".hdr"):
            target = _sibling(path, ".mib") or path[:-4] + ".mib"
        if scan_shape is not None:
            kwargs["navigation_shape"] = tuple(int(s) for s in scan_shape)[::-1]
            scan_shape, scan_shape_source = None, "user"
        else:
            scan_shape_source = _merlin_scan_shape(target, kwargs)
    if plugin == "emd" and dataset is not None:
        kwargs["dataset_path"] = dataset
    try:
        signals = module.file_reader(target, lazy=True, **kwargs)
    except ReadError:
        raise
    except Exception as exc:
        reason = " ".join(str(exc).split())  # one line
        raise ReadError(f"{path}: RosettaSciIO could not read it as {plugin} "
                        f"({type(exc).__name__}: {reason})") from exc
    signals = [s for s in signals if getattr(s.get("data"), "ndim", 0) in ((3, 4) if scan_shape else (4,)) or
               (plugin in ("quantumdetector", "empad") and getattr(s.get("data"), "ndim", 0) == 3)]
    if not signals:
        raise ReadError(f"{path}: contains no 4D-STEM data set (no 4D signal found by RosettaSciIO)")
    signals.sort(key=lambda s: -int(np.prod(s["data"].shape)))
    signal = signals[0]
    data = signal["data"]
    axes = sorted(signal.get("axes", []), key=lambda a: a.get("index_in_array", 0))
    if data.ndim == 3 and scan_shape is None:
        # A scan line: readers drop navigation axes of size 1 (EMPAD squeezes its data).
        nav_names = [str(text(a.get("name", ""))).lower() for a in axes if a.get("navigate")]
        if nav_names in (["scan_x"], ["x"]):
            scan_shape = (1, data.shape[0])
        elif nav_names in (["scan_y"], ["y"]):
            scan_shape = (data.shape[0], 1)
    calibration, metadata = _rsciio_calibration(axes, signal, path, plugin)
    metadata["rsciio_plugin"] = plugin
    if plugin == "quantumdetector":
        metadata["scan_shape_source"] = scan_shape_source
        asked = kwargs.get("navigation_shape")
        if asked is not None and data.ndim == 4 and tuple(data.shape[:2]) != tuple(asked[::-1]):
            warnings.warn(
                f"{path}: the scan shape {tuple(asked[::-1])} ({scan_shape_source}) needs more "
                f"frames than the file holds; reading the {data.shape[0]} complete scan lines "
                f"{tuple(data.shape[:2])} (interrupted acquisition?)", stacklevel=3)
        if scan_shape_source == "frame timestamps" and data.ndim == 4:
            warnings.warn(
                f"{path}: no scan size (ScanX/ScanY) in a .hdr; RosettaSciIO guessed the scan "
                f"shape {tuple(data.shape[:2])} from the frame timestamps; pass "
                "scan_shape=(scan_y, scan_x) if it is wrong", stacklevel=3)
    return finish(data, path, calibration, metadata, scan_shape, chunks, f"rsciio:{plugin}")


def _sibling(path: str, ext: str) -> str | None:
    """``path`` with its extension replaced by ``ext`` (either case), if that file exists."""
    stem = os.path.splitext(path)[0]
    for candidate in (stem + ext, stem + ext.upper()):
        if os.path.exists(candidate):
            return candidate
    return None


def _merlin_scan_shape(mib_path: str, kwargs: dict) -> str:
    """Use ScanX/ScanY from the Merlin ``.hdr`` (Merlin software 1.5 and later) as the scan
    shape; RosettaSciIO 0.15 ignores them and guesses from frames per trigger or timestamps.
    Returns where the scan shape comes from."""
    hdr_path = _sibling(mib_path, ".hdr")
    if hdr_path is None:
        return "frame timestamps"
    hdr: dict[str, str] = {}
    try:
        with open(hdr_path, encoding="utf-8", errors="ignore") as fh:
            for line in fh:
                if line.startswith("HDR") or line.startswith("End") or "\t" not in line:
                    continue
                key, value = line.split("\t", 1)
                hdr[key.strip().rstrip(":").strip()] = value.strip()
    except OSError:
        return "frame timestamps"
    try:
        scan_x, scan_y = int(hdr["ScanX"]), int(hdr["ScanY"])
    except (KeyError, ValueError):
        scan_x = scan_y = 0
    if scan_x > 0 and scan_y > 0:
        kwargs["navigation_shape"] = (scan_x, scan_y)  # HyperSpy order: x first
        return "hdr ScanX/ScanY"
    try:
        per_trigger = int(hdr.get("Frames per Trigger (Number)", "1"))
    except ValueError:
        per_trigger = 1
    return "hdr frames per trigger" if per_trigger > 1 else "frame timestamps"


def _rsciio_calibration(axes: list[dict], signal: dict, path: str,
                        plugin: str = "") -> tuple[Calibration, dict]:
    fields: dict[str, Any] = {}
    nav = [a for a in axes if a.get("navigate")]
    sig = [a for a in axes if not a.get("navigate", False)]
    metadata: dict[str, Any] = {"axes": [{k: text(a.get(k)) for k in ("name", "scale", "offset", "units", "size")}
                                         for a in axes]}
    if len(nav) == 2:
        units = {length_unit(a.get("units")) for a in nav}
        scales = [positive(a.get("scale")) for a in nav]
        if len(units) == 1 and None not in units and all(scales):
            fields.update(scan_step=tuple(scales), scan_unit=units.pop())
    if len(sig) == 2:
        size, unit = detector_unit(sig[0].get("units"), positive(sig[0].get("scale")))
        if unit:
            fields.update(det_pixel_size=size, det_unit=unit)
            # offsets of the detector axes put zero angle at the direct beam (EMPAD's are a
            # fixed -64 px by RosettaSciIO's convention, not a measurement: ignored)
            origin = [-float(a.get("offset", 0.0) or 0.0) / float(a.get("scale", 1.0)) for a in sig]
            if any(o != 0 for o in origin) and plugin != "empad":
                fields["det_origin"] = tuple(origin)
        elif text(sig[0].get("units")) not in (None, "", "<undefined>"):
            metadata["detector_calibration_unconverted"] = {
                "scale": text(sig[0].get("scale")), "units": text(sig[0].get("units"))}
    tem = _mapped_metadata(signal).get("Acquisition_instrument", {}).get("TEM", {})
    if positive(tem.get("beam_energy")):
        fields["energy_kev"] = positive(tem["beam_energy"])
    if positive(tem.get("convergence_angle")):
        fields["semiangle_mrad"] = positive(tem["convergence_angle"])
    if plugin == "empad" and "energy_kev" not in fields:
        # EMPAD .xml (v1.2+): <iom_measurements><high_voltage> in volts, not mapped by RosettaSciIO
        iom = (signal.get("original_metadata") or {}).get("root", {}).get("iom_measurements", {})
        volts = positive(iom.get("high_voltage")) if isinstance(iom, dict) else None
        if volts:
            fields["energy_kev"] = volts / 1e3
    try:
        calibration = Calibration(**fields)
    except ValueError as exc:
        warnings.warn(f"{path}: ignoring an invalid calibration ({exc})", stacklevel=3)
        calibration = Calibration()
    general = signal.get("metadata", {}).get("General", {})
    metadata["title"] = text(general.get("title", "")) or None
    return calibration, metadata


def _mapped_metadata(signal: dict) -> dict:
    """HyperSpy-style metadata, with RosettaSciIO's ``mapping`` from the original metadata applied
    (done by HyperSpy, not by the file readers)."""
    import copy

    md = copy.deepcopy(signal.get("metadata", {}) or {})
    original = signal.get("original_metadata", {}) or {}
    for source, (target, func) in (signal.get("mapping") or {}).items():
        node: Any = original
        for key in source.split("."):
            node = node.get(key) if isinstance(node, dict) else None
            if node is None:
                break
        if node is None:
            continue
        try:
            value = func(node) if func is not None else node
        except Exception:
            continue
        out = md
        keys = target.split(".")
        for key in keys[:-1]:
            out = out.setdefault(key, {})
        out.setdefault(keys[-1], value)
    return md
