"""`workers up` — the main job behind `make up` — on real servers: every stage, the summary, the
HTML report opened in headless Chromium, idempotence, and a failing stage named without a
traceback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from infra.local.procs import db_user
from tests.integration.browser import chromium
from tests.integration.pipeline import Stack

DAY = "BTCUSDT-trades-2019-04-01"
FIRST_HOURS_MS = 1_554_076_800_000 + 4 * 3_600_000  # 2019-04-01 00:00 .. 04:00 UTC


@pytest.fixture(scope="module")
def stack(local_env):
    s = Stack(local_env)
    yield s
    s.close()


@pytest.fixture(scope="module")
def morning(shared_data, tmp_path_factory) -> Path:
    """The first four hours of the real day: 48 windows, enough for labels of the next hour."""
    p = tmp_path_factory.mktemp("data") / f"{DAY}.csv"
    with (shared_data / f"{DAY}.csv").open() as src, p.open("w") as out:
        for line in src:
            if int(line.split(",")[4]) < FIRST_HOURS_MS:
                out.write(line)
    return p


def up(stack: Stack, report_dir: Path, *paths: str):
    env = {**stack.cli_env(), "TICKSTACK_PGBACKREST_CONFIG": str(stack.env.pgbackrest_conf_path),
           "TICKSTACK_REPORT_DIR": str(report_dir), "COLUMNS": "200"}
    if db_user() is not None:
        env["TICKSTACK_PGBACKREST_OS_USER"] = db_user().pw_name
    import subprocess
    import sys

    from tests.conftest import REPO

    return subprocess.run([sys.executable, "-m", "workers", "up", *paths], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


def stage_line(out: str, name: str) -> str:
    lines = [ln for ln in out.splitlines()
             if re.match(rf"(done|same|FAILED) {re.escape(name)} \(\d+\.\d s\): ", ln)]
    assert lines, f"no progress line for stage {name!r} in:\n{out}"
    return lines[0]


def test_up_runs_every_stage_then_changes_nothing(stack, morning, tmp_path):
    report = tmp_path / "report"
    r = up(stack, report, str(morning))
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    out = r.stdout
    for name in ("migrate", "ingest", "embed", "retention (dry-run)", "retention", "backup",
                 "archive check", "similar"):
        assert stage_line(out, name).startswith(("done", "same")), name
    assert stage_line(out, "ingest").startswith("done")
    assert "rows read" in stage_line(out, "ingest")
    assert stage_line(out, "backup").startswith("done") or "up to date" in out
    assert "healthy" in stage_line(out, "archive check")
    # Licensed TimescaleDB: the shipped job (compress_after 30 days) compresses the 2019 chunk,
    # and the summary and the report say so, with what it saved.
    flat = " ".join(out.split())
    assert re.search(r"btc_ticks: applied \(compressed 1 chunk\(s\), [\d,]+ rows \(licensed "
                     r"TimescaleDB, [\d.]+ -> [\d.]+ MB\)\)", flat), flat
    assert "licensed TimescaleDB, " in (report / "index.html").read_text()
    assert "tickstack make up — summary" in out and "done: the platform is up to date" in out
    before = stack.checksums()
    assert len(before) == 48

    again = up(stack, report, str(morning))
    assert again.returncode == 0, (again.stdout[-3000:], again.stderr[-3000:])
    out2 = again.stdout
    assert "nothing changed: the platform was already up to date" in out2
    for name in ("migrate", "ingest", "embed", "retention", "backup"):
        assert stage_line(out2, name).startswith("same"), (name, out2)
    assert "up to date: full backup" in stage_line(out2, "backup")
    assert stack.checksums() == before

    # The report renders, figures included, in a real browser.
    index = report / "index.html"
    assert index.is_file()
    with chromium() as page:
        page.open(index.as_uri())
        imgs = page.evaluate("Array.from(document.images).map(i => [i.getAttribute('src'), "
                             "i.complete, i.naturalWidth, i.naturalHeight])")
        rows = page.evaluate("document.querySelectorAll('tbody tr').length")
        status = page.evaluate("document.querySelector('p strong').textContent")
    assert [src for src, *_ in imgs] == ["ohlcv.png", "quarantine.png", "similar.png",
                                         "timings.png"]
    for src, complete, w, h in imgs:
        assert complete and w > 300 and h > 150, (src, w, h)
    assert rows == len([ln for ln in out2.splitlines() if ln.startswith(("same ", "done "))])
    assert status == "nothing changed (already up to date)"


def test_up_stops_at_the_failing_stage_with_its_reason(stack, tmp_path):
    bad = tmp_path / "BTCUSDT-trades-2019-04-02.csv"
    bad.write_text("this is not, a trade file\n")
    r = up(stack, tmp_path / "report", str(bad))
    assert r.returncode == 1
    assert "make up stopped at ingest:" in r.stdout
    assert bad.name in r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    assert stage_line(r.stdout, "ingest").startswith("FAILED")
    # Nothing after the failure ran; the report says where it stopped.
    assert " embed (" not in r.stdout
    assert "failed at ingest" in (tmp_path / "report" / "index.html").read_text()
