"""How far back retention removes rows on one server: what `replicate` must not count as a
difference, nor rebuild (a rebuilt bucket retention drops again is churn, and one rebuilt after
retention ran on one side only would differ until its next run).

Per table retention manages, the later of: the cutoff the latest real run recorded for its drop
(`ops.retention_runs`: drop_chunks on TimescaleDB, batched delete on plain PostgreSQL), and where
an enabled job's `drop_after` puts the cutoff now (`ops.retention_jobs`) — the second also covers
a run in progress, whose audit row is written after its drop commits. A job whose interval the
retention worker would reject (not an interval, outside [1 day, 100 years]) drops nothing and
moves nothing here.
"""

from __future__ import annotations

from datetime import datetime

import psycopg

from workers.core import logs
from workers.core.sqlfiles import query

log = logs.get("replicate")

TABLE_OF = {"ticks": "market_data.btc_ticks", "ohlcv": "market_data.btc_ohlcv_5m"}


def horizons(conn: psycopg.Connection) -> dict[str, datetime]:
    """{table: cutoff}: rows of `table` older than the cutoff may be gone here by design."""
    out: dict[str, datetime] = {t: c for t, c in conn.execute(
        query(__package__, "retention_horizons")) if c is not None}
    for job, table, text in conn.execute(query(__package__, "retention_policies")).fetchall():
        try:
            with conn.transaction():
                cut = conn.execute(query(__package__, "policy_cutoff"), {"i": text}).fetchone()[0]
        except psycopg.DataError as e:  # retention rejects this job: it drops nothing
            log.info("retention job ignored: not an interval", job=job,
                     error=e.diag.message_primary)
            continue
        if cut is not None and (table not in out or cut > out[table]):
            out[table] = cut
    return out
