"""What the policy rules see: the resource model, the types they judge and the helpers they share
(infra/policy/rules.py and infra/policy/workload_rules.py use it; so does the pack)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

BUCKET = "aws:s3/bucket:Bucket"
BUCKET_SSE = ("aws:s3/bucketServerSideEncryptionConfiguration:"
              "BucketServerSideEncryptionConfiguration")
BUCKET_PAB = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
BUCKET_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
BUCKET_ACL = "aws:s3/bucketAcl:BucketAcl"
RDS_INSTANCE = "aws:rds/instance:Instance"
RDS_CLUSTER = "aws:rds/cluster:Cluster"
RDS_CLUSTER_INSTANCE = "aws:rds/clusterInstance:ClusterInstance"
IAM_ROLE = "aws:iam/role:Role"
IAM_ACCESS_KEY = "aws:iam/accessKey:AccessKey"
CONFIG_MAP = "kubernetes:core/v1:ConfigMap"
K8S_SECRET = "kubernetes:core/v1:Secret"

# Kubernetes kinds that carry a pod template, and where it is.
POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "kubernetes:core/v1:Pod": ("spec",),
    "kubernetes:apps/v1:Deployment": ("spec", "template", "spec"),
    "kubernetes:apps/v1:StatefulSet": ("spec", "template", "spec"),
    "kubernetes:apps/v1:DaemonSet": ("spec", "template", "spec"),
    "kubernetes:apps/v1:ReplicaSet": ("spec", "template", "spec"),
    "kubernetes:batch/v1:Job": ("spec", "template", "spec"),
    "kubernetes:batch/v1:CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
PUBLIC_ACLS = frozenset({"public-read", "public-read-write", "authenticated-read"})
STATIC_KEY_NAMES = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"})
ACCESS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
# ConfigMap keys that name a secret, and values that hold one.
SECRET_KEY_NAME = re.compile(
    r"(?i)(pass(word|wd)?|secret|token|credential|api[_-]?key|private[_-]?key|access[_-]?key"
    r"|_dsn$|^dsn$|\.pgpass$)")
SECRET_VALUE = (
    re.compile(r"(?i)\b(password|passwd|pwd|secret|token|api[_-]?key)\s*[:=]\s*['\"]?[^\s'\"#]+"),
    re.compile(r"(?i)[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@"),  # scheme://user:password@host
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?i)repo[0-9]+-s3-key(-secret)?\s*="),  # pgBackRest static S3 keys
    ACCESS_KEY_ID,
)


@dataclass(frozen=True)
class Resource:
    """What a rule sees of a resource."""

    type: str
    name: str
    props: Mapping[str, Any]
    urn: str = ""
    # URNs of the resources this one's inputs come from (parents excluded).
    depends_on: tuple[str, ...] = ()
    # Property paths that are Pulumi secrets (known offline only; the engine unwraps them).
    secret_paths: tuple[str, ...] = ()
    # The resource's `protect` option, and whether its stack must protect its data (the
    # stack's tickstack:protectData, or a stack named prod).
    protect: bool = False
    production: bool = False

    @property
    def label(self) -> str:
        return f"{self.type}::{self.name}"


@dataclass(frozen=True)
class Violation:
    rule: str
    resource: str  # type::name
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.resource}: {self.message}"


ResourceCheck = Callable[[Resource], list[str]]
StackCheck = Callable[[Sequence[Resource]], list[Violation]]


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    resource_check: ResourceCheck | None = None
    stack_check: StackCheck | None = None
    types: frozenset[str] = field(default_factory=frozenset)  # empty: every type

    def check(self, resources: Sequence[Resource]) -> list[Violation]:
        out: list[Violation] = []
        if self.resource_check:
            for r in resources:
                if not self.types or r.type in self.types:
                    out += [Violation(self.name, r.label, m) for m in self.resource_check(r)]
        if self.stack_check:
            out += self.stack_check(resources)
        return out


# --- helpers ---------------------------------------------------------------------------------


def _get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, Mapping):
            return None
        d = d.get(p)
    return d


def _json_doc(value: Any) -> dict:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str) and value.strip():
        try:
            doc = json.loads(value)
        except json.JSONDecodeError:
            return {}
        return doc if isinstance(doc, dict) else {}
    return {}


def _statements(policy: Any) -> list[dict]:
    st = _json_doc(policy).get("Statement", [])
    return [s for s in (st if isinstance(st, list) else [st]) if isinstance(s, dict)]


def _as_list(v: Any) -> list:
    if v is None:
        return []
    if isinstance(v, Sequence) and not isinstance(v, str | bytes):
        return list(v)  # lists, and the engine's list proxies
    return [v]


def _linked(sub: Resource, bucket: Resource) -> bool:
    """Does `sub` (an S3 sub-resource) configure `bucket`?"""
    if bucket.urn and bucket.urn in sub.depends_on:
        return True
    try:
        name = sub.props.get("bucket")
        return bool(name) and name in (bucket.props.get("bucket"), bucket.props.get("id"))
    except Exception:  # the engine's UnknownValueError: a name not known during preview
        return False


def _children(resources: Sequence[Resource], type_: str, bucket: Resource) -> list[Resource]:
    return [r for r in resources if r.type == type_ and _linked(r, bucket)]

def _containers(pod_spec: Any) -> list[dict]:
    out = []
    for key in ("initContainers", "containers", "ephemeralContainers"):
        out += [c for c in _as_list(_get(pod_spec, key)) if isinstance(c, Mapping)]
    return out


def _pod_spec(r: Resource) -> Mapping | None:
    path = POD_SPEC_PATHS.get(r.type)
    spec = _get(r.props, *path) if path else None
    return spec if isinstance(spec, Mapping) else None
