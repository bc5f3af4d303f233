"""Rules about what each workload may do and hold: its IAM policy scoped to what it needs, its
own service account, secrets only as files, CronJob deadlines that end before the next run.

Part of the pack (rules.RULES lists them); same resource model (infra/policy/model.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from infra.cron import CHECK_DEADLINE_MAX_SECONDS, min_interval_seconds
from infra.policy.model import (
    SECRET_KEY_NAME,
    SECRET_VALUE,
    STATIC_KEY_NAMES,
    Resource,
    Violation,
    _as_list,
    _containers,
    _get,
    _pod_spec,
    _statements,
)

ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
CRONJOB = "kubernetes:batch/v1:CronJob"
WORKLOAD_LABEL = "tickstack.io/workload"
COMPONENT_LABEL = "app.kubernetes.io/component"
# S3 actions on objects: their resource must name a key prefix, not the whole bucket.
S3_OBJECT_ACTION = re.compile(r"^s3:(Get|Put|Delete|Restore|Abort|List)[A-Za-z]*(Object|Part|"
                              r"Upload|Uploads|Parts)[A-Za-z]*$")


# --- IAM policies --------------------------------------------------------------------------------


def _iam_least_privilege(r: Resource) -> list[str]:
    """Every statement allows named actions on named resources: no wildcard action or resource,
    no NotAction/NotResource, and object actions scoped to a key prefix of a bucket."""
    out = []
    statements = _statements(r.props.get("policy"))
    if not statements:
        return ["no readable policy document"]
    for i, s in enumerate(statements):
        sid = s.get("Sid") or f"#{i}"
        for neg in ("NotAction", "NotResource"):
            if neg in s:
                out.append(f"statement {sid}: {neg} grants everything else")
        if s.get("Effect") != "Allow":
            continue
        actions = [a for a in _as_list(s.get("Action")) if isinstance(a, str)]
        resources = [x for x in _as_list(s.get("Resource")) if isinstance(x, str)]
        for a in actions:
            if "*" in a:
                out.append(f"statement {sid}: wildcard action {a!r}; name the actions the "
                           f"workload calls (infra/components/grants.py)")
        for x in resources:
            if x == "*" or x.endswith(":*"):
                out.append(f"statement {sid}: resource {x!r} is everything")
        if any(S3_OBJECT_ACTION.match(a) for a in actions):
            for x in resources:
                if x.startswith("arn:aws:s3:::") and (x.endswith("/*") and x.count("/") == 1):
                    out.append(f"statement {sid}: object actions on every key of {x[:-2]}; "
                               f"scope them to the prefixes the workload uses")
    return out


# --- service accounts ----------------------------------------------------------------------------


def _workload_of(pod: Mapping) -> str | None:
    labels = _get(pod, "metadata", "labels") or {}
    return labels.get(WORKLOAD_LABEL) or labels.get(COMPONENT_LABEL)


def _pod_template(r: Resource) -> Mapping | None:
    spec = _pod_spec(r)
    if spec is None:
        return None
    path = {CRONJOB: ("spec", "jobTemplate", "spec", "template")}.get(
        r.type, ("spec", "template"))
    tpl = _get(r.props, *path)
    return tpl if isinstance(tpl, Mapping) else None


def _one_account_per_workload(resources: Sequence[Resource]) -> list[Violation]:
    """Two different workloads never run under one service account (each has its own IRSA
    role with exactly its grants), and none runs under `default`."""
    rule = "one-service-account-per-workload"
    seen: dict[str, tuple[str, str]] = {}
    out = []
    for r in resources:
        tpl = _pod_template(r)
        if tpl is None:
            continue
        sa = _get(tpl, "spec", "serviceAccountName") or "default"
        workload = _workload_of(tpl)
        if sa == "default":
            out.append(Violation(rule, r.label, "runs under the namespace's default service "
                                                "account; give the workload its own"))
            continue
        if not workload:
            out.append(Violation(rule, r.label, f"pod template has no {WORKLOAD_LABEL} label "
                                                f"naming its workload"))
            continue
        if sa in seen and seen[sa][0] != workload:
            out.append(Violation(rule, r.label, f"service account {sa!r} also runs workload "
                                                f"{seen[sa][0]!r} ({seen[sa][1]}); each workload "
                                                f"its own account and role"))
        seen.setdefault(sa, (workload, r.label))
    return out


# --- secrets -------------------------------------------------------------------------------


def _secret_in_env(r: Resource) -> list[str]:
    """Secrets reach containers as files (Secret volumes), never as environment variables:
    an environment is inherited by every child process, shown by `kubectl describe`,
    dumped by crash reporters."""
    spec = _pod_spec(r)
    if spec is None:
        return []
    out = []
    for c in _containers(spec):
        name = c.get("name", "?")
        for src in _as_list(c.get("envFrom")):
            if isinstance(src, Mapping) and src.get("secretRef"):
                out.append(f"container {name}: envFrom Secret "
                           f"{_get(src, 'secretRef', 'name')!r}; mount it as a volume")
        for e in _as_list(c.get("env")):
            if not isinstance(e, Mapping):
                continue
            env_name = str(e.get("name", "?"))
            if env_name in STATIC_KEY_NAMES:
                continue  # no-static-access-keys judges these
            if _get(e, "valueFrom", "secretKeyRef"):
                out.append(f"container {name}: env {env_name} from a Secret; mount it as a "
                           f"file (e.g. {env_name}_FILE)")
                continue
            value = e.get("value")
            if not isinstance(value, str):
                continue
            # Where a secret is (TICKSTACK_SECRETS_DIR, POSTGRES_PASSWORD_FILE) is no secret.
            is_path = env_name.endswith(("_FILE", "_DIR")) and value.startswith("/")
            if SECRET_KEY_NAME.search(env_name) and value and not is_path:
                out.append(f"container {name}: env {env_name} names a secret and has a value")
            elif any(p.search(value) for p in SECRET_VALUE):
                out.append(f"container {name}: env {env_name} holds what looks like a secret")
    return out


# --- CronJob deadlines ---------------------------------------------------------------------------


def _seconds(v: Any) -> int | None:
    """A whole number of seconds (the engine hands numbers over as floats)."""
    if isinstance(v, bool) or not isinstance(v, int | float) or v != int(v):
        return None
    return int(v)


def _is_check(r: Resource) -> bool:
    spec = _pod_spec(r) or {}
    return any("--check" in _as_list(c.get("args")) for c in _containers(spec))


def _cron_deadlines(r: Resource) -> list[str]:
    """A run ends before the next is due, even when it started late, and one at a time: else a
    hung run (a check that never returns) silences every run after it."""
    spec: Any = r.props.get("spec") or {}
    schedule = spec.get("schedule")
    job = _get(spec, "jobTemplate", "spec") or {}
    deadline = _seconds(job.get("activeDeadlineSeconds"))
    starting = _seconds(spec.get("startingDeadlineSeconds"))
    out = []
    if spec.get("concurrencyPolicy") != "Forbid":
        out.append(f"concurrencyPolicy {spec.get('concurrencyPolicy', 'Allow')!r}: runs may "
                   f"overlap (use Forbid)")
    if not isinstance(schedule, str):
        return out + ["no schedule"]
    try:
        interval = min_interval_seconds(schedule)
    except ValueError as e:
        return out + [str(e)]
    if deadline is None or deadline <= 0:
        return out + ["no jobTemplate.spec.activeDeadlineSeconds: a hung run runs forever"]
    if starting is None or starting <= 0:
        out.append("no startingDeadlineSeconds")
    elif deadline + starting > interval:
        out.append(f"activeDeadlineSeconds {deadline} + startingDeadlineSeconds {starting} is "
                   f"longer than the schedule's interval ({schedule!r}: {interval} s)")
    if deadline >= interval:
        out.append(f"activeDeadlineSeconds {deadline} is not shorter than the schedule's "
                   f"interval ({schedule!r}: {interval} s)")
    if _is_check(r) and deadline > CHECK_DEADLINE_MAX_SECONDS:
        out.append(f"a check job's activeDeadlineSeconds {deadline} is above "
                   f"{CHECK_DEADLINE_MAX_SECONDS} s")
    return out
