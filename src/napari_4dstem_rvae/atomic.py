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
            os.kill(pid, 0)                       # the writer is alive: leave its file
        except ProcessLookupError:
            try:
                os.remove(os.path.join(folder, entry))
            except OSError:
                pass
        except (ValueError, PermissionError, OSError):
            continue


def write_bytes(path: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return os.fspath(path)


def fsync_folder(folder: str) -> None:
    """Make a rename durable (POSIX: fsync the directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - not POSIX
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
