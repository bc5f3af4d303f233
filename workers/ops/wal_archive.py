"""Is the WAL archive whole? Holes that make point-in-time recovery stop short.

Point-in-time recovery replays every WAL segment from a backup's start to the target; the first
segment missing from the archive ends it there. `pgbackrest check` proves that *new* WAL reaches
the repository, and `info` shows only the archive's min and max: neither sees a segment lost in
between (an S3 server that lost data, a bucket lifecycle rule, a hand-deleted object). So the
repository's archive is listed (`repo-ls`) and checked against what recovery needs.

What recovery needs, per backup (pgBackRest `info`: its archive start, its stop LSN):
  * on the backup's timeline, every segment from the backup's start to the newest archived one
    of that timeline (or, where a later timeline branched off it, up to the branch point);
  * on every timeline that descends from it after the backup (the timeline's `.history` file in
    the archive says where it branched), every segment from the branch point to its newest.
Timelines start where they branch: the segments "between" two timelines are not holes (the new
timeline's first segment holds the old one's WAL up to the branch point). A segment missing
inside one timeline's needed range is a hole. Segments before the oldest backup are not needed;
nor are timelines no backup can reach. The newest segment the primary says it archived
(pg_stat_archiver) extends its timeline's needed range, so losing the newest segments of the
archive is a hole too. Partial segments (`.partial`, the old timeline's last segment after a
promotion) are never needed: the new timeline carries that WAL.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

SEGMENT = re.compile(r"^([0-9A-F]{24})-[0-9a-f]{40}(\.[a-z0-9]+)?$")
HISTORY = re.compile(r"^([0-9A-F]{8})\.history$")
WAL_NAME = re.compile(r"^[0-9A-F]{24}$")


def parse_lsn(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def segno(name: str, seg_size: int) -> tuple[int, int]:
    """(timeline, segment number) of a 24-hex-digit WAL file name."""
    per_log = 0x1_0000_0000 // seg_size
    return int(name[:8], 16), int(name[8:16], 16) * per_log + int(name[16:24], 16)


def wal_name(tli: int, seg: int, seg_size: int) -> str:
    per_log = 0x1_0000_0000 // seg_size
    return f"{tli:08X}{seg // per_log:08X}{seg % per_log:08X}"


def parse_history(text: str) -> list[tuple[int, int]]:
    """A timeline history file: (ancestor timeline, LSN where it ended) per line, oldest first."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        tli, lsn = line.split()[:2]
        out.append((int(tli), parse_lsn(lsn)))
    return out


@dataclass(frozen=True)
class Backup:
    label: str
    tli: int
    start: int  # segment number of its archive start
    stop: int  # segment number of its archive stop
    stop_lsn: int


@dataclass
class Archive:
    """What one archive id of the repository (e.g. `15-1`) holds."""

    archive_id: str
    segments: dict[int, set[int]] = field(default_factory=dict)  # timeline -> segment numbers
    histories: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    files: dict[tuple[int, int], str] = field(default_factory=dict)  # repository path of each

    def timelines(self) -> set[int]:
        return set(self.segments) | set(self.histories)


@dataclass
class Hole:
    tli: int
    first: int
    last: int
    needed_from: int  # the needed range it lies in
    needed_to: int
    backups: list[str]  # whose recovery needs it
    unaffected: list[str]  # backups whose recovery does not pass it
    broken: list[str]  # backups that cannot be restored at all (inside their start..stop)

    def message(self, seg_size: int) -> str:
        n = self.last - self.first + 1
        first = wal_name(self.tli, self.first, seg_size)
        text = (f"WAL segment {first} is missing from the archive ("
                + (f"{n} missing: {first}..{wal_name(self.tli, self.last, seg_size)}, "
                   if n > 1 else "")
                + f"timeline {self.tli}) inside {wal_name(self.tli, self.needed_from, seg_size)}"
                f"..{wal_name(self.tli, self.needed_to, seg_size)}, the WAL that recovery from "
                f"backup {', '.join(self.backups)} replays: point-in-time recovery cannot pass "
                f"{wal_name(self.tli, self.first - 1, seg_size)}")
        if self.broken:
            text += f"; backup {', '.join(self.broken)} cannot be restored at all"
        if self.unaffected:
            text += (f"; not affected: backup {', '.join(self.unaffected)} (expire the older "
                     "ones, `pgbackrest expire --set=LABEL`, once a newer full backup covers "
                     "what they held)")
        else:
            text += "; take a full backup now"
        return text


