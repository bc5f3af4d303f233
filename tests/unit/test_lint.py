"""The delivery files: hadolint on the worker image, actionlint on the CI workflows (each shown
to fail on a deliberately broken input, so a pass means something), and what the workflows and
the Dockerfile must say (pinned actions, OIDC only, policy pack, concurrency, non-root image)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from infra import versions
from tests.dockerfiles import instructions

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
WORKFLOWS = REPO / ".github" / "workflows"

DOCKERFILE = REPO / "workers" / "Dockerfile"
PRIMARY_DOCKERFILE = REPO / "infra" / "images" / "primary" / "Dockerfile"


def tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{path} missing: scripts/install_python.sh installs it"
    return str(path)


def run(*cmd: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


# --- hadolint ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, PRIMARY_DOCKERFILE], ids=["worker", "primary"])
def test_hadolint_passes_the_images(dockerfile: Path) -> None:
    r = run(tool("hadolint"), "--no-color", str(dockerfile))
    assert r.returncode == 0, r.stdout + r.stderr


def test_lint_script_hadolints_both_images() -> None:
    text = (REPO / "scripts" / "lint.sh").read_text()
    for f in (DOCKERFILE, PRIMARY_DOCKERFILE):
        assert str(f.relative_to(REPO)) in text


def test_hadolint_fails_a_broken_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nUSER root\n")
    r = run(tool("hadolint"), "--no-color", str(bad))
    assert r.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3002"):
        assert rule in r.stdout


def _instructions(dockerfile: Path = DOCKERFILE) -> list[tuple[str, str]]:
    return instructions(dockerfile)


def test_dockerfile_entrypoint_user_and_stages() -> None:
    from infra.components import k8s as kx
    from infra.components import workers as wk

    ins = _instructions()
    froms = [r for w, r in ins if w == "FROM"]
    assert len(froms) == 2 and all("${WORKER_BASE_IMAGE}" in f for f in froms)  # multi-stage
    # The base image and the PostgreSQL major are build args from the version table (no
    # default here: a version is written only there).
    args = {r for w, r in ins if w == "ARG"}
    assert args == set(versions.BUILD_ARGS["worker"])
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", versions.load().worker_base_image)
    # The entry point is the program's; the workload's command is the pod's args.
    assert [json.loads(r) for w, r in ins if w == "ENTRYPOINT"] == [wk.ENTRYPOINT]
    assert not [r for w, r in ins if w == "CMD"]
    # The RDS CA bundle the replica DSNs verify with is where the program says it is, and
    # pgBackRest (the backup workers') is installed at a pinned version.
    add = [r for w, r in ins if w == "ADD"]
    assert any(r.split()[-1] == wk.RDS_CA_BUNDLE for r in add), add
    runs = " ".join(r for w, r in ins if w == "RUN")
    assert "install_system.sh --profile pgbackrest" in runs
    assert 'grep -qx "PGBACKREST_VERSION=${PGBACKREST_VERSION}"' in runs
    users = [r for w, r in ins if w == "USER"]
    assert users == [f"{kx.WORKER_UID}:{kx.WORKER_UID}"]
    # Only runtime dependencies: base + the workers extra, never Pulumi or dev tooling.
    assert "['optional-dependencies']['workers']" in DOCKERFILE.read_text()
    assert not re.search(r"pulumi|\[dev\]|\[infra\]|\.\[", DOCKERFILE.read_text().split(
        "AS runtime")[0].split("requirements.txt", 1)[1])


def test_dockerignore_allows_only_what_the_image_needs() -> None:
    lines = [x.strip() for x in (REPO / ".dockerignore").read_text().splitlines()
             if x.strip() and not x.startswith("#")]
    assert lines[0] == "*"
    allowed = {x[1:].rstrip("/") for x in lines if x.startswith("!")}
    assert allowed == {"pyproject.toml", "constraints.txt", "workers", "sql",
                       "scripts/versions.env", "scripts/install_system.sh"}
    copied = set()
    for w, r in _instructions():
        if w == "COPY" and not r.startswith("--from"):
            copied |= {x.rstrip("/") for x in r.split()[:-1] if x not in ("./", ".")}
    assert copied <= allowed


def test_primary_image_is_built_from_the_version_table_and_runs_as_the_db_user() -> None:
    from infra.components import k8s as kx

    ins = _instructions(PRIMARY_DOCKERFILE)
    assert [r for w, r in ins if w == "FROM"] == ["${PRIMARY_BASE_IMAGE}"]
    # Every build arg is the table's, without a default; the build checks them against it.
    args = [r for w, r in ins if w == "ARG"]
    assert set(args) == set(versions.BUILD_ARGS["primary"]) and all("=" not in a for a in args)
    runs = " ".join(r for w, r in ins if w == "RUN")
    assert "install_system.sh --profile image" in runs
    assert "disagrees with scripts/versions.env" in runs
    assert [r for w, r in ins if w == "USER"] == [f"{kx.DB_UID}:{kx.DB_UID}"]
    assert f"--uid {kx.DB_UID}" in runs
    assert [json.loads(r) for w, r in ins if w == "ENTRYPOINT"] == [["tickstack-postgres"]]
    # Its own allow-list (BuildKit reads <Dockerfile>.dockerignore): exactly what it copies.
    ignore = PRIMARY_DOCKERFILE.with_name("Dockerfile.dockerignore").read_text().splitlines()
    allowed = {x[1:] for x in ignore if x.startswith("!")}
    copied = set()
    for w, r in ins:
        if w == "COPY":
            copied |= {p for p in r.split()[:-1] if not p.startswith("--")}
    assert allowed == copied and ignore[[x.strip() for x in ignore].index("*")] == "*"


# --- actionlint --------------------------------------------------------------------------------


def test_actionlint_passes_the_workflows() -> None:
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert len(files) >= 3
    r = run(tool("actionlint"), "-no-color", *map(str, files))
    assert r.returncode == 0, r.stdout + r.stderr


def test_actionlint_fails_a_broken_workflow(tmp_path: Path) -> None:
    """In a scratch repository: a copy of a real workflow with three mistakes in it."""
    wf = tmp_path / ".github" / "workflows"
    wf.mkdir(parents=True)
    text = (WORKFLOWS / "deploy.yml").read_text()
    text = text.replace("needs: dev", "needs: staging")  # no such job
    text = text.replace("runs-on: ubuntu-24.04", "runs-on: ubuntu-24.04\n    timeout-minutes: x")
    text = text.replace("          make test\n",
                        "          make test\n      - run: echo ${{ github.sha }\n")
    (wf / "deploy.yml").write_text(text)
    shutil.copy(WORKFLOWS / "pulumi-up.yml", wf / "pulumi-up.yml")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    r = run(tool("actionlint"), "-no-color", cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert '"staging" which does not exist' in r.stdout
    assert "expecting '}'" in r.stdout or "unexpected EOF" in r.stdout
    assert "timeout-minutes" in r.stdout


# --- what the workflows must say -----------------------------------------------------------------


def workflows() -> dict[str, dict]:
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(WORKFLOWS.glob("*.yml"))}


def steps(doc: dict):
    for job in doc["jobs"].values():
        yield from job.get("steps", [])


def test_every_action_is_pinned_to_a_commit() -> None:
    for name, doc in workflows().items():
        for s in steps(doc):
            uses = s.get("uses")
            if uses and not uses.startswith("./"):
                assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", uses), f"{name}: {uses}"


def test_no_stored_cloud_keys_only_oidc() -> None:
    for p in WORKFLOWS.glob("*.yml"):
        text = p.read_text()
        for bad in ("aws-access-key-id", "aws-secret-access-key", "AWS_ACCESS_KEY_ID",
                    "AWS_SECRET_ACCESS_KEY", "PULUMI_ACCESS_TOKEN"):
            assert bad not in text, f"{p.name}: {bad}"
    for name, doc in workflows().items():
        for job_name, job in doc["jobs"].items():
            aws = [s for s in job.get("steps", [])
                   if "configure-aws-credentials" in str(s.get("uses"))]
            for s in aws:
                assert s["with"]["role-to-assume"].startswith("${{ vars."), (name, job_name)
                assert job["permissions"]["id-token"] == "write", (name, job_name)


def _pulumi_steps(doc: dict) -> list[dict]:
    return [s for s in steps(doc) if str(s.get("uses", "")).startswith("pulumi/actions@")
            and s.get("with", {}).get("command")]


def test_pulumi_runs_with_the_policy_pack_and_deploys_never_overlap() -> None:
    wfs = workflows()
    commands = {}
    for name, doc in wfs.items():
        for s in _pulumi_steps(doc):
            assert s["with"]["policyPacks"] == "infra/policy", name
            commands.setdefault(name, set()).add(s["with"]["command"])
    assert commands["pull-request.yml"] == {"preview"}
    assert commands["pulumi-up.yml"] == {"up"}
    assert commands["disaster-recovery.yml"] == {"up"}
    # The preview diff is posted on the pull request, for each stack.
    previews = _pulumi_steps(wfs["pull-request.yml"])
    assert {p["with"]["stack-name"] for p in previews} == {
        "organization/tickstack/dev", "organization/tickstack/prod"}
    assert all(p["with"]["comment-on-pr"] is True for p in previews)
    # One concurrency group per stack for everything that changes it; queued, never cancelled.
    for name in ("pulumi-up.yml", "disaster-recovery.yml"):
        job = next(iter(wfs[name]["jobs"].values()))
        assert job["concurrency"]["group"].startswith("pulumi-${{ inputs.stack }}"), name
        assert job["concurrency"]["cancel-in-progress"] is False
        assert job["environment"] == "${{ inputs.stack }}"


def test_main_deploys_dev_then_prod_and_pull_requests_run_make_test() -> None:
    wfs = workflows()
    deploy = wfs["deploy.yml"]
    on = deploy.get("on", deploy.get(True))
    assert on == {"push": {"branches": ["main"]}}
    jobs = deploy["jobs"]
    assert jobs["dev"]["needs"] == "test" and jobs["dev"]["with"]["stack"] == "dev"
    assert jobs["prod"]["needs"] == "dev" and jobs["prod"]["with"]["stack"] == "prod"
    pr = wfs["pull-request.yml"]
    assert "make test" in str(pr["jobs"]["test"]["steps"])
    diff = str(pr["jobs"]["offline-diff"]["steps"])
    assert "--diff-against" in diff and "infra.render" in diff
    dr = wfs["disaster-recovery.yml"]
    dr_on = dr.get("on", dr.get(True))
    inputs = dr_on["workflow_dispatch"]["inputs"]
    assert {"stack", "target_time", "backup_set"} <= set(inputs)


# --- the state backend: S3 + KMS, OIDC, organization/... ---------------------------------------

LOGIN = "./.github/actions/pulumi-login"


def _jobs_running_pulumi():
    for name, doc in workflows().items():
        for job_name, job in doc["jobs"].items():
            steps = job.get("steps", [])
            if any(str(s.get("uses", "")).startswith("pulumi/actions@")
                   and s.get("with", {}).get("command") for s in steps):
                yield name, job_name, job, steps


def test_every_pulumi_job_logs_in_to_the_s3_backend_after_oidc():
    seen = 0
    for name, job_name, job, steps in _jobs_running_pulumi():
        seen += 1
        where = f"{name}:{job_name}"
        uses = [str(s.get("uses", "")) for s in steps]
        creds = next(i for i, u in enumerate(uses) if "configure-aws-credentials" in u)
        login = uses.index(LOGIN)
        assert creds < login, f"{where}: the backend is AWS's: credentials first"
        assert steps[login]["with"]["backend-url"] == "${{ vars.PULUMI_BACKEND_URL }}", where
        stack = steps[login]["with"]["stack"]
        for i, s in enumerate(steps):
            w = s.get("with", {})
            if str(s.get("uses", "")).startswith("pulumi/actions@") and w.get("command"):
                assert i > login, where
                assert w["cloud-url"] == "${{ vars.PULUMI_BACKEND_URL }}", where
                assert w["stack-name"] == f"organization/tickstack/{stack}", where
            if "run" in s and re.search(r"(^|\n)\s*pulumi ", s["run"]):
                assert i > login, f"{where}: `pulumi` runs before the login: {s['run'][:60]}"
        assert job["permissions"]["id-token"] == "write", where
    assert seen == 4  # deploy (pulumi-up), DR, and the two previews


def test_prod_previews_wait_for_the_prod_environment():
    pr = workflows()["pull-request.yml"]["jobs"]
    assert pr["preview-prod"]["environment"] == "prod"
    assert "environment" not in pr["preview-dev"]
    for job in ("preview-dev", "preview-prod"):
        assert pr[job]["if"] == "github.event.pull_request.head.repo.full_name == " \
                                "github.repository"


def test_stack_files_declare_the_kms_secrets_provider_and_organization_references():
    for stack in ("dev", "prod"):
        doc = yaml.safe_load((REPO / f"Pulumi.{stack}.yaml").read_text())
        assert re.fullmatch(rf"awskms://alias/tickstack-pulumi-{stack}\?region=[a-z0-9-]+",
                            doc["secretsprovider"])
        assert doc["config"]["tickstack:clusterStack"] == f"organization/eks-cluster/{stack}"
        assert "encryptionsalt" not in doc  # no passphrase provider


def _login_script() -> str:
    action = yaml.safe_load((REPO / ".github" / "actions" / "pulumi-login" / "action.yml")
                            .read_text())
    [step] = action["runs"]["steps"]
    return step["run"]


@pytest.mark.parametrize(("url", "code"), [("s3://tickstack-state", 0),
                                           ("https://api.pulumi.com", 2), ("", 2),
                                           ("file:///tmp/state", 2)])
def test_the_login_action_accepts_only_the_s3_backend(tmp_path, url, code):
    """The composite action's script, run for real with a stand-in `pulumi` that records."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls"
    fake = bindir / "pulumi"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    shutil.copy(REPO / "Pulumi.dev.yaml", tmp_path / "Pulumi.dev.yaml")
    import os

    r = subprocess.run(["bash", "-e", "-c", _login_script()], cwd=tmp_path, text=True,
                       capture_output=True, timeout=30,
                       env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}",
                            "BACKEND": url, "STACK": "dev"})
    assert r.returncode == code, r.stdout + r.stderr
    if code == 0:
        assert calls.read_text().splitlines() == [f"login {url}",
                                                  "stack select organization/tickstack/dev"]
    else:
        assert not calls.exists() and "s3://" in r.stdout


