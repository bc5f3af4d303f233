"""`workers fetch` of a month against a local server laid out like Binance's archive.

The month is April 2019 at the real day's rate: the real day (../shared/data, its real CHECKSUM)
and 29 more made from it (times shifted by whole days, trade ids by 200,000 a day), as 30 daily
zips and one monthly zip. Printed: the month's size (files, rows, bytes), then as ratios against
the raw transfer measured in the same run (one plain HTTP GET of the monthly zip to disk, no
checks): fetch of the monthly file, of the 30 daily files (TICKSTACK_ARCHIVE_PARALLEL at a time),
a rerun on the full cache, and `workers fetch --since 2019-04 --until 2019-04` as a user runs it.
With --ingest-days N (N > 0): `fetch --ingest` of N days into a throwaway environment against
`fetch` then `workers ingest` of the same files (the download/load overlap).

    .venv/bin/python bench/fetch.py [--ingest-days 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from tests.integration import archive_server as arc  # noqa: E402
from workers.sources import binance_archive as ar  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
DAY_MS = 86_400_000
COLUMNS = ["id", "price", "qty", "quote_qty", "time", "is_buyer_maker", "is_best_match"]


def real_day() -> pa.Table:
    return pacsv.read_csv(
        SHARED / f"{arc.REAL_NAME}.csv",
        read_options=pacsv.ReadOptions(column_names=COLUMNS),
        convert_options=pacsv.ConvertOptions(
            column_types={c: (pa.int64() if c in ("id", "time") else pa.string())
                          for c in COLUMNS}))


def shifted_csv(t: pa.Table, k: int) -> bytes:
    t = t.set_column(0, "id", pc.add(t["id"], k * 200_000))
    t = t.set_column(4, "time", pc.add(t["time"], k * DAY_MS))
    buf = pa.BufferOutputStream()
    pacsv.write_csv(t, buf, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    return buf.getvalue().to_pybytes()


def build(root: Path) -> tuple[int, int]:
    """The month's archive tree; returns (rows, bytes of the daily zips)."""
    t = real_day()
    arc.put_real_day(root, SHARED)
    month = []
    for k in range(30):
        d = date(2019, 4, 1) + timedelta(days=k)
        csv = shifted_csv(t, k)
        month.append(csv)
        if k:
            arc.put(root, arc.archive_path("daily", "BTCUSDT", d.isoformat()), csv)
    arc.put(root, arc.archive_path("monthly", "BTCUSDT", "2019-04"), b"".join(month))
    daily = sum(p.stat().st_size for p in root.rglob("BTCUSDT-trades-2019-04-??.zip"))
    return t.num_rows * 30, daily


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def fetcher(url: str, cache: Path) -> ar.Fetcher:
    from workers.core.settings import Settings

    s = Settings()
    cfg = ar.ArchiveConfig.of(s.archive)
    cfg = ar.ArchiveConfig(**{**cfg.__dict__, "base_url": url, "cache_dir": cache})
    return ar.Fetcher(cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ingest-days", type=int, default=0)
    args = ap.parse_args()
    from workers.core import logs

    logs.configure("console", "warning")
    work = Path(tempfile.mkdtemp(prefix="tickstack-bench-fetch-", dir="/tmp"))
    try:
        root = work / "archive"
        t0 = time.perf_counter()
        rows, daily_bytes = build(root)
        monthly = root / arc.archive_path("monthly", "BTCUSDT", "2019-04")
        print(f"month 2019-04 at the real day's rate: 30 daily files ({daily_bytes / 1e6:.1f} MB) "
              f"or 1 monthly file ({monthly.stat().st_size / 1e6:.1f} MB); {rows:,} trades "
              f"(built in {time.perf_counter() - t0:.0f} s)")
        with arc.ArchiveServer(root) as server:
            m_file = ar.ArchiveFile("spot", "monthly", "trades", "BTCUSDT", "2019-04")

            def raw() -> None:
                with httpx.stream("GET", f"{server.url}/{m_file.path}") as r, \
                        open(work / "raw.zip", "wb") as out:
                    for chunk in r.iter_raw():
                        out.write(chunk)

            base = min(timed(raw) for _ in range(2))
            print(f"baseline: one plain GET of the monthly zip to disk: {base:.2f} s "
                  f"({monthly.stat().st_size / base / 1e6:.0f} MB/s)")

            def run(files, cache) -> ar.Report:
                with fetcher(server.url, cache) as f:
                    rep = f.run(files)
                assert all(r.ok for r in rep.results), [r.line() for r in rep.results]
                return rep

            rows_out = []
            for label, files in (("monthly file", [m_file]), ("30 daily files", m_file.days())):
                cache = work / f"cache-{len(files)}"
                t = timed(lambda files=files, cache=cache: run(files, cache))
                again = timed(lambda files=files, cache=cache: run(files, cache))
                rows_out.append((f"fetch, {label}", t))
                rows_out.append((f"rerun on the full cache, {label}", again))
            env = {**os.environ, "TICKSTACK_ARCHIVE_BASE_URL": server.url,
                   "TICKSTACK_ARCHIVE_CACHE_DIR": str(work / "cache-cli"),
                   "TICKSTACK_LOG_FORMAT": "json", "TICKSTACK_LOG_LEVEL": "warning"}
            cmd = [sys.executable, "-m", "workers", "fetch", "--symbol", "BTCUSDT",
                   "--since", "2019-04", "--until", "2019-04"]
            t = timed(lambda: subprocess.run(cmd, cwd=REPO, env=env, check=True,
                                             capture_output=True))
            rows_out.append(("`workers fetch --since 2019-04 --until 2019-04` (process)", t))
            for label, t in rows_out:
                print(f"{label:<62} {t:6.2f} s  = {t / base:5.2f} x baseline")
            figures = {"trades": rows, "daily_bytes": daily_bytes, "baseline_get_s":
                       round(base, 3), "runs": {label: {"seconds": round(t, 3),
                                                       "ratio": round(t / base, 3)}
                                               for label, t in rows_out}}
            if args.ingest_days:
                figures["ingest_overlap"] = ingest_overlap(server.url, work, args.ingest_days)
            from common import save

            save("fetch", figures)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ingest_overlap(url: str, work: Path, n: int) -> dict:
    from common import fresh_db, landing_bucket, throwaway_env, worker_env, workers_cli

    until = (date(2019, 4, 1) + timedelta(days=n - 1)).isoformat()
    with throwaway_env() as env:
        out = {}
        for mode in ("fetch --ingest", "fetch, then ingest"):
            tag = "a" if mode.startswith("fetch --") else "b"
            db, bucket = fresh_db(env, f"bench_fetch_{tag}"), f"bench-fetch-{tag}"
            landing_bucket(env, bucket)
            e = {**worker_env(env, db, bucket), "TICKSTACK_ARCHIVE_BASE_URL": url,
                 "TICKSTACK_ARCHIVE_CACHE_DIR": str(work / f"cache-ingest-{tag}"),
                 "TICKSTACK_LOG_LEVEL": "warning"}
            args = ["fetch", "--symbol", "BTCUSDT", "--since", "2019-04-01", "--until", until]
            t0 = time.perf_counter()
            if tag == "a":
                workers_cli(e, *args, "--ingest")
            else:
                workers_cli(e, *args)
                files = sorted(str(p) for p in (work / "cache-ingest-b").rglob("*.zip"))
                workers_cli(e, "ingest", *files)
            out[mode] = time.perf_counter() - t0
        a, b = out["fetch --ingest"], out["fetch, then ingest"]
        print(f"{n} day(s), {n * 183_355:,} trades: fetch --ingest {a:.1f} s, fetch then "
              f"ingest {b:.1f} s: {a / b:.2f} x")
        return {"days": n, "fetch_ingest_s": round(a, 2), "fetch_then_ingest_s": round(b, 2),
                "ratio": round(a / b, 3)}


if __name__ == "__main__":
    main()
