"""boto3 S3 client from the settings (credentials the standard AWS ways: env, profile, IRSA)."""

from __future__ import annotations

import boto3
from botocore.config import Config

from workers.core.settings import Settings


def client(settings: Settings):
    return boto3.client(
        "s3", endpoint_url=settings.s3_endpoint_url or None, region_name=settings.aws_region,
        # Landing objects carry their own SHA-256 (checked on replay); a second, per-request
        # CRC costs CPU the database needs on small machines. TLS protects the transfer.
        config=Config(retries={"max_attempts": 5, "mode": "standard"},
                      max_pool_connections=16,
                      request_checksum_calculation="when_required",
                      response_checksum_validation="when_required",
                      s3={"addressing_style": "path" if settings.s3_endpoint_url else "auto"}),
    )
