"""What an ingest or a replay did, row by row: every row read is counted exactly once.

    rows read = inserted + already stored + duplicates within the input + quarantined (by reason)

* inserted: rows this input added — to their landing object and, with it, to the database;
* already stored: identical to a trade stored before this input (a rerun, an overlapping file);
* duplicates within the input: identical to an earlier row of the same input that it inserted;
* quarantined: bad rows and conflicting duplicates (same trade id, other values or another
  bucket), each with its line and reason in the quarantine object.

`ticks_inserted` is the database's own count, apart from the rows: it can differ from
`inserted` when the database catches up with landing (an object stored by a run that stopped
before its commit) or already held a trade (the live stream commits before it lands a bucket).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from workers.core.errors import Failed

if TYPE_CHECKING:  # numpy loads when ids are counted: a skipped file's summary needs none
    import numpy as np


@dataclass
class Summary:
    source: str
    rows_read: int = 0
    accepted: int = 0  # inserted + already stored + duplicates within the input
    inserted: int = 0
    already_stored: int = 0
    input_duplicates: int = 0
    quarantined: Counter = field(default_factory=Counter)
    ticks_inserted: int = 0  # rows the database took (see the module notes)
    buckets_landed: int = 0
    buckets_unchanged: int = 0
    quarantine_uri: str | None = None
    seconds: float = 0.0
    skipped_keys: list[str] = field(default_factory=list)  # replay: keys that are not objects
    # Files left alone: already loaded, and nothing they covered changed (workers/db/file_loads)
    files_skipped: int = 0
    loaded_at: str | None = None  # when the skipped file's load completed

    @property
    def duplicates(self) -> int:
        """Rows identical to a stored trade or to an earlier row of the input."""
        return self.already_stored + self.input_duplicates

    @property
    def unaccounted(self) -> int:
        """Rows read that are none of the four kinds: 0, always (check_accounts)."""
        return self.rows_read - (self.inserted + self.already_stored + self.input_duplicates
                                 + sum(self.quarantined.values()))

    @property
    def changed(self) -> bool:
        return bool(self.inserted or self.ticks_inserted or self.buckets_landed)

    def check_accounts(self) -> None:
        """Every row read is one of the four kinds; a row counted twice or not at all is a
        defect of the pipeline, reported as such (exit 1) rather than a wrong summary."""
        if self.unaccounted or self.accepted != self.inserted + self.duplicates:
            raise Failed(f"{self.source}: the ingest's row counts do not add up (a tickstack "
                         f"defect, please report it): {self.as_dict()}")

    def add(self, other: Summary) -> None:
        """Fold another file's summary into this one (several files, one stage)."""
        for name in ("rows_read", "accepted", "inserted", "already_stored", "input_duplicates",
                     "ticks_inserted", "buckets_landed", "buckets_unchanged", "files_skipped"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.quarantined.update(other.quarantined)
        self.skipped_keys += other.skipped_keys
        self.seconds += other.seconds

    def rows_text(self) -> str:
        q = ", ".join(f"{k}: {v:,}" for k, v in sorted(self.quarantined.items()))
        return (f"{self.rows_read:,} rows read = inserted {self.inserted:,} + already stored "
                f"{self.already_stored:,} + duplicates within the input "
                f"{self.input_duplicates:,} + quarantined {sum(self.quarantined.values()):,}"
                + (f" ({q})" if q else ""))

    def summary(self) -> str:
        if self.loaded_at is not None:
            return (f"{self.source}: unchanged since its load at {self.loaded_at} (same file "
                    f"SHA-256, same registry over its buckets): skipped; {self.seconds:.1f} s")
        text = (f"{self.source}: {self.rows_text()}; database: {self.ticks_inserted:,} new "
                f"ticks; buckets landed {self.buckets_landed}, unchanged "
                f"{self.buckets_unchanged}; {self.seconds:.1f} s")
        if self.skipped_keys:
            text += (f"\n  skipped {len(self.skipped_keys)} key(s) that are not landing "
                     f"objects, e.g. {self.skipped_keys[0]}")
        if self.quarantine_uri:
            text += f"\n  quarantine: {self.quarantine_uri}"
        return text

    def as_dict(self) -> dict:
        return {"source": self.source, "rows_read": self.rows_read, "accepted": self.accepted,
                "inserted": self.inserted, "already_stored": self.already_stored,
                "input_duplicates": self.input_duplicates, "duplicates": self.duplicates,
                "quarantined": sum(self.quarantined.values()),
                "quarantined_by_reason": dict(self.quarantined),
                "ticks_inserted": self.ticks_inserted,
                "buckets_landed": self.buckets_landed,
                "buckets_unchanged": self.buckets_unchanged,
                "skipped_keys": self.skipped_keys, "files_skipped": self.files_skipped,
                "loaded_at": self.loaded_at,
                "quarantine_uri": self.quarantine_uri, "seconds": round(self.seconds, 3)}


class AddedIds:
    """The trade ids one input added to each bucket, kept as runs of consecutive ids (a bucket
    of new trades is one run): tells a duplicate of a row this input stored from a duplicate of
    one stored before it, when the two copies land in different flushes."""

    def __init__(self) -> None:
        self._runs: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def add(self, bucket: int, ids: np.ndarray) -> None:
        import numpy as np

        if not len(ids):
            return
        u = np.unique(np.asarray(ids, dtype=np.int64))
        cut = np.flatnonzero(np.diff(u) != 1)
        starts, ends = u[np.r_[0, cut + 1]], u[np.r_[cut, len(u) - 1]]
        if bucket in self._runs:
            s0, e0 = self._runs[bucket]
            starts, ends = np.concatenate([s0, starts]), np.concatenate([e0, ends])
            order = np.argsort(starts, kind="stable")
            starts, ends = starts[order], ends[order]
            reach = np.maximum.accumulate(ends)
            new = np.r_[True, starts[1:] > reach[:-1] + 1]
            starts, ends = starts[new], np.maximum.reduceat(ends, np.flatnonzero(new))
        self._runs[bucket] = (starts, ends)

    def count_in(self, bucket: int, ids: np.ndarray) -> int:
        """How many of `ids` this input added to `bucket`."""
        import numpy as np

        if bucket not in self._runs or not len(ids):
            return 0
        starts, ends = self._runs[bucket]
        ids = np.asarray(ids, dtype=np.int64)
        i = np.searchsorted(starts, ids, side="right") - 1
        return int(((i >= 0) & (ids <= ends[np.clip(i, 0, None)])).sum())
