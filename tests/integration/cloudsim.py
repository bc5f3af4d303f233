"""Run a rendered stack's workloads for real, on a local environment standing in for the cloud.

Mocks accept anything; this does not. From the graph the Pulumi program renders under mocks
(infra/offline/mocking.py) it takes every Job, CronJob and Deployment container and runs its
exact `command` + `args`, with the environment Kubernetes would give it — `env` values,
`valueFrom` references and `envFrom` Secrets/ConfigMaps, resolved from the rendered objects
(a reference to a missing object or key fails, as the kubelet's CreateContainerConfigError
does) — and its volumes materialised from the rendered ConfigMaps and Secrets.

The servers are bootstrapped from the render too, as the cloud's would be: the primary as its
image's entry point does from the StatefulSet's env (the superuser's password from the Secret
file POSTGRES_PASSWORD_FILE names, a POSTGRES_DB if one is set — none is: `workers migrate`
creates its database), the replica as RDS does from the instance's inputs (master user,
password, db_name). Nothing else is created: a DSN naming a database nobody creates fails.

What stands in for what (MAPPING below says it once):
* in-cluster and AWS host names -> the local servers on 127.0.0.1 (their ports);
* S3 (AWS endpoint, IRSA) -> the local S3 (moto; pgBackRest through the TLS terminator);
* certificates the stack's CA issues (placeholders under mocks) -> the local CA's;
* files in the image (Amazon's RDS CA bundle) -> the local CA;
* mount paths -> directories holding the volumes' rendered contents;
* the exchange's websocket -> a local replay server; the pod's own network -> loopback.
"""

from __future__ import annotations

import configparser
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from infra import configs
from infra.components import database as db
from infra.components import workers as wk
from infra.local.env import LocalEnv
from infra.offline.graph import Graph
from infra.offline.mocking import mock_pem
from tests.conftest import REPO

WORKLOAD_KINDS = {"kubernetes:batch/v1:Job": "Job", "kubernetes:batch/v1:CronJob": "CronJob",
                  "kubernetes:apps/v1:Deployment": "Deployment"}


class Unresolvable(RuntimeError):
    """The pod could not even start: a reference to a missing object, key or volume."""


@dataclass
class Workload:
    kind: str  # Job | CronJob | Deployment
    name: str  # the resource's name, e.g. workers-migrate
    pod: dict  # the pod template (plain)

    @property
    def containers(self) -> list[dict]:
        return list(self.pod["spec"].get("initContainers") or []) + list(
            self.pod["spec"]["containers"])


@dataclass
class Rendered:
    """A stack's rendered objects, plain (secrets unwrapped), keyed by (kind, metadata.name)."""

    stack: str
    namespace: str
    objects: dict[tuple[str, str], dict]
    workloads: dict[str, Workload]
    rds: dict
    outputs: dict

    def get(self, kind: str, name: str) -> dict:
        try:
            return self.objects[(kind, name)]
        except KeyError:
            raise Unresolvable(f"{kind} {name!r} does not exist in the render") from None


def rendered(graph: Graph) -> Rendered:
    objects: dict[tuple[str, str], dict] = {}
    workloads: dict[str, Workload] = {}
    for r in graph.k8s_objects():
        m = graph.manifest(r)
        name = (m.get("metadata") or {}).get("name")
        if name:
            objects[(m["kind"], name)] = m
        if r.type in WORKLOAD_KINDS:
            spec = m["spec"]
            pod = (spec["jobTemplate"]["spec"]["template"] if r.type.endswith("CronJob")
                   else spec["template"])
            workloads[r.name] = Workload(WORKLOAD_KINDS[r.type], r.name, pod)
    rds = graph.get("aws:rds/instance:Instance", "replica-db").plain
    ns = graph.get("kubernetes:core/v1:Namespace", "cluster-namespace").plain["metadata"]["name"]
    return Rendered(graph.stack, ns, objects, workloads, rds, dict(graph.outputs))


def volume_files(r: Rendered, v: dict) -> tuple[dict[str, str], bool]:
    """A ConfigMap or Secret volume's files (name -> content) and whether they are secret;
    ({}, False) for any other volume."""
    if "configMap" in v:
        return _data(r.get("ConfigMap", v["configMap"]["name"])), False
    if "secret" in v:
        return _data(r.get("Secret", v["secret"]["secretName"])), True
    return {}, False


