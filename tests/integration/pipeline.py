"""Helpers for pipeline tests: a migrated database + its own landing bucket, and checksums."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import psycopg

from infra.local.s3 import s3_client
from tests.conftest import REPO
from tests.integration.db import FreshDb
from workers.db import migrate
from workers.landing.store import Landing

BUCKET_CHECKSUMS = """
SELECT bucket_5m, count(*), sum(quantity),
       md5(string_agg(trade_id || ':' || price || ':' || quantity || ':' || event_time
                      || ':' || is_buyer_maker, ',' ORDER BY trade_id))
FROM market_data.btc_ticks GROUP BY bucket_5m ORDER BY bucket_5m
"""


class Stack:
    """One isolated pipeline target: fresh database (migrated) and fresh landing bucket."""

    def __init__(self, env, cluster: str = "primary"):
        self.env = env
        self.db = FreshDb(env, cluster)
        migrate.run(self.db.dsn, password=self.db.password,
                    logins=env.worker_logins())
        self.bucket = "landing-" + uuid.uuid4().hex[:10]
        self.s3 = s3_client(env.moto.endpoint)
        self.s3.create_bucket(Bucket=self.bucket)
        self.s3.put_bucket_versioning(Bucket=self.bucket,
                                      VersioningConfiguration={"Status": "Enabled"})

    def landing(self) -> Landing:
        return Landing(self.s3, self.bucket)

    def ingest_conn(self) -> psycopg.Connection:
        return self.db.connect(user="ingest_worker", password=self.env.secrets["ingest_worker"])

    def embed_conn(self) -> psycopg.Connection:
        return self.db.connect(user="embed_worker", password=self.env.secrets["embed_worker"])

    def admin(self, **kw) -> psycopg.Connection:
        return self.db.connect(**kw)

    def cli_env(self) -> dict[str, str]:
        """The environment's own worker settings, pointed at this database and bucket."""
        return {**os.environ, **self.env.env(database=self.db.name, landing_bucket=self.bucket,
                                             replica=False, primary=self.db.cluster.name),
                "TICKSTACK_LOG_FORMAT": "json"}

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "workers", *args], cwd=REPO,
                              env=self.cli_env(), capture_output=True, text=True,
                              timeout=timeout)

    def checksums(self) -> list[tuple]:
        with self.admin() as c:
            return c.execute(BUCKET_CHECKSUMS).fetchall()

    def registry(self) -> list[tuple]:
        with self.admin() as c:
            return c.execute(
                "SELECT asset, bucket_5m, metadata->>'sha256', (metadata->>'row_count')::int, "
                "ingested_tick_span FROM landing.raw_blobs_5m ORDER BY 1, 2").fetchall()

    def ohlcv(self) -> list[tuple]:
        with self.admin() as c:
            return c.execute(
                "SELECT symbol, bucket_5m, open, high, low, close, volume, quote_volume, "
                "trade_count, buy_volume, first_trade_id, last_trade_id "
                "FROM market_data.btc_ohlcv_5m ORDER BY 1, 2").fetchall()

    def state(self) -> tuple:
        return self.checksums(), self.registry(), self.ohlcv()

    def close(self) -> None:
        self.db.drop()
