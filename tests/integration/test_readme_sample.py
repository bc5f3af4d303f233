"""The README's `make up` sample is what `workers up` prints on the real day, on fresh servers.

One run of `workers up` on the project's copy of the day (what `make up` ingests) in an
environment of its own, as a first `make up` meets it: every migration still to apply. The
summary table is compared with the README's sample cell by cell, with what changes from run to
run masked: the time column, backup labels, sizes in MB, WAL segment counts and the dual-write's
batch counts (they follow the machine's load). When it fails, paste the printed table into
README.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import REPO
from tests.unit.test_docs import readme_sample

DAY_ZIP = "BTCUSDT-trades-2019-04-01.zip"
WIDTH = "100"  # the README's sample is printed on a 100-column terminal

MASKS = [
    (re.compile(r"\b\d{8}-\d{6}F(_\d{8}-\d{6}[DI])?\b"), "<label>"),
    (re.compile(r"\b\d+(\.\d+)? MB\b"), "<n> MB"),
    # A compression's "before -> after MB": the uncompressed chunk's size follows dead tuples
    # and free space the load left (42.0-42.9 MB seen on the same day).
    (re.compile(r"\b\d+(\.\d+)? -> "), "<n> -> "),
    (re.compile(r"\b\d+ WAL archived"), "<n> WAL archived"),
    (re.compile(r"replica dual-write batches: [^;|]*"), "replica dual-write batches: <n>"),
    # The version table's, written nowhere else (tests/unit/test_versions.py): X.YY.Z in the README.
    (re.compile(r"TimescaleDB (\d+\.\d+\.\d+|X\.YY\.Z) \("), "TimescaleDB <version> ("),
]


def table_rows(text: str) -> list[tuple[str, str]]:
    """(stage, what it did) of every row of the summary table, wrapped lines joined and masked;
    the time column dropped."""
    rows: list[list[str]] = []
    for line in text.splitlines():
        if not line.startswith("│"):
            continue
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) != 3:
            continue
        stage, what, _time = cells
        if stage or not rows:
            rows.append([stage, what])
        else:
            rows[-1][1] += " " + what
    out = []
    for stage, what in rows:
        what = " ".join(what.split())
        for pattern, repl in MASKS:
            what = pattern.sub(repl, what)
        out.append((stage, what))
    return out


def test_table_rows_masks_what_varies_and_keeps_the_rest():
    a = ("│ backup   │ full 20261207-165824F: 38 MB database, 7.3 MB │  2.5 s │\n"
         "│          │ stored, 1 kept                               │        │\n"
         "│ migrate  │ primary: applied 25                          │  0.6 s │")
    b = a.replace("20261207-165824F", "20270101-000000F").replace("2.5 s", "9.9 s")
    assert table_rows(a) == table_rows(b)
    assert table_rows(a)[1] == ("migrate", "primary: applied 25")
    assert table_rows(a) != table_rows(a.replace("applied 25", "applied 13"))
    c = "│ retention │ applied (compressed 1 chunk(s), 183,355 rows (42.0 -> 4.8 MB)) │ 0.6 s │"
    assert table_rows(c) == table_rows(c.replace("42.0 -> 4.8", "42.9 -> 4.7"))
    assert table_rows(c) != table_rows(c.replace("183,355 rows", "183,354 rows"))


def test_readme_sample_is_what_make_up_prints(own_local_env, shared_data):
    # Exactly what `make up` runs: `eval "$(python -m infra.local env)"`, then `workers up`.
    env = {**os.environ, **own_local_env.env(), "COLUMNS": WIDTH}
    r = subprocess.run([sys.executable, "-m", "workers", "up", str(shared_data / DAY_ZIP)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    start = r.stdout.index("tickstack make up — summary")
    real = r.stdout[r.stdout.rindex("\n", 0, start) + 1:]
    sample = readme_sample((REPO / "README.md").read_text())
    print(real)  # whole, in the captured output: pytest shortens the assertion's message
    assert table_rows(sample) == table_rows(real), (
        "README.md's `make up` sample differs from what `workers up` prints now; "
        "replace it with the table in the captured stdout:\n" + real)
    assert len(table_rows(real)) >= 10
    assert "done: the platform is up to date with this data" in sample
