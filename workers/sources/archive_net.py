"""Connections bounded by a deadline, for the archive client (workers.sources.archive_download).

httpx's timeouts bound each socket operation, not a request: a server trickling its headers (or
body) a byte at a time never trips the read timeout. Here every read, write and connect made by a
thread inside `deadline(at)` is given at most what is left until `at`, and fails with a timeout
once it has passed — the caller turns that into the file's deadline error.
"""

from __future__ import annotations

import contextlib
import threading
import time

import httpcore
import httpx

_current = threading.local()  # .deadline: the time.monotonic() the running transfer ends at


@contextlib.contextmanager
def deadline(at: float):
    """Within: every read, write and connect of this thread's connections ends by `at`."""
    _current.deadline = at
    try:
        yield
    finally:
        _current.deadline = float("inf")


def _capped(timeout: float | None) -> float | None:
    """A socket operation's timeout, cut to what is left of this thread's transfer deadline."""
    deadline = getattr(_current, "deadline", float("inf"))
    left = deadline - time.monotonic()
    if left <= 0:
        raise httpcore.ReadTimeout("the file's deadline has passed")
    return left if timeout is None or timeout > left else timeout


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by the transfer's deadline: a timeout only
    bounds each read, so headers (or a body) trickled a byte at a time never trip it alone."""

    def __init__(self, inner: httpcore.NetworkStream):
        self.inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, _capped(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, _capped(timeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None):
        return _DeadlineStream(self.inner.start_tls(ssl_context, server_hostname,
                                                    _capped(timeout)))

    def get_extra_info(self, info: str):
        return self.inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self.inner = httpcore.SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        return _DeadlineStream(self.inner.connect_tcp(host, port, _capped(timeout),
                                                      local_address, socket_options))

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        return _DeadlineStream(self.inner.connect_unix_socket(path, _capped(timeout),
                                                              socket_options))

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class DeadlineTransport(httpx.HTTPTransport):
    """httpx's transport over connections bounded by the transfer's deadline (httpx takes no
    network backend: its pool is rebuilt with one, as it builds it)."""

    def __init__(self, limits: httpx.Limits):
        super().__init__(limits=limits)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(), max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry, network_backend=_DeadlineBackend())
