"""A point-in-time restore to before an upgrade keeps today's security configuration (issue 27,
item 7), on real servers: an environment of its own, real pgBackRest, real restore.

A backup is taken while the primary's data directory holds the configuration an older release
kept there — `host` (no TLS) in pg_hba.conf, `ssl = off` in tickstack.conf, and ALTER SYSTEM's
postgresql.auto.conf saying `ssl = off` and pointing `hba_file` at that pg_hba.conf. Then the
current configuration is rendered again and the primary restored to a time after that backup.
While the restore runs, plaintext logins are tried without pause: not one may succeed, from the
first moment the restored server accepts connections. The restore itself succeeds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import psycopg
import pytest

from infra import configs
from infra.local.env import LocalEnv
from infra.local.procs import chown_db
from tests.conftest import REPO, make_state_dir
from tests.integration.test_backup_dr import admin, ok

OLD_HBA = ("local all postgres peer\nlocal all all scram-sha-256\n"
           "host all all 127.0.0.1/32 scram-sha-256\n")


@pytest.fixture(scope="module")
def env():
    e = LocalEnv(make_state_dir())
    try:
        e.up()
        yield e
    finally:
        try:
            e.down(save_s3=False)
        finally:
            shutil.rmtree(e.state, ignore_errors=True)


def write_db_file(path, text: str, *, append: bool = False) -> None:
    with open(path, "a" if append else "w") as f:
        f.write(text)
    chown_db(path, 0o600)


def old_release_config(env: LocalEnv) -> None:
    """What an older release kept inside the data directory: its settings file with TLS off,
    included from postgresql.conf; pg_hba.conf with `host`; ALTER SYSTEM overrides."""
    data, c = env.primary.data, env.primary
    settings = configs.postgres_conf(
        role="primary", pgbackrest_config=str(env.pgbackrest_conf_path),
        listen_addresses="127.0.0.1", port=c.port, socket_dir=str(c.socket_dir),
        tls=env.tls.server())
    settings["ssl"] = "off"
    write_db_file(data / "tickstack.conf", configs.postgres_conf_text(settings))
    conf = (data / "postgresql.conf").read_text()
    if "include_if_exists = 'tickstack.conf'" not in conf:
        write_db_file(data / "postgresql.conf", "\ninclude_if_exists = 'tickstack.conf'\n",
                      append=True)
    write_db_file(data / "pg_hba.conf", OLD_HBA)
    write_db_file(data / "postgresql.auto.conf",
                  f"ssl = 'off'\nhba_file = '{data / 'pg_hba.conf'}'\n", append=True)


def plaintext_login(env: LocalEnv) -> str | None:
    """None when a password login without TLS succeeds; else why it did not."""
    try:
        with psycopg.connect(host="127.0.0.1", port=env.primary.port, dbname="postgres",
                             user="postgres", password=env.secrets["postgres_password"],
                             sslmode="disable", connect_timeout=2):
            return None
    except psycopg.Error as e:
        return str(e)


def restore_probing(env: LocalEnv, *args: str) -> tuple[subprocess.CompletedProcess, list]:
    """Run `workers restore` while trying plaintext logins without pause: (the restore's
    result, every attempt as (time, refusal)). The first accepted login fails the test at
    once (the restore is stopped: it is what the old code did for its 600 s wait)."""
    attempts: list[tuple[datetime, str | None]] = []
    with subprocess.Popen([sys.executable, "-m", "workers", "restore", *args], cwd=REPO,
                          env={**os.environ, **env.env(), "TICKSTACK_LOG_FORMAT": "json"},
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as p:
        out = ThreadPoolExecutor(2)
        stdout, stderr = out.submit(p.stdout.read), out.submit(p.stderr.read)
        while p.poll() is None:
            attempts.append((datetime.now(UTC), plaintext_login(env)))
            if attempts[-1][1] is None:
                p.kill()
                pytest.fail(f"a plaintext login was accepted at {attempts[-1][0]} while the "
                            "restore ran")
            time.sleep(0.02)
        result = subprocess.CompletedProcess(p.args, p.returncode, stdout.result(),
                                             stderr.result())
        out.shutdown()
    return result, attempts


def test_restore_to_before_an_upgrade_never_accepts_a_plaintext_login(env):
    ok(env, "migrate")
    old_release_config(env)
    ok(env, "backup", "--type", "full")  # the old files are in this backup set
    time.sleep(1.1)  # the backup's finish time is in whole seconds: the target comes after it
    with admin(env) as c:
        c.execute("CREATE TABLE public.marker (at timestamptz)")
        c.execute("INSERT INTO public.marker VALUES (clock_timestamp())")
        c.commit()
        target = c.execute("SELECT clock_timestamp()").fetchone()[0]
    time.sleep(1.1)
    # The current configuration again (as `make up` renders it), and nothing old left live.
    auto = env.primary.data / "postgresql.auto.conf"
    write_db_file(auto, "".join(ln for ln in auto.read_text().splitlines(keepends=True)
                                if not ln.startswith(("ssl", "hba_file"))))
    env.render()
    env.primary.reload()
    assert plaintext_login(env) is not None

    r, attempts = restore_probing(env, "--force", "--target-time", target.isoformat(),
                                  "--no-replay")
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    assert "removed from its postgresql.auto.conf: ssl, hba_file" in r.stdout, r.stdout

    with admin(env) as c:  # verify-full TLS, as every worker connects
        started = c.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
        assert c.execute("SELECT count(*) FROM public.marker").fetchone()[0] == 1
        assert c.execute("SHOW ssl").fetchone()[0] == "on"
        assert c.execute("SHOW hba_file").fetchone()[0] == str(env.primary.conf_dir
                                                              / "pg_hba.conf")
        assert c.execute("SHOW config_file").fetchone()[0] == str(env.primary.config_file)
        assert c.execute("SELECT count(*) FROM pg_file_settings WHERE name IN ('ssl', "
                         "'hba_file') AND sourcefile LIKE %s",
                         [f"{env.primary.data}/%"]).fetchone()[0] == 0
    assert all(refusal is not None for _, refusal in attempts)
    # Logins were tried while the restored server took connections, and refused.
    assert any(t >= started for t, _ in attempts), (started, attempts[-1])
    refusal = plaintext_login(env)
    assert refusal is not None and "no encryption" in refusal, refusal


def test_a_restored_server_that_refuses_the_admin_fails_the_restore_at_once(env):
    """Recovery is not blamed for what waiting cannot change: a restored server whose
    configuration refuses the admin's TLS login (here a pg_hba.conf without it) fails the
    restore with the server's own refusal as soon as it takes connections — not after 600 s
    of "still in recovery"."""
    from infra.local.procs import make_db_dir

    ok(env, "migrate")
    ok(env, "backup", "--type", "full")
    with admin(env) as c:
        target = c.execute("SELECT clock_timestamp()").fetchone()[0]
    time.sleep(1.1)
    bad = make_db_dir(env.state / "conf-refusing-tcp", 0o700)
    write_db_file(bad / "pg_hba.conf", "local all postgres peer\n")
    write_db_file(bad / "postgresql.conf",
                  f"hba_file = '{bad / 'pg_hba.conf'}'\n"
                  f"include = '{env.primary.conf_dir / 'tickstack.conf'}'\n")
    try:
        r = subprocess.run(
            [sys.executable, "-m", "workers", "restore", "--force", "--no-replay",
             "--target-time", target.isoformat()], cwd=REPO, capture_output=True, text=True,
            env={**os.environ, **env.env(), "TICKSTACK_LOG_FORMAT": "json",
                 "TICKSTACK_PG_CONFIG_FILE": str(bad / "postgresql.conf")}, timeout=600)
        assert r.returncode == 1, (r.stdout[-2000:], r.stderr[-3000:])
        reason = r.stderr.strip().splitlines()[-1]
        assert "the restored server runs but refuses the admin's connection" in reason, reason
        assert "no pg_hba.conf entry" in reason and "still in recovery" not in reason, reason
    finally:  # the primary back on its own configuration
        env.primary.stop()
        env.primary.start(env=env.pgbackrest_env())
    assert env.primary.healthy()


def test_up_restarts_a_server_running_on_its_data_directorys_configuration(env):
    """A primary started the old way (the data directory's postgresql.conf, which includes an
    older tickstack.conf with TLS off) and with ALTER SYSTEM overrides: `up` restarts it on the
    rendered configuration, without the overrides — TLS only again."""
    from infra.local.postgres import PG_BIN
    from infra.local.procs import run_db

    c = env.primary
    old_release_config(env)
    c.stop()
    r = run_db([str(PG_BIN / "pg_ctl"), "-D", str(c.data), "-l", str(c.log), "-w", "-t", "60",
                "start"], check=False)
    assert r.returncode == 0, r.stderr
    assert c.psql("SHOW config_file") == str(c.data / "postgresql.conf")
    assert plaintext_login(env) is None  # what such a server does
    started = env.up()
    assert any("restarted on its configuration outside the data directory" in s
               for s in started), started
    assert c.psql("SHOW config_file") == str(c.config_file)
    assert c.psql("SHOW ssl") == "on"
    assert c.psql("SHOW hba_file") == str(c.conf_dir / "pg_hba.conf")
    auto = (c.data / "postgresql.auto.conf").read_text()
    assert "ssl" not in auto and "hba_file" not in auto, auto
    assert plaintext_login(env) is not None


def test_an_include_in_the_restored_auto_conf_brings_nothing_back(env):
    """PostgreSQL honours include directives in postgresql.auto.conf: an older release's (or a
    hand-edited) one including a file of the data directory with `ssl = off`, a pg_hba.conf
    with `host` and another port must not bring them back after a restore."""
    c = env.primary
    ok(env, "migrate")
    write_db_file(c.data / "pg_hba.conf", OLD_HBA)
    write_db_file(c.data / "old-security.conf",
                  f"ssl = off\nhba_file = '{c.data / 'pg_hba.conf'}'\nport = {c.port + 7}\n")
    write_db_file(c.data / "postgresql.auto.conf",
                  "include_if_exists = 'old-security.conf'\n", append=True)
    ok(env, "backup", "--type", "full")  # the include and its file are in this backup set
    time.sleep(1.1)  # the backup's finish time is in whole seconds
    with admin(env) as a:
        target = a.execute("SELECT clock_timestamp()").fetchone()[0]
    time.sleep(1.1)
    auto = c.data / "postgresql.auto.conf"
    write_db_file(auto, "".join(ln for ln in auto.read_text().splitlines(keepends=True)
                                if not ln.startswith("include")))
    r, attempts = restore_probing(env, "--force", "--target-time", target.isoformat(),
                                  "--no-replay")
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    assert "removed from its postgresql.auto.conf: include_if_exists" in r.stdout, r.stdout
    with admin(env) as a:
        assert a.execute("SHOW ssl").fetchone()[0] == "on"
        assert a.execute("SHOW port").fetchone()[0] == str(c.port)
        assert a.execute("SHOW hba_file").fetchone()[0] == str(c.conf_dir / "pg_hba.conf")
    assert all(refusal is not None for _, refusal in attempts)
    assert plaintext_login(env) is not None
