"""Run the Pulumi program offline, under `pulumi.runtime.set_mocks`, and record its graph.

Pulumi's documented way to unit-test programs: the real program runs, and every resource
registration reaches a mock monitor instead of the engine. The monitor here also records each
resource's parent and dependencies, so the graph (graph.py) can be printed (infra/render.py)
and asserted on (tests/unit/test_pulumi_*.py). The mocks answer with plausible provider
outputs (ARNs, endpoints, generated passwords) so that everything downstream renders with
concrete values.

Mocks are set before the program is imported, as Pulumi's testing guide requires.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import pulumi
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.settings import SETTINGS, set_root_resource
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from infra.offline.graph import Graph, Res, integral

ACCOUNT = "123456789012"
STACK_REFERENCE = "pulumi:pulumi:StackReference"


def example_cluster_outputs(region: str, stack_name: str) -> dict[str, Any]:
    """What a cluster stack reference answers offline (real values come from that stack)."""
    oidc_id = hashlib.sha1(stack_name.encode()).hexdigest()[:32].upper()
    issuer = f"oidc.eks.{region}.amazonaws.com/id/{oidc_id}"
    return {
        "kubeconfig": json.dumps({"apiVersion": "v1", "kind": "Config", "clusters": [],
                                  "contexts": [], "users": []}),
        "oidcProviderArn": f"arn:aws:iam::{ACCOUNT}:oidc-provider/{issuer}",
        "oidcProviderUrl": f"https://{issuer}",
        "vpcId": "vpc-0abc1234def567890",
        "vpcCidr": "10.40.0.0/16",
        "privateSubnetIds": ["subnet-0a1b2c3d4e5f60001", "subnet-0a1b2c3d4e5f60002",
                             "subnet-0a1b2c3d4e5f60003"],
        "clusterSecurityGroupId": "sg-0c1u2s3t4e5r60001",
    }


def mock_password(resource_name: str, length: int = 32) -> str:
    """What the mocks answer for a RandomPassword's `result` (deterministic, for tests)."""
    return hashlib.sha256(f"pw/{resource_name}".encode()).hexdigest()[:length]


def mock_digest(ref: str) -> str:
    """What the mocks answer for an image's digest (deterministic, for tests)."""
    return "sha256:" + hashlib.sha256(f"image/{ref}".encode()).hexdigest()


def mock_pem(kind: str, name: str) -> str:
    """What the mocks answer for a generated key or certificate (a placeholder PEM)."""
    body = hashlib.sha256(f"{kind}/{name}".encode()).hexdigest()
    return f"-----BEGIN MOCK {kind}-----\n{body}\n-----END MOCK {kind}-----\n"


# --- mocks ------------------------------------------------------------------------------------


class TickstackMocks(pulumi.runtime.Mocks):
    """Answers registrations with the inputs plus what the provider would compute."""

    def __init__(self, region: str, cluster_outputs: Mapping[str, Any]):
        self.region = region
        self.cluster_outputs = dict(cluster_outputs)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        t, name = args.typ, args.name
        state = dict(args.inputs)
        suffix = hashlib.sha1(f"{t}/{name}".encode()).hexdigest()[:7]
        rid = f"{name}-{suffix}"
        if t == STACK_REFERENCE:
            return args.resource_id or name, {"name": name, "outputs": self.cluster_outputs,
                                              "secretOutputNames": ["kubeconfig"]}
        if t == "aws:s3/bucket:Bucket":
            state.setdefault("bucket", rid)
            state["arn"] = f"arn:aws:s3:::{state['bucket']}"
            rid = state["bucket"]
        elif t == "aws:kms/key:Key":
            key_id = f"mrk-{suffix}0000000000000000000000000"[:36]
            state.update(keyId=key_id,
                         arn=f"arn:aws:kms:{self.region}:{ACCOUNT}:key/{key_id}")
            rid = key_id
        elif t == "aws:ecr/repository:Repository":
            state.update(name=state.get("name", rid),
                         repositoryUrl=f"{ACCOUNT}.dkr.ecr.{self.region}.amazonaws.com/"
                                       f"{state.get('name', rid)}",
                         arn=f"arn:aws:ecr:{self.region}:{ACCOUNT}:repository/{rid}")
        elif t == "aws:iam/role:Role":
            state.update(name=state.get("name", rid), arn=f"arn:aws:iam::{ACCOUNT}:role/{rid}")
        elif t == "aws:rds/instance:Instance":
            host = f"{rid}.cabc123xyz.{self.region}.rds.amazonaws.com"
            state.update(address=host, endpoint=f"{host}:{int(state.get('port', 5432))}",
                         arn=f"arn:aws:rds:{self.region}:{ACCOUNT}:db:{rid}")
        elif t in ("aws:rds/subnetGroup:SubnetGroup", "aws:rds/parameterGroup:ParameterGroup"):
            state.setdefault("name", rid)
        elif t == "random:index/randomPassword:RandomPassword":
            state["result"] = mock_password(name, int(state.get("length", 32)))
        elif t.startswith("tls:index/"):
            # Stand-ins: the PEM texts are placeholders (a real deploy computes them).
            kind = t.split(":")[-1]
            if kind == "PrivateKey":
                state.update(privateKeyPem=mock_pem("PRIVATE KEY", name),
                             publicKeyPem=mock_pem("PUBLIC KEY", name))
            elif kind == "CertRequest":
                state["certRequestPem"] = mock_pem("CERTIFICATE REQUEST", name)
            elif kind in ("SelfSignedCert", "LocallySignedCert"):
                state.update(certPem=mock_pem("CERTIFICATE", name), readyForRenewal=False)
        elif t.startswith("kubernetes:") and isinstance(state.get("metadata"), dict):
            meta = dict(state["metadata"])
            meta.setdefault("name", rid)  # the provider auto-names objects without a name
            state["metadata"] = meta
        return rid, state

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict:
        if args.token == "aws:ecr/getImage:getImage":
            # The digest ECR reports for a pushed tag (deterministic per repository and tag).
            ref = f"{args.args.get('repositoryName')}:{args.args.get('imageTag')}"
            return {**args.args, "imageDigest": mock_digest(ref), "id": ref}
        return {}


