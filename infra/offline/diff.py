"""Offline preview diff: the resource graph at a git ref vs. the working tree, as Markdown.

`python -m infra.render --stack dev --diff-against origin/main` renders the Pulumi program twice
under mocks (infra/offline/render.py) — once as it is at the ref, once as it is now — and
lists what a `pulumi preview` would show at resource level: resources added, removed, and
changed inputs (old → new), plus changed stack outputs. A change the engine would carry out by
**replacing** the resource (an input the provider cannot update in place: a StatefulSet's
volume claim templates, a Job's pod, a bucket's name, an RDS instance's KMS key...) is marked
**replace**, with the input and the reason; a protected resource that would be replaced or
deleted is flagged (the engine refuses), and a change under `ignoreChanges` is shown as not
applied. Secrets are masked on both sides
("[secret]"), as the render prints them. CI posts this on pull requests that have no cloud
credentials (forks).

The ref's program is extracted with `git archive` into a temporary directory and rendered there
by a subprocess of the same interpreter (same virtualenv, same provider SDKs), with that
directory first on the import path, so the ref's own `infra/` (and stack files) are used.
"""

from __future__ import annotations

import difflib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SECRET = "[secret]"
MARKER = "<!-- tickstack-infra-diff:{stack} -->"  # lets CI update its comment in place
MAX_CELL = 160


class DiffError(Exception):
    """The ref cannot be resolved or its program cannot be rendered; the message says why."""


# --- rendering a tree ----------------------------------------------------------------------------


def _git(repo: Path, *args: str, binary: bool = False) -> Any:
    r = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, timeout=120,
                       text=not binary)
    if r.returncode != 0:
        err = r.stderr if isinstance(r.stderr, str) else r.stderr.decode(errors="replace")
        raise DiffError(f"git {' '.join(args[:2])}: {err.strip() or 'failed'}")
    return r.stdout


def resolve(ref: str, repo: Path = REPO) -> str:
    """The commit a ref names (DiffError if it names none)."""
    return _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").strip()


def extract(ref: str, dest: Path, repo: Path = REPO) -> str:
    """Write the tree of `ref` into `dest` (git archive); returns the commit."""
    commit = resolve(ref, repo)
    data = _git(repo, "archive", "--format=tar", commit, binary=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return commit


def render_tree(root: Path, stack: str, args: Sequence[str] = (),
                python: str = sys.executable) -> dict:
    """`python -m infra.render --stack S` run in `root`, its own infra/ first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("PULUMI_CONFIG", None)
    r = subprocess.run([python, "-m", "infra.render", "--stack", stack, *args], cwd=root,
                       env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-15:])
        raise DiffError(f"rendering {stack} in {root} failed (exit {r.returncode}):\n{tail}")
    try:
        return json.loads(r.stdout)
    except json.JSONDecodeError as e:
        raise DiffError(f"rendering {stack} in {root} printed no JSON graph: {e}") from None


def render_at(ref: str, stack: str, args: Sequence[str] = (), repo: Path = REPO) -> dict:
    with tempfile.TemporaryDirectory(prefix="tickstack-diff-") as tmp:
        extract(ref, Path(tmp), repo)
        if not (Path(tmp) / "infra" / "render.py").exists():
            raise DiffError(f"{ref} has no infra/render.py: nothing to render there")
        if not (Path(tmp) / f"Pulumi.{stack}.yaml").exists():
            return {"stack": stack, "resources": [], "outputs": {}}  # the stack is new
        return render_tree(Path(tmp), stack, args)


# --- comparing two graphs ------------------------------------------------------------------------


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaf paths of a value: `a.b[0].c` -> leaf. JSON documents held in strings (IAM and
    bucket policies) are opened up too, so a change shows as the statement that changed."""
    if isinstance(value, str) and value[:1] in "{[":
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict | list) and parsed:
            return flatten(parsed, f"{prefix}(json)")
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list) and value:
        out = {}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


@dataclass
class Change:
    path: str
    before: Any  # MISSING when added
    after: Any  # MISSING when removed


MISSING = object()


@dataclass
class Changed:
    type: str
    name: str
    changes: list[Change]
    replace_because: list[str] = field(default_factory=list)  # "path: why"
    ignored: list[str] = field(default_factory=list)  # paths under ignoreChanges
    protect: bool = False

    @property
    def replaces(self) -> bool:
        return bool(self.replace_because)


