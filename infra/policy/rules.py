"""The mandatory rules: what the tickstack program must never declare.

Plain functions over a minimal resource model, so that the same code runs

* under the Pulumi engine, as the policy pack `infra/policy/__main__.py` (`pulumi preview
  --policy-pack infra/policy`), where each rule is a ResourceValidationPolicy or, when it needs
  to see several resources at once (a bucket and its encryption, public access block and
  policy), a StackValidationPolicy; and
* offline, against the graph the program renders under mocks (`check_graph`, used by
  tests/unit/test_policy*.py and nothing else).

Properties are Pulumi's wire names (camelCase), as both the engine and the mocks record them.
A rule returns messages; a Violation names the rule and the resource (`type::name`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from infra.policy import workload_rules as wr
from infra.policy.model import (  # noqa: F401 (re-exported: the pack and tests use them)
    ACCESS_KEY_ID,
    BUCKET,
    BUCKET_ACL,
    BUCKET_PAB,
    BUCKET_POLICY,
    BUCKET_SSE,
    CONFIG_MAP,
    IAM_ACCESS_KEY,
    IAM_ROLE,
    K8S_SECRET,
    POD_SPEC_PATHS,
    PUBLIC_ACLS,
    RDS_CLUSTER,
    RDS_CLUSTER_INSTANCE,
    RDS_INSTANCE,
    SECRET_KEY_NAME,
    SECRET_VALUE,
    STATIC_KEY_NAMES,
    Resource,
    ResourceCheck,
    Rule,
    StackCheck,
    Violation,
    _as_list,
    _children,
    _containers,
    _get,
    _json_doc,
    _linked,
    _pod_spec,
    _statements,
)

# --- S3 ----------------------------------------------------------------------------------------


def _sse_problems(r: Resource) -> list[str]:
    rules = _as_list(r.props.get("rules"))
    algos = [_get(x, "applyServerSideEncryptionByDefault", "sseAlgorithm") for x in rules]
    if not algos or any(a not in ("aws:kms", "aws:kms:dsse") for a in algos):
        return [f"default encryption must be SSE-KMS (sseAlgorithm aws:kms), got {algos or None}"]
    return []


def _bucket_encrypted(resources: Sequence[Resource]) -> list[Violation]:
    out = []
    for b in (r for r in resources if r.type == BUCKET):
        inline = _get(b.props, "serverSideEncryptionConfiguration", "rule",
                      "applyServerSideEncryptionByDefault", "sseAlgorithm")
        sse = _children(resources, BUCKET_SSE, b)
        if not sse and inline not in ("aws:kms", "aws:kms:dsse"):
            out.append(Violation("s3-bucket-encrypted", b.label,
                                 "no BucketServerSideEncryptionConfiguration with SSE-KMS"))
    for r in resources:
        if r.type == BUCKET_SSE:
            out += [Violation("s3-bucket-encrypted", r.label, m) for m in _sse_problems(r)]
    return out


PAB_FLAGS = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")


def _public_principal(p: Any) -> bool:
    if p == "*":
        return True
    if isinstance(p, Mapping):
        return any(x == "*" for v in p.values() for x in _as_list(v))
    return False


def _bucket_not_public(resources: Sequence[Resource]) -> list[Violation]:
    rule = "s3-bucket-not-public"
    out = []
    for b in (r for r in resources if r.type == BUCKET):
        if b.props.get("acl") in PUBLIC_ACLS:
            out.append(Violation(rule, b.label, f"public canned ACL {b.props['acl']!r}"))
        if not _children(resources, BUCKET_PAB, b):
            out.append(Violation(rule, b.label, "no BucketPublicAccessBlock"))
    for r in resources:
        if r.type == BUCKET_PAB:
            off = [f for f in PAB_FLAGS if r.props.get(f) is not True]
            if off:
                out.append(Violation(rule, r.label, f"public access not blocked: "
                                                    f"{', '.join(off)} not true"))
        elif r.type == BUCKET_ACL and r.props.get("acl") in PUBLIC_ACLS:
            out.append(Violation(rule, r.label, f"public canned ACL {r.props['acl']!r}"))
        elif r.type == BUCKET_POLICY:
            for s in _statements(r.props.get("policy")):
                if s.get("Effect") == "Allow" and _public_principal(s.get("Principal")):
                    out.append(Violation(rule, r.label,
                                         f"statement {s.get('Sid', '?')!r} allows everyone "
                                         f"(Principal \"*\")"))
    return out


def _denies_plain_http(policy: Any) -> bool:
    for s in _statements(policy):
        cond = _get(s, "Condition", "Bool") or {}
        if (s.get("Effect") == "Deny" and _public_principal(s.get("Principal"))
                and str(cond.get("aws:SecureTransport", "")).lower() == "false"
                and any(a in ("s3:*", "*") for a in _as_list(s.get("Action")))):
            return True
    return False


def _bucket_tls_only(resources: Sequence[Resource]) -> list[Violation]:
    out = []
    for b in (r for r in resources if r.type == BUCKET):
        policies = _children(resources, BUCKET_POLICY, b)
        if not any(_denies_plain_http(p.props.get("policy")) for p in policies):
            out.append(Violation("s3-bucket-tls-only", b.label,
                                 "no BucketPolicy denying s3:* when aws:SecureTransport is false"))
    return out


# --- RDS ---------------------------------------------------------------------------------------


def _rds_not_public(r: Resource) -> list[str]:
    if r.props.get("publiclyAccessible") is True:
        return ["publiclyAccessible is true"]
    return []


def _rds_encrypted(r: Resource) -> list[str]:
    if r.props.get("storageEncrypted") is not True:
        return ["storageEncrypted is not true"]
    return []


# --- IAM ---------------------------------------------------------------------------------------

SA_SUBJECT = re.compile(r"^system:serviceaccount:[a-z0-9]([-a-z0-9]*[a-z0-9])?:"
                        r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def _trust_problems(r: Resource) -> list[str]:
    """Federated (OIDC) trust must name one service account; nobody may trust "*"."""
    out = []
    statements = _statements(r.props.get("assumeRolePolicy"))
    if not statements:
        return ["no readable assumeRolePolicy"]
    for i, s in enumerate(statements):
        if s.get("Effect") != "Allow":
            continue
        sid = s.get("Sid") or f"#{i}"
        principal = s.get("Principal")
        if _public_principal(principal):
            out.append(f"trust statement {sid} allows any principal")
            continue
        federated = isinstance(principal, Mapping) and "Federated" in principal
        web_identity = "sts:AssumeRoleWithWebIdentity" in _as_list(s.get("Action"))
        if not (federated or web_identity):
            continue  # AWS service principals (e.g. rds.amazonaws.com)
        equals = _get(s, "Condition", "StringEquals") or {}
        subs = [v for k, v in equals.items() if k.endswith(":sub")]
        auds = [v for k, v in equals.items() if k.endswith(":aud")]
        if not subs or not all(isinstance(v, str) and SA_SUBJECT.match(v) for v in subs):
            out.append(f"trust statement {sid} has no StringEquals condition on <issuer>:sub "
                       f"naming one service account (system:serviceaccount:<ns>:<name>)")
        if auds != ["sts.amazonaws.com"]:
            out.append(f"trust statement {sid} has no StringEquals <issuer>:aud = "
                       f"sts.amazonaws.com")
    return out


# --- static keys -------------------------------------------------------------------------------


def _static_keys(r: Resource) -> list[str]:
    if r.type == IAM_ACCESS_KEY:
        return ["IAM access keys are static credentials: use IRSA roles"]
    out = []
    if r.type in (CONFIG_MAP, K8S_SECRET):
        for section in ("data", "stringData"):
            for k, v in (r.props.get(section) or {}).items():
                if k in STATIC_KEY_NAMES:
                    out.append(f"{section}.{k}: AWS static credentials")
                elif isinstance(v, str) and ACCESS_KEY_ID.search(v):
                    out.append(f"{section}.{k}: holds an AWS access key id")
    spec = _pod_spec(r)
    if spec is not None:
        for c in _containers(spec):
            for e in _as_list(c.get("env")):
                if isinstance(e, Mapping) and e.get("name") in STATIC_KEY_NAMES:
                    out.append(f"container {c.get('name')}: env {e['name']} (static AWS "
                               f"credentials; use IRSA)")
    return out


# --- pods --------------------------------------------------------------------------------------

ALLOWED_ADDED_CAPS = frozenset({"NET_BIND_SERVICE"})


def _pod_security(r: Resource) -> list[str]:
    spec = _pod_spec(r)
    if spec is None:
        return []
    out = []
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(host) is True:
            out.append(f"{host} is true")
    pod_sc = spec.get("securityContext") or {}
    for c in _containers(spec):
        name = c.get("name", "?")
        sc = c.get("securityContext") or {}
        if sc.get("privileged") is True:
            out.append(f"container {name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"container {name}: allowPrivilegeEscalation is not false")
        non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        user = sc.get("runAsUser", pod_sc.get("runAsUser"))
        if non_root is not True:
            out.append(f"container {name}: runAsNonRoot is not true")
        if user is not None and int(user) == 0:
            out.append(f"container {name}: runAsUser is 0 (root)")
        added = set(_as_list(_get(sc, "capabilities", "add"))) - ALLOWED_ADDED_CAPS
        if added:
            out.append(f"container {name}: adds capabilities {sorted(added)}")
    return out


def _pod_limits(r: Resource) -> list[str]:
    spec = _pod_spec(r)
    if spec is None:
        return []
    out = []
    for c in _containers(spec):
        limits = _get(c, "resources", "limits") or {}
        missing = [k for k in ("cpu", "memory") if not limits.get(k)]
        if missing:
            out.append(f"container {c.get('name', '?')}: no {' and '.join(missing)} limit")
    return out


# --- images ----------------------------------------------------------------------------------

DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def _image_pinned(r: Resource) -> list[str]:
    """A tag can be moved to other bytes; a digest cannot: what runs is what was reviewed."""
    spec = _pod_spec(r)
    if spec is None:
        return []
    return [f"container {c.get('name', '?')}: image {c.get('image')!r} is not pinned by digest "
            f"(@sha256:…)" for c in _containers(spec)
            if not (isinstance(c.get("image"), str) and DIGEST.search(c["image"]))]


# --- data volumes ------------------------------------------------------------------------------

STATEFULSET = "kubernetes:apps/v1:StatefulSet"
PVC = "kubernetes:core/v1:PersistentVolumeClaim"
STORAGE_CLASS = "kubernetes:storage.k8s.io/v1:StorageClass"


def _data_volume_protected(r: Resource) -> list[str]:
    """Where the stack protects its data, what holds a database volume is protected too: a
    replacement or `destroy` of it would delete the volume (or orphan the claim)."""
    if not r.production:
        return []
    holds = (r.type == PVC or (r.type == STATEFULSET
                               and _as_list(_get(r.props, "spec", "volumeClaimTemplates"))))
    out = []
    if holds and not r.protect:
        out.append("holds a data volume but is not protected (protect: true) in a stack "
                   "that protects its data")
    if r.type == STORAGE_CLASS and r.props.get("reclaimPolicy", "Delete") != "Retain":
        out.append(f"reclaimPolicy {r.props.get('reclaimPolicy', 'Delete')!r}: a deleted claim "
                   f"deletes its volume (use Retain)")
    return out


# --- TLS to the databases -----------------------------------------------------------------------

PG_URI = re.compile(r"^postgres(ql)?://", re.I)


def _sslmodes(value: str) -> list[str] | None:
    """sslmode values of a libpq connection string (URI or key=value); None: not one."""
    from urllib.parse import parse_qs, urlparse

    if PG_URI.match(value):
        return parse_qs(urlparse(value).query).get("sslmode", ["prefer"])
    if re.search(r"(^|\s)(host|dbname)\s*=", value) and re.search(r"(^|\s)(user)\s*=", value):
        return re.findall(r"(?:^|\s)sslmode\s*=\s*'?([a-z-]+)", value) or ["prefer"]
    return None


def _dsn_verify_full(r: Resource) -> list[str]:
    """Every database connection string verifies the server's certificate and name."""
    out = []
    for section in ("data", "stringData"):
        for k, v in (r.props.get(section) or {}).items():
            if not isinstance(v, str):
                continue
            if section == "data" and r.type == K8S_SECRET:
                import base64
                import binascii

                try:
                    v = base64.b64decode(v, validate=True).decode()
                except (binascii.Error, UnicodeDecodeError):
                    continue
            modes = _sslmodes(v)
            if modes is not None and modes != ["verify-full"]:
                out.append(f"{section}.{k}: sslmode={','.join(modes)}; connections to the "
                           f"databases must use sslmode=verify-full")
    return out


