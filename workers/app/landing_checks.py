"""Landing against the registry, for the faces: the audit on its own (`workers landing`, the
`landing audit` stage of `workers up`), the re-land from the primary, and the audit beside the
checks that would otherwise call the platform equal or healthy (`replicate`, `backup --check`).
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.app.context import Context


@dataclass
class WithLanding:
    """A check's result and the landing audit run beside it (workers/db/landing_audit.py):
    whatever says "equal" or "healthy" says too whether landing still holds what the registry
    vouches for, and is not ok when it does not."""

    result: object
    landing: object  # workers.db.landing_audit.Audit

    def __getattr__(self, name: str):  # seconds, totals, …: the result's own
        if name in ("result", "landing"):
            raise AttributeError(name)
        return getattr(self.result, name)

    @property
    def ok(self) -> bool:
        return getattr(self.result, "ok", True) and self.landing.ok

    @property
    def changed(self) -> bool:
        return bool(getattr(self.result, "changed", False))

    def summary(self) -> str:
        return f"{self.result.summary()}; {self.landing.headline()}"

    def details(self) -> list[str]:
        return [*getattr(self.result, "details", list)(), self.landing.summary(),
                *self.landing.details()]

    def problems(self) -> list[str]:
        mine = getattr(self.result, "problems", None)
        mine = (mine() if callable(mine) else mine) or []
        return [*mine, *self.landing.problems()]

    def as_dict(self) -> dict:
        mine = getattr(self.result, "as_dict", None)
        return {**(mine() if mine else {}), "landing": self.landing.as_dict()}


@dataclass
class NotAudited:
    """The audit beside a check could not run (no access to landing or the registry): said,
    and not ok — a check that cannot see landing does not vouch for it."""

    reason: str
    ok: bool = False

    def headline(self) -> str:
        return f"landing NOT audited: {self.reason}"

    summary = headline

    def details(self) -> list[str]:
        return []

    def problems(self) -> list[str]:
        return [self.headline()]

    def as_dict(self) -> dict:
        return {"ok": False, "error": self.reason}


def beside(ctx: Context, result, conn=None) -> WithLanding:
    """`result` with the landing audit beside it; an audit that cannot run (S3 or database
    refused it) is reported as such, with the check's own result."""
    from botocore.exceptions import BotoCoreError, ClientError
    from psycopg import Error as DatabaseError

    from workers.core.errors import TickstackError, describe

    try:
        return WithLanding(result, landing_audit(ctx, conn))
    except (TickstackError, DatabaseError, BotoCoreError, ClientError) as e:
        return WithLanding(result, NotAudited(describe(e)[1]))


def landing_audit(ctx: Context, conn=None):
    """Compare the registry with a listing of landing (missing, changed, unregistered
    objects); `conn`: a connection that reads the registry (default: the reader login)."""
    from workers.db import landing_audit as audit

    if conn is not None:
        return audit.audit(conn, ctx.landing)
    with ctx.connect("reader") as reader:
        return audit.audit(reader, ctx.landing)


def landing_check(ctx: Context, *, reland: bool = False):
    """`workers landing`: the audit (reader login); `reland`: then write back, as the ingest
    login, every lost object the primary's ticks reproduce exactly, and audit again."""
    if not reland:
        return landing_audit(ctx)
    from workers.db import reland as relanding

    with ctx.connect("ingest") as conn:
        before = landing_audit(ctx, conn)
        out = relanding.reland(conn, ctx.landing, before.lost_objects())
        out.refused += [(r.uri, f"registered in another bucket than {ctx.landing.bucket}")
                        for r in before.elsewhere]
        out.after = landing_audit(ctx, conn)
    return out
