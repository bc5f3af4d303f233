"""Schema and migrations on real clusters: primary (TimescaleDB) and replica (plain + pgvector)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest

from tests.conftest import REPO
from tests.integration.db import FreshDb
from workers.db import migrate

SNAPSHOTS = Path(__file__).parent / "snapshots"
N_FILES = len(migrate.discover())


@pytest.fixture
def primary_db(local_env):
    db = FreshDb(local_env, "primary")
    yield db
    db.drop()


@pytest.fixture
def replica_db(local_env):
    db = FreshDb(local_env, "replica")
    yield db
    db.drop()


@pytest.fixture
def sql_copy(tmp_path):
    d = tmp_path / "sql"
    shutil.copytree(migrate.SQL_DIR, d)
    return d


def logins(env) -> dict[str, tuple[str, str]]:
    return env.worker_logins()


def ledger(db: FreshDb) -> list[tuple[str, str]]:
    with db.connect() as c:
        return c.execute("SELECT filename, sha256 FROM ops.schema_migrations "
                         "ORDER BY filename").fetchall()


def test_fresh_apply_on_primary_builds_hypertable(primary_db):
    r = migrate.run(primary_db.dsn, password=primary_db.password)
    assert len(r.applied) == N_FILES and r.capabilities["timescaledb"]
    with primary_db.connect() as c:
        dims = c.execute(
            "SELECT column_name, time_interval FROM timescaledb_information.dimensions "
            "WHERE hypertable_schema = 'market_data' AND hypertable_name = 'btc_ticks'"
        ).fetchall()
        assert [(d[0], d[1].days) for d in dims] == [("bucket_5m", 7)]
        idx = {r[0] for r in c.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'market_data' "
            "AND tablename = 'btc_ticks'")}
        # PK + (symbol, event_time DESC); no redundant default time index, no BRIN.
        assert idx == {"btc_ticks_pkey", "btc_ticks_market_symbol_time_idx"}
        lic = c.execute("SHOW timescaledb.license").fetchone()[0]
        compressed = c.execute(
            "SELECT compression_enabled FROM timescaledb_information.hypertables "
            "WHERE hypertable_name = 'btc_ticks'").fetchone()[0]
        assert compressed == (lic == "timescale")
        caps = c.execute("SELECT capabilities FROM ops.schema_migrations "
                         "ORDER BY filename DESC LIMIT 1").fetchone()[0]
        assert caps["timescaledb"] and caps["timescaledb_license"] == lic
        owner = c.execute("SELECT tableowner FROM pg_tables WHERE schemaname = 'market_data' "
                          "AND tablename = 'btc_ticks'").fetchone()[0]
        assert owner == "tickstack_migrator"


def test_fresh_apply_on_replica_builds_plain_table(replica_db):
    r = migrate.run(replica_db.dsn, password=replica_db.password)
    assert len(r.applied) == N_FILES
    assert r.capabilities["timescaledb"] is None and r.capabilities["vector"]
    with replica_db.connect() as c:
        idx = dict(c.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'market_data' "
            "AND tablename = 'btc_ticks'").fetchall())
        assert "USING brin (bucket_5m)" in idx["btc_ticks_bucket_brin"]
        assert c.execute("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"
                         ).fetchone()[0] == 0


def test_second_run_applies_nothing(primary_db):
    migrate.run(primary_db.dsn, password=primary_db.password)
    before = ledger(primary_db)
    r = migrate.run(primary_db.dsn, password=primary_db.password)
    assert r.applied == [] and len(r.already) == N_FILES
    assert ledger(primary_db) == before


def test_concurrent_runners_leave_an_exact_ledger(primary_db):
    results, errors = [], []

    def one():
        try:
            results.append(migrate.run(primary_db.dsn, password=primary_db.password))
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert sorted(len(r.applied) for r in results) == [0, 0, N_FILES]
    names = [n for n, _ in ledger(primary_db)]
    assert names == sorted({m.name for m in migrate.discover()})


def test_edited_applied_file_is_refused(primary_db, sql_copy):
    migrate.run(primary_db.dsn, password=primary_db.password, sql_dir=sql_copy)
    target = sql_copy / "004_landing.sql"
    old_sha = migrate.Migration.load(target).sha256
    target.write_text(target.read_text() + "\n-- edited\n")
    (sql_copy / "999_new.sql").write_text("CREATE TABLE ops.should_not_exist (x int);")
    with pytest.raises(migrate.MigrationError) as e:
        migrate.run(primary_db.dsn, password=primary_db.password, sql_dir=sql_copy)
    msg = str(e.value)
    assert "004_landing.sql" in msg and old_sha in msg
    assert migrate.Migration.load(target).sha256 in msg
    with primary_db.connect() as c:
        assert c.execute("SELECT to_regclass('ops.should_not_exist')").fetchone()[0] is None


def test_deleted_applied_file_is_refused(primary_db, sql_copy):
    migrate.run(primary_db.dsn, password=primary_db.password, sql_dir=sql_copy)
    (sql_copy / "009_grants.sql").unlink()
    with pytest.raises(migrate.MigrationError, match="009_grants.sql: applied .* file is gone"):
        migrate.run(primary_db.dsn, password=primary_db.password, sql_dir=sql_copy)


def test_failing_migration_rolls_back_and_names_file_and_line(primary_db, sql_copy):
    migrate.run(primary_db.dsn, password=primary_db.password, sql_dir=sql_copy)
    before = ledger(primary_db)
    (sql_copy / "100_bad.sql").write_text(
        "CREATE TABLE ops.half_done (x int);\n"
        "INSERT INTO ops.half_done VALUES (1);\n"
        "SELECT no_such_column FROM ops.half_done;\n")
    with pytest.raises(migrate.MigrationError) as e:
        migrate.run(primary_db.dsn, password=primary_db.password, sql_dir=sql_copy)
    assert "100_bad.sql at line 3" in str(e.value)
    assert ledger(primary_db) == before
    with primary_db.connect() as c:
        assert c.execute("SELECT to_regclass('ops.half_done')").fetchone()[0] is None


def test_non_transactional_file(primary_db, sql_copy):
    (sql_copy / "100_concurrent.sql").write_text(
        "-- tickstack: no-transaction\n"
        "CREATE INDEX CONCURRENTLY ticks_price_idx ON market_data.btc_ohlcv_5m (close)\n")
    r = migrate.run(primary_db.dsn, password=primary_db.password, sql_dir=sql_copy)
    assert "100_concurrent.sql" in r.applied
    with primary_db.connect() as c:
        assert c.execute("SELECT to_regclass('market_data.ticks_price_idx')").fetchone()[0]


def test_role_boundaries(local_env, primary_db):
    migrate.run(primary_db.dsn, password=primary_db.password, logins=logins(local_env))
    pw = local_env.secrets

    def as_user(user):
        return primary_db.connect(user=user, password=pw[user], autocommit=True)

    tick = ("INSERT INTO market_data.btc_ticks (bucket_5m, market, symbol, trade_id, event_time, "
            "price, quantity, is_buyer_maker) VALUES ('2024-01-01 00:05', 'spot', 'BTCUSDT', 1, "
            "'2024-01-01 00:06', 42000, 0.5, true)")
    with as_user("ingest_worker") as c:
        c.execute(tick)  # ingest may insert
        for bad in ("DROP TABLE market_data.btc_ticks", "DELETE FROM market_data.btc_ticks",
                    "CREATE TABLE market_data.x (i int)", "TRUNCATE market_data.btc_ticks",
                    "UPDATE market_data.btc_ticks SET price = 1"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(bad)
    with as_user("reader") as c:
        assert c.execute("SELECT count(*) FROM market_data.btc_ticks").fetchone()[0] == 1
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute(tick.replace(", 1, ", ", 2, "))
    with as_user("retention_worker") as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute(tick.replace(", 1, ", ", 3, "))
        # On the primary old ticks go only through ops.retention_drop_chunks (sql/021);
        # tests/integration/test_roles_per_server.py holds every login's rights per server.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("DELETE FROM market_data.btc_ticks")
    with as_user("embed_worker") as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute(tick.replace(", 1, ", ", 4, "))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("DELETE FROM signals.btc_embeddings")


def test_bucket_check_and_offsets_only_forward(primary_db):
    migrate.run(primary_db.dsn, password=primary_db.password)
    with primary_db.connect(autocommit=True) as c:
        with pytest.raises(psycopg.errors.CheckViolation):
            c.execute("INSERT INTO market_data.btc_ticks (bucket_5m, market, symbol, trade_id, "
                      "event_time, price, quantity, is_buyer_maker) VALUES ('2024-01-01 00:00', "
                      "'spot', 'BTCUSDT', 1, '2024-01-01 00:06', 1, 1, true)")
        c.execute("INSERT INTO ingestion.stream_offsets (source, market, symbol, last_trade_id, "
                  "last_event_time) VALUES ('s', 'spot', 'BTCUSDT', 10, now())")
        with pytest.raises(psycopg.errors.CheckViolation):
            c.execute("UPDATE ingestion.stream_offsets SET last_trade_id = 9")
        with pytest.raises(psycopg.errors.CheckViolation):
            c.execute("INSERT INTO ops.retention_jobs (job_name, hypertable, policy) VALUES "
                      "('x', 'market_data.btc_ticks', '{\"drop_after\": 90}')")


CATALOGUE_SQL = """
SELECT json_build_object(
  'columns', (SELECT json_agg(json_build_array(table_schema, table_name, column_name,
                  CASE WHEN data_type = 'USER-DEFINED' THEN udt_name ELSE data_type END,
                  numeric_precision, numeric_scale, is_nullable)
              ORDER BY table_schema, table_name, ordinal_position)
              FROM information_schema.columns WHERE table_schema = ANY(%(s)s)),
  'constraints', (SELECT json_agg(json_build_array(n.nspname, cl.relname, co.conname,
                  co.contype, pg_get_constraintdef(co.oid))
                  ORDER BY n.nspname, cl.relname, co.conname)
                  FROM pg_constraint co JOIN pg_class cl ON cl.oid = co.conrelid
                  JOIN pg_namespace n ON n.oid = cl.relnamespace WHERE n.nspname = ANY(%(s)s)
                  -- NOT NULL is in 'columns' (is_nullable); newer majors also list it here.
                  AND co.contype <> 'n'),
  'indexes', (SELECT json_agg(json_build_array(schemaname, tablename, indexname, indexdef)
              ORDER BY schemaname, tablename, indexname)
              FROM pg_indexes WHERE schemaname = ANY(%(s)s)))
