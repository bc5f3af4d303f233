"""`workers up`: the main job, every stage in order on the configured servers, then a summary.

migrate (primary, replica) -> ingest the given files -> replicate -> embed + vector index ->
retention (dry-run, then real) -> full backup -> archive check -> one "similar windows" example.

Each stage is timed and says what it did and whether it changed anything, so a second run over
the same data reports "nothing changed". A failing stage stops the job; the stages before it
are still summarised and the report still written.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import psycopg

from workers import logs
from workers.settings import Settings

log = logs.get("up")

# What a backup is of: stored as an annotation with the backup, compared on the next run.
FINGERPRINT_SQL = """
SELECT concat_ws('/',
  (SELECT count(*) || ':' || coalesce(md5(string_agg(asset || bucket_5m::text ||
          coalesce(metadata->>'sha256', ''), ',' ORDER BY asset, bucket_5m)), '')
     FROM landing.raw_blobs_5m),
  (SELECT count(*) FROM market_data.btc_ticks),
  (SELECT count(*) || ':' || coalesce(max(updated_at)::text, '') FROM signals.btc_embeddings),
  (SELECT count(*) FROM ops.schema_migrations))
"""


class StageFailed(RuntimeError):
    def __init__(self, stage: str, message: str):
        super().__init__(f"{stage}: {message}")
        self.stage = stage


@dataclass
class Stage:
    name: str
    did: str = ""
    seconds: float = 0.0
    changed: bool = False
    ok: bool = True
    data: dict = field(default_factory=dict)


@dataclass
class Run:
    stages: list[Stage] = field(default_factory=list)
    example: dict | None = None  # the "similar windows" query behind the report's figure
    report: str | None = None

    @property
    def changed(self) -> bool:
        return any(s.changed for s in self.stages)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.stages)

    @contextmanager
    def stage(self, name: str) -> Iterator[Stage]:
        st = Stage(name)
        self.stages.append(st)
        t0 = time.monotonic()
        try:
            yield st
        except StageFailed:
            st.ok = False
            raise
        except psycopg.Error as e:
            st.ok, st.did = False, f"database error: {str(e).strip()}"
            raise StageFailed(name, st.did) from None
        except Exception as e:  # a worker's own error: name the stage, not a traceback
            st.ok, st.did = False, f"{type(e).__name__}: {e}"
            raise StageFailed(name, st.did) from None
        finally:
            st.seconds = time.monotonic() - t0
            log.debug("stage", stage=name, ok=st.ok, changed=st.changed,
                     seconds=round(st.seconds, 2), did=st.did)


# --- stages ---------------------------------------------------------------------------------

def migrate(run: Run, s: Settings) -> None:
    from workers import migrate as m

    with run.stage("migrate") as st:
        parts = []
        logins = m.load_logins(s.worker_logins_file)
        for name, dsn in s.servers():
            r = m.run(dsn, logins=logins)
            st.changed |= bool(r.applied)
            what = f"applied {len(r.applied)}" if r.applied else "up to date"
            flavour = "TimescaleDB" if r.capabilities["timescaledb"] else "plain PG"
            parts.append(f"{name}: {what} ({flavour})")
        st.did = "; ".join(parts)


def ingest(run: Run, s: Settings, paths: list[str]) -> None:
    from workers import ingest as ing
    from workers.landing import Landing
    from workers.s3 import client

    with run.stage("ingest") as st:
        from workers.replica import ReplicaWriter

        landing = Landing(client(s), s.landing_bucket)
        tot = Counter()
        reasons = Counter()
        replica = ReplicaWriter.from_settings(s)  # best-effort dual-write, as `workers ingest`
        try:
            with psycopg.connect(s.dsn_for("ingest")) as conn:
                for p in paths:
                    try:
                        r = ing.ingest_file(conn, landing, p, block_bytes=s.ingest_block_bytes,
                                            flush_rows=s.ingest_flush_rows, replica=replica)
                    except ing.BadFile as e:
                        raise StageFailed("ingest", str(e)) from None
                    d = r.as_dict()
                    for k in ("rows_read", "accepted", "inserted", "duplicates", "quarantined",
                              "buckets_landed", "buckets_unchanged"):
                        tot[k] += d[k]
                    reasons.update(d["quarantined_by_reason"])
        finally:
            if replica is not None:
                replica.close()
        st.changed = bool(tot["inserted"] or tot["buckets_landed"])
        st.data = {**tot, "files": len(paths), "quarantined_by_reason": dict(reasons)}
        st.did = (f"{len(paths)} file(s): {tot['rows_read']:,} rows read, {tot['accepted']:,} "
                  f"accepted, {tot['quarantined']:,} quarantined; {tot['inserted']:,} new ticks; "
                  f"{tot['buckets_landed']} buckets landed, {tot['buckets_unchanged']} "
                  "already in landing unchanged")
        if replica is not None:
            st.data["replica"] = dict(replica.stats)
            st.did += "; replica dual-write batches: " + (", ".join(
                f"{v} {k}" for k, v in sorted(replica.stats.items())) or "none needed")


def replicate(run: Run, s: Settings) -> None:
    try:
        from workers import replicate as rep
    except ImportError:  # this version has no replica catch-up yet
        return
    with run.stage("replicate") as st:
        if not s.has_replica:
            st.did = "no replica configured (TICKSTACK_REPLICA_DSN is empty)"
            return
        r = rep.run_for_main_job(s)
        st.changed, st.did, st.data = r["changed"], r["did"], r
        if r.get("differing"):
            raise StageFailed("replicate", r["did"])


def embed(run: Run, s: Settings) -> None:
    from workers import embed as emb

    with run.stage("embed") as st, psycopg.connect(s.dsn_for("embed")) as conn:
        r = emb.run(conn, index_min_rows=s.vector_index_min_rows).as_dict()
        st.changed = bool(r["embedded"] or r["labels_updated"])
        st.data = r
        st.did = (f"{r['embedded']} windows embedded, {r['skipped_few_trades']} skipped (too "
                  f"few trades), {r['labels_updated']} label snapshots updated; index: "
                  f"{r['index']}")


def retention(run: Run, s: Settings) -> None:
    from workers import retention as ret

    targets = s.retention_targets()
    for dry in (True, False):
        with run.stage("retention (dry-run)" if dry else "retention") as st:
            parts, bad = [], []
            for name, dsn in targets:
                with psycopg.connect(dsn) as conn:
                    results = ret.run(conn, dry_run=dry)
                    sizes = {} if dry else _compressed_sizes(conn, results)
                for r in results:
                    if r.outcome in ("rejected", "failed"):
                        bad.append(f"{name} {r.job}: {r.outcome} — {r.reason}")
                    acted = r.rows or r.chunks
                    st.changed |= bool(acted) and not dry
                    skipped = [a["skipped"] for a in r.actions if "skipped" in a]
                    done = [_retention_action(a, dry, sizes.get(r.table)) for a in r.actions
                            if a.get("rows") or a.get("chunks")]
                    parts.append(f"{name} {r.job}: {r.outcome}"
                                 + (f" ({'; '.join(done)})" if done else "")
                                 + (f" ({'; '.join(skipped)})" if skipped else ""))
            st.did = "; ".join(parts)
            if bad:
                raise StageFailed(st.name, "; ".join(bad))


_VERBS = {"compress": ("would compress", "compressed"), "drop_chunks": ("would drop", "dropped"),
          "delete": ("would delete", "deleted")}


def _retention_action(a: dict, dry: bool, size: str | None) -> str:
    """'compressed 1 chunk(s), 183,355 rows (licensed TimescaleDB, 35.1 -> 4.8 MB)'."""
    what = _VERBS.get(a["action"], (a["action"], a["action"]))[0 if dry else 1]
    text = what + (f" {a['chunks']} chunk(s)," if a.get("chunks") else "") + \
        f" {a.get('rows', 0):,} rows"
    if a["action"] == "compress":
        text += " (licensed TimescaleDB" + (f", {size})" if size else ")")
    return text


def _compressed_sizes(conn, results) -> dict[str, str]:
    """Before -> after compression of each table retention compressed: what it saved."""
    out = {}
    for r in results:
        if any(a["action"] == "compress" and a.get("chunks") for a in r.actions):
            try:
                b, a = conn.execute(
                    "SELECT sum(before_compression_total_bytes)::float8, "
                    "sum(after_compression_total_bytes)::float8 "
                    "FROM hypertable_compression_stats(%s)",
                    [r.table]).fetchone()
            except psycopg.Error:  # stats need more than the retention login may read
                continue
            if b and a:
                out[r.table] = f"{b / 1e6:.1f} -> {a / 1e6:.1f} MB"
    return out


def backup(run: Run, s: Settings, *, force: bool = False) -> None:
    from workers import backup as bk
    from workers.backup import Tool

    if not s.pgbackrest_config:
        with run.stage("backup") as st:
            st.did = "skipped: TICKSTACK_PGBACKREST_CONFIG is not set"
        return
    tool = Tool.from_settings(s)
    with run.stage("backup") as st:
        with psycopg.connect(s.primary_dsn.get_secret_value()) as conn:
            fp = hashlib.sha256(conn.execute(FINGERPRINT_SQL).fetchone()[0].encode()
                                ).hexdigest()[:32]
        bk.ensure_stanza(tool)
        last = next((b for b in reversed(tool.info().get("backup") or [])
                     if b.get("type") == "full"), None)
        last_fp = ((last or {}).get("annotation") or {}).get("tickstack-data")
        if last_fp == fp and not force:
            st.did = (f"up to date: full backup {last['label']} already holds this data "
                      "(no new landing objects, ticks or embeddings since)")
            st.data = {"label": last["label"], "skipped": True}
        else:
            r = bk.backup(tool, "full", annotations={"tickstack-data": fp})
            st.changed, st.data = True, r
            st.did = (f"full {r['label']}: {(r['size_bytes'] or 0) / 2**20:.0f} MB database, "
                      f"{(r['repo_bytes'] or 0) / 2**20:.1f} MB stored, {r['backups_kept']} "
                      "kept")
    with run.stage("archive check") as st, \
            psycopg.connect(s.primary_dsn.get_secret_value()) as conn:
        c = bk.check(conn, tool, stall_seconds=s.archive_stall_seconds).as_dict()
        st.data = c
        a = c["archiver"]
        st.did = (f"{'healthy' if c['healthy'] else 'UNHEALTHY'}: {a['archived_count']} WAL "
                  f"archived, {a['failed_count']} failed, {c['ready_segments']} waiting"
                  + (f"; repository: {c['repository']['backups']} backups"
                     if c["repository"] else ""))
        if not c["healthy"]:
            raise StageFailed("archive check", "; ".join(c["problems"]))


def similar_example(run: Run, s: Settings, symbol: str = "BTCUSDT", k: int = 5) -> None:
    """The newest window whose next hour is known: the report shows it beside its neighbours."""
    from workers import similar as sim

    with run.stage("similar") as st, psycopg.connect(s.dsn_for("reader")) as conn:
        row = conn.execute(
            "SELECT max(bucket) FROM signals.btc_embeddings WHERE symbol = %s "
            "AND label_snapshot ? 'fwd_ret_60m'", [symbol]).fetchone()
        if row[0] is None:
            st.did = "no embedded window with a known next hour yet"
            return
        r = sim.query(conn, symbol=symbol, at=row[0] + timedelta(seconds=1), k=k)
        run.example = r
        m = r["means"]["fwd_ret_60m"]
        st.did = (f"{len(r['neighbours'])} windows most like {r['window'][:16]} "
                  f"(probes {r['probes'] or 'exact'}); next hour: neighbours "
                  f"{_pct(m['neighbours'])} vs all {_pct(m['unconditional'])}")


def _pct(x) -> str:
    return "-" if x is None else f"{x * 100:+.3f}%"


def run_all(s: Settings, paths: list[str], *, on_stage: Callable[[Stage], None] | None = None,
            force_backup: bool = False) -> tuple[Run, StageFailed | None]:
    run = Run()
    steps = [lambda: migrate(run, s), lambda: ingest(run, s, paths), lambda: replicate(run, s),
             lambda: embed(run, s), lambda: retention(run, s),
             lambda: backup(run, s, force=force_backup), lambda: similar_example(run, s)]
    failure = None
    for step in steps:
        n = len(run.stages)
        try:
            step()
        except StageFailed as e:
            failure = e
        finally:
            if on_stage:
                for st in run.stages[n:]:
                    on_stage(st)
        if failure:
            break
    return run, failure
