"""SIGTERM and SIGINT to running commands (issue 27 items 6 and 11), on an environment of their
own (restores stop and move the primary).

* SIGTERM — what systemd, Kubernetes and `timeout` send — stops a command as Ctrl-C does:
  exit 130, a line saying so, the command's cleanup run, and a rerun completes.
* The signal goes to the worker's pid only (not its process group): the worker itself must stop
  its tools. A backup interrupted so leaves no pgBackRest process (its `local` workers held the
  lock) and the next backup runs; a lock that another process does hold is reported as such.
* A restore interrupted at any step puts the old primary back (in process); one killed outright
  (SIGKILL at a step) is undone by `LocalEnv.up` (what `python -m infra.local up` and `make up`
  run), or, with no old data directory to put back, `up` stops with the command that finishes it.

Where a signal must land while a tool runs, the test waits for the tool's process to appear (a
real step, observed) and signals then; where it must land between steps, the restore's named
crash points (TICKSTACK_CRASH_AT=point:N[:SIGNAL]) send it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import psycopg
import pytest

from infra.local.env import LocalEnv
from infra.local.procs import PartError, db_user
from tests.conftest import REPO, make_state_dir
from tests.integration.interrupting import (
    Running,
    admin,
    cli,
    descendants,
    leftovers,
    ok,
    pgbackrest_jobs,
    state,
    target_now,
    tidy,
    tool_running,
    tool_running_pid,
    wait_for,
)
from workers.ops import restore_marker

DAY = "BTCUSDT-trades-2019-04-01"


@pytest.fixture(scope="module")
def env(shared_data, tmp_path_factory):
    """Migrated, the first 60,000 trades of the real day ingested, a filler table (so that
    pgBackRest's copies take long enough to be caught running) and a full backup."""
    e = LocalEnv(make_state_dir())
    try:
        e.up()
        ok(e, "migrate")
        head = tmp_path_factory.mktemp("day") / f"{DAY}.csv"
        head.write_text("".join((shared_data / f"{DAY}.csv").open().readlines()[:60_000]))
        ok(e, "ingest", str(head))
        with admin(e) as c:
            c.execute("CREATE TABLE public.filler AS SELECT g, md5(g::text) || md5((g + 1)::text)"
                      " AS a FROM generate_series(1, 1000000) g")
        ok(e, "backup", "--type", "full")
        yield e
    finally:
        try:
            e.down(save_s3=False)
        finally:
            shutil.rmtree(e.state, ignore_errors=True)


# --- item 11: backup interrupted by a signal to its pid --------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_backup_interrupted_at_its_pid_stops_pgbackrest_and_the_next_backup_runs(
        env, tmp_path, sig):
    run = Running(env, tmp_path, "backup", "--type", "full")
    # pgBackRest's local workers copying files: the backup is under way.
    wait_for("pgBackRest's backup workers", lambda: tool_running(run, "backup:local"), run.p)
    run.p.send_signal(sig)
    code, _, err = run.wait()
    assert code == 130, err[-3000:]
    assert pgbackrest_jobs(env) == []  # the worker waited for its tools to be gone
    assert run.last_line() == f"backup: interrupted by {sig.name}", err[-2000:]
    assert "Traceback" not in err
    out = ok(env, "backup", "--type", "full")  # the lock is free
    assert "backup: full" in out


@pytest.mark.parametrize("side", ["client-lock", "lock"])
def test_a_held_backup_lock_is_reported_as_such(env, tmp_path, side):
    """The worker's lock (client-lock) and the one pgBackRest's TLS server takes for it (lock):
    both in the environment's own directory — the server's came from the machine's
    /etc/pgbackrest.conf, /tmp/pgbackrest, shared by every environment (two test workers'
    backups stopped each other)."""
    lock = env.pgbr_dir / side / "tickstack-backup-1.lock"
    u = db_user()
    kw = {"user": u.pw_uid, "group": u.pw_gid, "extra_groups": []} if u else {}
    # -o: the lock is held by flock alone, not by the command it runs
    holder = subprocess.Popen(["flock", "-x", "-o", str(lock), "sleep", "600"], **kw)
    try:
        wait_for("flock holding the lock", lambda: tool_running_pid(holder.pid, "sleep"))
        r = cli(env, "backup", "--type", "full")
        assert r.returncode == 1, (r.stdout, r.stderr)
        line = r.stderr.strip().splitlines()[-1]
        assert line.startswith(f"backup: another process holds the pgBackRest lock {lock}: "
                               f"pid {holder.pid} (flock -x -o {lock} sleep 600); "), line
        assert "stanza-create" not in line and "then run this again" in line, line
    finally:
        for p in descendants(holder.pid):
            os.kill(p, signal.SIGKILL)
        holder.kill()
        holder.wait()
    assert "backup: full" in ok(env, "backup", "--type", "full")


