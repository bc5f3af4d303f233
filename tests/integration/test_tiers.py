"""The three capability tiers, each on a real server, with the same data and the same jobs:

* licensed TimescaleDB (the default, as in production): the session's primary;
* Apache-only TimescaleDB: a throwaway cluster of the same build with `timescaledb.license =
  apache` (what Debian's own TimescaleDB package is, and what a licence change would give);
* plain PostgreSQL + pgvector: the session's replica (what Amazon RDS is).

Migrations, retention and vector search detect what the server can do; nothing assumes it.
"""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from infra import configs
from infra.local.postgres import Cluster
from infra.local.procs import free_port
from tests.conftest import make_state_dir
from tests.integration.pipeline import Stack
from tests.integration.test_ingest_bad_input import write
from tests.integration.test_retention import NOW, trades_over
from workers.db import migrate
from workers.db.ingest import ingest_file
from workers.db.migrate import SQL_DIR
from workers.ops import retention
from workers.ops.retention_actions import Delete, DropChunks

TIERS = ("licensed", "apache", "plain")
# The migration that turns compression on for a database first migrated without the licence.
UPGRADE = "016_compression_after_licence_upgrade.sql"


def cluster_conf(c: Cluster, licence: str, tls) -> str:
    """The renderer's primary settings; no WAL archiving (a throwaway cluster has no stanza).
    TLS with the local environment's server certificate (it names the host, not a port)."""
    extra = {"archive_mode": "off"}
    if licence == "apache":
        extra["timescaledb.license"] = "apache"
    return configs.postgres_conf_text(configs.postgres_conf(
        role="primary", pgbackrest_config="/nonexistent/pgbackrest.conf",
        tuning=configs.PgTuning(extra=extra), listen_addresses="127.0.0.1", port=c.port,
        socket_dir=str(c.socket_dir), tls=tls))


@pytest.fixture(scope="module")
def apache_env(local_env):
    """The session's environment, with an Apache-only primary in place of the licensed one."""
    root = make_state_dir("tickstack-apache-")
    c = Cluster("apache", root / "apache", free_port(), root / "run",
                local_env.secrets["postgres_password"])
    try:
        c.init()
        c.write_conf(cluster_conf(c, "apache", local_env.tls.server()))
        c.start()
        yield SimpleNamespace(primary=c, replica=local_env.replica, secrets=local_env.secrets,
                              moto=local_env.moto, worker_logins=local_env.worker_logins)
    finally:
        try:
            c.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


def tier_stack(tier: str, local_env, apache_env) -> Stack:
    if tier == "licensed":
        return Stack(local_env, "primary")
    if tier == "apache":
        return Stack(apache_env, "primary")
    return Stack(local_env, "replica")


@pytest.fixture(params=TIERS, scope="module")
def tier(request, local_env, apache_env, tmp_path_factory):
    """One tier's database with a trade a day over 120 days (7-day chunks), for the module:
    the layout test reads it, then the retention test changes it."""
    s = tier_stack(request.param, local_env, apache_env)
    p = write(tmp_path_factory.mktemp(request.param), trades_over(120, every_hours=24),
              name=f"BTCUSDT-trades-{request.param}.csv")
    with s.ingest_conn() as conn:
        ingest_file(conn, s.landing(), str(p))
    with s.admin() as c:
        c.execute("UPDATE ops.retention_jobs SET enabled = false")
        c.execute("INSERT INTO ops.retention_jobs (job_name, hypertable, policy) VALUES "
                  "('ticks', 'market_data.btc_ticks', "
                  "'{\"compress_after\": \"30 days\", \"drop_after\": \"90 days\"}')")
    yield request.param, s
    s.close()


def _layout(s: Stack) -> tuple:
    with s.admin() as c:
        caps = migrate.capabilities(c)
        hyper = c.execute("SELECT to_regclass('timescaledb_information.hypertables') IS NOT NULL"
                          ).fetchone()[0] and c.execute(
            "SELECT compression_enabled FROM timescaledb_information.hypertables "
            "WHERE hypertable_name = 'btc_ticks'").fetchone()
        brin = c.execute("SELECT count(*) FROM pg_indexes WHERE indexname = "
                         "'btc_ticks_bucket_brin'").fetchone()[0]
        cos = c.execute("SELECT '[1,0,0]'::vector <=> '[0,1,0]'::vector").fetchone()[0]
    return caps, hyper, brin, cos


def test_each_tier_is_detected_and_laid_out_for_what_it_can_do(tier):
    name, s = tier
    caps, hyper, brin, cos = _layout(s)
    assert caps["vector"] and cos == 1.0  # pgvector everywhere
    if name == "plain":
        assert caps["timescaledb"] is None and not hyper and brin == 1
    else:
        assert caps["timescaledb"] and brin == 0
        assert caps["timescaledb_license"] == ("timescale" if name == "licensed" else "apache")
        assert hyper == (name == "licensed",)  # a hypertable; compressed only where licensed


