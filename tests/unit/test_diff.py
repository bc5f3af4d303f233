"""Offline preview diff (infra/diff.py, `python -m infra.render --diff-against REF`).

The graph comparison and its Markdown on small hand-made graphs, then the real thing: a
temporary git repository holding this repository's Pulumi program, two commits of changes
(config and program code) plus an uncommitted one, diffed the way CI does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infra.offline import diff

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def res(type_: str, name: str, **inputs) -> dict:
    return {"type": type_, "name": name, "parent": None, "custom": True, "protect": False,
            "dependsOn": [], "inputs": inputs}


def graph(*resources: dict, **outputs) -> dict:
    return {"project": "tickstack", "stack": "dev", "resources": list(resources),
            "outputs": outputs}


BUCKET = "aws:s3/bucket:Bucket"
ROLE = "aws:iam/role:Role"
CM = "kubernetes:core/v1:ConfigMap"
SECRET = "kubernetes:core/v1:Secret"


def test_added_removed_changed_and_outputs() -> None:
    before = graph(res(BUCKET, "a", forceDestroy=False), res(BUCKET, "gone"),
                   res(CM, "env", data={"X": "1", "Y": "2"}), landingBucket="a-1")
    after = graph(res(BUCKET, "a", forceDestroy=False), res(BUCKET, "new", forceDestroy=True),
                  res(CM, "env", data={"X": "1", "Y": "3", "Z": "4"}), landingBucket="a-2")
    d = diff.diff_graphs(before, after)
    assert [r["name"] for r in d.added] == ["new"]
    assert [r["name"] for r in d.removed] == ["gone"]
    assert [(c.type, c.name) for c in d.changed] == [(CM, "env")]
    assert [(c.path, c.before, c.after) for c in d.changed[0].changes] == [
        ("data.Y", "2", "3"), ("data.Z", diff.MISSING, "4")]
    md = diff.to_markdown(d, before_label="main")
    assert "**1 to add, 1 to change, 0 to replace, 1 to delete** (3 → 3 resources)" in md
    assert f"- `{BUCKET}` **new**" in md and f"- `{BUCKET}` **gone**" in md
    assert "| `data.Y` | `2` | `3` |" in md
    assert "| `data.Z` | — | `4` |" in md
    assert "| `landingBucket` | `a-1` | `a-2` |" in md
    assert md.startswith("<!-- tickstack-infra-diff:dev -->")


STS = "kubernetes:apps/v1:StatefulSet"
JOB = "kubernetes:batch/v1:Job"


def test_changes_the_engine_makes_by_replacing_say_replace_and_why() -> None:
    before = graph(res(STS, "db", spec={"serviceName": "a", "replicas": 1}),
                   res(BUCKET, "landing", bucket="l-1"),
                   res(JOB, "migrate", spec={"template": {"env": "x"}}),
                   res(CM, "env", data={"X": "1"}))
    after = graph(res(STS, "db", spec={"serviceName": "b", "replicas": 1}),
                  res(BUCKET, "landing", bucket="l-2"),
                  res(JOB, "migrate", spec={"template": {"env": "y"}}),
                  res(CM, "env", data={"X": "2"}))
    d = diff.diff_graphs(before, after)
    by = {c.name: c for c in d.changed}
    assert by["db"].replace_because == [
        "spec.serviceName: Kubernetes cannot change a StatefulSet's selector, serviceName, "
        "podManagementPolicy or volumeClaimTemplates in place"]
    assert by["landing"].replaces and by["migrate"].replaces
    assert not by["env"].replaces  # a ConfigMap's data is updated in place
    md = diff.to_markdown(d, before_label="main")
    assert "**4 to add, 0 to change".replace("4 to add, 0", "0 to add, 4") in md
    assert "3 to replace" in md
    assert f"**`{STS}` db** — **replace**" in md
    assert "- replaced because `spec.serviceName` changed: Kubernetes cannot" in md
    assert f"**`{CM}` env**\n" in md


def test_replacing_a_protected_resource_is_flagged_and_ignored_changes_are_not_applied() -> None:
    def sts(protect: bool, claim: str, replicas: int, ignore: bool = True) -> dict:
        r = res(STS, "db", spec={"volumeClaimTemplates": [{"spec": {"size": claim}}],
                                 "serviceName": "h", "replicas": replicas})
        r["protect"] = protect
        if ignore:
            r["ignoreChanges"] = ["spec.volumeClaimTemplates"]
        return r

    # A claim template change under ignoreChanges: not applied, so no replacement.
    d = diff.diff_graphs(graph(sts(True, "20Gi", 1)), graph(sts(True, "40Gi", 2)))
    (c,) = d.changed
    assert not c.replaces and c.ignored == ["spec.volumeClaimTemplates[0].spec.size"]
    md = diff.to_markdown(d, before_label="main")
    assert "not applied (ignoreChanges): `spec.volumeClaimTemplates[0].spec.size`" in md
    assert "refuse" not in md
    # Without ignoreChanges the same change replaces, and protect makes the engine refuse.
    d = diff.diff_graphs(graph(sts(True, "20Gi", 1, False)), graph(sts(True, "40Gi", 1, False)))
    md = diff.to_markdown(d, before_label="main")
    assert "— **replace**  ⚠️ protected: refused" in md
    assert "The engine will refuse this update" in md


def test_same_graph_says_no_changes() -> None:
    g = graph(res(BUCKET, "a", forceDestroy=False))
    d = diff.diff_graphs(g, json.loads(json.dumps(g)))
    assert d.empty
    assert "**No changes.**" in diff.to_markdown(d, before_label="main")


def test_secrets_stay_masked() -> None:
    """Both sides come from the render, which masks secrets: a changed secret shows as no
    change, and a newly added one only as [secret]."""
    before = graph(res(SECRET, "dsn", stringData={"DSN": "[secret]"}))
    after = graph(res(SECRET, "dsn", stringData={"DSN": "[secret]", "NEW": "[secret]"}))
    md = diff.to_markdown(diff.diff_graphs(before, after), before_label="main")
    assert "| `stringData.NEW` | — | `[secret]` |" in md
    assert "stringData.DSN" not in md


def test_policy_documents_diff_by_statement() -> None:
    def trust(sub: str) -> str:
        return json.dumps({"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {"StringEquals": {"oidc:sub": sub}}}]})

    d = diff.diff_graphs(
        graph(res(ROLE, "r", assumeRolePolicy=trust("system:serviceaccount:ns:a"))),
        graph(res(ROLE, "r", assumeRolePolicy=trust("system:serviceaccount:ns:b"))))
    (c,) = d.changed[0].changes
    assert c.path == "assumeRolePolicy(json).Statement[0].Condition.StringEquals.oidc:sub"
    assert (c.before, c.after) == ("system:serviceaccount:ns:a", "system:serviceaccount:ns:b")


def test_multiline_values_show_as_a_unified_diff_and_cells_are_escaped() -> None:
    d = diff.diff_graphs(
        graph(res(CM, "pg", data={"postgresql.conf": "a = 1\nb = 2\n", "k": "x|y"})),
        graph(res(CM, "pg", data={"postgresql.conf": "a = 1\nb = 3\n", "k": "x|z"})))
    md = diff.to_markdown(d, before_label="main")
    assert "```diff\n@@" in md and "-b = 2\n+b = 3" in md
    assert "| `data.k` | `x\\|y` | `x\\|z` |" in md


# --- two real commits ------------------------------------------------------------------------


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


@pytest.fixture(scope="module")
def program_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This repository's program in a new git repository:
    commit 1: dev with a disaster-recovery restore configured;
    commit 2: the restore removed again, the embed schedule changed;
    working tree (uncommitted): the program declares one more resource."""
    root = tmp_path_factory.mktemp("diff-repo")
    shutil.copytree(REPO / "infra", root / "infra",
                    ignore=shutil.ignore_patterns("__pycache__", "local"))
    for f in ("Pulumi.yaml", "Pulumi.dev.yaml", "Pulumi.prod.yaml", "scripts/versions.env"):
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / f, root / f)
    dev = root / "Pulumi.dev.yaml"
    _replace(dev, "  # tickstack:restore:\n  #   targetTime: \"2025-03-01T12:00:00Z\"\n",
             "  tickstack:restore:\n    targetTime: \"2025-03-01T12:00:00Z\"\n")
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "dev: DR rebuild")
    _replace(dev, "  tickstack:restore:\n    targetTime: \"2025-03-01T12:00:00Z\"\n",
             "  # tickstack:restore:\n  #   targetTime: \"2025-03-01T12:00:00Z\"\n")
    _replace(dev, 'embed: "*/5 * * * *"', 'embed: "*/10 * * * *"')
    _git(root, "commit", "-q", "-am", "dev: back to normal; embed every 10 minutes")
    _replace(root / "infra" / "program.py", "    return {\n        \"landingBucket\"",
             "    import pulumi_random\n"
             "    pulumi_random.RandomPassword(\"extra-token\", length=24, special=False)\n"
             "    return {\n        \"landingBucket\"")
    return root


