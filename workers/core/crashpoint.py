"""Named crash points for the crash tests: `TICKSTACK_CRASH_AT=point:N` SIGKILLs the process the
Nth time it reaches `point` (a real kill -9: no finally blocks, no flushes). Unset in production.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

_spec: tuple[str, int] | None = None
_seen: dict[str, int] = {}
_lock = threading.Lock()


def configure(spec: str) -> None:
    global _spec
    spec = (spec or "").strip()
    if not spec:
        _spec = None
        return
    name, _, n = spec.partition(":")
    _spec = (name, int(n or 1))


def reach(point: str) -> None:
    if _spec is None or _spec[0] != point:
        return
    with _lock:
        _seen[point] = _seen.get(point, 0) + 1
        if _seen[point] >= _spec[1]:
            print(f"crashpoint: SIGKILL at {point} #{_seen[point]}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
