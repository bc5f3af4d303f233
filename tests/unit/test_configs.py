"""The one renderer (infra/configs.py): what both environments get."""

from __future__ import annotations

import configparser

import pytest

from infra import configs

REPO = configs.BackupRepo(bucket="bk", region="eu-west-1")
PG = configs.PrimaryPg(data_dir="/pgdata", port=5432)


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


def test_pgbackrest_bundles_files_and_uses_block_incremental_once_the_version_has_it():
    """Both environments get bundling (one renderer); repo1-block only from the release where
    block incremental left beta — the table's version decides by default."""
    from infra import versions

    since = ".".join(map(str, configs.BLOCK_INCREMENTAL_SINCE))
    before = f"{configs.BLOCK_INCREMENTAL_SINCE[0]}.{configs.BLOCK_INCREMENTAL_SINCE[1] - 1}"
    for version, block in ((since, True), (before, False)):
        g = parse(configs.pgbackrest_conf(REPO, PG, pgbackrest_version=version))["global"]
        assert g["repo1-bundle"] == "y"
        assert ("repo1-block" in g) is block and (not block or g["repo1-block"] == "y")
    table = tuple(map(int, versions.load().pgbackrest.split(".")))
    g = parse(configs.pgbackrest_conf(REPO, PG))["global"]
    assert ("repo1-block" in g) is (table >= configs.BLOCK_INCREMENTAL_SINCE)


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
    s = configs.postgres_conf(role="primary", pgbackrest_config="/etc/pgbackrest/pgbackrest.conf")
    assert s["shared_preload_libraries"] == "'timescaledb'"
    assert s["archive_mode"] == "on"
    assert "archive-push %p" in s["archive_command"]
    assert "--config=/etc/pgbackrest/pgbackrest.conf" in s["archive_command"]
    assert "listen_addresses" not in s  # the cloud image decides


def test_replica_conf_has_no_timescaledb_and_no_archiving():
    s = configs.postgres_conf(role="replica", pgbackrest_config=None, listen_addresses="127.0.0.1",
                              port=6000)
    assert "shared_preload_libraries" not in s
    assert "archive_command" not in s
    assert s["listen_addresses"] == "'127.0.0.1'" and s["port"] == "6000"


def test_primary_without_pgbackrest_config_is_an_error():
    with pytest.raises(ValueError):
        configs.postgres_conf(role="primary", pgbackrest_config=None)


def test_conf_text_quotes_values():
    s = configs.postgres_conf(role="replica", pgbackrest_config=None,
                              tuning=configs.PgTuning(extra={"application_name": "it's"}))
    assert "application_name = 'it''s'" in configs.postgres_conf_text(s)


def test_worker_env():
    env = configs.worker_env(configs.WorkerEnv("l", "b", "eu-west-1"))
    assert env["TICKSTACK_LANDING_BUCKET"] == "l"
    assert "TICKSTACK_S3_ENDPOINT_URL" not in env
    env = configs.worker_env(configs.WorkerEnv("l", "b", "r", s3_endpoint_url="http://x"))
    assert env["TICKSTACK_S3_ENDPOINT_URL"] == "http://x"
