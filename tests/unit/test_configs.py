"""The one renderer (infra/configs.py): what both environments get."""

from __future__ import annotations

import configparser

import pytest

from infra import configs, worker_settings

REPO = configs.BackupRepo(bucket="bk", region="eu-west-1")
PG = configs.PrimaryPg(data_dir="/pgdata", port=5432)
TLS = configs.TlsFiles(cert="/tls/tls.crt", key="/tls/tls.key", ca="/tls/ca.crt")


def parse(text: str) -> configparser.ConfigParser:
    p = configparser.ConfigParser()
    p.read_string(text)
    return p


def test_pgbackrest_conf_cloud_defaults_use_irsa_and_verify_tls():
    p = parse(configs.pgbackrest_conf(REPO, PG))
    g = p["global"]
    assert g["repo1-type"] == "s3"
    assert g["repo1-s3-key-type"] == "web-id"
    assert g["repo1-storage-verify-tls"] == "y"
    assert g["repo1-s3-bucket"] == "bk"
    assert g["compress-type"] == "zst"
    assert "repo1-storage-port" not in g
    assert p[configs.STANZA]["pg1-path"] == "/pgdata"
    assert not any("key-secret" in k or k == "repo1-s3-key" for k in g)


def test_pgbackrest_bundles_files_and_block_incremental_is_opt_in_where_the_version_has_it():
    """Both environments get bundling (one renderer); repo1-block only when asked for (its
    restores read file by file: BLOCK_INCREMENTAL_SINCE) and only from the release where block
    incremental left beta."""
    since = ".".join(map(str, configs.BLOCK_INCREMENTAL_SINCE))
    before = f"{configs.BLOCK_INCREMENTAL_SINCE[0]}.{configs.BLOCK_INCREMENTAL_SINCE[1] - 1}"
    for version in (since, before):
        g = parse(configs.pgbackrest_conf(REPO, PG, pgbackrest_version=version))["global"]
        assert g["repo1-bundle"] == "y" and "repo1-block" not in g
    g = parse(configs.pgbackrest_conf(REPO, PG, pgbackrest_version=since,
                                      block_incremental=True))["global"]
    assert g["repo1-bundle"] == "y" and g["repo1-block"] == "y"
    with pytest.raises(ValueError, match=f"need pgBackRest {since} or newer, not {before}"):
        configs.pgbackrest_conf(REPO, PG, pgbackrest_version=before, block_incremental=True)
    assert "repo1-block" not in parse(configs.pgbackrest_conf(REPO, PG))["global"]


def test_pgbackrest_conf_local_s3_behind_tls_terminator():
    repo = configs.BackupRepo(bucket="bk", region="us-east-1", endpoint="127.0.0.1", port=4433,
                              uri_style="path", verify_tls=False, key_type="shared")
    g = parse(configs.pgbackrest_conf(repo, PG))["global"]
    assert (g["repo1-storage-port"], g["repo1-s3-uri-style"], g["repo1-storage-verify-tls"]) == (
        "4433", "path", "n")


def test_pgbackrest_conf_with_kms_key():
    repo = configs.BackupRepo(bucket="bk", region="eu-west-1", kms_key_id="arn:aws:kms:k")
    g = parse(configs.pgbackrest_conf(repo, PG))["global"]
    assert g["repo1-s3-kms-key-id"] == "arn:aws:kms:k"


def test_pgbackrest_conf_refuses_newlines():
    with pytest.raises(ValueError):
        configs.pgbackrest_conf(configs.BackupRepo(bucket="a\nrepo1-type=posix", region="r"), PG)


def test_primary_conf_preloads_timescaledb_and_archives():
    s = configs.postgres_conf(role="primary", pgbackrest_config="/etc/pgbackrest/pgbackrest.conf",
                              tls=TLS)
    assert s["shared_preload_libraries"] == "'timescaledb'"
    assert s["archive_mode"] == "on"
    assert "archive-push %p" in s["archive_command"]
    assert "--config=/etc/pgbackrest/pgbackrest.conf" in s["archive_command"]
    assert "listen_addresses" not in s  # the cloud image decides


def test_replica_conf_has_no_timescaledb_and_no_archiving():
    s = configs.postgres_conf(role="replica", pgbackrest_config=None, listen_addresses="127.0.0.1",
                              port=6000, tls=TLS)
    assert "shared_preload_libraries" not in s
    assert "archive_command" not in s
    assert s["listen_addresses"] == "'127.0.0.1'" and s["port"] == "6000"


def test_primary_without_pgbackrest_config_is_an_error():
    with pytest.raises(ValueError):
        configs.postgres_conf(role="primary", pgbackrest_config=None, tls=TLS)


def test_conf_text_quotes_values():
    s = configs.postgres_conf(role="replica", pgbackrest_config=None,
                              tuning=configs.PgTuning(extra={"application_name": "it's"}),
                              tls=TLS)
    assert "application_name = 'it''s'" in configs.postgres_conf_text(s)