# What the providers cannot update in place: a change under one of these input paths makes
# the engine replace the resource ("" = any input). Pulumi's own diff decides this from the
# providers' schemas (forceNew) and Kubernetes' immutable fields; this table says the same for
# the types the program declares, with the reason shown beside the change.
_K8S_ID = ("metadata.name", "metadata.namespace")
REPLACE_ON: dict[str, tuple[tuple[str, ...], str]] = {
    "kubernetes:apps/v1:StatefulSet": (
        (*_K8S_ID, "spec.selector", "spec.serviceName", "spec.volumeClaimTemplates",
         "spec.podManagementPolicy"),
        "Kubernetes cannot change a StatefulSet's selector, serviceName, podManagementPolicy "
        "or volumeClaimTemplates in place"),
    "kubernetes:apps/v1:Deployment": ((*_K8S_ID, "spec.selector"),
                                      "a Deployment's selector is immutable"),
    "kubernetes:batch/v1:Job": ((*_K8S_ID, "spec"),
                                "a Job's spec (its pod template) is immutable: a new Job runs"),
    "kubernetes:core/v1:Service": ((*_K8S_ID, "spec.clusterIP"),
                                   "a Service's clusterIP is immutable"),
    "kubernetes:core/v1:PersistentVolumeClaim": (
        (*_K8S_ID, "spec.storageClassName", "spec.accessModes", "spec.volumeName",
         "spec.selector", "spec.volumeMode"),
        "a claim's class, modes and volume are immutable (only its size may grow)"),
    "kubernetes:storage.k8s.io/v1:StorageClass": (
        (*_K8S_ID, "provisioner", "parameters", "reclaimPolicy", "volumeBindingMode",
         "mountOptions"), "a StorageClass is immutable except allowVolumeExpansion"),
    "kubernetes:core/v1:Secret": ((*_K8S_ID, "type"), "a Secret's type is immutable"),
    "aws:s3/bucket:Bucket": (("bucket", "bucketPrefix", "objectLockEnabled"),
                             "a bucket's name cannot change"),
    "aws:rds/instance:Instance": (
        ("engine", "dbName", "username", "kmsKeyId", "storageEncrypted", "identifier",
         "identifierPrefix", "characterSetName", "availabilityZone", "snapshotIdentifier",
         "timezone", "ncharCharacterSetName"),
        "RDS cannot change this on an existing instance: a new, empty instance is created"),
    "aws:rds/subnetGroup:SubnetGroup": (("name", "namePrefix"), "names are fixed"),
    "aws:rds/parameterGroup:ParameterGroup": (
        ("family", "name", "namePrefix", "description"),
        "a parameter group's family and name are fixed"),
    "aws:ec2/securityGroup:SecurityGroup": (("vpcId", "name", "namePrefix", "description"),
                                            "a security group's VPC, name and description "
                                            "are fixed"),
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": (
        ("securityGroupId",), "a rule belongs to its group"),
    "aws:kms/key:Key": (("customerMasterKeySpec", "keyUsage", "multiRegion",
                         "customKeyStoreId", "xksKeyId"), "a key's kind is fixed"),
    "aws:kms/alias:Alias": (("name", "namePrefix"), "an alias's name is fixed"),
    "aws:ecr/repository:Repository": (("name", "encryptionConfigurations"),
                                      "a repository's name and encryption are fixed"),
    "aws:iam/role:Role": (("name", "namePrefix", "path"), "a role's name and path are fixed"),
    "aws:iam/rolePolicy:RolePolicy": (("role", "name", "namePrefix"),
                                      "an inline policy belongs to its role"),
    # Generated secrets, keys and certificates: any input makes a new one.
    "random:index/randomPassword:RandomPassword": (("",), "a new password is generated"),
    "tls:index/privateKey:PrivateKey": (("",), "a new key is generated"),
    "tls:index/selfSignedCert:SelfSignedCert": (("",), "a new certificate is issued"),
    "tls:index/certRequest:CertRequest": (("",), "a new request is made"),
    "tls:index/locallySignedCert:LocallySignedCert": (("",), "a new certificate is issued"),
}
# Sub-resources of a bucket belong to it.
_BUCKET_PART = (("bucket",), "it belongs to its bucket")