# --- item 6: SIGTERM to long commands exits as Ctrl-C does; a rerun completes ----------------

def blocked_in_query(env: LocalEnv, command: str, server: str = "primary") -> bool:
    """The command's session waits on a lock the test holds: it is mid-work, inside a query."""
    cluster = env.primary if server == "primary" else env.replica
    with psycopg.connect(cluster.dsn(), password=env.secrets["postgres_password"],
                         autocommit=True) as c:
        return bool(c.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name "
                              "= %s AND wait_event_type = 'Lock'",
                              [f"tickstack-{command}"]).fetchone()[0])


def sessions_of(env: LocalEnv, command: str, server: str = "primary") -> int:
    cluster = env.primary if server == "primary" else env.replica
    with psycopg.connect(cluster.dsn(), password=env.secrets["postgres_password"],
                         autocommit=True) as c:
        return c.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                         [f"tickstack-{command}"]).fetchone()[0]


def ticks_of_the_day(env: LocalEnv) -> tuple[int, int]:
    with admin(env) as c:
        return (c.execute("SELECT count(*) FROM market_data.btc_ticks").fetchone()[0],
                c.execute("SELECT coalesce(sum((metadata->>'row_count')::bigint), 0) "
                          "FROM landing.raw_blobs_5m")
                .fetchone()[0])


# (command line, server whose table the test locks, the table): the command blocks on it
LONG = {
    "ingest": (("ingest", "{day}"), "primary", "market_data.btc_ticks"),
    "replicate": (("replicate",), "replica", "market_data.btc_ticks"),
    "embed": (("embed",), "primary", "signals.btc_embeddings"),
}


@pytest.mark.parametrize("name", list(LONG))
def test_sigterm_stops_a_long_command_as_ctrl_c_does_and_a_rerun_completes(
        env, tmp_path, shared_data, name):
    """SIGTERM while the command waits inside a query (a table lock held by the test, so it is
    caught mid-work every time): exit 130 and one line saying so, its query cancelled and its
    sessions gone; the rerun completes — every trade of the day once on the primary and in the
    registry, the replica equal, every window embedded."""
    args, server, table = LONG[name]
    args = tuple(a.format(day=shared_data / f"{DAY}.csv") for a in args)
    if name == "replicate":  # the replica lags: an hour of ticks it does not have
        with psycopg.connect(env.replica.dsn(), password=env.secrets["postgres_password"],
                             autocommit=True) as c:
            c.execute("DELETE FROM market_data.btc_ticks WHERE bucket_5m < "
                      "'2019-04-01 01:00+00'")
    cluster = env.primary if server == "primary" else env.replica
    with psycopg.connect(cluster.dsn(), password=env.secrets["postgres_password"]) as lock:
        lock.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        run = Running(env, tmp_path, *args)
        wait_for(f"{name} waiting on {table}", lambda: blocked_in_query(env, name, server),
                 run.p)
        run.p.send_signal(signal.SIGTERM)
        code, _, err = run.wait()
        lock.rollback()
    assert code == 130, err[-3000:]
    assert run.last_line() == f"{name}: interrupted by SIGTERM", err[-2000:]
    assert "Traceback" not in err
    assert sessions_of(env, name, server) == 0  # its query cancelled, its connections closed
    ok(env, *args)
    if name == "ingest":
        rows = sum(1 for _ in (shared_data / f"{DAY}.csv").open())
        assert ticks_of_the_day(env) == (rows, rows)
    elif name == "replicate":
        ok(env, "replicate", "--check")
    else:
        assert json.loads(ok(env, "embed", "--json").strip().splitlines()[-1])[
            "windows_pending"] == 0


