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
                dataset: Any = None, fill_missing: bool = False, **kwargs: Any) -> Dataset4D:
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
            if not os.path.exists(target):
                raise ReadError(f"{path}: a Merlin .hdr without its .mib frames ({target} is missing)")
        layout = merlin_layout(target)
        _check_announced_frames(path, target, layout["complete"])
        if scan_shape is not None:
            scan_shape = _two_positive(path, scan_shape)
            scan_shape_source = "user"
        else:
            scan_shape, scan_shape_source = _merlin_scan_shape(target)
        if scan_shape is not None:
            scan_shape = _complete_scan(path, scan_shape, scan_shape_source, layout)
            kwargs["navigation_shape"] = scan_shape[::-1]  # HyperSpy order: x first
        elif layout["partial_bytes"]:
            warnings.warn(f"{path}: the file ends inside frame {layout['complete'] + 1} (truncated); "
                          f"reading the {layout['complete']} complete frames", stacklevel=3)
    if plugin == "blockfile":
        blockfile_layout(path)
    if plugin == "emd" and dataset is not None:
        kwargs["dataset_path"] = dataset
    try:
        with _quiet_rsciio():
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
    if plugin == "empad":
        _check_empad_raw(path, int(np.prod(data.shape[:-2])), tuple(data.shape[-2:]))
    if plugin in ("hspy", "emd"):
        _check_hdf5_chunks(target, data.shape, fill_missing)
    calibration, metadata = _rsciio_calibration(axes, signal, path, plugin)
    metadata["rsciio_plugin"] = plugin
    if plugin == "quantumdetector":
        metadata["scan_shape_source"] = scan_shape_source
        if scan_shape is not None and data.ndim == 4:
            if tuple(data.shape[:2]) != tuple(scan_shape):
                raise ReadError(f"{path}: RosettaSciIO read a scan of {tuple(data.shape[:2])} "
                                f"frames where {tuple(scan_shape)} was asked")
            scan_shape = None
        n_read = int(np.prod(data.shape[:-2]))
        complete = layout["complete"]
        if data.ndim == 3 and scan_shape is None:
            raise ReadError(f"{path}: holds {complete or n_read} complete frames of "
                            f"{tuple(data.shape[1:])} pixels and RosettaSciIO found no scan shape "
                            f"({scan_shape_source}); pass scan_shape=(scan_y, scan_x)")
        if complete and n_read < complete and scan_shape_source not in ("user", "hdr ScanX/ScanY"):
            warnings.warn(f"{path}: the scan shape {tuple(data.shape[:2])} guessed from the "
                          f"{scan_shape_source} uses {n_read} of the {complete} complete frames; "
                          "pass scan_shape=(scan_y, scan_x) to read others", stacklevel=3)
        elif scan_shape_source == "frame timestamps" and data.ndim == 4:
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


MIB_DEPTHS = {"U01": None, "U08": 1, "U16": 2, "U32": 4, "U64": 8}


