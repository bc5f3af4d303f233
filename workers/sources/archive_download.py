"""The archive's HTTP side (for workers.sources.binance_archive): one request with its redirects
followed by hand, a body read into a file within its bounds, and the retry policy.

Against a hostile-but-honest mirror every file has bounds, each failing that file alone with a
message naming it:

* redirects: at most MAX_REDIRECTS, never a loop, never to a host other than the archive's
  unless allowed (`--allow-redirect-host`, TICKSTACK_ARCHIVE_REDIRECT_HOSTS); each one followed
  is logged;
* an answer is read up to the bytes it may hold (the file's size, else its Content-Length, else
  TICKSTACK_ARCHIVE_MAX_FILE_BYTES) and no further: a body going past it fails the file, and no
  more than that is written;
* a `Transfer` (one file in one run) has an overall deadline, floor + size / minimum rate, over
  all its requests, attempts and waits (the read timeout only catches silence, not a trickle), and
  a budget of bytes received in all (a multiple of the size: a server that ignores Range and cuts
  would otherwise send the file's first part forever).
"""

from __future__ import annotations

import contextlib
import email.utils
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit, urlunsplit

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type

from workers.core import logs
from workers.core.errors import BadInput, Failed
from workers.core.settings import ArchiveSettings, default
from workers.sources.archive_net import DeadlineTransport, deadline

log = logs.get("fetch")

MAX_REDIRECTS = 10
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                   r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$|^\[[0-9A-Fa-f:]+\]$")


class ArchiveError(Failed):
    """A fetch (or one file of it) that cannot go on (exit 1)."""


class Retryable(Exception):
    """A transient failure: the attempt is repeated (Retry-After honoured, else backoff)."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


@dataclass(frozen=True)
class ArchiveConfig:
    """The fetcher's settings (TICKSTACK_ARCHIVE_…, whose fields give the defaults)."""

    base_url: str
    cache_dir: Path
    parallel: int = default("archive_parallel")
    connect_timeout: float = default("archive_connect_timeout_seconds")
    read_timeout: float = default("archive_read_timeout_seconds")
    attempts: int = default("archive_attempts")
    retry_after_max: float = default("archive_retry_after_max_seconds")
    backoff: float = default("archive_backoff_seconds")
    max_file_bytes: int = default("archive_max_file_bytes")
    min_bytes_per_second: float = default("archive_min_bytes_per_second")
    deadline_floor: float = default("archive_deadline_floor_seconds")
    max_received_ratio: float = default("archive_max_received_ratio")
    redirect_hosts: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, s: ArchiveSettings, redirect_hosts: Iterable[str] = ()) -> ArchiveConfig:
        """From the settings' archive group; `redirect_hosts` (the --allow-redirect-host
        options) add to TICKSTACK_ARCHIVE_REDIRECT_HOSTS."""
        hosts = [("TICKSTACK_ARCHIVE_REDIRECT_HOSTS", h.strip())
                 for h in s.redirect_hosts.split(",") if h.strip()]
        hosts += [("--allow-redirect-host", h.strip()) for h in redirect_hosts]
        for where, h in hosts:
            if not _HOST.match(h):
                raise BadInput(f"{where} {h!r} is not a host name (like data.example.com)")
        return cls(base_url=s.base_url, cache_dir=Path(s.cache_dir), parallel=s.parallel,
                   connect_timeout=s.connect_timeout_seconds,
                   read_timeout=s.read_timeout_seconds, attempts=s.attempts,
                   retry_after_max=s.retry_after_max_seconds, backoff=s.backoff_seconds,
                   max_file_bytes=s.max_file_bytes, min_bytes_per_second=s.min_bytes_per_second,
                   deadline_floor=s.deadline_floor_seconds,
                   max_received_ratio=s.max_received_ratio,
                   redirect_hosts=frozenset(host_of(f"//{h}") for _, h in hosts))

    def deadline_for(self, size: int | None) -> float:
        """Seconds a file of `size` bytes (None: unknown, so the largest allowed) may take."""
        return self.deadline_floor + (size or self.max_file_bytes) / self.min_bytes_per_second


