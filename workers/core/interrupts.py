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

The KeyboardInterrupt is never raised inside the database driver: a signal that lands while
psycopg runs (between sending a command and reading its result, at any instruction) is raised
at the first instruction back in the caller, once the cancelled query has returned or failed.
Raised inside, it left the connection with a command in progress, and the cleanup's next query
failed ("another command is already in progress", exit 1 instead of 130).

`deferred()` guards cleanup that must finish once started (stopping a tool's processes, moving
a data directory back): a second SIGINT/SIGTERM arriving inside is noted, not raised, and raised
when the block ends (unless an exception is already on its way out).
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading

from workers.core.errors import TickstackError

EXIT_INTERRUPTED = 130  # 128 + SIGINT: what the shell and typer report for Ctrl-C


class Interrupted(TickstackError):
    """Stopped by SIGINT/SIGTERM after cleaning up; the message says what state is left."""

    exit_code = EXIT_INTERRUPTED

_HANDLED = (signal.SIGINT, signal.SIGTERM)
_last: list[int] = []


_raising: list[int] = []  # an interrupt that landed inside the driver, raised on leaving it


def _interrupt(signum: int, frame) -> None:
    _last.append(signum)
    cancel_queries()
    if _in_driver(frame):
        _raise_on_leaving(signum, frame)
        return
    _disarm()  # one that landed inside the driver while this ran is this one
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _driver_dirs() -> tuple[str, ...]:
    import os
    import sys

    return tuple(os.path.dirname(m.__file__) + os.sep for m in
                 (sys.modules.get(n) for n in _DRIVERS) if m is not None and m.__file__)


_DRIVERS = ("psycopg", "psycopg_pool")  # protocol state lives in their Python code


@functools.cache
def _library_dirs() -> tuple[str, ...]:
    """Where the standard library and installed packages live: not the application's code."""
    import os
    import sysconfig

    paths = sysconfig.get_paths()
    dirs = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    return tuple({os.path.join(p, "") for d in dirs for p in (d, os.path.realpath(d))})


def _application(frame) -> bool:
    """A frame of the application's own code (not a library's, not generated code): written
    to be interrupted, its `with` blocks entered or not at all."""
    if frame.f_globals.get("__name__", "").partition(".")[0] == "workers":
        return True  # tickstack's own, wherever it is installed (a wheel: site-packages)
    name = frame.f_code.co_filename
    return not name.startswith("<") and not name.startswith(_library_dirs())


def _in_driver(frame) -> bool:
    """Whether the driver's code runs in this frame or in one of its callers."""
    dirs = _driver_dirs()
    while frame is not None:
        if frame.f_code.co_filename.startswith(dirs):
            return True
        frame = frame.f_back
    return False


def _raise_on_leaving(signum: int, frame) -> None:
    """Raise KeyboardInterrupt at the first instruction of the application's code that runs
    with the driver no longer on the stack (its cancelled query ends at once). Not in a library
    frame on the way out either: psycopg's `copy()` and `transaction()` are context managers,
    and one interrupted inside contextlib's `__enter__` is never exited (the COPY kept the
    connection's lock, and the cleanup waited on it for good). The application's frames are
    traced instruction by instruction, as a debugger's are; the trace ends with the raise."""
    import sys

    if _raising:
        _raising[0] = signum
        return
    _raising.append(signum)
    while frame is not None:
        if _application(frame):
            frame.f_trace_opcodes = True
            frame.f_trace = _on_event
        frame = frame.f_back
    sys.settrace(_on_call)


def _on_call(frame, _event, _arg):
    """New frames (a callback from the driver, the caller's next call): traced when they are
    the application's."""
    if not _raising or not _application(frame):
        return None
    frame.f_trace_opcodes = True
    return _on_event


def _on_event(frame, event, _arg):
    if not _raising:
        return None
    if _in_driver(frame):  # the application called back from inside the driver: not yet
        return _on_event
    signum = _raising.pop()
    _disarm()
    # Raised from the trace function, it is raised in `frame` (an exception on its way out of
    # the driver, the cancelled query's, is replaced by it).
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _disarm() -> None:
    import sys

    if _raising or sys.gettrace() is _on_call:
        _raising.clear()
        sys.settrace(None)


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