def replace_rule(type_: str) -> tuple[tuple[str, ...], str]:
    if type_ in REPLACE_ON:
        return REPLACE_ON[type_]
    if type_.startswith("aws:s3/bucket") and type_ != "aws:s3/bucket:Bucket":
        return _BUCKET_PART
    if type_.startswith("kubernetes:") and not type_.endswith("Patch"):
        return _K8S_ID, "metadata.name and metadata.namespace identify the object"
    return (), ""


def _under(path: str, prefix: str) -> bool:
    """Is the flattened input path `path` at or below `prefix` (a dotted input path)?"""
    if not prefix:
        return True
    return path == prefix or path.startswith((prefix + ".", prefix + "[", prefix + "(json)"))


def _ignored(path: str, ignore: list[str]) -> bool:
    return any(_under(path, p) for p in ignore)


@dataclass
class GraphDiff:
    stack: str
    added: list[dict] = field(default_factory=list)
    removed: list[dict] = field(default_factory=list)
    changed: list[Changed] = field(default_factory=list)
    outputs: list[Change] = field(default_factory=list)
    before_count: int = 0
    after_count: int = 0

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.outputs)


def _comparable(r: dict) -> dict:
    return {"inputs": r.get("inputs") or {}, "parent": r.get("parent"),
            "protect": r.get("protect", False), "dependsOn": sorted(r.get("dependsOn") or []),
            "retainOnDelete": r.get("retainOnDelete", False),
            "ignoreChanges": r.get("ignoreChanges") or [],
            "customTimeouts": r.get("customTimeouts") or {}}


def _changes(before: Any, after: Any) -> list[Change]:
    a, b = flatten(before), flatten(after)
    out = []
    for path in sorted(set(a) | set(b)):
        x, y = a.get(path, MISSING), b.get(path, MISSING)
        if x != y:
            out.append(Change(path, x, y))
    return out


def diff_graphs(before: dict, after: dict) -> GraphDiff:
    """Resource-level difference, resources matched by (type, name) as Pulumi matches URNs."""
    key = lambda r: (r["type"], r["name"])  # noqa: E731
    old = {key(r): r for r in before.get("resources", [])}
    new = {key(r): r for r in after.get("resources", [])}
    d = GraphDiff(stack=after.get("stack") or before.get("stack", "?"),
                  before_count=len(old), after_count=len(new))
    d.added = [new[k] for k in sorted(set(new) - set(old))]
    d.removed = [old[k] for k in sorted(set(old) - set(new))]
    for k in sorted(set(old) & set(new)):
        changes = _changes(_comparable(old[k]), _comparable(new[k]))
        for c in changes:  # inputs are what a change is mostly about: show them bare
            c.path = c.path.removeprefix("inputs.")
        if changes:
            ch = Changed(k[0], k[1], changes, protect=bool(new[k].get("protect")))
            prefixes, why = replace_rule(k[0])
            ignore = list(new[k].get("ignoreChanges") or [])
            for c in changes:
                if c.path.split(".")[0] in ("parent", "protect", "dependsOn",
                                            "retainOnDelete", "ignoreChanges",
                                            "customTimeouts", "replaceOnChanges",
                                            "deleteBeforeReplace"):
                    continue  # resource options: never a change of the resource itself
                if _ignored(c.path, ignore):
                    ch.ignored.append(c.path)
                    continue
                forced = [p for p in (*prefixes, *(new[k].get("replaceOnChanges") or []))
                          if _under(c.path, p)]
                if forced:
                    ch.replace_because.append(f"{c.path}: {why or 'replaceOnChanges'}")
            d.changed.append(ch)
    d.outputs = _changes(before.get("outputs") or {}, after.get("outputs") or {})
    return d


# --- Markdown ----------------------------------------------------------------------------------


def _cell(v: Any) -> str:
    if v is MISSING:
        return "—"
    text = v if isinstance(v, str) else json.dumps(v)
    if len(text) > MAX_CELL:
        text = text[:MAX_CELL] + "…"
    text = text.replace("|", "\\|").replace("\n", "⏎").replace("`", "'")
    return f"`{text}`"


def _multiline(c: Change) -> bool:
    return any(isinstance(v, str) and "\n" in v for v in (c.before, c.after))


