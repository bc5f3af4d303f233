"""Least privilege per login AND per server (issue 27, item 8), on real servers.

Every worker login (configs.WORKER_LOGINS) × both servers: the exact table privileges on every
relation in tickstack's schemas (and every chunk of its hypertables), EXECUTE on every function
there, and CREATE on every schema, against one expected matrix. A grant anywhere that the
matrix does not list — a new table's default privileges included — fails it: add the row here
with the reason it is needed.

The database is migrated to the migration before 021 first and given a tick (so the primary
has a chunk made under the old grants), then to the end: the path an existing primary takes.
"""

from __future__ import annotations

import shutil

import psycopg
import pytest

from infra import configs
from tests.integration.db import FreshDb
from workers.db import migrate

SCHEMAS = ("landing", "market_data", "signals", "ingestion", "ops")
TABLE_PRIVS = {"SELECT": "r", "INSERT": "a", "UPDATE": "w", "DELETE": "d", "TRUNCATE": "D",
               "REFERENCES": "x", "TRIGGER": "t"}
LOGINS = sorted(configs.WORKER_LOGINS.values())
FIRST_PER_SERVER = "021_least_privilege_per_server.sql"

# What every server grants: relation -> {login: privileges (TABLE_PRIVS letters)}.
_INGEST_TABLES = {
    "ingestion.file_loads": "raw", "ingestion.replica_lag": "rawd",
    "ingestion.stream_gaps": "raw", "ingestion.stream_offsets": "raw",
    "landing.raw_blobs_5m": "raw", "market_data.btc_ohlcv_5m": "raw",
    "market_data.btc_ticks": "ra", "market_data.tick_digest_state": "rw",
    "market_data.tick_digests": "rawd",
}
_READ_ALL = {t: "r" for t in (*_INGEST_TABLES, "ops.retention_jobs", "ops.retention_runs",
                              "ops.retention_targets", "signals.btc_embeddings",
                              "signals.vector_index_builds")}


def _tables(server: str) -> dict[str, dict[str, str]]:
    m: dict[str, dict[str, str]] = {t: {} for t in (*_READ_ALL, "ops.schema_migrations")}
    for t, p in _INGEST_TABLES.items():
        m[t]["ingest_worker"] = p
    for t in _READ_ALL:
        m[t]["reader"] = "r"
    for t in ("landing.raw_blobs_5m", "market_data.btc_ohlcv_5m", "market_data.btc_ticks",
              "market_data.tick_digest_state", "market_data.tick_digests",
              "signals.vector_index_builds"):
        m[t]["embed_worker"] = "r"
    m["signals.btc_embeddings"]["embed_worker"] = "raw"
    m.update({t: {**m[t], "retention_worker": p} for t, p in {
        "landing.raw_blobs_5m": "r", "market_data.btc_ohlcv_5m": "rd",
        "market_data.tick_digests": "rw", "ops.retention_jobs": "r",
        "ops.retention_runs": "ra", "ops.retention_targets": "r",
        # Ticks: through ops.retention_drop_chunks on the primary; batched DELETE elsewhere.
        "market_data.btc_ticks": "r" if server == "primary" else "rd"}.items()})
    # replicate reads each side's retention horizons as the ingest login (sql/022).
    for t in ("ops.retention_jobs", "ops.retention_runs", "ops.retention_targets"):
        m[t]["ingest_worker"] = "r"
    if server == "replica":  # replicate rebuilds differing buckets there: ingest's + DELETE of
        # ticks, registry rows and bars (a bucket's rows the primary no longer has, sql/022)
        for t in (*_INGEST_TABLES, "ops.retention_jobs", "ops.retention_runs",
                  "ops.retention_targets"):
            rebuilt = t in ("market_data.btc_ticks", "landing.raw_blobs_5m",
                            "market_data.btc_ohlcv_5m")
            m[t]["replicate_worker"] = m[t]["ingest_worker"] + ("d" if rebuilt else "")
    else:  # backup --check audits landing against the primary's registry (sql/024)
        m["landing.raw_blobs_5m"]["backup_worker"] = "r"
    # The markets (sql/026): readable by every login that reads a table referencing them —
    # replicate where it reads tickstack's tables (the replica), backup where it reads the
    # landing registry (the primary).
    m["ingestion.markets"] = {u: "r" for u in (
        "ingest_worker", "reader", "embed_worker", "retention_worker",
        "backup_worker" if server == "primary" else "replicate_worker")}
    # The primary: replicate_worker has nothing (replicate reads it as the ingest login);
    # backup_worker has nothing else of tickstack's data on either server (pg_monitor only).
    return m


