"""The faults the archive server (archive_server.py) answers with, on demand: queued per path
and used up one per GET (`ArchiveServer.queue`), or set for every GET of a path
(`ArchiveServer.always`):

* `cut(n)`: headers announcing the whole (remaining) length, `n` bytes, then the connection drops;
* `truncated(n)`: as if the file ended at byte `n` (its full length still announced): every GET
  gets what it asked for up to `n`, then the connection drops;
* `stall(n)`: the file up to byte `n`, then silence until the server stops (`n=None`: silence
  before the headers);
* `status(code, retry_after)`: an error answer (429, 503…) with an optional Retry-After;
* `corrupt()`: the file with one byte changed; `throttle(bytes_per_s)`: the file, slowly;
* `ignore_range()` (or `cut(n, ignore_range=True)`): a Range request answered 200 with the whole
  file, as a server without Range support does;
* `endless(n)`: no Content-Length, the file and then zeros until `n` bytes are sent (the server
  closes); `hide_length=True`: its HEAD does not say the size either;
* `slow_headers(bytes_per_s)`: a header trickled a byte at a time until the server stops;
* a Range answered with a 206 (its Content-Range saying so) for at most its first n bytes,
  `range_parts(n)`, or from byte n when it asked for more, `range_from(n)`;
* `head_size(n)`: the HEAD announces n bytes whatever the file's size (GETs are honest);
  `short_length(n)`: a GET announces a Content-Length of n bytes but sends the whole rest;
* `redirect_loop()` (A -> A?loop=1 -> A), `redirect_chain()` (A -> A?hop=1 -> A?hop=2 …),
  `redirect_to(base_url)`: 302 to the same path under another server. These (and a hidden
  length) apply to HEAD as well, when set with `always`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fault:
    kind: str  # the builder's name (cut, truncated, stall…; plain: ignore_range; loop, chain)
    n: int | None = None
    code: int = 0
    retry_after: str | None = None
    ignore_range: bool = False
    hide_length: bool = False
    to: str | None = None

    @property
    def on_head(self) -> bool:
        return self.kind in ("loop", "chain", "redirect", "head_size") or self.hide_length


def cut(n: int, ignore_range: bool = False) -> Fault:
    return Fault("cut", n, ignore_range=ignore_range)


def ignore_range() -> Fault:
    return Fault("plain", ignore_range=True)


def endless(n: int, hide_length: bool = False) -> Fault:
    return Fault("endless", n, hide_length=hide_length)


def slow_headers(bytes_per_s: int) -> Fault:
    return Fault("slow_headers", bytes_per_s)


def range_parts(n: int) -> Fault:
    return Fault("range_parts", n)


def range_from(n: int) -> Fault:  # n=0: the whole file, as a 206
    return Fault("range_from", n)


def head_size(n: int) -> Fault:
    return Fault("head_size", n)


def short_length(n: int) -> Fault:
    return Fault("short_length", n)


def redirect_loop() -> Fault:
    return Fault("loop")


def redirect_chain() -> Fault:
    return Fault("chain")


def redirect_to(base_url: str) -> Fault:
    return Fault("redirect", to=base_url.rstrip("/"))


def truncated(n: int) -> Fault:
    return Fault("truncated", n)


def stall(n: int | None = 0) -> Fault:
    return Fault("stall", n)


def status(code: int, retry_after: str | int | None = None) -> Fault:
    return Fault("status", code=code, retry_after=None if retry_after is None else str(retry_after))


def corrupt() -> Fault:
    return Fault("corrupt")


def throttle(bytes_per_s: int) -> Fault:
    return Fault("throttle", bytes_per_s)


def fault_ignores_range(fault: Fault | None) -> bool:
    return fault is not None and fault.ignore_range
