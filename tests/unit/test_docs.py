"""Docs that cannot drift: README.md and docs/** are checked against the repository.

* the generated settings reference equals what `make docs` writes now;
* every repository path a doc names (in backticks, code blocks or links) is in a fresh clone
  (`git ls-files`); `../shared/…` paths exist when ../shared is beside the checkout;
* every relative markdown link resolves, and docs/README.md lists every page;
* every `python -m workers X` / `workers X` and `make X` a doc names is a real command / target;
* measured figures (ratios, seconds, megabytes, rows/s) appear only in docs/benchmarks.md;
* the README stays a front door (≤ 200 lines, short table cells) and holds the `make up`
  sample that tests/integration/test_readme_sample.py compares with a real run.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
DOCS = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])
FIGURES_PAGE = REPO / "docs" / "benchmarks.md"
GENERATED = REPO / "docs" / "reference"
SAMPLE_TITLE = "tickstack make up — summary"

# Paths a doc may name that a clone does not hold: made at run time, or installed elsewhere.
RUNTIME_PREFIXES = (".tickstack/", ".venv/", "~/", "$", "/")
EXTENSIONS = (".py", ".sql", ".md", ".sh", ".yml", ".yaml", ".toml", ".env", ".json", ".txt",
              ".cfg", ".ini", "Dockerfile")


def rel(p: Path) -> str:
    return str(p.relative_to(REPO))


@cache
def tracked() -> tuple[frozenset[str], frozenset[str]]:
    """(files, directories) of the repository as a fresh clone has them."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    files = frozenset(f for f in out if (REPO / f).exists())
    dirs = frozenset(str(Path(f).parents[i]) for f in files
                     for i in range(len(Path(f).parents) - 1))
    return files, dirs


def top_level() -> set[str]:
    files, _ = tracked()
    return {f.split("/")[0] for f in files}


# --- what docs say -----------------------------------------------------------------------------

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
SPAN = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def code_of(text: str, *, blocks: bool = True) -> list[str]:
    """Inline code spans, then the lines of fenced blocks."""
    lines = [ln for b in FENCE.findall(text) for ln in b.splitlines()[1:-1]] if blocks else []
    return SPAN.findall(FENCE.sub("", text)) + lines


def path_candidates(text: str) -> set[str]:
    """Tokens of code that look like repository paths: a first segment the repository has at its
    top level, `../shared/…`, or a known extension."""
    tops = top_level()
    spans = set(code_of(text, blocks=False))
    # in prose too: a path under a top-level folder with a file extension
    prose = FENCE.sub("", text)
    out = {m.rstrip(".") for m in re.findall(
        rf"(?<![\w/.-])(?:{'|'.join(map(re.escape, sorted(tops)))})/[\w./-]*\.[a-z]+\b", prose)}
    for chunk in code_of(text):
        for tok in re.split(r"[\s,;=()'\"]+", chunk):
            tok = tok.rstrip(".:").removeprefix("--")
            if not tok or "://" in tok or tok.startswith(RUNTIME_PREFIXES) or "…" in tok:
                continue
            if tok.startswith("../shared"):
                out.add(tok)
                continue
            first = tok.split("/")[0]
            repo_like = ("/" in tok and first in tops) or tok in tops
            # a bare file name counts in prose spans; in a command it may be an output file
            named_file = (tok.endswith(EXTENSIONS) and re.fullmatch(r"[\w.<>*/-]+", tok)
                          and ("/" in tok or chunk in spans))
            if repo_like or named_file:
                out.add(tok)
    return out


def exists_in_clone(tok: str) -> bool:
    files, dirs = tracked()
    pattern = re.sub(r"<[^>]+>", "*", tok).rstrip("/")
    if pattern in files or pattern in dirs:
        return True
    if "/" not in pattern:  # a bare file name: somewhere in the repository
        return any(fnmatch.fnmatch(Path(f).name, pattern) for f in files)
    if "*" in pattern:
        return any(fnmatch.fnmatch(f, pattern) or fnmatch.fnmatch(f, pattern + "/*")
                   for f in files)
    return pattern in files or pattern in dirs


def test_docs_exist_and_the_index_lists_every_page():
    index = (REPO / "docs" / "README.md").read_text()
    linked = {(REPO / "docs" / t.split("#")[0]).resolve() for t in LINK.findall(index)}
    pages = {p.resolve() for p in (REPO / "docs").rglob("*.md")} - {REPO / "docs" / "README.md"}
    missing = sorted(rel(p) for p in pages - linked)
    assert not missing, f"docs/README.md does not list: {missing}"