def _data(obj: dict) -> dict[str, str]:
    import base64

    out = dict(obj.get("data") or {}) if obj["kind"] == "ConfigMap" else {
        k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
    out.update(obj.get("stringData") or {})
    return out


def container_env(r: Rendered, c: dict) -> dict[str, str]:
    """The environment the kubelet gives the container (envFrom, then env)."""
    env: dict[str, str] = {}
    for src in c.get("envFrom") or []:
        if "configMapRef" in src:
            env.update(_data(r.get("ConfigMap", src["configMapRef"]["name"])))
        elif "secretRef" in src:
            env.update(_data(r.get("Secret", src["secretRef"]["name"])))
    for e in c.get("env") or []:
        if "value" in e:
            env[e["name"]] = e["value"]
            continue
        ref = e.get("valueFrom") or {}
        for kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
            if key in ref:
                data = _data(r.get(kind, ref[key]["name"]))
                if ref[key]["key"] not in data:
                    raise Unresolvable(f"env {e['name']}: {kind} {ref[key]['name']!r} has no "
                                       f"key {ref[key]['key']!r}")
                env[e["name"]] = data[ref[key]["key"]]
        if "fieldRef" in ref:  # the downward API: here the pod is this machine's loopback
            fields = {"status.podIP": "127.0.0.1", "metadata.name": "sim-pod"}
            if ref["fieldRef"]["fieldPath"] not in fields:
                raise Unresolvable(f"env {e['name']}: field {ref['fieldRef']['fieldPath']}")
            env[e["name"]] = fields[ref["fieldRef"]["fieldPath"]]
    return env


def mounted_file(r: Rendered, pod: dict, c: dict, path: str) -> str:
    """What the container reads at `path` from its ConfigMap/Secret volumes; a path no volume
    holds fails as the program inside would."""
    vols = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    for m in c.get("volumeMounts") or []:
        if not path.startswith(m["mountPath"].rstrip("/") + "/"):
            continue
        v = vols.get(m["name"])
        if v is None:
            raise Unresolvable(f"volume {m['name']!r} is mounted but not declared")
        key = path[len(m["mountPath"].rstrip("/")) + 1:]
        if "secret" in v:
            kind, name = "Secret", v["secret"]["secretName"]
        elif "configMap" in v:
            kind, name = "ConfigMap", v["configMap"]["name"]
        else:
            continue
        data = _data(r.get(kind, name))
        if key not in data:
            raise Unresolvable(f"{path}: {kind} {name!r} has no key {key!r}")
        return data[key]
    raise Unresolvable(f"{path}: no volume of container {c['name']!r} holds it")


# --- the local stand-in for the cloud ---------------------------------------------------------


def primary_boot_env(r: Rendered) -> dict[str, str]:
    """What the primary image's entry point sees: the StatefulSet container's env, with the
    superuser's password read from the Secret file POSTGRES_PASSWORD_FILE names."""
    sts = r.get("StatefulSet", db.NAME)
    [pg] = [c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == db.CONTAINER]
    boot = container_env(r, pg)
    if boot.get("POSTGRES_PASSWORD_FILE"):
        boot["POSTGRES_PASSWORD"] = mounted_file(
            r, sts["spec"]["template"], pg, boot["POSTGRES_PASSWORD_FILE"]).splitlines()[0]
    if boot.get("POSTGRES_USER", configs.PRIMARY_ADMIN) != configs.PRIMARY_ADMIN:
        raise Unresolvable("the primary image's superuser is postgres")
    if not boot.get("POSTGRES_PASSWORD"):
        raise Unresolvable("the primary's container has no POSTGRES_PASSWORD(_FILE): the "
                           "image's entry point refuses to initialise")
    return boot


def bootstrap(graph: Graph, state: Path) -> tuple[LocalEnv, Rendered]:
    """A local environment bootstrapped as the cloud's servers would be from this render."""
    r = rendered(graph)
    boot = primary_boot_env(r)
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o755)
    secrets = {"postgres_password": boot["POSTGRES_PASSWORD"],
               configs.REPLICA_ADMIN: r.rds["password"]}
    secrets.update({u: os.urandom(12).hex() for u in configs.WORKER_LOGINS.values()})
    (state / "secrets.json").write_text(json.dumps(secrets))
    os.chmod(state / "secrets.json", 0o600)
    env = LocalEnv(state, landing_bucket=r.outputs["landingBucket"],
                   backup_bucket=r.outputs["backupBucket"])
    env.up()
    env.bootstrap_replica(r.rds["username"], r.rds["password"], r.rds["dbName"])
    if boot.get("POSTGRES_DB"):  # what the image's entry point does with it
        env.primary.psql(f'CREATE DATABASE "{boot["POSTGRES_DB"]}"')
    return env, r


