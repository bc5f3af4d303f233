"""What a retention job did (or would do), as typed actions: one class per kind, its keys
defined once — the dataclass's fields — and checked wherever an action crosses a boundary.

An action leaves the worker as a JSON object: `{"action": <kind>, <field>: ...}` in
`workers retention --json` and in `ops.retention_runs.detail->'actions'`, which the database
reads back (ops.retention_horizon, sql/021: the cut-off of the kinds that remove rows). Reading
one back (`from_dict`) refuses an unknown kind, an unknown key or a missing one, naming it;
tests/integration/test_retention_actions.py holds these classes against the functions' own
definitions on a real server (the keys and kinds the SQL reads, the columns it returns).

Adding a kind: a class here (its fields, `kind`, `removes`, `verbs`, `touched`), registered in
KINDS, made by the planner in retention.py (docs/extending.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, ClassVar, NamedTuple


class _Unset:
    """A key the action does not record (distinct from one recorded as null)."""

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()
_SET_ONLY = {"set_only": True}  # field metadata: the key is written only when it was set


def _set_only() -> Any:
    return field(default=UNSET, metadata=_SET_ONLY)


class BadAction(ValueError):
    """A retention action that is not one of KINDS' shapes (unknown kind, unknown or missing
    keys); the message says which."""


class Chunk(NamedTuple):
    """A row of ops.retention_chunks (sql/011): the same columns, in the same order."""

    chunk: str
    range_start: datetime
    range_end: datetime
    rows: int
    is_compressed: bool


def span(chunks: list[Chunk]) -> list[str] | None:
    """[first start, last end] of chunks in range order, as the actions record it."""
    return [chunks[0].range_start.isoformat(), chunks[-1].range_end.isoformat()] if chunks \
        else None


@dataclass(kw_only=True)
class Action:
    kind: ClassVar[str]
    removes: ClassVar[bool] = False  # applied, it removes rows (ops.retention_horizon counts it)
    verbs: ClassVar[tuple[str, str]]  # (dry run, applied), for the one-line summary

    def touched(self) -> tuple[int, int]:
        """(chunks, rows) it removes or compresses."""
        raise NotImplementedError

    @property
    def did_something(self) -> bool:
        return any(self.touched())

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return ("action", *(f.name for f in fields(cls)))

    @classmethod
    def required(cls) -> tuple[str, ...]:
        return ("action", *(f.name for f in fields(cls) if not f.metadata.get("set_only")))

    def as_dict(self) -> dict:
        out: dict[str, Any] = {"action": self.kind}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not UNSET:
                out[f.name] = value
        return out

    def summary(self, dry_run: bool) -> str:
        chunks, rows = self.touched()
        return (self.verbs[0 if dry_run else 1] + (f" {chunks} chunk(s)," if chunks else "")
                + f" {rows:,} rows")

    def detail(self, dry_run: bool) -> list[str]:
        """The lines `workers retention` prints under its job."""
        chunks, rows = self.touched()
        unit = f"{chunks} chunks, " if hasattr(self, "chunks") else ""
        rng = getattr(self, "range", None)
        shown = f" ({rng[0][:10]} .. {rng[1][:10]})" if rng else ""
        out = [f"    {'would ' if dry_run else ''}{self.kind}: {unit}{rows:,} rows older than "
               f"{getattr(self, 'cutoff', '')[:19]}{shown}"]
        held_back = getattr(self, "held_back", None)
        return out + ([f"    held back: {held_back}"] if held_back else [])


@dataclass(kw_only=True)
class DropChunks(Action):
    """TimescaleDB: whole chunks older than the cut-off dropped (ops.retention_drop_chunks)."""

    kind: ClassVar[str] = "drop_chunks"
    removes: ClassVar[bool] = True
    verbs: ClassVar[tuple[str, str]] = ("would drop", "dropped")

    cutoff: str
    chunks: int
    rows: int
    range: list[str] | None
    dropped: list[str] = _set_only()  # the chunks' names, once dropped
    held_back: str = _set_only()  # why the cut-off was moved back, if it was

    def touched(self) -> tuple[int, int]:
        return self.chunks, self.rows


@dataclass(kw_only=True)
class Delete(Action):
    """Plain PostgreSQL: rows older than the cut-off deleted in batches."""

    kind: ClassVar[str] = "delete"
    removes: ClassVar[bool] = True
    verbs: ClassVar[tuple[str, str]] = ("would delete", "deleted")

    cutoff: str
    rows: int
    range: list[str] | None
    deleted: int = _set_only()
    batches: int = _set_only()
    held_back: str = _set_only()

    def touched(self) -> tuple[int, int]:
        return 0, self.rows


@dataclass(kw_only=True)
class Compress(Action):
    """Licensed TimescaleDB: chunks older than the cut-off compressed — or, where the server
    cannot, `skipped` says why (and nothing else is recorded)."""

    kind: ClassVar[str] = "compress"
    verbs: ClassVar[tuple[str, str]] = ("would compress", "compressed")

    cutoff: str = _set_only()  # absent when skipped before one was computed
    skipped: str = _set_only()
    chunks: int = _set_only()
    rows: int = _set_only()
    range: list[str] | None = _set_only()
    bytes: list[float] | None = _set_only()  # [before, after] compression (null: unknown)

    def __post_init__(self) -> None:
        if (self.skipped is UNSET) == (self.chunks is UNSET or self.rows is UNSET):
            raise BadAction("a compress action either is skipped (and says why) or counts "
                            "chunks and rows, not both, not neither")

    def touched(self) -> tuple[int, int]:
        return self.chunks or 0, self.rows or 0

    def summary(self, dry_run: bool) -> str:
        size = self.bytes
        return super().summary(dry_run) + " (licensed TimescaleDB" + (
            f", {size[0] / 1e6:.1f} -> {size[1] / 1e6:.1f} MB)" if size else ")")

    def detail(self, dry_run: bool) -> list[str]:
        return [f"    {self.kind}: {self.skipped}"] if self.skipped else super().detail(dry_run)


KINDS: dict[str, type[Action]] = {c.kind: c for c in (DropChunks, Delete, Compress)}
REMOVING = tuple(k for k, c in KINDS.items() if c.removes)


def from_dict(data: object) -> Action:
    """The action a JSON object records; BadAction naming the kind or keys that are wrong."""
    if not isinstance(data, dict):
        raise BadAction(f"a retention action is a JSON object, not {type(data).__name__}")
    cls = KINDS.get(data.get("action"))  # type: ignore[arg-type]
    if cls is None:
        raise BadAction(f"unknown retention action {data.get('action')!r} "
                        f"(known: {', '.join(KINDS)})")
    unknown = sorted(set(data) - set(cls.keys()))
    missing = [k for k in cls.required() if k not in data]
    if unknown or missing:
        raise BadAction(f"retention action {cls.kind}: "
                        + "; ".join(([f"unknown keys {unknown}"] if unknown else [])
                                    + ([f"missing keys {missing}"] if missing else []))
                        + f" (keys: {', '.join(cls.keys())})")
    return cls(**{k: v for k, v in data.items() if k != "action"})