class Transfer:
    """One file in one run, across its requests and attempts: bytes received (discarded ones
    included), its deadline once started, and its budget of bytes received in all."""

    def __init__(self, what: str, cfg: ArchiveConfig, size: int | None):
        self.what = what
        self.seconds = cfg.deadline_for(size)
        self.max_received = int(cfg.max_received_ratio * (size or cfg.max_file_bytes))
        self.ratio = cfg.max_received_ratio
        self.size = size
        self.received = 0
        self.range_ignored = 0  # Range requests answered with the whole file
        self.short_answer = ""  # an answer whole by its Content-Length but short of the size
        self.deadline = float("inf")

    def start(self) -> Transfer:
        self.deadline = time.monotonic() + self.seconds
        return self

    def check_time(self, waiting: float = 0.0) -> None:
        if time.monotonic() + waiting >= self.deadline:
            after = f" (waiting {waiting:.1f} s more would pass it)" if waiting else ""
            raise ArchiveError(
                f"{self.what}: not finished within its deadline of {self.seconds:,.0f} s"
                f"{after}: {self.received:,} bytes received (TICKSTACK_ARCHIVE_DEADLINE_FLOOR_"
                "SECONDS + size / TICKSTACK_ARCHIVE_MIN_BYTES_PER_SECOND; a partial download "
                "is kept for the next run)")

    def budget_left(self) -> int:
        return self.max_received - self.received

    def over_budget(self) -> ArchiveError:
        of = f"its {self.size:,}" if self.size else "TICKSTACK_ARCHIVE_MAX_FILE_BYTES"
        why = (f": the server answered {self.range_ignored} Range requests with the whole file "
               "from its start" if self.range_ignored else "")
        return ArchiveError(f"{self.what}: received {self.received:,} bytes in all, more than "
                            f"{self.ratio:g} times {of} (TICKSTACK_ARCHIVE_MAX_RECEIVED_RATIO)"
                            f"{why}")


