"""The version table (scripts/versions.env), read by Python.

One file holds every version of the database stack; bash reads the same file with `.`. This
module parses it strictly (KEY=value, no quoting or expansion, so both readers agree), checks
what must hold between rows, and derives what other places need: PostgreSQL's directories,
the primary image's reference and tag, the RDS engine version.

`python -m infra.versions` prints the table; `--build-args primary|worker` prints the
`--build-arg` options for an image build; `--get KEY` prints one value (for CI steps).
Stdlib only: CI steps run it before any dependency is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TABLE = REPO / "scripts" / "versions.env"

_LINE = re.compile(r"^([A-Z][A-Z0-9_]*)=([^\s'\"$`\\;#]*)$")
_SEMVER = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+$")
_MAJOR = re.compile(r"^[1-9][0-9]$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9./_-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?$")

# Build args each image's Dockerfile declares (everything else in the table stays out of it).
BUILD_ARGS = {
    "primary": ("PRIMARY_BASE_IMAGE", "PG_MAJOR", "POSTGRESQL_VERSION", "TIMESCALEDB_VERSION",
                "PGVECTOR_VERSION", "PGBACKREST_VERSION", "PG_PREVIOUS_MAJOR",
                "TIMESCALEDB_PREVIOUS_VERSION"),
    "worker": ("WORKER_BASE_IMAGE", "PG_MAJOR", "PGBACKREST_VERSION"),
}


class VersionTableError(ValueError):
    """The table is malformed or inconsistent; the message names the file, line and key."""


@dataclass(frozen=True)
class Versions:
    pg_major: str
    postgresql: str  # the full release, e.g. 18.6
    postgresql_sha256: str
    timescaledb: str
    timescaledb_sha256: str
    timescaledb_tree_sha256: str
    pgvector: str
    pgvector_sha256: str
    pgvector_tree_sha256: str
    # The build an in-place major upgrade comes from (docs/upgrading.md).
    pg_previous_major: str
    timescaledb_previous: str
    timescaledb_previous_sha256: str
    timescaledb_previous_tree_sha256: str
    pgvector_previous: str
    pgbackrest: str
    rds_engine_major: str
    primary_image_repository: str
    primary_image_digest: str  # "" until the primary-image workflow records one
    primary_image_recorded_tag: str
    primary_base_image: str
    worker_base_image: str
    raw: tuple[tuple[str, str], ...]

    # --- derived ---------------------------------------------------------------------------

    @property
    def pg_bindir(self) -> Path:
        """Where scripts/install_system.sh (locally and in the primary image) installs this
        major's server binaries: Debian's layout."""
        return Path(f"/usr/lib/postgresql/{self.pg_major}/bin")

    @property
    def pg_previous_bindir(self) -> Path:
        """The previous major's binaries (Debian's package), which pg_upgrade starts from."""
        return Path(f"/usr/lib/postgresql/{self.pg_previous_major}/bin")

    @property
    def rds_engine_version(self) -> str:
        """What aws.rds.Instance gets: the major only (RDS upgrades minors automatically)."""
        return self.rds_engine_major

    @property
    def rds_parameter_family(self) -> str:
        return f"postgres{self.rds_engine_major}"

    @property
    def primary_image_tag(self) -> str:
        """The tag CI pushes the primary image as: every component version in it."""
        return (f"pg{self.postgresql}-ts{self.timescaledb}-pgvector{self.pgvector}"
                f"-pgbackrest{self.pgbackrest}")

    @property
    def primary_image_recorded(self) -> bool:
        return bool(self.primary_image_digest)

    @property
    def primary_image_stale(self) -> bool:
        """A digest is recorded, but for other versions than the table's."""
        return self.primary_image_recorded and \
            self.primary_image_recorded_tag != self.primary_image_tag

    def primary_image(self, repository: str | None = None) -> str:
        """The primary's image reference: `repo:tag@digest` once CI recorded the digest (the
        digest is what is pulled), `repo:tag` before that (deploys refuse it)."""
        ref = f"{repository or self.primary_image_repository}:{self.primary_image_tag}"
        return f"{ref}@{self.primary_image_digest}" if self.primary_image_digest else ref

    def build_args(self, image: str) -> dict[str, str]:
        d = dict(self.raw)
        return {k: d[k] for k in BUILD_ARGS[image]}


def parse(text: str, source: str = str(TABLE)) -> dict[str, str]:
    """KEY=value lines into a dict; anything bash could read differently is an error."""
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise VersionTableError(f"{source}:{n}: not a KEY=value line without quotes, spaces "
                                    f"or $: {line!r}")
        if m.group(1) in out:
            raise VersionTableError(f"{source}:{n}: {m.group(1)} is set twice")
        out[m.group(1)] = m.group(2)
    return out


