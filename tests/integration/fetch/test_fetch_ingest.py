"""`workers fetch --ingest` against a fresh database and landing bucket of the session's local
environment: the state `workers ingest` gives on the same files, and nothing unverified loaded."""

from __future__ import annotations

import json
from datetime import date

import pytest

from tests.integration import archive_faults as faults
from tests.integration import archive_server as arc
from tests.integration.archive_server import archive_path
from tests.integration.fetch.support import REAL, fetch
from tests.integration.pipeline import Stack


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
    server.always(bigger_days[-1], faults.throttle(40_000))
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
    server.always(bigger_days[1], faults.corrupt())
    p = fetch(server, cache, "--symbol", "BTCUSDT", "--since", "2019-04-02",
              "--until", "2019-04-03", "--ingest", base_env=stack.cli_env(), timeout=300)
    assert p.returncode == 1
    assert "checksum mismatch" in p.stderr
    with stack.admin() as c:
        n, days = c.execute("SELECT count(*), array_agg(DISTINCT bucket_5m::date) "
                            "FROM market_data.btc_ticks").fetchone()
    assert (n, days) == (4000, [date(2019, 4, 2)])
    assert {r[1].date() for r in stack.registry()} == {date(2019, 4, 2)}
