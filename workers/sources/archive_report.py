"""What a fetch reports (for workers.sources.binance_archive): each file's `Result`, the run's
`Report` (its summary, exit code, JSON), and the progress shown while it works."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from workers.core import logs

if TYPE_CHECKING:
    from workers.sources.binance_archive import ArchiveFile

log = logs.get("fetch")


@dataclass
class Result:
    file: ArchiveFile
    status: str  # cached | downloaded | missing | failed
    path: Path | None = None  # the verified zip (cached, downloaded)
    received: int = 0  # bytes received for it in this run, discarded ones included
    size: int | None = None
    seconds: float = 0.0
    resumed_from: int = 0  # bytes a partial download already had (0: started from the start)
    reason: str = ""
    url: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("cached", "downloaded")

    def as_dict(self) -> dict:
        return {"path": self.file.path, "status": self.status, "size": self.size,
                "received": self.received, "resumed_from": self.resumed_from,
                "seconds": round(self.seconds, 3), "reason": self.reason,
                "url": self.url or None, "local": str(self.path) if self.path else None}

    def line(self) -> str:
        f = self.file
        if self.status == "downloaded":
            rate = self.received / max(self.seconds, 1e-6) / 1e6
            resumed = f", resumed at {self.resumed_from:,} bytes" if self.resumed_from else ""
            return (f"downloaded {f.name} ({_mb(self.size)}, {self.seconds:.1f} s, "
                    f"{rate:.1f} MB/s{resumed}), verified")
        if self.status == "cached":
            return f"cached {f.name} (verified earlier)"
        if self.status == "missing":
            return f"missing {f.path}: {self.reason}"
        reason = self.reason.removeprefix(f"{f.name}: ")
        return f"failed {f.name}: {reason}" + (f" — {self.url}" if self.url else "")


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

    @property
    def received(self) -> int:
        """Bytes received from the archive in this run (failed and discarded ones included)."""
        return sum(r.received for r in self.results)

    @property
    def kept(self) -> int:
        """Bytes of the files this run added to the cache, verified (a failed result with a path
        is such a file that ingest refused: kept all the same)."""
        return sum(r.size or 0 for r in self.results if r.status == "downloaded"
                   or (r.status == "failed" and r.path is not None and r.received))

    def as_dict(self) -> dict:
        return {"request": self.request, "cache": str(self.cache_dir),
                "seconds": round(self.seconds, 3), "unknown_symbol": self.unknown_symbol,
                "received_bytes": self.received, "kept_bytes": self.kept,
                "counts": {s: self.count(s) for s in ("downloaded", "cached", "missing",
                                                      "failed")},
                "files": [r.as_dict() for r in self.results]}

    def summary(self) -> str:
        rows = [f"{self.count('downloaded')} downloaded ({_mb(self.kept)} kept)",
                f"{self.count('cached')} already cached"]
        rows += [f"{self.count(s)} {s}" for s in ("missing", "failed") if self.count(s)]
        text = (f"fetch {self.request}: {len(self.results)} file(s): " + ", ".join(rows)
                + f"; received {_mb(self.received)} in {self.seconds:.1f} s")
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


def _mb(n: int | None) -> str:
    return "? MB" if n is None else human_size(n)


def human_size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} B"
