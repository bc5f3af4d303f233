"""What each worker is handed, in both environments: its non-secret settings (worker_env),
the DSN settings of the logins it connects as (workload_dsn_env, postgres_dsn) and the file of
worker logins `workers migrate` creates (worker_logins_json).

Which logins exist and the names of their settings are infra/configs.py's (WORKER_LOGINS,
dsn_env_key); the Pulumi program and the local environment both build the values here. Pure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from infra.configs import DATABASE, SSLMODE, WORKER_LOGINS, Server, admin_env_key, dsn_env_key

T = TypeVar("T")


@dataclass(frozen=True)
class WorkerEnv:
    landing_bucket: str
    backup_bucket: str
    aws_region: str
    s3_endpoint_url: str | None = None
    log_format: Literal["json", "console"] = "json"


def worker_env(w: WorkerEnv) -> dict[str, str]:
    """Non-secret TICKSTACK_* settings every worker gets (DSNs are secrets, handed separately)."""
    env = {
        "TICKSTACK_LANDING_BUCKET": w.landing_bucket,
        "TICKSTACK_BACKUP_BUCKET": w.backup_bucket,
        "TICKSTACK_AWS_REGION": w.aws_region,
        "TICKSTACK_LOG_FORMAT": w.log_format,
        "AWS_DEFAULT_REGION": w.aws_region,
    }
    if w.s3_endpoint_url:
        env["TICKSTACK_S3_ENDPOINT_URL"] = w.s3_endpoint_url
    return env


def workload_dsn_env(primary: str | None, replica: str | None,
                     dsn: Callable[[Server, str | None], T]) -> dict[str, T]:
    """The DSN settings one workload gets, for both environments: `primary`/`replica` are the
    group role it connects as on each server ("admin": the server's admin; None: not at all),
    `dsn(server, group)` the DSN of that login (group None: the admin).

    A workload's own login is also its server's default DSN (TICKSTACK_PRIMARY_DSN /
    TICKSTACK_REPLICA_DSN), so a command that falls back to the default uses it too.
    """
    out: dict[str, T] = {}
    for server, group in (("primary", primary), ("replica", replica)):
        if group is None:
            continue
        value = dsn(server, None if group == "admin" else group)
        out[admin_env_key(server)] = value
        if group != "admin":
            out[dsn_env_key(group, server)] = value
    return out


def postgres_dsn(*, user: str, password: str | None, host: str, port: int = 5432,
                 database: str = DATABASE, sslmode: str = SSLMODE,
                 sslrootcert: str | None = None) -> str:
    """A libpq URI; user and password are percent-encoded. Without a password, libpq finds it
    in its password file (the local environment). `verify-full` needs the CA (`sslrootcert`)."""
    from urllib.parse import quote

    if sslmode == "verify-full" and not sslrootcert:
        raise ValueError("sslmode=verify-full needs sslrootcert (the CA of the server)")
    auth = quote(user, safe="") + ("" if password is None else ":" + quote(password, safe=""))
    query = f"sslmode={sslmode}" + (f"&sslrootcert={quote(sslrootcert)}" if sslrootcert
                                    else "")
    return f"postgresql://{auth}@{host}:{port}/{quote(database, safe='')}?{query}"


def worker_logins_json(passwords: dict[str, str]) -> str:
    """What TICKSTACK_WORKER_LOGINS_FILE holds: {group: {user, password}} (login user -> pw)."""
    import json

    return json.dumps({g: {"user": u, "password": passwords[u]}
                       for g, u in WORKER_LOGINS.items()}, indent=1, sort_keys=True)
