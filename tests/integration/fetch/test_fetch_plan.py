"""What `workers fetch` asks the archive for (monthly files for whole months, days for the
rest), the verified cache, and the fetch behind `make up` and the main job's first stage."""

from __future__ import annotations

import subprocess
from datetime import date
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration import archive_server as arc
from tests.integration.archive_server import archive_path
from tests.integration.fetch.support import (
    REAL,
    archive_env,
    by_status,
    day_paths,
    fetch,
    leftovers,
    result,
    verified,
)


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
