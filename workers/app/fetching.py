"""`workers fetch` and the main job's fetch stage over the archive client
(workers/sources/binance_archive.py): the same Context, the same ingest pipeline as
`workers ingest` for `--ingest`, typed results with summary()."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from workers.app.context import Context
from workers.app.results import Shown
from workers.core import logs


@contextlib.contextmanager
def archive_loader(ctx: Context, on_file: Callable | None = None) -> Iterator[Callable]:
    """A loader that runs each verified file through the pipeline `workers ingest` uses
    (landing first, then the primary, replica dual-write), on one connection in this thread
    while the downloads go on in theirs."""
    from workers.core.memory import limit_allocator_retention
    from workers.db import ingest as pipeline
    from workers.sources.binance_files import Limits

    limit_allocator_retention()
    s = ctx.settings.ingest
    log = logs.get("fetch")
    writer = ctx.replica_writer()
    try:
        with ctx.connect("ingest") as conn:
            def load(path) -> None:
                log.info("ingesting", file=str(path))
                r = pipeline.ingest_file(
                    conn, ctx.landing, str(path), block_bytes=s.block_bytes,
                    flush_rows=s.flush_rows, replica=writer, max_bucket_rows=s.max_bucket_rows,
                    limits=Limits.of(s))
                log.info("ingested", file=str(path), rows=r.rows_read, inserted=r.inserted)
                if on_file:
                    on_file(r)
            yield load
    finally:
        if writer is not None:
            writer.close()


def fetch(ctx: Context, req, *, ingest: bool = False, verify: bool = False,
          progress=None, on_file: Callable | None = None, redirect_hosts: tuple[str, ...] = ()):
    """Fetch the request's files into the cache (and ingest each as soon as it is verified);
    the archive client's Report. `redirect_hosts`: hosts the archive may redirect to, besides
    TICKSTACK_ARCHIVE_REDIRECT_HOSTS."""
    from workers.sources import binance_archive as archive

    cfg = archive.ArchiveConfig.of(ctx.settings.archive, redirect_hosts)
    t0 = time.monotonic()
    results: list = []
    with archive.Fetcher(cfg, progress, verify_cached=verify) as fetcher:
        files = fetcher.plan(req)
        loader = archive_loader(ctx, on_file) if ingest else contextlib.nullcontext()
        with loader as load:
            for r in fetcher.fetch(files):
                if load is not None and r.ok:
                    r = _loaded(load, r)
                results.append(r)
    return archive.Report(req.describe(), cfg.cache_dir, results, time.monotonic() - t0)


def _loaded(load: Callable, r):
    """`r` once its file is ingested; a file the pipeline refuses (bad input: not a trades file,
    an aggTrades one, a layout of another market) is that file's failure — verified and kept in
    the cache, named, the run going on with the others — never the end of the run. A failure
    of the servers (Failed, a database error) still ends it: every other file would fail too."""
    from workers.core.errors import BadInput

    try:
        load(r.path)
    except BadInput as e:
        logs.get("fetch").warning("not ingested", file=str(r.path), reason=str(e))
        return dataclasses.replace(r, status="failed", reason=(
            f"{r.file.name}: verified (kept in the cache) but not ingested: {e}"))
    return r


def dry_run(ctx: Context, req, redirect_hosts: tuple[str, ...] = ()) -> list[dict]:
    """What a fetch would do, file by file, downloading nothing."""
    from workers.sources import binance_archive as archive

    rows = []
    cfg = archive.ArchiveConfig.of(ctx.settings.archive, redirect_hosts)
    with archive.Fetcher(cfg) as fetcher:
        for out in fetcher.survey(fetcher.plan(req)):
            if isinstance(out, archive.Planned):
                rows.append({"path": out.file.path, "status": "to fetch", "size": out.size,
                             "partial": out.partial, "key": out.file.sort_key()})
            else:
                rows.append({"path": out.file.path, "status": out.status, "size": out.size,
                             "reason": out.reason, "key": out.file.sort_key()})
    rows.sort(key=lambda r: r.pop("key"))
    return rows


def command(ctx: Context, req, *, ingest: bool = False, dry_run_only: bool = False,
            verify: bool = False, allow_missing: bool = False,
            redirect_hosts: tuple[str, ...] = (), json_out: bool = False,
            on_file: Callable | None = None) -> Shown:
    """`workers fetch`: the request checked (bad redirect hosts; with `ingest`, what ingest
    would refuse: aggTrades, an unknown COIN-M contract size) before anything is downloaded,
    then the dry run or the fetch, as the result the CLI prints."""
    from workers.core.markets import instrument
    from workers.sources import binance_archive as archive
    from workers.sources.binance_files import check_ingestible

    archive.ArchiveConfig.of(ctx.settings.archive, redirect_hosts)  # bad hosts: exit 2 first
    if ingest:
        check_ingestible(req.kind)
        instrument(req.market, req.symbol)
    if dry_run_only:
        rows = dry_run(ctx, req, redirect_hosts)
        return Shown(rows, text=lambda rows: dry_run_lines(req, rows),
                     json=lambda rows: {"request": req.describe(), "files": rows})
    report = fetch(ctx, req, ingest=ingest, verify=verify, redirect_hosts=redirect_hosts,
                   progress=None if json_out else archive.progress_for(),
                   on_file=None if json_out else on_file)
    code = report.exit_code(allow_missing)
    return Fetched(report, code)


@dataclass
class Fetched:
    """The fetch command's result: the archive client's Report and the exit code it gives
    (missing files allowed or not); the files that failed are named on stderr."""

    report: object  # workers.sources.archive_report.Report
    exit_code: int

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def summary(self) -> str:
        return self.report.summary()

    def lines(self) -> list[str]:
        return [self.summary()]

    def warnings(self) -> list[str]:
        return [f"fetch: {r.line()}" for r in sorted(self.report.results,
                                                      key=lambda r: r.file.sort_key())
                if not r.ok]

    def as_dict(self) -> dict:
        return {**self.report.as_dict(), "exit": self.exit_code}

    to_json = as_dict


def dry_run_lines(req, rows: list[dict]) -> list[str]:
    from workers.sources.binance_archive import human_size

    out = []
    for r in rows:
        size = f"{human_size(r['size']):>10}" if r.get("size") else " " * 10
        extra = (f"  ({r['partial']:,} bytes already here)" if r.get("partial")
                 else f"  ({r['reason']})" if r.get("reason") else "")
        out.append(f"{r['status']:>9} {size}  {r['path']}{extra}")
    todo = [r for r in rows if r["status"] == "to fetch"]
    out.append(f"{req.describe()}: {len(rows)} file(s), {len(todo)} to fetch "
               f"({human_size(sum(r['size'] or 0 for r in todo))}), "
               f"{sum(r['status'] == 'cached' for r in rows)} cached, "
               f"{sum(r['status'] == 'missing' for r in rows)} missing")
    return out


@dataclass
class FetchedDay:
    """The main job's fetch stage: one day, from the archive or already in the cache."""

    name: str
    path: str
    downloaded: bool
    size: int
    base_url: str

    @property
    def changed(self) -> bool:
        return self.downloaded

    def summary(self) -> str:
        from workers.sources.binance_archive import human_size

        how = (f"downloaded {human_size(self.size)}, verified against its CHECKSUM"
               if self.downloaded else "already in the cache, verified")
        return f"{self.name} from the Binance archive: {how} ({self.path})"

    def as_dict(self) -> dict:
        return dict(vars(self))


def fetch_day(ctx: Context, day: str, symbol: str = "BTCUSDT") -> FetchedDay:
    """One spot trades day into the cache (make up without ../shared/data)."""
    from workers.core.errors import Failed
    from workers.sources import binance_archive as archive

    s = ctx.settings
    [f] = archive.resolve(archive.Request.parse(symbol, "spot", "trades", day, day))
    with archive.Fetcher(archive.ArchiveConfig.of(s.archive)) as fetcher:
        r = fetcher.run([f]).results[0]
    if not r.ok:
        raise Failed(f"{f.name} from {s.archive.base_url}: {r.reason}")
    return FetchedDay(f.name, str(r.path), r.status == "downloaded", r.size or 0,
                      s.archive.base_url)