def test_diff_of_two_commits_and_the_working_tree(program_repo: Path) -> None:
    """The CLI, as CI runs it: REF = the commit before last; now = the working tree."""
    # The program reads the workers' market registry (infra/stack_config.py): this checkout's.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(program_repo), str(REPO)])}
    r = subprocess.run([sys.executable, "-m", "infra.render", "--stack", "dev",
                        "--diff-against", "HEAD~1"], cwd=program_repo, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    md = r.stdout
    # Added by the uncommitted program change.
    assert "#### ➕ Added" in md
    assert "- `random:index/randomPassword:RandomPassword` **extra-token**" in md
    # Removed with the restore config: the landing-replay Job.
    assert "#### ➖ Removed" in md
    assert "- `kubernetes:batch/v1:Job` **workers-restore**" in md
    # Changed: the schedule (config), the primary (its restore init container is gone).
    assert "**`kubernetes:batch/v1:CronJob` workers-embed**" in md
    assert "| `spec.schedule` | `*/5 * * * *` | `*/10 * * * *` |" in md
    assert "**`kubernetes:apps/v1:StatefulSet` primary-statefulset**" in md
    assert "spec.template.spec.initContainers" in md
    assert "| `restoreTarget` | `2025-03-01T12:00:00+00:00` | `` |" in md
    assert "- `kubernetes:core/v1:Secret` **workers-dsn-restore**" in md
    # The restore target is in the migrate Job's pod: the rebuild's end replaces the Job.
    assert "**`kubernetes:batch/v1:Job` workers-migrate** — **replace**" in md
    assert "replaced because `spec.template" in md
    n_before = len(json.loads(subprocess.run(
        [sys.executable, "-m", "infra.render", "--stack", "dev"], cwd=program_repo, env=env,
        capture_output=True, text=True, timeout=300, check=True).stdout)["resources"])
    # The replay Job, its DSN Secret, and its own identity (service account, IRSA role, policy).
    assert "- `aws:iam/role:Role` **access-restore**" in md
    assert f"5 to delete** ({n_before + 4} → {n_before} resources)" in md
    # Secrets never leak: the generated passwords' values are not in the diff.
    from infra.offline.mocking import mock_password

    assert mock_password("extra-token", 24) not in md


def test_diff_against_head_shows_only_the_uncommitted_change(program_repo: Path) -> None:
    md = diff.diff_against("HEAD", "dev", repo=program_repo, root=program_repo)
    assert "**1 to add, 0 to change, 0 to replace, 0 to delete**" in md
    assert "**extra-token**" in md


def test_bad_ref_is_a_usage_error(program_repo: Path) -> None:
    # The program reads the workers' market registry (infra/stack_config.py): this checkout's.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(program_repo), str(REPO)])}
    r = subprocess.run([sys.executable, "-m", "infra.render", "--stack", "dev",
                        "--diff-against", "no-such-ref"], cwd=program_repo, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "no-such-ref" in r.stderr or "rev-parse" in r.stderr
