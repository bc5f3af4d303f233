"""Run a command in another pod (the primary's), for pgBackRest in Kubernetes.

pgBackRest must run where the data directory is: in the cloud the backup CronJob's pod has no
database, so `workers backup` executes pgBackRest in the primary's pod through the Kubernetes API
(the Pulumi program grants its service account `pods/exec` on that one pod, nothing else). The
result is shaped like subprocess's, so the callers cannot tell the difference.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True)
class PodTarget:
    pod: str
    container: str | None = None
    namespace: str | None = None  # default: the namespace this pod runs in

    def resolved_namespace(self) -> str:
        if self.namespace:
            return self.namespace
        try:
            return SA_NAMESPACE.read_text().strip()
        except OSError:
            raise RuntimeError("TICKSTACK_PGBACKREST_EXEC_POD is set but the namespace is "
                               f"unknown: set TICKSTACK_PGBACKREST_EXEC_NAMESPACE ({SA_NAMESPACE} "
                               "is missing: not running in Kubernetes?)") from None


def run(target: PodTarget, cmd: list[str], *, env: dict[str, str],
        timeout: float) -> subprocess.CompletedProcess[str]:
    """`env` is passed as `env K=V … cmd` so only the variables given reach the command."""
    from kubernetes import client, config
    from kubernetes.stream import stream

    config.load_incluster_config()
    api = client.CoreV1Api()
    argv = ["env", *(f"{k}={v}" for k, v in sorted(env.items())), *cmd] if env else cmd
    resp = stream(api.connect_get_namespaced_pod_exec, target.pod,
                  target.resolved_namespace(), container=target.container, command=argv,
                  stdin=False, stdout=True, stderr=True, tty=False, _preload_content=False)
    out, err = [], []
    try:
        resp.run_forever(timeout=timeout)
        out.append(resp.read_stdout() or "")
        err.append(resp.read_stderr() or "")
        if resp.is_open():
            raise subprocess.TimeoutExpired(cmd, timeout)
        code = resp.returncode
    finally:
        resp.close()
    return subprocess.CompletedProcess(cmd, code if code is not None else 1, "".join(out),
                                       "".join(err))
