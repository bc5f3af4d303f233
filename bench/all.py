"""Every benchmark, one after the other: what `make bench` runs.

    .venv/bin/python bench/all.py [--month] [--vectors N] [--only ingest,dr,...]

Each bench starts its own throwaway environment and prints ratios against baselines measured in
the same run; each writes its figures as <out>/<bench>.json (bench/common.py: out_dir, default
.tickstack/bench/ — git-ignored). --month adds the generated month (bench/month.py: ~30 min on
2 cores, its files cached in .tickstack/bench-month/); --vectors N is handed to bench/vectors.py.
Exit 1 when a bench failed (the others still run); the figures of the ones that ran are kept.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import out_dir  # noqa: E402

BENCHES = ("ingest", "replica", "dr", "fetch", "backup", "compression", "vectors", "cli_start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--month", action="store_true", help="also the generated month")
    ap.add_argument("--vectors", type=int, default=None, help="vectors for bench/vectors.py")
    ap.add_argument("--only", default="", help="comma list of benches to run")
    args = ap.parse_args()
    names = [b for b in BENCHES + ("month",) if b != "month" or args.month]
    if args.only:
        names = [b for b in args.only.split(",") if b]
        unknown = set(names) - set(BENCHES + ("month",))
        if unknown:
            ap.error(f"unknown bench(es): {', '.join(sorted(unknown))}")
    failed = []
    for name in names:
        cmd = [sys.executable, str(HERE / f"{name}.py")]
        if name == "vectors" and args.vectors:
            cmd += ["--vectors", str(args.vectors)]
        print(f"\n=== bench/{name}.py {' '.join(cmd[2:])}", flush=True)
        t0 = time.perf_counter()
        r = subprocess.run(cmd)
        print(f"=== {name}: {'ok' if r.returncode == 0 else 'FAILED'} in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        if r.returncode != 0:
            failed.append(name)
    print(f"\nfigures in {out_dir()}: "
          + ", ".join(sorted(p.name for p in out_dir().glob("*.json"))))
    if failed:
        print(f"failed: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