@dataclass
class Mapping:
    """What stands in for what (module docstring), for one rendered stack."""

    env: LocalEnv
    r: Rendered
    replay_url: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def hosts(self) -> dict[str, tuple[str, int]]:
        """host:port in the render -> host:port here."""
        primary = self.r.outputs["primaryHost"]
        return {f"{primary}:{db.PORT}": ("127.0.0.1", self.env.primary.port),
                f"{self.r.outputs['replicaAddress']}:5432": ("127.0.0.1", self.env.replica.port)}

    def files(self) -> dict[str, str]:
        """Files of the image -> local files."""
        return {wk.RDS_CA_BUNDLE: str(self.env.tls.ca)}

    def pems(self) -> dict[str, str]:
        """What the stack's CA issues -> what the local CA issued."""
        ca, client = self.env.tls.ca, self.env.tls.client()
        return {mock_pem("CERTIFICATE", "primary-ca"): ca.read_text(),
                mock_pem("CERTIFICATE", "primary-pgbackrest-client-cert"):
                    Path(client.cert).read_text(),
                mock_pem("PRIVATE KEY", "primary-pgbackrest-client-key"):
                    Path(client.key).read_text()}

    def text(self, value: str, mounts: dict[str, Path]) -> str:
        for cloud, (host, port) in self.hosts().items():
            value = value.replace(f"@{cloud}/", f"@{host}:{port}/")
        files = self.files()
        for cloud in files:  # held apart from the mount mapping, put in last
            value = value.replace(cloud, f"\0{cloud}\0")
        if mounts:  # one pass, longest mount first: a local directory is never re-mapped
            import re

            rx = re.compile("|".join(re.escape(p) + r"(?=/|$|[\s'\"&])"
                                     for p in sorted(mounts, key=len, reverse=True)))
            value = rx.sub(lambda mt: str(mounts[mt.group(0)]), value)
        for cloud, local in files.items():
            value = value.replace(f"\0{cloud}\0", local)
        return value

    def pgbackrest_conf(self, text: str, mounts: dict[str, Path], key: str = "") -> str:
        """The backup workers' pgbackrest.conf: the cloud's S3 -> the local S3 (its repo1-*
        options; `key`: the workload's own access key id), the primary's TLS server and paths
        -> the local ones."""
        here = configparser.ConfigParser(interpolation=None)
        here.read_string(self.env.pgbackrest_conf_path.read_text())
        conf = configparser.ConfigParser(interpolation=None)
        conf.read_string(self.text(text, mounts))
        g = conf["global"]
        for k in [k for k in g if k.startswith("repo1-s3") or k.startswith("repo1-storage")]:
            del g[k]
        for k, v in here["global"].items():
            if k.startswith(("repo1-s3", "repo1-storage")):
                g[k] = v
        if key:
            g["repo1-s3-key"] = key
        st = conf[configs.STANZA]
        if st.get("pg1-host") != self.r.outputs["primaryHost"]:
            raise Unresolvable(f"pg1-host {st.get('pg1-host')!r} is not the primary's Service")
        if st.get("pg1-host-port") != str(db.PGBACKREST_PORT):
            raise Unresolvable(f"pg1-host-port {st.get('pg1-host-port')!r} is not pgBackRest's")
        st["pg1-host"] = "localhost"  # the local server certificate's name
        st["pg1-host-port"] = str(self.env.ports["pgbackrest"])
        for k in ("pg1-path", "pg1-port", "pg1-socket-path"):
            st[k] = here[configs.STANZA][k]
        out = io.StringIO()
        conf.write(out)
        return out.getvalue()

    def args(self, args: list[str]) -> list[str]:
        out = list(args)
        if "--url" in out and self.replay_url:
            out[out.index("--url") + 1] = self.replay_url
        return out


# --- running a workload -------------------------------------------------------------------------

WORKLOAD_LABEL = "tickstack.io/workload"


def identity(w: Workload) -> str:
    """The workload's identity (its row of infra/components/grants.GRANTS)."""
    return ((w.pod.get("metadata") or {}).get("labels") or {}).get(WORKLOAD_LABEL, "")


def access_key(w: Workload) -> str:
    """The workload's own access key id for the local S3 (it accepts any): IRSA gives each
    workload its own role; here its requests are told apart by this (tests/integration/
    s3record.py)."""
    return f"sim-{identity(w)}" if identity(w) else "tickstack-local"


