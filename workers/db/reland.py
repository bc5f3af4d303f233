"""Re-land from the primary: write back landing objects that were lost, from the primary's ticks.

Landing is the source of truth, so nothing here invents an object: a bucket's object is written
back only when the primary's ticks of that bucket, written the way every landing writer writes
(workers/landing/store.py `to_parquet`), give exactly the bytes the registry vouches for — the
same SHA-256. Anything else (ticks that retention dropped, rows the object held that the primary
lacks, another software version's bytes) is refused and named, and the only way back is the
source files or the bucket's previous object versions.

Each bucket is handled under its exclusive lock, like every writer of a bucket object: the
registry row and the object are looked at again under it (a writer that re-landed it meanwhile
wins), the object is written with a conditional put, and the registry's recorded ETag is brought
up to date in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
import pyarrow as pa

from workers.core.errors import Failed
from workers.core.pg import require_autocommit
from workers.core.sqlfiles import query
from workers.core.ticks import TICK_SCHEMA, iso, to_dt
from workers.db.bucket_locks import xact_lock
from workers.db.landing_audit import Audit, Registered, verdict
from workers.landing.parquet import to_parquet
from workers.landing.store import Landing, sha256


@dataclass
class Relanded:
    """What `reland` did: objects written back, objects refused (and why), and the audit of
    landing afterwards (`ok` only when landing holds every registered object again)."""

    written: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (uri, why)
    after: Audit | None = None

    @property
    def ok(self) -> bool:
        return self.after is not None and self.after.ok

    @property
    def changed(self) -> bool:
        return bool(self.written)

    def summary(self) -> str:
        text = (f"re-landed {len(self.written):,} object(s) from the primary's ticks (each with "
                f"its registered SHA-256), refused {len(self.refused):,}")
        if self.refused:
            uri, why = self.refused[0]
            text += (f" (e.g. {uri}: {why}; re-ingest their source files, or restore the "
                     "objects' previous versions)")
        return f"{text}; now: {self.after.summary() if self.after else 'not audited'}"

    def details(self) -> list[str]:
        return ([f"re-landed: {u}" for u in self.written]
                + [f"refused: {u}: {why}" for u, why in self.refused]
                + (self.after.details() if self.after else []))

    def as_dict(self) -> dict:
        return {"written": self.written,
                "refused": [{"uri": u, "why": w} for u, w in self.refused],
                "after": self.after.as_dict() if self.after else None}


def primary_ticks(conn: psycopg.Connection, r: Registered) -> pa.Table:
    rows = conn.execute(query(__package__, "bucket_ticks"),
                        [r.market, r.symbol, to_dt(r.bucket_us)]).fetchall()
    cols = list(zip(*rows, strict=True)) if rows else [[] for _ in TICK_SCHEMA]
    return pa.table([pa.array(c, f.type) for c, f in zip(cols, TICK_SCHEMA, strict=True)],
                    schema=TICK_SCHEMA)


def reland(conn: psycopg.Connection, landing: Landing, lost: list[Registered],
           result: Relanded | None = None) -> Relanded:
    """Write back each lost object (missing or changed) whose bytes the primary's ticks
    reproduce. `conn`: the ingest login (reads ticks, updates the registry), autocommit."""
    require_autocommit(conn)
    out = result or Relanded()
    for r in sorted(lost, key=lambda x: (x.id)):
        key = landing.key_of(r.uri)
        with conn.transaction():
            xact_lock(conn, [r.id])
            now = conn.execute(query(__package__, "registry_objects_of"),
                               [[r.market], [r.symbol], [to_dt(r.bucket_us)]]).fetchone()
            if now is None or now[3] != r.uri or now[5] != r.sha256:
                continue  # registered anew since the audit: that writer's object stands
            stored = landing.stored(key.rsplit("/", 1)[0] + "/", key, key).get(key)
            if verdict(landing, r, key, stored) is None:
                continue  # landed again since the audit
            table = primary_ticks(conn, r)
            if not table.num_rows:  # retention dropped them (or a delete): nothing to use
                out.refused.append((r.uri, f"the primary holds no ticks of {iso(r.bucket_us)} "
                                           "any more (dropped by retention, or deleted): "
                                           "landing held the only copy"))
                continue
            got = sha256(to_parquet(table))
            if got != r.sha256:
                out.refused.append((r.uri, f"the primary's {table.num_rows:,} ticks of "
                                           f"{iso(r.bucket_us)} do not give the registered "
                                           f"bytes (SHA-256 {got[:12]}…, registered "
                                           f"{r.sha256[:12]}…)"))
                continue
            digest, _, etag = landing.write(
                key, table, r.symbol, market=r.market,
                if_match=stored.etag if stored is not None else None,
                if_absent=stored is None)
            if digest != r.sha256:  # to_parquet is deterministic: never, unless it changed
                raise Failed(f"{r.uri}: wrote SHA-256 {digest}, expected {r.sha256}")
            if etag:
                conn.execute(query(__package__, "registry_etag"),
                             [etag, r.market, r.symbol, to_dt(r.bucket_us), r.sha256])
            out.written.append(r.uri)
    return out