def test_every_repository_path_a_doc_names_exists():
    bad = []
    for doc in DOCS:
        for tok in sorted(path_candidates(doc.read_text())):
            if tok.startswith("../shared"):
                shared = re.sub(r"<[^>]+>", "*", tok).removeprefix("../shared/").rstrip("/")
                if SHARED.is_dir() and not any(SHARED.glob(shared)):
                    bad.append(f"{rel(doc)}: {tok}")
                continue
            if not exists_in_clone(tok):
                bad.append(f"{rel(doc)}: {tok}")
    assert not bad, "docs name paths a fresh clone does not have:\n" + "\n".join(bad)


def test_the_path_check_itself_catches_a_stale_path():
    text = ("see `workers/db/no_such_module.py` and `sql/999_nothing.sql`, not `workers/core/`;"
            " in prose workers/old_place.py")
    found = path_candidates(text)
    assert {"workers/db/no_such_module.py", "sql/999_nothing.sql", "workers/core/",
            "workers/old_place.py"} <= found
    assert not exists_in_clone("workers/db/no_such_module.py")
    assert exists_in_clone("workers/core/") and exists_in_clone("Pulumi.<stack>.yaml")


def test_every_relative_link_resolves():
    bad = []
    for doc in DOCS:
        for target in LINK.findall(FENCE.sub("", doc.read_text())):
            if "://" in target or target.startswith(("#", "mailto:")):
                continue
            path = target.split("#")[0]
            target_path = (doc.parent / path).resolve()
            if not target_path.exists():
                bad.append(f"{rel(doc)}: {target}")
    assert not bad, "broken links:\n" + "\n".join(bad)


# --- commands and targets ------------------------------------------------------------------

def worker_commands() -> set[str]:
    import typer.main

    from workers.app.cli import app

    return set(typer.main.get_command(app).commands)


def make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):(?!=)", text, re.M))


def named_commands(text: str) -> tuple[set[str], set[str]]:
    workers, make = set(), set()
    for chunk in code_of(text):
        workers |= set(re.findall(r"(?:^|[\s(\"'])(?:-m )?workers ([a-z][\w-]*)", chunk))
        make |= set(re.findall(r"(?:^|[\s(&;])make ([a-z][\w-]*)", chunk))
    return workers, make


def test_every_named_command_and_make_target_exists():
    commands, targets = worker_commands(), make_targets()
    assert {"up", "ingest", "restore"} <= commands and {"up", "test", "docs"} <= targets
    bad = []
    for doc in DOCS:
        workers, make = named_commands(doc.read_text())
        bad += [f"{rel(doc)}: workers {c}" for c in sorted(workers - commands)]
        bad += [f"{rel(doc)}: make {t}" for t in sorted(make - targets)]
    assert not bad, "docs name commands that do not exist:\n" + "\n".join(bad)


def test_the_command_check_itself_catches_a_removed_command():
    workers, make = named_commands("run `python -m workers teleport` then `make deploy-all`")
    assert workers == {"teleport"} and make == {"deploy-all"}


# --- figures come from one place -----------------------------------------------------------

FIGURE = re.compile(
    r"\d+(?:\.\d+)?\s?×"                                   # ratios: 1.26×
    r"|\b\d+(?:\.\d+)?x\b"                                 # 1.1x
    r"|\b\d+\.\d+\s?(?:s|ms|µs|min|MB|GB|kB|KB|%)(?!\w)"     # measured: 37.3 s, 4.8 MB, 0.57 %
    r"|\b\d[\d,]*\s?(?:MB|GB|ms)\b"                        # 208 MB, 833 MB, 4 ms
    r"|rows/s|\bp(?:50|95)\b"                              # throughput, latency percentiles
)


def figures_outside_benchmarks(doc: Path, text: str) -> list[str]:
    text = FENCE.sub(lambda m: "" if SAMPLE_TITLE in m.group(0) else m.group(0), text)
    hits = []
    for n, line in enumerate(text.splitlines(), 1):
        if "TICKSTACK_" in line:  # a setting and its default
            continue
        hits += [f"{rel(doc)}:{n}: {m.group(0)!r}" for m in FIGURE.finditer(line)]
    return hits


def test_measured_figures_live_only_in_benchmarks():
    hits = []
    for doc in DOCS:
        if doc == FIGURES_PAGE or GENERATED in doc.parents:
            continue
        hits += figures_outside_benchmarks(doc, doc.read_text())
    assert not hits, ("measured figures belong in docs/benchmarks.md (with date, machine and "
                      "command); link to it instead:\n" + "\n".join(hits))


