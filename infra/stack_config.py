"""The stack's configuration, read once into one typed, validated object.

Every `tickstack:*` key of `Pulumi.<stack>.yaml` is a field below (camelCase alias = config key).
`load()` reads them all before the program declares any resource; a wrong, missing or unknown
key fails with a message that names it, e.g.

    tickstack:replicaInstanceClass: must look like db.<family>.<size> (got 'm5.large')

dev and prod differ only through these values (Pulumi.dev.yaml, Pulumi.prod.yaml).
"""

from __future__ import annotations

import difflib
import json
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pulumi import RunError
from pydantic import (
    Field,
    ValidationError,
    field_validator,
)
from pydantic.alias_generators import to_camel

from infra import versions
from infra.cron import CHECK_DEADLINE_MAX_SECONDS, min_interval_seconds

# The value types, re-exported: components and tests import them from here.
from infra.stack_values import (
    _DNS_LABEL,
    JobDeadlines,
    Quantity,
    Resources,
    Restore,
    Schedules,
    _Model,
)
from workers.core.markets import MarketName

NAMESPACE = "tickstack"  # the config namespace: keys are "tickstack:<key>"
# Keys that named versions per stack; the version table names them once for every stack.
RETIRED_KEYS = {
    "primaryImage": "the primary image is the version table's (scripts/versions.env: "
                    "PRIMARY_IMAGE_REPOSITORY, PRIMARY_IMAGE_DIGEST); to pull it from a mirror, "
                    "set tickstack:primaryImageRepository",
    "replicaEngineVersion": "the RDS engine major is the version table's (scripts/versions.env: "
                            "RDS_ENGINE_MAJOR)",
}
SECRET_KEYS = frozenset({"kubeconfig"})  # only ever read as Pulumi secrets
# What a cluster stack reference (or explicit config) must provide.
CLUSTER_KEYS = ("kubeconfig", "oidcProviderArn", "oidcProviderUrl", "vpcId", "vpcCidr",
                "privateSubnetIds", "clusterSecurityGroupId")


__all__ = ["CHECK_DEADLINE_MAX_SECONDS", "ConfigError", "JobDeadlines", "Resources", "Restore",
           "Schedules", "StackConfig", "load", "validate"]


class ConfigError(RunError):
    """A configuration problem; the message names the key(s) and what is expected.

    A RunError: Pulumi prints the message alone, without a traceback."""


