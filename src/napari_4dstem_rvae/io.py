"""Readers: every supported file becomes a lazy :class:`~napari_4dstem_rvae.Dataset4D`.

* HDF5 (``.h5``, ``.hdf5``, ``.hdf``, ``.emd`` written by py4DSTEM/emdfile or any EMD 1.0 /
  0.1 writer, and any HDF5 file holding a 4D dataset, chosen by ``dataset="/group/name"``).
* NumPy ``.npy`` (memory-mapped) and zarr stores (directories, v2 or v3).
* Raw binary with user-given scan shape, detector shape, dtype, header/footer bytes and
  endianness (in-house detectors).
* Detector formats through RosettaSciIO (optional extra ``[formats]``, GPL — imported only
  here, only when such a file is read): Merlin ``.mib``, blockfile ``.blo``, EMPAD ``.xml``,
  Gatan ``.dm3``/``.dm4``, Velox ``.emd``, HyperSpy ``.hspy``/``.zspy``.

Nothing is read beyond headers and metadata when a file is opened: the data become a dask
array whose chunks are read on demand (HDF5 through a picklable source object, so that the
same array also runs on a dask.distributed cluster).

:func:`detect_format` alone decides the format; :class:`ReadError` is the one error type
that says, in one sentence, why a file cannot be read.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import Calibration, Dataset4D, default_chunks


class ReadError(Exception):
    """A file that cannot be read as 4D-STEM data; the message names the file and the reason."""


HDF5_EXTENSIONS = (".h5", ".hdf5", ".hdf", ".he5", ".nxs")
RAW_EXTENSIONS = (".raw", ".bin", ".dat")
RSCIIO_EXTENSIONS = {
    ".mib": "quantumdetector",
    ".hdr": "quantumdetector",
    ".blo": "blockfile",
    ".dm3": "digitalmicrograph",
    ".dm4": "digitalmicrograph",
    ".hspy": "hspy",
    ".zspy": "zspy",
}
#: Extensions the napari reader claims.
SUPPORTED_EXTENSIONS = (
    *HDF5_EXTENSIONS, ".emd", ".npy", ".zarr", ".xml", *RSCIIO_EXTENSIONS, *RAW_EXTENSIONS,
)

# Raw-file options: when any is given, the file is read as raw binary.
RAW_OPTIONS = ("det_shape", "dtype", "file_header_bytes", "frame_header_bytes",
               "frame_footer_bytes", "byteorder")


# ----------------------------------------------------------------------------------------
# Format detection
# ----------------------------------------------------------------------------------------
def detect_format(path: str | os.PathLike, **options: Any) -> str | None:
    """The reader that handles ``path``: ``"hdf5"``, ``"npy"``, ``"zarr"``, ``"raw"``, an
    ``"rsciio:<plugin>"`` name, or ``None`` when the file is not a format we read.

    Decided from the extension and, where extensions are shared (``.emd``, ``.xml``,
    directories), from a few header bytes.
    """
    p = Path(path)
    ext = p.suffix.lower()
    if options.get("format"):
        return str(options["format"])
    if any(options.get(k) is not None for k in RAW_OPTIONS) and ext not in (".npy", ".zarr"):
        return "raw"
    if p.is_dir():
        if ext == ".zspy":
            return "rsciio:zspy"
        if ext == ".zarr" or any((p / n).exists() for n in (".zarray", ".zgroup", "zarr.json")):
            return "zarr"
        return None
    if ext in HDF5_EXTENSIONS:
        return "hdf5"
    if ext == ".npy":
        return "npy"
    if ext == ".emd":
        return _emd_flavour(p)
    if ext == ".xml":
        return "rsciio:empad" if _looks_like_empad(p) else None
    if ext in RSCIIO_EXTENSIONS:
        return "rsciio:" + RSCIIO_EXTENSIONS[ext]
    if ext in RAW_EXTENSIONS:
        return "raw"
    return None


def _emd_flavour(p: Path) -> str:
    """Velox (Thermo Fisher) EMD files go to RosettaSciIO; Berkeley/py4DSTEM EMD stay ours."""
    if not p.exists():
        return "hdf5"
    try:
        import h5py

        with h5py.File(p, "r") as f:
            if "Data" in f and "Version" in f and "emd_group_type" not in f.attrs:
                return "rsciio:emd"
    except OSError:
        pass  # broken files are reported by the HDF5 reader with a clear message
    return "hdf5"


def _looks_like_empad(p: Path) -> bool:
    try:
        head = p.read_bytes()[:4096].decode("utf-8", "ignore").lower()
    except OSError:
        return False
    return "<root" in head and ("pix_x" in head or "raw_file" in head or "empad" in head)


# ----------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------
def read(path: str | os.PathLike, **options: Any) -> Dataset4D:
    """Open a 4D-STEM file lazily.

    Parameters
    ----------
    path
        File or directory (zarr store).
    dataset
        HDF5/zarr: path of the 4D dataset inside the file (default: the EMD/py4DSTEM
        datacube, else the largest 4D dataset; a warning lists the others).
    scan_shape
        ``(scan_y, scan_x)``: required for raw files; for other formats, reshapes a flat
        stack of patterns ``(n, det_y, det_x)`` (e.g. a Merlin file without scan size).
    det_shape, dtype, file_header_bytes, frame_header_bytes, frame_footer_bytes, byteorder
        Raw binary layout (see :func:`read_raw`).
    chunks
        Dask chunks of the returned array (default: whole patterns, ~64 MB chunks).
    calibration
        A :class:`Calibration` or a dict of its fields overriding what the file says.

    Raises
    ------
    ReadError
        One sentence naming the file and why it cannot be read.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ReadError(f"{path}: no such file or directory")
    fmt = detect_format(path, **options)
    if fmt is None:
        raise ReadError(
            f"{path}: unknown file type {Path(path).suffix or '(no extension)'!r}; expected one of "
            f"{', '.join(sorted(set(SUPPORTED_EXTENSIONS)))} or a zarr directory "
            "(for raw binary give scan_shape, det_shape and dtype)"
        )
    override = options.pop("calibration", None)
    options.pop("format", None)
    if fmt == "hdf5":
        ds = read_hdf5(path, **options)
    elif fmt == "npy":
        ds = read_npy(path, **options)
    elif fmt == "zarr":
        ds = read_zarr(path, **options)
    elif fmt == "raw":
        ds = read_raw(path, **options)
    elif fmt.startswith("rsciio:"):
        ds = read_rsciio(path, plugin=fmt.split(":", 1)[1], **options)
    else:
        raise ReadError(f"{path}: unknown format {fmt!r}")
    if override is not None:
        import dataclasses

        fields = dataclasses.asdict(override) if isinstance(override, Calibration) else dict(override)
        ds.calibration = ds.calibration.replace(**{k: v for k, v in fields.items() if v is not None})
    return ds


