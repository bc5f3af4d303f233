"""Named crash points for the crash tests: `TICKSTACK_CRASH_AT=point:N` SIGKILLs the process the
Nth time it reaches `point` (a real kill -9: no finally blocks, no flushes). `point:N:SIGTERM`
(or SIGINT) sends that signal instead, to test the interrupt handling at a known step. Unset in
production.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

_spec: tuple[str, int, signal.Signals] | None = None
_seen: dict[str, int] = {}
_lock = threading.Lock()


def configure(spec: str) -> None:
    global _spec
    spec = (spec or "").strip()
    if not spec:
        _spec = None
        return
    name, _, rest = spec.partition(":")
    n, _, sig = rest.partition(":")
    _spec = (name, int(n or 1), signal.Signals[sig] if sig else signal.SIGKILL)


def reach(point: str) -> None:
    if _spec is None or _spec[0] != point:
        return
    with _lock:
        _seen[point] = _seen.get(point, 0) + 1
        if _seen[point] >= _spec[1]:
            sig = _spec[2]
            print(f"crashpoint: {sig.name} at {point} #{_seen[point]}", file=sys.stderr,
                  flush=True)
            os.kill(os.getpid(), sig)
