"""The CLI's one output function (workers/app/output.py) over the one result protocol
(workers/app/results.py): text or JSON, warnings on stderr, the exit code from the result."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import typer

from workers.app.output import emit, show
from workers.app.results import Each, Message, Note, Result, Shown


@dataclass
class Checked:
    text: str
    ok: bool = True
    changed: bool = False

    def summary(self) -> str:
        return self.text

    def details(self) -> list[str]:
        return [f"  detail of {self.text}"]

    def as_dict(self) -> dict:
        return {"text": self.text, "ok": self.ok}


def test_text_is_the_summary_then_the_details(capsys):
    assert show(Checked("fine")) == 0
    assert capsys.readouterr().out == "fine\n  detail of fine\n"


def test_json_is_the_results_dict_and_a_result_not_ok_exits_1(capsys):
    assert show(Checked("broken", ok=False), json_out=True) == 1
    assert json.loads(capsys.readouterr().out) == {"text": "broken", "ok": False}
    with pytest.raises(typer.Exit) as e:
        emit(Checked("broken", ok=False))
    assert e.value.exit_code == 1
    emit(Checked("fine"))  # exit 0: nothing raised


def test_each_target_prints_its_summary_and_details_in_turn(capsys):
    show(Each([Checked("primary"), Checked("replica")]))
    assert capsys.readouterr().out.splitlines() == [
        "primary", "  detail of primary", "replica", "  detail of replica"]


def test_a_shown_result_prints_its_commands_way_and_warns_on_stderr(capsys):
    r = Shown(Checked("x", ok=False), text=lambda r: [f"cmd: {r.summary()} (1.0 s)"],
              json=lambda r: None, err=lambda r: ["warned"])
    assert r.ok is False and r.summary() == "x"  # the rest is the result's own
    assert show(r) == 1
    out = capsys.readouterr()
    assert (out.out, out.err) == ("cmd: x (1.0 s)\n", "warned\n")
    show(r, json_out=True)  # JSON None: shown as it went, nothing more printed
    assert capsys.readouterr().out == ""


def test_an_exit_code_of_its_own_wins_and_a_table_is_printed_by_rich(capsys):
    from rich.table import Table

    @dataclass
    class Own(Checked):
        exit_code: int = 2

        def lines(self) -> list:
            t = Table("col")
            t.add_row("cell")
            return ["head", t]

    assert show(Own("x")) == 2
    out = capsys.readouterr().out
    assert out.startswith("head\n") and "cell" in out and "col" in out


def test_the_small_results_follow_the_protocol():
    for r in (Note("n"), Message("m"), Each([Note("a")]), Checked("c")):
        assert isinstance(r, Result)
    assert Message("m").lines() == ["m"] and Note("n").summary() == "n"
