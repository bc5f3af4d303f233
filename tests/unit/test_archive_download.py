"""The archive client's bounds and what it shows, read without a server (the behaviour against a
hostile mirror is tested on a real one in tests/integration/fetch/test_fetch_mirror.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.core.errors import BadInput
from workers.core.settings import Settings
from workers.sources.archive_download import (
    ArchiveConfig,
    ArchiveError,
    Transfer,
    _shown,
    answer_bound,
)

CFG = ArchiveConfig("https://data.binance.vision", Path("/nonexistent"), max_file_bytes=1000,
                    min_bytes_per_second=100, deadline_floor=60)


@pytest.mark.parametrize("size, have, announced, limit", [
    (800, 0, None, 800),  # the HEAD's size wins
    (800, 300, 500, 500),  # resumed: the rest of it
    (800, 0, 5000, 800),  # a Content-Length above the size: read only the size
    (None, 0, 700, 700),  # no HEAD size: the answer's length
    (None, 200, None, 800),  # no size at all: the setting, less what is on disk
])
def test_an_answer_is_read_up_to_its_size(size, have, announced, limit):
    assert answer_bound(CFG, "x.zip", size, have, announced)[0] == limit


def test_the_bound_says_which_announcement_it_is():
    assert answer_bound(CFG, "x.zip", 800, 300, 500)[1] == "the 800 bytes announced"
    assert answer_bound(CFG, "x.zip", 400, 0, 900)[1] == (
        "the 400 bytes its HEAD announced (this answer's Content-Length says 900)")


@pytest.mark.parametrize("size, announced", [(1001, None), (None, 1001)])
def test_a_file_above_the_largest_allowed_fails(size, announced):
    with pytest.raises(ArchiveError, match=r"x.zip: the server announces 1,001 bytes, more than "
                                           r"TICKSTACK_ARCHIVE_MAX_FILE_BYTES \(1,000\)"):
        answer_bound(CFG, "x.zip", size, 0, announced)


def test_a_files_deadline_and_budget_follow_its_size():
    t = Transfer("x.zip", CFG, 800)
    assert (t.seconds, t.max_received) == (60 + 8, 2400)
    unknown = Transfer("y.zip", CFG, None)  # the largest allowed
    assert (unknown.seconds, unknown.max_received) == (60 + 10, 3000)
    t.check_time()  # not started: no deadline yet
    t.seconds = 0
    with pytest.raises(ArchiveError, match="x.zip: not finished within its deadline of 0 s"):
        t.start().check_time()


def test_urls_are_shown_without_credentials_or_query():
    assert _shown("https://user:pw@cdn.example.com:8443/data/x.zip?X-Amz-Signature=abc") == \
        "https://cdn.example.com:8443/data/x.zip?…"
    assert _shown("http://127.0.0.1:8000/data/x.zip") == "http://127.0.0.1:8000/data/x.zip"


def test_redirect_hosts_come_from_the_setting_and_the_option(monkeypatch):
    monkeypatch.setenv("TICKSTACK_ARCHIVE_REDIRECT_HOSTS", "cdn.example.com, Mirror.Example.org")
    cfg = ArchiveConfig.of(Settings().archive, ["127.0.0.2", "[::1]"])
    assert cfg.redirect_hosts == {"cdn.example.com", "mirror.example.org", "127.0.0.2", "::1"}
    with pytest.raises(BadInput, match="--allow-redirect-host 'http://x' is not a host name"):
        ArchiveConfig.of(Settings().archive, ["http://x"])
    monkeypatch.setenv("TICKSTACK_ARCHIVE_REDIRECT_HOSTS", "a b")
    with pytest.raises(BadInput, match="TICKSTACK_ARCHIVE_REDIRECT_HOSTS 'a b' is not a host"):
        ArchiveConfig.of(Settings().archive)