@dataclass
class Result:
    seg_size: int
    holes: list[Hole] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # e.g. a missing history file
    needed: dict[str, list[str]] = field(default_factory=dict)  # "tli": ["from..to", ...]
    segments: int = 0

    @property
    def ok(self) -> bool:
        return not self.holes and not self.problems

    def messages(self) -> list[str]:
        return [h.message(self.seg_size) for h in self.holes] + self.problems

    def as_dict(self) -> dict:
        return {"ok": self.ok, "segments": self.segments, "needed": self.needed,
                "holes": [{"timeline": h.tli, "first": wal_name(h.tli, h.first, self.seg_size),
                           "last": wal_name(h.tli, h.last, self.seg_size),
                           "backups": h.backups, "broken": h.broken} for h in self.holes],
                "problems": self.problems}


def _path(archive: Archive, tli: int) -> list[tuple[int, int | None, int | None]]:
    """(timeline, begin LSN, end LSN) from the first ancestor to `tli` (end None: open)."""
    out, begin = [], None
    for anc, end in archive.histories.get(tli, []):
        out.append((anc, begin, end))
        begin = end
    out.append((tli, begin, None))
    return out


def _seg_of(lsn: int, seg_size: int) -> int:
    return lsn // seg_size


def analyse(archive: Archive, backups: list[Backup], seg_size: int,
            newest: tuple[int, int] | None = None) -> Result:
    """Holes in what recovery from `backups` needs; `newest`: (timeline, segment) the primary
    reports as archived last (None: the archive's own newest per timeline)."""
    res = Result(seg_size, segments=sum(len(s) for s in archive.segments.values()))
    timelines = archive.timelines() | {b.tli for b in backups}
    if newest:
        timelines.add(newest[0])

    def top(tli: int) -> int | None:
        have = set(archive.segments.get(tli, ()))
        if newest and newest[0] == tli:
            have.add(newest[1])
        return max(have) if have else None

    # tli -> [(from, to, backup label)]
    needed: dict[int, list[tuple[int, int, str]]] = {}
    for b in backups:
        for t in sorted(timelines):
            path = _path(archive, t)
            i = next((k for k, (anc, _, end) in enumerate(path)
                      if anc == b.tli and (end is None or end >= b.stop_lsn)), None)
            if i is None:
                continue  # not reachable from this backup
            for k, (anc, begin, end) in enumerate(path[i:]):
                lo = b.start if k == 0 else _seg_of(begin, seg_size)
                if end is not None:
                    hi = _seg_of(end, seg_size) - 1
                else:
                    hi = top(anc)
                    hi = lo - 1 if hi is None else hi
                if k == 0:  # the backup's own WAL, even when the archive lost all of it
                    hi = max(hi, b.stop)
                if hi >= lo:
                    needed.setdefault(anc, []).append((lo, hi, b.label))
    for tli, ranges in sorted(needed.items()):
        res.needed[str(tli)] = [f"{wal_name(tli, lo, seg_size)}..{wal_name(tli, hi, seg_size)}"
                                for lo, hi in _merge([(lo, hi) for lo, hi, _ in ranges])]
        have = archive.segments.get(tli, set())
        missing = sorted({s for lo, hi, _ in ranges for s in range(lo, hi + 1)} - have)
        for first, last in _runs(missing):
            inside = [(lo, hi, lab) for lo, hi, lab in ranges if lo <= last and hi >= first]
            labels = sorted({lab for _, _, lab in inside})
            res.holes.append(Hole(
                tli, first, last, min(lo for lo, _, _ in inside), max(hi for _, hi, _ in inside),
                labels, sorted({b.label for b in backups} - set(labels)),
                sorted(b.label for b in backups
                       if b.tli == tli and b.start <= last and b.stop >= first)))
    # Recovery follows a newer timeline only through its history file, probing them in order
    # (PostgreSQL's findNewestTimeLine): a missing one hides every timeline after it.
    oldest_backup_tli = min((b.tli for b in backups), default=None)
    for t in sorted(timelines):
        if (oldest_backup_tli is not None and t > oldest_backup_tli and t > 1
                and t not in archive.histories and (archive.segments.get(t) or
                                                    (newest and newest[0] == t))):
            res.problems.append(
                f"timeline {t} has WAL in the archive but its history file {t:08X}.history is "
                f"missing: recovery from backups of earlier timelines cannot follow it")
    res.holes.sort(key=lambda h: (h.tli, h.first))
    return res


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(lo, hi) for lo, hi in out]


def _runs(values: list[int]) -> list[tuple[int, int]]:
    return _merge([(v, v) for v in values])


# --- reading the repository --------------------------------------------------------------

