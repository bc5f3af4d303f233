"""What the benchmarks share: a throwaway local environment and fresh migrated databases."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from infra.local.env import LocalEnv  # noqa: E402
from infra.local.s3 import s3_client  # noqa: E402
from workers.db import migrate  # noqa: E402


@contextlib.contextmanager
def throwaway_env() -> Iterator[LocalEnv]:
    """Own clusters and S3 under /tmp (never the `make up` environment), removed afterwards."""
    from workers.core import logs

    logs.configure("console", "warning")
    state = Path(tempfile.mkdtemp(prefix="tickstack-bench-", dir="/tmp"))
    os.chmod(state, 0o755)  # the postgres user must reach the cluster directories
    env = LocalEnv(state)
    try:
        print(f"starting a throwaway environment in {state}")
        env.up()
        yield env
    finally:
        env.down(save_s3=False)
        shutil.rmtree(state, ignore_errors=True)


def fresh_db(env: LocalEnv, name: str) -> str:
    """A new migrated database on the primary; returns its name."""
    env.primary.psql(f'CREATE DATABASE "{name}"')
    migrate.run(env.primary.dsn(name), password=env.secrets["postgres_password"],
                logins=env.worker_logins())
    return name


def landing_bucket(env: LocalEnv, bucket: str) -> None:
    s3 = s3_client(env.moto.endpoint)
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})


def worker_env(env: LocalEnv, db: str, bucket: str) -> dict[str, str]:
    """Environment for `python -m workers …` against one bench database and landing bucket."""
    return {**os.environ, **env.env(database=db, landing_bucket=bucket, replica=False),
            "TICKSTACK_LOG_FORMAT": "json"}


def workers_cli(env_vars: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "workers", *args], cwd=REPO, env=env_vars,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"workers {' '.join(args)} failed ({r.returncode}):\n"
                         f"{r.stdout}\n{r.stderr[-3000:]}")
    return r
