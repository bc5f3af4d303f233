"""Run by test_signals.py in a process of its own: a real SIGTERM, through the handlers
workers/core/interrupts.py installs, delivered at every line the database driver's Python code
runs while it serves the calls workers make — a write in a transaction, a COPY, a read. Where
a signal lands is a matter of timing in a real command; here each point is hit in turn.

At every point the call must end in KeyboardInterrupt (never a driver error, never a lost
interrupt), the connection must take its next query (the cleanup's), nothing half-written may
remain, and no trace may be left running. Prints one JSON object: the points tried per call and
the problems found.

Usage: python -m tests.integration.interrupt_points DSN TABLE (password in PGPASSWORD).
"""

from __future__ import annotations

import json
import os
import signal
import sys

import psycopg

from workers.core import interrupts

DRIVER = os.path.dirname(psycopg.__file__) + os.sep


class Shot:
    """A trace that delivers SIGTERM at the `at`-th line run by the driver's code."""

    def __init__(self, at: int):
        self.at, self.seen, self.fired = at, 0, False

    def call(self, frame, _event, _arg):
        return self.line if frame.f_code.co_filename.startswith(DRIVER) else None

    def line(self, _frame, event, _arg):
        if event == "line" and not self.fired:
            self.seen += 1
            if self.seen == self.at:
                self.fired = True
                signal.raise_signal(signal.SIGTERM)
        return self.line


def calls(table: str):
    def write(c: psycopg.Connection, key: int) -> None:
        with c.transaction():
            c.execute(f"INSERT INTO {table} (k, part) VALUES (%s, 1)", [key])
            c.execute(f"INSERT INTO {table} (k, part) VALUES (%s, 2)", [key])

    def copy(c: psycopg.Connection, key: int) -> None:
        with c.transaction(), c.cursor().copy(f"COPY {table} (k, part) FROM STDIN") as cp:
            cp.write_row((key, 1))
            cp.write_row((key, 2))

    def read(c: psycopg.Connection, _key: int) -> None:
        c.execute("SELECT g FROM generate_series(1, 5000) g").fetchall()

    return {"write": write, "copy": copy, "read": read}


def main(dsn: str, table: str) -> None:
    interrupts.install()
    points: dict[str, int] = {}
    problems: list[str] = []
    key = 0
    for name, fn in calls(table).items():
        at = 0
        while True:
            at += 1
            key += 1
            conn = psycopg.connect(dsn, autocommit=True)
            shot = Shot(at)
            # A point that hangs (a lock the interrupted call kept) ends the run, SIGALRM
            # killing it; stderr names the point.
            print(f"{name} at driver line #{at}", file=sys.stderr, flush=True)
            signal.alarm(60)
            outcome = "returned"
            try:
                sys.settrace(shot.call)
                try:
                    fn(conn, key)
                finally:
                    sys.settrace(None)
            except KeyboardInterrupt:
                outcome = "interrupted"
            except Exception as e:  # what the point is about: reported, not raised
                outcome = f"{type(e).__name__}: {e}"
            if not shot.fired:  # past the driver's last line: every point was tried
                conn.close()
                signal.alarm(0)
                break
            where = f"{name} at driver line #{at}"
            if outcome != "interrupted":
                problems.append(f"{where}: {outcome}")
            if sys.gettrace() is not None:
                problems.append(f"{where}: a trace left running")
            try:
                conn.execute("SELECT 1").fetchone()
                parts = conn.execute(f"SELECT count(*) FROM {table} WHERE k = %s",
                                     [key]).fetchone()[0]
                if parts not in (0, 2):
                    problems.append(f"{where}: {parts} of the 2 rows written")
            except psycopg.Error as e:
                problems.append(f"{where}: the next query failed: {e}")
            conn.close()
            signal.alarm(0)
        points[name] = at - 1
    print(json.dumps({"points": points, "problems": problems}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
