"""`workers fetch` when the link or the archive fails: cuts, truncation, stalls, error statuses,
missing days, bad checksums, bad options; every failure named, and a rerun completes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date

import pytest

from tests.conftest import REPO
from tests.integration import archive_faults as faults
from tests.integration import archive_server as arc
from tests.integration.archive_server import archive_path
from tests.integration.fetch.support import (
    REAL,
    REAL_SIZE,
    archive_env,
    by_status,
    day_paths,
    fetch,
    leftovers,
    result,
    verified,
)


def test_resume_after_a_connection_cut_mid_file(server, cache, shared_data):
    server.queue(REAL, faults.cut(1_000_000))
    p = fetch(server, cache, "--symbol", "BTCUSDT", "--since", "2019-04-01",
              "--until", "2019-04-01", "--json")
    assert p.returncode == 0, p.stderr
    assert [(r.range, r.status) for r in server.gets(REAL)] == [
        (None, 200), ("bytes=1000000-", 206)]
    assert (cache / REAL).read_bytes() == (shared_data / f"{arc.REAL_NAME}.zip").read_bytes()
    assert result(p)["files"][0]["received"] == REAL_SIZE  # nothing received twice
    assert "connection cut" in p.stderr  # the retry is logged with its reason


def test_truncated_download_fails_then_a_rerun_resumes_it(server, cache, shared_data):
    server.always(REAL, faults.truncated(1_500_000))
    args = ("--symbol", "BTCUSDT", "--since", "2019-04-01", "--until", "2019-04-01", "--json")
    p = fetch(server, cache, *args)
    assert p.returncode == 1
    assert "failed BTCUSDT-trades-2019-04-01.zip: connection cut" in p.stderr
    assert "gave up after" in p.stderr
    assert not (cache / REAL).exists()
    assert (cache / (REAL + ".part")).stat().st_size == 1_500_000  # kept for the rerun

    server.always(REAL, None)
    server.clear()
    again = fetch(server, cache, *args)
    assert again.returncode == 0, again.stderr
    assert [r.range for r in server.gets(REAL)] == ["bytes=1500000-"]
    assert (cache / REAL).read_bytes() == (shared_data / f"{arc.REAL_NAME}.zip").read_bytes()
    assert result(again)["files"][0]["resumed_from"] == 1_500_000
    assert leftovers(cache) == []


def test_a_flaky_link_still_finishes_a_file(server, cache):
    """Every answer drops after 400 kB: attempts that received bytes do not count against the
    limit (3 here), so the 3.4 MB file completes in 9 pieces."""
    server.always(REAL, faults.cut(400_000))
    p = fetch(server, cache, "--symbol", "BTCUSDT", "--since", "2019-04-01",
              "--until", "2019-04-01", "--json")
    assert p.returncode == 0, p.stderr
    assert len(server.gets(REAL)) == 9 and verified(cache, REAL)


def test_a_day_missing_from_the_archive_then_a_rerun_completes(server, cache, archive):
    symbol = "MISSUSDT"  # its own symbol: the module's archive stays as the other tests expect
    arc.put_days(archive, date(2019, 7, 1), date(2019, 7, 5), symbol=symbol,
                 skip=[date(2019, 7, 3)])
    args = ("--symbol", symbol, "--since", "2019-07-01", "--until", "2019-07-05", "--json")
    p = fetch(server, cache, *args)
    assert p.returncode == 1
    missing = archive_path("daily", symbol, "2019-07-03")
    assert f"missing {missing}: not in the archive (404)" in p.stderr
    got = by_status(result(p))
    assert got["missing"] == {missing}
    assert got["downloaded"] == day_paths(date(2019, 7, 1), date(2019, 7, 5), symbol) - {missing}

    allowed = fetch(server, cache, *args, "--allow-missing")
    assert allowed.returncode == 0 and f"missing {missing}" in allowed.stderr

    arc.put_days(archive, date(2019, 7, 3), date(2019, 7, 3), symbol=symbol)  # published late
    server.clear()
    done = fetch(server, cache, *args)
    assert done.returncode == 0, done.stderr
    assert by_status(result(done))["downloaded"] == {missing}
    assert {r.path for r in server.gets(".zip")} == {missing}


def test_a_checksum_mismatch_keeps_nothing(server, cache):
    path = archive_path("daily", "BTCUSDT", "2019-05-10")
    server.always(path, faults.corrupt())
    p = fetch(server, cache, "--symbol", "BTCUSDT", "--since", "2019-05-10",
              "--until", "2019-05-10", "--json")
    assert p.returncode == 1
    assert "failed BTCUSDT-trades-2019-05-10.zip: checksum mismatch: its .CHECKSUM says" in \
        p.stderr
    assert len(server.gets(path)) == 2  # once more from the start before giving up
    assert not (cache / path).exists() and leftovers(cache) == []


@pytest.mark.parametrize("fault, gets", [(faults.stall(None), 3), (faults.stall(200_000), 4)],
                         ids=["before-headers", "mid-file"])
def test_a_stalling_server_fails_the_file_then_a_rerun_completes(server, cache, fault, gets):
    server.always(REAL, fault)
    args = ("--symbol", "BTCUSDT", "--since", "2019-04-01", "--until", "2019-04-01", "--json")
    p = fetch(server, cache, *args)
    assert p.returncode == 1
    assert "stalled: no data for 1 s" in p.stderr
    # The attempts setting (3) counts attempts that received nothing: mid-file, the first got
    # 200 kB, then three resumed ones got nothing.
    assert len(server.gets(REAL)) == gets
    server.always(REAL, None)
    server.clear()
    again = fetch(server, cache, *args)
    assert again.returncode == 0, again.stderr
    assert verified(cache, REAL)


def test_429_and_503_wait_as_retry_after_says(server, cache):
    path = archive_path("daily", "BTCUSDT", "2019-05-20")
    server.queue(path, faults.status(429, 1), faults.status(503, 1))
    p = fetch(server, cache, "--symbol", "BTCUSDT", "--since", "2019-05-20",
              "--until", "2019-05-20", "--json")
    assert p.returncode == 0, p.stderr
    gets = server.gets(path)
    assert [r.status for r in gets] == [429, 503, 200]
    # Retry-After: 1 is honoured (the backoff alone would be 0.05 s here).
    assert all(b.t - a.t >= 0.9 for a, b in zip(gets, gets[1:], strict=False))
    assert verified(cache, path)


def test_a_server_error_that_persists_fails_with_its_status(server, cache):
    path = archive_path("daily", "BTCUSDT", "2019-05-21")
    server.always(path, faults.status(503))
    p = fetch(server, cache, "--symbol", "BTCUSDT", "--since", "2019-05-21",
              "--until", "2019-05-21", "--json")
    assert p.returncode == 1
    assert ("failed BTCUSDT-trades-2019-05-21.zip: HTTP 503 Service Unavailable (gave up after "
            "3 attempts)") in p.stderr


def test_a_retry_after_beyond_the_limit_fails_at_once(server, cache):
    path = archive_path("daily", "BTCUSDT", "2019-05-22")
    server.always(path, faults.status(429, 3600))
    p = fetch(server, cache, "--symbol", "BTCUSDT", "--since", "2019-05-22",
              "--until", "2019-05-22", "--json")
    assert p.returncode == 1
    assert "asks to retry after 3600 s" in p.stderr and "run again later" in p.stderr
    assert len(server.gets(path)) == 1


def test_an_unknown_symbol(server, cache):
    p = fetch(server, cache, "--symbol", "NOSUCHCOIN", "--since", "2019-04-01",
              "--until", "2019-04-03")
    assert p.returncode == 2
    assert "not one file of this request is in the archive: unknown symbol" in p.stdout
    assert not list(cache.rglob("*.zip"))


@pytest.mark.parametrize("args, message", [
    (("--symbol", "BTC/USDT", "--since", "2019-04-01"), "is not a Binance symbol"),
    (("--symbol", "BTCUSDT", "--market", "margin", "--since", "2019-04-01"), "--market must"),
    (("--symbol", "BTCUSDT", "--since", "2019-04-01", "--until", "2999-01-01"),
     "is not in the archive yet"),
    (("--symbol", "BTCUSDT", "--since", "2019-04-02", "--until", "2019-04-01"), "is after"),
    (("--symbol", "BTCUSDT", "--since", "2019-04-01", "--allow-redirect-host", "a/b"),
     "--allow-redirect-host 'a/b' is not a host name"),
])
def test_bad_options_exit_2_before_any_request(server, cache, args, message):
    p = fetch(server, cache, *args)
    assert p.returncode == 2 and message in p.stderr
    assert server.requests == []


def test_an_unreachable_archive_fails_with_where(cache):
    class Closed:  # a port nothing listens on
        url = "http://127.0.0.1:9"

    p = fetch(Closed, cache, "--symbol", "BTCUSDT", "--since", "2019-04-01",
              "--until", "2019-04-01")
    assert p.returncode == 1
    assert "cannot connect to http://127.0.0.1:9" in p.stderr


def test_two_fetches_at_once_download_each_file_once(server, cache):
    server.always(REAL, faults.throttle(2_000_000))  # ~1.7 s: the two runs overlap
    env = {**os.environ, **archive_env(server, cache)}
    cmd = [sys.executable, "-m", "workers", "fetch", "--symbol", "BTCUSDT",
           "--since", "2019-03-30", "--until", "2019-04-02", "--json"]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    want = day_paths(date(2019, 3, 30), date(2019, 4, 2))
    for out, _ in outs:
        report = json.loads(out.strip().splitlines()[-1])
        assert {f["path"] for f in report["files"]} == want
        assert all(f["status"] in ("downloaded", "cached") for f in report["files"])
    gets = [r.path for r in server.gets(".zip")]
    assert sorted(gets) == sorted(want)  # each file downloaded once, by one of the two
    assert all(verified(cache, f) for f in want)
