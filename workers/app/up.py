"""`workers up`: the main job, every stage in order on the configured servers, then a summary.

The stages are the list below; each calls the same operation as its CLI command
(workers/app/operations.py) and shows that result's own `summary()`. Each is timed and says
whether it changed anything, so a second run over the same data reports "nothing changed". A
failing stage stops the job; the stages before it are still summarised and the report written.
The landing audit is the exception: when landing lost registered objects the job goes on (the
backup of the primary, now the only copy, matters most), the stages that trust the registry
say so beside their result, and the job fails at the end (exit 1).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from workers.app import landing_checks, operations
from workers.app.context import Context
from workers.app.results import Note, Run, Stage, StageFailed
from workers.core import logs
from workers.core.errors import EXIT_FAILED, describe

log = logs.get("up")


# Stages whose failure does not stop the job: the stages after them still run (when landing
# is lost, the primary holds the only copy — its backup matters most), and the job fails at
# the end, naming them.
KEEP_GOING = ("landing audit",)


@dataclass
class Flagged:
    """A stage's result, its summary flagged with the landing audit's loss: an "equal" or
    "healthy" of a stage that trusts the registry is not read as all is well."""

    result: object
    flag: str

    def __getattr__(self, name: str):
        if name in ("result", "flag"):
            raise AttributeError(name)
        return getattr(self.result, name)

    def summary(self) -> str:
        return f"{self.result.summary()} — {self.flag}"


def _flagged(run: Run, result):
    audit = run.result_of("landing audit")
    if audit is None or getattr(audit, "ok", True):
        return result
    return Flagged(result, f"but {audit.headline()} (see the landing audit)")


def _landing_audit(ctx: Context, run: Run):
    return landing_checks.landing_audit(ctx)


def _replicate(ctx: Context, run: Run):
    if not ctx.settings.has_replica:
        return Note("no replica configured (TICKSTACK_REPLICA_DSN is empty)")
    return _flagged(run, operations.replicate(ctx, audit_landing=False))


def _backup(ctx: Context, run: Run, force: bool):
    if not ctx.settings.backup.pgbackrest_config:
        return Note("skipped: TICKSTACK_PGBACKREST_CONFIG is not set")
    return operations.full_backup_unless_current(ctx, force=force)


def _archive_check(ctx: Context, run: Run):
    if not ctx.settings.backup.pgbackrest_config:
        return Note("skipped: TICKSTACK_PGBACKREST_CONFIG is not set")
    return _flagged(run, operations.archive_check(ctx, audit_landing=False))


def _similar(ctx: Context, run: Run):
    """The newest window whose next hour is known: the report shows it beside its neighbours."""
    from workers.signals.similar import NoEmbedding

    try:
        r = operations.similar(ctx, symbol="BTCUSDT", at=None, k=5, labelled=True)
    except NoEmbedding:
        return Note("no embedded window with a known next hour yet")
    run.example = r.as_dict()
    return r


def stages(paths: list[str], force_backup: bool, fetch_day: str | None = None
           ) -> list[tuple[str, Callable[[Context, Run], object]]]:
    """The main job, in order: (stage name, what it runs). `fetch_day`: a day of BTCUSDT spot
    trades fetched from the archive first and ingested with `paths` (a clone without
    ../shared/data)."""
    paths = list(paths)

    def fetch(ctx: Context, run: Run):
        from workers.app.fetching import fetch_day as fetch_one

        got = fetch_one(ctx, fetch_day)
        paths.append(got.path)
        return got

    return [("fetch", fetch)] * bool(fetch_day) + [
        ("migrate", lambda ctx, run: operations.migrate(ctx)),
        ("ingest", lambda ctx, run: operations.ingest(ctx, paths)),
        ("landing audit", _landing_audit),
        ("replicate", _replicate),
        ("embed", lambda ctx, run: operations.embed(ctx)),
        ("retention (dry-run)", lambda ctx, run: operations.retention(ctx, dry_run=True)),
        ("retention", lambda ctx, run: operations.retention(ctx)),
        ("backup", lambda ctx, run: _backup(ctx, run, force_backup)),
        ("archive check", _archive_check),
        ("similar", _similar),
    ]


def run_all(ctx: Context, paths: list[str], *, on_stage: Callable[[Stage], None] | None = None,
            force_backup: bool = False, fetch_day: str | None = None
            ) -> tuple[Run, StageFailed | None]:
    run = Run()
    deferred: StageFailed | None = None
    for name, fn in stages(paths, force_backup, fetch_day):
        st = Stage(name)
        run.stages.append(st)
        t0 = time.monotonic()
        failure = None
        try:
            st.result = fn(ctx, run)
            st.did = st.result.summary()
            st.changed = bool(getattr(st.result, "changed", False))
            if not getattr(st.result, "ok", True):
                problems = getattr(st.result, "problems", None)
                problems = problems() if callable(problems) else problems
                failure = "; ".join(problems) if problems else st.did
        except Exception as e:  # a worker's own error: name the stage, not a traceback
            failure = describe(e)[1]
            st.did = failure
        st.seconds = time.monotonic() - t0
        st.ok = failure is None
        log.debug("stage", stage=name, ok=st.ok, changed=st.changed,
                  seconds=round(st.seconds, 2), did=st.did)
        if on_stage:
            on_stage(st)
        if failure is not None and name in KEEP_GOING:
            deferred = deferred or StageFailed(name, failure)
        elif failure is not None:
            return run, StageFailed(name, failure)
    return run, deferred


@dataclass
class MainJob:
    """`workers up`'s result: the run, the failure that stopped it (or failed it at the end),
    and the summary table it prints."""

    run: Run
    failure: StageFailed | None

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else EXIT_FAILED

    @property
    def changed(self) -> bool:
        return self.run.changed

    def summary(self) -> str:
        from rich.text import Text

        return Text.from_markup(self.final()).plain

    def as_dict(self) -> dict:
        return {"ok": self.ok, "changed": self.changed, "report": self.run.report,
                "stages": [{"stage": st.name, "did": st.did, "seconds": round(st.seconds, 3),
                            "changed": st.changed, "ok": st.ok} for st in self.run.stages]}

    def final(self) -> str:
        """The last line (rich markup): how the job ended."""
        from rich.markup import escape

        failure = self.failure
        if failure and failure.stage in KEEP_GOING:
            return (f"[red]make up ran every stage, but {failure.stage} FAILED:[/] "
                    f"{escape(str(failure))}")
        if failure:
            return f"[red]make up stopped at {failure.stage}:[/] {escape(str(failure))}"
        return ("nothing changed: the platform was already up to date with this data"
                if not self.run.changed else "done: the platform is up to date with this data")

    def lines(self) -> list:
        """The summary table, where the report is, and how the job ended."""
        from rich.markup import escape
        from rich.table import Table
        from rich.text import Text

        t = Table(title="tickstack make up — summary", show_lines=False)
        t.add_column("stage")
        t.add_column("what it did", overflow="fold")
        t.add_column("time", justify="right")
        for st in self.run.stages:
            style = "red" if not st.ok else (None if st.changed else "dim")
            t.add_row(st.name, escape(st.did), f"{st.seconds:.1f} s", style=style)
        t.add_section()
        t.add_row("total", "", f"{sum(st.seconds for st in self.run.stages):.1f} s")
        out: list = [t]
        if self.run.report:
            out.append(Text(f"report: {self.run.report}"))
        out.append(Text.from_markup(self.final()))
        return out


def main(ctx: Context, paths: list[str], *, report_dir: str, force_backup: bool = False,
         fetch_day: str | None = None) -> MainJob:
    """Run every stage, printing a progress line after each, then write the report; the
    result prints the summary table."""
    from rich.console import Console
    from rich.markup import escape

    console = Console()

    def progress(st: Stage) -> None:
        mark = ("[red]FAILED[/]" if not st.ok else
                "[green]done[/]" if st.changed else "[dim]same[/]")
        console.print(f"{mark} {st.name} ({st.seconds:.1f} s): {escape(st.did)}", highlight=False)

    run, failure = run_all(ctx, paths, on_stage=progress, force_backup=force_backup,
                           fetch_day=fetch_day)
    try:
        from workers.app import report

        run.report = str(report.write(run, ctx.dsn("reader"), report_dir))
    except Exception as e:  # the summary still matters when a figure cannot be drawn
        console.print(f"[yellow]report not written: {type(e).__name__}: {e}[/]")
    return MainJob(run, failure)
