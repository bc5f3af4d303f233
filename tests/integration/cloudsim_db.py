"""Run the primary image's Jobs from a rendered stack on this machine (the major upgrade Job).

cloudsim.py runs the worker image's workloads (`python -m workers ...`); this runs containers
of the primary image, whose commands are the image's own scripts. What stands in for what,
besides cloudsim's MAPPING:
* the image's files and environment -> what infra/images/primary/Dockerfile puts there, read
  from the Dockerfile itself (its `COPY` of repository scripts, its `ENV` with the version
  table's build args): the command the Job names must be one the image has;
* the primary's volume (the StatefulSet's claim) -> the local primary's directory that holds
  its data directory; a claim that is not the StatefulSet's fails, as it would bind nothing;
* the pod's emptyDirs -> fresh directories; its user (uid 1000) -> the `postgres` OS user;
* the primary's pgbackrest.conf (pgBackRest on the database host) -> its S3 options replaced
  by the local S3's, the workload's own access key id (its S3 requests are told apart).
"""

from __future__ import annotations

import configparser
import io
import os
import re
import shutil
import subprocess
from pathlib import Path

from infra import configs, versions
from infra.components import database as db
from infra.local.procs import chown_db, db_user, make_db_dir
from tests.conftest import REPO
from tests.dockerfiles import instructions
from tests.integration import cloudsim
from tests.integration.cloudsim import Mapping, Run, Unresolvable, Workload

DOCKERFILE = REPO / "infra" / "images" / "primary" / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE)


def image_env() -> dict[str, str]:
    """The image's ENV, its build args from the version table, PATH ahead of this machine's."""
    v = versions.load()
    args = {"PG_MAJOR": v.pg_major, "PG_PREVIOUS_MAJOR": v.pg_previous_major,
            "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    env: dict[str, str] = {}
    for word, rest in _instructions():
        if word != "ENV":
            continue
        for pair in rest.split():
            k, _, val = pair.partition("=")
            env[k] = re.sub(r"\$\{?([A-Z_]+)\}?", lambda mt: args[mt.group(1)], val)
    return env


def image_commands() -> dict[str, Path]:
    """Command name in the image (a COPY into /usr/local/bin) -> the repository's file."""
    out = {}
    for word, rest in _instructions():
        parts = [p for p in rest.split() if not p.startswith("--")]
        if word == "COPY" and len(parts) == 2 and parts[1].startswith("/usr/local/bin/"):
            out[parts[1].rsplit("/", 1)[1]] = REPO / parts[0]
    return out


def primary_claim(r: cloudsim.Rendered) -> str:
    """The claim the StatefulSet's pod 0 gets from its volume claim template."""
    sts = r.get("StatefulSet", db.NAME)
    [tpl] = sts["spec"]["volumeClaimTemplates"]
    return f"{tpl['metadata']['name']}-{sts['metadata']['name']}-0"


def server_pgbackrest_conf(m: Mapping, text: str, mounts: dict[str, Path], key: str) -> str:
    """The primary's own pgbackrest.conf (pgBackRest on the database host): the cloud's S3 ->
    the local S3 with the workload's access key id; pg1-path must be the volume's data
    directory, the socket and port the local server's."""
    here = configparser.ConfigParser(interpolation=None)
    here.read_string(m.env.pgbackrest_conf_path.read_text())
    conf = configparser.ConfigParser(interpolation=None)
    conf.read_string(m.text(text, mounts))
    g = conf["global"]
    for k in [k for k in g if k.startswith(("repo1-s3", "repo1-storage"))]:
        del g[k]
    for k, v in here["global"].items():
        if k.startswith(("repo1-s3", "repo1-storage")):
            g[k] = v
    g["repo1-s3-key"] = key
    st = conf[configs.STANZA]
    if "pg1-host" in st:
        raise Unresolvable(f"pg1-host {st['pg1-host']!r}: not the database host's file")
    if st.get("pg1-path") != str(m.env.primary.data):
        raise Unresolvable(f"pg1-path {st.get('pg1-path')!r} is not the data directory on the "
                           f"primary's volume ({m.env.primary.data})")
    for k in ("pg1-port", "pg1-socket-path"):
        st[k] = here[configs.STANZA][k]
    out = io.StringIO()
    conf.write(out)
    return out.getvalue()


def run_primary_job(m: Mapping, w: Workload, root: Path, timeout: float = 900) -> Run:
    """The Job's one container: its exact command and env, its volumes materialised (the data
    volume is the local primary's), run as the database OS user with the image's files."""
    [c] = w.pod["spec"]["containers"]
    try:
        argv, env, cwd = _prepare(m, w, c, root)
    except Unresolvable as e:
        return Run(w.name, c["name"], [], None, f"cannot start: {e}")
    u = db_user()
    kw = {"user": u.pw_uid, "group": u.pw_gid, "extra_groups": []} if u else {}
    p = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True,
                       timeout=timeout, **kw)
    return Run(w.name, c["name"], argv, p.returncode, p.stdout + p.stderr)


