"""Storage: KMS key, landing and backup buckets, image repository (both stacks, under mocks)."""

from __future__ import annotations

import json

import pytest

from infra.offline.mocking import mock_digest
from tests.unit.pulumi_stacks import STACKS, graph, stack_value

S3 = "aws:s3/"
BUCKETS = ("storage-landing", "storage-backup")


def for_bucket(g, type_: str, bucket: str):
    return g.get(S3 + type_, f"{bucket}-" + {
        "bucketVersioning:BucketVersioning": "versioning",
        "bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration":
            "encryption",
        "bucketPublicAccessBlock:BucketPublicAccessBlock": "public-access-block",
        "bucketPolicy:BucketPolicy": "policy",
        "bucketLifecycleConfiguration:BucketLifecycleConfiguration": "lifecycle",
        "bucketOwnershipControls:BucketOwnershipControls": "ownership",
    }[type_]).plain


def bucket_name(g, bucket: str) -> str:
    return g.outputs["landingBucket" if bucket.endswith("landing") else "backupBucket"]


@pytest.mark.parametrize("stack", STACKS)
def test_kms_key_rotates(stack):
    key = graph(stack).get("aws:kms/key:Key", "storage-key").plain
    assert key["enableKeyRotation"] is True
    assert key["deletionWindowInDays"] >= 7


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("bucket", BUCKETS)
def test_bucket_is_encrypted_with_the_stack_key(stack, bucket):
    g = graph(stack)
    sse = for_bucket(g, "bucketServerSideEncryptionConfiguration:"
                        "BucketServerSideEncryptionConfiguration", bucket)
    assert sse["bucket"] == bucket_name(g, bucket)
    [rule] = sse["rules"]
    assert rule["applyServerSideEncryptionByDefault"] == {
        "sseAlgorithm": "aws:kms", "kmsMasterKeyId": g.outputs["kmsKeyArn"]}
    assert rule["bucketKeyEnabled"] is True


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("bucket", BUCKETS)
def test_bucket_is_versioned_private_and_acl_free(stack, bucket):
    g = graph(stack)
    v = for_bucket(g, "bucketVersioning:BucketVersioning", bucket)
    assert v["bucket"] == bucket_name(g, bucket)
    assert v["versioningConfiguration"]["status"] == "Enabled"
    pab = for_bucket(g, "bucketPublicAccessBlock:BucketPublicAccessBlock", bucket)
    assert pab["bucket"] == bucket_name(g, bucket)
    for flag in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls",
                 "restrictPublicBuckets"):
        assert pab[flag] is True, flag
    own = for_bucket(g, "bucketOwnershipControls:BucketOwnershipControls", bucket)
    assert own["rule"]["objectOwnership"] == "BucketOwnerEnforced"


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("bucket", BUCKETS)
def test_bucket_policy_denies_plain_http(stack, bucket):
    g = graph(stack)
    pol = for_bucket(g, "bucketPolicy:BucketPolicy", bucket)
    name = bucket_name(g, bucket)
    assert pol["bucket"] == name
    doc = json.loads(pol["policy"])
    tls = [s for s in doc["Statement"]
           if s["Condition"].get("Bool", {}).get("aws:SecureTransport") == "false"]
    assert len(tls) == 1
    [s] = tls
    assert (s["Effect"], s["Principal"], s["Action"]) == ("Deny", "*", "s3:*")
    assert sorted(s["Resource"]) == sorted([f"arn:aws:s3:::{name}", f"arn:aws:s3:::{name}/*"])
    # Nothing in the policy allows anything: it only denies.
    assert {s["Effect"] for s in doc["Statement"]} == {"Deny"}


@pytest.mark.parametrize("stack", STACKS)
def test_the_kms_only_upload_rule_does_not_deny_default_encryption(stack):
    """Uploads without an SSE header get the bucket default (KMS): the deny needs the header."""
    pol = json.loads(for_bucket(graph(stack), "bucketPolicy:BucketPolicy",
                                "storage-landing")["policy"])
    [s] = [s for s in pol["Statement"] if s["Sid"] == "DenyNonKmsEncryption"]
    assert s["Condition"]["Null"] == {"s3:x-amz-server-side-encryption": "false"}
    assert s["Condition"]["StringNotEquals"] == {"s3:x-amz-server-side-encryption": "aws:kms"}


@pytest.mark.parametrize("stack", STACKS)
def test_landing_lifecycle_tiers_and_expires_old_versions_from_config(stack):
    [rule] = for_bucket(graph(stack), "bucketLifecycleConfiguration:"
                                      "BucketLifecycleConfiguration", "storage-landing")["rules"]
    assert rule["status"] == "Enabled"
    assert [(t["storageClass"], t["days"]) for t in rule["transitions"]] == [
        ("STANDARD_IA", stack_value(stack, "landingIaAfterDays")),
        ("GLACIER_IR", stack_value(stack, "landingGlacierIrAfterDays")),
    ]
    assert rule["noncurrentVersionExpiration"]["noncurrentDays"] == stack_value(
        stack, "landingNoncurrentExpireDays")
    assert "expiration" not in rule  # landing is the source of truth: current objects stay


@pytest.mark.parametrize("stack", STACKS)
def test_backup_lifecycle_leaves_current_objects_to_pgbackrest(stack):
    [rule] = for_bucket(graph(stack), "bucketLifecycleConfiguration:"
                                      "BucketLifecycleConfiguration", "storage-backup")["rules"]
    assert rule["noncurrentVersionExpiration"]["noncurrentDays"] == stack_value(
        stack, "backupNoncurrentExpireDays")
    assert "transitions" not in rule
    # Only delete markers expire; an age-based expiry of current objects would cut WAL chains.
    assert rule["expiration"] == {"expiredObjectDeleteMarker": True}


@pytest.mark.parametrize("stack", STACKS)
def test_image_repository_scans_on_push_and_is_immutable(stack):
    g = graph(stack)
    repo = g.get("aws:ecr/repository:Repository", "storage-workers-image").plain
    assert repo["imageScanningConfiguration"] == {"scanOnPush": True}
    assert repo["imageTagMutability"] == "IMMUTABLE"
    assert repo["encryptionConfigurations"] == [
        {"encryptionType": "KMS", "kmsKey": g.outputs["kmsKeyArn"]}]
    # Tagged by the commit, run by digest (the digest ECR reports for that tag).
    tag = stack_value(stack, "workerImageTag")
    repo_name = repo.get("name") or g.outputs["imageRepository"].rsplit("/", 1)[1]
    assert g.outputs["workerImage"] == (g.outputs["imageRepository"] + ":" + tag + "@"
                                        + mock_digest(f"{repo_name}:{tag}"))


def test_data_is_protected_in_prod_only():
    for stack, expected in (("dev", False), ("prod", True)):
        g = graph(stack)
        for t, name in (("aws:kms/key:Key", "storage-key"), ("aws:s3/bucket:Bucket", BUCKETS[0]),
                        ("aws:s3/bucket:Bucket", BUCKETS[1]),
                        ("aws:rds/instance:Instance", "replica-db")):
            assert g.get(t, name).protect is expected, (stack, name)
