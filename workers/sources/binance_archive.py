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

Here: planning (what to fetch) and the Fetcher's run. Its parts: archive_download (HTTP: bounded
answers, redirects, deadlines, retries), archive_cache (the verified cache), archive_report
(results, summary, progress); their public names are importable from here too.
"""

from __future__ import annotations

import calendar
import io
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from workers.core import logs
from workers.core.errors import BadInput
from workers.core.markets import ARCHIVE_MARKET_PATHS, choices
from workers.sources import archive_cache as cache
from workers.sources.archive_download import (  # noqa: F401 - re-exported
    ArchiveConfig,
    ArchiveError,
    Http,
    Retryable,
    Transfer,
    answer_bound,
    content_length,
    range_start,
    retry_after_seconds,
    short_answer,
)
from workers.sources.archive_report import (  # noqa: F401 - re-exported
    BarProgress,
    LogProgress,
    Progress,
    Report,
    Result,
    human_size,
    progress_for,
)
from workers.sources.binance_files import sha256_file

log = logs.get("fetch")

# --market option -> the archive's folder.
MARKETS = ARCHIVE_MARKET_PATHS
KINDS = ("trades", "aggTrades")
# Spot and USDⓈ-M pairs (BTCUSDT), COIN-M perpetuals (BTCUSD_PERP), delivery contracts (_240628).
_SYMBOL = re.compile(r"^[A-Z0-9]{2,20}(?:_PERP|_\d{6})?$")
_PATH = re.compile(r"(?:^|/)data/(" + "|".join(map(re.escape, MARKETS.values())) + r")/"
                   r"(daily|monthly)/(trades|aggTrades)/"
                   r"([A-Z0-9_]+)/\4-\3-(\d{4}-\d{2}(?:-\d{2})?)\.zip$")


class BadRequest(BadInput):
    """Bad symbol, market, kind or dates; or a symbol the archive has no file of (exit 2)."""


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
            raise BadRequest(f"--market must be one of {choices()}, not {market!r}")
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

@dataclass
class Planned:
    file: ArchiveFile
    sha256: str
    checksum_text: str
    size: int | None
    partial: int  # bytes of a .part file from an earlier run


class Fetcher:
    """Downloads archive files into the cache. Use as a context manager; `fetch` yields each
    file's result as soon as it is known, while the other downloads go on (so a caller can load
    a verified file while the rest download). A file's failure, whatever it is, is that file's
    result (named, with its URL): the others go on."""

    def __init__(self, cfg: ArchiveConfig, progress: Progress | None = None,
                 verify_cached: bool = False):
        self.cfg = cfg
        self.progress = progress or Progress()
        self.verify_cached = verify_cached
        self.stop = threading.Event()
        self.http = Http(cfg, self.stop)
        self.pool = ThreadPoolExecutor(cfg.parallel, thread_name_prefix="fetch")

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop: queued files are dropped, running downloads end at their next chunk and keep
        their .part for the next run to resume."""
        self.stop.set()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.http.close()
        self.progress.close()

    # --- the cache ---------------------------------------------------------------------------
    def dest(self, f: ArchiveFile) -> Path:
        return self.cfg.cache_dir / f.path

    def cached(self, f: ArchiveFile) -> bool:
        return cache.is_cached(self.dest(f))

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
            if self.cached(f) and (not self.verify_cached
                                   or cache.still_verified(self.dest(f), f.path)):
                return Result(f, "cached", self.dest(f), size=self.dest(f).stat().st_size)
            t = Transfer(f.name, self.cfg, None)
            t.seconds = self.cfg.deadline_floor  # a CHECKSUM and a HEAD
            probing[self.pool.submit(self._guard, f, t, self._probe, f, t)] = f
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
        downloads = []
        for p in planned:
            t = Transfer(p.file.name, self.cfg, p.size)
            downloads.append(self.pool.submit(self._guard, p.file, t, self._download, p, t))
        for fut in as_completed(downloads):
            r = fut.result()
            self.progress.finished(r)
            yield r

    def run(self, files: Iterable[ArchiveFile]) -> Report:
        """Fetch everything (no handoff) and return the report."""
        t0 = time.monotonic()
        results = list(self.fetch(files))
        return Report("", self.cfg.cache_dir, results, time.monotonic() - t0)

    def _guard(self, f: ArchiveFile, t: Transfer, fn, *args) -> Planned | Result:
        """A file's failure is its result (naming it, with its URL and the bytes received),
        never an exception that ends the whole run."""
        t0 = time.monotonic()
        try:
            return fn(*args)
        except ArchiveError as e:
            reason = str(e)
        except OSError as e:  # the cache's disk: full, read-only, permissions
            reason = f"cache: {e}"
        except Exception as e:  # anything else is this file's failure too, with its traceback
            log.exception("fetch: unexpected failure", file=f.path)
            reason = f"{type(e).__name__}: {e}"
        return Result(f, "failed", reason=reason, seconds=time.monotonic() - t0,
                      received=t.received, url=self.url(f))

    def _probe(self, f: ArchiveFile, t: Transfer) -> Planned | Result:
        """The file's CHECKSUM and size, before any download: a missing file is known early and
        the progress bar has a total."""
        t.start()  # from when it runs, not from when it was queued
        text = self.http.retrying(t, lambda: self._small(f, ".CHECKSUM", t), f.name + ".CHECKSUM")
        size = self.http.retrying(t, lambda: self._head(f, t))
        if text is None:
            if size is None:
                return Result(f, "missing", reason="not in the archive (404)")
            raise ArchiveError(f"{f.name}: the archive has the zip but no .CHECKSUM: it cannot be "
                               "verified, so it is not fetched")
        if size is None:
            return Result(f, "missing", reason="its .CHECKSUM is published but the zip is not "
                                               "(404)")
        if size > self.cfg.max_file_bytes:
            raise ArchiveError(f"{f.name}: the server announces {size:,} bytes, more than "
                               f"TICKSTACK_ARCHIVE_MAX_FILE_BYTES ({self.cfg.max_file_bytes:,})")
        part = cache.part_path(self.dest(f))
        partial = part.stat().st_size if part.exists() else 0
        return Planned(f, cache.checksum_of(f.name, text), text, size or None,
                       partial if size and partial <= size else 0)

    def _small(self, f: ArchiveFile, suffix: str, t: Transfer) -> str | None:
        what = f.name + suffix
        with self.http.open("GET", self.url(f, suffix), t) as r:
            if r.status_code == 404:
                return None
            self.http.check(r, what)
            body, before = io.BytesIO(), t.received
            self.http.read_into(r, body, 4096, "4 KiB (not a checksum file)", t, lambda n: None)
            t.received = before  # counted: the zip's bytes (a CHECKSUM too big stays counted)
            return body.getvalue().decode("utf-8", "replace")

    def _head(self, f: ArchiveFile, t: Transfer) -> int | None:
        """Size of the zip; None: not there (404); 0: the server does not say."""
        with self.http.open("HEAD", self.url(f), t) as r:
            if r.status_code == 404:
                return None
            if r.status_code == 405:  # a mirror without HEAD: the size comes with the download
                return 0
            self.http.check(r, f.name)
            return content_length(r) or 0

    def _download(self, p: Planned, t: Transfer) -> Result:
        f, dest = p.file, self.dest(p.file)
        part = cache.part_path(dest)
        t0 = time.monotonic()
        dest.parent.mkdir(parents=True, exist_ok=True)
        with cache.file_lock(self.cfg.cache_dir, f.path):
            if self.cached(f):  # another process finished it while we waited for the lock
                return Result(f, "cached", dest, size=dest.stat().st_size)
            if cache.adopt(dest, p.sha256, p.checksum_text):
                return Result(f, "cached", dest, size=dest.stat().st_size)
            t.start()  # the deadline counts from here: not the queue, not the lock
            resumed_from = part.stat().st_size if part.exists() else 0
            for round_ in (1, 2):
                self.http.retrying(t, lambda: self._get_into(f, part, p.size, t),
                                   progressed=lambda: t.received)
                digest = sha256_file(part)
                if digest == p.sha256:
                    break
                part.unlink()
                if round_ == 2:
                    why = t.short_answer and f"; the mirror contradicts itself: {t.short_answer}"
                    raise ArchiveError(
                        f"{f.name}: checksum mismatch: its .CHECKSUM says {p.sha256}, the "
                        f"downloaded file is {digest} (downloaded twice; nothing kept){why}")
                log.warning("checksum mismatch: downloading the file again from the start",
                            file=f.path, resumed_from=resumed_from)
            cache.install(part, dest, p.checksum_text)
        return Result(f, "downloaded", dest, received=t.received, size=dest.stat().st_size,
                      seconds=time.monotonic() - t0,
                      resumed_from=0 if t.range_ignored else resumed_from)

    def _get_into(self, f: ArchiveFile, part: Path, size: int | None, t: Transfer) -> None:
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
            self._stream_into(f, part, offset, size, headers, t)
        except Retryable as e:
            if e.reason.startswith("connection cut"):  # say where: the rerun resumes there
                have = part.stat().st_size if part.exists() else 0
                raise Retryable(f"connection cut at byte {have:,} of "
                                f"{f'{size:,}' if size else '?'}") from None
            raise

    def _stream_into(self, f: ArchiveFile, part: Path, offset: int, size: int | None,
                     headers: dict, t: Transfer) -> None:
        with self.http.open("GET", self.url(f), t, headers=headers) as r:
            if r.status_code == 404:
                raise ArchiveError(f"{f.name}: removed from the archive during the fetch (404)")
            if r.status_code == 416:  # the .part is not a prefix of the file on the server
                part.unlink()
                raise Retryable("range not satisfiable: restarting the file")
            self.http.check(r, f.name)
            mode, have = "wb", 0
            if r.status_code == 206:
                start = range_start(r.headers.get("Content-Range", ""))
                if start is None or start > offset:  # a gap after the .part: nothing to append to
                    raise Retryable(f"server answered a Range for {offset} with {start}")
                mode, have = "ab", start  # from an earlier byte: the .part is cut back to it
            elif offset:  # the whole file again: start over rather than append it
                t.range_ignored += 1
                log.warning("the server ignored the Range request: restarting the file from its "
                            "start", file=f.path, offset=offset)
            limit, why = answer_bound(self.cfg, f.name, size, have, content_length(r))
            with open(part, mode) as out:
                out.truncate(have)
                n = self.http.read_into(r, out, limit, why, t, self.progress.advance)
            t.short_answer = short_answer(f.name, size, have + n, r) or t.short_answer
