"""The one result protocol of the commands, and the results the faces compose.

Every operation returns a result: `summary()` (one paragraph: `workers up` tabulates it),
`as_dict()` (`--json`), `ok` (False: exit 1) and `changed`. A result may add `details()` (extra
lines after the summary), `lines()` (its text output, replacing summary and details),
`warnings()` (lines for stderr), `to_json()` (its JSON, replacing as_dict; None: none) and
`exit_code` (replacing ok). workers/app/output.py prints any of them; nothing here imports more
than the standard library (`python -m workers --help` stays fast).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@runtime_checkable
class Result(Protocol):
    def summary(self) -> str: ...

    def as_dict(self) -> dict: ...


@dataclass
class Note:
    """A stage with nothing to do, and why."""

    text: str
    changed: bool = False
    ok: bool = True

    def summary(self) -> str:
        return self.text

    def as_dict(self) -> dict:
        return {"note": self.text}


@dataclass
class Message:
    """A command whose whole output is one line (`backup --stanza-create`)."""

    text: str
    changed: bool = False
    ok: bool = True

    def summary(self) -> str:
        return self.text

    def lines(self) -> list[str]:
        return [self.text]

    def as_dict(self) -> dict:
        return {"message": self.text}


@dataclass
class Each:
    """The same operation on several targets (servers, files): one result each."""

    results: list = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(r.changed for r in self.results)

    @property
    def ok(self) -> bool:
        return all(getattr(r, "ok", True) for r in self.results)

    def summary(self) -> str:
        return "; ".join(r.summary() for r in self.results)

    def details(self) -> list[str]:
        return [line for r in self.results for line in getattr(r, "details", list)()]

    def lines(self) -> list[str]:
        """Each target's summary, then its details."""
        return [line for r in self.results
                for line in (r.summary(), *getattr(r, "details", list)())]

    def as_dict(self) -> dict:
        return {"results": [r.as_dict() for r in self.results]}


@dataclass
class Shown:
    """A result printed the way its command always printed it: `text(result)` as its lines,
    `json(result)` as its JSON, `err(result)` as its stderr lines; the rest is the result's."""

    result: object
    text: Callable[[object], list] | None = None
    json: Callable[[object], object] | None = None
    err: Callable[[object], list[str]] | None = None

    def __getattr__(self, name: str):
        if name in ("result", "text", "json", "err"):
            raise AttributeError(name)
        return getattr(self.result, name)

    def lines(self) -> list:
        if self.text is not None:
            return self.text(self.result)
        inner = getattr(self.result, "lines", None)
        return inner() if inner else [self.result.summary(),
                                      *getattr(self.result, "details", list)()]

    def to_json(self):
        if self.json is not None:
            return self.json(self.result)
        inner = getattr(self.result, "to_json", None)
        return inner() if inner else self.result.as_dict()

    def warnings(self) -> list[str]:
        return self.err(self.result) if self.err is not None else []


# --- `workers up` ------------------------------------------------------------------------------

class StageFailed(RuntimeError):
    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


@dataclass
class Stage:
    name: str
    did: str = ""
    seconds: float = 0.0
    changed: bool = False
    ok: bool = True
    result: object | None = None


@dataclass
class Run:
    """The main job: its stages, the example behind the report's figure, the report."""

    stages: list[Stage] = field(default_factory=list)
    example: dict | None = None  # the "similar windows" query behind the report's figure
    report: str | None = None

    @property
    def changed(self) -> bool:
        return any(s.changed for s in self.stages)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.stages)

    def result_of(self, name: str):
        return next((s.result for s in self.stages if s.name == name), None)