"""
SCHEMAS = ["landing", "market_data", "signals", "ingestion", "ops"]


@pytest.mark.parametrize("cluster", ["primary", "replica"])
def test_schema_matches_checked_in_catalogue(local_env, cluster):
    db = FreshDb(local_env, cluster)
    try:
        migrate.run(db.dsn, password=db.password)
        with db.connect() as c:
            cat = c.execute(CATALOGUE_SQL, {"s": SCHEMAS}).fetchone()[0]
    finally:
        db.drop()
    cat = json.loads(json.dumps(cat))
    snap = SNAPSHOTS / f"catalogue_{cluster}.json"
    if os.environ.get("TICKSTACK_UPDATE_SNAPSHOTS") == "1":
        snap.parent.mkdir(exist_ok=True)
        snap.write_text(json.dumps(cat, indent=1) + "\n")
        pytest.fail(f"snapshot {snap.name} rewritten; review the diff and rerun without "
                    "TICKSTACK_UPDATE_SNAPSHOTS")
    assert snap.exists(), f"{snap} missing: run with TICKSTACK_UPDATE_SNAPSHOTS=1 once"
    assert cat == json.loads(snap.read_text()), (
        f"schema differs from {snap.name}: if intended, regenerate with "
        "TICKSTACK_UPDATE_SNAPSHOTS=1 and commit the diff")


def test_cli_migrate_status_and_refusal(local_env, primary_db, sql_copy):
    env = {**os.environ, "TICKSTACK_PRIMARY_DSN": primary_db.dsn, "TICKSTACK_REPLICA_DSN": "",
           "PGPASSWORD": primary_db.password, "TICKSTACK_LOG_FORMAT": "json"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "workers", "migrate", *args], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=120)

    r = cli("--status")
    assert r.returncode == 0, r.stderr
    assert f"0 applied, {N_FILES} pending" in r.stdout
    r = cli()
    assert r.returncode == 0, r.stderr
    assert f"applied {N_FILES}" in r.stdout
    r = cli()
    assert "nothing applied" in r.stdout
    with primary_db.connect(autocommit=True) as c:
        c.execute("UPDATE ops.schema_migrations SET sha256 = repeat('0', 64) "
                  "WHERE filename = '005_market_data.sql'")
    r = cli()
    assert r.returncode == 1
    assert "005_market_data.sql: changed after it was applied" in r.stderr
    bad = {**env, "TICKSTACK_PRIMARY_DSN": "postgresql://postgres@127.0.0.1:1/none"}
    r = subprocess.run([sys.executable, "-m", "workers", "migrate"], cwd=REPO, env=bad,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "migrate primary:" in r.stderr and "Traceback" not in r.stderr


def test_worker_passwords_never_reach_the_server_log(local_env, primary_db):
    """Issue 21 #11: logins are created and changed with a client-side SCRAM verifier, so
    neither log_statement = all nor a failed ALTER ROLE (lock timeout) logs the password."""
    import secrets
    import uuid

    from psycopg.conninfo import make_conninfo

    user, password = f"pwtest_{uuid.uuid4().hex[:10]}", secrets.token_urlsafe(24)
    logins = {"tickstack_reader": (user, password)}
    log = local_env.primary.log
    start = log.stat().st_size
    logged_all = make_conninfo(primary_db.dsn, options="-c log_statement=all")
    migrate.run(logged_all, password=primary_db.password, logins=logins)  # CREATE ROLE
    migrate.run(logged_all, password=primary_db.password, logins=logins)  # ALTER ROLE
    with primary_db.connect() as holder:  # holds the role's row until rolled back
        holder.autocommit = False
        holder.execute(f'ALTER ROLE "{user}" CONNECTION LIMIT 5')
        with pytest.raises(migrate.MigrationError, match=f"worker login {user}.*lock_timeout"):
            # (the connection's own lock_timeout bounds it even where migrate sets none)
            migrate.run(make_conninfo(primary_db.dsn, options="-c lock_timeout=300ms"),
                        password=primary_db.password, logins=logins, lock_timeout="300ms")
        holder.rollback()
    # The failed statement and every logged one reached the log, with the verifier only.
    text = log.read_bytes()[start:].decode(errors="replace")
    assert "lock timeout" in text and f'ROLE "{user}" LOGIN PASSWORD' in text
    assert text.count("SCRAM-SHA-256$4096:") >= 3
    assert password not in text
    # The login works with the password after all of it.
    with primary_db.connect(user=user, password=password) as c:
        assert c.execute("SELECT current_user").fetchone()[0] == user
    with primary_db.connect() as c:
        c.execute(f'DROP ROLE "{user}"')
