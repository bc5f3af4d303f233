"""`workers fetch` against a hostile but honest mirror: redirects, answers streaming past the
size, trickles, Range ignored or misanswered, a HEAD that disagrees with its GETs."""

from __future__ import annotations

import re
import time
from datetime import date

import pytest

from tests.integration import archive_faults as faults
from tests.integration import archive_server as arc
from tests.integration.archive_server import ArchiveServer, archive_path
from tests.integration.fetch.support import (
    REAL,
    REAL_SIZE,
    by_status,
    day_paths,
    fetch,
    leftovers,
    log_events,
    result,
    verified,
)


@pytest.mark.parametrize("fault, what", [(faults.redirect_loop(), "redirect loop: "),
                                         (faults.redirect_chain(), "more than 10 redirects: ")],
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
    server.always(REAL, faults.endless(60_000_000, hide_length=hide))
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
    server.always(path, faults.throttle(100))  # 5 bytes every 50 ms: never a read timeout
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
    server.queue(path, faults.slow_headers(20))
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
        server.always(path, faults.redirect_to(other.url))
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
    server.always(REAL, faults.cut(1_000_000, ignore_range=True))
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
    server.always(REAL, faults.ignore_range())
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
    server.always(path, faults.head_size(10 * size))
    p = fetch(server, cache, *args)
    assert p.returncode == 0, p.stderr[-3000:]
    assert verified(cache, path) and (cache / path).read_bytes() == (archive / path).read_bytes()
    assert [r.range for r in server.gets(path)] == [None]
    assert result(p)["files"][0]["received"] == size

    server.clear()
    other = archive_path("daily", "BTCUSDT", "2019-05-17")
    server.always(other, faults.short_length(1000))
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
    server.queue(third, faults.cut(300))
    server.always(third, faults.range_parts(400))
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
    server.queue(path, faults.cut(300))
    server.always(path, faults.range_from(0))
    p = fetch(server, cache, "--symbol", "BTCUSDT", "--since", "2019-05-19", "--until",
              "2019-05-19", "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    assert [(r.range, r.status) for r in server.gets(path)] == [(None, 200), ("bytes=300-", 206)]
    assert (cache / path).read_bytes() == (archive / path).read_bytes() and verified(cache, path)
