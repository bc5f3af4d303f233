"""Compare everything the replica holds with the primary: per bucket, its ticks (stored digests,
workers/replica/digests.py), its landing registry row and its 5-minute aggregate row
(workers/replica/rows.py) — day digests first, buckets only of the days that differ.

A difference is then classified, not just counted:
  * retention: the side that lacks the rows (or holds fewer ticks) is older there than what its
    retention keeps (workers/replica/retained.py) — by design, not a difference;
  * in flight: a writer is still writing the bucket (its digest was marked stale during the
    comparison, or the dual-write has not reached the replica yet). Differing buckets are
    re-checked (stale digests recomputed, then read) until they are equal (in flight), or have
    held still for `settle` seconds — the dual-write's delivery bound, after which a write has
    reached the replica or been recorded as lag — or are certainly not in flight (recorded as
    replica lag; the same tick count with other content). A bucket still changing after three
    times that is reported as still being written, not as a difference;
  * differs: everything else.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

import psycopg

from workers.core.sqlfiles import query
from workers.core.ticks import iso, to_dt, to_us
from workers.replica import digests, retained, rows
from workers.replica.rows import KINDS, NOTHING, Held, Key

DIFFERENCES = ("missing", "different", "extra")
NAMES = {"ticks": "ticks", "registry": "registry row", "ohlcv": "OHLCV bar"}
POLL = 0.25  # seconds between re-checks of differing buckets


@dataclass
class Comparison:
    primary: dict[Key, Held]  # the buckets of the days that differ (the rest are equal)
    replica: dict[Key, Held]
    totals: dict = field(default_factory=dict)  # buckets, rows per side; days compared/differing
    refreshed: dict = field(default_factory=dict)  # digests recomputed per side
    horizons: dict = field(default_factory=dict)  # side -> {table: retention cutoff}
    lagging: set = field(default_factory=set)  # buckets recorded in ingestion.replica_lag
    in_flight: list = field(default_factory=list)  # differed while being written, then equal
    still_writing: list = field(default_factory=list)  # still changing when the re-check ended

    def verdict(self, k: Key, kind: str) -> str | None:
        """None (equal), missing | extra | different (on the replica), stale (a stored digest
        not recomputed yet) or retention (dropped by design on the side that lacks it)."""
        p, r = self.primary.get(k, NOTHING).of(kind), self.replica.get(k, NOTHING).of(kind)
        if p == r:
            return None
        if kind == "ticks" and ((p and p[0] is None) or (r and r[0] is None)):
            return "stale"
        short = None
        if r is None or (kind == "ticks" and p is not None and r[0] < p[0]):
            short = "replica"
        elif p is None or (kind == "ticks" and p[0] < r[0]):
            short = "primary"
        cut = self.horizons.get(short, {}).get(retained.TABLE_OF.get(kind))
        if cut is not None and to_dt(k[2]) < cut:
            return "retention"
        return "missing" if r is None else "extra" if p is None else "different"

    def problems(self, k: Key) -> dict[str, str]:
        return {kind: v for kind in KINDS
                if (v := self.verdict(k, kind)) not in (None, "retention")}

    def compared(self) -> list[Key]:
        return sorted(self.primary.keys() | self.replica.keys())

    def differing(self) -> list[Key]:
        writing = set(self.still_writing)
        return [k for k in self.compared() if k not in writing and self.problems(k)]

    def to_rebuild(self) -> list[Key]:
        """Differing buckets: rebuilt on the replica from landing (catchup.landed decides what
        landing and the primary explain; ticks only the replica holds, of a bucket neither
        holds anything of, are kept and reported: they may be the last copy)."""
        return self.differing()

    def counts(self) -> dict:
        out = {kind: dict.fromkeys((*DIFFERENCES, "retention"), 0) for kind in KINDS}
        writing = set(self.still_writing)
        for k in self.compared():
            for kind in KINDS:
                v = self.verdict(k, kind)
                if k not in writing and v in out[kind]:
                    out[kind][v] += 1
                elif k not in writing and v == "stale":
                    out[kind]["different"] += 1
        return out

    def describe(self, k: Key) -> str:
        p, r = self.primary.get(k, NOTHING), self.replica.get(k, NOTHING)
        said = []
        for kind, v in self.problems(k).items():
            if kind == "ticks":
                said.append({
                    "missing": lambda: f"ticks missing on the replica (primary {p.ticks[0]} "
                                       "rows)",
                    "extra": lambda: f"ticks only on the replica ({r.ticks[0]} rows)",
                    "stale": lambda: "tick digest not recomputed yet",
                    "different": lambda: (
                        f"{p.ticks[0]} rows on the primary, {r.ticks[0]} on the replica"
                        if p.ticks[0] != r.ticks[0] else
                        f"same row count ({p.ticks[0]}), different content (checksum)"),
                }[v]())
            else:
                said.append(f"{NAMES[kind]} " + {"missing": "missing on the replica",
                                                 "extra": "only on the replica",
                                                 "different": "differs"}[v])
        lag = " (recorded as replica lag)" if k in self.lagging else ""
        return f"{k[0]} {k[1]} {iso(k[2])}: {'; '.join(said)}{lag}"

    def state(self) -> dict:
        c = self.counts()
        return {**self.totals, "missing": c["ticks"]["missing"],
                "different": c["ticks"]["different"], "extra": c["ticks"]["extra"],
                "kinds": c, "in_flight": len(self.in_flight),
                "still_writing": len(self.still_writing),
                "retention": sum(c[kind]["retention"] for kind in KINDS),
                "digests_recomputed": self.refreshed}


def lag_buckets(primary: psycopg.Connection) -> list[Key]:
    return [(m, s, to_us(b)) for m, s, b in primary.execute(query(__package__, "lag_buckets"))]


def compare(primary: psycopg.Connection, replica: psycopg.Connection,
            since: datetime | None = None, settle: float = 0.0) -> Comparison:
    """Refresh stale digests on both servers at once, compare per day (ticks, registry,
    aggregate), then per bucket within the days that differ; then re-check what differs."""
    both = (primary, replica)
    with ThreadPoolExecutor(2) as ex:
        fresh = list(ex.map(lambda c: digests.refresh(c, since), both))
        td = list(ex.map(lambda c: digests.days(c, since), both))
        rd = list(ex.map(lambda c: rows.days(c, since), both))
        hz = list(ex.map(retained.horizons, both))
    (tp, tr), (rp, rr) = td, rd
    differing = {k for k in tp.keys() | tr.keys() if tp.get(k) != tr.get(k)}
    # A day whose stored digests are stale on both sides may look equal: look inside.
    differing |= {k for d in td for k, day in d.items() if day.stale}
    for kind in rows.ROW_KINDS:
        differing |= {k for k in rp[kind].keys() | rr[kind].keys()
                      if rp[kind].get(k) != rr[kind].get(k)}
    days = sorted(differing)
    with ThreadPoolExecutor(2) as ex:
        tb = list(ex.map(lambda c: digests.buckets(c, days, since), both))
        rb = list(ex.map(lambda c: rows.buckets(c, days, since), both))
    held = []
    for t, r in zip(tb, rb, strict=True):
        keys = t.keys() | r["registry"].keys() | r["ohlcv"].keys()
        held.append({k: Held(t.get(k), r["registry"].get(k), r["ohlcv"].get(k)) for k in keys})
    totals = {"days": len(tp.keys() | tr.keys() | _days(rp) | _days(rr)),
              "days_differing": len(days),
              "primary_buckets": sum(d.buckets for d in tp.values()),
              "primary_rows": sum(d.rows for d in tp.values()),
              "buckets": sum(d.buckets for d in tr.values()),
              "rows": sum(d.rows for d in tr.values()),
              **{f"{side}_{kind}": sum(n for n, _ in d[kind].values())
                 for side, d in (("primary", rp), ("replica", rr)) for kind in rows.ROW_KINDS}}
    refreshed = {side: {"full": f.full, "recomputed": f.recomputed, "removed": f.removed,
                        "seconds": round(f.seconds, 3)}
                 for side, f in zip(("primary", "replica"), fresh, strict=True)}
    cmp = Comparison(held[0], held[1], totals, refreshed,
                     {"primary": hz[0], "replica": hz[1]}, set(lag_buckets(primary)))
    recheck(cmp, primary, replica, settle, since)
    return cmp


def _days(d: dict) -> set:
    return {k for kind in rows.ROW_KINDS for k in d[kind]}


def _certain(k: Key, p: Held, r: Held, cmp: Comparison) -> bool:
    """Not a write in flight: the dual-write gave up on it (lag), or the replica holds as many
    ticks as the primary with other content (writers only add ticks)."""
    if k in cmp.lagging:
        return True
    return bool(p.ticks and r.ticks and p.ticks[0] == r.ticks[0] and p.ticks != r.ticks)


def recheck(cmp: Comparison, primary: psycopg.Connection, replica: psycopg.Connection,
            settle: float, since: datetime | None = None) -> None:
    """Re-read every bucket that differs (or whose stored digest is stale) on both servers —
    stale digests recomputed first, each round — until each is equal, certainly different, or
    has held still for `settle` seconds (see the module's docstring). A digest a writer marks
    stale again between the recompute and the read reads as a change: still pending."""
    first = {k: p for k in cmp.compared() if (p := cmp.problems(k))}
    if not first:
        return
    pending = set(first)
    t0 = time.monotonic()
    cap = t0 + 3 * settle
    changed = dict.fromkeys(pending, t0)
    last: dict[Key, tuple[Held, Held]] = {}
    while pending:
        keys = sorted(pending)
        with ThreadPoolExecutor(2) as ex:  # digests marked since are recomputed first
            list(ex.map(lambda c: digests.refresh(c, since), (primary, replica)))
            ps, rs = ex.map(lambda c, keys=keys: rows.state(c, keys), (primary, replica))
        cmp.lagging |= set(lag_buckets(primary)) & pending
        now = time.monotonic()
        for k in keys:
            snap = (ps.get(k, NOTHING), rs.get(k, NOTHING))
            if last.get(k, snap) != snap or any(h.stale for h in snap):
                changed[k] = now  # a digest stale right after its recompute: written just now
            last[k] = snap
            for side, h in zip((cmp.primary, cmp.replica), snap, strict=True):
                if h == NOTHING:
                    side.pop(k, None)
                else:
                    side[k] = h
            if not cmp.problems(k):
                pending.discard(k)
                if set(first[k].values()) - {"stale"}:
                    cmp.in_flight.append(k)
            elif _certain(k, *snap, cmp) or now - changed[k] >= settle:
                pending.discard(k)
            elif now >= cap:
                pending.discard(k)
                cmp.still_writing.append(k)
        if pending:
            time.sleep(POLL)
