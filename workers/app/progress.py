"""Progress of a long file ingest: a rich line on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import sys
import time

from workers.core import logs


def file_progress(path: str):
    """A rich progress line on a terminal; periodic log lines otherwise."""
    t0, last = time.monotonic(), [0.0]
    if sys.stderr.isatty():
        from rich.progress import Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn("[bold]{task.description}"), TextColumn("{task.fields[s]}"),
                       TimeElapsedColumn(), transient=True)
        task = bar.add_task(path.rsplit("/", 1)[-1], s="")
        bar.start()

        def update(sm):
            rate = sm.rows_read / max(time.monotonic() - t0, 1e-9)
            bar.update(task, s=f"{sm.rows_read:,} rows  {rate:,.0f} rows/s  "
                              f"{sm.buckets_landed} buckets")
            if sm.seconds:  # the summary is final: the line goes
                bar.stop()
        return update
    log = logs.get("ingest")

    def lines(sm):
        if time.monotonic() - last[0] >= 5:
            last[0] = time.monotonic()
            log.info("progress", source=path, rows=sm.rows_read, buckets=sm.buckets_landed)
    return lines