# --- ConfigMaps --------------------------------------------------------------------------------


def _configmap_plaintext(r: Resource) -> list[str]:
    out = []
    secret_paths = set(r.secret_paths)
    for section in ("data", "binaryData"):
        for k, v in (r.props.get(section) or {}).items():
            where = f"{section}.{k}"
            if where in secret_paths or section in secret_paths:
                out.append(f"{where}: a Pulumi secret written into a ConfigMap")
            elif SECRET_KEY_NAME.search(k):
                out.append(f"{where}: the key names a secret; put it in a Secret")
            elif isinstance(v, str):
                for pat in SECRET_VALUE:
                    m = pat.search(v)
                    if m:
                        out.append(f"{where}: looks like a plaintext secret "
                                   f"({m.group(0)[:24]!r}…); put it in a Secret")
                        break
    return out


# --- the pack ----------------------------------------------------------------------------------

RULES: tuple[Rule, ...] = (
    Rule("s3-bucket-encrypted",
         "S3 buckets are encrypted by default with SSE-KMS.",
         stack_check=_bucket_encrypted),
    Rule("s3-bucket-not-public",
         "S3 buckets block all public access (access block on, no public ACL or policy).",
         stack_check=_bucket_not_public),
    Rule("s3-bucket-tls-only",
         "S3 buckets have a policy denying requests that are not made over TLS.",
         stack_check=_bucket_tls_only),
    Rule("rds-not-public", "RDS databases are not publicly accessible.",
         resource_check=_rds_not_public,
         types=frozenset({RDS_INSTANCE, RDS_CLUSTER_INSTANCE})),
    Rule("rds-encrypted", "RDS storage is encrypted.",
         resource_check=_rds_encrypted, types=frozenset({RDS_INSTANCE, RDS_CLUSTER})),
    Rule("iam-trust-service-account",
         "IAM roles trusted through OIDC name exactly one Kubernetes service account "
         "(StringEquals on :sub and :aud); no role trusts everyone.",
         resource_check=_trust_problems, types=frozenset({IAM_ROLE})),
    Rule("no-static-access-keys",
         "No IAM access keys and no AWS static credentials in ConfigMaps, Secrets or env.",
         resource_check=_static_keys,
         types=frozenset({IAM_ACCESS_KEY, CONFIG_MAP, K8S_SECRET, *POD_SPEC_PATHS})),
    Rule("pod-non-root-unprivileged",
         "Containers run as non-root, unprivileged, without privilege escalation, host "
         "namespaces or added capabilities.",
         resource_check=_pod_security, types=frozenset(POD_SPEC_PATHS)),
    Rule("pod-resource-limits", "Every container has CPU and memory limits.",
         resource_check=_pod_limits, types=frozenset(POD_SPEC_PATHS)),
    Rule("no-plaintext-secrets-in-configmaps",
         "ConfigMaps hold no secrets (no secret-named keys, credentials or Pulumi secrets).",
         resource_check=_configmap_plaintext, types=frozenset({CONFIG_MAP})),
    Rule("image-pinned-by-digest",
         "Every container image is pinned by digest (@sha256:…), never by a movable tag.",
         resource_check=_image_pinned, types=frozenset(POD_SPEC_PATHS)),
    Rule("data-volume-protected",
         "In a stack that protects its data (protectData, prod), whatever holds a database "
         "volume is protected, and StorageClasses keep volumes (reclaimPolicy Retain).",
         resource_check=_data_volume_protected,
         types=frozenset({STATEFULSET, PVC, STORAGE_CLASS})),
    Rule("iam-policy-least-privilege",
         "IAM role policies name their actions and resources: no wildcards, no NotAction, "
         "object actions scoped to key prefixes (infra/components/grants.py).",
         resource_check=wr._iam_least_privilege, types=frozenset({wr.ROLE_POLICY})),
    Rule("one-service-account-per-workload",
         "Each workload runs under its own service account (and IRSA role); none under "
         "`default`.", stack_check=wr._one_account_per_workload),
    Rule("no-secrets-in-env",
         "Secrets reach containers as mounted files, never as environment variables.",
         resource_check=wr._secret_in_env, types=frozenset(POD_SPEC_PATHS)),
    Rule("cronjob-deadline-before-next-run",
         "CronJobs forbid overlapping runs and stop a run before the next is due; check jobs "
         "within minutes.", resource_check=wr._cron_deadlines, types=frozenset({wr.CRONJOB})),
    Rule("dsn-sslmode-verify-full",
         "Database connection strings in Secrets and ConfigMaps use sslmode=verify-full.",
         resource_check=_dsn_verify_full, types=frozenset({CONFIG_MAP, K8S_SECRET})),
)


def rule(name: str) -> Rule:
    for r in RULES:
        if r.name == name:
            return r
    raise KeyError(name)


def check(resources: Iterable[Resource], rules: Iterable[Rule] = RULES) -> list[Violation]:
    res = list(resources)
    return [v for r in rules for v in r.check(res)]


def from_graph(graph: Any, production: bool = False) -> list[Resource]:
    """Resources of an infra.offline.graph.Graph (the program rendered offline under mocks);
    `production`: the stack protects its data (protectData)."""
    return [Resource(type=r.type, name=r.name, props=r.plain, urn=r.urn,
                     depends_on=tuple(r.dependencies), secret_paths=tuple(r.secret_paths()),
                     protect=r.protect, production=production)
            for r in graph.resources if r.custom]


def check_graph(graph: Any, rules: Iterable[Rule] = RULES,
                production: bool = False) -> list[Violation]:
    return check(from_graph(graph, production), rules)