def test_a_signal_at_any_point_inside_the_database_driver_is_a_clean_interrupt(env):
    """SIGTERM landing while psycopg runs — between sending a command and reading its result,
    at each of the driver's lines in turn (tests/integration/interrupt_points.py): every time
    a KeyboardInterrupt, the connection ready for the cleanup's next query, no half-written
    transaction. Raised inside the driver, the interrupt left a command in progress: 'another
    command is already in progress' and exit 1 from the ingest's cleanup."""
    with admin(env) as c:
        c.execute("CREATE TABLE public.interrupt_points (k bigint, part int)")
    try:
        r = subprocess.run([sys.executable, "-m", "tests.integration.interrupt_points",
                            env.primary.dsn(), "public.interrupt_points"], cwd=REPO,
                           env={**os.environ, "PGPASSWORD": env.secrets["postgres_password"]},
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"the run ended ({r.returncode}) at: {r.stderr[-3000:]}"
        got = json.loads(r.stdout.strip().splitlines()[-1])
        assert got["problems"] == [], (len(got["problems"]), got["problems"][:20])
        assert min(got["points"].values()) >= 10, got  # the driver's code was gone through
    finally:
        with admin(env) as c:
            c.execute("DROP TABLE public.interrupt_points")


def test_sigterm_stops_fetch_mid_download_and_a_rerun_resumes(tmp_path, shared_data):
    from tests.integration import archive_faults as faults
    from tests.integration import archive_server as arc

    root = tmp_path / "archive"
    arc.put_real_day(root, shared_data)
    real = arc.archive_path("daily", "BTCUSDT", "2019-04-01")
    cache = tmp_path / "cache"
    env = {**os.environ, "TICKSTACK_ARCHIVE_CACHE_DIR": str(cache),
           "TICKSTACK_ARCHIVE_READ_TIMEOUT_SECONDS": "2", "TICKSTACK_ARCHIVE_ATTEMPTS": "1",
           "TICKSTACK_LOG_FORMAT": "json"}
    args = [sys.executable, "-m", "workers", "fetch", "--symbol", "BTCUSDT",
            "--since", "2019-04-01", "--until", "2019-04-01", "--json"]
    with arc.ArchiveServer(root) as server:
        env["TICKSTACK_ARCHIVE_BASE_URL"] = server.url
        server.always(real, faults.stall(1_000_000))  # a million bytes, then silence
        part = cache / (real + ".part")
        with open(tmp_path / "err", "w") as err:
            p = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                 stderr=err)
            wait_for("a partial download", lambda: part.exists() and
                     part.stat().st_size == 1_000_000, p)
            p.send_signal(signal.SIGTERM)
            code = p.wait(timeout=300)
        text = (tmp_path / "err").read_text()
        assert code == 130, text[-3000:]
        assert text.strip().splitlines()[-1] == "fetch: interrupted by SIGTERM", text[-2000:]
        server.always(real, None)
        server.clear()
        again = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True,
                               timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        assert [r.range for r in server.gets(real)] == ["bytes=1000000-"]  # resumed
    assert (cache / real).read_bytes() == (shared_data / f"{arc.REAL_NAME}.zip").read_bytes()


# --- item 6: restore interrupted at each step ------------------------------------------------

def _signal_when_tool_runs(needle: str, sig: signal.Signals):
    def act(run: Running) -> None:
        wait_for(f"`{needle}` running", lambda: tool_running(run, needle), run.p)
        run.p.send_signal(sig)
    return act


IN_PROCESS = {
    # a signal from outside while pgBackRest restores files into the new data directory
    "sigterm-during-pgbackrest-restore": (
        {}, _signal_when_tool_runs(" restore ", signal.SIGTERM), "SIGTERM", "pgbackrest restore",
        "the old primary is back in place and running"),
    "sigint-during-pgbackrest-restore": (
        {}, _signal_when_tool_runs(" restore ", signal.SIGINT), "SIGINT", "pgbackrest restore",
        "the old primary is back in place and running"),
    # the old primary stopped, not yet moved aside
    "sigterm-after-the-stop": (
        {"TICKSTACK_CRASH_AT": "restore_stopped:1:SIGTERM"}, None, "SIGTERM",
        "stop primary, keep old data aside", "the old primary is running again"),
    # the restored server started, replaying WAL
    "sigint-during-wal-replay": (
        {"TICKSTACK_CRASH_AT": "restore_replaying:1:SIGINT"}, None, "SIGINT",
        "WAL replay up to the target", "the old primary is back in place and running"),
}


