"""What AWS access each workload has: THE table. Pure (no Pulumi), so the IAM policies
(access.py), the policy pack and the tests all read the same rows.

Every workload (Job, CronJob, Deployment, the primary's pod) runs under its own service account
and, when its row is not empty, its own IRSA role whose policy grants exactly its row: the S3
actions its code calls, on the key prefixes it calls them on, and the KMS actions those need
(SSE-KMS buckets). A row is derived from what the code really does:

  landing (workers/landing/store.py, boto3): list_objects_v2 -> s3:ListBucket, get_object ->
  s3:GetObject, put_object (conditional or not) -> s3:PutObject, delete_objects ->
  s3:DeleteObject; keys under raw/ (bucket objects), stream/ (the stream's parts, compacted
  then deleted: workers/landing/parts.py), quarantine/ (rejected rows).
  backup (pgBackRest's S3 driver): GET/HEAD -> s3:GetObject, PUT and multipart uploads ->
  s3:PutObject, LIST -> s3:ListBucket, DELETE and multi-object delete (expire) ->
  s3:DeleteObject; keys under the repository path (pgbackrest/).

tests/integration/test_rendered_workloads.py runs every rendered workload against the local S3
with a recording of its requests and checks each is in its row: a new S3 call in the code
without a row here fails there, and tests/unit/test_pulumi_access.py checks each role grants its
row, no more, no less.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Bucket = Literal["landing", "backup"]

LIST = "s3:ListBucket"
GET = "s3:GetObject"
PUT = "s3:PutObject"
DELETE = "s3:DeleteObject"
OBJECT_ACTIONS = (GET, PUT, DELETE)
S3_ACTIONS = (LIST, *OBJECT_ACTIONS)

# The repository path of pgbackrest.conf (infra/configs.BackupRepo.path), as a key prefix.
PGBACKREST_PREFIX = "pgbackrest/"


@dataclass(frozen=True)
class Grant:
    """S3 actions on the keys under one prefix of one bucket."""

    bucket: Bucket
    prefix: str
    actions: frozenset[str]

    def __post_init__(self) -> None:
        unknown = set(self.actions) - set(S3_ACTIONS)
        if unknown or not self.actions:
            raise ValueError(f"grant on {self.bucket}/{self.prefix}: actions must be a "
                             f"non-empty subset of {S3_ACTIONS}, got {sorted(self.actions)}")
        if not self.prefix.endswith("/") or self.prefix.startswith("/"):
            raise ValueError(f"grant prefix {self.prefix!r}: a key prefix like 'raw/'")


def _g(bucket: Bucket, prefix: str, *actions: str) -> Grant:
    return Grant(bucket, prefix, frozenset(actions))


# identity -> its grants. Identities: the service accounts (tickstack-<identity>).
GRANTS: dict[str, tuple[Grant, ...]] = {
    # The primary's pod: pgBackRest archive-push (WAL) and, for a DR rebuild, the restore
    # init container. Never deletes: expiring is the backup Jobs' (repository host's).
    "db": (_g("backup", PGBACKREST_PREFIX, LIST, GET, PUT),),
    "migrate": (),
    # `backup --stanza-create`: creates (or checks) the stanza's info files.
    "stanza": (_g("backup", PGBACKREST_PREFIX, LIST, GET, PUT),),
    # The live stream: parts written, read back and deleted once compacted into the bucket
    # object (read-merge-write; an old-layout object moved deletes the old key); rejected
    # messages to quarantine/.
    "ingest": (_g("landing", "raw/", LIST, GET, PUT, DELETE),
               _g("landing", "stream/", LIST, GET, PUT, DELETE),
               _g("landing", "quarantine/", PUT)),
    # Catch-up of the replica from landing: reads bucket objects and parts not compacted yet.
    "replicate": (_g("landing", "raw/", LIST, GET),
                  _g("landing", "stream/", LIST, GET)),
    "embed": (),
    "retention": (),
    # Full and differential backups (one workload, two schedules): the repository host writes
    # the backup and expires old ones (retention-full/diff).
    "backup": (_g("backup", PGBACKREST_PREFIX, LIST, GET, PUT, DELETE),),
    # `backup --check`: pgBackRest's check and info, and the landing audit (lists raw/, and
    # reads an object whose ETag differs from the registry's to confirm its SHA-256) — reads only.
    "backup-check": (_g("backup", PGBACKREST_PREFIX, LIST, GET),
                     _g("landing", "raw/", LIST, GET)),
    # The DR rebuild's landing replay: compacts leftover stream parts first (writes the bucket
    # object, deletes the parts), then lists and reads landing.
    "restore": (_g("landing", "raw/", LIST, GET, PUT, DELETE),
                _g("landing", "stream/", LIST, GET, DELETE)),
    # The primary's in-place major upgrade Job (primary.py): `pgbackrest --no-online
    # stanza-upgrade` reads and rewrites the stanza's info files. Never deletes.
    "major-upgrade": (_g("backup", PGBACKREST_PREFIX, LIST, GET, PUT),),
}

# Workload (the Workers table's key) -> identity; the rest are their own.
WORKLOAD_IDENTITY = {"backup-full": "backup", "backup-diff": "backup"}
# Only a disaster-recovery rebuild runs these.
RESTORE_ONLY = frozenset({"restore"})
# Only a stack with primaryMajorUpgrade on runs these.
MAJOR_UPGRADE_ONLY = frozenset({"major-upgrade"})
SA_PREFIX = "tickstack-"


def identity_of(workload: str) -> str:
    ident = WORKLOAD_IDENTITY.get(workload, workload)
    if ident not in GRANTS:
        raise KeyError(f"workload {workload!r} has no row in infra/components/grants.GRANTS: "
                       f"give it one (its S3 actions), even an empty one")
    return ident


def service_account(identity: str) -> str:
    if identity not in GRANTS:
        raise KeyError(f"no identity {identity!r} in infra/components/grants.GRANTS")
    return f"{SA_PREFIX}{identity}"


def identities(*, restore: bool, major_upgrade: bool = False) -> tuple[str, ...]:
    """The identities a stack has (the restore Job's only during a rebuild, the major upgrade
    Job's only while primaryMajorUpgrade is on)."""
    return tuple(i for i in GRANTS if (restore or i not in RESTORE_ONLY)
                 and (major_upgrade or i not in MAJOR_UPGRADE_ONLY))


def actions(identity: str, bucket: Bucket | None = None) -> frozenset[str]:
    return frozenset(a for g in GRANTS[identity] if bucket in (None, g.bucket)
                     for a in g.actions)


def kms_actions(identity: str) -> tuple[str, ...]:
    """What SSE-KMS needs of the key for the row's S3 actions: reading an object decrypts its
    data key (kms:Decrypt); writing one asks a new data key (kms:GenerateDataKey), and a
    multipart upload (pgBackRest's large files) also kms:Decrypt. Nothing else."""
    acts = actions(identity)
    out = set()
    if GET in acts or PUT in acts:
        out.add("kms:Decrypt")
    if PUT in acts:
        out.add("kms:GenerateDataKey")
    return tuple(sorted(out))


def policy_document(identity: str, bucket_arns: dict[str, str], kms_key_arn: str) -> dict:
    """The IAM policy of one identity's role: exactly its row. Object actions on
    `<bucket>/<prefix>*`; s3:ListBucket on the bucket itself, unconditioned — S3 answers a
    GET/HEAD of a missing key with 404 only to a caller who may list the bucket (403 otherwise),
    and the code relies on 404 meaning "not there yet" (Landing.read_if_exists, pgBackRest)."""
    statements = []
    for bucket in sorted({g.bucket for g in GRANTS[identity]}):
        arn = bucket_arns[bucket]
        grants = [g for g in GRANTS[identity] if g.bucket == bucket]
        name = bucket.capitalize()
        if any(LIST in g.actions for g in grants):
            statements.append({"Sid": f"List{name}", "Effect": "Allow", "Action": [LIST],
                               "Resource": arn})
        by_actions: dict[tuple[str, ...], list[str]] = {}
        for g in grants:
            acts = tuple(sorted(set(g.actions) & set(OBJECT_ACTIONS)))
            if acts:
                by_actions.setdefault(acts, []).append(f"{arn}/{g.prefix}*")
        for i, (acts, resources) in enumerate(sorted(by_actions.items())):
            statements.append({"Sid": f"Objects{name}{i}", "Effect": "Allow",
                               "Action": list(acts), "Resource": sorted(resources)})
    kms = kms_actions(identity)
    if kms:
        statements.append({"Sid": "Kms", "Effect": "Allow", "Action": list(kms),
                           "Resource": kms_key_arn})
    return {"Version": "2012-10-17", "Statement": statements}
