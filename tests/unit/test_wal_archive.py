"""What recovery needs from the WAL archive, and the holes in it (workers/ops/wal_archive.py).

Pure: archives are built here as pgBackRest's listing would show them; the same code runs on
a real repository in tests/integration/test_backup_dr.py."""

from __future__ import annotations

from workers.ops import wal_archive as wa
from workers.ops.wal_archive import Archive, Backup, analyse, parse_history, segno, wal_name

SEG = 16 << 20


def lsn(seg: int, offset: int = 0) -> int:
    return seg * SEG + offset


def archive(segments: dict[int, range | list[int]], histories: dict[int, str] | None = None
            ) -> Archive:
    return Archive("15-1", {t: set(s) for t, s in segments.items()},
                   {t: parse_history(h) for t, h in (histories or {}).items()})


def backup(label: str, start: int, stop: int | None = None, tli: int = 1) -> Backup:
    stop = start if stop is None else stop
    return Backup(label, tli, start, stop, lsn(stop, 0x1000))


def test_names_and_numbers_round_trip():
    assert segno("00000002000000010000000A", SEG) == (2, 256 + 10)
    assert wal_name(2, 256 + 10, SEG) == "00000002000000010000000A"
    # 64 MB segments: 64 per 4 GB "log file"
    assert wal_name(1, 65, 64 << 20) == "000000010000000100000001"


def test_contiguous_archive_is_whole():
    r = analyse(archive({1: range(2, 20)}), [backup("A", 2, 3)], SEG)
    assert r.ok and r.needed == {"1": [f"{wal_name(1, 2, SEG)}..{wal_name(1, 19, SEG)}"]}


def test_hole_after_the_oldest_backup_is_reported_with_its_range():
    r = analyse(archive({1: [*range(2, 9), *range(12, 20)]}), [backup("A", 2, 3)], SEG)
    assert not r.ok and len(r.holes) == 1
    h = r.holes[0]
    assert (h.tli, h.first, h.last, h.backups, h.broken) == (1, 9, 11, ["A"], [])
    msg = r.messages()[0]
    assert msg.startswith(f"WAL segment {wal_name(1, 9, SEG)} is missing")
    assert f"3 missing: {wal_name(1, 9, SEG)}..{wal_name(1, 11, SEG)}" in msg
    assert f"inside {wal_name(1, 2, SEG)}..{wal_name(1, 19, SEG)}" in msg
    assert "take a full backup now" in msg


def test_segments_before_the_oldest_backup_are_not_needed():
    r = analyse(archive({1: [1, 2, *range(6, 20)]}), [backup("A", 6, 7)], SEG)
    assert r.ok


def test_a_newer_backup_after_the_hole_is_named_unaffected():
    r = analyse(archive({1: [*range(2, 9), *range(10, 20)]}),
                [backup("A", 2, 3), backup("B", 12, 13)], SEG)
    assert [(h.first, h.backups, h.unaffected) for h in r.holes] == [(9, ["A"], ["B"])]
    assert "not affected: backup B" in r.messages()[0]


def test_hole_inside_a_backup_makes_it_unrestorable():
    r = analyse(archive({1: [2, 4, 5]}), [backup("A", 2, 4)], SEG)
    assert r.holes[0].broken == ["A"] and "cannot be restored at all" in r.messages()[0]


def test_losing_the_newest_segments_is_a_hole_when_the_primary_archived_them():
    a = archive({1: range(2, 10)})
    assert analyse(a, [backup("A", 2)], SEG).ok  # the archive alone cannot tell
    r = analyse(a, [backup("A", 2)], SEG, newest=(1, 12))
    assert [(h.first, h.last) for h in r.holes] == [(10, 12)]


def test_between_timelines_is_not_a_hole_inside_one_is():
    # Timeline 2 branched off 1 at the start of segment 10 (a restore); 1 went on to 14 (the
    # old primary), 2 holds 10.. on. Neither is missing anything.
    hist = {2: f"1\t0/{lsn(10):X}\tbefore 2026-01-01 00:00:00+00\n"}
    whole = archive({1: range(2, 15), 2: range(10, 18)}, hist)
    assert analyse(whole, [backup("A", 2, 3)], SEG).ok
    # The old primary never got past the branch point: still whole.
    assert analyse(archive({1: range(2, 10), 2: range(10, 18)}, hist),
                   [backup("A", 2, 3)], SEG).ok
    # A segment missing inside timeline 2 is a hole of timeline 2.
    r = analyse(archive({1: range(2, 15), 2: [10, 11, 13, 14]}, hist), [backup("A", 2, 3)], SEG)
    assert [(h.tli, h.first) for h in r.holes] == [(2, 12)]
    # Timeline 1 up to the branch point is needed by recovery onto timeline 2.
    r = analyse(archive({1: [2, 3, 4, 5, 9], 2: range(10, 18)}, hist), [backup("A", 2, 3)], SEG)
    assert [(h.tli, h.first, h.last) for h in r.holes] == [(1, 6, 8)]


def test_branch_in_the_middle_of_a_segment():
    # Promoted inside segment 10: timeline 2's segment 10 holds 1's WAL up to there; timeline
    # 1's own segment 10 is only a .partial and not needed.
    hist = {2: f"1\t0/{lsn(10, 0x4000):X}\tbefore 2026-01-01 00:00:00+00\n"}
    assert analyse(archive({1: range(2, 10), 2: range(10, 12)}, hist),
                   [backup("A", 2, 3)], SEG).ok


def test_timelines_a_backup_cannot_reach_are_not_needed():
    # Timeline 2 branched off 1 at segment 5, before backup B (on 1, at 8) was taken: B cannot
    # recover onto 2, so 2's hole matters only while backup A (at 2) exists.
    hist = {2: f"1\t0/{lsn(5):X}\tx\n"}
    a = archive({1: range(2, 12), 2: [5, 7]}, hist)
    assert [h.first for h in analyse(a, [backup("A", 2), backup("B", 8)], SEG).holes] == [6]
    assert analyse(a, [backup("B", 8)], SEG).ok


def test_missing_history_file_hides_the_newer_timeline():
    r = analyse(archive({1: range(2, 10), 2: range(10, 12)}), [backup("A", 2)], SEG)
    assert not r.ok and "00000002.history is missing" in r.problems[0]


def test_recovery_path_follows_the_newest_timeline_and_stops_at_a_hole():
    hist = {2: f"1\t0/{lsn(6):X}\tx\n", 3: f"1\t0/{lsn(6):X}\tx\n2\t0/{lsn(9):X}\tx\n"}
    a = archive({1: range(2, 12), 2: [6, 7, 8, 9], 3: [9, 10, 12]}, hist)
    b = backup("A", 2, 3)
    assert wa.recovery_timeline(a, b, "latest") == 3 and wa.recovery_timeline(a, b, "current") == 1
    path = wa.recovery_path(a, b, 3, SEG)
    assert path == [(1, s) for s in range(2, 6)] + [(2, 6), (2, 7), (2, 8)] + [
        (3, 9), (3, 10), (3, 11), (3, 12)]
    reach, missing = wa.replayable(a, path)
    assert reach[-1] == (3, 10) and missing == (3, 11)
    whole_1 = [(1, s) for s in range(2, 12)]
    assert wa.replayable(a, wa.recovery_path(a, b, 1, SEG)) == (whole_1, None)
