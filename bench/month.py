"""A month of ticks (issue 19): how every cost grows with the data, as ratios in one run.

    .venv/bin/python bench/month.py [--days 30] [--trades-per-day 1050000] [--copy-days 6]

On a throwaway local environment (own clusters, S3 and pgBackRest under /tmp), with a generated
month of Binance spot daily files (bench/monthgen.py: 2024 rates, cached between runs):

 1. ingest: one `workers ingest` of every day but one, with the replica dual-write on — rows/s
    of each day against the first (goal: >= 0.85x), the process's RSS throughout (<= 300 MB);
 2. baseline: `psql \\copy` of --copy-days of those days (the same rows) into an identical empty
    hypertable, one day at a time — ingest / \\copy over the same days (goal: <= 1.0x);
 3. rerun: the same command again (goal: <= 2% of the first), then with one file changed
    (its one file through the full path, exact: nothing new, nothing lost);
 4. replicate: the catch-up (digests of the month computed once), `replicate --check` of the
    equal month (goal: <= 10 s), then one bucket the replica missed: found by --check
    (per-day digests, then that day's buckets) and rebuilt by `replicate`;
 5. restore: a full backup, the held-back day ingested after it, then `workers restore` to the
    time between: PITR plus the landing replay that brings that day back;
 6. retention: a job that drops every chunk of the month but the newest (~4 of 5 chunks).

Every figure goes to <out>/month.json, the curves to <out>/month.png (bench/common.py: out_dir).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import month_report  # noqa: E402
import monthgen  # noqa: E402
from common import (  # noqa: E402
    REPO,
    CpuKinds,
    Watch,
    children_cpu,
    cpu_by_part,
    cpu_delta,
    fresh_db,
    landing_bucket,
    out_dir,
    replica_db,
    save,
    settle,
    throwaway_env,
)
from month_report import MB  # noqa: E402


def per_million(seconds: float, rows: int) -> float:
    return round(seconds / max(rows, 1) * 1e6, 3)


def workers_env(env, db: str, bucket: str) -> dict[str, str]:
    return {**os.environ, **env.env(database=db, landing_bucket=bucket, replica=True),
            "TICKSTACK_LOG_FORMAT": "json", "TICKSTACK_LOG_LEVEL": "warning"}


def cli(e: dict[str, str], *args: str, ok=(0,), timeout: float = 3600) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "workers", *args], cwd=REPO, env=e,
                       capture_output=True, text=True, timeout=timeout)
    secs = time.perf_counter() - t0
    if r.returncode not in ok:
        raise SystemExit(f"workers {' '.join(args)} failed ({r.returncode}):\n"
                         f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return secs, r.stdout


def ingest(e: dict[str, str], files: list[Path], log: Path) -> dict:
    """One `workers ingest --json` of the files: wall time, each file's summary as it finished
    (seconds since start), the process's RSS samples and peak."""
    t0 = time.perf_counter()
    with log.open("w") as err:
        p = subprocess.Popen([sys.executable, "-m", "workers", "ingest", "--json",
                              *map(str, files)], cwd=REPO, env=e, stdout=subprocess.PIPE,
                             stderr=err, text=True)
        watch = Watch(p.pid)
        done = []
        for line in p.stdout:
            if line.startswith("{"):
                d = json.loads(line)
                d["done_at"] = time.perf_counter() - t0
                done.append(d)
        p.wait()
        watch.stop()
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"ingest failed ({p.returncode}): see {log}\n"
                         f"{log.read_text()[-3000:]}")
    return {"wall": wall, "files": done, "rss": watch.samples, "peak_rss": watch.peak}


def copy_day(env, db: str, zip_path: Path, tmp: Path) -> tuple[float, int, dict]:
    csv = tmp / (zip_path.stem + ".copy.csv")
    rows = monthgen.copy_csv(zip_path, csv)  # untimed
    cpu0, kids0 = cpu_by_part(env), children_cpu()
    t0 = time.perf_counter()
    r = subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", env.primary.dsn(db), "-c",
         "SET TimeZone = 'UTC'", "-c",
         f"\\copy market_data.btc_ticks ({monthgen.COPY_COLUMNS}) FROM '{csv}' WITH (FORMAT csv)"],
        env={**os.environ, "PGPASSWORD": env.secrets["postgres_password"]},
        capture_output=True, text=True)
    secs = time.perf_counter() - t0
    cpu = cpu_delta(cpu0, cpu_by_part(env))
    cpu["psql"] = round(children_cpu() - kids0, 2)
    csv.unlink()
    if r.returncode != 0:
        raise SystemExit(f"psql \\copy failed: {r.stderr}")
    return secs, rows, cpu