# ----------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------
def _finish(array: Any, path: str, calibration: Calibration, metadata: dict,
            scan_shape: Any = None, chunks: Any = None, fmt: str = "",
            frame_source: Any = None) -> Dataset4D:
    """Reshape a flat pattern stack if asked, wrap in dask, check the axes."""
    import dask.array as da

    if frame_source is None and not isinstance(array, da.Array):
        frame_source = array
    if scan_shape is not None or getattr(frame_source, "ndim", 0) != 4:
        frame_source = None
    if not isinstance(array, da.Array):
        # meta= spares dask its probe read (which would also open and hold an HDF5 file)
        array = da.from_array(array, chunks=chunks or _aligned_chunks(array), fancy=False, lock=False,
                              meta=np.empty((0,) * len(array.shape), dtype=array.dtype))
    elif chunks is not None:
        array = array.rechunk(chunks)
    if scan_shape is not None:
        scan_shape = tuple(int(s) for s in scan_shape)
        n = int(np.prod(array.shape[:-2]))
        if len(scan_shape) != 2 or np.prod(scan_shape) != n:
            raise ReadError(
                f"{path}: scan_shape {scan_shape} does not match the {n} patterns in the file "
                f"(array shape {tuple(array.shape)})"
            )
        array = array.reshape(scan_shape + tuple(array.shape[-2:]))
    if array.ndim == 3:
        raise ReadError(
            f"{path}: holds a stack of {array.shape[0]} patterns of {tuple(array.shape[1:])} "
            "pixels but no scan shape; pass scan_shape=(scan_y, scan_x)"
        )
    if array.ndim != 4:
        raise ReadError(
            f"{path}: expected 4D data (scan_y, scan_x, det_y, det_x), found "
            f"{array.ndim}D data of shape {tuple(array.shape)}"
        )
    if 0 in array.shape:
        raise ReadError(f"{path}: the 4D data set is empty (shape {tuple(array.shape)})")
    if not array.dtype.isnative:  # big-endian detectors (Merlin, raw): native for numpy/torch
        array = array.astype(array.dtype.newbyteorder("="))
    if chunks is None and array.chunksize[2:] != array.shape[2:]:
        # Whole patterns per chunk: every reduction works frame by frame.
        array = array.rechunk(default_chunks(array.shape, array.dtype))
    metadata = {"format": fmt, **metadata}
    return Dataset4D(data=array, calibration=calibration, metadata=metadata, source=path,
                     frame_source=frame_source)