def test_retention_does_what_each_tier_can(tier):
    name, s = tier
    cutoff = NOW - timedelta(days=90)
    kept = [r for r in s.checksums() if r[0] >= cutoff]
    with s.admin() as c:
        n_kept = c.execute("SELECT count(*) FROM market_data.btc_ticks WHERE bucket_5m >= %s",
                           [cutoff]).fetchone()[0]
    with s.db.connect(user="retention_worker",
                      password=s.env.secrets["retention_worker"]) as conn:
        [res] = retention.run(conn, now=NOW)
    assert res.outcome == "applied", res.as_dict()
    drop, compress = res.actions
    if name == "plain":
        assert isinstance(drop, Delete) and drop.deleted > 0
        assert compress.as_dict() == {"action": "compress", "skipped": "not a hypertable here"}
    else:
        assert isinstance(drop, DropChunks) and drop.chunks > 0
    if name == "apache":
        assert compress.skipped == "compression unavailable (timescaledb.license = apache)"
    if name == "licensed":
        assert compress.chunks > 0 and "skipped" not in compress.as_dict()
        with s.admin() as c:
            n_compressed = c.execute(
                "SELECT count(*) FROM timescaledb_information.chunks "
                "WHERE hypertable_name = 'btc_ticks' AND is_compressed").fetchone()[0]
        assert n_compressed == compress.chunks
    # Whatever the tier did, the rows it keeps read back the same (compressed or not), and
    # nothing older is left but what shares a chunk with kept rows (whole chunks are dropped).
    assert [r for r in s.checksums() if r[0] >= cutoff] == kept
    with s.admin() as c:
        assert c.execute("SELECT count(*) FROM market_data.btc_ticks WHERE bucket_5m >= %s",
                         [cutoff]).fetchone()[0] == n_kept
        oldest = c.execute("SELECT min(bucket_5m) FROM market_data.btc_ticks").fetchone()[0]
    if name == "plain":
        assert oldest >= cutoff
    else:
        assert cutoff - timedelta(days=7) < oldest  # within the chunk that reaches the cutoff


def test_the_apache_tier_refuses_compression_itself(apache_env):
    """The licence is enforced by the server, not just by tickstack's detection."""
    s = Stack(apache_env, "primary")
    try:
        with s.admin() as c:
            c.execute("CREATE TABLE t (ts timestamptz NOT NULL)")
            c.execute("SELECT create_hypertable('t', by_range('ts'))")
            with pytest.raises(Exception, match="(?i)licen|not supported"):
                c.execute("ALTER TABLE t SET (timescaledb.compress)")
    finally:
        s.close()


def test_a_database_migrated_apache_only_gets_compression_once_licensed(local_env, tmp_path):
    """Migrations 001-013 on the Apache-only tier (no compression configured), the same cluster
    restarted licensed, then `migrate`: the newer files apply and 016 configures compression
    (by market and symbol); a second run applies nothing."""
    root = make_state_dir("tickstack-relicence-")
    c = Cluster("relicence", root / "pg", free_port(), root / "run",
                local_env.secrets["postgres_password"])
    old_sql = tmp_path / "sql"
    old_sql.mkdir()
    for f in SQL_DIR.glob("*.sql"):
        if f.name == "_ledger.sql" or f.name < UPGRADE:
            shutil.copy(f, old_sql / f.name)
    env = SimpleNamespace(primary=c, replica=local_env.replica, secrets=local_env.secrets,
                          moto=local_env.moto, worker_logins=local_env.worker_logins)
    try:
        c.init()
        c.write_conf(cluster_conf(c, "apache", local_env.tls.server()))
        c.start()
        s = _bare_stack(env, old_sql)
        assert _compression_enabled(s) is False
        c.stop()
        c.write_conf(cluster_conf(c, "timescale", local_env.tls.server()))
        c.start()
        res = migrate.run(s.db.dsn, password=s.db.password)
        assert res.applied == [p.name for p in sorted(SQL_DIR.glob("*.sql"))
                               if p.name[:3].isdigit() and p.name >= UPGRADE]
        assert res.capabilities["timescaledb_license"] == "timescale"
        assert _compression_enabled(s) is True
        assert migrate.run(s.db.dsn, password=s.db.password).applied == []
    finally:
        try:
            c.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


def _bare_stack(env, sql_dir: Path):
    from tests.integration.db import FreshDb

    db = FreshDb(env, "primary")
    migrate.run(db.dsn, password=db.password, sql_dir=sql_dir)
    return SimpleNamespace(db=db)


def _compression_enabled(s) -> bool:
    with s.db.connect() as c:
        return c.execute("SELECT compression_enabled FROM timescaledb_information.hypertables "
                         "WHERE hypertable_name = 'btc_ticks'").fetchone()[0]
