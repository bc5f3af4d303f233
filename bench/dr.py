"""Disaster-recovery benchmark: `workers restore` against a plain pgBackRest restore, same run.

    .venv/bin/python bench/dr.py [--rounds 2]

On a throwaway local environment (own clusters and S3 under /tmp): the real Binance day in
../shared/data is ingested in two parts around a full backup (08:00 UTC cut), the target time T
is noted after the backup and part 1... and part 2 lands after T. Each round then destroys the
primary's data directory twice, alternating the order:

  * baseline — what an operator would type: `pgbackrest restore --type=time --target=T
    --target-action=promote`, start PostgreSQL, wait until it accepts writes;
  * tickstack — `workers restore --target-time T`: the same restore, plus verification of
    extensions and migration ledger, plus the landing replay that closes the gap after T.

It prints each run's time, the ratio tickstack / baseline, and the step breakdown of the last
tickstack run (the recovery time objective as it would be reported). The data after both ends
is checked: the baseline holds exactly the rows up to T, tickstack all of the day.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, throwaway_env  # noqa: E402,I001

import psycopg  # noqa: E402

DAY = REPO.parent / "shared" / "data" / "BTCUSDT-trades-2019-04-01.csv"
CUT_MS = 1_554_076_800_000 + 8 * 3_600_000  # 2019-04-01 08:00 UTC


def cli(env, *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "workers", *args], cwd=REPO,
                       env={**os.environ, **env.env(), "TICKSTACK_LOG_FORMAT": "json",
                            "TICKSTACK_LOG_LEVEL": "warning"},
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"workers {' '.join(args)} failed ({r.returncode}):\n"
                         f"{r.stdout}\n{r.stderr[-3000:]}")
    return r.stdout


def admin(env) -> psycopg.Connection:
    return psycopg.connect(env.primary.dsn(), password=env.secrets["postgres_password"])


def tick_count(env) -> int:
    with admin(env) as c:
        return c.execute("SELECT count(*) FROM market_data.btc_ticks").fetchone()[0]


def destroy(env) -> None:
    env.primary.stop()
    shutil.rmtree(env.primary.data)
    env.primary.data.mkdir(mode=0o700)
    shutil.chown(env.primary.data, *_owner(env.primary.data.parent))


def _owner(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid


def baseline(env, target: str) -> float:
    destroy(env)
    t0 = time.monotonic()
    # Both restores stay on the backup's timeline: each round restores to the same T again.
    r = env.pgbackrest("restore", "--type=time", f"--target={target}", "--target-timeline=current",
                       "--target-action=promote", timeout=3600)
    if r.returncode != 0:
        raise SystemExit(f"pgbackrest restore failed: {r.stdout[-1500:]}{r.stderr[-1500:]}")
    env.primary.start(env=env.pgbackrest_env())
    while True:
        try:
            with admin(env) as c:
                if not c.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    break
        except psycopg.Error:
            pass
        if time.monotonic() - t0 > 900:
            raise SystemExit("baseline: still in recovery after 900 s")
        time.sleep(0.1)
    return time.monotonic() - t0


def tickstack(env, target_iso: str) -> tuple[float, str]:
    destroy(env)
    t0 = time.monotonic()
    out = cli(env, "restore", "--target-time", target_iso, "--timeline", "current")
    return time.monotonic() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if not DAY.exists():
        raise SystemExit(f"{DAY} is missing (see ../shared/data/MANIFEST.md)")

    with throwaway_env() as env:
        tmp = Path(env.state) / "parts"
        tmp.mkdir()
        p1, p2 = tmp / "BTCUSDT-trades-2019-04-01-a.csv", tmp / "BTCUSDT-trades-2019-04-01-b.csv"
        with DAY.open() as src, p1.open("w") as a, p2.open("w") as b:
            for line in src:
                (a if int(line.split(",")[4]) < CUT_MS else b).write(line)
        cli(env, "migrate")
        cli(env, "ingest", str(p1))
        t0 = time.monotonic()
        cli(env, "backup", "--type", "full")
        print(f"full backup: {time.monotonic() - t0:.1f} s")
        with admin(env) as c:
            target = c.execute("SELECT clock_timestamp()").fetchone()[0]
        time.sleep(1.1)
        upto_t = tick_count(env)
        cli(env, "ingest", str(p2))
        whole = tick_count(env)
        cli(env, "backup", "--check")  # switches WAL: everything before now is archived
        pg_target = target.strftime("%Y-%m-%d %H:%M:%S.%f+00")
        print(f"target T = {target.isoformat()}; ticks up to T {upto_t:,}, whole day {whole:,}")

        base, ours, last = [], [], ""
        for i in range(args.rounds):
            order = ("baseline", "tickstack") if i % 2 == 0 else ("tickstack", "baseline")
            for which in order:
                if which == "baseline":
                    base.append(baseline(env, pg_target))
                    got = tick_count(env)
                    assert got == upto_t, f"baseline restored {got} ticks, expected {upto_t}"
                    print(f"round {i + 1}: plain pgbackrest restore + start  {base[-1]:6.1f} s"
                          f"  ({got:,} ticks: exactly up to T)")
                else:
                    secs, last = tickstack(env, target.isoformat())
                    ours.append(secs)
                    got = tick_count(env)
                    assert got == whole, f"tickstack restored {got} ticks, expected {whole}"
                    print(f"round {i + 1}: workers restore --target-time T     {secs:6.1f} s"
                          f"  ({got:,} ticks: up to T plus the landing replay)")
        b, o = statistics.median(base), statistics.median(ours)
        print(f"\nmedian: baseline {b:.1f} s, tickstack {o:.1f} s — ratio {o / b:.2f}x "
              f"(tickstack adds verification and the landing replay of "
              f"{whole - upto_t:,} ticks the plain restore does not bring back)")
        from common import save

        save("dr", {"baseline_s": [round(x, 1) for x in base],
                    "tickstack_s": [round(x, 1) for x in ours],
                    "median_ratio": round(o / b, 3), "ticks_up_to_target": upto_t,
                    "ticks_whole_day": whole})
        print("last tickstack run, as it reports itself:")
        print("\n".join("  " + ln for ln in last.strip().splitlines()))


if __name__ == "__main__":
    main()
