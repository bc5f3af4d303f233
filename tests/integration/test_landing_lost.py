"""Landing lost must be noticed loudly (issue 27, item 4), and landing's deletes are checked
(item 9), on real servers: PostgreSQL, the moto S3 server, pgBackRest, the CLI as processes.

Landing is the source of truth and the registry vouches for it. When objects are deleted, the
bucket emptied or changed under the registry, the landing audit names them; a rerun of the file
that covered them lands them again (registry = objects = ticks, as before); `replicate`,
`backup --check` and `workers up` do not call the platform equal, healthy or up to date.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest

from tests.conftest import REPO
from tests.integration.pipeline import Stack
from tests.integration.test_main_job import stage_line
from tests.integration.test_main_job import up as run_up
from tests.integration.test_replica import Replica
from tests.integration.test_replica import cli_env as replica_env
from workers.core.ticks import TICK_SCHEMA
from workers.db.landing_audit import audit
from workers.db.stream_commit import compact
from workers.landing.parts import write_part
from workers.landing.store import DeleteFailed

DAY = "BTCUSDT-trades-2019-04-01"
T0_MS = 1_554_076_800_000  # 2019-04-01 00:00 UTC
HOUR_MS = 3_600_000


def hours(shared_data: Path, out: Path, first: int, last: int) -> Path:
    """The real day's trades from `first` to `last` hour (exclusive), as a file of its own."""
    out.parent.mkdir(parents=True, exist_ok=True)
    lo, hi = T0_MS + first * HOUR_MS, T0_MS + last * HOUR_MS
    with (shared_data / f"{DAY}.csv").open() as src, out.open("w") as dst:
        for line in src:
            if lo <= int(line.split(",")[4]) < hi:
                dst.write(line)
    return out


@pytest.fixture
def stack(local_env):
    s = Stack(local_env)
    yield s
    s.close()


def raw_keys(stack: Stack) -> list[str]:
    return stack.landing().keys("raw/")


def landing_matches_registry_and_ticks(stack: Stack) -> None:
    """Every registry row's object is in landing with its size and SHA-256, and holds exactly
    the ticks the primary has of that bucket."""
    landing = stack.landing()
    with stack.admin() as c:
        rows = c.execute("SELECT s3_uri, object_size_bytes, metadata->>'sha256', "
                         "(metadata->>'row_count')::int, bucket_5m FROM landing.raw_blobs_5m "
                         "ORDER BY bucket_5m").fetchall()
        ticks = dict(c.execute("SELECT bucket_5m, count(*) FROM market_data.btc_ticks "
                               "GROUP BY 1").fetchall())
    assert rows and sorted(landing.key_of(r[0]) for r in rows) == raw_keys(stack)
    for uri, size, sha, n, bucket in rows:
        obj = landing.read_verified(landing.key_of(uri), sha)
        assert obj.size == size and obj.table.num_rows == n == ticks[bucket], uri


def ingest_cli(stack: Stack, path: Path) -> dict:
    r = stack.cli("ingest", str(path), "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_audit_names_lost_and_changed_objects_and_a_rerun_lands_them_again(
        stack, shared_data, tmp_path):
    f = hours(shared_data, tmp_path / "a" / f"{DAY}.csv", 0, 2)
    first = ingest_cli(stack, f)
    assert first["buckets_landed"] == 24
    before = stack.state()
    landing = stack.landing()
    with stack.admin(autocommit=True) as c:
        assert audit(c, landing).ok
    keys = raw_keys(stack)
    gone, shrunk = keys[3:6], keys[10]
    for k in gone:  # deleted (a delete marker in the versioned bucket)
        stack.s3.delete_object(Bucket=stack.bucket, Key=k)
    # Changed behind the registry's back: the same bucket with a trade fewer, a valid object
    # with its own checksum (no reader of it alone could tell).
    t = landing.read(shrunk).table
    landing.write(shrunk, t.slice(1), "BTCUSDT")
    # And an object no registry row names (a load cut short between landing and commit).
    stray = "raw/spot/BTCUSDT/2019-04-02/0000.parquet"
    landing.write(stray, ticks(1, 1, (T0_MS + 24 * HOUR_MS) * 1000), "BTCUSDT")

    with stack.admin(autocommit=True) as c:
        a = audit(c, landing)
    assert not a.ok and a.registered == 24
    assert sorted(r.uri for r in a.missing) == [landing.uri(k) for k in gone]
    assert [r.uri for r, _ in a.altered] == [landing.uri(shrunk)]
    assert "registered" in a.altered[0][1]
    assert a.unregistered == [stray]
    text = a.summary()
    assert text.startswith("LANDING LOST: 4 of 24 registered objects")
    assert "spot BTCUSDT 2019-04-01: 4 bucket(s)" in text and "re-ingest" in text

    # The file was loaded and its registry rows are unchanged, but landing lost objects of its
    # buckets: the rerun is not skipped, and lands them again.
    again = ingest_cli(stack, f)
    # Rows put back into landing count as inserted (the summary counts against the landing
    # objects, workers/db/summary.py); the database held them all: no tick is new there.
    assert again["files_skipped"] == 0 and again["ticks_inserted"] == 0 and again["inserted"] > 0
    assert again["buckets_landed"] == 4
    assert stack.state() == before
    with stack.admin(autocommit=True) as c:
        a = audit(c, landing)
    assert a.ok and a.unregistered == [stray], a.summary()
    stack.s3.delete_object(Bucket=stack.bucket, Key=stray)
    landing_matches_registry_and_ticks(stack)
    assert ingest_cli(stack, f)["files_skipped"] == 1  # whole again: skipped as before


