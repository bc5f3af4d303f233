"""Binance's public archive (data.binance.vision) -> a verified local cache laid out like it.

`resolve` turns a symbol, market, kind and date range into the archive's files: the monthly file
of each whole month in the range, daily files for the rest (and for a month whose monthly file is
not published yet, or whose days are all cached already). `Fetcher` downloads them over a bounded
number of connections, resumes partial downloads with HTTP Range, and checks each against its
`.CHECKSUM` before renaming it to its final name: a file at its final name in the cache is
verified, so a rerun skips it without asking the server, and nothing unverified is ever handed on.

The cache mirrors the archive's paths (`<cache>/data/<spot|futures/um|futures/cm>/<daily|monthly>/
<trades|aggTrades>/<SYMBOL>/<SYMBOL>-<kind>-<date>.zip` + `.CHECKSUM`), so the market of a cached
file is in its path (`archive_file_of`) and the cache itself can be served as a mirror. Several
processes may fetch into one cache at once: each file is downloaded under an exclusive lock
(`<cache>/.locks/`), once; the others find it verified.
"""

from __future__ import annotations

import calendar
import contextlib
import email.utils
import fcntl
import hashlib
import os
import random
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type

from workers.core import logs
from workers.core.errors import BadInput, Failed
from workers.sources.binance_files import ARCHIVE_MARKET_PATHS, parse_checksum, sha256_file

log = logs.get("fetch")

# --market option -> the archive's folder.
MARKETS = ARCHIVE_MARKET_PATHS
KINDS = ("trades", "aggTrades")
# Spot and USDⓈ-M pairs (BTCUSDT), COIN-M perpetuals (BTCUSD_PERP), delivery contracts (_240628).
_SYMBOL = re.compile(r"^[A-Z0-9]{2,20}(?:_PERP|_\d{6})?$")
_PATH = re.compile(r"(?:^|/)data/(spot|futures/um|futures/cm)/(daily|monthly)/(trades|aggTrades)/"
                   r"([A-Z0-9_]+)/\4-\3-(\d{4}-\d{2}(?:-\d{2})?)\.zip$")


class ArchiveError(Failed):
    """A fetch (or one file of it) that cannot go on (exit 1)."""


class BadRequest(BadInput):
    """Bad symbol, market, kind or dates; or a symbol the archive has no file of (exit 2)."""


