"""The value types of the stack's configuration (infra/stack_config.py): Kubernetes quantities,
cron schedules, resources, schedules, Job deadlines and the DR restore. Pure pydantic models;
stack_config.py re-exports them."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from infra.cron import CHECK_DEADLINE_MAX_SECONDS

_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_CRON_FIELD = re.compile(r"^(\*|[0-9]+(-[0-9]+)?)(/[0-9]+)?(,(\*|[0-9]+(-[0-9]+)?)(/[0-9]+)?)*$")
_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _quantity(v: str) -> str:
    if not _QUANTITY.match(v):
        raise ValueError(f"not a Kubernetes quantity such as 500m, 2Gi (got {v!r})")
    return v


def _cron(v: str) -> str:
    fields = v.split()
    if len(fields) != 5:
        raise ValueError(f"a cron schedule has 5 fields: minute hour day month weekday (got {v!r})")
    for f, (lo, hi) in zip(fields, _CRON_RANGES, strict=True):
        if not _CRON_FIELD.match(f):
            raise ValueError(f"bad cron field {f!r} in {v!r}")
        for n in re.findall(r"[0-9]+", re.sub(r"/[0-9]+", "", f)):
            if not lo <= int(n) <= hi:
                raise ValueError(f"cron field {f!r} out of range {lo}-{hi} in {v!r}")
    return v


Quantity = Annotated[str, AfterValidator(_quantity)]
Cron = Annotated[str, AfterValidator(_cron)]


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=False, extra="forbid",
                              frozen=True)


class Resources(_Model):
    """Requests; limits default to the requests (the database gets Guaranteed QoS)."""

    cpu: Quantity
    memory: Quantity
    cpu_limit: Quantity | None = None
    memory_limit: Quantity | None = None

    def k8s(self) -> dict[str, dict[str, str]]:
        return {
            "requests": {"cpu": self.cpu, "memory": self.memory},
            "limits": {"cpu": self.cpu_limit or self.cpu,
                       "memory": self.memory_limit or self.memory},
        }


class Schedules(_Model):
    """CronJob schedules (UTC). Backups: full weekly, differential on the other days."""

    embed: Cron = "*/5 * * * *"
    replicate: Cron = "*/15 * * * *"
    retention: Cron = "30 2 * * *"
    backup_full: Cron = "0 3 * * 0"
    backup_diff: Cron = "0 3 * * 1-6"
    # `backup --check`: archiving failing or stalled -> a failed Job, which alerting watches.
    backup_check: Cron = "*/15 * * * *"

    @model_validator(mode="after")
    def _distinct_backups(self) -> Schedules:
        if self.backup_full == self.backup_diff:
            raise ValueError("backupFull and backupDiff must not run at the same times")
        return self





class JobDeadlines(_Model):
    """activeDeadlineSeconds of each CronJob's Job: what the job needs, and always shorter than
    its schedule's shortest interval (checked against `schedules`), so a hung run is stopped
    before the next one is due instead of silencing it (concurrencyPolicy Forbid)."""

    embed: int = Field(240, ge=60, le=86400)
    replicate: int = Field(600, ge=60, le=86400)
    retention: int = Field(2 * 3600, ge=60, le=86400)
    # The stack's backup budget: a full backup that has not finished by then has failed.
    backup_full: int = Field(4 * 3600, ge=300, le=7 * 86400)
    backup_diff: int = Field(2 * 3600, ge=300, le=86400)
    # An alarm: minutes (pgBackRest's check is bounded by TICKSTACK_ARCHIVE_CHECK_SECONDS).
    backup_check: int = Field(180, ge=60, le=CHECK_DEADLINE_MAX_SECONDS)


class Restore(_Model):
    """Disaster-recovery rebuild: restore the primary from the backup bucket (PITR)."""

    target_time: datetime = Field(description="Point in time to recover to (ISO 8601, with zone).")
    backup_set: str | None = Field(
        None, pattern=r"^[0-9]{8}-[0-9]{6}F(_[0-9]{8}-[0-9]{6}[DI])?$",
        description="pgBackRest backup set label to restore from (default: the latest before "
        "the target time).")

    @field_validator("target_time")
    @classmethod
    def _aware_past(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("give the time zone, e.g. 2025-03-01T12:00:00Z")
        if v > datetime.now(UTC):
            raise ValueError("the target time is in the future")
        return v

    @property
    def target_iso(self) -> str:
        return self.target_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")