def empty_bucket(stack: Stack) -> None:
    """Every version and delete marker: what an emptied (or recreated) bucket holds."""
    for page in stack.s3.get_paginator("list_object_versions").paginate(Bucket=stack.bucket):
        for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
            stack.s3.delete_object(Bucket=stack.bucket, Key=v["Key"], VersionId=v["VersionId"])


def test_an_emptied_bucket_is_named_and_a_rerun_restores_landing_exactly(
        stack, shared_data, tmp_path):
    f = hours(shared_data, tmp_path / "a" / f"{DAY}.csv", 0, 2)
    ingest_cli(stack, f)
    before, keys = stack.state(), raw_keys(stack)
    empty_bucket(stack)
    r = stack.cli("ingest", str(f), "--json")  # re-lands everything: registry = objects = ticks
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["buckets_landed"] == 24
    assert raw_keys(stack) == keys and stack.state() == before
    landing_matches_registry_and_ticks(stack)


def test_landing_command_names_the_loss_and_relands_what_the_primary_reproduces(
        stack, shared_data, tmp_path):
    f = hours(shared_data, tmp_path / "a" / f"{DAY}.csv", 0, 2)
    ingest_cli(stack, f)
    before, keys = stack.state(), raw_keys(stack)
    r = stack.cli("landing")
    assert r.returncode == 0 and "landing holds every registered object (24 registered" in \
        r.stdout, r.stdout + r.stderr
    empty_bucket(stack)
    # One bucket the primary no longer holds whole (as retention, or a loss there, leaves it):
    # its bytes cannot be reproduced, so it is refused, never invented.
    with stack.admin() as c:
        c.execute("DELETE FROM market_data.btc_ticks WHERE bucket_5m = '2019-04-01 01:00+00' "
                  "AND trade_id = (SELECT min(trade_id) FROM market_data.btc_ticks "
                  "WHERE bucket_5m = '2019-04-01 01:00+00')")
    r = stack.cli("landing")
    assert r.returncode == 1, r.stdout + r.stderr
    flat = " ".join(r.stdout.split())
    assert "LANDING LOST: 24 of 24 registered objects" in flat and "--reland-from-primary" in flat
    assert f"missing: s3://{stack.bucket}/{keys[0]}" in r.stdout
    r = stack.cli("landing", "--reland-from-primary", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    bad = f"s3://{stack.bucket}/raw/spot/BTCUSDT/2019-04-01/0100.parquet"
    assert len(out["written"]) == 23 and [x["uri"] for x in out["refused"]] == [bad]
    assert "do not give the registered bytes" in out["refused"][0]["why"]
    assert out["after"]["missing"] == [bad]
    assert raw_keys(stack) == [k for k in keys if not bad.endswith(k)]
    # The source file brings the last one back, and a replay of landing the primary's lost
    # tick: registry = objects = ticks, as before.
    assert ingest_cli(stack, f)["buckets_landed"] == 1
    r = stack.cli("ingest", "--from-landing", "--json")
    assert r.returncode == 0 and json.loads(r.stdout.strip().splitlines()[-1])["inserted"] == 1
    assert stack.state() == before
    landing_matches_registry_and_ticks(stack)
    r = stack.cli("landing", "--reland-from-primary")
    assert r.returncode == 0 and "re-landed 0 object(s)" in r.stdout, r.stdout + r.stderr


def test_replicate_and_backup_check_say_landing_is_lost(stack, local_env, shared_data, tmp_path):
    replica = Replica(local_env)
    try:
        env = {**replica_env(stack, replica),
               "TICKSTACK_PGBACKREST_CONFIG": str(local_env.pgbackrest_conf_path)}
        f = hours(shared_data, tmp_path / "a" / f"{DAY}.csv", 0, 1)
        assert stack.cli("ingest", str(f)).returncode == 0

        def cli(*args):
            return subprocess.run([sys.executable, "-m", "workers", *args], cwd=REPO,
                                  env={**stack.cli_env(), **env}, capture_output=True,
                                  text=True, timeout=600)

        r = cli("replicate")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "landing holds every registered object (12)" in r.stdout
        assert cli("backup", "--type", "full").returncode == 0  # a healthy archive to check
        r = cli("backup", "--check")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "landing holds every registered object (12" in r.stdout
        keys = raw_keys(stack)
        for k in keys[:2]:
            stack.s3.delete_object(Bucket=stack.bucket, Key=k)
        for args in (("replicate", "--check"), ("replicate",)):
            r = cli(*args)
            assert r.returncode == 1, (args, r.stdout, r.stderr)
            assert "LANDING LOST: 2 of 12 registered objects" in r.stdout, (args, r.stdout)
            assert f"missing: s3://{stack.bucket}/{keys[0]}" in r.stdout
        r = cli("replicate", "--check", "--json")
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert r.returncode == 1 and out["landing"]["missing"] == [
            f"s3://{stack.bucket}/{k}" for k in keys[:2]]
        r = cli("backup", "--check")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "archive: healthy" in r.stdout  # the archive is fine; landing is not
        assert "LANDING LOST: 2 of 12 registered objects" in r.stdout
        # A check that cannot see landing (here: the bucket is gone) does not vouch for it.
        env["TICKSTACK_LANDING_BUCKET"] = "no-such-landing"
        r = cli("backup", "--check")
        assert r.returncode == 1 and "archive: healthy" in r.stdout, r.stdout + r.stderr
        assert "landing NOT audited: S3 error (NoSuchBucket)" in r.stdout, r.stdout
    finally:
        replica.db.drop()


def test_a_rebuild_says_landing_lost_what_its_registry_vouches_for(stack, shared_data,
                                                                   tmp_path):
    """`restore`'s landing replay (here after a restore done elsewhere: --skip-pitr) ends with
    the audit: objects the rebuilt registry vouches for that landing lost fail it, named."""
    f = hours(shared_data, tmp_path / "a" / f"{DAY}.csv", 0, 1)
    ingest_cli(stack, f)
    r = stack.cli("restore", "--target-time", "2026-01-01T00:00Z", "--skip-pitr")
    assert r.returncode == 0 and "landing holds every registered object (12 registered" in \
        " ".join(r.stdout.split()), r.stdout + r.stderr
    key = raw_keys(stack)[7]
    stack.s3.delete_object(Bucket=stack.bucket, Key=key)
    r = stack.cli("restore", "--target-time", "2026-01-01T00:00Z", "--skip-pitr")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "restore to 2026-01-01T00:00:00+00:00: done" in r.stdout
    assert "LANDING LOST: 1 of 12 registered objects" in " ".join(r.stdout.split())
    assert f"missing: s3://{stack.bucket}/{key}" in r.stdout


def test_up_reports_lost_landing_runs_the_backup_and_exits_1(stack, local_env, shared_data,
                                                            tmp_path):
    morning = hours(shared_data, tmp_path / "a" / f"{DAY}.csv", 0, 2)
    later = hours(shared_data, tmp_path / "b" / f"{DAY}.csv", 2, 4)
    ingest_cli(stack, later)
    lost = raw_keys(stack)[:5]  # objects of the later file, which up is not given
    for k in lost:
        stack.s3.delete_object(Bucket=stack.bucket, Key=k)
    r = run_up(stack, tmp_path / "report", str(morning))
    out = r.stdout
    assert r.returncode == 1, (out[-3000:], r.stderr[-3000:])
    line = " ".join(stage_line(out, "landing audit").split())
    assert line.startswith("FAILED") and "LANDING LOST: 5 of 48 registered objects" in line
    # The stages after it still ran; those that trust the registry say it beside their result.
    for name in ("embed", "retention", "backup", "archive check"):
        assert stage_line(out, name).startswith(("done", "same")), name
    assert "but LANDING LOST" in " ".join(stage_line(out, "archive check").split())
    flat = " ".join(out.split())
    assert "platform is up to date" not in flat and "already up to date" not in flat
    assert re.search(r"make up ran every stage, but landing audit FAILED: LANDING LOST", flat)
    assert "failed at landing audit" in (tmp_path / "report" / "index.html").read_text()
    # The same job given the file that covered them lands them again, and is whole.
    r = run_up(stack, tmp_path / "report", str(morning), str(later))
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "landing holds every registered object (48 registered" in " ".join(r.stdout.split())
    landing_matches_registry_and_ticks(stack)


def ticks(first_id: int, n: int, at_us: int) -> pa.Table:
    return pa.table({
        "trade_id": pa.array(range(first_id, first_id + n), pa.int64()),
        "event_time": pa.array([at_us + i for i in range(n)], pa.timestamp("us", tz="UTC")),
        "price": pa.array([Decimal("4100.5")] * n, pa.decimal128(24, 8)),
        "quantity": pa.array([Decimal("0.01")] * n, pa.decimal128(24, 8)),
        "quote_quantity": pa.array([Decimal("41.005")] * n, pa.decimal128(32, 8)),
        "is_buyer_maker": pa.array([i % 2 == 0 for i in range(n)]),
        "trade_kind": pa.nulls(n, pa.string())}, schema=TICK_SCHEMA)


DENY_STREAM_DELETES = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Deny", "Principal": "*", "Action": "s3:DeleteObject",
    "Resource": "arn:aws:s3:::{bucket}/stream/*"}]}