class StackConfig(_Model):
    """All `tickstack:*` keys. Field aliases are the config keys."""

    # -- the Kubernetes cluster and its network: an input, not created here ------------------
    cluster_stack: str | None = Field(
        None, pattern=r"^organization/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$",
        description="Stack reference organization/project/stack whose outputs describe the "
        "cluster (the S3 state backend names every stack's organization `organization`).")
    oidc_provider_arn: str | None = Field(None, pattern=r"^arn:aws[a-z-]*:iam::[0-9]{12}:"
                                                        r"oidc-provider/.+$")
    oidc_provider_url: str | None = Field(None, pattern=r"^(https://)?oidc\.eks\.[a-z0-9-]+\."
                                                        r"amazonaws\.com(\.cn)?/id/[A-Za-z0-9]+$")
    vpc_id: str | None = Field(None, pattern=r"^vpc-[0-9a-f]+$")
    vpc_cidr: str | None = Field(None, pattern=r"^[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}$")
    private_subnet_ids: list[Annotated[str, Field(pattern=r"^subnet-[0-9a-f]+$")]] | None = Field(
        None, min_length=2)
    cluster_security_group_id: str | None = Field(None, pattern=r"^sg-[0-9a-f]+$")
    namespace: str = "tickstack"

    # -- images -----------------------------------------------------------------------------
    worker_image_tag: str = Field(
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$",
        description="The worker image's tag in the stack's ECR repository: the git commit SHA "
        "CI built it from (CI sets it on every deploy).")
    worker_image_digest: str | None = Field(
        None, pattern=r"^sha256:[0-9a-f]{64}$",
        description="The image's digest as pushed (CI sets it; prod gets dev's: the exact "
        "image dev ran). Unset: looked up in ECR by the tag. Pods always run it by digest.")
    # The primary's image and the replica's engine come from the version table
    # (scripts/versions.env), never from a stack: every stack runs the same versions. A stack
    # may pull the table's image from a mirror (e.g. an ECR pull-through cache), same digest.
    primary_image_repository: str | None = Field(
        None, pattern=r"^[a-z0-9][a-z0-9./_-]*$",
        description="Where to pull the primary image from (default: the version table's "
        "PRIMARY_IMAGE_REPOSITORY); the tag and digest are the table's.")

    # -- primary (TimescaleDB StatefulSet) ----------------------------------------------------
    primary_storage_size: Quantity = Field(
        "20Gi", description="The primary's volume; a bigger value grows the volume in place.")
    primary_storage_class: str | None = Field(
        None, description="An existing StorageClass for the primary's volume instead of the "
        "one tickstack creates (EBS gp3, encrypted, reclaimPolicy Retain, expansion allowed); "
        "it must keep volumes and allow expansion too.")
    primary_resources: Resources = Resources(cpu="500m", memory="2Gi")
    primary_shared_buffers: str = Field("512MB", pattern=r"^[0-9]+(kB|MB|GB)$")
    primary_max_connections: int = Field(100, ge=20, le=5000)
    primary_max_unavailable: int = Field(
        1, ge=0, le=1,
        description="PodDisruptionBudget: 0 blocks voluntary evictions of the primary.")
    primary_startup_seconds: int = Field(
        1800, ge=60, le=86400,
        description="How long Postgres may take to start (WAL replay after a restore); "
        "Pulumi waits that long (plus awaitMarginSeconds) for the StatefulSet.")
    pgbackrest_resources: Resources = Resources(cpu="250m", memory="256Mi", memoryLimit="1Gi")
    migrate_timeout_seconds: int = Field(
        3600, ge=300, le=86400,
        description="Deadline of the migrations Job (and the stanza Job); Pulumi waits as long.")
    restore_timeout_seconds: int = Field(
        6 * 3600, ge=600, le=7 * 86400,
        description="Deadline of the DR landing-replay Job; Pulumi waits as long.")
    primary_major_upgrade: bool = Field(
        False, description="The primary's in-place PostgreSQL major upgrade (docs/upgrading.md): "
        "true scales the primary's StatefulSet to 0, pauses the writers and runs the upgrade "
        "Job on its volume; false again brings the primary back on the upgraded data.")
    primary_major_upgrade_timeout_seconds: int = Field(
        6 * 3600, ge=600, le=7 * 86400,
        description="Deadline of the major upgrade Job; Pulumi waits as long.")
    await_margin_seconds: int = Field(
        600, ge=60, le=7200,
        description="Added to each deadline for scheduling and image pulls before Pulumi "
        "gives up waiting.")

    # -- replica (RDS for PostgreSQL + pgvector) ----------------------------------------------
    replica_instance_class: str = Field("db.t4g.medium")
    replica_allocated_storage_gb: int = Field(20, ge=20, le=65536)
    replica_max_allocated_storage_gb: int = Field(100, ge=20, le=65536)
    replica_multi_az: bool = False
    replica_backup_retention_days: int = Field(7, ge=1, le=35)
    replica_skip_final_snapshot: bool = False
    replica_apply_immediately: bool = Field(
        False, description="Apply the replica's changes at once instead of in its maintenance "
        "window; for its major upgrade (docs/upgrading.md), then back to false.")
    replica_source_security_group_ids: list[Annotated[str, Field(pattern=r"^sg-[0-9a-f]+$")]] = \
        Field(default_factory=list, description="Security groups admitted to the replica on "
              "5432 besides the cluster's (node groups, security groups for pods).")

    # -- safety ------------------------------------------------------------------------------
    deletion_protection: bool = True
    protect_data: bool = Field(
        True, description="Pulumi `protect` on everything that holds data (the KMS key, the "
        "buckets, RDS, the namespace, the primary's StatefulSet and StorageClass): `pulumi "
        "destroy` and replacements refuse.")

    # -- storage lifecycle ---------------------------------------------------------------------
    landing_ia_after_days: int = Field(30, ge=30)
    landing_glacier_ir_after_days: int = Field(120, ge=60)
    landing_noncurrent_expire_days: int = Field(30, ge=1)
    backup_retention_full: int = Field(2, ge=1, le=50)
    backup_retention_diff: int = Field(7, ge=1, le=100)
    backup_noncurrent_expire_days: int = Field(7, ge=1)

    # -- workers -----------------------------------------------------------------------------
    schedules: Schedules = Schedules()
    job_deadlines: JobDeadlines = JobDeadlines()
    stream_url: str = "wss://stream.binance.com:9443/ws/btcusdt@trade"
    stream_symbol: str = Field("BTCUSDT", pattern=r"^[A-Z0-9]{5,20}$")
    # Named, not guessed: the stream worker checks it against the URL's host at start.
    stream_market: MarketName = "spot"  # the workers' market registry (workers/core/markets.py)
    ingest_grace_period_seconds: int = Field(60, ge=10, le=600)
    ingest_resources: Resources = Resources(cpu="250m", memory="512Mi", memoryLimit="1Gi")
    job_resources: Resources = Resources(cpu="250m", memory="512Mi", memoryLimit="2Gi")
    log_format: Literal["json", "console"] = "json"

    # -- disaster recovery ----------------------------------------------------------------------
    restore: Restore | None = None

    @field_validator("namespace")
    @classmethod
    def _ns(cls, v: str) -> str:
        if not _DNS_LABEL.match(v) or v.startswith("kube-"):
            raise ValueError(f"must be a DNS-1123 label not starting with kube- (got {v!r})")
        return v

    @field_validator("replica_instance_class")
    @classmethod
    def _instance_class(cls, v: str) -> str:
        if not re.match(r"^db\.[a-z0-9]+\.[a-z0-9]+$", v):
            raise ValueError(f"must look like db.<family>.<size>, e.g. db.t4g.medium (got {v!r})")
        return v

    @field_validator("stream_url")
    @classmethod
    def _wss(cls, v: str) -> str:
        u = urlparse(v)
        if u.scheme != "wss" or not u.hostname:
            raise ValueError(f"a wss:// URL (got {v!r})")
        return v

    @property
    def primary_image(self) -> str:
        """The primary's image reference, from the version table (by digest once recorded)."""
        return versions.load().primary_image(self.primary_image_repository)

    @property
    def replica_engine_version(self) -> str:
        """The RDS engine version: the version table's major only (minors upgrade themselves)."""
        return versions.load().rds_engine_version

    @property
    def stream_port(self) -> int:
        return urlparse(self.stream_url).port or 443


