"""Issue 27 items 1 and 11 under an adversarial review: one trade id in one bucket and summaries
that add up, on inputs the first tests did not use — ids the live stream committed before its
bucket was registered, three ingests at once moving ids across a day boundary, a .zip with
CRLF line ends, bad rows and duplicates. Real servers, real processes."""

from __future__ import annotations

import json
import zipfile

from tests.integration.test_ingest_round2 import (
    CONFLICT,
    MIN,
    SPOT,
    T0,
    assert_adds_up,
    assert_one_bucket_per_id,
    ingest,
    row,
    rows,
    stack,  # noqa: F401 (the fixture)
    start,
    stored_buckets,
    tick_table,
    write,
)

DAY_MS = 24 * 60 * MIN


def test_a_moved_copy_of_a_trade_the_stream_committed_is_quarantined(stack, tmp_path):  # noqa: F811
    """The stream commits trades of 12:00 (its bucket not compacted, so neither registered nor
    aggregated); a file then carries one of them moved to 12:05, and another moved to the
    next day: both are second copies, quarantined — the streamed ones keep their bucket."""
    from workers.db.stream_commit import commit_batch

    streamed = rows(9000, 10)  # 12:00
    with stack.ingest_conn() as conn:
        commit_batch(conn, "spot", "BTCUSDT", "stream:binance", tick_table(streamed), [])
    lines = [*rows(9100, 5, t0=T0 + 5 * MIN), row(9003, T0 + 5 * MIN + 1_000),
             row(9004, T0 + DAY_MS)]
    s = ingest(stack, write(tmp_path / SPOT, lines))
    assert s.quarantined[CONFLICT] == 2, s.as_dict()
    assert_adds_up(s)
    held = stored_buckets(stack)
    assert held[9003] == ["12:00"] and held[9004] == ["12:00"], held


def test_three_ingests_at_once_moving_ids_across_midnight(stack, tmp_path):  # noqa: F811
    """Three files ingested by three processes at once, sharing ids 20000-20009 placed in
    23:55 of one day, 00:00 of the next, and 23:50: every id lands in one bucket only, every
    run exits 0 and adds up, and the copies not kept are quarantined, one each."""
    eve = T0 + 11 * 60 * MIN + 55 * MIN  # 2019-04-01 23:55
    a = write(tmp_path / "a" / SPOT, rows(20_000, 10, t0=eve, step_ms=100))
    b = write(tmp_path / "b" / "BTCUSDT-trades-2019-04-02.csv",
              [*rows(20_000, 10, t0=eve + 5 * MIN, step_ms=100),
               *rows(20_010, 5, t0=eve + 5 * MIN + 2_000)])
    c = write(tmp_path / "c" / SPOT, [*rows(20_000, 10, t0=eve - 5 * MIN, step_ms=100),
                                      *rows(20_015, 5, t0=eve + 3_000)])
    procs = [start(stack, p) for p in (a, b, c)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    where = assert_one_bucket_per_id(stack)
    assert len(where) == 20
    assert len({where[i] for i in range(20_000, 20_010)}) == 1, where  # one writer's placement
    runs = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    for r in runs:
        assert r["rows_read"] == r["inserted"] + r["already_stored"] + r["input_duplicates"] \
            + sum(r["quarantined_by_reason"].values()), r
    assert sum(r["quarantined_by_reason"].get(CONFLICT, 0) for r in runs) == 20, runs
    assert sum(r["inserted"] for r in runs) == 20, runs


def test_a_zip_with_crlf_bad_rows_and_duplicates_adds_up(stack, tmp_path):  # noqa: F811
    first = rows(30_000, 50)
    lines = [*first, *first[10:15],  # 5 duplicates within the input
             row(30_020, T0 + 20_000, price="9999"),  # 30020 again, another price: conflict
             row(30_021, T0 + 5 * MIN),  # 30021 moved to 12:05: another bucket
             "garbage", "30100,abc,1,1,1554120000000,True,True", ""]
    z = tmp_path / "BTCUSDT-trades-2019-04-01.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr(SPOT, "\r\n".join(lines) + "\r\n")
    r = stack.cli("ingest", str(z), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(r.stdout.strip().splitlines()[-1])
    assert d["inserted"] == 50 and d["input_duplicates"] == 5, d
    assert sum(d["quarantined_by_reason"].values()) == 5, d  # 2 conflicts, 3 bad (1 blank)
    assert d["quarantined_by_reason"].get(CONFLICT) == 2, d
    assert d["rows_read"] == d["inserted"] + d["already_stored"] + d["input_duplicates"] \
        + sum(d["quarantined_by_reason"].values()), d
    assert len(assert_one_bucket_per_id(stack)) == 50


def test_the_stream_does_not_store_again_an_id_a_file_placed_elsewhere(stack, tmp_path):  # noqa: F811
    """File first: trade 9500 stored in 12:05. The stream then delivers 9499-9501 in 12:00:
    its commit and its compaction store 9499 and 9501, and leave 9500 where it is — in the
    ticks table and in landing alike."""
    from workers.db.stream_commit import commit_batch, compact
    from workers.landing.parts import write_part

    ingest(stack, write(tmp_path / SPOT, [row(9500, T0 + 5 * MIN)]))
    streamed = tick_table(rows(9499, 3))  # 12:00
    landing = stack.landing()
    write_part(landing, "spot", "BTCUSDT", T0 * 1000, streamed)
    with stack.ingest_conn() as conn:
        commit_batch(conn, "spot", "BTCUSDT", "stream:binance", streamed, [])
        assert stored_buckets(stack)[9500] == ["12:05"]
        assert compact(conn, landing, "spot", "BTCUSDT", T0 * 1000, "stream:binance")
    where = assert_one_bucket_per_id(stack)
    assert where == {9499: "12:00", 9500: "12:05", 9501: "12:00"}, where
