"""Per-bucket advisory locks on the primary: every writer of a landing bucket object serialises
its read-merge-write-register against every other writer of that bucket.

Landing is the source of truth, and a bucket object is rewritten whole on every merge: two
writers that both read version 1 and both write would each store only their own rows. Every
path that writes a bucket object or its registry row — file ingest, stream compaction, landing
replay and restore — holds the bucket's lock from before it reads the object until its registry
row has committed. Locks live on the primary, which every writer already talks to, so this works
with any S3; conditional writes (If-Match) guard the object itself where the store supports them.

Keys are (market, symbol, bucket) hashed into PostgreSQL's two-int advisory lock space; a hash
collision only makes two unrelated buckets wait for each other. Locks are always taken in sorted
order, and a writer that already holds locks only *tries* more (it releases what it holds and
waits otherwise), so two writers never wait on each other in a cycle.

Trade ids (`id_locks`): a trade id is stored in one bucket only, so a writer that decides where
its rows' ids go (the file ingest's cross-bucket check) holds, from that check until its load
has committed, the locks of the id blocks (2^16 consecutive ids) its rows carry — exclusive, with
the series' id lock shared; a flush whose ids touch more than MAX_ID_BLOCKS blocks takes the
series' id lock exclusive instead. Two writers that could place one id in two buckets therefore
check one after the other, the second seeing what the first committed. A writer keeps a block
while its flushes stay inside it; another writer of the same ids follows once it has moved on.
"""

from __future__ import annotations

import hashlib
from functools import cache
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from workers.core.markets import BucketId
from workers.core.sqlfiles import query, template

if TYPE_CHECKING:
    import numpy as np

# The first int of every tickstack landing lock: PostgreSQL's pg_locks shows it as classid.
NAMESPACE = int.from_bytes(hashlib.sha256(b"tickstack.landing").digest()[:4], "big",
                           signed=True)

Locks = dict[int, bool]  # lock id -> shared
ID_BLOCK_BITS = 16  # an id block: 65,536 consecutive trade ids (a flush spans one or two)
MAX_ID_BLOCKS = 16  # more blocks than this in one flush: the series' id lock, exclusive


def _key(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big", signed=True)


def lock_key(b: BucketId) -> int:
    """The bucket's 32-bit lock id (stable across processes and versions)."""
    return _key(f"{b[0]}/{b[1]}/{b[2]}")


def bucket_locks(buckets: list[BucketId]) -> Locks:
    return {lock_key(b): False for b in buckets}


def combine(*requests: Locks) -> Locks:
    """One request of several; a lock asked for both ways is taken exclusive."""
    out: Locks = {}
    for r in requests:
        for k, shared in r.items():
            out[k] = out.get(k, True) and shared
    return out


def id_locks(market: str, symbol: str, ids: np.ndarray) -> Locks:
    """The locks a writer holds while it decides which bucket these trade ids go to."""
    import numpy as np

    series = _key(f"{market}/{symbol}/ids")
    blocks = np.unique(np.asarray(ids, dtype=np.int64) >> ID_BLOCK_BITS)
    if len(blocks) > MAX_ID_BLOCKS:
        return {series: False}
    out = {_key(f"{market}/{symbol}/ids/{int(b)}"): False for b in blocks}
    out.setdefault(series, True)  # a block key hashing onto the series key stays exclusive
    return out


@cache
def _call(fn: str) -> sql.Composed:
    """`SELECT <fn>(namespace, key)` for one of the advisory lock functions."""
    return template(__package__, "advisory_lock").format(fn=sql.Identifier(fn))


def xact_lock(conn: psycopg.Connection, buckets: list[BucketId], *, shared: bool = False) -> None:
    """Transaction-scoped locks (released at commit or rollback), in sorted order; call inside
    a transaction that also registers the buckets."""
    fn = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    for k in sorted({lock_key(b) for b in buckets}):
        conn.execute(_call(fn), [NAMESPACE, k])


class SessionLocks:
    """Session-scoped locks on a connection of their own, for a pipeline whose landing and
    registering run on different threads (the file ingest). Counted: a lock taken by two
    flushes of this session is released when both let go. Requests are buckets (exclusive) or
    `Locks` ({lock id: shared})."""

    def __init__(self, conn: psycopg.Connection):
        self.conn = conn
        self.held: dict[int, list] = {}  # lock id -> [holders in this session, shared]

    @staticmethod
    def _locks(request: list[BucketId] | Locks) -> Locks:
        return dict(request) if isinstance(request, dict) else bucket_locks(request)

    def _take(self, k: int, shared: bool, wait: bool) -> bool:
        fn = ("pg_advisory_lock" if wait else "pg_try_advisory_lock") + (
            "_shared" if shared else "")
        r = self.conn.execute(_call(fn), [NAMESPACE, k]).fetchone()[0]
        return True if wait else bool(r)

    def _drop(self, k: int, shared: bool) -> None:
        fn = "pg_advisory_unlock_shared" if shared else "pg_advisory_unlock"
        self.conn.execute(_call(fn), [NAMESPACE, k])

    def try_acquire(self, request: list[BucketId] | Locks) -> bool:
        """All of them now, or none (what was taken is released again). A lock held shared by
        this session and asked for exclusive is not upgraded: False (wait, then acquire)."""
        locks = self._locks(request)
        taken: list[tuple[int, bool]] = []
        for k in sorted(locks):
            if k in self.held:
                if self.held[k][1] and not locks[k]:
                    break
                continue
            if not self._take(k, locks[k], wait=False):
                break
            taken.append((k, locks[k]))
        else:
            self._count(locks)
            return True
        for k, shared in taken:
            self._drop(k, shared)
        return False

    def acquire(self, request: list[BucketId] | Locks) -> None:
        """Wait for all of them, in sorted order. Call holding none (see the module notes)."""
        locks = self._locks(request)
        for k in sorted(locks):
            if k not in self.held:
                self._take(k, locks[k], wait=True)
            elif self.held[k][1] and not locks[k]:
                raise RuntimeError("exclusive lock asked while this session holds it shared")
        self._count(locks)

    def _count(self, locks: Locks) -> None:
        for k, shared in locks.items():
            if k in self.held:
                self.held[k][0] += 1
            else:
                self.held[k] = [1, shared]

    def release(self, request: list[BucketId] | Locks) -> None:
        for k in sorted(self._locks(request)):
            n, shared = self.held.get(k, (0, False))
            if n <= 1:
                if self.held.pop(k, None) is not None:
                    self._drop(k, shared)
            else:
                self.held[k][0] = n - 1

    def release_all(self) -> None:
        if not self.conn.closed:
            self.conn.execute(query(__package__, "advisory_unlock_all"))
        self.held.clear()