def _duration_seconds(text: str) -> int:
    """A Go duration as Pulumi sends custom timeouts ("1h30m", "600s", "90m") in seconds."""
    import re

    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"([0-9.]+)(h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return int(sum(float(n) * units[u] for n, u in parts))


def _options(request) -> dict:
    """The resource options of a registration that change what the engine does."""
    out: dict = {}
    if getattr(request, "retainOnDelete", False):
        out["retainOnDelete"] = True
    for name in ("ignoreChanges", "replaceOnChanges"):
        values = list(getattr(request, name, []) or [])
        if values:
            out[name] = values
    if getattr(request, "deleteBeforeReplace", False):
        out["deleteBeforeReplace"] = True
    ct = getattr(request, "customTimeouts", None)
    if ct is not None:
        timeouts = {k: _duration_seconds(getattr(ct, k)) for k in ("create", "update", "delete")
                    if getattr(ct, k, "")}
        if timeouts:
            out["customTimeouts"] = timeouts
    return out


def _is_stack(urn: str) -> bool:
    return not urn or urn.split("::")[2] == "pulumi:pulumi:Stack"


class RecordingMonitor(MockMonitor):
    """The mock monitor, also keeping each registration's parent and dependencies."""

    def __init__(self, mocks: pulumi.runtime.Mocks):
        super().__init__(mocks)
        self.records: list[Res] = []
        self.outputs_registered: set[str] = set()  # URNs that called register_outputs

    def _record(self, request, urn: str, custom: bool, deps: list[str]) -> None:
        self.records.append(Res(
            protect=bool(getattr(request, "protect", False)), options=_options(request),
            urn=urn, type=request.type, name=request.name,
            parent=None if _is_stack(request.parent) else request.parent,
            custom=custom, inputs=rpc.deserialize_properties(request.object if hasattr(
                request, "object") else request.properties),
            dependencies=deps, provider=request.provider or None))

    def RegisterResource(self, request):
        resp = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            deps = list(request.dependencies)
            for pd in request.propertyDependencies.values():
                deps.extend(pd.urns)
            self._record(request, resp.urn, bool(request.custom), sorted(set(deps)))
        return resp

    def RegisterResourceOutputs(self, request):
        self.outputs_registered.add(request.urn)
        return super().RegisterResourceOutputs(request)

    def ReadResource(self, request):
        resp = super().ReadResource(request)
        self._record(request, resp.urn, True, [])
        return resp


class _LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append((record.levelname, record.getMessage()))


SDK_MODULES = (
    "pulumi_aws.ec2", "pulumi_aws.ecr", "pulumi_aws.iam", "pulumi_aws.kms", "pulumi_aws.rds",
    "pulumi_aws.s3", "pulumi_aws.vpc", "pulumi_kubernetes.apps.v1", "pulumi_kubernetes.batch.v1",
    "pulumi_kubernetes.core.v1", "pulumi_kubernetes.networking.v1", "pulumi_kubernetes.policy.v1",
    "pulumi_kubernetes.rbac.v1", "pulumi_kubernetes.storage.v1", "pulumi_random", "pulumi_tls",
)


def import_sdks() -> None:
    """Import the provider SDK modules the program uses, silencing their import-time notices.

    Importing `pulumi_aws.s3` defines every class of the module, the deprecated `*V2` ones
    included, and those class bodies warn whether or not a program uses them. Only the
    import is silenced: using a deprecated resource or argument still warns (and is logged by
    the engine), which tests/unit/test_pulumi_program.py checks.
    """
    import importlib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for m in SDK_MODULES:
            # The SDKs import lazily: touching an attribute runs the module's code now.
            _ = getattr(importlib.import_module(m), "_load_now", None)