def test_compaction_fails_loudly_when_landing_refuses_to_delete_its_parts(stack):
    """A real refusal: a bucket policy denying s3:DeleteObject under stream/ (what the cloud's
    stream role without the delete action gets), enforced by the moto server, which answers
    DeleteObjects with 200 and the refusals in its body."""
    landing = stack.landing()
    bucket_us = T0_MS * 1000 + 12 * HOUR_MS * 1000
    parts = [write_part(landing, "spot", "BTCUSDT", bucket_us, ticks(i * 10, 10, bucket_us))
             for i in range(1, 4)]
    other = "raw/notes/other.txt"  # allowed: deleted in the same request
    stack.s3.put_object(Bucket=stack.bucket, Key=other, Body=b"x")
    stack.s3.put_bucket_policy(Bucket=stack.bucket, Policy=json.dumps(
        DENY_STREAM_DELETES).replace("{bucket}", stack.bucket))
    try:
        with pytest.raises(DeleteFailed) as e:
            landing.delete([parts[0], other, parts[1]])
        assert sorted(x["Key"] for x in e.value.errors) == parts[:2]
        assert landing.keys("", suffix="") == sorted(parts)  # the allowed key went
        # The compaction commits its bucket, then cannot delete the parts: it says so (before,
        # the parts stayed silently and every restart compacted them again).
        with stack.ingest_conn() as conn, pytest.raises(DeleteFailed) as e:
            compact(conn, landing, "spot", "BTCUSDT", bucket_us, "stream:test")
    finally:
        stack.s3.delete_bucket_policy(Bucket=stack.bucket)
    msg = str(e.value)
    assert msg.startswith("landing refused to delete 3 key(s) (AccessDenied): ")
    for k in parts:
        assert f"s3://{stack.bucket}/{k}: AccessDenied" in msg
    assert "s3:DeleteObject" in msg
    with stack.admin() as c:
        assert c.execute("SELECT (metadata->>'row_count')::int FROM landing.raw_blobs_5m"
                         ).fetchone()[0] == 30
    # Allowed again: the next compaction finds nothing new to land and deletes them.
    with stack.ingest_conn() as conn:
        assert compact(conn, landing, "spot", "BTCUSDT", bucket_us, "stream:test")["rows"] == 30
    assert landing.keys("stream/") == []


