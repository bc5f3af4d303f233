"""A whole-command deadline for checks a monitor runs: a server that stops answering in the
middle of a query (a frozen instance, a network partition that keeps the TCP peer alive) would
otherwise hold the check — and the alarms behind it — for hours. Past the deadline the process
says what and why on stderr and exits 1 (a check changes nothing a restart would miss: its
transactions roll back when the connection goes).
"""

from __future__ import annotations

import os
import sys
import threading


def arm(what: str, seconds: float, setting: str) -> threading.Timer:
    """Exit 1 after `seconds` unless the process ended first; `setting` names the knob."""

    def expired() -> None:
        sys.stderr.write(f"{what}: no result within {seconds:g} s ({setting}): a server or "
                         "landing stopped answering — the check failed\n")
        sys.stderr.flush()
        os._exit(1)

    t = threading.Timer(seconds, expired)
    t.daemon = True
    t.start()
    return t
