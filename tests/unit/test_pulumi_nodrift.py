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
    "pg1-path", "pg1-port", "pg1-socket-path", "pg1-host-config",
    # pgBackRest's TLS server: where it listens and its certificate's files.
    "tls-server-address", "tls-server-port", "tls-server-cert-file", "tls-server-key-file",
    "tls-server-ca-file",
}
POSTGRES_INPUTS = {"listen_addresses", "port", "unix_socket_directories", "hba_file",
                   "shared_buffers", "max_connections", "archive_command", "ssl_cert_file",
                   "ssl_key_file"}


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
    from infra.local import tls as local_tls

    mp.setattr(local_tls, "chown_db", lambda p, mode=None: None)
    try:
        env = local_env.LocalEnv(state)
        for c in (env.primary, env.replica):
            c.data.mkdir(parents=True, exist_ok=True)
        env.tls.ensure()
        env.render()
        written = {"pgbackrest.conf": env.pgbackrest_conf_path.read_text(),
                   "pgbackrest-client.conf": env.pgbackrest_client_conf_path.read_text(),
                   "tickstack.conf": (env.primary.conf_dir / "tickstack.conf").read_text(),
                   "pg_hba.conf": (env.primary.conf_dir / "pg_hba.conf").read_text()}
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


def server_call(calls):
    [c] = [c for c in calls["pgbackrest_conf"] if c[1].get("server")]
    return c


def client_call(calls):
    [c] = [c for c in calls["pgbackrest_conf"] if c[1].get("remote")]
    return c


def test_the_local_environment_writes_exactly_what_the_renderer_returns(local):
    written, calls = local
    assert len(calls["pgbackrest_conf"]) == 2
    assert written["pgbackrest.conf"] == server_call(calls)[2]
    assert written["pgbackrest-client.conf"] == client_call(calls)[2]
    primary = [c for c in calls["postgres_conf"] if c[1]["role"] == "primary"]
    assert written["tickstack.conf"] == configs.postgres_conf_text(primary[0][2])


@pytest.mark.parametrize("stack", STACKS)
def test_same_inputs_give_the_same_pgbackrest_conf(local, stack):
    _, calls = local
    repo = database.cloud_backup_repo(cloud_target(stack))
    # The database host's file: the local call, with the cloud's inputs in place of the local
    # ones (repo, pg, paths, the TLS server's address/files), is the cloud's file.
    args, kwargs, _ = server_call(calls)
    assert len(args) == 3 and set(kwargs) == {"server"}
    same = configs.pgbackrest_conf(repo, database.CLOUD_PG, database.CLOUD_PATHS,
                                   server=database.CLOUD_SERVER)
    assert cloud_files(stack)["pgbackrest.conf"] == same
    # The backup workers' file likewise.
    args, kwargs, _ = client_call(calls)
    assert len(args) == 3 and set(kwargs) == {"remote"}
    ns = stack_value(stack, "namespace")
    same = configs.pgbackrest_conf(repo, database.CLOUD_PG, database.CLIENT_PATHS,
                                   remote=configs.PgBackRestRemote(
                                       host=database.service_host(ns), tls=database.CLIENT_TLS))
    assert config_map_data(graph(stack), "primary-pgbackrest-client-config")[
        "pgbackrest.conf"] == same


@pytest.mark.parametrize("stack", STACKS)
def test_same_inputs_give_the_same_postgres_settings(local, stack):
    _, calls = local
    [(_, kwargs, _)] = [c for c in calls["postgres_conf"] if c[1]["role"] == "primary"]
    # Where to listen is the cloud's bootstrap file's job (postgresql.conf), as the local
    # environment's is its command line; the rest is the local call with the cloud's inputs.
    shared = {k: v for k, v in kwargs.items()
              if k not in ("listen_addresses", "port", "socket_dir")}
    shared.update(pgbackrest_config=database.PGBACKREST_CONF, tuning=cloud_tuning(stack),
                  tls=database.SERVER_TLS)
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
    # Both archive WAL with pgBackRest, preload TimescaleDB and serve TLS: never an input.
    for s in (cloud_pg, here_pg):
        assert s["shared_preload_libraries"] == "'timescaledb'"
        assert "archive-push %p" in s["archive_command"]
        assert s["ssl"] == "on"
    # The same pg_hba.conf rules (TLS only over TCP); only the network differs.
    def rules(text):
        return [ln.split()[:4] for ln in text.splitlines() if ln and not ln.startswith("#")]

    assert rules(files["pg_hba.conf"])[:2] == rules(written["pg_hba.conf"])[:2]
    assert [r[:3] for r in rules(files["pg_hba.conf"])[2:]] == [
        ["hostssl", "all", "all"]] * 2
    assert rules(written["pg_hba.conf"])[2:] == [["hostssl", "all", "all", "127.0.0.1/32"]]
    assert {r[0] for r in rules(files["pg_hba.conf"]) + rules(written["pg_hba.conf"])} == {
        "local", "hostssl"}


def test_the_program_never_imports_the_local_environment():
    for path in [REPO / "infra" / "program.py", REPO / "infra" / "stack_config.py",
                 *sorted((REPO / "infra" / "components").glob("*.py"))]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.startswith("infra.local") for n in names), path.name