class Http:
    """The client: redirects followed by hand (checked, logged), bounded reads, retries."""

    def __init__(self, cfg: ArchiveConfig, stop: threading.Event):
        self.cfg, self.stop = cfg, stop
        self.allowed = {host_of(cfg.base_url), *cfg.redirect_hosts}
        limits = httpx.Limits(max_connections=cfg.parallel,
                              max_keepalive_connections=cfg.parallel)
        self.client = httpx.Client(
            timeout=httpx.Timeout(connect=cfg.connect_timeout, read=cfg.read_timeout,
                                  write=cfg.read_timeout, pool=None),
            transport=DeadlineTransport(limits), limits=limits,
            # Bytes as stored: Range offsets and the checksum are about the file, not an encoding.
            headers={"Accept-Encoding": "identity", "User-Agent": "tickstack-fetch"},
            follow_redirects=False)

    def close(self) -> None:
        self.client.close()

    @contextlib.contextmanager
    def open(self, method: str, url: str, t: Transfer,
             headers: dict | None = None) -> Iterator[httpx.Response]:
        """The answer to `method url` after its redirects; transport errors (here or in the
        caller's block) as Retryable."""
        chain = [url]
        # Every socket operation of this thread (headers included) stops at the deadline.
        with _net_errors(self.cfg, t), deadline(t.deadline):
            request = self.client.build_request(method, url, headers=headers)
            for _ in range(MAX_REDIRECTS + 1):
                t.check_time()
                r = self.client.send(request, stream=True)
                try:
                    nxt = r.next_request  # None: not a redirect
                except httpx.HTTPError as e:
                    r.close()
                    raise ArchiveError(f"{t.what}: a redirect without a usable Location from "
                                       f"{_shown(str(request.url))}: {e}") from None
                if nxt is None:
                    try:
                        yield r
                    finally:
                        r.close()
                    return
                r.close()
                self._follow(t.what, r.status_code, str(request.url), str(nxt.url), chain)
                request = nxt
        raise ArchiveError(f"{t.what}: more than {MAX_REDIRECTS} redirects: "
                           + " -> ".join(_shown(u) for u in chain))

    def _follow(self, what: str, code: int, src: str, dst: str, chain: list[str]) -> None:
        if dst in chain:
            raise ArchiveError(f"{what}: redirect loop: "
                               + " -> ".join(_shown(u) for u in (*chain, dst)))
        a, b = host_of(src), host_of(dst)
        if urlsplit(dst).scheme not in ("http", "https"):
            raise ArchiveError(f"{what}: redirected to {_shown(dst)}: not HTTP(S), refused")
        if b not in self.allowed:
            raise ArchiveError(
                f"{what}: redirected from host {a} to host {b} ({_shown(dst)}): refused; allow "
                f"it with --allow-redirect-host {b} (or TICKSTACK_ARCHIVE_REDIRECT_HOSTS)")
        if urlsplit(src).scheme == "https" and urlsplit(dst).scheme != "https":
            raise ArchiveError(f"{what}: redirected from https to {_shown(dst)}: refused")
        log.info("redirect followed", what=what, status=code, url=_shown(src), to=_shown(dst))
        chain.append(dst)

    def read_into(self, r: httpx.Response, out: BinaryIO, limit: int, why: str, t: Transfer,
                  on_bytes: Callable[[int], None]) -> int:
        """The body into `out`, never more than `limit` bytes (`why`: what the limit is): a body
        going past it fails. Stops as well at the transfer's deadline or byte budget. Returns
        the bytes written."""
        n = 0
        # Unchunked: every byte received is on disk before a cut connection raises (a chunk
        # size would hold back a partial chunk and lose it).
        for chunk in r.iter_raw():
            if self.stop.is_set():
                raise ArchiveError(f"{t.what}: stopped (the partial download is kept)")
            room = min(limit - n, max(0, t.budget_left()))
            t.received += len(chunk)
            keep = chunk[:room]
            out.write(keep)
            n += len(keep)
            on_bytes(len(keep))
            if len(chunk) > room:
                if t.received > t.max_received:
                    raise t.over_budget()
                raise ArchiveError(f"{t.what}: the server sent more than {why}: stopped "
                                   "reading there")
            t.check_time()
        return n

    def check(self, r: httpx.Response, what: str) -> None:
        code = r.status_code
        if code in (200, 206):
            return
        if code == 429 or 500 <= code < 600:
            after = retry_after_seconds(r.headers.get("Retry-After"))
            if after is not None and after > self.cfg.retry_after_max:
                raise ArchiveError(
                    f"{what}: HTTP {code} {r.reason_phrase}; the server asks to retry after "
                    f"{after:.0f} s, more than TICKSTACK_ARCHIVE_RETRY_AFTER_MAX_SECONDS "
                    f"({self.cfg.retry_after_max:g} s): run again later")
            raise Retryable(f"HTTP {code} {r.reason_phrase}"
                            + (f" (Retry-After {after:g} s)" if after is not None else ""), after)
        if code == 403:
            raise ArchiveError(f"{what}: HTTP 403 Forbidden: the archive refused it (a region it "
                               "blocks, or a mirror that answers 403 for missing files)")
        raise ArchiveError(f"{what}: HTTP {code} {r.reason_phrase} from {_shown(str(r.url))}")

    def retrying(self, t: Transfer, fn: Callable, what: str | None = None,
                 progressed: Callable[[], int] = lambda: 0):
        """fn until it succeeds or fails for good. Attempts that received bytes do not count
        against the limit (a flaky link still finishes a big file); 10x the limit in all, and
        never past the transfer's deadline."""
        what = what or t.what
        stuck = [0]
        last = [progressed()]

        def stop(rs: RetryCallState) -> bool:
            now = progressed()
            stuck[0] = 0 if now > last[0] else stuck[0] + 1
            last[0] = now
            return stuck[0] >= self.cfg.attempts or rs.attempt_number >= 10 * self.cfg.attempts

        def wait_for(rs: RetryCallState) -> float:
            e = rs.outcome.exception() if rs.outcome else None
            if isinstance(e, Retryable) and e.retry_after is not None:
                return e.retry_after
            # Backoff grows with the attempts that got nothing, and restarts after progress.
            return min(30.0, self.cfg.backoff * 2 ** max(0, stuck[0] - 1)) \
                + random.uniform(0, self.cfg.backoff)

        def sleep(seconds: float) -> None:
            t.check_time(waiting=seconds)
            if self.stop.wait(seconds):
                raise ArchiveError(f"{what}: stopped")

        attempts = Retrying(stop=stop, wait=wait_for, sleep=sleep, reraise=True,
                            retry=retry_if_exception_type(Retryable),
                            before_sleep=lambda rs: log.info(
                                "retrying", what=what, attempt=rs.attempt_number,
                                reason=str(rs.outcome.exception()),
                                wait_s=round(rs.next_action.sleep, 2)))
        try:
            for attempt in attempts:
                with attempt:
                    return fn()
        except Retryable as e:
            raise ArchiveError(f"{what}: {e.reason} (gave up after "
                               f"{attempts.statistics.get('attempt_number', '?')} attempts)"
                               ) from None


