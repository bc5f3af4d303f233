"""Storage (AWS): the KMS key, the landing and backup buckets, the workers' image repository.

Both buckets: SSE-KMS with the stack's key (bucket keys on), versioned, every public access
blocked, ACLs disabled, and a bucket policy that denies any request not made over TLS (and TLS
older than 1.2) and any upload asking for another kind of encryption.

Lifecycle: landing is the source of truth and is replayed, so its objects only move to cheaper
classes that still read instantly (STANDARD_IA, then GLACIER_IR) and are never expired while
current; overwritten/deleted versions go after a configured time. The backup bucket's current
objects are pgBackRest's to expire (repo1-retention-full/diff): an S3 rule expiring them by age
would break backup and WAL chains, so S3 only removes the versions pgBackRest has deleted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws


@dataclass(frozen=True)
class StorageArgs:
    landing_ia_after_days: int
    landing_glacier_ir_after_days: int
    landing_noncurrent_expire_days: int
    backup_noncurrent_expire_days: int
    protect: bool
    image_keep_count: int = 50


class Storage(pulumi.ComponentResource):
    kms_key_arn: pulumi.Output[str]
    landing_bucket: pulumi.Output[str]
    landing_bucket_arn: pulumi.Output[str]
    backup_bucket: pulumi.Output[str]
    backup_bucket_arn: pulumi.Output[str]
    repository_url: pulumi.Output[str]
    repository_name: pulumi.Output[str]

    def __init__(self, name: str, args: StorageArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tickstack:storage:Storage", name, None, opts)
        keep = pulumi.ResourceOptions(parent=self, protect=args.protect)
        child = pulumi.ResourceOptions(parent=self)

        key = aws.kms.Key(
            f"{name}-key",
            description="tickstack: landing and backup buckets, replica storage, images",
            enable_key_rotation=True,
            deletion_window_in_days=30,
            opts=keep,
        )
        aws.kms.Alias(f"{name}-key-alias", name_prefix="alias/tickstack-",
                      target_key_id=key.key_id, opts=child)
        self.kms_key_arn = key.arn

        landing, self.landing_bucket_arn = self._bucket(
            f"{name}-landing", key, keep,
            lifecycle=[{
                "id": "tiering",
                "status": "Enabled",
                "filter": {},
                "transitions": [
                    {"days": args.landing_ia_after_days, "storage_class": "STANDARD_IA"},
                    {"days": args.landing_glacier_ir_after_days, "storage_class": "GLACIER_IR"},
                ],
                "noncurrent_version_expiration": {
                    "noncurrent_days": args.landing_noncurrent_expire_days},
                "abort_incomplete_multipart_upload": {"days_after_initiation": 7},
            }],
        )
        backup, self.backup_bucket_arn = self._bucket(
            f"{name}-backup", key, keep,
            lifecycle=[{
                "id": "pgbackrest-expired",
                "status": "Enabled",
                "filter": {},
                "noncurrent_version_expiration": {
                    "noncurrent_days": args.backup_noncurrent_expire_days},
                "expiration": {"expired_object_delete_marker": True},
                "abort_incomplete_multipart_upload": {"days_after_initiation": 7},
            }],
        )
        self.landing_bucket = landing.bucket
        self.backup_bucket = backup.bucket

        repo = aws.ecr.Repository(
            f"{name}-workers-image",
            image_tag_mutability="IMMUTABLE",
            image_scanning_configuration={"scan_on_push": True},
            encryption_configurations=[{"encryption_type": "KMS", "kms_key": key.arn}],
            force_delete=False,
            opts=child,
        )
        aws.ecr.LifecyclePolicy(
            f"{name}-workers-image-lifecycle",
            repository=repo.name,
            policy=json.dumps({"rules": [
                {"rulePriority": 1, "description": "untagged images after 14 days",
                 "selection": {"tagStatus": "untagged", "countType": "sinceImagePushed",
                               "countUnit": "days", "countNumber": 14},
                 "action": {"type": "expire"}},
                {"rulePriority": 2, "description": f"keep the newest {args.image_keep_count}",
                 "selection": {"tagStatus": "any", "countType": "imageCountMoreThan",
                               "countNumber": args.image_keep_count},
                 "action": {"type": "expire"}},
            ]}),
            opts=child,
        )
        self.repository_url = repo.repository_url
        self.repository_name = repo.name

        self.register_outputs({
            "kmsKeyArn": self.kms_key_arn,
            "landingBucket": self.landing_bucket,
            "backupBucket": self.backup_bucket,
            "repositoryUrl": self.repository_url,
        })

    def _bucket(self, name: str, key: aws.kms.Key, keep: pulumi.ResourceOptions,
                lifecycle: list[dict]) -> tuple[aws.s3.Bucket, pulumi.Output[str]]:
        child = pulumi.ResourceOptions(parent=self)
        bucket = aws.s3.Bucket(name, force_destroy=False, opts=keep)
        aws.s3.BucketOwnershipControls(
            f"{name}-ownership", bucket=bucket.id,
            rule={"object_ownership": "BucketOwnerEnforced"}, opts=child)
        pab = aws.s3.BucketPublicAccessBlock(
            f"{name}-public-access-block", bucket=bucket.id,
            block_public_acls=True, block_public_policy=True,
            ignore_public_acls=True, restrict_public_buckets=True, opts=child)
        versioning = aws.s3.BucketVersioning(
            f"{name}-versioning", bucket=bucket.id,
            versioning_configuration={"status": "Enabled"}, opts=child)
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-encryption", bucket=bucket.id,
            rules=[{
                "apply_server_side_encryption_by_default": {
                    "sse_algorithm": "aws:kms", "kms_master_key_id": key.arn},
                "bucket_key_enabled": True,
            }],
            opts=child)
        aws.s3.BucketPolicy(
            f"{name}-policy", bucket=bucket.id, policy=tls_only_policy(bucket.arn),
            # S3 refuses policies while the public access block is being written.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[pab]))
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-lifecycle", bucket=bucket.id, rules=lifecycle,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[versioning]))
        return bucket, bucket.arn


def tls_only_policy(bucket_arn: pulumi.Input[str]) -> pulumi.Output[str]:
    """Deny every request over plain HTTP or TLS < 1.2, and uploads asking for non-KMS SSE."""
    both = [bucket_arn, pulumi.Output.concat(bucket_arn, "/*")]
    return pulumi.Output.json_dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*",
             "Action": "s3:*", "Resource": both,
             "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
            {"Sid": "DenyOutdatedTls", "Effect": "Deny", "Principal": "*",
             "Action": "s3:*", "Resource": both,
             "Condition": {"NumericLessThan": {"s3:TlsVersion": "1.2"}}},
            {"Sid": "DenyNonKmsEncryption", "Effect": "Deny", "Principal": "*",
             "Action": "s3:PutObject", "Resource": pulumi.Output.concat(bucket_arn, "/*"),
             # Both must hold: the header is given, and it is not aws:kms (uploads without it
             # get the bucket's default, SSE-KMS).
             "Condition": {
                 "Null": {"s3:x-amz-server-side-encryption": "false"},
                 "StringNotEquals": {"s3:x-amz-server-side-encryption": "aws:kms"}}},
        ],
    })
