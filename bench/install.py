"""Install benchmark: what `make up` / `make test` cost on a fresh machine, and once installed.

    .venv/bin/python bench/install.py [--runs 5] [--skip-rebuild]

  * installed: `scripts/install_system.sh --with-previous` with everything in place (median of
    --runs)                                                        goal: about 1 s
  * fresh builds: the same with --rebuild and an empty build cache (a temporary
    TICKSTACK_BUILD_DIR): PostgreSQL, pgvector and TimescaleDB are built again from the verified
    sources and reinstalled (the same versions, so nothing changes); each step is timed from
    the script's own lines as they arrive                          goal: <= 15 min in all
  * baseline, same run: `make -j<cores>` of pgvector alone (a small C build on the same cores),
    so a busy machine shows as a slower baseline too.
Runs as root (it installs); takes about as long as the builds (minutes). Never part of make test.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, save  # noqa: E402

SCRIPT = REPO / "scripts" / "install_system.sh"
GOAL_FRESH_S = 15 * 60
STEP = re.compile(r"^install_system: (building .*?|installing Debian packages|fetching .*?)"
                  r"(?: \(about .*\))?$")


def installed_seconds(runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(["bash", str(SCRIPT), "--with-previous"], check=True,
                       capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timed_rebuild(build_dir: Path) -> tuple[float, dict[str, float]]:
    """Run the rebuild, timing each step from one step line to the next."""
    env = {**os.environ, "TICKSTACK_BUILD_DIR": str(build_dir)}
    t0 = time.perf_counter()
    steps: dict[str, float] = {}
    current, since = "set-up", t0
    p = subprocess.Popen(["bash", str(SCRIPT), "--with-previous", "--rebuild"], env=env,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    for line in p.stdout:
        print("   ", line.rstrip())
        m = STEP.match(line.strip())
        if m:
            now = time.perf_counter()
            steps[current] = steps.get(current, 0.0) + now - since
            current, since = m.group(1), now
    if p.wait() != 0:
        raise SystemExit(f"install_system.sh --rebuild failed (exit {p.returncode}); see "
                         f"{build_dir / 'build.log'}")
    end = time.perf_counter()
    steps[current] = steps.get(current, 0.0) + end - since
    return end - t0, steps


def baseline_seconds(build_dir: Path) -> float:
    """pgvector's own build from its verified source: a fixed C workload on these cores."""
    src = subprocess.run(["bash", str(REPO / "scripts" / "verified_source.sh"), "pgvector",
                          str(build_dir / "baseline")], check=True, capture_output=True,
                         text=True).stdout.strip()
    pg_config = subprocess.run(
        [sys.executable, "-m", "infra.versions", "--get", "PG_MAJOR"], cwd=REPO, check=True,
        capture_output=True, text=True).stdout.strip()
    t0 = time.perf_counter()
    subprocess.run(["make", "-C", src, f"-j{os.cpu_count() or 1}", "OPTFLAGS=",
                    f"PG_CONFIG=/usr/lib/postgresql/{pg_config}/bin/pg_config"],
                   check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--skip-rebuild", action="store_true",
                    help="only the installed case (seconds, not minutes)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/install.py: run as root (the install writes system directories)",
              file=sys.stderr)
        return 2
    figures: dict = {"installed_s": round(installed_seconds(a.runs), 3)}
    print(f"installed (nothing to do): {figures['installed_s']:.2f} s (goal: about 1 s)")
    if not a.skip_rebuild:
        with tempfile.TemporaryDirectory(prefix="tickstack-bench-install-") as d:
            base = baseline_seconds(Path(d))
            total, steps = timed_rebuild(Path(d) / "build")
        figures.update({"fresh_total_s": round(total, 1), "baseline_pgvector_make_s":
                        round(base, 1), "steps_s": {k: round(v, 1) for k, v in steps.items()},
                        "fresh_vs_goal": round(total / GOAL_FRESH_S, 3),
                        "fresh_vs_baseline": round(total / base, 1)})
        for k, v in steps.items():
            print(f"  {v:7.1f} s  {k}")
        print(f"fresh builds: {total / 60:.1f} min = {total / GOAL_FRESH_S:.2f}x the 15 min goal "
              f"({total / base:.0f}x the baseline pgvector make of {base:.1f} s)")
    save("install", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
