"""Keep the ingest worker's resident memory flat and small (goal: <= 300 MB on any file size).

Measured here: most of the RSS above Python's own is allocator retention, not live data —
glibc gives each thread its own arena, and Arrow's default mimalloc pool keeps freed pages.
One glibc arena cuts the peak noticeably at no measured speed cost; Arrow allocating from that
same glibc heap (its "system" pool) instead of mimalloc cut a day's peak from ~350 to ~280 MB
(Arrow's live data never exceeded ~40 MB of it) with no measured speed cost either.
pyarrow.set_memory_pool reaches pyarrow's own calls only; Arrow's C++ internals (Parquet, CSV
and IO buffers) take the pool ARROW_DEFAULT_MEMORY_POOL names when Arrow loads, which
`python -m workers` sets to "system" before anything imports pyarrow (workers/__main__.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys

M_ARENA_MAX = -8
ARROW_POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"


def choose_arrow_pool() -> None:
    """Arrow's C++ code (Parquet, CSV, IO buffers) allocates from the pool ARROW_DEFAULT_MEMORY_
    POOL names when Arrow loads, so this must run before pyarrow is imported. With mimalloc
    left there a month's ingest peaked at 302-309 MB; with glibc's heap at 249-251 MB, at the
    same speed (bench/month.py). An operator's own setting wins."""
    if "pyarrow" in sys.modules:
        raise RuntimeError("choose_arrow_pool() runs before pyarrow is imported")
    os.environ.setdefault(ARROW_POOL_ENV, "system")


def limit_allocator_retention() -> None:
    libc_name = ctypes.util.find_library("c")
    # Not glibc, or no mallopt: nothing to tune, the defaults are correct, only larger.
    with contextlib.suppress(OSError, AttributeError):
        if libc_name:
            ctypes.CDLL(libc_name).mallopt(M_ARENA_MAX, 1)
    # Not jemalloc either: it aborted the process at exit now and then ("terminate called
    # without an active exception", apache/arrow#34314 and kin).
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())