def _change_block(changes: list[Change], what: str = "Input") -> list[str]:
    lines: list[str] = []
    rows = [c for c in changes if not _multiline(c)]
    if rows:
        lines += [f"| {what} | Before | After |", "|---|---|---|"]
        lines += [f"| `{c.path}` | {_cell(c.before)} | {_cell(c.after)} |" for c in rows]
        lines.append("")
    for c in (c for c in changes if _multiline(c)):
        old = "" if c.before is MISSING else str(c.before)
        new = "" if c.after is MISSING else str(c.after)
        body = difflib.unified_diff(old.splitlines(), new.splitlines(), "before", "after",
                                    lineterm="", n=2)
        lines += [f"`{c.path}`:", "", "```diff", *list(body)[2:], "```", ""]
    return lines


def _inputs_block(r: dict) -> list[str]:
    text = json.dumps(r.get("inputs") or {}, indent=2, sort_keys=True)
    return ["<details><summary>inputs</summary>", "", "```json", text, "```", "", "</details>",
            ""]


def to_markdown(d: GraphDiff, *, before_label: str, after_label: str = "working tree") -> str:
    lines = [MARKER.format(stack=d.stack),
             f"### Infrastructure diff — stack `{d.stack}`",
             "",
             f"`{before_label}` → `{after_label}`, rendered offline under Pulumi mocks "
             f"(`python -m infra.render --diff-against`); secrets shown as `{SECRET}`.",
             ""]
    if d.empty:
        lines += ["**No changes.** The program declares the same resources with the same "
                  "inputs.", ""]
        return "\n".join(lines)
    replacing = [c for c in d.changed if c.replaces]
    lines += [f"**{len(d.added)} to add, {len(d.changed)} to change, {len(replacing)} to "
              f"replace, {len(d.removed)} to delete** ({d.before_count} → {d.after_count} "
              f"resources)", ""]
    refused = [c for c in replacing if c.protect] + [r for r in d.removed if r.get("protect")]
    if refused:
        names = ", ".join(f"`{x.name if isinstance(x, Changed) else x['name']}`"
                          for x in refused)
        lines += [f"> ⚠️ **The engine will refuse this update**: protected resources would be "
                  f"replaced or deleted ({names}). Data lives there; see docs/pulumi.md.", ""]
    if d.added:
        lines += ["#### ➕ Added", ""]
        for r in d.added:
            lines += [f"- `{r['type']}` **{r['name']}**"
                      + (f" (parent `{r['parent']}`)" if r.get("parent") else ""), ""]
            lines += _inputs_block(r)
    if d.removed:
        lines += ["#### ➖ Removed", ""]
        lines += [f"- `{r['type']}` **{r['name']}**"
                  + ("  ⚠️ protected" if r.get("protect") else "")
                  + ("  (kept in the cloud: retainOnDelete)" if r.get("retainOnDelete") else "")
                  for r in d.removed]
        lines.append("")
    if d.changed:
        lines += ["#### ✏️ Changed", ""]
        for c in d.changed:
            head = f"**`{c.type}` {c.name}**"
            if c.replaces:
                head += " — **replace**" + ("  ⚠️ protected: refused" if c.protect else "")
            lines += [head, ""]
            for why in c.replace_because:
                lines.append(f"- replaced because `{why.split(': ', 1)[0]}` changed: "
                             f"{why.split(': ', 1)[1]}")
            if c.ignored:
                lines.append("- not applied (ignoreChanges): "
                             + ", ".join(f"`{p}`" for p in c.ignored[:10])
                             + (" …" if len(c.ignored) > 10 else ""))
            if c.replace_because or c.ignored:
                lines.append("")
            lines += _change_block(c.changes)
    if d.outputs:
        lines += ["#### Stack outputs", ""]
        lines += _change_block(d.outputs, "Output")
    return "\n".join(lines).rstrip() + "\n"


def diff_against(ref: str, stack: str, args: Sequence[str] = (), repo: Path = REPO,
                 root: Path | None = None) -> str:
    """Markdown diff of the stack's graph: `ref` vs. the working tree at `root` (default: the
    repository). `args` are extra infra.render options given to both sides (e.g. --set)."""
    commit = resolve(ref, repo)
    before = render_at(commit, stack, args, repo)
    after = render_tree(root or repo, stack, args)
    label = ref if ref.startswith(commit[:7]) else f"{ref} ({commit[:7]})"
    return to_markdown(diff_graphs(before, after), before_label=label)
