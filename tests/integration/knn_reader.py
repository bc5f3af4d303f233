"""A reader process for the vector tests: `workers similar`'s kNN query in a loop.

    python -m tests.integration.knn_reader DSN PROBES STOPFILE < queries.json

Reads [[bucket ISO, vector], ...] from stdin, then queries them round-robin through
similar.nearest (the index path when an index of the current kind is in use) until STOPFILE
exists, printing one JSON line per query: {"i", "t0", "t1", "buckets" | "error", "probes"}.
The password comes from PGPASSWORD.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

from workers.signals import similar


def main() -> None:
    dsn, probes, stop = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    queries = [(datetime.fromisoformat(b), np.array(v, dtype=np.float32))
               for b, v in json.load(sys.stdin)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        register_vector(conn)
        conn.execute("SET statement_timeout = '30s'")  # a blocked reader fails, never hangs
        i = 0
        while not stop.exists():
            upto, vec = queries[i % len(queries)]
            out = {"i": i % len(queries), "t0": time.time()}
            try:
                rows, used = similar.nearest(conn, vec, market="spot", symbol="BTCUSDT",
                                             upto=upto, k=10, probes=probes)
                out.update(buckets=[r[0].isoformat() for r in rows], probes=used)
            except psycopg.Error as e:
                out["error"] = f"{type(e).__name__}: {e}"
            out["t1"] = time.time()
            print(json.dumps(out), flush=True)
            i += 1


if __name__ == "__main__":
    main()
