"""Can point-in-time recovery from a backup set reach the target? Checked before the primary
is touched (workers/ops/restore_checks.py's preflight), from the repository's WAL archive: no
hole on the way, and a commit after the target before the end of what can be replayed.
"""

from __future__ import annotations

import re
import shlex
from datetime import UTC, datetime
from pathlib import Path

from workers.core import logs
from workers.core.errors import Failed, Refused
from workers.ops import wal_archive
from workers.ops.backup import Tool, tail

log = logs.get("restore")

# Past this many segments without a commit, the backwards scan says so in the log.
COMMIT_SCAN_SEGMENTS = 8


class RestoreRefused(Refused):
    pass


def check(tool: Tool, bindir: str, info: dict, chosen: dict, target: datetime, timeline: str,
          seg_size: int) -> tuple[datetime | None, str | None]:
    """Recovery from the chosen set stops at the first missing WAL segment or the end of the
    archive, and it must find a commit after the target before that: refuse when it cannot.
    Returns the newest archived commit recovery reaches and its WAL segment."""
    db_id = (chosen.get("database") or {}).get("id")
    arch = next((a for a in info.get("archive") or []
                 if (a.get("database") or {}).get("id") == db_id), None)
    backup = next((b for b in wal_archive.backups_of(info, db_id, seg_size)
                   if b.label == chosen["label"]), None)
    if arch is None or backup is None:
        raise Failed(f"backup set {chosen['label']} has no WAL archive in the repository")
    archive = wal_archive.read_archive(tool, arch["id"], seg_size)
    tli = wal_archive.recovery_timeline(archive, backup, timeline)
    path = wal_archive.recovery_path(archive, backup, tli, seg_size)
    if path is None:
        raise RestoreRefused(f"timeline {tli} does not descend from backup set {backup.label} "
                             f"(timeline {backup.tli}): use --timeline current")
    reach, missing = wal_archive.replayable(archive, path)
    hole = (f"; the WAL archive misses {wal_archive.wal_name(*missing, seg_size)}, so "
            "recovery stops before it" if missing else "")
    if missing and missing[0] == backup.tli and backup.start <= missing[1] <= backup.stop:
        raise RestoreRefused(f"backup set {backup.label} cannot be restored{hole} (inside the "
                             "backup's own WAL)")
    # Newest first: on a busy server the last segment holds a commit. An idle one may have
    # archived only checkpoints, hint-bit page images and switches since the backup; then
    # every segment back to the backup's start is read before giving up.
    when = name = None
    for n, tli_seg in enumerate(reversed(reach)):
        if n == COMMIT_SCAN_SEGMENTS:
            log.info("no commit in the newest archived WAL; reading back to the backup's start",
                     segments=len(reach))
        name = wal_archive.wal_name(*tli_seg, seg_size)
        when = _last_commit_in(tool, bindir, archive.files[tli_seg], name)
        if when is not None:
            break
    if when is None:
        # Recovery to a time stops at the first commit (or abort) after it; with none archived
        # since the backup it replays to the end and fails there, after the primary was moved.
        raise RestoreRefused(
            f"the target {target.isoformat()} is after the last archived commit (none since "
            f"backup set {backup.label} began){hole}: recovery could never reach it; choose "
            "another backup set or restore once a commit after the target is archived")
    if target >= when:
        raise RestoreRefused(
            f"the target {target.isoformat()} is after the last archived commit "
            f"({when.isoformat()}, in {name}){hole}: recovery could never reach it; choose a "
            "target before that commit")
    return when, name


_COMMIT = re.compile(r"desc: (?:COMMIT|ABORT)(?:_PREPARED)? "
                     r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.(\d{6}) UTC")


# pgBackRest compresses archived WAL by compress-type; the file name says which.
_DECOMPRESS = {".zst": "zstd -dcq", ".gz": "gzip -dc", ".lz4": "lz4 -dcq", ".bz2": "bzip2 -dc"}


def _last_commit_in(tool: Tool, bindir: str, repo_path: str, wal: str) -> datetime | None:
    """The time of the last commit (or abort: recovery stops at either) in one archived WAL
    segment: fetched with repo-get (archive-get needs the data directory's pg_control, which a
    disaster may have taken), decompressed into a private temporary directory, read with
    pg_waldump (in UTC)."""
    ext = repo_path[repo_path.rfind("."):] if "." in repo_path.rsplit("/", 1)[-1] else ""
    unpack = _DECOMPRESS.get(ext, "cat")
    get = " ".join(shlex.quote(a) for a in ("pgbackrest", f"--config={tool.config}",
                                             f"--stanza={tool.stanza}",
                                             "--log-level-console=error", "repo-get", repo_path))
    waldump = shlex.quote(str(Path(bindir) / "pg_waldump"))
    script = (f'set -o pipefail; d=$(mktemp -d) && trap \'rm -rf "$d"\' EXIT && '
              f'{get} | {unpack} > "$d/{wal}" && '
              f'{{ TZ=UTC {waldump} "$d/{wal}" 2>/dev/null | grep "desc: [CA][OB]" || true; }}')
    r = tool.exec(["bash", "-c", script], timeout=120)
    if r.returncode != 0:
        raise Failed(f"cannot read archived WAL {wal} (pgbackrest repo-get | "
                     f"{unpack.split()[0]}, exit {r.returncode}): "
                     f"{tail(r.stderr or r.stdout, 3)[-300:]}")
    found = _COMMIT.findall(r.stdout)
    if not found:
        return None
    day, us = found[-1]
    return datetime.strptime(day, "%Y-%m-%d %H:%M:%S").replace(microsecond=int(us), tzinfo=UTC)