def read_archive(tool, archive_id: str, seg_size: int) -> Archive:
    """List one archive id of the repository (`repo-ls`) and read its history files."""
    base = f"archive/{tool.stanza}/{archive_id}"
    listing = json.loads(tool.ok("repo-ls", "--recurse", "--output=json", base, timeout=600))
    a = Archive(archive_id)
    for path, meta in listing.items():
        if meta.get("type") != "file":
            continue
        name = path.rsplit("/", 1)[-1]
        if m := SEGMENT.match(name):
            tli, seg = segno(m.group(1), seg_size)
            a.segments.setdefault(tli, set()).add(seg)
            a.files[tli, seg] = f"{base}/{path}"
        elif m := HISTORY.match(name):
            a.histories[int(m.group(1), 16)] = parse_history(
                tool.ok("repo-get", f"{base}/{path}", timeout=120))
    return a


def backups_of(info: dict, db_id: int, seg_size: int) -> list[Backup]:
    out = []
    for b in info.get("backup") or []:
        if (b.get("database") or {}).get("id") != db_id:
            continue
        arch, lsn = b.get("archive") or {}, b.get("lsn") or {}
        if not arch.get("start") or not arch.get("stop") or not lsn.get("stop"):
            continue
        tli, start = segno(arch["start"], seg_size)
        out.append(Backup(b["label"], tli, start, segno(arch["stop"], seg_size)[1],
                          parse_lsn(lsn["stop"])))
    return out


def check(tool, info: dict, seg_size: int, newest_wal: str | None) -> Result:
    """Every archive id that has backups, against what recovery from them needs.
    `newest_wal`: the primary's last archived WAL file (pg_stat_archiver), if a segment."""
    res = _check(tool, info, seg_size, newest_wal)
    if res.ok:
        return res
    # A backup that expired while the archive was listed (every `backup` ends with an expire,
    # which removes WAL only the expired sets needed) looks like a hole: look again with the
    # backup sets that still exist.
    now = tool.info()
    if [b["label"] for b in now.get("backup") or []] != \
            [b["label"] for b in info.get("backup") or []]:
        return _check(tool, now, seg_size, newest_wal)
    return res


def _check(tool, info: dict, seg_size: int, newest_wal: str | None) -> Result:
    archives = info.get("archive") or []
    current_db = max(((a.get("database") or {}).get("id", 0) for a in archives), default=0)
    total = Result(seg_size)
    for a in archives:
        db_id = (a.get("database") or {}).get("id")
        backups = backups_of(info, db_id, seg_size)
        if not backups:
            continue
        newest = (segno(newest_wal, seg_size) if newest_wal and WAL_NAME.match(newest_wal)
                  and db_id == current_db else None)
        r = analyse(read_archive(tool, a["id"], seg_size), backups, seg_size, newest)
        total.holes += r.holes
        total.problems += [f"{a['id']}: {p}" for p in r.problems]
        total.needed.update({f"{a['id']} timeline {k}": v for k, v in r.needed.items()})
        total.segments += r.segments
    return total


# --- the one path a point-in-time recovery replays ----------------------------------------

def recovery_timeline(archive: Archive, backup: Backup, mode: str) -> int:
    """The timeline recovery ends on: the backup's (`current`), or the newest one found by
    probing history files upwards from it, as PostgreSQL's findNewestTimeLine does (`latest`)."""
    if mode == "current":
        return backup.tli
    t = backup.tli
    while t + 1 in archive.histories:
        t += 1
    return t


def recovery_path(archive: Archive, backup: Backup, tli: int, seg_size: int
                  ) -> list[tuple[int, int]] | None:
    """The (timeline, segment) sequence recovery from `backup` to the end of timeline `tli`
    replays, in order; None when `tli` does not descend from the backup."""
    path = _path(archive, tli)
    i = next((k for k, (anc, _, end) in enumerate(path)
              if anc == backup.tli and (end is None or end >= backup.stop_lsn)), None)
    if i is None:
        return None
    out = []
    for k, (anc, begin, end) in enumerate(path[i:]):
        lo = backup.start if k == 0 else _seg_of(begin, seg_size)
        if end is not None:
            hi = _seg_of(end, seg_size) - 1
        else:
            have = archive.segments.get(anc)
            hi = max(have) if have else lo - 1
        if k == 0:
            hi = max(hi, backup.stop)
        out += [(anc, s) for s in range(lo, hi + 1)]
    return out


def replayable(archive: Archive, path: list[tuple[int, int]]
               ) -> tuple[list[tuple[int, int]], tuple[int, int] | None]:
    """The part of `path` recovery can replay (up to the first missing segment), and that
    missing segment (None: the archive holds the whole path)."""
    for k, (tli, seg) in enumerate(path):
        if seg not in archive.segments.get(tli, ()):
            return path[:k], (tli, seg)
    return path, None
