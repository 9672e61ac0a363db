"""The dask cluster of a run: a scheduler the user names, or a local cluster of worker
processes; one sentence when nothing answers at an address."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def refused(address: str, timeout: float = 3.0) -> str | None:
    """Why nothing can answer at a TCP ``address`` (``host:port``, ``tcp://`` or ``tls://``),
    known at once: the host refuses the connection or its name does not resolve. None when the
    port accepts a connection, for other schemes, or when the answer is slower than
    ``timeout`` (dask's client then waits its own timeout)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if parts.scheme not in ("tcp", "tls") or not host or port is None:
        return None
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except ConnectionRefusedError:
        return f"{host}:{port} refuses connections"
    except socket.gaierror as exc:
        return f"{host}: {exc.strerror or 'name not known'}"
    except OSError:
        return None


@contextmanager
def connect_scheduler(address: str, what: str = "scheduler", timeout: float = 20) -> Iterator[Any]:
    """A ``distributed.Client`` connected to the scheduler at ``address``, closed afterwards; a
    ValueError naming ``what`` (the option or field) when nothing answers there — at once when
    the host refuses the connection (a typo in the port, a scheduler not started), else after
    ``timeout`` seconds."""
    from distributed import Client

    why = refused(address)
    if why is not None:
        raise ValueError(f"{what} {address}: no dask scheduler answers there ({why})")
    try:
        client = Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        raise ValueError(f"{what} {address}: no dask scheduler answers there ({exc})") from None
    with client:
        yield client


@contextmanager
def cluster(client: Any = None, workers: int | None = None, what: str = "--scheduler") -> Iterator[Any]:
    """The ``distributed.Client`` of a run: ``client`` itself, one connected to ``client`` when it
    is an address, a local cluster of ``workers`` processes (one thread each), or None."""
    if client is None and workers is None:
        yield None
        return
    if client is not None and not isinstance(client, str):
        yield client
        return
    if client is not None:
        with connect_scheduler(client, what) as own:
            yield own
        return
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                      dashboard_address=":0") as local, Client(local) as own:
        yield own


def describe(client: Any) -> str:
    """``"<scheduler address> (dashboard …)"`` of a client, for status lines and logs."""
    address = getattr(getattr(client, "scheduler", None), "address", None) or "a dask cluster"
    return f"{address} (dashboard {client.dashboard_link})"