def scalar(env, db: str, sql: str, cluster: str = "primary") -> str:
    return (env.primary if cluster == "primary" else env.replica).psql(sql, db=db)


def changed_copy(src: Path, dst_dir: Path) -> Path:
    """The same day's file with its last line once more (another SHA-256, the same trades)."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(src) as z:
        name = z.namelist()[0]
        data = z.read(name)
    last = data.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    dst = dst_dir / src.name
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr(name, data + last + b"\n")
    import hashlib

    Path(f"{dst}.CHECKSUM").write_text(
        f"{hashlib.sha256(dst.read_bytes()).hexdigest()}  {dst.name}\n")
    return dst


def destroy_primary(env) -> None:
    env.primary.stop()
    shutil.rmtree(env.primary.data)
    env.primary.data.mkdir(mode=0o700)
    st = env.primary.data.parent.stat()
    shutil.chown(env.primary.data, st.st_uid, st.st_gid)


@dataclass
class Month:
    """The run's shared state: the environment, its database and bucket, the workers' env,
    a scratch folder, and the figures gathered so far."""

    env: object
    db: str
    e: dict[str, str]
    tmp: Path
    fig: dict


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--trades-per-day", type=int, default=1_050_000)
    ap.add_argument("--copy-days", type=int, default=6,
                    help="days also loaded with psql \\copy as the baseline (evenly spread)")
    ap.add_argument("--restore-day", type=int, default=20,
                    help="the day (1-based) held back, ingested after the backup, restored")
    ap.add_argument("--cache", type=Path, default=REPO / ".tickstack" / "bench-month",
                    help="where the generated files are kept between runs")
    ap.add_argument("--skip", default="", help="comma list of phases to skip: copy, rerun, "
                    "replicate, restore, retention")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    skip = set(filter(None, args.skip.split(",")))
    spec = monthgen.Spec(days=args.days, trades_per_day=args.trades_per_day)
    t0 = time.perf_counter()
    files = monthgen.generate(args.cache, spec)
    total_rows = sum(spec.counts())
    print(f"month: {len(files)} daily files, {total_rows:,} trades, "
          f"{sum(f.stat().st_size for f in files) / 1e6:.0f} MB zipped "
          f"({time.perf_counter() - t0:.1f} s, cached in {args.cache})", flush=True)
    held = files[args.restore_day - 1]
    first_files = [f for f in files if f != held]
    fig: dict = {"days": args.days, "trades": total_rows, "trades_per_day": spec.counts()}

    with throwaway_env() as env:
        tmp = Path(env.state) / "work"
        tmp.mkdir()
        db = fresh_db(env, "month")
        replica_db(env, db)
        bucket = "bench-month"
        landing_bucket(env, bucket)
        m = Month(env, db, workers_env(env, db, bucket), tmp, fig)
        run = stage_ingest(m, first_files)
        copy_days: list[dict] = []
        if "copy" not in skip and args.copy_days:
            copy_days = stage_copy(m, first_files, run["files"], args.copy_days)
        if "rerun" not in skip:
            stage_rerun(m, first_files, run["wall"])
        if "replicate" not in skip:
            first = spec.first_day
            stage_replicate(m, datetime(2024, 4, 12, 13, 5, tzinfo=UTC) if args.days >= 12
                            else datetime.fromisoformat(first + "T00:00:00+00:00"))
        if "restore" not in skip:
            late = stage_restore(m, held)
        else:
            late = ingest(m.e, [held], tmp / "ingest-late.log")
        run["files"] += late["files"]
        if "retention" not in skip:
            stage_retention(m)

    fig["seconds"] = round(time.perf_counter() - t0, 1)
    save("month", fig)
    month_report.plot(out_dir() / "month.png", run, copy_days)
    print(f"month bench: {fig['seconds'] / 60:.1f} min")


def stage_ingest(m: Month, first_files: list[Path]) -> dict:
    """1. the month, minus the held-back day, in one process with the dual-write on."""
    env = m.env
    settle(env)
    kinds = CpuKinds(env)
    cpu0, kids0 = cpu_by_part(env), children_cpu()
    run = ingest(m.e, first_files, m.tmp / "ingest.log")
    cpu = cpu_delta(cpu0, cpu_by_part(env))
    detail = kinds.stop()
    cpu["ingest process"] = round(children_cpu() - kids0, 2)
    days = run["files"]
    rates = [d["rows_read"] / d["seconds"] for d in days]
    rows1 = sum(d["rows_read"] for d in days)
    last_week = rates[-7:]
    m.fig["ingest"] = {
        "files": len(days), "rows": rows1, "wall_s": round(run["wall"], 1),
        "rows_per_s": round(rows1 / run["wall"]),
        "first_day_rows_per_s": round(rates[0]), "last_day_rows_per_s": round(rates[-1]),
        "min_day_rows_per_s": round(min(rates)),
        "last_week_vs_first_day": round(sum(last_week) / len(last_week) / rates[0], 3),
        "min_day_vs_first_day": round(min(rates) / rates[0], 3),
        "peak_rss_mb": round(run["peak_rss"] / MB),
        "per_day": [{"file": Path(d["source"]).name, "rows": d["rows_read"],
                     "seconds": d["seconds"], "rows_per_s": round(r)}
                    for d, r in zip(days, rates, strict=True)],
        "rss_mb": [(round(t, 1), round(r / MB)) for t, r in run["rss"][::8]],
        # Where the machine's time went: CPU seconds per million rows by part, and how
        # many of the 2 cores were busy on average.
        "cpu_s_per_million": {k: per_million(v, rows1) for k, v in cpu.items()},
        "cpu_s_per_million_total": per_million(sum(cpu.values()), rows1),
        "cores_busy": round(sum(cpu.values()) / run["wall"], 2),
        "cpu_s_per_million_clusters": {k: per_million(v, rows1)
                                       for k, v in sorted(detail.items())},
    }
    month_report.print_ingest(m.fig["ingest"], rates, run)
    lag = int(scalar(env, m.db, "SELECT count(*) FROM ingestion.replica_lag"))
    m.fig["ingest"]["replica_lag_buckets"] = lag
    return run


def stage_copy(m: Month, first_files: list[Path], days: list[dict], n_days: int
               ) -> list[dict]:
    """2. \\copy of some of the same days into an identical empty hypertable."""
    env = m.env
    copy_days: list[dict] = []
    settle(env)
    cdb = fresh_db(env, "month_copy")
    step = max(1, (len(days) - 1) // max(1, n_days - 1))
    picks = sorted({min(i, len(days) - 1) for i in range(0, len(days), step)}
                   )[:n_days - 1] + [len(days) - 1]
    cum = 0
    by_name = {Path(d["source"]).name: d for d in days}
    for i, f in enumerate(first_files):
        cum += by_name[f.name]["rows_read"]
        if i not in picks:
            continue
        secs, n, ccpu = copy_day(env, cdb, f, m.tmp)
        d = by_name[f.name]
        copy_days.append({"file": f.name, "rows": n, "copy_s": round(secs, 2),
                          "ingest_s": d["seconds"], "cum_rows": cum,
                          "ratio": round(d["seconds"] / secs, 3), "cpu": ccpu})
        print(f"  {f.name}: psql \\copy {secs:6.1f} s, ingest {d['seconds']:6.1f} s "
              f"= {d['seconds'] / secs:4.2f}x", flush=True)
    env.primary.psql(f'DROP DATABASE "{cdb}" WITH (FORCE)')
    ing = sum(d["ingest_s"] for d in copy_days)
    cp = sum(d["copy_s"] for d in copy_days)
    crows = sum(d["rows"] for d in copy_days)
    ccpu = {k: per_million(sum(d["cpu"].get(k, 0) for d in copy_days), crows)
            for k in ("primary", "psql")}
    ing_cpu = m.fig["ingest"]["cpu_s_per_million_total"]
    # With every core busy all the time the ingest could not take less than its CPU
    # over the cores; against \copy's wall time per million rows that is a floor for
    # the ratio no overlap can beat.
    floor = ing_cpu / (os.cpu_count() or 1) / per_million(cp, crows)
    m.fig["copy"] = {"days": copy_days, "ingest_s": round(ing, 1), "copy_s": round(cp, 1),
                     "ratio": round(ing / cp, 3), "cpu_s_per_million": ccpu,
                     "cpu_s_per_million_total": round(sum(ccpu.values()), 3),
                     "ratio_floor_all_cores_busy": round(floor, 3)}
    month_report.print_copy(m.fig["copy"], ing / cp, floor, ing_cpu)
    return copy_days


def stage_rerun(m: Month, first_files: list[Path], first_wall: float) -> None:
    """3. reruns: unchanged, then one file changed."""
    env, db, e = m.env, m.db, m.e
    secs, out = cli(e, "ingest", "--json", *map(str, first_files))
    sums = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    skipped = sum(s["files_skipped"] for s in sums)
    changed = changed_copy(first_files[len(first_files) // 2], m.tmp / "changed")
    swapped = [changed if f.name == changed.name else f for f in first_files]
    before = scalar(env, db, "SELECT count(*) FROM market_data.btc_ticks")
    secs2, out2 = cli(e, "ingest", "--json", *map(str, swapped))
    sums2 = [json.loads(ln) for ln in out2.splitlines() if ln.startswith("{")]
    after = scalar(env, db, "SELECT count(*) FROM market_data.btc_ticks")
    full = [s for s in sums2 if not s["files_skipped"]]
    m.fig["rerun"] = r = {"seconds": round(secs, 2), "files_skipped": skipped,
                          "ratio_to_first": round(secs / first_wall, 4),
                          "one_changed_seconds": round(secs2, 2),
                          "one_changed_full_path": [Path(s["source"]).name for s in full],
                          "one_changed_inserted": sum(s["inserted"] for s in sums2),
                          "one_changed_duplicates": sum(s["duplicates"] for s in sums2),
                          "ticks_unchanged": before == after}
    print(f"rerun of {len(first_files)} files: {secs:.1f} s = "
          f"{secs / first_wall * 100:.2f}% of the first ingest (goal <= 2%), "
          f"{skipped} skipped; one file changed: {secs2:.1f} s, "
          f"{len(full)} through the full path, {r['one_changed_inserted']} "
          f"new ticks, ticks unchanged: {before == after}", flush=True)


def stage_replicate(m: Month, missed: datetime) -> None:
    """4. replicate at the month scale; then one bucket the replica missed (at `missed`)."""
    e = m.e
    secs, out = cli(e, "replicate", "--json", ok=(0, 1))
    r1 = json.loads(out)
    secs_c, out = cli(e, "replicate", "--check", "--json", ok=(0, 1))
    rc = json.loads(out)
    # A flush the replica missed: one bucket's ticks gone there, as a writer marks it.
    when = missed.isoformat()
    m.env.replica.psql(
        "BEGIN; SELECT set_config('tickstack.digests_marked', 'on', true); "
        "INSERT INTO market_data.tick_digests (market, symbol, bucket_5m) VALUES "
        f"('spot', 'BTCUSDT', '{when}') ON CONFLICT (market, symbol, bucket_5m) DO "
        "UPDATE SET tick_count = NULL, digest = NULL, version = "
        "market_data.tick_digests.version + 1; "
        f"DELETE FROM market_data.btc_ticks WHERE bucket_5m = '{when}'; COMMIT;", db=m.db)
    secs_d, out = cli(e, "replicate", "--check", "--json", ok=(0, 1))
    rd = json.loads(out)
    secs_r, out = cli(e, "replicate", "--json", ok=(0, 1))
    rr = json.loads(out)
    rows = rc["after"].get("rows", 0)
    m.fig["replicate"] = {
        "catch_up_s": round(secs, 1), "catch_up": r1["caught_up"],
        "catch_up_rows": r1["rows_loaded"], "digests": r1["before"].get(
            "digests_recomputed"), "first_per_million_s": per_million(secs, rows),
        "check_equal_s": round(secs_c, 2), "check_equal_ok": rc["differing"] == [],
        "days": rc["after"].get("days"), "buckets": rc["after"].get("buckets"),
        "rows": rows, "check_per_million_s": per_million(secs_c, rows),
        "check_one_missing_s": round(secs_d, 2),
        "check_one_missing_found": rd["differing"],
        "days_drilled": rd["before"].get("days_differing"),
        "repair_s": round(secs_r, 2), "repaired": rr["differing"] == [],
        "repair_caught_up": rr["caught_up"]}
    print(f"replicate: catch-up + first digests {secs:.1f} s ({r1['caught_up']} buckets "
          f"rebuilt); --check of the equal month ({rows:,} rows, "
          f"{rc['after'].get('days')} days) {secs_c:.2f} s (goal <= 10 s); one bucket "
          f"missing: --check {secs_d:.2f} s, {len(rd['differing'])} found in "
          f"{rd['before'].get('days_differing')} day(s); repaired in {secs_r:.2f} s",
          flush=True)


def stage_restore(m: Month, held: Path) -> dict:
    """5. backup, the held-back day after it, restore to the time between. Returns the late
    day's ingest."""
    env, db, e = m.env, m.db, m.e
    secs_b, _ = cli(e, "backup", "--type", "full")
    target = scalar(env, db, "SELECT clock_timestamp()")
    time.sleep(1.1)
    late = ingest(e, [held], m.tmp / "ingest-late.log")
    cli(e, "backup", "--check")
    whole = int(scalar(env, db, "SELECT count(*) FROM market_data.btc_ticks"))
    destroy_primary(env)
    secs_r, out = cli(e, "restore", "--target-time", target, "--timeline", "current")
    got = int(scalar(env, db, "SELECT count(*) FROM market_data.btc_ticks"))
    steps = {g.group(2).strip(): float(g.group(1)) for g in re.finditer(
        r"^\s+([\d.]+) s\s+(.+?)(?: —|$)", out, re.M)}
    replay = next((v for k, v in steps.items() if k.startswith("landing replay")), None)
    late_rows = late["files"][0]["rows_read"]
    m.fig["restore"] = {"backup_s": round(secs_b, 1), "late_day_ingest_s":
                        late["files"][0]["seconds"], "late_day_rows": late_rows,
                        "restore_s": round(secs_r, 1), "steps": steps,
                        "replay_s": replay,
                        "replay_per_million_s": per_million(replay or 0, late_rows),
                        "ticks_after": got, "ticks_expected": whole,
                        "exact": got == whole, "report": out[-1500:]}
    print(f"restore: full backup {secs_b:.0f} s; workers restore {secs_r:.0f} s, of it "
          f"landing replay {replay} s for the day after the target ({late_rows:,} rows); "
          f"ticks {got:,} of {whole:,}", flush=True)
    return late