def from_text(text: str, source: str = str(TABLE)) -> Versions:
    d = parse(text, source)
    fields = {
        "PG_MAJOR": _MAJOR, "POSTGRESQL_VERSION": re.compile(r"^[1-9][0-9]\.[0-9]+$"),
        "POSTGRESQL_SHA256": _SHA256,
        "TIMESCALEDB_VERSION": _SEMVER, "TIMESCALEDB_SHA256": _SHA256,
        "TIMESCALEDB_TREE_SHA256": _SHA256, "PGVECTOR_VERSION": _SEMVER,
        "PGVECTOR_SHA256": _SHA256, "PGVECTOR_TREE_SHA256": _SHA256,
        "PG_PREVIOUS_MAJOR": _MAJOR, "TIMESCALEDB_PREVIOUS_VERSION": _SEMVER,
        "TIMESCALEDB_PREVIOUS_SHA256": _SHA256, "TIMESCALEDB_PREVIOUS_TREE_SHA256": _SHA256,
        "PGVECTOR_PREVIOUS_VERSION": _SEMVER,
        "PGBACKREST_VERSION": re.compile(r"^[0-9]+\.[0-9]+(\.[0-9]+)?$"),
        "RDS_ENGINE_MAJOR": _MAJOR, "PRIMARY_IMAGE_REPOSITORY": _IMAGE,
        "PRIMARY_IMAGE_DIGEST": re.compile(rf"^({_DIGEST.pattern[1:-1]})?$"),
        "PRIMARY_IMAGE_RECORDED_TAG": re.compile(r"^[A-Za-z0-9_.-]*$"),
        "PRIMARY_BASE_IMAGE": _IMAGE, "WORKER_BASE_IMAGE": _IMAGE,
    }
    problems = [f"{k}: missing" for k in fields if k not in d]
    problems += [f"{k}: unknown key (known: {', '.join(fields)})" for k in d if k not in fields]
    problems += [f"{k}: {d[k]!r} is not of the expected form" for k, rx in fields.items()
                 if k in d and not rx.match(d[k])]
    if not problems and bool(d["PRIMARY_IMAGE_DIGEST"]) != bool(d["PRIMARY_IMAGE_RECORDED_TAG"]):
        problems.append("PRIMARY_IMAGE_DIGEST and PRIMARY_IMAGE_RECORDED_TAG are recorded "
                        "together (by the primary-image workflow) or not at all")
    if not problems and d["POSTGRESQL_VERSION"].split(".")[0] != d["PG_MAJOR"]:
        problems.append(f"POSTGRESQL_VERSION {d['POSTGRESQL_VERSION']} is not a release of "
                        f"PG_MAJOR {d['PG_MAJOR']}")
    if not problems and int(d["PG_PREVIOUS_MAJOR"]) >= int(d["PG_MAJOR"]):
        problems.append(f"PG_PREVIOUS_MAJOR {d['PG_PREVIOUS_MAJOR']} is not older than "
                        f"PG_MAJOR {d['PG_MAJOR']}")
    if problems:
        raise VersionTableError(f"{source}: " + "; ".join(problems))
    return Versions(
        pg_major=d["PG_MAJOR"], postgresql=d["POSTGRESQL_VERSION"],
        postgresql_sha256=d["POSTGRESQL_SHA256"], timescaledb=d["TIMESCALEDB_VERSION"],
        timescaledb_sha256=d["TIMESCALEDB_SHA256"],
        timescaledb_tree_sha256=d["TIMESCALEDB_TREE_SHA256"], pgvector=d["PGVECTOR_VERSION"],
        pgvector_sha256=d["PGVECTOR_SHA256"], pgvector_tree_sha256=d["PGVECTOR_TREE_SHA256"],
        pg_previous_major=d["PG_PREVIOUS_MAJOR"],
        timescaledb_previous=d["TIMESCALEDB_PREVIOUS_VERSION"],
        timescaledb_previous_sha256=d["TIMESCALEDB_PREVIOUS_SHA256"],
        timescaledb_previous_tree_sha256=d["TIMESCALEDB_PREVIOUS_TREE_SHA256"],
        pgvector_previous=d["PGVECTOR_PREVIOUS_VERSION"],
        pgbackrest=d["PGBACKREST_VERSION"], rds_engine_major=d["RDS_ENGINE_MAJOR"],
        primary_image_repository=d["PRIMARY_IMAGE_REPOSITORY"],
        primary_image_digest=d["PRIMARY_IMAGE_DIGEST"],
        primary_image_recorded_tag=d["PRIMARY_IMAGE_RECORDED_TAG"],
        primary_base_image=d["PRIMARY_BASE_IMAGE"], worker_base_image=d["WORKER_BASE_IMAGE"],
        raw=tuple(d.items()),
    )


@cache
def load(path: Path = TABLE) -> Versions:
    return from_text(path.read_text(), str(path))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m infra.versions",
                                description="Print tickstack's version table "
                                            "(scripts/versions.env), checked.")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--build-args", choices=sorted(BUILD_ARGS),
                   help="print `--build-arg KEY=VALUE` options for this image's build")
    g.add_argument("--get", metavar="KEY", help="print one value; derived: "
                   "PRIMARY_IMAGE, PRIMARY_IMAGE_TAG, RDS_ENGINE_VERSION")
    a = p.parse_args(argv)
    try:
        v = load()
    except (OSError, VersionTableError) as e:
        print(f"versions: {e}", file=sys.stderr)
        return 1
    derived = {"PRIMARY_IMAGE": v.primary_image(), "PRIMARY_IMAGE_TAG": v.primary_image_tag,
               "RDS_ENGINE_VERSION": v.rds_engine_version}
    if a.build_args:
        print(" ".join(f"--build-arg {k}={val}" for k, val in v.build_args(a.build_args).items()))
    elif a.get:
        table = {**dict(v.raw), **derived}
        if a.get not in table:
            print(f"versions: no key {a.get!r} (keys: {', '.join(table)})", file=sys.stderr)
            return 2
        print(table[a.get])
    else:
        width = max(len(k) for k, _ in v.raw)
        for k, val in (*v.raw, *derived.items()):
            print(f"{k:<{width}}  {val or '(not recorded yet)'}")
        if v.primary_image_stale:
            print(f"versions: PRIMARY_IMAGE_DIGEST was recorded for "
                  f"{v.primary_image_recorded_tag}, not {v.primary_image_tag}: stale",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