# --- reading ---------------------------------------------------------------------------------


def _deadline_problems(cfg: StackConfig) -> list[str]:
    """Each CronJob's deadline ends before its next run is due (or a hung run silences the
    next ones)."""
    out = []
    for name in JobDeadlines.model_fields:
        key = to_camel(name)
        schedule = getattr(cfg.schedules, name)
        interval = min_interval_seconds(schedule)
        deadline = getattr(cfg.job_deadlines, name)
        if deadline >= interval:
            out.append(f"{NAMESPACE}:jobDeadlines.{key}: {deadline} s is not shorter than "
                       f"the shortest interval of schedules.{key} ({schedule!r}: {interval} s)")
    return out


FIELDS_BY_KEY = {f.alias: name for name, f in StackConfig.model_fields.items()}
KNOWN_KEYS = frozenset(FIELDS_BY_KEY) | SECRET_KEYS


def _raw_value(key: str, value: Any) -> Any:
    """Pulumi hands structured config (objects, lists) over as JSON text."""
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise ConfigError(f"{NAMESPACE}:{key}: not valid JSON: {value[:60]!r}") from None
    return value


def validate(raw: dict[str, Any], *, kubeconfig_given: bool,
             region: str | None) -> StackConfig:
    """Validate `tickstack:*` values (key without namespace -> value) into a StackConfig.

    Raises ConfigError naming every offending key.
    """
    problems: list[str] = []
    if not region:
        problems.append("aws:region: required (the AWS region, e.g. eu-west-1)")
    elif not re.match(r"^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", region):
        problems.append(f"aws:region: not an AWS region name (got {region!r})")
    for k in sorted(set(raw) & set(RETIRED_KEYS)):
        problems.append(f"{NAMESPACE}:{k}: not a stack setting any more: {RETIRED_KEYS[k]}")
    unknown = sorted(set(raw) - KNOWN_KEYS - set(RETIRED_KEYS))
    for k in unknown:
        close = difflib.get_close_matches(k, sorted(KNOWN_KEYS), n=1)
        problems.append(f"{NAMESPACE}:{k}: unknown key"
                        + (f" (did you mean {NAMESPACE}:{close[0]}?)" if close else ""))
    values = {k: _raw_value(k, v) for k, v in raw.items() if k in FIELDS_BY_KEY}
    cfg: StackConfig | None = None
    try:
        cfg = StackConfig.model_validate(values)
    except ValidationError as e:
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(stack)"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "missing":
                field = StackConfig.model_fields.get(FIELDS_BY_KEY.get(str(err["loc"][0]), ""))
                msg = "required" + (f" ({field.description})" if field and field.description
                                    else "")
            elif "input" in err and err["type"] not in ("value_error",) and not isinstance(
                    err["input"], dict | list):
                msg += f" (got {err['input']!r})"
            problems.append(f"{NAMESPACE}:{key}: {msg}")
    problems += _version_problems()
    if cfg is not None:
        problems += _cluster_problems(cfg, kubeconfig_given)
        if cfg.landing_glacier_ir_after_days < cfg.landing_ia_after_days + 30:
            problems.append(f"{NAMESPACE}:landingGlacierIrAfterDays: must be at least 30 days "
                            f"after landingIaAfterDays ({cfg.landing_ia_after_days}), as S3 "
                            f"requires (got {cfg.landing_glacier_ir_after_days})")
        problems += _deadline_problems(cfg)
        if cfg.primary_major_upgrade and cfg.restore is not None:
            problems.append(f"{NAMESPACE}:primaryMajorUpgrade: not together with "
                            f"{NAMESPACE}:restore (a rebuild restores a backup of the table's "
                            f"major; upgrade first, or restore into the previous image)")
        if cfg.replica_max_allocated_storage_gb < cfg.replica_allocated_storage_gb:
            problems.append(f"{NAMESPACE}:replicaMaxAllocatedStorageGb: must be at least "
                            f"replicaAllocatedStorageGb ({cfg.replica_allocated_storage_gb})")
    if problems:
        raise ConfigError("invalid stack configuration:\n  " + "\n  ".join(problems))
    assert cfg is not None
    return cfg


