"""The database build against the previous one, in the same run: the benches a new PostgreSQL,
TimescaleDB or pgvector could move, each run once on the previous build (PG_PREVIOUS_MAJOR with
TIMESCALEDB_PREVIOUS_VERSION and PGVECTOR_PREVIOUS_VERSION: `make test` installs it) and once on
the table's, alternating, each on its own throwaway servers.

    .venv/bin/python bench/builds.py [--only ingest,vectors,backup] [--rows 2000000]
                                     [--vectors 100000] [--previous-first]

  * ingest   bench/ingest.py --rows N (ingest vs psql \\copy on the same build)
  * vectors  bench/vectors.py --vectors N (ivfflat build, recall@10, kNN p95)
  * backup   bench/backup.py (full backups vs the tar | zstd floor of the same data)
Prints each figure of both runs and current / previous; every bench's own ratio (against a
baseline measured on the same build) is the figure to trust on a noisy machine. Writes
<out>/builds.json (out: $TICKSTACK_BENCH_OUT, else .tickstack/bench/).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, save  # noqa: E402

sys.path.insert(0, str(REPO))
from infra import versions  # noqa: E402

BENCHES = {
    "ingest": lambda a: ["bench/ingest.py", "--rows", str(a.rows), "--rounds", "2"],
    "vectors": lambda a: ["bench/vectors.py", "--vectors", str(a.vectors)],
    "backup": lambda a: ["bench/backup.py", "--rounds", "2"],
}


def flat(doc, prefix: str = "") -> dict[str, float]:
    """Numeric leaves by dotted path (short lists kept by index; long ones are curves)."""
    out: dict[str, float] = {}
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k not in ("machine", "at", "bench"):
                out.update(flat(v, f"{prefix}{k}."))
    elif isinstance(doc, list) and len(doc) <= 4:
        for i, v in enumerate(doc):
            out.update(flat(v, f"{prefix}{i}."))
    elif isinstance(doc, int | float) and not isinstance(doc, bool):
        out[prefix.rstrip(".")] = float(doc)
    return out


def run(bench: str, argv: list[str], bindir: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TICKSTACK_PG_BIN": str(bindir), "TICKSTACK_BENCH_OUT": str(out)}
    extra = ["--out", str(out)] if bench == "vectors" else []
    print(f"\n=== {bench} on {bindir} ===", flush=True)
    r = subprocess.run([sys.executable, *argv, *extra], cwd=REPO, env=env, check=False)
    figures = out / f"{bench}.json"
    if not figures.exists():
        raise SystemExit(f"bench/builds.py: {bench} on {bindir} failed (exit {r.returncode}) "
                         "before writing its figures")
    doc = json.loads(figures.read_text())
    # A bench exits 1 when one of its own goals is missed; its figures still count.
    doc["exit_code"] = r.returncode
    return doc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(BENCHES), help="comma-separated benches")
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--vectors", type=int, default=100_000)
    ap.add_argument("--previous-first", action="store_true",
                    help="start with the previous build (default: alternate, current first)")
    a = ap.parse_args()
    v = versions.load()
    builds = {"previous": v.pg_previous_bindir, "current": v.pg_bindir}
    for name, b in builds.items():
        if not (b / "pg_ctl").exists():
            print(f"bench/builds.py: the {name} build is not installed ({b}): "
                  "`bash scripts/install_system.sh --with-previous`", file=sys.stderr)
            return 2
    chosen = [b.strip() for b in a.only.split(",") if b.strip()]
    unknown = sorted(set(chosen) - set(BENCHES))
    if unknown:
        print(f"bench/builds.py: unknown bench {', '.join(unknown)} (known: "
              f"{', '.join(BENCHES)})", file=sys.stderr)
        return 2
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="tickstack-bench-builds-") as tmp:
        for i, bench in enumerate(chosen):
            order = ["previous", "current"]
            if (i % 2 == 0) != a.previous_first:
                order.reverse()
            results[bench] = {b: run(bench, BENCHES[bench](a), builds[b], Path(tmp) / b)
                              for b in order}
    print(f"\n{'figure':<48} {'previous':>12} {'current':>12} {'cur/prev':>9}")
    for bench, pair in results.items():
        prev, cur = flat(pair["previous"]), flat(pair["current"])
        for k in sorted(set(prev) & set(cur)):
            ratio = f"{cur[k] / prev[k]:9.2f}" if prev[k] else f"{'-':>9}"
            print(f"{bench + '.' + k:<48} {prev[k]:>12.4g} {cur[k]:>12.4g} {ratio}")
    save("builds", {"previous": {"bindir": str(builds["previous"])},
                    "current": {"bindir": str(builds["current"])}, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