def merlin_layout(path: str) -> dict[str, Any]:
    """The frame layout of a Merlin ``.mib`` from its first frame header (``MQ1,<seq>,
    <header bytes>,<chips>,<width>,<height>,<depth>,...``) and the number of complete frames
    the file holds; a file that is no Merlin frame stream is a ReadError."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(768)
    except OSError as exc:
        raise ReadError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    fields = head.split(b",")
    if not head.startswith(b"MQ1,"):
        raise ReadError(f"{path}: not a Merlin .mib frame stream (a frame header starts with "
                        f"'MQ1,', found {head[:12]!r})")
    try:
        header_bytes, width, height = int(fields[2]), int(fields[4]), int(fields[5])
        depth = fields[6].decode("ascii").strip()
    except (ValueError, UnicodeDecodeError, IndexError):
        raise ReadError(f"{path}: the first Merlin frame header is damaged "
                        f"({b','.join(fields[:7])[:60]!r})") from None
    if depth.startswith("R"):  # raw counter mode: RosettaSciIO decodes it
        return {"frame_bytes": None, "complete": None, "partial_bytes": 0, "det_shape": None}
    bpp = MIB_DEPTHS.get(depth)
    if depth == "U01":
        raise ReadError(f"{path}: 1-bit Merlin frames (U01) are not supported; acquire in 8 bits or more")
    if bpp is None or not 16 <= header_bytes <= 65536 or not 0 < width <= 65536 or not 0 < height <= 65536:
        raise ReadError(f"{path}: the first Merlin frame header is damaged or unsupported "
                        f"(header {header_bytes} bytes, {width}×{height} pixels, depth {depth!r})")
    frame_bytes = header_bytes + width * height * bpp
    complete, partial = divmod(size, frame_bytes)
    if complete == 0:
        raise ReadError(f"{path}: holds no complete frame ({size} bytes; one {width}×{height} {depth} "
                        f"frame with its header takes {frame_bytes} bytes)")
    try:
        with open(path, "rb") as fh:
            for frame in sorted({1, complete - 1} - {0}):
                fh.seek(frame * frame_bytes)
                if fh.read(4) != b"MQ1,":
                    raise ReadError(
                        f"{path}: the first Merlin frame header does not match the file: no frame header "
                        f"where frame {frame + 1} should start (byte {frame * frame_bytes}) for "
                        f"{width}×{height} {depth} frames with {header_bytes}-byte headers")
    except OSError as exc:
        raise ReadError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    return {"frame_bytes": frame_bytes, "complete": complete, "partial_bytes": partial,
            "det_shape": (height, width), "depth": depth}


BLOCKFILE_HEADER = np.dtype([("ID", "S6"), ("MAGIC", "<u2"), ("offset1", "<u4"), ("offset2", "<u4"),
                             ("unknown", "<u4"), ("DP_SZ", "<u2"), ("DP_rotation", "<u2"),
                             ("NX", "<u2"), ("NY", "<u2")])
BLOCKFILE_FRAME_MAGIC = b"\xaa\x55"  # 0x55AA little-endian, before every pattern


def blockfile_layout(path: str) -> dict[str, int]:
    """Check an ASTAR blockfile's header against its size and frame markers (every pattern is
    preceded by 0x55AA and a 4-byte index): a lying header is a ReadError, not a wrong array."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            raw = fh.read(BLOCKFILE_HEADER.itemsize)
            if len(raw) < BLOCKFILE_HEADER.itemsize:
                raise ReadError(f"{path}: too short for a blockfile header ({size} bytes)")
            h = np.frombuffer(raw, BLOCKFILE_HEADER)[0]
            if bytes(h["ID"]) != b"IMGBLO":
                raise ReadError(f"{path}: not an ASTAR blockfile (expected 'IMGBLO' at the start, "
                                f"found {bytes(h['ID'])!r})")
            nx, ny, dp = int(h["NX"]), int(h["NY"]), int(h["DP_SZ"])
            offset1, offset2 = int(h["offset1"]), int(h["offset2"])
            if min(nx, ny, dp) < 1 or offset1 < BLOCKFILE_HEADER.itemsize or offset2 < offset1 + nx * ny:
                raise ReadError(f"{path}: the blockfile header is damaged (scan {ny}×{nx}, patterns "
                                f"{dp}×{dp}, data offsets {offset1}/{offset2})")
            record = 6 + dp * dp
            expected = offset2 + nx * ny * record
            if size < expected:
                raise ReadError(
                    f"{path}: the blockfile is truncated or its header is wrong: scan {ny}×{nx} of "
                    f"{dp}×{dp} patterns needs {expected} bytes, the file has {size} bytes")
            for frame in sorted({0, 1, nx * ny - 1} & set(range(nx * ny))):
                fh.seek(offset2 + frame * record)
                if fh.read(2) != BLOCKFILE_FRAME_MAGIC:
                    raise ReadError(
                        f"{path}: the blockfile header does not match its data: no pattern marker "
                        f"where pattern {frame} of {dp}×{dp} pixels should start (byte "
                        f"{offset2 + frame * record}); the detector size or data offset is wrong")
    except OSError as exc:
        raise ReadError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if size > expected:
        warnings.warn(f"{path}: {size - expected} bytes after the {nx * ny} patterns of the "
                      "blockfile; ignored", stacklevel=4)
    return {"scan": (ny, nx), "det": dp, "offset": offset2, "record": record}


def _check_hdf5_chunks(path: str, shape: tuple, fill_missing: bool) -> None:
    """HDF5-based files (HyperSpy, Velox): every chunk of the data set read must be stored."""
    import h5py

    from .hdf5 import check_stored_chunks

    try:
        f = h5py.File(path, "r")
    except OSError:
        return  # not HDF5 (zspy) or already reported by RosettaSciIO
    found: list = []
    with f:
        try:
            f.visititems(lambda name, obj: found.append(obj) if isinstance(obj, h5py.Dataset)
                         and obj.size == int(np.prod(shape)) and obj.ndim >= 3 else None)
        except Exception as exc:  # a damaged group index
            reason = " ".join(str(exc).split())[:160]
            raise ReadError(f"{path}: the HDF5 file is damaged ({type(exc).__name__}: {reason})") from exc
        for obj in found:
            check_stored_chunks(obj, path, fill_missing)


def _check_empad_raw(xml_path: str, frames: int, det_shape: tuple[int, int]) -> None:
    """The EMPAD ``.raw`` next to the ``.xml`` must hold the frames the ``.xml`` announces
    (float32, two metadata rows per frame); RosettaSciIO maps it lazily and would only fail
    (or read short) when the data are used."""
    import xml.etree.ElementTree as ET

    try:
        node = ET.parse(xml_path).getroot().find(".//raw_file")
    except (ET.ParseError, OSError):
        return  # RosettaSciIO has read it; nothing more to check here
    name = node.get("filename") if node is not None else None
    if not name:
        return
    raw = os.path.join(os.path.dirname(os.path.abspath(xml_path)), name)
    if not os.path.exists(raw):
        raise ReadError(f"{xml_path}: its EMPAD data file {raw} is missing")
    frame_bytes = (det_shape[0] + 2) * det_shape[1] * 4
    expected, actual = frames * frame_bytes, os.path.getsize(raw)
    if actual < expected:
        raise ReadError(f"{raw}: the EMPAD data file is truncated: {frames} frames of "
                        f"{det_shape[0] + 2}×{det_shape[1]} float32 take {expected} bytes, "
                        f"the file has {actual} bytes ({actual // frame_bytes} complete frames)")
    if actual > expected:
        more = (f"holds {actual // frame_bytes} frames" if actual // frame_bytes > frames
                else f"has {actual - expected} bytes after its {frames} frames")
        warnings.warn(f"{raw}: {more} but {xml_path} announces {frames} frames; reading "
                      f"the first {frames}", stacklevel=4)


