"""The report of bench/month.py: what each stage measured, printed as it finishes, and the
figure of the month (rows/s per daily file against psql \\copy, the ingest's RSS).
"""

from __future__ import annotations

import os
from pathlib import Path

MB = 2**20


def rows_at(files: list[dict], t: float) -> float:
    """Rows ingested by time t (linear within each file)."""
    prev_t, prev_rows = 0.0, 0
    for f in files:
        start = max(prev_t, f["done_at"] - f["seconds"])
        if t <= f["done_at"]:
            if t <= start:
                return prev_rows
            return prev_rows + f["rows_read"] * (t - start) / (f["done_at"] - start)
        prev_t, prev_rows = f["done_at"], prev_rows + f["rows_read"]
    return prev_rows


def plot(fig_path: Path, run: dict, copy_days: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = run["files"]
    starts = [sum(f["rows_read"] for f in files[:i]) / 1e6 for i in range(len(files) + 1)]
    rate = [f["rows_read"] / f["seconds"] / 1e3 for f in files]
    fig, (a, b) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    a.stairs(rate, starts, label="workers ingest, per daily file (landing + primary + "
             "aggregate + offsets + replica dual-write)")
    if copy_days:
        a.plot([(d["cum_rows"] - d["rows"] / 2) / 1e6 for d in copy_days],
               [d["rows"] / d["copy_s"] / 1e3 for d in copy_days], "o",
               label="psql \\copy of the same day into an empty hypertable")
    a.axhline(rate[0] * 0.85, color="grey", ls=":", lw=1, label="0.85 x the first day")
    a.set_ylabel("thousand rows/s (per daily file)")
    a.set_ylim(bottom=0)
    a.legend(fontsize=8, loc="lower left")
    a.set_title("a generated month: cost per row as the data grows")
    xs = [rows_at(files, t) / 1e6 for t, _ in run["rss"]]
    b.plot(xs, [r / MB for _, r in run["rss"]], lw=0.8, label="RSS of the ingest process")
    b.axhline(300, color="red", ls=":", lw=1, label="300 MB")
    b.set_ylabel("MB")
    b.set_xlabel("million rows ingested")
    b.set_ylim(bottom=0)
    b.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(fig_path, dpi=110)
    plt.close(fig)
    print(f"figure: {fig_path}")


def print_ingest(ing: dict, rates: list[float], run: dict) -> None:
    """Stage 1's lines: rows/s against the goals, then where the CPU went."""
    rows1 = ing["rows"]
    print(f"ingest: {ing['files']} files, {rows1:,} rows in {run['wall']:.0f} s "
          f"({rows1 / run['wall']:,.0f} rows/s); first day {rates[0]:,.0f} rows/s, last "
          f"{rates[-1]:,.0f}, slowest {min(rates):,.0f}; last week "
          f"{ing['last_week_vs_first_day']:.2f}x the first day (goal >= 0.85x);"
          f" peak RSS {run['peak_rss'] / MB:.0f} MB (goal <= 300)", flush=True)
    print("  CPU s per million rows: " + ", ".join(
        f"{k} {v:.2f}" for k, v in sorted(ing["cpu_s_per_million"].items(),
                                          key=lambda kv: -kv[1]))
          + f"; total {ing['cpu_s_per_million_total']:.2f} on "
          f"{ing['cores_busy']:.2f} cores busy on average", flush=True)
    print("  of the clusters: " + ", ".join(
        f"{k} {v:.2f}" for k, v in ing["cpu_s_per_million_clusters"].items()
        if abs(v) >= 0.01), flush=True)


def print_copy(copy: dict, ratio: float, floor: float, ing_cpu: float) -> None:
    """Stage 2's line: ingest against psql \\copy, and the floor no overlap can beat."""
    ccpu = copy["cpu_s_per_million"]
    print(f"ingest / psql \\copy over the same {len(copy['days'])} days = {ratio:.2f}x "
          f"(goal <= 1.0x); \\copy used {sum(ccpu.values()):.2f} CPU s per million "
          f"rows (server {ccpu['primary']:.2f}, psql {ccpu['psql']:.2f}), the ingest "
          f"{ing_cpu:.2f}: with all {os.cpu_count()} cores busy all the time it could "
          f"not beat {floor:.2f}x", flush=True)
