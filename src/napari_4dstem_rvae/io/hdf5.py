"""HDF5 readers: py4DSTEM/emdfile (EMD 1.0), EMD 0.x (Prismatic, RosettaSciIO/HyperSpy) and
any HDF5 file holding a 4D dataset (chosen by ``dataset="/group/name"``).

Data are read through :class:`HDF5Source`, a picklable, lazily opened view, so that the same
dask array also runs on a dask.distributed cluster. The EMD writer lives beside it
(:mod:`.emd_writer`).
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import Any

import numpy as np

from ..dataset import Calibration, Dataset4D
from ..units import detector_unit, length_unit, unit_kind
from .common import ReadError, _fmt_index, finish, positive, text


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



def open_h5(path: str):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        msg = " ".join(str(exc).split())
        reason = "truncated" if "truncat" in msg.lower() or "eof" in msg.lower() else "damaged or not HDF5"
        raise ReadError(f"{path}: cannot be opened as HDF5 ({reason}): {msg}") from exc



def hdf5_datasets(path: str, wanted: tuple[int, ...]) -> list[tuple[str, tuple]]:
    """``(name, shape)`` of the numeric datasets with a number of axes in ``wanted``."""
    import h5py

    found: list[tuple[str, tuple]] = []
    with open_h5(path) as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.ndim in wanted and obj.dtype.kind in "uifbc":
                found.append(("/" + name, tuple(obj.shape)))
        f.visititems(visit)
    return found


def check_stored_chunks(obj: Any, path: str, fill_missing: bool = False) -> None:
    """A chunked dataset whose chunks are not all stored reads the missing ones as its fill
    value (0), without a word from HDF5: refuse it (an interrupted writer or a damaged chunk
    index), unless ``fill_missing``."""
    import math

    if obj.chunks is None or obj.size == 0:
        return
    expected = math.prod(math.ceil(n / c) for n, c in zip(obj.shape, obj.chunks))
    try:
        stored = obj.id.get_num_chunks()
    except Exception as exc:
        raise ReadError(f"{path}: the chunk index of {obj.name} is damaged ({type(exc).__name__})") from exc
    if fill_missing:
        return
    missing = expected - stored
    if not missing:
        # every chunk counted; also look each one (up to 2,048, spread evenly) up by its
        # position, as a read does: a damaged index can hold a chunk that is not found
        grid = [math.ceil(n / c) for n, c in zip(obj.shape, obj.chunks)]
        picks = np.unique(np.linspace(0, expected - 1, min(expected, 2048)).round().astype(np.int64))
        try:
            for flat in picks:
                index = np.unravel_index(int(flat), grid)
                coord = tuple(int(i) * int(c) for i, c in zip(index, obj.chunks))
                info = obj.id.get_chunk_info_by_coord(coord)
                if info.byte_offset is None:
                    missing += 1
                elif flat in (picks[0], picks[-1]) and info.size < 256 * 2**20:
                    obj.id.read_direct_chunk(coord)  # found the way a read finds it
        except Exception as exc:
            raise ReadError(f"{path}: the chunk index of {obj.name} is damaged ({type(exc).__name__})") from exc
    if missing:
        raise ReadError(f"{path}: {missing} of the {expected} chunks of {obj.name} cannot be found "
                        "(an interrupted writer or a damaged file); they would read as 0 — pass "
                        "fill_missing=True to read them so")


def read_hdf5(path: str, dataset: str | None = None, scan_shape: Any = None,
              chunks: Any = None, fill_missing: bool = False) -> Dataset4D:
    """Read a 4D dataset from an HDF5 file lazily (see :func:`read`)."""
    import h5py

    with open_h5(path) as f:
        if dataset is None:
            dataset = _choose_dataset(f, path, want_flat=scan_shape is not None)
        elif dataset not in f or not isinstance(f[dataset], (h5py.Dataset, h5py.Group)):
            choices = [n for n, _ in hdf5_datasets(path, (3, 4))]
            raise ReadError(f"{path}: no dataset {dataset!r}; 4D datasets in the file: {choices or 'none'}")
        obj = f[dataset]
        if isinstance(obj, h5py.Group):  # an EMD node: its data lives in 'data'
            if "data" not in obj:
                raise ReadError(f"{path}: group {dataset!r} holds no 'data' dataset")
            obj = obj["data"]
        if obj.dtype.kind not in "uifb":
            raise ReadError(f"{path}: dataset {obj.name!r} has non-numeric type {obj.dtype}")
        check_stored_chunks(obj, path, fill_missing)
        source = HDF5Source(os.path.abspath(path), obj.name, obj.shape, obj.dtype, obj.chunks)
        dims, first = _emd_dims(obj)
        reverse = _emd_axes_reversed(f, obj, dims, first)
        calibration, metadata = _hdf5_calibration(f, obj, dims[::-1] if reverse else dims)
        history = _provenance(obj)
    metadata["dataset"] = source.name
    array: Any = source
    if reverse:
        # RosettaSciIO/HyperSpy write EMD 0.x arrays transposed: (det_x, det_y, scan_x, scan_y)
        # on disk, dim1 describing det_x. Read them back in (scan_y, scan_x, det_y, det_x) order.
        array = TransposedSource(source)
        metadata["emd_axes_reversed"] = True
    ds = finish(array, path, calibration, metadata, scan_shape, chunks, "hdf5")
    if history:  # the steps that made this file (written by this package's EMD writer)
        ds.provenance = tuple(history) + tuple(ds.provenance)
    return ds


def _provenance(dset: Any) -> list:
    """The processing history this package's EMD writer records beside the data, or []."""
    import json

    for holder in (dset, dset.parent):
        if "provenance_json" in holder.attrs:
            try:
                values = json.loads(text(holder.attrs["provenance_json"]))
            except (TypeError, ValueError):
                return []
            return [v for v in values if isinstance(v, dict)] if isinstance(values, list) else []
    return []


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
    kinds = [unit_kind(d.attrs.get("units")) for d in dims]
    reversed_evidence = "reciprocal" in kinds[:2] or "real" in kinds[2:]
    native_evidence = "real" in kinds[:2] or "reciprocal" in kinds[2:]
    if reversed_evidence or native_evidence:
        return reversed_evidence and not native_evidence
    version = (str(text(f.attrs.get("version_major"))), str(text(f.attrs.get("version_minor"))))
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
            emd = text(parent.attrs.get("emd_group_type")) in (1, "1", "array")
            py4d = "datacube" in text(parent.attrs.get("python_class", "")).lower() \
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
            units.append(text(d.attrs.get("units", "")))
        metadata["emd_dims"] = {"steps": steps, "units": units}
        unit = length_unit(units[0])
        if unit and length_unit(units[1]) in (unit, None) and steps[0] and steps[1]:
            fields.update(scan_step=(abs(steps[0]), abs(steps[1])), scan_unit=unit)
        size, dunit = detector_unit(units[2], abs(steps[2]) if steps[2] else None)
        if dunit:
            fields.update(det_pixel_size=size, det_unit=dunit)
    # py4DSTEM calibration (emdfile Metadata named 'calibration', stored on the root node)
    cal = _find_py4dstem_calibration(f)
    if cal:
        metadata["py4dstem_calibration"] = {k: v for k, v in cal.items() if np.isscalar(v) or isinstance(v, str)}
        r_size, r_unit = positive(cal.get("R_pixel_size")), length_unit(cal.get("R_pixel_units"))
        if r_size and r_unit:
            fields.update(scan_step=r_size, scan_unit=r_unit)
        q_size, q_unit = detector_unit(cal.get("Q_pixel_units"), positive(cal.get("Q_pixel_size")))
        if q_unit:
            fields.update(det_pixel_size=q_size, det_unit=q_unit)
        qx0, qy0 = positive(cal.get("qx0_mean")), positive(cal.get("qy0_mean"))
        if qx0 and qy0:  # py4DSTEM: qx is the first detector axis (rows)
            fields["det_origin"] = (qx0, qy0)
        if positive(cal.get("convergence_semiangle_mrad")):
            fields["semiangle_mrad"] = positive(cal["convergence_semiangle_mrad"])
        if positive(cal.get("accelerating_voltage")):  # py4DSTEM stores volts
            fields["energy_kev"] = positive(cal["accelerating_voltage"]) / 1e3
    # Generic attributes some writers put on the dataset or its group (ours included).
    for holder in (dset, parent):
        for key, target, scale in (("energy_kev", "energy_kev", 1.0), ("beam_energy_kev", "energy_kev", 1.0),
                                   ("semiangle_mrad", "semiangle_mrad", 1.0),
                                   ("convergence_semiangle_mrad", "semiangle_mrad", 1.0)):
            if key in holder.attrs and target not in fields and positive(holder.attrs[key]):
                fields[target] = positive(holder.attrs[key]) * scale
        if "calibration_json" in holder.attrs:
            import json

            try:  # written by this package: authoritative, None included
                fields.update(Calibration.from_dict(json.loads(text(holder.attrs["calibration_json"]))).__dict__)
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
        if name.split("/")[-1] == "calibration" or "Calibration" in text(obj.attrs.get("python_class", "")):
            values = {k: text(v) for k, v in obj.attrs.items()}
            for k, item in obj.items():
                if isinstance(item, h5py.Dataset) and item.size <= 16:
                    values[k] = text(item[()])
            if any(k.startswith(("Q_pixel", "R_pixel")) for k in values):
                found.update(values)

    f.visititems(visit)
    return found


