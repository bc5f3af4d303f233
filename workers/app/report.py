"""The main job's report: one HTML page with PNG figures (matplotlib), under the report dir.

Figures: 5-minute OHLCV and volume of what the primary holds (the newest week of it);
quarantined rows by reason; one "similar windows" example — the query window's price path
beside its nearest neighbours', and what followed each; the stage timings.
"""

from __future__ import annotations

import html
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display here, nor in a pod

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import psycopg  # noqa: E402

from workers.app.results import Run  # noqa: E402
from workers.core.sqlfiles import query  # noqa: E402

WEEK = 7 * 24 * 12  # 5-minute buckets
MARKET = "spot"  # the report shows the main job's spot series
DPI = 110


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=DPI)
    plt.close(fig)
    os.replace(tmp, path)
    return path.name


def ohlcv_figure(conn: psycopg.Connection, symbol: str, out: Path) -> str | None:
    rows = conn.execute(query(__package__, "report_ohlcv"), [MARKET, symbol, WEEK]).fetchall()
    if not rows:
        return None
    t = [r[0] for r in rows]
    o, h, lo, c, v, bv = (np.array([float(r[i]) for r in rows]) for i in range(1, 7))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 5.5), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    ax1.fill_between(t, lo, h, step="mid", color="#9ecae1", alpha=0.6, label="high–low")
    ax1.plot(t, c, color="#08519c", lw=0.9, label="close")
    up = c >= o
    ax1.scatter(np.array(t)[up], c[up], s=3, color="#2ca02c")
    ax1.scatter(np.array(t)[~up], c[~up], s=3, color="#d62728")
    ax1.set_ylabel("price (USDT)")
    ax1.set_title(f"{symbol} 5-minute OHLCV — {len(rows)} windows, "
                  f"{t[0]:%Y-%m-%d %H:%M} → {t[-1]:%Y-%m-%d %H:%M} UTC")
    ax1.legend(loc="upper left", fontsize=8)
    width = timedelta(minutes=4)
    ax2.bar(t, bv, width=width, color="#31a354", label="taker buys")
    ax2.bar(t, v - bv, bottom=bv, width=width, color="#e6550d", label="taker sells")
    ax2.set_ylabel("volume (BTC)")
    ax2.legend(loc="upper left", fontsize=8)
    return _save(fig, out / "ohlcv.png")


def quarantine_figure(reasons: dict[str, int], out: Path) -> str:
    fig, ax = plt.subplots(figsize=(8, 2.8))
    if reasons:
        items = sorted(reasons.items(), key=lambda kv: kv[1])
        ax.barh([k for k, _ in items], [n for _, n in items], color="#d62728")
        for i, (_, n) in enumerate(items):
            ax.text(n, i, f" {n:,}", va="center", fontsize=8)
        ax.set_xlabel("rows quarantined")
        ax.set_title(f"Quarantined rows by reason ({sum(reasons.values()):,})")
    else:
        ax.text(0.5, 0.5, "no rows quarantined in this run", ha="center", va="center",
                fontsize=12, transform=ax.transAxes)
        ax.set_axis_off()
        ax.set_title("Quarantined rows by reason")
    return _save(fig, out / "quarantine.png")


def _window_path(conn, symbol: str, bucket: datetime) -> tuple[np.ndarray, np.ndarray]:
    """Minutes into the window and log-return (%) from its first trade, tick by tick."""
    rows = conn.execute(query(__package__, "report_window_ticks"),
                        [MARKET, symbol, bucket]).fetchall()
    if not rows:
        return np.array([]), np.array([])
    p = np.array([float(r[1]) for r in rows])
    m = np.array([(r[0] - bucket).total_seconds() / 60 for r in rows])
    return m, 100 * np.log(p / p[0])


def _after(conn, symbol: str, bucket: datetime) -> tuple[np.ndarray, np.ndarray]:
    """The next hour in 5-minute closes, as log-return (%) from the window's close."""
    rows = conn.execute(query(__package__, "report_closes_between"),
                        [MARKET, symbol, bucket, bucket + timedelta(minutes=60)]).fetchall()
    if not rows:
        return np.array([]), np.array([])
    c = np.array([float(r[1]) for r in rows])
    m = np.array([(r[0] - bucket).total_seconds() / 60 + 5 for r in rows])
    return m, 100 * np.log(c / c[0])


