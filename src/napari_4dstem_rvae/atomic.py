"""Files written whole or not at all: a temporary name beside the target, flushed to disk,
then renamed over it (atomic on one file system: a reader sees the previous complete file
or the new complete file, never a part of one, even if the writer is killed)."""

from __future__ import annotations

import contextlib
import os
import secrets
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A temporary path beside ``path`` (unique to this process and call); when the block
    ends without an error it is flushed to disk and renamed over ``path``, else removed."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    _remove_orphans(folder, os.path.basename(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_folder(folder)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _remove_orphans(folder: str, name: str) -> None:
    """Remove temporary files of ``name`` left by writers that died (killed before renaming)."""
    prefix = f".{name}.tmp-"
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    for entry in entries:
        if not entry.startswith(prefix):
            continue
        try:
            pid = int(entry[len(prefix):].split("-", 1)[0])
        except ValueError:
            continue
        if pid == os.getpid() or _alive(pid):     # the writer is alive: leave its file
            continue
        try:
            os.remove(os.path.join(folder, entry))
        except OSError:
            pass


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (when unsure: yes). Never signals it: on Windows
    ``os.kill(pid, 0)`` would end it."""
    if os.name == "nt":  # pragma: no cover - Windows
        return _alive_windows(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:                               # PermissionError: another user's process
        return True
    return True


def _alive_windows(pid: int) -> bool:  # pragma: no cover - Windows
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenProcess.restype = wintypes.HANDLE
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.get_last_error() != 87          # ERROR_INVALID_PARAMETER: no such process
    try:
        code = wintypes.DWORD()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == 259                      # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def write_bytes(path: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return os.fspath(path)


def fsync_folder(folder: str) -> None:
    """Make a rename durable (POSIX: fsync the directory; Windows cannot open one, nor needs to)."""
    if os.name == "nt":  # pragma: no cover - Windows
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