def _aligned_chunks(array: Any) -> Any:
    """Dask chunks that follow the on-disk chunking (HDF5/zarr) and hold whole patterns."""
    shape = tuple(array.shape)
    if len(shape) != 4:
        if len(shape) == 3:
            n, ky, kx = shape
            target = max(1, (64 * 2**20) // max(ky * kx * np.dtype(array.dtype).itemsize, 1))
            return (min(n, target), ky, kx)
        return "auto"
    chunks = list(default_chunks(shape, array.dtype))
    disk = getattr(array, "chunks", None)
    if isinstance(disk, tuple) and len(disk) == 4 and all(isinstance(c, int) for c in disk):
        # round scan chunks to multiples of the stored chunks to avoid re-reading them
        for axis in (0, 1):
            chunks[axis] = min(shape[axis], max(disk[axis], (chunks[axis] // disk[axis]) * disk[axis]))
    return tuple(chunks)


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.dtype.kind in "SO" and value.size == 1:
        return _text(value.reshape(-1)[0])
    if isinstance(value, np.generic):
        return value.item()
    return value


def _unit_key(unit: Any) -> str | None:
    """A unit string reduced to a lookup key: no brackets, spaces or underscores (RosettaSciIO's
    EMD writer spells 'nm' as '[n_m]'), Unicode normalised (Å sign U+212B, micro sign), lower case."""
    import unicodedata

    u = _text(unit)
    if not isinstance(u, str):
        return None
    u = unicodedata.normalize("NFKC", u).strip().strip("[]").replace("_", "").replace(" ", "")
    return u.replace("μ", "µ").replace("**", "^").lower()


def _length_unit(unit: Any) -> str | None:
    """Normalise a real-space unit; ``None`` for pixels/undefined."""
    key = _unit_key(unit)
    table = {"a": "Å", "å": "Å", "ang": "Å", "angstrom": "Å", "angstroms": "Å", "nm": "nm",
             "nanometer": "nm", "nanometers": "nm", "um": "µm", "µm": "µm", "micron": "µm",
             "microns": "µm", "pm": "pm", "m": "m", "mm": "mm"}
    return table.get(key) if key else None


def _reciprocal_unit(unit: Any, size: float) -> tuple[float | None, str | None]:
    """Normalise a detector calibration to (size, 'mrad' | '1/Å'); unknown -> (None, None)."""
    key = _unit_key(unit)
    if not key or size is None or not np.isfinite(size) or size <= 0:
        return None, None
    if key in ("mrad", "milliradian", "milliradians"):
        return float(size), "mrad"
    if key in ("rad", "radian", "radians"):
        return float(size) * 1e3, "mrad"
    if key in ("1/å", "1/a", "a^-1", "å^-1", "a-1", "å-1", "1/angstrom", "angstrom^-1"):
        return float(size), "1/Å"
    if key in ("1/nm", "nm^-1", "nm-1", "1/nanometer"):
        return float(size) / 10.0, "1/Å"
    if key in ("1/pm", "pm^-1"):
        return float(size) * 100.0, "1/Å"
    if key in ("1/m", "m^-1"):
        return float(size) * 1e-10, "1/Å"
    return None, None


def _unit_kind(unit: Any) -> str | None:
    """'real' for a length, 'reciprocal' for a reciprocal length or an angle, else None."""
    if _length_unit(unit):
        return "real"
    if _reciprocal_unit(unit, 1.0)[1]:
        return "reciprocal"
    return None


def _positive(value: Any) -> float | None:
    try:
        v = float(_text(value))
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None


# ----------------------------------------------------------------------------------------
# HDF5 (py4DSTEM / EMD 1.0 / EMD 0.1 / generic)
# ----------------------------------------------------------------------------------------
class HDF5Source:
    """A picklable, lazily opened view of one HDF5 dataset, for ``dask.array.from_array``.

    Each process opens the file once (read-only) on first access; h5py calls are serialised
    by a lock because the HDF5 library is not thread-safe.
    """

    _handles: dict[tuple[str, int], tuple[Any, tuple]] = {}  # (path, pid) -> (h5py.File, stat)
    _lock = threading.Lock()

    def __init__(self, path: str, name: str, shape: tuple[int, ...], dtype: Any,
                 chunks: tuple[int, ...] | None = None):
        self.path, self.name = path, name
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.chunks = chunks
        self.ndim = len(self.shape)

    def _dataset(self):
        import h5py

        key = (self.path, os.getpid())
        st = os.stat(self.path)
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = HDF5Source._handles.get(key)
        handle = None
        if cached is not None:
            handle, old_stamp = cached
            if not handle.id.valid or old_stamp != stamp:  # closed, or the file was replaced
                try:
                    handle.close()
                except Exception:
                    pass
                handle = None
        if handle is None:
            handle = h5py.File(self.path, "r")
            HDF5Source._handles[key] = (handle, stamp)
        return handle[self.name]

    def __getitem__(self, index: Any) -> np.ndarray:
        with HDF5Source._lock:
            try:
                return self._dataset()[index]
            except OSError as exc:  # truncated or damaged data blocks
                raise ReadError(
                    f"{self.path}: could not read {self.name}{_fmt_index(index)} "
                    f"(the file may be truncated or damaged): {exc}"
                ) from exc

    def __getstate__(self):
        return {k: getattr(self, k) for k in ("path", "name", "shape", "dtype", "chunks", "ndim")}

    def __dask_tokenize__(self):
        st = os.stat(self.path)
        return ("HDF5Source", self.path, st.st_ino, st.st_size, st.st_mtime_ns, self.name,
                self.shape, str(self.dtype))

    def __setstate__(self, state):
        self.__dict__.update(state)

    @classmethod
    def close_all(cls, path: str | None = None) -> None:
        """Close cached handles (all, or those of ``path``), e.g. before overwriting a file."""
        target = None if path is None else os.path.abspath(os.fspath(path))
        with cls._lock:
            for key in list(cls._handles):
                if target is None or key[0] == target:
                    try:
                        cls._handles.pop(key)[0].close()
                    except Exception:
                        pass


def _fmt_index(index: Any) -> str:
    if not isinstance(index, tuple):
        index = (index,)
    parts = []
    for i in index:
        if isinstance(i, slice):
            parts.append(f"{'' if i.start is None else i.start}:{'' if i.stop is None else i.stop}")
        else:
            parts.append(str(i))
    return "[" + ", ".join(parts) + "]"


def _open_h5(path: str):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        msg = " ".join(str(exc).split())
        reason = "truncated" if "truncat" in msg.lower() or "eof" in msg.lower() else "damaged or not HDF5"
        raise ReadError(f"{path}: cannot be opened as HDF5 ({reason}): {msg}") from exc


def list_datasets(path: str | os.PathLike, ndim: int | tuple[int, ...] = 4) -> list[tuple[str, tuple]]:
    """``(name, shape)`` of the datasets with ``ndim`` axes in an HDF5 file or zarr store."""
    path = os.fspath(path)
    wanted = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    found: list[tuple[str, tuple]] = []
    if detect_format(path) == "zarr":
        import zarr

        root = zarr.open(path, mode="r")
        if hasattr(root, "shape"):
            return [("/", tuple(root.shape))] if len(root.shape) in wanted else []
        for name, arr in _zarr_arrays(root):
            if len(arr.shape) in wanted:
                found.append((name, tuple(arr.shape)))
        return found
    import h5py

    with _open_h5(path) as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.ndim in wanted and obj.dtype.kind in "uifbc":
                found.append(("/" + name, tuple(obj.shape)))
        f.visititems(visit)
    return found


def read_hdf5(path: str, dataset: str | None = None, scan_shape: Any = None,
              chunks: Any = None) -> Dataset4D:
    """Read a 4D dataset from an HDF5 file lazily (see :func:`read`)."""
    import h5py

    with _open_h5(path) as f:
        if dataset is None:
            dataset = _choose_dataset(f, path, want_flat=scan_shape is not None)
        elif dataset not in f or not isinstance(f[dataset], (h5py.Dataset, h5py.Group)):
            choices = [n for n, _ in list_datasets(path, (3, 4))]
            raise ReadError(f"{path}: no dataset {dataset!r}; 4D datasets in the file: {choices or 'none'}")
        obj = f[dataset]
        if isinstance(obj, h5py.Group):  # an EMD node: its data lives in 'data'
            if "data" not in obj:
                raise ReadError(f"{path}: group {dataset!r} holds no 'data' dataset")
            obj = obj["data"]
        if obj.dtype.kind not in "uifb":
            raise ReadError(f"{path}: dataset {obj.name!r} has non-numeric type {obj.dtype}")
        source = HDF5Source(os.path.abspath(path), obj.name, obj.shape, obj.dtype, obj.chunks)
        dims, first = _emd_dims(obj)
        reverse = _emd_axes_reversed(f, obj, dims, first)
        calibration, metadata = _hdf5_calibration(f, obj, dims[::-1] if reverse else dims)
    metadata["dataset"] = source.name
    array: Any = source
    if reverse:
        # RosettaSciIO/HyperSpy write EMD 0.x arrays transposed: (det_x, det_y, scan_x, scan_y)
        # on disk, dim1 describing det_x. Read them back in (scan_y, scan_x, det_y, det_x) order.
        array = TransposedSource(source)
        metadata["emd_axes_reversed"] = True
    return _finish(array, path, calibration, metadata, scan_shape, chunks, "hdf5")


class TransposedSource:
    """An array source seen with its axes reversed: ``self[i, j, ...]`` reads
    ``source[..., j, i]`` and transposes the result, so that dask reads only the requested
    frame (a dask ``transpose`` after ``from_array`` would read whole chunks). Picklable if
    ``source`` is."""

    def __init__(self, source: Any):
        self.source = source
        self.shape = tuple(source.shape[::-1])
        self.dtype = np.dtype(source.dtype)
        self.ndim = len(self.shape)
        disk = getattr(source, "chunks", None)
        self.chunks = tuple(disk[::-1]) if isinstance(disk, tuple) else None

    def __getitem__(self, index: Any) -> np.ndarray:
        if not isinstance(index, tuple):
            index = (index,)
        if any(i is Ellipsis for i in index):
            at = index.index(Ellipsis)
            fill = (slice(None),) * (self.ndim - len(index) + 1)
            index = index[:at] + fill + index[at + 1:]
        index = index + (slice(None),) * (self.ndim - len(index))
        out = np.asarray(self.source[index[::-1]])
        return out.transpose()  # the remaining axes come out in reversed order

    def __dask_tokenize__(self):
        from dask.base import tokenize

        return ("TransposedSource", tokenize(self.source))


def _emd_dims(dset) -> tuple[list, int]:
    """The EMD dim vectors next to ``dset``: EMD 1.0 names them dim0..dimN-1, EMD 0.x
    dim1..dimN. Returns ``([], -1)`` when there are none."""
    parent = dset.parent
    for first in (0, 1):
        names = [f"dim{first + i}" for i in range(dset.ndim)]
        if all(n in parent for n in names):
            return [parent[n] for n in names], first
    return [], -1


def _emd_axes_reversed(f, dset, dims: list, first: int) -> bool:
    """Whether an EMD 0.x array is stored with its axes reversed (detector axes first).

    The EMD 0.x specification has dim1 describe the first array axis, and py4DSTEM/Prismatic
    datacubes are stored (Rx, Ry, Qx, Qy). RosettaSciIO's (HyperSpy's) EMD writer stores the
    transpose of its (scan_y, scan_x, det_y, det_x) array, so its files hold
    (det_x, det_y, scan_x, scan_y); RosettaSciIO transposes every EMD 0.x array it reads except
    py4DSTEM 'datacube' datasets. Decide from the units of the dim vectors (reciprocal or
    angular units on dim1/dim2, lengths on dim3/dim4), else from the writer's fingerprint
    (version 0.2 and a '/signals/<title>/data' layout).
    """
    if first != 1 or dset.ndim != 4 or dset.name.rsplit("/", 1)[-1] == "datacube":
        return False
    kinds = [_unit_kind(d.attrs.get("units")) for d in dims]
    reversed_evidence = "reciprocal" in kinds[:2] or "real" in kinds[2:]
    native_evidence = "real" in kinds[:2] or "reciprocal" in kinds[2:]
    if reversed_evidence or native_evidence:
        return reversed_evidence and not native_evidence
    version = (str(_text(f.attrs.get("version_major"))), str(_text(f.attrs.get("version_minor"))))
    grandparent = dset.parent.parent.name if dset.parent.name != "/" else ""
    return version == ("0", "2") and grandparent == "/signals"


def _choose_dataset(f, path: str, want_flat: bool = False) -> str:
    import h5py

    candidates: list[tuple[int, int, str]] = []  # (priority, size, name)

    def visit(name, obj):
        if not isinstance(obj, h5py.Dataset) or obj.dtype.kind not in "uifb":
            return
        if obj.ndim == 4 or (want_flat and obj.ndim == 3):
            parent = obj.parent
            emd = _text(parent.attrs.get("emd_group_type")) in (1, "1", "array")
            py4d = "datacube" in _text(parent.attrs.get("python_class", "")).lower() \
                or "datacube" in parent.name.lower()
            priority = 2 if py4d else 1 if (emd and obj.name.endswith("/data")) else 0
            candidates.append((priority, int(np.prod(obj.shape)), "/" + name))

    f.visititems(visit)
    if not candidates:
        shapes = []
        f.visititems(lambda n, o: shapes.append(f"/{n} {o.shape}") if isinstance(o, h5py.Dataset) else None)
        listing = "; ".join(shapes[:8]) or "no datasets at all"
        raise ReadError(f"{path}: contains no 4D dataset (scan_y, scan_x, det_y, det_x); found {listing}")
    candidates.sort(reverse=True)
    chosen = candidates[0][2]
    if len(candidates) > 1:
        others = ", ".join(c[2] for c in candidates[1:6])
        warnings.warn(f"{path}: several 4D datasets; reading {chosen} (others: {others}); "
                      "choose with dataset=...", stacklevel=3)
    return chosen


def _hdf5_calibration(f, dset, dims: list | None = None) -> tuple[Calibration, dict]:
    """Calibration from EMD dim vectors, py4DSTEM calibration metadata and common attributes.

    ``dims`` are the dim vectors in (scan_y, scan_x, det_y, det_x) order (see :func:`_emd_dims`).
    """
    metadata: dict[str, Any] = {}
    fields: dict[str, Any] = {}
    parent = dset.parent
    if dims is None:
        dims = _emd_dims(dset)[0]
    # EMD dim vectors: the first two values give offset and step.
    if dims and dset.ndim == 4:
        steps, units = [], []
        for d in dims:
            try:
                values = np.asarray(d[: min(2, d.shape[0])] if d.ndim else [0.0], dtype=float)
            except (TypeError, ValueError):  # string labels
                values = np.zeros(0)
            steps.append(float(values[1] - values[0]) if values.size > 1 else None)
            units.append(_text(d.attrs.get("units", "")))
        metadata["emd_dims"] = {"steps": steps, "units": units}
        unit = _length_unit(units[0])
        if unit and _length_unit(units[1]) in (unit, None) and steps[0] and steps[1]:
            fields.update(scan_step=(abs(steps[0]), abs(steps[1])), scan_unit=unit)
        size, dunit = _reciprocal_unit(units[2], abs(steps[2]) if steps[2] else None)
        if dunit:
            fields.update(det_pixel_size=size, det_unit=dunit)
    # py4DSTEM calibration (emdfile Metadata named 'calibration', stored on the root node)
    cal = _find_py4dstem_calibration(f)
    if cal:
        metadata["py4dstem_calibration"] = {k: v for k, v in cal.items() if np.isscalar(v) or isinstance(v, str)}
        r_size, r_unit = _positive(cal.get("R_pixel_size")), _length_unit(cal.get("R_pixel_units"))
        if r_size and r_unit:
            fields.update(scan_step=r_size, scan_unit=r_unit)
        q_size, q_unit = _reciprocal_unit(cal.get("Q_pixel_units"), _positive(cal.get("Q_pixel_size")))
        if q_unit:
            fields.update(det_pixel_size=q_size, det_unit=q_unit)
        qx0, qy0 = _positive(cal.get("qx0_mean")), _positive(cal.get("qy0_mean"))
        if qx0 and qy0:  # py4DSTEM: qx is the first detector axis (rows)
            fields["det_origin"] = (qx0, qy0)
        if _positive(cal.get("convergence_semiangle_mrad")):
            fields["semiangle_mrad"] = _positive(cal["convergence_semiangle_mrad"])
        if _positive(cal.get("accelerating_voltage")):  # py4DSTEM stores volts
            fields["energy_kev"] = _positive(cal["accelerating_voltage"]) / 1e3
    # Generic attributes some writers put on the dataset or its group (ours included).
    for holder in (dset, parent):
        for key, target, scale in (("energy_kev", "energy_kev", 1.0), ("beam_energy_kev", "energy_kev", 1.0),
                                   ("semiangle_mrad", "semiangle_mrad", 1.0),
                                   ("convergence_semiangle_mrad", "semiangle_mrad", 1.0)):
            if key in holder.attrs and target not in fields and _positive(holder.attrs[key]):
                fields[target] = _positive(holder.attrs[key]) * scale
        if "calibration_json" in holder.attrs:
            import json

            try:  # written by this package: authoritative, None included
                fields.update(Calibration.from_dict(json.loads(_text(holder.attrs["calibration_json"]))).__dict__)
            except (TypeError, ValueError) as exc:
                warnings.warn(f"{f.filename}: ignoring an invalid calibration_json ({exc})", stacklevel=3)
    try:
        calibration = Calibration(**fields)
    except ValueError as exc:
        warnings.warn(f"{f.filename}: ignoring an invalid calibration ({exc})", stacklevel=3)
        calibration = Calibration()
    return calibration, metadata


def _find_py4dstem_calibration(f) -> dict[str, Any]:
    import h5py

    found: dict[str, Any] = {}

    def visit(name, obj):
        if found or not isinstance(obj, h5py.Group):
            return
        if name.split("/")[-1] == "calibration" or "Calibration" in _text(obj.attrs.get("python_class", "")):
            values = {k: _text(v) for k, v in obj.attrs.items()}
            for k, item in obj.items():
                if isinstance(item, h5py.Dataset) and item.size <= 16:
                    values[k] = _text(item[()])
            if any(k.startswith(("Q_pixel", "R_pixel")) for k in values):
                found.update(values)

    f.visititems(visit)
    return found


# ----------------------------------------------------------------------------------------
# NumPy and zarr
# ----------------------------------------------------------------------------------------
class MemmapSource:
    """A picklable, lazily mapped view of an array stored uncompressed in a file (``.npy``
    data, raw frames), for ``dask.array.from_array``.

    Unlike a ``numpy.memmap`` handed to dask directly, it is not hashed (dask would read the
    whole file to name the array), it copies out only the slices asked for, and it pickles as
    a file reference, so the same array also runs on a dask.distributed cluster.

    ``file_dtype``/``file_shape`` describe the records in the file; ``field`` selects one
    field of structured records (raw frames between per-frame headers and footers).
    """

    def __init__(self, path: str, file_dtype: Any, file_shape: tuple[int, ...], offset: int = 0,
                 order: str = "C", field: str | None = None):
        self.path = os.path.abspath(path)
        self.file_dtype = np.dtype(file_dtype)
        self.file_shape = tuple(int(n) for n in file_shape)
        self.offset, self.order, self.field = int(offset), order, field
        if field is None:
            self.shape, self.dtype = self.file_shape, self.file_dtype
        else:
            sub = self.file_dtype.fields[field][0]
            self.shape, self.dtype = self.file_shape + tuple(sub.shape), sub.base
        self.ndim = len(self.shape)
        self._mm = None

    def _array(self) -> np.ndarray:
        if self._mm is None:
            mm = np.memmap(self.path, dtype=self.file_dtype, mode="r", offset=self.offset,
                           shape=self.file_shape, order=self.order)
            self._mm = mm if self.field is None else mm[self.field]
        return self._mm

    def __getitem__(self, index: Any) -> np.ndarray:
        try:
            return np.array(self._array()[index])  # a copy of the slice: reads only its pages
        except (OSError, ValueError) as exc:
            raise ReadError(f"{self.path}: could not read{_fmt_index(index)} ({exc})") from exc

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_mm"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    def __dask_tokenize__(self):
        st = os.stat(self.path)
        return ("MemmapSource", self.path, st.st_ino, st.st_size, st.st_mtime_ns, self.offset,
                str(self.file_dtype), self.file_shape, self.order, self.field)


def read_npy(path: str, scan_shape: Any = None, chunks: Any = None, dataset: Any = None) -> Dataset4D:
    """Map a ``.npy`` file (nothing is read until a chunk is asked for)."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            offset = fh.tell()
    except ValueError as exc:
        raise ReadError(f"{path}: not a readable .npy array ({exc})") from exc
    except OSError as exc:
        raise ReadError(f"{path}: cannot be read as .npy ({exc})") from exc
    if dtype.hasobject or dtype.kind not in "uifb":
        raise ReadError(f"{path}: holds {dtype} data, expected numbers")
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    actual = os.path.getsize(path)
    if actual < expected:
        raise ReadError(f"{path}: the .npy file is truncated: its header announces {shape} {dtype} "
                        f"({expected} bytes) but the file has {actual} bytes")
    if 0 in shape:
        raise ReadError(f"{path}: the array is empty (shape {tuple(shape)})")
    source = MemmapSource(path, dtype, shape, offset, order="F" if fortran else "C")
    return _finish(source, path, Calibration(), {}, scan_shape, chunks, "npy")


def _zarr_arrays(group, prefix=""):
    for name, member in group.members() if hasattr(group, "members") else group.items():
        full = f"{prefix}/{name}"
        if hasattr(member, "shape") and not hasattr(member, "members"):
            yield full, member
        else:
            yield from _zarr_arrays(member, full)


def read_zarr(path: str, dataset: str | None = None, scan_shape: Any = None,
              chunks: Any = None) -> Dataset4D:
    """Open a zarr store (array or group) lazily."""
    import dask.array as da
    import zarr

    try:
        root = zarr.open(path, mode="r")
    except Exception as exc:
        raise ReadError(f"{path}: not a readable zarr store ({exc})") from exc
    if hasattr(root, "shape") and not hasattr(root, "members"):
        array, name = root, "/"
    else:
        arrays = [(n, a) for n, a in _zarr_arrays(root) if len(a.shape) in ((3, 4) if scan_shape else (4,))]
        if dataset is not None:
            key = dataset.strip("/")
            try:
                array, name = root[key], "/" + key
            except KeyError:
                raise ReadError(f"{path}: no array {dataset!r}; 4D arrays: {[n for n, _ in arrays] or 'none'}") from None
        elif not arrays:
            raise ReadError(f"{path}: contains no 4D array (scan_y, scan_x, det_y, det_x)")
        else:
            arrays.sort(key=lambda item: -int(np.prod(item[1].shape)))
            name, array = arrays[0]
            if len(arrays) > 1:
                warnings.warn(f"{path}: several 4D arrays; reading {name}; choose with dataset=...", stacklevel=3)
    attrs = dict(array.attrs)
    calibration = Calibration()
    if "calibration" in attrs and isinstance(attrs["calibration"], dict):
        try:
            calibration = Calibration.from_dict(attrs["calibration"])
        except (TypeError, ValueError) as exc:
            warnings.warn(f"{path}: ignoring an invalid calibration ({exc})", stacklevel=2)
    dask_array = da.from_zarr(array, chunks=chunks or _aligned_chunks(array))
    return _finish(dask_array, path, calibration, {"dataset": name}, scan_shape, None, "zarr",
                   frame_source=array)


# ----------------------------------------------------------------------------------------
# Raw binary
# ----------------------------------------------------------------------------------------
def read_raw(path: str, scan_shape: Any = None, det_shape: Any = None, dtype: Any = None,
             file_header_bytes: int = 0, frame_header_bytes: int = 0, frame_footer_bytes: int = 0,
             byteorder: str = "<", chunks: Any = None, dataset: Any = None) -> Dataset4D:
    """Raw binary frames: ``file_header_bytes``, then per frame ``frame_header_bytes`` +
    ``det_y·det_x`` pixels of ``dtype`` + ``frame_footer_bytes``, frames in scan raster order.

    ``byteorder`` is ``"<"`` (little-endian) or ``">"`` (big-endian).
    """
    missing = [n for n, v in (("scan_shape", scan_shape), ("det_shape", det_shape), ("dtype", dtype)) if v is None]
    if missing:
        raise ReadError(f"{path}: a raw binary file needs {', '.join(missing)} "
                        "(scan_shape=(ny, nx), det_shape=(ky, kx), dtype='uint16', ...)")
    if byteorder not in ("<", ">", "little", "big"):
        raise ReadError(f"{path}: byteorder must be '<' or '>', got {byteorder!r}")
    order = {"little": "<", "big": ">"}.get(byteorder, byteorder)
    try:
        pixel = np.dtype(dtype).newbyteorder(order)
    except TypeError as exc:
        raise ReadError(f"{path}: unknown dtype {dtype!r}") from exc
    scan_shape = tuple(int(s) for s in scan_shape)
    det_shape = tuple(int(s) for s in det_shape)
    if len(scan_shape) != 2 or len(det_shape) != 2 or min(scan_shape + det_shape) < 1:
        raise ReadError(f"{path}: scan_shape and det_shape must be two positive integers each, "
                        f"got {scan_shape} and {det_shape}")
    if min(file_header_bytes, frame_header_bytes, frame_footer_bytes) < 0:
        raise ReadError(f"{path}: header and footer sizes must not be negative")
    record = np.dtype([("header", "u1", (frame_header_bytes,)), ("frame", pixel, det_shape),
                       ("footer", "u1", (frame_footer_bytes,))])
    n = scan_shape[0] * scan_shape[1]
    expected = file_header_bytes + n * record.itemsize
    actual = os.path.getsize(path)
    if actual != expected:
        raise ReadError(
            f"{path}: file size {actual} bytes does not match the given layout: {file_header_bytes} + "
            f"{n} frames × {record.itemsize} bytes = {expected} bytes "
            f"(scan {scan_shape}, detector {det_shape}, {np.dtype(dtype).name}, "
            f"header/footer {frame_header_bytes}/{frame_footer_bytes} bytes)"
        )
    frames = MemmapSource(path, record, scan_shape, file_header_bytes, field="frame")
    metadata = {"raw_layout": {"dtype": np.dtype(dtype).name, "byteorder": order,
                               "file_header_bytes": file_header_bytes,
                               "frame_header_bytes": frame_header_bytes,
                               "frame_footer_bytes": frame_footer_bytes}}
    return _finish(frames, path, Calibration(), metadata, None, chunks, "raw")


# ----------------------------------------------------------------------------------------
# Detector formats via RosettaSciIO
# ----------------------------------------------------------------------------------------
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
        nav_names = [str(_text(a.get("name", ""))).lower() for a in axes if a.get("navigate")]
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
    return _finish(data, path, calibration, metadata, scan_shape, chunks, f"rsciio:{plugin}")


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
    metadata: dict[str, Any] = {"axes": [{k: _text(a.get(k)) for k in ("name", "scale", "offset", "units", "size")}
                                         for a in axes]}
    if len(nav) == 2:
        units = {_length_unit(a.get("units")) for a in nav}
        scales = [_positive(a.get("scale")) for a in nav]
        if len(units) == 1 and None not in units and all(scales):
            fields.update(scan_step=tuple(scales), scan_unit=units.pop())
    if len(sig) == 2:
        size, unit = _reciprocal_unit(sig[0].get("units"), _positive(sig[0].get("scale")))
        if unit:
            fields.update(det_pixel_size=size, det_unit=unit)
            # offsets of the detector axes put zero angle at the direct beam (EMPAD's are a
            # fixed -64 px by RosettaSciIO's convention, not a measurement: ignored)
            origin = [-float(a.get("offset", 0.0) or 0.0) / float(a.get("scale", 1.0)) for a in sig]
            if any(o != 0 for o in origin) and plugin != "empad":
                fields["det_origin"] = tuple(origin)
        elif _text(sig[0].get("units")) not in (None, "", "<undefined>"):
            metadata["detector_calibration_unconverted"] = {
                "scale": _text(sig[0].get("scale")), "units": _text(sig[0].get("units"))}
    tem = _mapped_metadata(signal).get("Acquisition_instrument", {}).get("TEM", {})
    if _positive(tem.get("beam_energy")):
        fields["energy_kev"] = _positive(tem["beam_energy"])
    if _positive(tem.get("convergence_angle")):
        fields["semiangle_mrad"] = _positive(tem["convergence_angle"])
    if plugin == "empad" and "energy_kev" not in fields:
        # EMPAD .xml (v1.2+): <iom_measurements><high_voltage> in volts, not mapped by RosettaSciIO
        iom = (signal.get("original_metadata") or {}).get("root", {}).get("iom_measurements", {})
        volts = _positive(iom.get("high_voltage")) if isinstance(iom, dict) else None
        if volts:
            fields["energy_kev"] = volts / 1e3
    try:
        calibration = Calibration(**fields)
    except ValueError as exc:
        warnings.warn(f"{path}: ignoring an invalid calibration ({exc})", stacklevel=3)
        calibration = Calibration()
    general = signal.get("metadata", {}).get("General", {})
    metadata["title"] = _text(general.get("title", "")) or None
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