def identities_by_key() -> dict[str, str]:
    """Access key id -> identity, for a recording of the local S3 (the environment's own key is
    the local primary's WAL archiving: `db`)."""
    from infra.components import grants
    from infra.local.s3 import MOTO_KEY

    return {f"sim-{i}": i for i in grants.GRANTS} | {MOTO_KEY: "db"}



@dataclass
class Run:
    name: str
    container: str
    argv: list[str]
    returncode: int | None
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def prepare(m: Mapping, w: Workload, c: dict, root: Path) -> tuple[list[str], dict[str, str]]:
    """argv and env for one container, its volumes materialised under `root`."""
    if c.get("command") != wk.ENTRYPOINT:
        raise Unresolvable(f"{w.name}/{c['name']}: command {c.get('command')} is not the worker "
                           f"image's entry point {wk.ENTRYPOINT}")
    volumes = {v["name"]: v for v in w.pod["spec"].get("volumes") or []}
    mounts: dict[str, Path] = {}
    pending: list[tuple[Path, str, bool]] = []
    for vm in c.get("volumeMounts") or []:
        v = volumes.get(vm["name"])
        if v is None:
            raise Unresolvable(f"{w.name}: volume {vm['name']!r} is mounted but not declared")
        d = root / vm["name"]
        d.mkdir(parents=True, exist_ok=True)
        mounts[vm["mountPath"]] = d
        files, secret = volume_files(m.r, v)
        pending += [(d / k, val, secret) for k, val in files.items()]
    pems = m.pems()
    key = access_key(w)
    for path, value, secret in pending:
        if value in pems:
            value = pems[value]
        elif path.name == "pgbackrest.conf":
            value = m.pgbackrest_conf(value, mounts, key)
        else:
            value = m.text(value, mounts)
        path.write_text(value)
        path.chmod(0o600 if secret else 0o644)
    env = {k: m.text(v, mounts) for k, v in container_env(m.r, c).items()}
    # The cloud's S3 and IRSA -> the local S3; the pod's own network -> loopback.
    env.update({"TICKSTACK_S3_ENDPOINT_URL": m.env.moto.endpoint,
                "AWS_ACCESS_KEY_ID": key,
                "AWS_SECRET_ACCESS_KEY": "tickstack-local-secret",
                "TICKSTACK_HEALTH_HOST": "127.0.0.1",
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"})
    if "TICKSTACK_HEALTH_PORT" in env:
        from infra.local.procs import free_port

        env["TICKSTACK_HEALTH_PORT"] = str(free_port())
    env.update(m.extra)
    argv = [sys.executable, "-m", "workers", *m.args(list(c.get("args") or []))]
    return argv, env


def run_job(m: Mapping, w: Workload, root: Path, timeout: float = 600) -> Run:
    [c] = w.pod["spec"]["containers"]
    try:
        argv, env = prepare(m, w, c, root / w.name)
    except Unresolvable as e:
        return Run(w.name, c["name"], [], None, f"cannot start: {e}")
    p = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    return Run(w.name, c["name"], argv, p.returncode, p.stdout + p.stderr)


def run_deployment(m: Mapping, w: Workload, root: Path, *, ready_within: float = 60,
                   until=None, until_within: float = 120) -> Run:
    """Started, ready (its readiness probe's path answers 200), then — when `until` is given —
    running until `until()` holds, then SIGTERM: exit 0."""
    [c] = w.pod["spec"]["containers"]
    try:
        argv, env = prepare(m, w, c, root / w.name)
    except Unresolvable as e:
        return Run(w.name, c["name"], [], None, f"cannot start: {e}")
    probe = c["readinessProbe"]["httpGet"]["path"]
    log = root / f"{w.name}.log"
    with open(log, "w") as out:
        p = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    ready = False
    url = f"http://127.0.0.1:{env['TICKSTACK_HEALTH_PORT']}{probe}"
    end = time.monotonic() + ready_within
    try:
        while time.monotonic() < end and p.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    ready = resp.status == 200
            except (urllib.error.URLError, OSError):
                pass
            if ready:
                break
            time.sleep(0.5)
        if ready and until is not None:
            end = time.monotonic() + until_within
            while not until() and p.poll() is None and time.monotonic() < end:
                time.sleep(0.5)
            met = until()
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    code = p.returncode if ready else (p.returncode or -1) if p.returncode else -1
    note = "" if ready else f"\nnot ready within {ready_within:.0f} s at {url}"
    if ready and until is not None and not met:
        code, note = -1, f"\nready, but {until.__doc__ or until} did not happen within " \
                         f"{until_within:.0f} s"
    return Run(w.name, c["name"], argv, code, log.read_text() + note)
