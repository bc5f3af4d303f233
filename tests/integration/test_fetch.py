"""`workers fetch` against a local HTTP server laid out like Binance's public archive: the real
day (its real CHECKSUM) plus generated days and months; faults injected per file; `--ingest`
against a fresh database and landing bucket of the session's local environment."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration import archive_server as arc
from tests.integration.archive_server import ArchiveServer, archive_path
from tests.integration.pipeline import Stack

REAL = archive_path("daily", "BTCUSDT", "2019-04-01")
REAL_SIZE = 3_375_192


@pytest.fixture(scope="module")
def archive(tmp_path_factory, shared_data) -> Path:
    """2019-03-25 .. 2019-06-03 of BTCUSDT spot trades as the archive has them: days throughout,
    monthly files for March and April, none for May (not published yet); 2019-04-01 is the real
    day with its real CHECKSUM; the other files are small and generated."""
    root = tmp_path_factory.mktemp("archive")
    arc.put_real_day(root, shared_data)
    arc.put_days(root, date(2019, 3, 1), date(2019, 6, 3), skip=[date(2019, 4, 1)])
    arc.put_month(root, 2019, 3)
    arc.put_month(root, 2019, 4)
    return root


@pytest.fixture
def server(archive):
    with ArchiveServer(archive) as s:
        yield s


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


def archive_env(server: ArchiveServer, cache: Path, **extra) -> dict[str, str]:
    return {"TICKSTACK_ARCHIVE_BASE_URL": server.url, "TICKSTACK_ARCHIVE_CACHE_DIR": str(cache),
            "TICKSTACK_ARCHIVE_READ_TIMEOUT_SECONDS": "1", "TICKSTACK_ARCHIVE_ATTEMPTS": "3",
            "TICKSTACK_ARCHIVE_BACKOFF_SECONDS": "0.05", "TICKSTACK_LOG_FORMAT": "json",
            **{f"TICKSTACK_ARCHIVE_{k.upper()}": str(v) for k, v in extra.items()}}


def fetch(server, cache, *args: str, base_env: dict | None = None, timeout: float = 120,
          **extra) -> subprocess.CompletedProcess[str]:
    env = {**(base_env or os.environ), **archive_env(server, cache, **extra)}
    return subprocess.run([sys.executable, "-m", "workers", "fetch", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def result(p: subprocess.CompletedProcess[str]) -> dict:
    """The --json report (last stdout line)."""
    return json.loads(p.stdout.strip().splitlines()[-1])


def by_status(report: dict) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for f in report["files"]:
        out.setdefault(f["status"], set()).add(f["path"])
    return out


def day_paths(first: date, last: date, symbol: str = "BTCUSDT") -> set[str]:
    return {archive_path("daily", symbol, d.isoformat()) for d in arc.days(first, last)}


def verified(cache: Path, path: str) -> bool:
    """The cached zip matches the CHECKSUM the archive published (read from the archive's side
    by the caller) — here: the one beside it in the cache, which the fetch copied."""
    z = cache / path
    want = (cache / (path + ".CHECKSUM")).read_text().split()[0]
    return hashlib.sha256(z.read_bytes()).hexdigest() == want


def leftovers(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*.part"))


# --- the file set, the cache -----------------------------------------------------------------

def test_a_range_is_monthly_files_for_whole_months_days_for_the_rest(server, cache, archive):
    p = fetch(server, cache, "--symbol", "BTCUSDT", "--since", "2019-03-25",
              "--until", "2019-06-03", "--json")
    assert p.returncode == 0, p.stderr
    got = by_status(result(p))
    want = (day_paths(date(2019, 3, 25), date(2019, 3, 31))
            | {archive_path("monthly", "BTCUSDT", "2019-04")}
            | day_paths(date(2019, 5, 1), date(2019, 5, 31))  # no monthly file for May yet
            | day_paths(date(2019, 6, 1), date(2019, 6, 3)))
    assert got == {"downloaded": want}
    assert all(verified(cache, f) for f in want)
    for f in want:  # what the archive published, byte for byte
        assert (cache / f).read_bytes() == (archive / f).read_bytes()
    zips = {r.path for r in server.gets(".zip")}
    assert zips == want  # no April day asked for; May's monthly 404 answered by its days
    assert leftovers(cache) == []

    server.clear()
    again = fetch(server, cache, "--symbol", "BTCUSDT", "--since", "2019-03-25",
                  "--until", "2019-06-03", "--json")
    assert again.returncode == 0, again.stderr
    assert by_status(result(again)) == {"cached": want}
    assert server.requests == []  # verified files are not asked for again


def test_dry_run_lists_sizes_and_downloads_nothing(server, cache):
    p = fetch(server, cache, "--symbol", "BTCUSDT", "--since", "2019-04", "--until", "2019-04",
              "--dry-run")
    assert p.returncode == 0, p.stderr
    assert "to fetch" in p.stdout and "BTCUSDT-trades-2019-04.zip" in p.stdout
    assert "1 file(s), 1 to fetch" in p.stdout
    assert server.gets(".zip") == [] and not (cache / "data").exists()


def test_verify_refetches_a_cached_file_that_no_longer_matches(server, cache):
    args = ("--symbol", "BTCUSDT", "--since", "2019-05-02", "--until", "2019-05-02", "--json")
    assert fetch(server, cache, *args).returncode == 0
    path = archive_path("daily", "BTCUSDT", "2019-05-02")
    (cache / path).write_bytes(b"bit rot")
    server.clear()
    assert by_status(result(fetch(server, cache, *args))) == {"cached": {path}}  # trusted
    p = fetch(server, cache, *args, "--verify")
    assert p.returncode == 0, p.stderr
    assert by_status(result(p)) == {"downloaded": {path}} and verified(cache, path)


# --- failures --------------------------------------------------------------------------------

def test_resume_after_a_connection_cut_mid_file(server, cache, shared_data):
    server.queue(REAL, arc.cut(1_000_000))
    p = fetch(server, cache, "--symbol", "BTCUSDT", "--since", "2019-04-01",
              "--until", "2019-04-01", "--json")
    assert p.returncode == 0, p.stderr
    assert [(r.range, r.status) for r in server.gets(REAL)] == [
        (None, 200), ("bytes=1000000-", 206)]
    assert (cache / REAL).read_bytes() == (shared_data / f"{arc.REAL_NAME}.zip").read_bytes()
    assert result(p)["files"][0]["received"] == REAL_SIZE  # nothing received twice
    assert "connection cut" in p.stderr  # the retry is logged with its reason


def test_truncated_download_fails_then_a_rerun_resumes_it(server, cache, shared_data):
    server.always(REAL, arc.truncated(1_500_000))
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
    server.always(REAL, arc.cut(400_000))
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
    server.always(path, arc.corrupt())
    p = fetch(server, cache, "--symbol", "BTCUSDT", "--since", "2019-05-10",
              "--until", "2019-05-10", "--json")
    assert p.returncode == 1
    assert "failed BTCUSDT-trades-2019-05-10.zip: checksum mismatch: its .CHECKSUM says" in \
        p.stderr
    assert len(server.gets(path)) == 2  # once more from the start before giving up
    assert not (cache / path).exists() and leftovers(cache) == []


@pytest.mark.parametrize("fault, gets", [(arc.stall(None), 3), (arc.stall(200_000), 4)],
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
    server.queue(path, arc.status(429, 1), arc.status(503, 1))
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
    server.always(path, arc.status(503))
    p = fetch(server, cache, "--symbol", "BTCUSDT", "--since", "2019-05-21",
              "--until", "2019-05-21", "--json")
    assert p.returncode == 1
    assert ("failed BTCUSDT-trades-2019-05-21.zip: HTTP 503 Service Unavailable (gave up after "
            "3 attempts)") in p.stderr


def test_a_retry_after_beyond_the_limit_fails_at_once(server, cache):
    path = archive_path("daily", "BTCUSDT", "2019-05-22")
    server.always(path, arc.status(429, 3600))
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
    server.always(REAL, arc.throttle(2_000_000))  # ~1.7 s: the two runs overlap
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


# --- a hostile but honest mirror ---------------------------------------------------------------

def log_events(p: subprocess.CompletedProcess[str], event: str) -> list[dict]:
    return [e for e in (json.loads(line) for line in p.stderr.splitlines()
                        if line.startswith("{")) if e["event"] == event]


@pytest.mark.parametrize("fault, what", [(arc.redirect_loop(), "redirect loop: "),
                                         (arc.redirect_chain(), "more than 10 redirects: ")],
                         ids=["loop", "endless-chain"])
def test_a_file_in_a_redirect_loop_fails_alone_named_and_the_others_are_fetched(
        server, cache, fault, what):
    bad = archive_path("daily", "BTCUSDT", "2019-05-03")
    server.always(bad, fault)
    args = ("--symbol", "BTCUSDT", "--since", "2019-05-01", "--until", "2019-05-05", "--json")
    p = fetch(server, cache, *args)
    assert p.returncode == 1, p.stderr[-3000:]
    report = result(p)
    others = day_paths(date(2019, 5, 1), date(2019, 5, 5)) - {bad}
    assert by_status(report) == {"failed": {bad}, "downloaded": others}
    assert report["counts"]["failed"] == 1 and report["exit"] == 1
    assert all(verified(cache, f) for f in others)
    # Listed at the end: the file (its day is in its name), what went wrong, its URL.
    [line] = [x for x in p.stderr.splitlines() if x.startswith("fetch: failed")]
    assert line.startswith(f"fetch: failed BTCUSDT-trades-2019-05-03.zip: {what}{server.url}/{bad}")
    assert line.endswith(f"{server.url}/{bad}")

    server.always(bad, None)
    server.clear()
    again = fetch(server, cache, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert by_status(result(again)) == {"cached": others, "downloaded": {bad}}


@pytest.mark.parametrize("hide, bound, why", [
    (False, REAL_SIZE, "the server sent more than the 3,375,192 bytes announced"),
    (True, 1_000_000, "the server sent more than TICKSTACK_ARCHIVE_MAX_FILE_BYTES (1,000,000 "
                      "bytes) for a file whose size it does not announce"),
], ids=["past-the-announced-size", "no-size-announced"])
def test_a_mirror_streaming_past_the_size_is_cut_off_and_the_summary_counts_it(
        server, cache, hide, bound, why):
    """60 MB for a 3.4 MB file: reading stops at the size (or, with no size announced, at the
    bound); the file fails at once; what was received is counted, what was kept is not."""
    server.always(REAL, arc.endless(60_000_000, hide_length=hide))
    p = fetch(server, cache, "--symbol", "BTCUSDT", "--since", "2019-04-01",
              "--until", "2019-04-01", max_file_bytes=1_000_000 if hide else 10**9)
    assert p.returncode == 1
    assert f"fetch: failed BTCUSDT-trades-2019-04-01.zip: {why}: stopped reading there" in \
        p.stderr
    assert len(server.gets(REAL)) == 1  # not retried: the same answer would come again
    assert not (cache / REAL).exists()
    part = cache / (REAL + ".part")
    assert not part.exists() or part.stat().st_size <= bound  # never more than the bound
    summary = p.stdout.strip().splitlines()
    assert "0 downloaded (0 B kept)" in summary[0] and "1 failed" in summary[0], summary
    received = float(re.search(r"received ([\d.]+) MB", summary[0]).group(1))
    assert bound / 1e6 <= received <= bound / 1e6 + 0.1, summary  # what came, not "0 B"


def test_a_trickling_server_fails_the_file_at_its_deadline_then_a_rerun_resumes(
        server, cache, archive):
    path = archive_path("daily", "BTCUSDT", "2019-05-12")
    size = (archive / path).stat().st_size
    server.always(path, arc.throttle(100))  # 5 bytes every 50 ms: never a read timeout
    args = ("--symbol", "BTCUSDT", "--since", "2019-05-12", "--until", "2019-05-12", "--json")
    p = fetch(server, cache, *args, deadline_floor_seconds=2,
              min_bytes_per_second=10**9)
    assert p.returncode == 1, p.stderr[-3000:]
    assert ("fetch: failed BTCUSDT-trades-2019-05-12.zip: not finished within its deadline "
            "of 2 s") in p.stderr
    got = (cache / (path + ".part")).stat().st_size
    assert 0 < got < size  # what came is kept for the rerun
    assert result(p)["files"][0]["received"] == got

    server.always(path, None)
    server.clear()
    again = fetch(server, cache, *args, deadline_floor_seconds=2, min_bytes_per_second=10**9)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [r.range for r in server.gets(path)] == [f"bytes={got}-"]
    assert verified(cache, path)


def test_a_server_trickling_its_headers_fails_the_file_at_its_deadline(server, cache, archive):
    """The deadline was checked between body chunks only: headers trickled a byte at a time
    (never a read timeout) held a file, and the run, for hours."""
    path = archive_path("daily", "BTCUSDT", "2019-05-13")
    server.queue(path, arc.slow_headers(20))
    args = ("--symbol", "BTCUSDT", "--since", "2019-05-13", "--until", "2019-05-13", "--json")
    t0 = time.monotonic()
    p = fetch(server, cache, *args, deadline_floor_seconds=2, min_bytes_per_second=10**9,
              timeout=40)
    assert p.returncode == 1, p.stderr[-3000:]
    assert time.monotonic() - t0 < 20
    assert ("fetch: failed BTCUSDT-trades-2019-05-13.zip: not finished within its deadline "
            "of 2 s") in p.stderr, p.stderr[-3000:]
    again = fetch(server, cache, *args)  # the fault was one answer: the rerun completes
    assert again.returncode == 0, again.stderr[-3000:]
    assert verified(cache, path)


def test_a_redirect_to_another_host_is_refused_unless_allowed(server, cache, archive):
    path = archive_path("daily", "BTCUSDT", "2019-05-14")
    args = ("--symbol", "BTCUSDT", "--since", "2019-05-14", "--until", "2019-05-14", "--json")
    with ArchiveServer(archive, host="127.0.0.2") as other:
        server.always(path, arc.redirect_to(other.url))
        p = fetch(server, cache, *args)
        assert p.returncode == 1
        assert ("fetch: failed BTCUSDT-trades-2019-05-14.zip: redirected from host 127.0.0.1 "
                f"to host 127.0.0.2 ({other.url}/{path}): refused; allow it with "
                "--allow-redirect-host 127.0.0.2") in p.stderr
        assert other.requests == []

        ok = fetch(server, cache, *args, "--allow-redirect-host", "127.0.0.2")
        assert ok.returncode == 0, ok.stderr[-3000:]
        assert (cache / path).read_bytes() == (archive / path).read_bytes()
        assert [r.method for r in other.requests] == ["HEAD", "GET"]
        followed = log_events(ok, "redirect followed")
        assert [(e["url"], e["to"], e["status"]) for e in followed] == \
            [(f"{server.url}/{path}", f"{other.url}/{path}", 302)] * 2  # the HEAD, the GET


def test_a_server_ignoring_range_restarts_the_file_and_its_bytes_are_bounded(
        server, cache, shared_data):
    real = (shared_data / f"{arc.REAL_NAME}.zip").read_bytes()
    server.always(REAL, arc.cut(1_000_000, ignore_range=True))
    args = ("--symbol", "BTCUSDT", "--since", "2019-04-01", "--until", "2019-04-01", "--json")
    p = fetch(server, cache, *args)
    assert p.returncode == 1
    assert re.search(r"fetch: failed BTCUSDT-trades-2019-04-01.zip: received 10,1\d\d,\d\d\d "
                     r"bytes in all, more than 3 times its 3,375,192 "
                     r"\(TICKSTACK_ARCHIVE_MAX_RECEIVED_RATIO\): the server answered 10 Range "
                     r"requests with the whole file from its start", p.stderr), p.stderr[-3000:]
    gets = server.gets(REAL)
    assert gets[0].range is None and len(gets) == 11  # 10 x 1 MB, then the budget's rest
    assert all(r.range == "bytes=1000000-" and r.status == 200 for r in gets[1:])
    assert 3 * REAL_SIZE < result(p)["files"][0]["received"] <= 3 * REAL_SIZE + 65_536
    part = (cache / (REAL + ".part")).read_bytes()
    assert 0 < len(part) <= 1_000_000 and real.startswith(part)  # restarted, never appended

    server.clear()
    server.always(REAL, arc.ignore_range())
    again = fetch(server, cache, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [(r.range, r.status) for r in server.gets(REAL)] == [(f"bytes={len(part)}-", 200)]
    assert (cache / REAL).read_bytes() == real
    f = result(again)["files"][0]
    assert (f["received"], f["resumed_from"]) == (REAL_SIZE, 0)


def test_a_mirror_whose_head_disagrees_with_its_answers_lets_the_checksum_decide(
        server, cache, archive):
    """A HEAD announcing more than the file: each whole answer (by its own Content-Length) was
    taken for a cut, the file restarted until the byte budget failed it, though it matched its
    CHECKSUM. An answer whose Content-Length is short of the file: ~30 GETs, each resuming a
    byte further, failing as "connection cut". Either is the mirror contradicting itself, not a
    cut: the CHECKSUM decides, at once."""
    path = archive_path("daily", "BTCUSDT", "2019-05-16")
    size = (archive / path).stat().st_size
    args = ("--symbol", "BTCUSDT", "--since", "2019-05-16", "--until", "2019-05-16", "--json")
    server.always(path, arc.head_size(10 * size))
    p = fetch(server, cache, *args)
    assert p.returncode == 0, p.stderr[-3000:]
    assert verified(cache, path) and (cache / path).read_bytes() == (archive / path).read_bytes()
    assert [r.range for r in server.gets(path)] == [None]
    assert result(p)["files"][0]["received"] == size

    server.clear()
    other = archive_path("daily", "BTCUSDT", "2019-05-17")
    server.always(other, arc.short_length(1000))
    p = fetch(server, cache, "--symbol", "BTCUSDT", "--since", "2019-05-17", "--until",
              "2019-05-17", "--json")
    assert p.returncode == 1
    assert [r.range for r in server.gets(other)] == [None, None]  # downloaded twice, no more
    other_size = (archive / other).stat().st_size
    assert (f"(downloaded twice; nothing kept); the mirror contradicts itself: its answers end "
            f"at byte 1,000 (their Content-Length), its HEAD announces {other_size:,}") in \
        p.stderr, p.stderr[-3000:]
    assert not (cache / other).exists() and leftovers(cache) == []

    # A 206 for a part of the range asked is no contradiction: resumed from its end.
    server.clear()
    third = archive_path("daily", "BTCUSDT", "2019-05-18")
    server.queue(third, arc.cut(300))
    server.always(third, arc.range_parts(400))
    p = fetch(server, cache, "--symbol", "BTCUSDT", "--since", "2019-05-18", "--until",
              "2019-05-18", "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    assert verified(cache, third)
    ranges = [r.range for r in server.gets(third)]
    assert ranges[:3] == [None, "bytes=300-", "bytes=700-"]  # 300, then 400 at a time


def test_a_range_answered_from_an_earlier_byte_continues_from_there(server, cache, archive):
    """A 206 starting before the byte asked (here from 0) was refused on every attempt and
    every rerun (the .part stays, the same Range is asked): the file could never complete. The
    .part is cut back to where the answer starts and the answer appended."""
    path = archive_path("daily", "BTCUSDT", "2019-05-19")
    server.queue(path, arc.cut(300))
    server.always(path, arc.range_from(0))
    p = fetch(server, cache, "--symbol", "BTCUSDT", "--since", "2019-05-19", "--until",
              "2019-05-19", "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    assert [(r.range, r.status) for r in server.gets(path)] == [(None, 200), ("bytes=300-", 206)]
    assert (cache / path).read_bytes() == (archive / path).read_bytes() and verified(cache, path)


# --- make up without ../shared ---------------------------------------------------------------

def test_make_up_uses_the_shared_day_or_fetches_it():
    def dry(*args: str) -> str:
        return subprocess.run(["make", "-n", "up", *args], cwd=REPO, capture_output=True,
                              text=True, timeout=60, check=True).stdout

    assert "workers up ../shared/data/BTCUSDT-trades-2019-04-01.zip" in dry() or not \
        (REPO.parent / "shared/data/BTCUSDT-trades-2019-04-01.zip").exists()
    fetched = dry("SHARED_DAY=/nonexistent/BTCUSDT-trades-2019-04-01.zip")
    assert "workers up --fetch-day 2019-04-01" in fetched
    assert "fetching BTCUSDT spot trades 2019-04-01 from Binance's public archive" in fetched
    assert "workers up mine.zip" in dry("DATA=mine.zip")


def test_the_main_jobs_fetch_stage(server, cache, monkeypatch, shared_data):
    from workers.app.context import Context
    from workers.app.fetching import fetch_day
    from workers.core.errors import Failed
    from workers.core.settings import Settings

    for k, v in archive_env(server, cache).items():
        monkeypatch.setenv(k, v)
    ctx = Context(Settings(), "up")
    got = fetch_day(ctx, "2019-04-01")
    assert got.path == str(cache / REAL)
    assert Path(got.path).read_bytes() == (shared_data / f"{arc.REAL_NAME}.zip").read_bytes()
    assert got.changed and "downloaded 3.4 MB, verified" in got.summary()
    again = fetch_day(ctx, "2019-04-01")
    assert again.path == got.path
    assert not again.changed and "already in the cache" in again.summary()
    with pytest.raises(Failed, match="BTCUSDT-trades-2019-07-03.zip from .*404"):
        fetch_day(ctx, "2019-07-03")


# --- --ingest --------------------------------------------------------------------------------

@pytest.fixture
def stacks(local_env):
    made: list[Stack] = []

    def make() -> Stack:
        made.append(Stack(local_env))
        return made[-1]

    yield make
    for s in made:
        s.close()


@pytest.fixture(scope="module")
def bigger_days(archive) -> list[str]:
    """Two generated days with a few thousand trades each (in their first hour: 12 buckets, quick
    to load), beside the real day."""
    out = []
    for d in (date(2019, 4, 2), date(2019, 4, 3)):
        path = archive_path("daily", "BTCUSDT", d.isoformat())
        arc.put(archive, path, arc.day_csv(d, rows=4000, span_ms=3_600_000))
        out.append(path)
    return out


def test_ingest_gives_the_state_of_workers_ingest_on_the_same_files(server, cache, stacks,
                                                                    bigger_days):
    via_fetch, via_ingest = stacks(), stacks()
    # The last day arrives slowly: the real day must be loading while it downloads.
    server.always(bigger_days[-1], arc.throttle(40_000))
    p = fetch(server, cache, "--symbol", "BTCUSDT", "--since", "2019-04-01",
              "--until", "2019-04-03", "--ingest", base_env=via_fetch.cli_env(), timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    events = [json.loads(line) for line in p.stderr.splitlines() if line.startswith("{")]
    order = [(e["event"], e.get("file", "")) for e in events
             if e["event"] in ("ingesting", "fetch downloaded")]
    first_load = next(i for i, (ev, f) in enumerate(order)
                      if ev == "ingesting" and f.endswith(REAL))
    slow_done = next(i for i, (ev, f) in enumerate(order)
                     if ev == "fetch downloaded" and f.endswith(bigger_days[-1]))
    assert first_load < slow_done, order  # download and load overlap
    assert p.stdout.count("read ") == 3  # one ingest summary per file

    files = [str(cache / f) for f in (REAL, *bigger_days)]
    q = via_ingest.cli("ingest", *files)
    assert q.returncode == 0, q.stderr[-3000:]
    fetched, ingested = via_fetch.state(), via_ingest.state()
    assert fetched == ingested
    ticks = sum(row[1] for row in fetched[0])
    assert ticks == 183_355 + 2 * 4000

    assert len(fetched[1]) == 286 + 2 * 12  # registry: one row per landed bucket


def test_nothing_unverified_reaches_ingest(server, cache, stacks, bigger_days):
    stack = stacks()
    server.always(bigger_days[1], arc.corrupt())
    p = fetch(server, cache, "--symbol", "BTCUSDT", "--since", "2019-04-02",
              "--until", "2019-04-03", "--ingest", base_env=stack.cli_env(), timeout=300)
    assert p.returncode == 1
    assert "checksum mismatch" in p.stderr
    with stack.admin() as c:
        n, days = c.execute("SELECT count(*), array_agg(DISTINCT bucket_5m::date) "
                            "FROM market_data.btc_ticks").fetchone()
    assert (n, days) == (4000, [date(2019, 4, 2)])
    assert {r[1].date() for r in stack.registry()} == {date(2019, 4, 2)}