class ApplyGuard:
    """Notices resources constructed while an `Output.apply` callback runs.

    Wraps every apply callback in a depth counter and every resource constructor in a check;
    the program's callbacks run to completion on one event loop, so the counter is exact.
    """

    def __init__(self) -> None:
        self.depth = 0
        self.found: list[str] = []

    def __enter__(self) -> ApplyGuard:
        guard = self
        self._apply = apply = pulumi.Output.apply
        self._init = init = pulumi.Resource.__init__

        def guarded_apply(out, func, run_with_unknowns: bool = False):
            def inside(*a, **kw):
                guard.depth += 1
                try:
                    return func(*a, **kw)
                finally:
                    guard.depth -= 1

            return apply(out, inside, run_with_unknowns)

        def checked_init(res, t, name, *a, **kw):
            if guard.depth:
                guard.found.append(f"{t} {name}")
            init(res, t, name, *a, **kw)

        pulumi.Output.apply = guarded_apply  # type: ignore[method-assign]
        pulumi.Resource.__init__ = checked_init  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        pulumi.Output.apply = self._apply  # type: ignore[method-assign]
        pulumi.Resource.__init__ = self._init  # type: ignore[method-assign]


def sdk_args_class(type_: str) -> type | None:
    """The provider SDK's argument class for a resource type token (None: not a provider's)."""
    import importlib
    import re

    pkg, mod, name = type_.split(":")
    if pkg == "aws":
        module = "pulumi_aws." + mod.split("/")[0]
    elif pkg == "kubernetes" and "/" in mod:
        group, version = mod.split("/")
        module = f"pulumi_kubernetes.{re.sub(r'[.].*', '', group)}.{version}"
    elif pkg == "random":
        module = "pulumi_random"
    elif pkg == "tls":
        module = "pulumi_tls"
    else:
        return None
    m = importlib.import_module(module)
    return getattr(m, name + "InitArgs", None) or getattr(m, name + "Args", None)


def deprecated_inputs(r: Res) -> list[str]:
    """The SDK's deprecation messages for the arguments this resource was given.

    Resource constructors do not warn about deprecated arguments (the engine does, on a real
    `pulumi up`); the SDK's argument classes do, so the mocks build one from the inputs.
    """
    import inspect
    import re

    cls = sdk_args_class(r.type)
    if cls is None:
        return []
    params = inspect.signature(cls.__init__).parameters
    given = {re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower(): v for k, v in r.plain.items()}
    kwargs = {k: v for k, v in given.items() if k in params}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cls(**kwargs)
    return [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]


def config_strings(config: Mapping[str, Any]) -> dict[str, str]:
    """Config values as Pulumi hands them to a program: strings, structured ones as JSON."""
    out = {}
    for k, v in config.items():
        if isinstance(v, str):
            out[k] = v
        else:
            out[k] = json.dumps(v)
    return out


def run(config: Mapping[str, Any], *, stack: str = "dev", project: str = "tickstack",
        secret_keys: tuple[str, ...] = (), cluster_outputs: Mapping[str, Any] | None = None,
        program: Callable[[], Any] | None = None) -> Graph:
    """Run the program (default: infra.program.main) under mocks with this stack config."""
    import_sdks()
    region = str(config.get("aws:region") or "us-east-1")
    mocks = TickstackMocks(region, cluster_outputs if cluster_outputs is not None
                           else example_cluster_outputs(region, stack))
    monitor = RecordingMonitor(mocks)
    logger = logging.getLogger(f"tickstack.mocks.{id(monitor)}")
    logger.propagate = False
    capture = _LogCapture()
    logger.addHandler(capture)
    set_root_resource(None)  # type: ignore[arg-type]  # a fresh stack for every run
    pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=False,
                             logger=logger, monitor=monitor)
    pulumi.runtime.set_all_config(config_strings(config), list(secret_keys))
    if program is None:
        from infra.program import main as program  # imported after the mocks are set

    result: dict[str, Any] = {}

    def body():
        outs = program() or {}

        async def resolve() -> None:
            for k, v in outs.items():
                o = pulumi.Output.from_input(v)
                result[k] = (await o.future(), await o.is_secret())

        return resolve()

    SETTINGS.rpc_manager.clear()
    SETTINGS.outputs.clear()
    with warnings.catch_warnings(record=True) as caught, ApplyGuard() as guard:
        warnings.simplefilter("always")
        _sync_await(run_pulumi_func(body))
    # Registration order depends on thread scheduling; the graph is sorted for stable output.
    records = sorted(monitor.records, key=lambda r: (r.urn,))
    outputs = {k: integral(v) for k, (v, _) in result.items()}
    found = [(w.category.__name__, str(w.message)) for w in caught]
    found += [("DeprecationWarning", f"{r.type} {r.name}: {m}")
              for r in records if r.custom for m in deprecated_inputs(r)]
    return Graph(stack=stack, project=project, resources=records, outputs=outputs,
                 secret_outputs={k for k, (_, s) in result.items() if s},
                 log=capture.messages, outputs_registered=monitor.outputs_registered,
                 warnings=found,
                 created_in_apply=guard.found)