@pytest.mark.parametrize("case", list(IN_PROCESS))
def test_interrupted_restore_puts_the_old_primary_back(env, tmp_path, case):
    extra, act, sig, step, what = IN_PROCESS[case]
    before = state(env)
    run = Running(env, tmp_path, "restore", "--force", "--timeline", "current",
                  "--target-time", target_now(), extra=extra)
    if act is not None:
        act(run)
    code, _, err = run.wait()
    assert code == 130, err[-3000:]
    line = run.last_line()
    assert line.startswith(f"restore: interrupted by {sig} during '{step}"), line
    assert what in line, line
    assert "Traceback" not in err
    assert pgbackrest_jobs(env) == []
    # The primary is the old one, running, with all its data; nothing is left to undo.
    assert env.primary.healthy() and state(env) == before
    assert not restore_marker.path_for(env.primary.data).exists()
    assert [n for n in leftovers(env) if ".failed-restore-" not in n] == []
    tidy(env)
    assert env.up() == []  # `make up` finds nothing to do
    assert state(env) == before


KILLED = {
    # SIGKILL once pgBackRest has restored the files, before the server starts
    "after-pgbackrest-restore": "restore_restored:1",
    # SIGKILL while the restored server replays WAL (it keeps running, and promotes)
    "during-wal-replay": "restore_replaying:1",
    # SIGKILL with the old primary stopped, not moved
    "after-the-stop": "restore_stopped:1",
}


@pytest.mark.parametrize("case", list(KILLED))
def test_restore_killed_outright_is_undone_by_up(env, tmp_path, case):
    before = state(env)
    r = cli(env, "restore", "--force", "--timeline", "current", "--target-time", target_now(),
            extra={"TICKSTACK_CRASH_AT": KILLED[case]})
    assert r.returncode == -signal.SIGKILL, (r.stdout, r.stderr[-2000:])
    started = env.up()  # what `python -m infra.local up` and `make up` run
    assert env.primary.healthy() and state(env) == before  # the old primary, all its data
    assert "primary" in started
    assert any(s.startswith("an interrupted restore was undone: ") for s in started), started
    assert not restore_marker.path_for(env.primary.data).exists()
    assert [n for n in leftovers(env) if ".failed-restore-" not in n] == []
    tidy(env)


def test_killed_restore_of_a_lost_primary_stops_up_with_the_command(env, tmp_path):
    """The disaster case: no old data directory to put back. `up` does not initdb an empty
    primary over the unfinished restore; it names the command, and that command finishes it."""
    before = state(env)
    target = target_now()
    with admin(env) as c:  # archive a commit after the target before the primary goes
        c.execute("SELECT pg_current_xact_id()")
        wal = c.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
        wait_for(f"{wal} archived", lambda: (c.execute(
            "SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0] or "") >= wal)
    env.primary.stop()
    lost = env.primary.data.with_name("lost-primary")
    env.primary.data.rename(lost)
    try:
        r = cli(env, "restore", "--timeline", "current", "--target-time", target,
                extra={"TICKSTACK_CRASH_AT": "restore_restored:1"})
        assert r.returncode == -signal.SIGKILL, (r.stdout, r.stderr[-2000:])
        with pytest.raises(PartError) as e:
            env.up()
        text = str(e.value)
        assert "no old data directory to put back" in text, text
        assert f"python -m workers restore --target-time {target}" in text, text
        assert not env.primary.running()  # nothing started on the unfinished restore
        out = ok(env, "restore", "--timeline", "current", "--target-time", target)
        assert "interrupted restore found" in out, out
        assert not restore_marker.path_for(env.primary.data).exists()
        env.up()
        got = state(env)
        assert got[:2] == before[:2]  # every tick and row up to the target
    finally:
        shutil.rmtree(lost, ignore_errors=True)
        tidy(env)


def test_marker_format_is_what_up_reads(tmp_path):
    """The note is JSON a person can read; an unreadable one is an error naming the file."""
    data = tmp_path / "data"
    data.mkdir()
    m = restore_marker.begin(data, aside=tmp_path / "data.before", target="T")
    raw = json.loads(restore_marker.path_for(data).read_text())
    assert raw["pid"] == os.getpid() and raw["aside"] == str(tmp_path / "data.before")
    assert restore_marker.alive(m)
    restore_marker.path_for(data).write_text("{not json")
    with pytest.raises(restore_marker.MarkerError, match=str(restore_marker.path_for(data))):
        restore_marker.read(data)