def test_the_audit_never_reports_a_loss_while_writers_merge_the_same_buckets(
        local_env, shared_data, tmp_path):
    """Two ingests of interleaved halves of the same buckets rewrite every object after it was
    first registered; audits all the while never call one missing or changed (suspects are
    looked at again under the buckets' locks), and afterwards landing is whole."""
    lines = (shared_data / f"{DAY}.csv").read_text().splitlines(keepends=True)[:30_000]
    halves = []
    for i in range(2):
        p = tmp_path / str(i) / f"{DAY}.csv"
        p.parent.mkdir()
        p.write_text("".join(lines[i::2]))
        halves.append(p)
    for _ in range(3):
        stack = Stack(local_env)
        try:
            env = {**stack.cli_env(), "TICKSTACK_INGEST_FLUSH_ROWS": "2000"}
            procs = [subprocess.Popen([sys.executable, "-m", "workers", "ingest", str(p)],
                                      cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True) for p in halves]
            audits = []
            with stack.admin(autocommit=True) as c:
                while any(p.poll() is None for p in procs) or not audits:
                    audits.append(audit(c, stack.landing()))
                errs = [p.communicate(timeout=600)[1] for p in procs]
                assert all(p.returncode == 0 for p in procs), [e[-2000:] for e in errs]
                for a in audits:
                    assert a.ok, a.summary()
                final = audit(c, stack.landing())
            assert final.ok and not final.unregistered and final.registered > 0
            landing_matches_registry_and_ticks(stack)
        finally:
            stack.close()