def stage_retention(m: Month) -> None:
    """6. retention: every chunk of the month but the newest."""
    env, db = m.env, m.db
    last_chunk = env.primary.psql(
        "SELECT max(range_start) FROM timescaledb_information.chunks WHERE "
        "hypertable_name = 'btc_ticks'", db=db)
    now = datetime.fromisoformat(scalar(env, db, "SELECT now()"))
    cut = datetime.fromisoformat(last_chunk)
    secs_interval = int((now - cut + timedelta(minutes=5)).total_seconds())
    for cluster in (env.primary, env.replica):
        cluster.psql("INSERT INTO ops.retention_jobs (job_name, hypertable, policy) "
                     "VALUES ('bench_month', 'market_data.btc_ticks', "
                     f"'{{\"drop_after\": \"{secs_interval} seconds\"}}')", db=db)
    before = int(scalar(env, db, "SELECT count(*) FROM market_data.btc_ticks"))
    secs_dry, _ = cli(m.e, "retention", "--job", "bench_month", "--dry-run")
    secs_ret, out = cli(m.e, "retention", "--job", "bench_month", "--json")
    res = json.loads(out)
    after = int(scalar(env, db, "SELECT count(*) FROM market_data.btc_ticks"))
    prim = res.get("primary", [{}])[0]
    repl = res.get("replica", [{}])[0]
    m.fig["retention"] = {"dry_run_s": round(secs_dry, 1), "run_s": round(secs_ret, 1),
                          "primary_chunks": prim.get("chunks"),
                          "primary_rows": prim.get("rows"),
                          "primary_s": prim.get("seconds"),
                          "replica_rows": repl.get("rows"), "replica_s": repl.get("seconds"),
                          "ticks_before": before, "ticks_after": after,
                          "primary_per_million_s": per_million(prim.get("seconds") or 0,
                                                               prim.get("rows") or 0),
                          "replica_per_million_s": per_million(repl.get("seconds") or 0,
                                                               repl.get("rows") or 0)}
    print(f"retention: dry-run {secs_dry:.1f} s; drop {prim.get('chunks')} chunks "
          f"({prim.get('rows'):,} rows) on the primary in {prim.get('seconds')} s, "
          f"{repl.get('rows'):,} rows deleted on the replica in {repl.get('seconds')} s",
          flush=True)


if __name__ == "__main__":
    main()