def similar_figure(conn: psycopg.Connection, example: dict, out: Path) -> str:
    symbol = example["symbol"]
    q = datetime.fromisoformat(example["window"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1, 2]})
    colours = plt.cm.viridis(np.linspace(0, 0.85, max(len(example["neighbours"]), 1)))
    for n, col in zip(example["neighbours"], colours, strict=False):
        b = datetime.fromisoformat(n["bucket"])
        label = f"{b:%m-%d %H:%M} (d={n['distance']:.3f})"
        ax1.plot(*_window_path(conn, symbol, b), color=col, lw=0.8, alpha=0.8, label=label)
        ax2.plot(*_after(conn, symbol, b), color=col, lw=1, alpha=0.8, marker=".")
    ax1.plot(*_window_path(conn, symbol, q), color="black", lw=1.8, label=f"query {q:%m-%d %H:%M}")
    ax2.plot(*_after(conn, symbol, q), color="black", lw=2, marker="o", label="query")
    ax1.set_title("the window: price path")
    ax1.set_xlabel("minutes into the 5-minute window")
    ax1.set_ylabel("log return from first trade (%)")
    ax1.legend(fontsize=7, loc="best")
    m = example["means"]["fwd_ret_60m"]
    ax2.axhline(0, color="grey", lw=0.6)
    ax2.set_title("what followed: the next hour (5-minute closes); neighbours' mean "
                  f"{(m['neighbours'] or 0) * 100:+.3f}% vs all "
                  f"{(m['unconditional'] or 0) * 100:+.3f}%", fontsize=9)
    ax2.set_xlabel("minutes after the window's start")
    ax2.set_ylabel("log return from the window's close (%)")
    fig.suptitle(f"{symbol}: the {len(example['neighbours'])} past windows most like "
                 f"{q:%Y-%m-%d %H:%M} UTC (cosine distance of the 256-d embeddings)", fontsize=10)
    return _save(fig, out / "similar.png")


def timings_figure(run: Run, out: Path) -> str:
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(run.stages) + 1.2))
    names = [s.name for s in run.stages][::-1]
    secs = [s.seconds for s in run.stages][::-1]
    colours = ["#d62728" if not s.ok else "#3182bd" for s in run.stages][::-1]
    ax.barh(names, secs, color=colours)
    for i, v in enumerate(secs):
        ax.text(v, i, f" {v:.1f} s", va="center", fontsize=8)
    ax.set_xlabel("seconds")
    ax.set_title(f"Stage timings (total {sum(secs):.1f} s)")
    return _save(fig, out / "timings.png")


def write(run: Run, reader_dsn: str, out_dir: str | Path, *, symbol: str = "BTCUSDT") -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, str]] = []  # (file, caption)
    ingested = run.result_of("ingest")
    reasons = ingested.as_dict().get("quarantined_by_reason", {}) if ingested else {}
    with psycopg.connect(reader_dsn) as conn:
        f = ohlcv_figure(conn, symbol, out)
        if f:
            figures.append((f, "5-minute OHLCV and volume (taker buys vs taker sells) of the "
                               "newest week the primary holds."))
        figures.append((quarantine_figure(reasons, out),
                        "Rows the ingest quarantined in this run, by reason (each with its file "
                        "and line in the quarantine objects in landing)."))
        if run.example and run.example["neighbours"]:
            figures.append((similar_figure(conn, run.example, out),
                            "A window and its nearest past neighbours by embedding: their "
                            "price paths inside the window (left) and what followed (right)."))
    figures.append((timings_figure(run, out), "How long each stage of `make up` took."))

    rows = "\n".join(
        f"<tr class='{'failed' if not s.ok else ('changed' if s.changed else 'same')}'>"
        f"<td>{html.escape(s.name)}</td><td>{html.escape(s.did)}</td>"
        f"<td class='num'>{s.seconds:.1f} s</td></tr>" for s in run.stages)
    figs = "\n".join(
        f"<figure><img src='{html.escape(f)}' alt='{html.escape(cap)}'>"
        f"<figcaption>{html.escape(cap)}</figcaption></figure>" for f, cap in figures)
    state = ("failed at " + next(s.name for s in run.stages if not s.ok)) if not run.ok else (
        "changed" if run.changed else "nothing changed (already up to date)")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tickstack — make up report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1250px; color: #222; }}
table {{ border-collapse: collapse; width: 100%; margin-bottom: 2em; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left;
          vertical-align: top; }}
td.num {{ text-align: right; white-space: nowrap; }}
tr.failed td {{ color: #b00; font-weight: bold; }} tr.same td {{ color: #666; }}
figure {{ margin: 0 0 2em 0; }} figure img {{ max-width: 100%; border: 1px solid #eee; }}
figcaption {{ font-size: 90%; color: #555; }}
</style></head><body>
<h1>tickstack — make up</h1>
<p>{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC · {len(run.stages)} stages ·
{sum(s.seconds for s in run.stages):.1f} s · <strong>{html.escape(state)}</strong></p>
<table><thead><tr><th>stage</th><th>what it did</th><th>time</th></tr></thead>
<tbody>
{rows}
</tbody></table>
{figs}
</body></html>
"""
    index = out / "index.html"
    tmp = index.with_suffix(".tmp")
    tmp.write_text(page)
    os.replace(tmp, index)
    return index