def _functions(server: str) -> dict[str, dict[str, str]]:
    embed = {"embed_worker": "X"}
    primary = server == "primary"
    return {
        "ingestion.offsets_only_forward()": {},
        "market_data.note_unmarked_tick_change()": {},
        "ops.retention_chunks(text,timestamp with time zone)":
            {"retention_worker": "X"} if primary else {},
        "ops.retention_compress_chunk(text,text)": {"retention_worker": "X"} if primary else {},
        "ops.retention_drop_chunks(text,timestamp with time zone)":
            {"retention_worker": "X"} if primary else {},
        "ops.retention_horizon(text)": {"ingest_worker": "X"} if primary else {},
        "signals.build_embedding_index(integer,text)": embed,
        "signals.drop_replaced_embedding_indexes()": embed,
        "signals.record_embedding_index_probes(text,integer,real,integer)": embed,
    }


def expected(server: str) -> dict[str, dict[str, str]]:
    return {**_tables(server), **_functions(server)}


ACTUAL_SQL = """
WITH logins AS (SELECT unnest(%(logins)s::text[]) AS u),
rels AS (
    SELECT c.oid, n.nspname || '.' || c.relname AS name, NULL::text AS parent
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = ANY(%(schemas)s) AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
)
SELECT r.name, r.parent, l.u,
       concat_ws('', CASE WHEN has_table_privilege(l.u, r.oid, 'SELECT') THEN 'r' END,
                 CASE WHEN has_table_privilege(l.u, r.oid, 'INSERT') THEN 'a' END,
                 CASE WHEN has_table_privilege(l.u, r.oid, 'UPDATE') THEN 'w' END,
                 CASE WHEN has_table_privilege(l.u, r.oid, 'DELETE') THEN 'd' END,
                 CASE WHEN has_table_privilege(l.u, r.oid, 'TRUNCATE') THEN 'D' END,
                 CASE WHEN has_table_privilege(l.u, r.oid, 'REFERENCES') THEN 'x' END,
                 CASE WHEN has_table_privilege(l.u, r.oid, 'TRIGGER') THEN 't' END)
FROM rels r CROSS JOIN logins l
"""
CHUNKS_SQL = """
SELECT format('%%I.%%I', ch.chunk_schema, ch.chunk_name)::regclass::oid,
       ch.hypertable_schema || '.' || ch.hypertable_name
FROM timescaledb_information.chunks ch WHERE ch.hypertable_schema = ANY(%(schemas)s)
"""
CHUNK_PRIVS_SQL = """
SELECT concat_ws('', CASE WHEN has_table_privilege(%(u)s, %(oid)s, 'SELECT') THEN 'r' END,
                 CASE WHEN has_table_privilege(%(u)s, %(oid)s, 'INSERT') THEN 'a' END,
                 CASE WHEN has_table_privilege(%(u)s, %(oid)s, 'UPDATE') THEN 'w' END,
                 CASE WHEN has_table_privilege(%(u)s, %(oid)s, 'DELETE') THEN 'd' END,
                 CASE WHEN has_table_privilege(%(u)s, %(oid)s, 'TRUNCATE') THEN 'D' END,
                 CASE WHEN has_table_privilege(%(u)s, %(oid)s, 'REFERENCES') THEN 'x' END,
                 CASE WHEN has_table_privilege(%(u)s, %(oid)s, 'TRIGGER') THEN 't' END)
"""
FUNCS_SQL = """
SELECT p.oid::regprocedure::text, l.u,
       CASE WHEN has_function_privilege(l.u, p.oid, 'EXECUTE') THEN 'X' ELSE '' END
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
CROSS JOIN unnest(%(logins)s::text[]) AS l(u)
WHERE n.nspname = ANY(%(schemas)s)
"""
SCHEMA_CREATE_SQL = """
SELECT n.nspname, l.u FROM pg_namespace n CROSS JOIN unnest(%(logins)s::text[]) AS l(u)
WHERE n.nspname NOT LIKE 'pg\\_%%' AND n.nspname <> 'information_schema'
  AND has_schema_privilege(l.u, n.oid, 'CREATE')
"""


def actual(conn: psycopg.Connection) -> tuple[dict[str, dict[str, str]], list[tuple]]:
    args = {"logins": LOGINS, "schemas": list(SCHEMAS)}
    got: dict[str, dict[str, str]] = {}
    for name, _, u, privs in conn.execute(ACTUAL_SQL, args):
        got.setdefault(name, {})
        if privs:
            got[name][u] = privs
    for name, u, privs in conn.execute(FUNCS_SQL, args):
        got.setdefault(name, {})
        if privs:
            got[name][u] = privs
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone():
        for oid, parent in conn.execute(CHUNKS_SQL, args).fetchall():
            # A chunk holds its hypertable's rows: it must grant exactly what the table does.
            got[f"chunk of {parent}"] = got.get(f"chunk of {parent}", {})
            for u in LOGINS:
                privs = conn.execute(CHUNK_PRIVS_SQL, {"u": u, "oid": oid}).fetchone()[0]
                if privs and privs != got[f"chunk of {parent}"].get(u, privs):
                    raise AssertionError(f"chunks of {parent} differ among themselves for {u}")
                if privs:
                    got[f"chunk of {parent}"][u] = privs
    creates = conn.execute(SCHEMA_CREATE_SQL, args).fetchall()
    return got, creates