def test_worker_env():
    env = worker_settings.worker_env(worker_settings.WorkerEnv("l", "b", "eu-west-1"))
    assert env["TICKSTACK_LANDING_BUCKET"] == "l"
    assert "TICKSTACK_S3_ENDPOINT_URL" not in env
    env = worker_settings.worker_env(worker_settings.WorkerEnv("l", "b", "r", s3_endpoint_url="http://x"))
    assert env["TICKSTACK_S3_ENDPOINT_URL"] == "http://x"


def test_every_server_serves_tls_and_only_tls_over_tcp():
    for role, br in (("primary", "/etc/pgbackrest/pgbackrest.conf"), ("replica", None)):
        s = configs.postgres_conf(role=role, pgbackrest_config=br, tls=TLS)
        assert s["ssl"] == "on"
        assert (s["ssl_cert_file"], s["ssl_key_file"]) == ("'/tls/tls.crt'", "'/tls/tls.key'")
        assert s["ssl_min_protocol_version"] == "'TLSv1.2'"
        with pytest.raises(ValueError, match="TLS"):
            configs.postgres_conf(role=role, pgbackrest_config=br)
    hba = [ln.split() for ln in configs.pg_hba(["10.0.0.0/8"]).splitlines()
           if ln and not ln.startswith("#")]
    tcp = [ln for ln in hba if ln[0] != "local"]
    assert tcp == [["hostssl", "all", "all", "10.0.0.0/8", "scram-sha-256"]]
    assert ["local", "all", "postgres", "peer"] in hba


def test_dsns_verify_the_server():
    dsn = worker_settings.postgres_dsn(user="u", password="p:w", host="h", sslrootcert="/ca.crt")
    assert dsn == "postgresql://u:p%3Aw@h:5432/tickstack?sslmode=verify-full&sslrootcert=/ca.crt"
    with pytest.raises(ValueError, match="sslrootcert"):
        worker_settings.postgres_dsn(user="u", password="p", host="h")
    # Without a password libpq reads its password file (the local environment).
    assert worker_settings.postgres_dsn(user="u", password=None, host="h",
                                        sslrootcert="/c").startswith("postgresql://u@h:5432/")


def test_workload_dsn_settings_name_each_login_on_each_server():
    def dsn(server, group):
        return f"{server}:{group or 'admin'}"

    assert worker_settings.workload_dsn_env("admin", "admin", dsn) == {
        "TICKSTACK_PRIMARY_DSN": "primary:admin", "TICKSTACK_REPLICA_DSN": "replica:admin"}
    assert worker_settings.workload_dsn_env("tickstack_ingest", "tickstack_replicate", dsn) == {
        "TICKSTACK_PRIMARY_DSN": "primary:tickstack_ingest",
        "TICKSTACK_INGEST_DSN": "primary:tickstack_ingest",
        "TICKSTACK_REPLICA_DSN": "replica:tickstack_replicate",
        "TICKSTACK_REPLICA_REPLICATE_DSN": "replica:tickstack_replicate"}
    assert worker_settings.workload_dsn_env("tickstack_embed", None, dsn) == {
        "TICKSTACK_PRIMARY_DSN": "primary:tickstack_embed",
        "TICKSTACK_EMBED_DSN": "primary:tickstack_embed"}


def test_settings_read_every_login_setting_the_renderer_names():
    """Each DSN setting the renderer hands out is one the workers read (a name that is not
    would be ignored silently by the settings' extra="ignore")."""
    from workers.core.settings import Settings

    fields = {f"TICKSTACK_{n.upper()}" for n in Settings.model_fields}
    for group in configs.WORKER_LOGINS:
        for server in ("primary", "replica"):
            key = configs.dsn_env_key(group, server)
            if server == "replica" and group not in ("tickstack_ingest", "tickstack_replicate",
                                                     "tickstack_retention"):
                continue  # no worker connects to the replica as this login
            assert key in fields, key


def test_pgbackrest_conf_database_host_and_backup_worker_roles():
    server = configs.PgBackRestServer(address="0.0.0.0", tls=TLS)
    p = parse(configs.pgbackrest_conf(REPO, PG, server=server))
    g = p["global"]
    assert g["tls-server-port"] == "8432"
    assert g["tls-server-auth"] == f"{configs.PGBACKREST_CLIENT_CN}={configs.STANZA}"
    assert g["log-level-file"] == "warn"
    assert "pg1-host" not in p[configs.STANZA]
    remote = configs.PgBackRestRemote(host="db.example", tls=TLS)
    c = parse(configs.pgbackrest_conf(REPO, PG, remote=remote))
    st = c[configs.STANZA]
    assert (st["pg1-host"], st["pg1-host-type"], st["pg1-host-port"]) == ("db.example", "tls",
                                                                          "8432")
    assert st["pg1-host-cert-file"] == "/tls/tls.crt" and st["pg1-path"] == "/pgdata"
    assert not any(k.startswith("tls-server") for k in c["global"])
    with pytest.raises(ValueError):
        configs.pgbackrest_conf(REPO, PG, server=server, remote=remote)
