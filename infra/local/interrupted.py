"""A `workers restore` killed before it put the old primary back (SIGKILL, a power cut, its
put-back interrupted): recognised and undone before the local environment starts anything.

The restore keeps a note beside the data directory while the primary is in its hands
(workers/ops/restore_marker.py, the one reader and writer of that note). Here: put the old data
directory back (the unfinished restore is kept as `data.failed-restore-…`), or, when there was
no old one, stop with the command that finishes the restore — never initdb an empty primary
over an unfinished restore.
"""

from __future__ import annotations

from infra.local.postgres import Cluster
from infra.local.procs import PartError


def undo_interrupted_restore(primary: Cluster) -> list[str]:
    """What was done (empty: no interrupted restore)."""
    from workers.ops import restore_marker

    try:
        note = restore_marker.read(primary.data)
    except restore_marker.MarkerError as e:
        raise PartError("primary", str(e)) from None
    if note is None:
        return []
    if restore_marker.alive(note):
        raise PartError("primary", f"a restore (pid {note.pid}, to {note.target}) is running "
                        f"on {primary.data}: wait for it to finish")
    try:
        what = restore_marker.undo(note, stop_server=lambda _data: primary.stop())
    except restore_marker.NotUndoable as e:
        raise PartError("primary", f"{e}. The workers' settings: eval \"$(python -m "
                        "infra.local env)\"") from None
    return [f"an interrupted restore was undone: {what}"]