@pytest.fixture
def sql_before_021(tmp_path):
    """The migrations as they were before least privilege per server (021 and later out)."""
    d = tmp_path / "sql"
    d.mkdir()
    for p in migrate.SQL_DIR.iterdir():
        if p.name == migrate.LEDGER_FILE or (p.suffix == ".sql" and p.name < FIRST_PER_SERVER):
            shutil.copy(p, d / p.name)
    return d


TICK = ("INSERT INTO market_data.btc_ticks (bucket_5m, market, symbol, trade_id, event_time, "
        "price, quantity, is_buyer_maker) VALUES ('2024-01-01 00:05', 'spot', 'BTCUSDT', 1, "
        "'2024-01-01 00:06', 42000, 0.5, true)")


@pytest.mark.parametrize("server", ["primary", "replica"])
def test_every_login_has_exactly_its_privileges_on_each_server(local_env, sql_before_021,
                                                               server):
    assert set(LOGINS) == set(configs.WORKER_LOGINS.values())
    db = FreshDb(local_env, server)
    try:
        logins = local_env.worker_logins()
        migrate.run(db.dsn, password=db.password, sql_dir=sql_before_021, logins=logins)
        with db.connect(user="ingest_worker",
                        password=local_env.secrets["ingest_worker"]) as c:
            c.execute(TICK)  # the primary now has a chunk made under the old grants
        migrate.run(db.dsn, password=db.password, logins=logins)
        with db.connect() as c:
            got, creates = actual(c)
    finally:
        db.drop()
    want = expected(server)
    if server == "primary":
        want["chunk of market_data.btc_ticks"] = want["market_data.btc_ticks"]
    assert creates == [], f"{server}: worker logins may create in schemas: {creates}"
    problems = [f"{server} {obj} {u}: has {got.get(obj, {}).get(u, '') or '-'}, "
                f"expected {want.get(obj, {}).get(u, '') or '-'}"
                for obj in sorted(want.keys() | got.keys()) for u in LOGINS
                if got.get(obj, {}).get(u, "") != want.get(obj, {}).get(u, "")]
    problems += [f"{server} {obj}: listed in the matrix, does not exist"
                 for obj in sorted(want.keys() - got.keys())]
    assert not problems, "\n".join(problems)


def test_primary_refuses_direct_tick_deletes_the_replica_allows_them(local_env):
    """What the matrix means for the two logins that could delete primary ticks before."""
    pw = local_env.secrets
    for server in ("primary", "replica"):
        db = FreshDb(local_env, server)
        try:
            migrate.run(db.dsn, password=db.password, logins=local_env.worker_logins())
            with db.connect(user="ingest_worker", password=pw["ingest_worker"]) as c:
                c.execute(TICK)
            for user in ("retention_worker", "replicate_worker"):
                with db.connect(user=user, password=pw[user]) as c:
                    if server == "primary":
                        with pytest.raises(psycopg.errors.InsufficientPrivilege):
                            c.execute("DELETE FROM market_data.btc_ticks")
                    else:
                        with c.transaction(force_rollback=True):
                            assert c.execute("DELETE FROM market_data.btc_ticks").rowcount == 1
        finally:
            db.drop()


def test_retention_drop_chunks_refuses_a_cutoff_that_passes_what_landing_holds(local_env):
    """The SECURITY DEFINER path is the guard itself, whatever its caller passes: the retention
    login calling ops.retention_drop_chunks directly with a hostile cut-off (the future,
    'infinity', or past ticks landing does not hold — the stream's, not compacted) drops
    nothing; a cut-off below them still works."""
    pw = local_env.secrets
    db = FreshDb(local_env, "primary")
    try:
        migrate.run(db.dsn, password=db.password, logins=local_env.worker_logins())
        with db.connect(user="ingest_worker", password=pw["ingest_worker"]) as c:
            c.execute(TICK)  # 2024-01-01 00:05: ticks without a registry row (unlanded)
        with db.connect(user="retention_worker", password=pw["retention_worker"]) as c:
            for cut in ("infinity", "2999-01-01", "2025-01-01"):
                with pytest.raises(psycopg.errors.InvalidParameterValue):
                    c.execute("SELECT ops.retention_drop_chunks('market_data.btc_ticks', %s)",
                              [cut])
                c.rollback()
            with pytest.raises(psycopg.errors.InvalidParameterValue):
                c.execute("SELECT ops.retention_drop_chunks('market_data.btc_ticks; DROP "
                          "TABLE market_data.btc_ticks', '2020-01-01')")
            c.rollback()
            c.execute("SELECT ops.retention_drop_chunks('market_data.btc_ticks', "
                      "'2023-06-01')").fetchall()
            c.commit()
        with db.connect() as c:
            assert c.execute("SELECT count(*) FROM market_data.btc_ticks").fetchone()[0] == 1
    finally:
        db.drop()
