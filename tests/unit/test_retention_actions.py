"""Retention actions are typed (workers/ops/retention_actions.py): one class per kind, keys
defined once; a recorded action reads back only when its kind and keys are one of them, and
what `workers retention` prints from them is what it printed from the dicts before."""

from __future__ import annotations

import pytest

from workers.ops.retention import JobResult, RetentionReport
from workers.ops.retention_actions import (
    KINDS,
    REMOVING,
    BadAction,
    Compress,
    Delete,
    DropChunks,
    from_dict,
)

C = "2024-01-01T00:00:00+00:00"
RANGE = ["2023-12-01T00:00:00+00:00", "2023-12-15T00:00:00+00:00"]
RECORDED = [
    {"action": "drop_chunks", "cutoff": C, "chunks": 2, "rows": 1234567, "range": RANGE,
     "dropped": ["_h.c1", "_h.c2"], "held_back": "3 buckets older than X are not (fully) in "
                                                  "landing; kept from Y"},
    {"action": "drop_chunks", "cutoff": C, "chunks": 0, "rows": 0, "range": None},
    {"action": "delete", "cutoff": C, "rows": 10, "range": RANGE, "deleted": 10, "batches": 2},
    {"action": "compress", "cutoff": C, "chunks": 1, "rows": 183355, "range": RANGE,
     "bytes": [35.1e6, 4.8e6]},
    {"action": "compress", "cutoff": C, "chunks": 1, "rows": 5, "range": RANGE, "bytes": None},
    {"action": "compress", "cutoff": C, "chunks": 0, "rows": 0, "range": None},
    {"action": "compress", "cutoff": C,
     "skipped": "compression unavailable (timescaledb.license = apache)"},
    {"action": "compress", "skipped": "not a hypertable here"},
]


@pytest.mark.parametrize("recorded", RECORDED)
def test_a_recorded_action_reads_back_as_itself(recorded):
    assert from_dict(recorded).as_dict() == recorded
    assert list(from_dict(recorded).as_dict()) == list(recorded)  # same keys, same order


@pytest.mark.parametrize(("bad", "says"), [
    ({"action": "truncate", "cutoff": C}, "unknown retention action 'truncate'"),
    ({"cutoff": C}, "unknown retention action None"),
    ({"action": "delete", "cutoff": C, "rows": 1}, r"missing keys \['range'\]"),
    ({"action": "delete", "cutoff": C, "rows": 1, "range": None, "chunks": 3},
     r"unknown keys \['chunks'\]"),
    ({"action": "compress", "cutoff": C}, "either is skipped"),
    ({"action": "compress", "skipped": "x", "chunks": 1, "rows": 1}, "either is skipped"),
    (["delete"], "JSON object"),
])
def test_a_wrong_action_is_refused_naming_what_is_wrong(bad, says):
    with pytest.raises(BadAction, match=says):
        from_dict(bad)


def test_the_planner_cannot_make_an_action_without_its_keys():
    with pytest.raises(TypeError, match="range"):
        Delete(cutoff=C, rows=1)  # type: ignore[call-arg]
    assert set(KINDS) == {"drop_chunks", "delete", "compress"}
    assert REMOVING == ("drop_chunks", "delete")


def report(dry_run: bool) -> RetentionReport:
    acts = [from_dict(a) for a in RECORDED]
    rep = RetentionReport(dry_run)
    rep.servers["primary"] = [
        JobResult("btc_ticks", "market_data.btc_ticks", "applied", [acts[0], acts[3], acts[6]]),
        JobResult("btc_ohlcv_5m", "market_data.btc_ohlcv_5m", "nothing-to-do", [acts[1]]),
        JobResult("bad", "x", "rejected", reason="nope"),
        JobResult("only", "", "not-defined")]
    rep.servers["replica"] = [
        JobResult("btc_ticks", "market_data.btc_ticks", "applied", [acts[2], acts[7], acts[4]])]
    return rep


def test_the_report_prints_what_it_printed_from_dicts():
    """Captured from the dict-based report before the actions were typed."""
    rep = report(dry_run=False)
    assert rep.summary() == (
        "primary btc_ticks: applied (dropped 2 chunk(s), 1,234,567 rows; compressed 1 chunk(s),"
        " 183,355 rows (licensed TimescaleDB, 35.1 -> 4.8 MB)) (compression unavailable "
        "(timescaledb.license = apache)); primary btc_ohlcv_5m: nothing-to-do; primary bad: "
        "rejected; primary only: not-defined; replica btc_ticks: applied (deleted 10 rows; "
        "compressed 1 chunk(s), 5 rows (licensed TimescaleDB)) (not a hypertable here)")
    assert rep.details() == [
        "retention primary: btc_ticks (market_data.btc_ticks): applied",
        "    drop_chunks: 2 chunks, 1,234,567 rows older than 2024-01-01T00:00:00 "
        "(2023-12-01 .. 2023-12-15)",
        "    held back: 3 buckets older than X are not (fully) in landing; kept from Y",
        "    compress: 1 chunks, 183,355 rows older than 2024-01-01T00:00:00 "
        "(2023-12-01 .. 2023-12-15)",
        "    compress: compression unavailable (timescaledb.license = apache)",
        "retention primary: btc_ohlcv_5m (market_data.btc_ohlcv_5m): nothing-to-do",
        "    drop_chunks: 0 chunks, 0 rows older than 2024-01-01T00:00:00",
        "retention primary: bad (x): rejected — nope",
        "retention primary: only: not defined on this server (no enabled job of that name)",
        "retention replica: btc_ticks (market_data.btc_ticks): applied",
        "    delete: 10 rows older than 2024-01-01T00:00:00 (2023-12-01 .. 2023-12-15)",
        "    compress: not a hypertable here",
        "    compress: 1 chunks, 5 rows older than 2024-01-01T00:00:00 "
        "(2023-12-01 .. 2023-12-15)"]
    assert rep.servers["primary"][0].as_dict()["chunks"] == 3
    assert rep.servers["primary"][0].as_dict()["actions"] == [RECORDED[0], RECORDED[3],
                                                               RECORDED[6]]
    assert rep.changed and not rep.ok


def test_a_dry_run_says_would():
    rep = report(dry_run=True)
    assert "would drop 2 chunk(s), 1,234,567 rows; would compress 1 chunk(s)" in rep.summary()
    assert "    would delete: 10 rows older than 2024-01-01T00:00:00 (2023-12-01 .. " \
           "2023-12-15)" in rep.details()
    assert not rep.changed


def test_each_kind_counts_what_it_touched():
    assert DropChunks(cutoff=C, chunks=2, rows=7, range=None).touched() == (2, 7)
    assert Delete(cutoff=C, rows=7, range=None).touched() == (0, 7)
    assert Compress(skipped="x").touched() == (0, 0) and not Compress(skipped="x").did_something
