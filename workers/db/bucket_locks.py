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
"""

from __future__ import annotations

import hashlib

import psycopg

# The first int of every tickstack landing lock: PostgreSQL's pg_locks shows it as classid.
NAMESPACE = int.from_bytes(hashlib.sha256(b"tickstack.landing").digest()[:4], "big",
                           signed=True)

BucketId = tuple[str, str, int]  # (market, symbol, bucket start µs)


def lock_key(b: BucketId) -> int:
    """The bucket's 32-bit lock id (stable across processes and versions)."""
    text = f"{b[0]}/{b[1]}/{b[2]}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "big", signed=True)


def xact_lock(conn: psycopg.Connection, buckets: list[BucketId], *, shared: bool = False) -> None:
    """Transaction-scoped locks (released at commit or rollback), in sorted order; call inside
    a transaction that also registers the buckets."""
    fn = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    for k in sorted({lock_key(b) for b in buckets}):
        conn.execute(f"SELECT {fn}(%s, %s)", [NAMESPACE, k])


class SessionLocks:
    """Session-scoped locks on a connection of their own, for a pipeline whose landing and
    registering run on different threads (the file ingest). Counted: a bucket taken by two
    flushes of this session is released when both let go."""

    def __init__(self, conn: psycopg.Connection):
        self.conn = conn
        self.held: dict[int, int] = {}  # lock id -> how many holders in this session

    def try_acquire(self, buckets: list[BucketId]) -> bool:
        """All of them now, or none (what was taken is released again)."""
        keys = sorted({lock_key(b) for b in buckets})
        taken: list[int] = []
        for k in keys:
            if k in self.held:
                continue
            ok = self.conn.execute("SELECT pg_try_advisory_lock(%s, %s)",
                                   [NAMESPACE, k]).fetchone()[0]
            if not ok:
                for t in taken:
                    self.conn.execute("SELECT pg_advisory_unlock(%s, %s)", [NAMESPACE, t])
                return False
            taken.append(k)
        for k in keys:
            self.held[k] = self.held.get(k, 0) + 1
        return True

    def acquire(self, buckets: list[BucketId]) -> None:
        """Wait for all of them, in sorted order. Call holding none (see the module notes)."""
        for k in sorted({lock_key(b) for b in buckets}):
            if k not in self.held:
                self.conn.execute("SELECT pg_advisory_lock(%s, %s)", [NAMESPACE, k])
            self.held[k] = self.held.get(k, 0) + 1

    def release(self, buckets: list[BucketId]) -> None:
        for k in sorted({lock_key(b) for b in buckets}):
            n = self.held.get(k, 0) - 1
            if n <= 0:
                self.held.pop(k, None)
                self.conn.execute("SELECT pg_advisory_unlock(%s, %s)", [NAMESPACE, k])
            else:
                self.held[k] = n

    def release_all(self) -> None:
        if not self.conn.closed:
            self.conn.execute("SELECT pg_advisory_unlock_all()")
        self.held.clear()