class Retryable(Exception):
    """A transient failure: the attempt is repeated (Retry-After honoured, else backoff)."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


# --- what to fetch ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ArchiveFile:
    market: str  # spot | um | cm
    period: str  # daily | monthly
    kind: str  # trades | aggTrades
    symbol: str
    date: str  # YYYY-MM-DD (daily) or YYYY-MM (monthly)

    @property
    def name(self) -> str:
        return f"{self.symbol}-{self.kind}-{self.date}.zip"

    @property
    def path(self) -> str:
        """Path under the archive's root (and the cache's)."""
        return (f"data/{MARKETS[self.market]}/{self.period}/{self.kind}/{self.symbol}/"
                f"{self.name}")

    @property
    def first_day(self) -> date:
        return date.fromisoformat(self.date if self.period == "daily" else self.date + "-01")

    @property
    def last_day(self) -> date:
        d = self.first_day
        if self.period == "daily":
            return d
        return d.replace(day=calendar.monthrange(d.year, d.month)[1])

    def days(self) -> list[ArchiveFile]:
        """The daily files a monthly file holds."""
        d, out = self.first_day, []
        while d <= self.last_day:
            out.append(ArchiveFile(self.market, "daily", self.kind, self.symbol, d.isoformat()))
            d += timedelta(days=1)
        return out

    def sort_key(self) -> tuple:
        return (self.first_day, self.period, self.market, self.kind, self.symbol)


def archive_file_of(path: str | Path) -> ArchiveFile | None:
    """The archive file a (cached) path is, from its archive layout; None for other paths.

    This is how the market of a file is known (spot, um, cm): from where it sits in the archive,
    never from the symbol (BTCUSDT trades on spot and on USDⓈ-M)."""
    m = _PATH.search(Path(path).as_posix())
    if not m:
        return None
    folder, period, kind, symbol, day = m.groups()
    if (period == "daily") != (len(day) == 10):
        return None
    market = next(k for k, v in MARKETS.items() if v == folder)
    return ArchiveFile(market, period, kind, symbol, day)


@dataclass(frozen=True)
class Request:
    symbol: str
    market: str
    kind: str
    since: date
    until: date  # inclusive

    @classmethod
    def parse(cls, symbol: str, market: str, kind: str, since: str, until: str | None,
              today: date | None = None) -> Request:
        """Validate the options (BadRequest names the bad one). Dates are YYYY-MM-DD or YYYY-MM
        (since: the month's first day, until: its last); until defaults to yesterday (UTC), the
        newest day the archive can have."""
        sym = symbol.strip().upper()
        if not _SYMBOL.match(sym):
            raise BadRequest(f"--symbol {symbol!r} is not a Binance symbol (like BTCUSDT, "
                             "BTCUSD_PERP)")
        if market not in MARKETS:
            raise BadRequest(f"--market must be one of {', '.join(MARKETS)}, not {market!r}")
        if kind not in KINDS:
            raise BadRequest(f"--kind must be trades or aggTrades, not {kind!r}")
        yesterday = (today or datetime.now(UTC).date()) - timedelta(days=1)
        first = _day(since, "--since", end=False)
        last = _day(until, "--until", end=True) if until else yesterday
        if last > yesterday:
            raise BadRequest(f"--until {until} is not in the archive yet: it publishes each day "
                             f"after it ends (newest possible: {yesterday}, UTC)")
        if first > last:
            raise BadRequest(f"--since {since} is after --until {until or last}")
        return cls(sym, market, kind, first, last)

    def describe(self) -> str:
        return f"{self.symbol} {self.market} {self.kind} {self.since}..{self.until}"


def _day(text: str, option: str, *, end: bool) -> date:
    try:
        if re.fullmatch(r"\d{4}-\d{2}", text.strip()):
            d = date.fromisoformat(text.strip() + "-01")
            return d.replace(day=calendar.monthrange(d.year, d.month)[1]) if end else d
        return date.fromisoformat(text.strip())
    except ValueError:
        raise BadRequest(f"{option} {text!r} is not a date (YYYY-MM-DD, or YYYY-MM for a whole "
                         "month)") from None


def resolve(req: Request, cached: Callable[[ArchiveFile], bool] = lambda f: False
            ) -> list[ArchiveFile]:
    """The files covering the request, oldest first: the monthly file for each month the range
    covers whole (unless every day of it is cached already and the monthly file is not), daily
    files for the partial months at either end."""
    out: list[ArchiveFile] = []
    month = req.since.replace(day=1)
    while month <= req.until:
        monthly = ArchiveFile(req.market, "monthly", req.kind, req.symbol, month.strftime("%Y-%m"))
        lo, hi = max(req.since, monthly.first_day), min(req.until, monthly.last_day)
        days = [d for d in monthly.days() if lo <= d.first_day <= hi]
        whole = lo == monthly.first_day and hi == monthly.last_day
        if whole and (cached(monthly) or not all(cached(d) for d in days)):
            out.append(monthly)
        else:
            out.extend(days)
        month = monthly.last_day + timedelta(days=1)
    return out


# --- fetching --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ArchiveConfig:
    base_url: str
    cache_dir: Path
    parallel: int = 4
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    attempts: int = 5
    retry_after_max: float = 120.0
    backoff: float = 0.5

    @classmethod
    def from_settings(cls, s) -> ArchiveConfig:
        return cls(base_url=s.archive_base_url, cache_dir=Path(s.archive_cache_dir),
                   parallel=s.archive_parallel, connect_timeout=s.archive_connect_timeout_seconds,
                   read_timeout=s.archive_read_timeout_seconds, attempts=s.archive_attempts,
                   retry_after_max=s.archive_retry_after_max_seconds,
                   backoff=s.archive_backoff_seconds)


@dataclass
class Result:
    file: ArchiveFile
    status: str  # cached | downloaded | missing | failed
    path: Path | None = None  # the verified zip (cached, downloaded)
    downloaded: int = 0  # bytes received in this run
    size: int | None = None
    seconds: float = 0.0
    resumed_from: int = 0  # bytes a partial download already had
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("cached", "downloaded")

    def as_dict(self) -> dict:
        return {"path": self.file.path, "status": self.status, "size": self.size,
                "downloaded": self.downloaded, "resumed_from": self.resumed_from,
                "seconds": round(self.seconds, 3), "reason": self.reason,
                "local": str(self.path) if self.path else None}

    def line(self) -> str:
        f = self.file
        if self.status == "downloaded":
            rate = self.downloaded / max(self.seconds, 1e-6) / 1e6
            resumed = f", resumed at {self.resumed_from:,} bytes" if self.resumed_from else ""
            return (f"downloaded {f.name} ({_mb(self.size)}, {self.seconds:.1f} s, "
                    f"{rate:.1f} MB/s{resumed}), verified")
        if self.status == "cached":
            return f"cached {f.name} (verified earlier)"
        if self.status == "missing":
            return f"missing {f.path}: {self.reason}"
        return f"failed {self.reason}" if self.reason.startswith(f.name) else \
            f"failed {f.name}: {self.reason}"


@dataclass
class Planned:
    file: ArchiveFile
    sha256: str
    checksum_text: str
    size: int | None
    partial: int  # bytes of a .part file from an earlier run


@dataclass
class Report:
    request: str
    cache_dir: Path
    results: list[Result]
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def unknown_symbol(self) -> bool:
        """Not one file of the request exists: a symbol the archive does not have (or not for
        that market, kind and period)."""
        return bool(self.results) and all(r.status == "missing" for r in self.results)

    def exit_code(self, allow_missing: bool = False) -> int:
        if self.unknown_symbol:
            return 2
        if self.count("failed") or (self.count("missing") and not allow_missing):
            return 1
        return 0

    def as_dict(self) -> dict:
        return {"request": self.request, "cache": str(self.cache_dir),
                "seconds": round(self.seconds, 3), "unknown_symbol": self.unknown_symbol,
                "counts": {s: self.count(s) for s in ("downloaded", "cached", "missing",
                                                      "failed")},
                "files": [r.as_dict() for r in self.results]}

    def summary(self) -> str:
        got = sum(r.downloaded for r in self.results)
        rows = [f"{self.count('downloaded')} downloaded ({_mb(got)} in {self.seconds:.1f} s)",
                f"{self.count('cached')} already cached"]
        rows += [f"{self.count(s)} {s}" for s in ("missing", "failed") if self.count(s)]
        text = f"fetch {self.request}: {len(self.results)} file(s): " + ", ".join(rows)
        if self.unknown_symbol:
            text += ("\n  not one file of this request is in the archive: unknown symbol, or "
                     "not traded on that market in that period")
        return text + f"\n  cache: {self.cache_dir}"


class Progress:
    """What the fetcher reports while it works (this base reports nothing)."""

    def start(self, files: int, done: int, total_bytes: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def finished(self, r: Result) -> None: ...
    def close(self) -> None: ...


class LogProgress(Progress):
    """Log lines: the plan, each file as it completes, and totals every `every` seconds."""

    def __init__(self, every: float = 10.0):
        self.every = every
        self._lock = threading.Lock()
        self.files = self.done = self.total = self.got = 0
        self._t0 = self._last = time.monotonic()

    def start(self, files, done, total_bytes):
        self.files, self.done, self.total = files, done, total_bytes
        self._t0 = self._last = time.monotonic()
        log.info("fetch plan", files=files, cached=done, to_download_bytes=total_bytes)

    def advance(self, nbytes):
        with self._lock:
            self.got += nbytes
            now = time.monotonic()
            if now - self._last < self.every:
                return
            self._last = now
            rate = self.got / max(now - self._t0, 1e-6)
        eta = (self.total - self.got) / rate if rate and self.total > self.got else 0
        log.info("fetch progress", files_done=self.done, files=self.files, bytes=self.got,
                 total_bytes=self.total, mb_per_s=round(rate / 1e6, 1), eta_s=round(eta))

    def finished(self, r):
        with self._lock:
            self.done += 1
        level = log.info if r.ok else log.warning
        extra = {k: v for k, v in (("resumed_from", r.resumed_from), ("reason", r.reason)) if v}
        level("fetch " + r.status, file=r.file.path, bytes=r.size, seconds=round(r.seconds, 2),
              files_done=self.done, files=self.files, **extra)


class BarProgress(Progress):
    """A rich progress bar (files, bytes, rate, ETA) for a terminal."""

    def __init__(self):
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as Bar

        self.bar = Bar(TextColumn("[bold]fetch[/] {task.fields[files]}"), BarColumn(),
                       DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                       transient=False)
        self.task = None
        self.files = self.done = 0

    def start(self, files, done, total_bytes):
        self.files, self.done = files, done
        if files == done:
            return  # all cached: nothing to show
        self.bar.start()
        self.task = self.bar.add_task("fetch", total=total_bytes or None,
                                      files=f"{done}/{files} files")

    def advance(self, nbytes):
        if self.task is not None:
            self.bar.advance(self.task, nbytes)

    def finished(self, r):
        self.done += 1
        if self.task is not None:
            self.bar.update(self.task, files=f"{self.done}/{self.files} files")
            if not r.ok:
                self.bar.console.print(f"[yellow]{r.line()}[/]", highlight=False)

    def close(self):
        if self.task is not None:
            self.bar.stop()


def progress_for(stream=None) -> Progress:
    """A progress bar on a terminal, log lines otherwise."""
    stream = stream or sys.stderr
    return BarProgress() if stream.isatty() else LogProgress()


class Fetcher:
    """Downloads archive files into the cache. Use as a context manager; `fetch` yields each
    file's result as soon as it is known, while the other downloads go on (so a caller can load
    a verified file while the rest download)."""

    def __init__(self, cfg: ArchiveConfig, progress: Progress | None = None,
                 verify_cached: bool = False):
        self.cfg = cfg
        self.progress = progress or Progress()
        self.verify_cached = verify_cached
        self.client = httpx.Client(
            timeout=httpx.Timeout(connect=cfg.connect_timeout, read=cfg.read_timeout,
                                  write=cfg.read_timeout, pool=None),
            limits=httpx.Limits(max_connections=cfg.parallel,
                                max_keepalive_connections=cfg.parallel),
            # Bytes as stored: Range offsets and the checksum are about the file, not an encoding.
            headers={"Accept-Encoding": "identity", "User-Agent": "tickstack-fetch"},
            follow_redirects=True)
        self.pool = ThreadPoolExecutor(cfg.parallel, thread_name_prefix="fetch")
        self.stop = threading.Event()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop: queued files are dropped, running downloads end at their next chunk and keep
        their .part for the next run to resume."""
        self.stop.set()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()
        self.progress.close()

    # --- the cache ---------------------------------------------------------------------------
    def dest(self, f: ArchiveFile) -> Path:
        return self.cfg.cache_dir / f.path

    def cached(self, f: ArchiveFile) -> bool:
        """Verified earlier: only a verified zip is ever renamed to its final name."""
        d = self.dest(f)
        return d.is_file() and _checksum_path(d).is_file()

    def plan(self, req: Request) -> list[ArchiveFile]:
        return resolve(req, self.cached)

    def url(self, f: ArchiveFile, suffix: str = "") -> str:
        return f"{self.cfg.base_url.rstrip('/')}/{f.path}{suffix}"

    # --- the run -----------------------------------------------------------------------------
    def survey(self, files: Iterable[ArchiveFile]) -> Iterator[Planned | Result]:
        """What each file needs, without downloading it: a Result for the cached, missing and
        failed ones, a Planned (checksum, size, partial bytes) for those to download. A monthly
        file the archive does not have (yet) is replaced by its days."""
        probing: dict[Future, ArchiveFile] = {}

        def consider(f: ArchiveFile) -> Result | None:
            if self.cached(f) and self._still_verified(f):
                return Result(f, "cached", self.dest(f), size=self.dest(f).stat().st_size)
            probing[self.pool.submit(self._guard, f, self._probe, f)] = f
            return None

        for f in files:
            if (r := consider(f)) is not None:
                yield r
        while probing:
            ready, _ = wait(probing, return_when=FIRST_COMPLETED)
            for fut in ready:
                f = probing.pop(fut)
                out = fut.result()
                if isinstance(out, Result) and out.status == "missing" and f.period == "monthly":
                    log.info("monthly file not in the archive (yet): fetching its days",
                             file=f.path)
                    for d in f.days():
                        if (r := consider(d)) is not None:
                            yield r
                else:
                    yield out

    def fetch(self, files: Iterable[ArchiveFile]) -> Iterator[Result]:
        """Cached, missing and failed files first, then each download as soon as it is verified
        (or has failed), while the others go on."""
        planned: list[Planned] = []
        known = 0
        for out in self.survey(files):
            if isinstance(out, Planned):
                planned.append(out)
            else:
                known += 1
                yield out
        planned.sort(key=lambda p: p.file.sort_key())
        self.progress.start(known + len(planned), known,
                            sum((p.size or 0) - p.partial for p in planned))
        downloads = [self.pool.submit(self._guard, p.file, self._download, p) for p in planned]
        for fut in as_completed(downloads):
            r = fut.result()
            self.progress.finished(r)
            yield r

    def run(self, files: Iterable[ArchiveFile]) -> Report:
        """Fetch everything (no handoff) and return the report."""
        t0 = time.monotonic()
        results = list(self.fetch(files))
        return Report("", self.cfg.cache_dir, results, time.monotonic() - t0)

    def _guard(self, f: ArchiveFile, fn, *args):
        """A file's failure is its result, never an exception that ends the whole run."""
        t0 = time.monotonic()
        try:
            return fn(*args)
        except ArchiveError as e:
            return Result(f, "failed", reason=str(e), seconds=time.monotonic() - t0)
        except OSError as e:  # the cache's disk: full, read-only, permissions
            return Result(f, "failed", reason=f"cache: {e}", seconds=time.monotonic() - t0)

    def _still_verified(self, f: ArchiveFile) -> bool:
        """With verify_cached: re-hash a cached file; one that no longer matches is removed (and
        fetched again)."""
        if not self.verify_cached:
            return True
        d = self.dest(f)
        try:
            want = _parse_checksum(f, _checksum_path(d).read_text(errors="replace"))
        except ArchiveError:
            want = None  # a damaged CHECKSUM: fetch both again
        if want is not None and sha256_file(d) == want:
            return True
        log.warning("cached file no longer matches its CHECKSUM: fetching it again", file=f.path)
        d.unlink()
        return False

    def _probe(self, f: ArchiveFile) -> Planned | Result:
        """The file's CHECKSUM and size, before any download: a missing file is known early and
        the progress bar has a total."""
        text = self._retrying(f.name + ".CHECKSUM", lambda: self._small(f, ".CHECKSUM"))
        size = self._retrying(f.name, lambda: self._head(f))
        if text is None:
            if size is None:
                return Result(f, "missing", reason="not in the archive (404)")
            raise ArchiveError(f"{f.name}: the archive has the zip but no .CHECKSUM: it cannot be "
                               "verified, so it is not fetched")
        if size is None:
            return Result(f, "missing", reason="its .CHECKSUM is published but the zip is not "
                                               "(404)")
        part = _part_path(self.dest(f))
        partial = part.stat().st_size if part.exists() else 0
        return Planned(f, _parse_checksum(f, text), text, size or None,
                       partial if size and partial <= size else 0)

    def _small(self, f: ArchiveFile, suffix: str) -> str | None:
        with _net_errors(self.cfg), self.client.stream("GET", self.url(f, suffix)) as r:
            if r.status_code == 404:
                return None
            self._check(r, f.name + suffix)
            body = b""
            for chunk in r.iter_raw():
                body += chunk
                if len(body) > 4096:
                    raise ArchiveError(f"{f.name}{suffix}: not a checksum file (over 4 KiB)")
            return body.decode("utf-8", "replace")

    def _head(self, f: ArchiveFile) -> int | None:
        """Size of the zip; None: not there (404); 0: the server does not say."""
        with _net_errors(self.cfg):
            r = self.client.head(self.url(f))
        if r.status_code == 404:
            return None
        if r.status_code == 405:  # a mirror without HEAD: the size comes with the download
            return 0
        self._check(r, f.name)
        return int(r.headers.get("Content-Length") or 0)

    def _download(self, p: Planned) -> Result:
        f, dest = p.file, self.dest(p.file)
        part = _part_path(dest)
        t0 = time.monotonic()
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self._lock(f):
            if self.cached(f):  # another process finished it while we waited for the lock
                return Result(f, "cached", dest, size=dest.stat().st_size)
            if dest.exists():  # a zip without its CHECKSUM: kept only if it verifies
                if sha256_file(dest) == p.sha256:
                    _write_atomic(_checksum_path(dest), p.checksum_text.encode())
                    return Result(f, "cached", dest, size=dest.stat().st_size)
                dest.unlink()
            got = [0]
            resumed_from = part.stat().st_size if part.exists() else 0
            for round_ in (1, 2):
                self._retrying(f.name, lambda: self._get_into(f, part, p.size, got),
                               progressed=lambda: got[0])
                digest = sha256_file(part)
                if digest == p.sha256:
                    break
                part.unlink()
                if round_ == 2:
                    raise ArchiveError(
                        f"{f.name}: checksum mismatch: its .CHECKSUM says {p.sha256}, the "
                        f"downloaded file is {digest} (downloaded twice; nothing kept)")
                log.warning("checksum mismatch: downloading the file again from the start",
                            file=f.path, resumed_from=resumed_from)
            with open(part, "rb+") as fh:
                os.fsync(fh.fileno())
            # CHECKSUM first: a zip at its final name always has one beside it.
            _write_atomic(_checksum_path(dest), p.checksum_text.encode())
            os.replace(part, dest)
            _fsync_dir(dest.parent)
        return Result(f, "downloaded", dest, downloaded=got[0], size=dest.stat().st_size,
                      seconds=time.monotonic() - t0, resumed_from=resumed_from)

    def _get_into(self, f: ArchiveFile, part: Path, size: int | None, got: list[int]) -> None:
        """One GET of the rest of the file, appended to its .part."""
        if self.stop.is_set():
            raise ArchiveError(f"{f.name}: stopped (the partial download is kept)")
        offset = part.stat().st_size if part.exists() else 0
        if size and offset > size:  # not a prefix of this file
            part.unlink()
            offset = 0
        if size and offset == size:
            return  # complete: the checksum decides
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            self._stream_into(f, part, offset, headers, got)
        except Retryable as e:
            if e.reason.startswith("connection cut"):  # say where: the rerun resumes there
                have = part.stat().st_size if part.exists() else 0
                raise Retryable(f"connection cut at byte {have:,} of "
                                f"{f'{size:,}' if size else '?'}") from None
            raise

    def _stream_into(self, f: ArchiveFile, part: Path, offset: int, headers: dict,
                     got: list[int]) -> None:
        with _net_errors(self.cfg), self.client.stream("GET", self.url(f),
                                                        headers=headers) as r:
            if r.status_code == 404:
                raise ArchiveError(f"{f.name}: removed from the archive during the fetch (404)")
            if r.status_code == 416:  # the .part is not a prefix of the file on the server
                part.unlink()
                raise Retryable("range not satisfiable: restarting the file")
            self._check(r, f.name)
            mode = "wb"
            if r.status_code == 206:
                start = _range_start(r.headers.get("Content-Range", ""))
                if start != offset:
                    raise Retryable(f"server answered a Range for {offset} with {start}")
                mode = "ab"
            with open(part, mode) as out:
                # Unchunked: every byte received is on disk before a cut connection raises
                # (a chunk size would hold back a partial chunk and lose it).
                for chunk in r.iter_raw():
                    if self.stop.is_set():
                        raise ArchiveError(f"{f.name}: stopped (the partial download is kept)")
                    out.write(chunk)
                    got[0] += len(chunk)
                    self.progress.advance(len(chunk))

    def _check(self, r: httpx.Response, what: str) -> None:
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
        raise ArchiveError(f"{what}: HTTP {code} {r.reason_phrase} from {r.url}")

    def _retrying(self, what: str, fn: Callable, progressed: Callable[[], int] = lambda: 0):
        """fn until it succeeds or fails for good. Attempts that received bytes do not count
        against the limit (a flaky link still finishes a big file); 10x the limit in all."""
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
    def _lock(self, f: ArchiveFile):
        d = self.cfg.cache_dir / ".locks"
        d.mkdir(parents=True, exist_ok=True)
        # Lock files stay: removing one would let two processes lock different inodes.
        with open(d / (hashlib.sha1(f.path.encode()).hexdigest()[:20] + ".lock"), "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _net_errors(cfg: ArchiveConfig):
    """httpx's transport errors as Retryable, with what they mean here."""
    try:
        yield
    except httpx.ReadTimeout:
        raise Retryable(f"stalled: no data for {cfg.read_timeout:g} s "
                        "(TICKSTACK_ARCHIVE_READ_TIMEOUT_SECONDS)") from None
    except httpx.ConnectTimeout:
        raise Retryable(f"no connection within {cfg.connect_timeout:g} s") from None
    except httpx.ConnectError as e:
        raise Retryable(f"cannot connect to {cfg.base_url}: {e}") from None
    except httpx.RemoteProtocolError as e:  # e.g. the body ended before its Content-Length
        raise Retryable(f"connection cut: {e}") from None
    except httpx.TransportError as e:
        raise Retryable(f"{type(e).__name__}: {e}") from None


# --- helpers ---------------------------------------------------------------------------------

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


def _parse_checksum(f: ArchiveFile, text: str) -> str:
    """`<sha256>  <zip name>` (Binance's format) -> the sha256."""
    try:
        return parse_checksum(text, f.name)
    except ValueError as e:
        raise ArchiveError(str(e)) from None


def _range_start(content_range: str) -> int | None:
    m = re.match(r"bytes (\d+)-\d+/(?:\d+|\*)", content_range.strip())
    return int(m.group(1)) if m else None


def _checksum_path(zip_path: Path) -> Path:
    return zip_path.with_name(zip_path.name + ".CHECKSUM")


def _part_path(zip_path: Path) -> Path:
    return zip_path.with_name(zip_path.name + ".part")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mb(n: int | None) -> str:
    return "? MB" if n is None else human_size(n)


def human_size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} B"