def _version_problems() -> list[str]:
    """The version table must parse, and a recorded image digest must be for its versions."""
    try:
        v = versions.load()
    except (OSError, versions.VersionTableError) as e:
        return [f"version table: {e}"]
    if v.primary_image_stale:
        return [f"version table: PRIMARY_IMAGE_DIGEST was recorded for "
                f"{v.primary_image_recorded_tag}, but the table's versions make "
                f"{v.primary_image_tag}: run the primary-image workflow and merge the pull "
                f"request it opens (docs/upgrading.md)"]
    return []


def _cluster_problems(cfg: StackConfig, kubeconfig_given: bool) -> list[str]:
    if cfg.cluster_stack and kubeconfig_given:
        return [f"{NAMESPACE}:kubeconfig: give either {NAMESPACE}:clusterStack or "
                f"{NAMESPACE}:kubeconfig, not both"]
    if cfg.cluster_stack:
        return []  # the stack reference provides what config does not override
    if not kubeconfig_given:
        return [f"{NAMESPACE}:clusterStack: required unless {NAMESPACE}:kubeconfig is set "
                f"(the cluster is an input: a stack reference org/project/stack, or a "
                f"kubeconfig secret plus the cluster's network and OIDC provider)"]
    out = []
    for key in CLUSTER_KEYS[1:]:
        if getattr(cfg, FIELDS_BY_KEY[key]) is None:
            out.append(f"{NAMESPACE}:{key}: required when the cluster is given by "
                       f"{NAMESPACE}:kubeconfig instead of {NAMESPACE}:clusterStack")
    return out


def load() -> tuple[StackConfig, str]:
    """Read every `tickstack:*` key from the running Pulumi program's configuration.

    Returns the validated config and the AWS region. The kubeconfig (a secret) is not part of
    the model: read it with `kubeconfig()`.
    """
    from pulumi.runtime import config as rc

    allconf: dict[str, Any] = {**rc.get_config_env(), **rc.CONFIG.get()}
    prefix = NAMESPACE + ":"
    raw = {k.removeprefix(prefix): v for k, v in allconf.items()
           if k.startswith(prefix) and k.removeprefix(prefix) not in SECRET_KEYS}
    kube_given = bool(allconf.get(prefix + "kubeconfig"))
    region = allconf.get("aws:region")
    return validate(raw, kubeconfig_given=kube_given, region=region), region


def kubeconfig():
    """The kubeconfig from config, as a Pulumi secret (None when a stack reference gives it)."""
    import pulumi

    return pulumi.Config(NAMESPACE).get_secret("kubeconfig")
