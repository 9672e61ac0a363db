"""Which reader handles a path: :func:`detect_format` alone decides, from the extension
and, where extensions are shared (``.emd``, ``.xml``, directories), a few header bytes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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