def _prepare(m: Mapping, w: Workload, c: dict, root: Path) -> tuple[list[str], dict, Path]:
    root = make_db_dir(root / w.name, 0o700)
    volumes = {v["name"]: v for v in w.pod["spec"].get("volumes") or []}
    mounts: dict[str, Path] = {}
    pending: list[tuple[Path, str, bool]] = []
    for vm in c.get("volumeMounts") or []:
        v = volumes.get(vm["name"])
        if v is None:
            raise Unresolvable(f"{w.name}: volume {vm['name']!r} is mounted but not declared")
        if "persistentVolumeClaim" in v:
            claim = v["persistentVolumeClaim"]["claimName"]
            if claim != primary_claim(m.r):
                raise Unresolvable(f"claim {claim!r} is not the primary's "
                                   f"({primary_claim(m.r)})")
            mounts[vm["mountPath"]] = m.env.primary.root
            continue
        d = make_db_dir(root / vm["name"], 0o700)
        mounts[vm["mountPath"]] = d
        files, secret = cloudsim.volume_files(m.r, v)
        pending += [(d / k, val, secret) for k, val in files.items()]
    key = cloudsim.access_key(w)
    for path, value, secret in pending:
        value = (server_pgbackrest_conf(m, value, mounts, key) if path.name == "pgbackrest.conf"
                 else m.text(value, mounts))
        path.write_text(value)
        chown_db(path, 0o600 if secret else 0o644)
    # The image's commands on PATH (a copy the database user can read and run).
    bin_dir = make_db_dir(root / "image-bin", 0o755)
    for name, src in image_commands().items():
        shutil.copyfile(src, bin_dir / name)
        (bin_dir / name).chmod(0o755)
    env = image_env()
    env.update({k: m.text(v, mounts) for k, v in cloudsim.container_env(m.r, c).items()})
    env.update({"PATH": f"{bin_dir}:{env['PATH']}", "HOME": str(root), "LANG": "C.UTF-8",
                "USER": "postgres", "LOGNAME": "postgres",
                # pgBackRest's S3 secret (the cloud's IRSA web identity -> the local S3's key).
                "PGBACKREST_REPO1_S3_KEY_SECRET":
                    m.env.pgbackrest_env()["PGBACKREST_REPO1_S3_KEY_SECRET"]})
    command = list(c.get("command") or [])
    if not command:
        raise Unresolvable(f"{w.name}: no command (the image's entry point is the server's)")
    head = command[0]
    if "/" not in head and not shutil.which(head, path=env["PATH"]):
        raise Unresolvable(f"{w.name}: command {head!r} is not in the image")
    # Paths in the command line are the mounts' (as for env values and files).
    return [m.text(a, mounts) for a in [*command, *(c.get("args") or [])]], env, root