def test_first_deploy_targets_the_storage_component_and_everything_under_it():
    """The image repository must exist before the image: the first deploy targets the storage
    component's URN (its children do not exist yet) and its children by wildcard; what those
    children depend on is inside the component, so the targeted update is complete."""
    import fnmatch

    from tests.unit.pulumi_stacks import graph

    job = workflows()["pulumi-up.yml"]["jobs"]["up"]
    [step] = [s for s in job["steps"] if "--target" in str(s.get("run", ""))]
    text = step["run"].replace("\\\n", " ")
    targets = [t.replace("$STACK", "dev").replace("\\$", "$")
               for t in re.findall(r'--target "([^"]+)"', text)]
    storage = re.search(r'storage="([^"]+)"', text).group(1).replace("$STACK", "dev")
    targets = [storage if t == "$storage" else t for t in targets]
    g = graph("dev")

    def urn(u: str) -> str:
        # The engine leaves the root stack out of a URN's type chain; the mocks keep it.
        return u.replace("::pulumi:pulumi:Stack$", "::")

    [component] = [r for r in g.resources if r.type == "tickstack:storage:Storage"]
    assert urn(component.urn) in targets
    pattern = [t for t in targets if t.endswith("$**")][0]
    matched = {r.urn for r in g.resources
               if fnmatch.fnmatchcase(urn(r.urn), pattern.replace("**", "*"))}
    children = {r.urn for r in g.resources if r.parent == component.urn}
    assert matched == children
    assert any(r.type == "aws:ecr/repository:Repository" for r in g.resources
               if r.urn in matched)
    inside = children | {component.urn}
    for r in g.resources:
        if r.urn in children:
            assert set(r.dependencies) <= inside, r.name


def test_deploys_tag_by_commit_and_deploy_by_digest_and_prod_promotes_devs_image():
    wfs = workflows()
    up = wfs["pulumi-up.yml"]["jobs"]["up"]
    [image] = [s for s in up["steps"] if s.get("id") == "image"]
    run = image["run"]
    assert 'tag="$GITHUB_SHA"' in run
    assert "pulumi config set tickstack:workerImageDigest" in run
    assert "skopeo copy --preserve-digests" in run
    deploy = wfs["deploy.yml"]["jobs"]
    assert deploy["prod"]["with"]["image-from"] == "${{ needs.dev.outputs.worker-image }}"
