"""SIGTERM is Ctrl-C: what systemd, Kubernetes and `timeout` send stops a command the way an
interactive Ctrl-C does, through the same cleanup.

`install()` (the CLI entry calls it once) makes SIGTERM raise KeyboardInterrupt in the main
thread, as Python's own SIGINT handler does: every `finally`, every `except BaseException` that
puts things back (a restore's old data directory, a tool's child processes) runs for both. Both
first cancel the process's queries in flight (`cancel_queries`): worker threads never see the
KeyboardInterrupt, and one waiting in the database would hold the exit. The
command then exits 130 (EXIT_INTERRUPTED), as Ctrl-C always did (typer maps KeyboardInterrupt
to 130). Commands with their own graceful stop (the live stream) replace these handlers while
they run.

`deferred()` guards cleanup that must finish once started (stopping a tool's processes, moving
a data directory back): a second SIGINT/SIGTERM arriving inside is noted, not raised, and raised
when the block ends (unless an exception is already on its way out).
"""

from __future__ import annotations

import contextlib
import signal
import threading

from workers.core.errors import TickstackError

EXIT_INTERRUPTED = 130  # 128 + SIGINT: what the shell and typer report for Ctrl-C


class Interrupted(TickstackError):
    """Stopped by SIGINT/SIGTERM after cleaning up; the message says what state is left."""

    exit_code = EXIT_INTERRUPTED

_HANDLED = (signal.SIGINT, signal.SIGTERM)
_last: list[int] = []


def _interrupt(signum: int, _frame) -> None:
    _last.append(signum)
    cancel_queries()
    raise KeyboardInterrupt(signal.Signals(signum).name)


def cancel_queries() -> int:
    """Cancel, on the server, every query this process has in flight. KeyboardInterrupt reaches
    the main thread only: a worker thread waiting in a query (a loader, a digest read — or on a
    lock someone else holds) would keep its pool, and so the exit, waiting for good. Cancelled,
    its query fails at once and the pool winds down; what was not committed is rolled back, as
    after a crash, and a rerun completes. Returns how many were cancelled."""
    import gc
    import sys

    psycopg = sys.modules.get("psycopg")
    if psycopg is None:
        return 0
    active = psycopg.pq.TransactionStatus.ACTIVE
    n = 0
    for obj in gc.get_objects():
        if isinstance(obj, psycopg.Connection) and not obj.closed and \
                obj.info.transaction_status == active:
            with contextlib.suppress(psycopg.Error):
                obj.cancel_safe(timeout=5)
                n += 1
    return n


def install() -> None:
    """SIGTERM (and SIGINT, unless the parent ignores it: `nohup`, `&` in a script) raise
    KeyboardInterrupt in the main thread."""
    signal.signal(signal.SIGTERM, _interrupt)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupt)


def last_signal() -> str:
    """The name of the last interrupting signal ("SIGINT" when none was seen: a
    KeyboardInterrupt without a handler of ours is Ctrl-C)."""
    return signal.Signals(_last[-1]).name if _last else "SIGINT"


@contextlib.contextmanager
def deferred(*, raise_after: bool = True):
    """Run the block to its end even if SIGINT/SIGTERM arrive; raise KeyboardInterrupt after
    it when one did (and nothing else is propagating; `raise_after=False`: the caller is
    stopping anyway). Main thread only; a no-op elsewhere."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def note(signum: int, _frame) -> None:
        pending.append(signum)
        _last.append(signum)

    # Only handlers that would raise are replaced (ignored or default dispositions stay).
    old = {s: signal.getsignal(s) for s in _HANDLED}
    swapped = [s for s, h in old.items() if h in (_interrupt, signal.default_int_handler)]
    for s in swapped:
        signal.signal(s, note)
    try:
        yield
    finally:
        for s in swapped:
            signal.signal(s, old[s])
    if pending and raise_after:
        raise KeyboardInterrupt(signal.Signals(pending[-1]).name)
