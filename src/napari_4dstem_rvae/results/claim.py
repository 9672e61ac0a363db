"""The output guard: an output file is checked before any work and held while the work runs.

:func:`claim_output` refuses, each with one sentence, an output that would overwrite an input
(or lie inside an input folder), a folder, a file that is not a results file of this package,
and a folder that cannot be written. While its block runs it holds a lock file
(``.NAME.lock`` beside the output, :mod:`filelock`: ``flock`` on POSIX, ``LockFileEx`` on
Windows, released by the system even if the process is killed), so a second writer of the
same path — another process, or another thread of this one — is refused at once.

The claim is re-entrant in its thread: a workflow claims its output before a long training,
then calls a writer (:func:`~napari_4dstem_rvae.results.write_results` …) that claims the same
path again; the nested claim re-checks the inputs only and passes.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from typing import Any, Iterator

from filelock import FileLock, Timeout, UnixFileLock

from .reading import is_results_file


def same_or_inside(path: str | os.PathLike, other: str | os.PathLike) -> bool:
    """Whether ``path`` is ``other`` (resolving links) or lies inside the folder ``other``."""
    path, other = os.fspath(path), os.fspath(other)
    a, b = os.path.realpath(path), os.path.realpath(other)
    if a == b:
        return True
    if os.path.exists(path) and os.path.exists(other):
        try:
            if os.path.samefile(path, other):
                return True
        except OSError:
            pass
    return os.path.isdir(b) and a.startswith(b.rstrip(os.sep) + os.sep)


@dataclass
class _Held:
    lock: Any          # the FileLock
    lock_path: str
    depth: int         # claims of this thread on the path (1 + nested ones)
    thread: int        # threading.get_ident() of the holder


#: Claims this process holds: {real path of the output: _Held}, guarded by ``_GUARD``.
_HELD: dict[str, _Held] = {}
_GUARD = threading.Lock()


def _reset_after_fork() -> None:  # a child holds none of its parent's claims (its locks stay the parent's)
    global _GUARD
    _HELD.clear()
    _GUARD = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _busy(what: str, path: str) -> ValueError:
    return ValueError(f"{what} {path} is being written by another process; wait for it to finish or choose "
                      "another output")


def _check_inputs(path: str, inputs: Any, what: str) -> None:
    for source in inputs or ():
        if source and same_or_inside(path, os.fspath(source)):
            raise ValueError(f"{what} {path} is the input {os.fspath(source)} (or inside it); "
                             "choose another output so that the input is not overwritten")


def _check_target(path: str, what: str) -> str:
    """The folder, made if missing; refuses a folder, an unwritable folder and a foreign file."""
    if os.path.isdir(path):
        raise ValueError(f"{what} {path} is a folder; expected a results file name (e.g. results.h5)")
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{what} {path}: the folder {folder} cannot be made ({exc.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{what} {path}: the folder {folder} cannot be written")
    if os.path.exists(path) and not is_results_file(path):
        raise ValueError(f"{what} {path} exists and is not a results file of napari-4dstem-rvae; "
                         "it is left untouched — choose another output name")
    return folder


@contextlib.contextmanager
def claim_output(path: str | os.PathLike, inputs: Any = (), what: str = "--out") -> Iterator[str]:
    """Check an output file before any work and hold it while the work runs; yields its
    absolute path.

    Refused with a one-sentence ``ValueError`` (``what`` names the output in it, e.g.
    ``"--out"`` or ``"results file"``): a path that is (or resolves to, or lies inside) one of
    ``inputs``; a folder; an existing file that is not a results file of this package (it
    would be lost); a folder that cannot be written; a path held by another process or by
    another thread of this one ("… is being written by another process …"). A nested claim of
    a path this thread already holds re-checks ``inputs`` only and passes.
    """
    path = os.path.abspath(os.fspath(path))
    _check_inputs(path, inputs, what)
    key = os.path.realpath(path)
    me = threading.get_ident()
    with _GUARD:
        held = _HELD.get(key)
        if held is not None:
            if held.thread != me:
                raise _busy(what, path)
            held.depth += 1
    if held is not None:  # nested in this thread's own claim
        try:
            yield path
        finally:
            with _GUARD:
                held.depth -= 1
        return
    _check_target(path, what)
    lock_path = os.path.join(os.path.dirname(key), f".{os.path.basename(key)}.lock")
    with _GUARD:
        if key in _HELD:  # another thread of this process claimed it meanwhile
            raise _busy(what, path)
        lock = FileLock(lock_path, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise _busy(what, path) from None
        except OSError as exc:
            raise ValueError(f"{what} {path}: the lock file {lock_path} cannot be made "
                             f"({exc.strerror or exc})") from None
        held = _HELD[key] = _Held(lock, lock_path, 1, me)
    try:
        yield path
    finally:
        with _GUARD:
            del _HELD[key]
            _release(held)


def _release(held: _Held) -> None:
    """Release the lock and leave no lock file behind. A POSIX ``flock`` file is unlinked while
    still locked, so a writer that opened it meanwhile finds it locked, or, after the release,
    locks an unlinked file, which filelock detects and refuses; Windows and soft locks remove
    their own file on release."""
    if isinstance(held.lock, UnixFileLock) and os.name == "posix":
        with contextlib.suppress(OSError):
            os.remove(held.lock_path)
    held.lock.release()
