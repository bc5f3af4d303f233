"""The fetch tests' archive, its server and the download cache (each test module gets its own
archive: some tests publish more files into it)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from tests.integration import archive_server as arc
from tests.integration.archive_server import ArchiveServer


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
