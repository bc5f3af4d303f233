"""No drift: the cloud's pgbackrest.conf and Postgres settings are what the local environment
writes, from the one renderer (infra/configs.py); only the inputs differ (DESIGN.md)."""

from __future__ import annotations

import ast
import configparser
from pathlib import Path

import pytest

from infra import configs
from infra.components import database
from tests.unit.pulumi_stacks import STACKS, config_map_data, graph, stack_value

REPO = Path(__file__).resolve().parents[2]

# What the environments are allowed to differ in: their inputs (where the bucket is, how to
# reach it, where files live, how big the server is). Every other option must be equal.
PGBACKREST_INPUTS = {
    "repo1-s3-bucket", "repo1-s3-region", "repo1-s3-endpoint", "repo1-s3-uri-style",
    "repo1-s3-key-type", "repo1-storage-verify-tls", "repo1-storage-port", "repo1-s3-kms-key-id",
    "repo1-retention-full", "repo1-retention-diff", "log-path", "lock-path", "spool-path",
    "pg1-path", "pg1-port", "pg1-socket-path",
}
POSTGRES_INPUTS = {"listen_addresses", "port", "unix_socket_directories", "hba_file",
                   "shared_buffers", "max_connections", "archive_command"}


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """Run the local environment's own render() into a temporary state directory and keep
    what it wrote and the arguments it gave the renderer."""
    from infra.local import env as local_env
    from infra.local import postgres as local_pg

    mp = pytest.MonkeyPatch()
    state = tmp_path_factory.mktemp("state")
    calls: dict[str, list] = {"pgbackrest_conf": [], "postgres_conf": []}

    def spy(name):
        real = getattr(configs, name)

        def call(*a, **kw):
            out = real(*a, **kw)
            calls[name].append((a, kw, out))
            return out
        return call

    for name in calls:
        mp.setattr(configs, name, spy(name))
    # No chown to the postgres user: only the texts matter here.
    mp.setattr(local_env, "make_db_dir", lambda p, mode=0o700: p.mkdir(parents=True,
                                                                       exist_ok=True))
    mp.setattr(local_pg, "chown_db", lambda p, mode=None: None)
    try:
        env = local_env.LocalEnv(state)
        for c in (env.primary, env.replica):
            c.data.mkdir(parents=True, exist_ok=True)
        env.render()
        written = {"pgbackrest.conf": env.pgbackrest_conf_path.read_text(),
                   "tickstack.conf": (env.primary.data / "tickstack.conf").read_text()}
    finally:
        mp.undo()
    return written, calls


def cloud_files(stack: str) -> dict[str, str]:
    g = graph(stack)
    return {**config_map_data(g, "primary-postgres-config"),
            **config_map_data(g, "primary-pgbackrest-config")}


def cloud_target(stack: str) -> database.BackupTarget:
    g = graph(stack)
    return database.BackupTarget(
        bucket=g.outputs["backupBucket"], region="eu-west-1", kms_key_arn=g.outputs["kmsKeyArn"],
        retention_full=stack_value(stack, "backupRetentionFull"),
        retention_diff=stack_value(stack, "backupRetentionDiff"))


def cloud_tuning(stack: str) -> configs.PgTuning:
    return configs.PgTuning(shared_buffers=stack_value(stack, "primarySharedBuffers"),
                            max_connections=stack_value(stack, "primaryMaxConnections"))


def ini(text: str) -> dict[str, dict[str, str]]:
    p = configparser.ConfigParser(interpolation=None)
    p.read_string(text)
    return {s: dict(p[s]) for s in p.sections()}


def pg_settings(*texts: str) -> dict[str, str]:
    """Settings of postgresql.conf texts, in order (include directives are not settings)."""
    out = {}
    for text in texts:
        for line in text.splitlines():
            if " = " in line and not line.startswith("#"):
                k, v = line.split(" = ", 1)
                if k != "include":
                    out[k] = v
    return out


def test_the_local_environment_writes_exactly_what_the_renderer_returns(local):
    written, calls = local
    [(_, _, pgbr)] = calls["pgbackrest_conf"]
    assert written["pgbackrest.conf"] == pgbr
    primary = [c for c in calls["postgres_conf"] if c[1]["role"] == "primary"]
    assert written["tickstack.conf"] == configs.postgres_conf_text(primary[0][2])


@pytest.mark.parametrize("stack", STACKS)
def test_same_inputs_give_the_same_pgbackrest_conf(local, stack):
    _, calls = local
    [(args, kwargs, _)] = calls["pgbackrest_conf"]
    assert len(args) == 3  # repo, pg, paths: the inputs; any other option must be shared
    # The local call, with the cloud's inputs in place of the local ones, is the cloud's file.
    same = configs.pgbackrest_conf(database.cloud_backup_repo(cloud_target(stack)),
                                   database.CLOUD_PG, database.CLOUD_PATHS, **kwargs)
    assert cloud_files(stack)["pgbackrest.conf"] == same


@pytest.mark.parametrize("stack", STACKS)
def test_same_inputs_give_the_same_postgres_settings(local, stack):
    _, calls = local
    [(_, kwargs, _)] = [c for c in calls["postgres_conf"] if c[1]["role"] == "primary"]
    # Where to listen is the cloud's bootstrap file's job (postgresql.conf), as the local
    # environment's is its command line; the rest is the local call with the cloud's inputs.
    shared = {k: v for k, v in kwargs.items()
              if k not in ("listen_addresses", "port", "socket_dir")}
    shared.update(pgbackrest_config=database.PGBACKREST_CONF, tuning=cloud_tuning(stack))
    same = configs.postgres_conf_text(configs.postgres_conf(**shared))
    assert cloud_files(stack)["tickstack.conf"] == same


@pytest.mark.parametrize("stack", STACKS)
def test_only_inputs_differ_between_the_environments_files(local, stack):
    written, _ = local
    cloud, here = ini(cloud_files(stack)["pgbackrest.conf"]), ini(written["pgbackrest.conf"])
    assert set(cloud) == set(here) == {"global", configs.STANZA}
    for section in cloud:
        keys = set(cloud[section]) | set(here[section])
        differ = {k for k in keys if cloud[section].get(k) != here[section].get(k)}
        assert differ <= PGBACKREST_INPUTS, (section, differ - PGBACKREST_INPUTS)
    files = cloud_files(stack)
    cloud_pg = pg_settings(files["postgresql.conf"], files["tickstack.conf"])
    here_pg = pg_settings(written["tickstack.conf"])
    keys = set(cloud_pg) | set(here_pg)
    differ = {k for k in keys if cloud_pg.get(k) != here_pg.get(k)}
    assert differ <= POSTGRES_INPUTS, differ - POSTGRES_INPUTS
    # Both archive WAL with pgBackRest and preload TimescaleDB: never an input.
    for s in (cloud_pg, here_pg):
        assert s["shared_preload_libraries"] == "'timescaledb'"
        assert "archive-push %p" in s["archive_command"]


def test_the_program_never_imports_the_local_environment():
    for path in [REPO / "infra" / "program.py", REPO / "infra" / "stack_config.py",
                 *sorted((REPO / "infra" / "components").glob("*.py"))]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.startswith("infra.local") for n in names), path.name