def test_the_figure_check_itself_catches_a_retyped_figure():
    doc = REPO / "docs" / "x.md"
    assert len(figures_outside_benchmarks(doc, "backups take 37.3 s, 1.26× the floor")) == 2
    assert figures_outside_benchmarks(doc, "`TICKSTACK_ARCHIVE_PARALLEL` (4), 30 s") == []


def test_benchmarks_page_says_when_where_and_how_each_figure_was_measured():
    text = FIGURES_PAGE.read_text()
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    assert sections, "docs/benchmarks.md has no sections"
    for s in sections:
        name = s.splitlines()[0]
        if not FIGURE.search(s):
            continue
        assert re.search(r"\b20\d\d-\d\d(-\d\d)?\b", s), f"{name}: no date"
        assert re.search(r"cores?\b", s), f"{name}: no machine"
        assert re.search(r"(bench|tests/\w+)/\w+\.py", s), f"{name}: no command"


# --- the generated reference and the front door ---------------------------------------------

def test_settings_reference_is_generated_from_the_models():
    from infra.offline.reference import OUT, render

    assert OUT.read_text() == render(), "docs/reference/settings.md is stale: run `make docs`"


def test_settings_reference_names_every_setting():
    from infra.offline.reference import OUT
    from workers.core.settings import Settings

    text = OUT.read_text()
    names = set(re.findall(r"`(TICKSTACK_[A-Z0-9_]+)`", text))
    assert {"TICKSTACK_PRIMARY_DSN", "TICKSTACK_INGEST_FLUSH_ROWS"} <= names
    assert len(names) >= len(Settings.model_fields) - 1
    assert "`tickstack:workerImageTag`" in text and "`tickstack:schedules.embed`" in text


def readme_sample(text: str) -> str:
    blocks = [b for b in FENCE.findall(text) if SAMPLE_TITLE in b]
    assert len(blocks) == 1, "the README holds one `make up` sample"
    return "\n".join(blocks[0].splitlines()[1:-1])


def test_readme_is_a_front_door():
    text = (REPO / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines (front door: ≤ 200)"
    first_code = next(i for i, ln in enumerate(lines) if ln.startswith("```"))
    assert "make up" in lines[first_code + 1] and "make test" in lines[first_code + 2]
    assert first_code < 10, "the two commands come first"
    long_cells = [c.strip()[:60] for ln in lines if ln.startswith("|")
                  for c in ln.strip("|").split("|") if len(c) > 200]
    assert not long_cells, f"table cells longer than a sentence or two: {long_cells}"
    assert "applied" in readme_sample(text)


def test_every_doc_page_the_code_names_exists():
    """Messages and comments send readers to docs/ pages: those pages must exist."""
    files, _ = tracked()
    bad = []
    for f in sorted(files):
        if not f.endswith((".py", ".sh", ".env", ".yml", ".yaml", "Makefile", ".toml")):
            continue
        if f == "tests/unit/test_docs.py":
            continue
        for page in set(re.findall(r"docs/[\w/.-]+\.md", (REPO / f).read_text())):
            if page not in files:
                bad.append(f"{f}: {page}")
    assert not bad, "code names docs pages that do not exist:\n" + "\n".join(bad)



def test_the_generator_walks_nested_groups_and_aliases():
    """Settings regrouped into sub-models (flat env names kept by aliases, or a nested
    delimiter) still give one row per environment variable."""
    from pydantic import AliasChoices, BaseModel, Field

    from infra.offline.reference import settings_rows, stack_rows

    class Archive(BaseModel):
        parallel: int = Field(4, ge=1, description="Downloads at once.")
        cache: str = Field("x", validation_alias=AliasChoices("tickstack_archive_cache_dir"))

    class Grouped(BaseModel):
        archive: Archive = Archive()
        log_level: str = "info"

    rows = {r[0]: r for r in settings_rows(Grouped, "TICKSTACK_", None)}
    assert set(rows) == {"TICKSTACK_ARCHIVE_PARALLEL", "TICKSTACK_ARCHIVE_CACHE_DIR",
                         "TICKSTACK_LOG_LEVEL"}
    assert rows["TICKSTACK_ARCHIVE_PARALLEL"][1:] == ("int, ≥ 1", "`4`", "Downloads at once.")
    nested = {r[0] for r in settings_rows(Grouped, "TICKSTACK_", "__")}
    assert "TICKSTACK_ARCHIVE__PARALLEL" in nested
    assert [r[0] for r in stack_rows(Grouped)] == ["archive", "archive.parallel",
                                                   "archive.cache", "log_level"]