@contextlib.contextmanager
def _net_errors(cfg: ArchiveConfig, t: Transfer):
    """httpx's transport errors as Retryable, with what they mean here (a timeout at the
    transfer's deadline: the deadline's ArchiveError)."""
    try:
        yield
    except httpx.TimeoutException as e:
        t.check_time()
        if isinstance(e, httpx.ConnectTimeout):
            raise Retryable(f"no connection within {cfg.connect_timeout:g} s") from None
        if not isinstance(e, httpx.ReadTimeout):
            raise Retryable(f"{type(e).__name__}: {e}") from None
        raise Retryable(f"stalled: no data for {cfg.read_timeout:g} s "
                        "(TICKSTACK_ARCHIVE_READ_TIMEOUT_SECONDS)") from None
    except httpx.ConnectError as e:
        raise Retryable(f"cannot connect to {cfg.base_url}: {e}") from None
    except httpx.RemoteProtocolError as e:  # e.g. the body ended before its Content-Length
        raise Retryable(f"connection cut: {e}") from None
    except httpx.TransportError as e:
        raise Retryable(f"{type(e).__name__}: {e}") from None


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def _shown(url: str) -> str:
    """A URL for messages and logs: without credentials, its query shown as `?…` (a presigned
    URL's signature is in it)."""
    u = urlsplit(url)
    netloc = u.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if u.port:
        netloc += f":{u.port}"
    return urlunsplit((u.scheme, netloc, u.path, "", "")) + ("?…" if u.query else "")


def answer_bound(cfg: ArchiveConfig, what: str, size: int | None, have: int,
                 announced: int | None) -> tuple[int, str]:
    """The bytes an answer may hold when `have` bytes of the file are on disk (size: from the
    HEAD; announced: the answer's Content-Length), and what that bound is, for the message."""
    total = size or (have + announced if announced is not None else None)
    if total is None:
        return (cfg.max_file_bytes - have,
                f"TICKSTACK_ARCHIVE_MAX_FILE_BYTES ({cfg.max_file_bytes:,} bytes) for a file "
                "whose size it does not announce")
    if total > cfg.max_file_bytes:
        raise ArchiveError(f"{what}: the server announces {total:,} bytes, more than "
                           f"TICKSTACK_ARCHIVE_MAX_FILE_BYTES ({cfg.max_file_bytes:,})")
    if size and announced is not None and have + announced > size:  # says which announcement
        return size - have, (f"the {size:,} bytes its HEAD announced (this answer's "
                             f"Content-Length says {have + announced:,})")
    return total - have, f"the {total:,} bytes announced"


def short_answer(what: str, size: int | None, end: int, r: httpx.Response) -> str:
    """An answer `r` that ended at byte `end` of a file of `size` (its HEAD): "" when it reached
    the size; Retryable when it just stopped — no Content-Length, or a 206 for a part of the
    file (a cut, or a server answering a range in parts: resumed from there). Whole by its own
    Content-Length (a 200, or a 206 reaching its total) yet short of the HEAD's size is no
    cut — asking again gets the same: the mirror contradicts itself, and what was received is
    left to the CHECKSUM; the contradiction is returned for the message if that fails."""
    if not size or end >= size:
        return ""
    whole = r.status_code == 200 or range_is_the_rest(r.headers.get("Content-Range", ""))
    if content_length(r) is None or not whole:
        raise Retryable(f"connection cut: the answer ended at byte {end:,}")
    log.warning("an answer whole by its Content-Length is shorter than the HEAD announced: "
                "the CHECKSUM decides", what=what, ends_at=end, head_size=size)
    return f"its answers end at byte {end:,} (their Content-Length), its HEAD announces {size:,}"


def content_length(r: httpx.Response) -> int | None:
    value = r.headers.get("Content-Length", "").strip()
    return int(value) if value.isdigit() else None


def range_is_the_rest(content_range: str) -> bool:
    """A 206's Content-Range reaches its total (`bytes 100-199/200`): the answer claims to be
    the whole rest of the file, not a part of it (a server may answer a range in parts)."""
    m = re.match(r"bytes \d+-(\d+)/(\d+)", content_range.strip())
    return bool(m) and int(m.group(1)) + 1 == int(m.group(2))


def range_start(content_range: str) -> int | None:
    m = re.match(r"bytes (\d+)-\d+/(?:\d+|\*)", content_range.strip())
    return int(m.group(1)) if m else None


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