def _two_positive(path: str, scan_shape: Any) -> tuple[int, int]:
    try:
        shape = tuple(int(s) for s in scan_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 2 or min(shape) < 1:
        raise ReadError(f"{path}: scan_shape must be two positive integers (scan_y, scan_x), "
                        f"got {scan_shape!r}")
    return shape


def _complete_scan(path: str, scan_shape: tuple[int, int], source: str,
                   layout: dict[str, Any]) -> tuple[int, int]:
    """The scan shape to read: ``scan_shape`` if the file holds its frames, else its complete
    scan lines, with a warning that says how many frames are complete."""
    complete = layout["complete"]
    if complete is None:
        return scan_shape
    ny, nx = scan_shape
    truncated = " (the last frame is cut short)" if layout["partial_bytes"] else ""
    if ny * nx > complete:
        lines = complete // nx
        if lines == 0:
            raise ReadError(f"{path}: holds {complete} complete frames{truncated}, fewer than one scan "
                            f"line of the scan shape {scan_shape} ({source}); pass "
                            f"scan_shape=(1, {complete}) to read them as a line")
        warnings.warn(f"{path}: holds {complete} complete frames{truncated} of the {ny * nx} that the "
                      f"scan shape {scan_shape} ({source}) needs (interrupted acquisition?); reading "
                      f"the {lines} complete scan line{'s' if lines > 1 else ''} {(lines, nx)}, leaving out "
                      f"{complete - lines * nx} frames", stacklevel=4)
        return (lines, nx)
    if ny * nx < complete:
        warnings.warn(f"{path}: holds {complete} frames but the scan shape {scan_shape} ({source}) "
                      f"uses the first {ny * nx}", stacklevel=4)
    elif truncated:
        warnings.warn(f"{path}: extra bytes after the {complete} frames of the scan{truncated}; "
                      "ignored", stacklevel=4)
    return scan_shape


class _quiet_rsciio:
    """RosettaSciIO logs warnings (e.g. a missing ``.hdr``) that we state ourselves."""

    def __enter__(self):
        import logging

        self.logger = logging.getLogger("rsciio")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)


def _merlin_hdr(mib_path: str) -> dict[str, str]:
    """The ``key: value`` lines of the Merlin ``.hdr`` beside a ``.mib`` (empty without one)."""
    hdr_path = _sibling(mib_path, ".hdr")
    hdr: dict[str, str] = {}
    if hdr_path is None:
        return hdr
    try:
        with open(hdr_path, encoding="utf-8", errors="ignore") as fh:
            for line in fh:
                if line.startswith("HDR") or line.startswith("End") or "\t" not in line:
                    continue
                key, value = line.split("\t", 1)
                hdr[key.strip().rstrip(":").strip()] = value.strip()
    except OSError:
        return {}
    return hdr


def _hdr_int(hdr: dict[str, str], key: str, default: int = 0) -> int:
    try:
        return int(hdr.get(key, default))
    except ValueError:
        return default


def _merlin_scan_shape(mib_path: str) -> tuple[tuple[int, int] | None, str]:
    """ScanX/ScanY from the Merlin ``.hdr`` (Merlin software 1.5 and later) as the scan shape;
    RosettaSciIO 0.15 ignores them and guesses from frames per trigger or timestamps.
    Returns the shape (or None) and where it comes from."""
    hdr = _merlin_hdr(mib_path)
    if not hdr:
        return None, "frame timestamps"
    scan_x, scan_y = _hdr_int(hdr, "ScanX"), _hdr_int(hdr, "ScanY")
    if scan_x > 0 and scan_y > 0:
        return (scan_y, scan_x), "hdr ScanX/ScanY"
    per_trigger = _hdr_int(hdr, "Frames per Trigger (Number)", 1)
    return None, ("hdr frames per trigger" if per_trigger > 1 else "frame timestamps")


def _check_announced_frames(path: str, mib_path: str, complete: int | None) -> None:
    """A ``.mib`` holding fewer complete frames than its ``.hdr`` announces ("Frames in
    Acquisition") is said to be incomplete, also when what it holds still makes a scan shape."""
    announced = _hdr_int(_merlin_hdr(mib_path), "Frames in Acquisition (Number)")
    if complete is not None and announced > complete:
        warnings.warn(f"{path}: holds {complete} complete frames of the {announced} that its .hdr announces "
                      "(interrupted acquisition or a truncated copy?)", stacklevel=4)


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
