"""CLI start benchmark: process time (user + system) of short commands, against baselines
measured in the same run (machines are noisy).

    .venv/bin/python bench/cli_start.py [--runs 7] [--rows 2000]

  * `python -m workers --help`                                  goal: <= 0.3 s
  * `workers ingest FILE` over a file loaded before (skipped)   goal: <= 0.3 s
  * baselines: `python -c pass` (the interpreter), and the floor of a skipped re-ingest: importing
    only the libraries it cannot do without (typer for the CLI, pydantic-settings for Settings,
    structlog for its log line, psycopg to ask the database, boto3 to list landing)
Each figure is the median of --runs runs; the ratios divide by the floor measured alongside.
What `--help` and the skip import is held by tests (tests/unit/test_cli_start.py,
tests/integration/test_rerun_start.py), not by these timings.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    REPO,
    fresh_db,
    landing_bucket,
    save,
    throwaway_env,
    worker_env,
    workers_cli,
)

FLOOR = "import typer, pydantic_settings, structlog, psycopg, boto3"
DAY = REPO.parent / "shared" / "data" / "BTCUSDT-trades-2019-04-01.csv"


def cpu_of(args: list[str], env: dict[str, str] | None = None) -> float:
    """Process time of one run of `args` (its children's user + system seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def median_cpu(args: list[str], runs: int, env: dict[str, str] | None = None) -> float:
    return statistics.median(cpu_of(args, env) for _ in range(runs))


def sample_file(rows: int, into: Path) -> Path:
    """The first `rows` trades of the project's real day (../shared/data), as a dump file."""
    if not DAY.exists():
        raise SystemExit(f"{DAY}: the project's test data is not beside the checkout")
    path = into / "BTCUSDT-trades-2019-04-01.csv"
    with DAY.open() as src, path.open("w") as dst:
        for _, line in zip(range(rows), src, strict=False):
            dst.write(line)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7, help="runs per figure (median)")
    ap.add_argument("--rows", type=int, default=2000, help="rows of the file re-ingested")
    a = ap.parse_args()
    py = sys.executable
    with throwaway_env() as env, tempfile.TemporaryDirectory() as tmp:
        db = fresh_db(env, "bench_cli")
        landing_bucket(env, "bench-cli-landing")
        cenv = worker_env(env, db, "bench-cli-landing")
        path = sample_file(a.rows, Path(tmp))
        workers_cli(cenv, "ingest", str(path))  # the first load; every run below skips it
        figures = {
            "interpreter_s": median_cpu([py, "-c", "pass"], a.runs),
            "floor_s": median_cpu([py, "-c", FLOOR], a.runs),
            "help_s": median_cpu([py, "-m", "workers", "--help"], a.runs),
            "skipped_ingest_s": median_cpu([py, "-m", "workers", "ingest", str(path)],
                                           a.runs, cenv),
        }
    floor = figures["floor_s"]
    print(f"process time, median of {a.runs} (user + system):")
    for name, goal in (("interpreter_s", None), ("floor_s", None), ("help_s", 0.3),
                       ("skipped_ingest_s", 0.3)):
        v = figures[name]
        met = "" if goal is None else f"  goal <= {goal} s: {'met' if v <= goal else 'MISSED'}"
        print(f"  {name:<18} {v:6.3f} s  = {v / floor:4.2f}x the floor{met}")
    save("cli_start", {**figures, "runs": a.runs, "floor_imports": FLOOR})


if __name__ == "__main__":
    main()
