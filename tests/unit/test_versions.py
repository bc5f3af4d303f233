"""The version table (scripts/versions.env): one file, read alike by bash and Python, checked
against the vendored source, and the only place a version of the database stack is written."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from infra import versions

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
VENDOR = REPO.parent / "shared" / "vendor"
V = versions.load()


def test_bash_and_python_read_the_same_table() -> None:
    keys = [k for k, _ in V.raw]
    script = ("set -eu; set -a; . scripts/versions.env; set +a; "
              + "; ".join(f'printf "%s=%s\\n" {k} "${{{k}}}"' for k in keys))
    r = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True,
                       check=True)
    assert r.stdout.splitlines() == [f"{k}={v}" for k, v in V.raw]


GOOD = (REPO / "scripts" / "versions.env").read_text()


@pytest.mark.parametrize("edit, problem", [
    (lambda t: t.replace("PG_MAJOR=", "PG_MAJOR='", 1) + "\n", "not a KEY=value line"),
    (lambda t: t + "PG_MAJOR=$OTHER\n", "not a KEY=value line"),
    (lambda t: t + "PGVECTOR_VERSION=0.0.1\n", "set twice"),
    (lambda t: t + "POSTGIS_VERSION=3.4.0\n", "POSTGIS_VERSION: unknown key"),
    (lambda t: re.sub(r"(?m)^PGBACKREST_VERSION=.*\n", "", t), "PGBACKREST_VERSION: missing"),
    (lambda t: re.sub(r"(?m)^TIMESCALEDB_VERSION=.*$", "TIMESCALEDB_VERSION=latest", t),
     "TIMESCALEDB_VERSION: 'latest' is not of the expected form"),
    (lambda t: re.sub(r"(?m)^PRIMARY_IMAGE_RECORDED_TAG=.*$", "PRIMARY_IMAGE_RECORDED_TAG=",
                      re.sub(r"(?m)^PRIMARY_IMAGE_DIGEST=.*$",
                             "PRIMARY_IMAGE_DIGEST=sha256:" + "a" * 64, t)),
     "recorded together"),
])
def test_a_malformed_table_fails_naming_the_key(edit, problem) -> None:
    with pytest.raises(versions.VersionTableError, match=re.escape(problem)):
        versions.from_text(edit(GOOD), "versions.env")


def test_a_digest_recorded_for_other_versions_is_stale() -> None:
    digest = "sha256:" + "b" * 64
    text = re.sub(r"(?m)^PRIMARY_IMAGE_DIGEST=.*$", f"PRIMARY_IMAGE_DIGEST={digest}", GOOD)
    fresh = versions.from_text(re.sub(r"(?m)^PRIMARY_IMAGE_RECORDED_TAG=.*$",
                                      f"PRIMARY_IMAGE_RECORDED_TAG={V.primary_image_tag}", text))
    assert not fresh.primary_image_stale
    assert fresh.primary_image() == f"{V.primary_image_repository}:{V.primary_image_tag}@{digest}"
    stale = versions.from_text(re.sub(r"(?m)^PRIMARY_IMAGE_RECORDED_TAG=.*$",
                                      "PRIMARY_IMAGE_RECORDED_TAG=pg1-ts0.0.1", text))
    assert stale.primary_image_stale
    # The Pulumi stack validation refuses it, naming the table.
    from infra import stack_config

    orig = versions.load
    try:
        versions.load = lambda path=versions.TABLE: stale  # type: ignore[assignment]
        assert "PRIMARY_IMAGE_DIGEST was recorded for pg1-ts0.0.1" in \
            " ".join(stack_config._version_problems())
    finally:
        versions.load = orig  # type: ignore[assignment]


def test_the_checked_in_digest_if_any_is_for_the_tables_versions() -> None:
    assert not V.primary_image_stale, (
        f"PRIMARY_IMAGE_DIGEST was recorded for {V.primary_image_recorded_tag}, the table's "
        f"versions make {V.primary_image_tag}: run the primary-image workflow")


def test_tag_names_every_component_version() -> None:
    tag = V.primary_image_tag
    for value in (V.pg_major, V.timescaledb, V.pgvector, V.pgbackrest):
        assert value in tag
    assert V.rds_engine_version == V.rds_engine_major  # the major only


def test_build_args_are_table_rows() -> None:
    rows = dict(V.raw)
    for image in versions.BUILD_ARGS:
        assert all(rows[k] == v for k, v in V.build_args(image).items())
    r = subprocess.run(["python3", "-m", "infra.versions", "--build-args", "primary"], cwd=REPO,
                       capture_output=True, text=True, check=True)
    assert r.stdout.split() == [w for k, v in V.build_args("primary").items()
                                for w in ("--build-arg", f"{k}={v}")]


# --- TimescaleDB source: the table's hashes are the vendored release's --------------------------


SOURCES = {  # verified_source.sh NAME -> (vendored file, table sha256, table tree sha256)
    "postgresql": (f"postgresql-{V.postgresql}.tar.bz2", V.postgresql_sha256, None),
    "timescaledb": (f"timescaledb-{V.timescaledb}.tar.gz", V.timescaledb_sha256,
                    V.timescaledb_tree_sha256),
    "timescaledb-previous": (f"timescaledb-{V.timescaledb_previous}.tar.gz",
                             V.timescaledb_previous_sha256, V.timescaledb_previous_tree_sha256),
    "pgvector": (f"pgvector-{V.pgvector}.tar.gz", V.pgvector_sha256, V.pgvector_tree_sha256),
}


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_archive_hash_is_the_vendor_manifests_and_the_files(name: str) -> None:
    file, sha, _ = SOURCES[name]
    manifest = (VENDOR / "MANIFEST.md").read_text()
    row = next(line for line in manifest.splitlines() if f"`{file}`" in line)
    assert f"`{sha}`" in row
    got = subprocess.run(["sha256sum", str(VENDOR / file)],
                         capture_output=True, text=True, check=True).stdout.split()[0]
    assert got == sha


def _source(name: str, dest: Path, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(["bash", str(REPO / "scripts" / "verified_source.sh"), name, str(dest)],
                          capture_output=True, text=True, env={**os.environ, **env},
                          timeout=120)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_vendored_source_unpacks_verified(name: str, tmp_path: Path) -> None:
    _, sha, tree = SOURCES[name]
    r = _source(name, tmp_path / "src")
    assert r.returncode == 0, r.stderr
    src = Path(r.stdout.strip())
    assert src.is_dir() and src.parent == tmp_path / "src"
    if name.startswith("timescaledb"):
        assert (src / "tsl" / "src").is_dir()
    assert "sha256 " + sha + " matches" in r.stderr
    if tree:
        assert "tree sha256 " + tree in r.stderr


def test_download_path_checks_the_tree_not_the_archive_bytes(tmp_path: Path) -> None:
    """No vendored copy: the 'download' (a file:// URL) is the same tree repacked, so its archive
    sha256 differs; it is accepted by the tree hash. A changed file in it is refused."""
    work = tmp_path / "work"
    work.mkdir()
    subprocess.run(["tar", "-xzf", str(VENDOR / f"timescaledb-{V.timescaledb}.tar.gz"), "-C",
                    str(work)], check=True)
    repacked = tmp_path / "repacked.tar.gz"
    subprocess.run(["tar", "-czf", str(repacked), "--sort=name", "-C", str(work),
                    f"timescaledb-{V.timescaledb}"], check=True)
    empty_vendor = tmp_path / "no-vendor"
    empty_vendor.mkdir()
    r = _source("timescaledb", tmp_path / "a", TICKSTACK_VENDOR_DIR=str(empty_vendor),
                TICKSTACK_SOURCE_URL=f"file://{repacked}")
    assert r.returncode == 0, r.stderr
    assert "downloading" in r.stderr and "source tree verified" in r.stderr

    (work / f"timescaledb-{V.timescaledb}" / "tsl" / "src" / "init.c").write_text("/* no */\n")
    tampered = tmp_path / "tampered.tar.gz"
    subprocess.run(["tar", "-czf", str(tampered), "-C", str(work),
                    f"timescaledb-{V.timescaledb}"], check=True)
    r = _source("timescaledb", tmp_path / "b", TICKSTACK_VENDOR_DIR=str(empty_vendor),
                TICKSTACK_SOURCE_URL=f"file://{tampered}")
    assert r.returncode == 1
    assert f"expected {V.timescaledb_tree_sha256}" in r.stderr and "refusing it" in r.stderr


def test_a_downloaded_postgresql_tarball_is_checked_by_its_own_hash(tmp_path: Path) -> None:
    """PostgreSQL's release tarball is one file on every mirror: a download is checked by the
    file's sha256 (no tree hash), so one changed byte is refused before it is unpacked."""
    empty_vendor = tmp_path / "no-vendor"
    empty_vendor.mkdir()
    good = VENDOR / f"postgresql-{V.postgresql}.tar.bz2"
    bad = tmp_path / "bad.tar.bz2"
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte changed (the last one may already be padding)
    bad.write_bytes(bytes(data))
    r = _source("postgresql", tmp_path / "a", TICKSTACK_VENDOR_DIR=str(empty_vendor),
                TICKSTACK_SOURCE_URL=f"file://{bad}")
    assert r.returncode == 1 and f"expected {V.postgresql_sha256}" in r.stderr, r.stderr
    assert not (tmp_path / "a" / f"postgresql-{V.postgresql}").exists()
    r = _source("postgresql", tmp_path / "b", TICKSTACK_VENDOR_DIR=str(empty_vendor),
                TICKSTACK_SOURCE_URL=f"file://{good}")
    assert r.returncode == 0, r.stderr
    assert (Path(r.stdout.strip()) / "configure").is_file()
    assert _source("nothing", tmp_path / "c").returncode == 1


def test_a_vendored_archive_with_another_hash_is_refused(tmp_path: Path) -> None:
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    (vendor / f"timescaledb-{V.timescaledb}.tar.gz").write_bytes(b"not the release")
    r = _source("timescaledb", tmp_path / "src", TICKSTACK_VENDOR_DIR=str(vendor))
    assert r.returncode == 1
    assert f"timescaledb-{V.timescaledb}.tar.gz: sha256" in r.stderr
    assert f"expected {V.timescaledb_sha256}" in r.stderr


# --- install_system.sh: the Debian 13 branch as a dry run ----------------------------------------


def _install(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    import os

    build = tmp / "build"
    r = subprocess.run(["bash", str(REPO / "scripts" / "install_system.sh"), *args],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "TICKSTACK_BUILD_DIR": str(build)})
    assert not build.exists(), "a dry run wrote to the build directory"
    return r


def test_debian_13_dry_run_builds_postgres_from_source(tmp_path):
    osr = tmp_path / "os-release"
    osr.write_text('PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nID=debian\nVERSION_ID="13"\n'
                   "VERSION_CODENAME=trixie\n")
    r = _install("--dry-run", "--assume-fresh", "--os-release", str(osr), "--with-previous",
                 tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"Debian 13, profile local: PostgreSQL {V.postgresql} (from source)" in out
    assert f"PostgreSQL {V.pg_previous_major} (bookworm-source)" in out
    # Neither major is asked of apt as a binary package (Debian 13 has neither).
    apt_install = next(line for line in out.splitlines()
                       if "apt-get install" in line and ".deb" not in line)
    for major in (V.pg_major, V.pg_previous_major):
        assert f"postgresql-{major}" not in apt_install.split()
    assert "bison" in apt_install.split() and "flex" in apt_install.split()
    # The table's PostgreSQL: the verified release, configured into Debian's layout, built.
    assert f"building PostgreSQL {V.postgresql} into /usr/lib/postgresql/{V.pg_major}" in out
    assert f"--prefix='/usr/lib/postgresql/{V.pg_major}'" in out and "world-bin" in out
    # The previous major: bookworm deb-src through a private apt config, built, installed.
    assert re.search(r"private apt in \S+/apt-bookworm-deb-src: deb-src \[signed-by=\S+\] \S+ "
                     r"bookworm main", out)
    assert re.search(rf"Dir::State::Lists=\S+/apt-bookworm-deb-src/lists .*source "
                     rf"--download-only postgresql-{V.pg_previous_major}$", out, re.M)
    assert out.count("dpkg-buildpackage -b -uc -us") == 1
    # pgBackRest: trixie's binary package of the table's version, as is (no Debian 12 rewrite).
    assert re.search(rf"apt-trixie-deb/lists .*download pgbackrest={re.escape(V.pgbackrest)}-\*$",
                     out, re.M)
    assert "rewrite its Depends" not in out
    # TimescaleDB: the previous version for both majors, then the table's for PG_MAJOR last
    # (its control file and loader win), all with TSL (no APACHE_ONLY).
    order = [m.group(0) for m in re.finditer(
        r"building TimescaleDB \S+ with its TSL part for PostgreSQL \d+", out)]
    assert order == [
        f"building TimescaleDB {V.timescaledb_previous} with its TSL part for PostgreSQL "
        f"{V.pg_previous_major}",
        f"building TimescaleDB {V.timescaledb_previous} with its TSL part for PostgreSQL "
        f"{V.pg_major}",
        f"building TimescaleDB {V.timescaledb} with its TSL part for PostgreSQL {V.pg_major}"]
    assert "APACHE_ONLY" not in out and "-DPG_CONFIG=" in out
    assert re.search(r"apt-trixie-deb-src/lists .*source --download-only pgvector$", out, re.M)
    # The machine's own sources are never the target.
    assert "/etc/apt/sources.list" not in out.replace("Dir::Etc::sourcelist=", "")
    # Without --with-previous, none of the previous build.
    r = _install("--dry-run", "--assume-fresh", "--os-release", str(osr), tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "bookworm" not in r.stdout and V.timescaledb_previous not in r.stdout


def test_debian_12_dry_run_maps_pgbackrests_t64_dependencies(tmp_path):
    """Debian 12 installs trixie's pgBackRest with its dependencies renamed back (pre-t64)."""
    osr = tmp_path / "os-release"
    osr.write_text('ID=debian\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\n')
    r = _install("--dry-run", "--assume-fresh", "--os-release", str(osr), tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "dpkg-buildpackage" not in out  # no Debian source package is built on Debian 12
    assert re.search(r"private apt in \S+/apt-trixie-deb: deb \[signed-by=\S+\] \S+ trixie main",
                     out)
    assert re.search(rf"download pgbackrest={re.escape(V.pgbackrest)}-\*$", out, re.M)
    assert "libssl3t64 -> libssl3" in out and "libssh2-1t64 -> libssh2-1" in out
    for profile, extensions in (("pgbackrest", False), ("image", True)):
        r = _install("--dry-run", "--assume-fresh", "--os-release", str(osr), "--profile", profile,
                     tmp=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "download pgbackrest=" in r.stdout
        assert ("pgvector" in r.stdout) is extensions, r.stdout
        assert ("TimescaleDB" in r.stdout) is extensions, r.stdout
        # The image carries the previous build: the upgrade Job runs pg_upgrade in it.
        assert (f"postgresql-{V.pg_previous_major}" in r.stdout) is extensions, r.stdout
        assert (f"TimescaleDB {V.timescaledb_previous} with its TSL part for PostgreSQL "
                f"{V.pg_major}" in r.stdout) is extensions


def test_dry_run_on_this_machine_has_nothing_to_do() -> None:
    """make test installs first: on this machine every part is in place and skipped."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        r = _install("--dry-run", "--with-previous", tmp=Path(d))
    assert r.returncode == 0, r.stderr
    assert "would run" not in r.stdout, r.stdout
    assert f"TimescaleDB {V.timescaledb} with TSL: installed" in r.stdout
    assert os.geteuid() == 0 or "DRY RUN" in r.stdout


def test_install_rejects_other_releases_and_bad_usage(tmp_path: Path) -> None:
    osr = tmp_path / "os-release"
    osr.write_text('ID=ubuntu\nVERSION_ID="24.04"\n')
    r = _install("--dry-run", "--os-release", str(osr), tmp=tmp_path)
    assert r.returncode == 1 and "not Debian 12 or 13" in r.stderr
    assert _install("--bogus", tmp=tmp_path).returncode == 2
    assert _install("--assume-fresh", tmp=tmp_path).returncode == 2  # only with --dry-run


# --- nowhere else -------------------------------------------------------------------------------

# A version of a table component written next to its name (case-insensitive).
PATTERNS = {
    "TimescaleDB version": r"timescale(?:db)?(?:[-_ ](?:ha|tsl))?[ :_/-]*v?\d+\.\d+",
    "TimescaleDB in an image tag": r"\bts\d+\.\d+",
    "TimescaleDB image reference": r"timescale/timescaledb[\w-]*[:@]",
    "pgvector version": r"pgvector[ _-]*v?\d+\.\d+",
    "pgBackRest version": r"pgbackrest[ _-]*v?\d+\.\d+",
    "PostgreSQL major": r"postgres(?:ql)?[ _/-]*(?:server-dev-|client-)?\d{2}\b|\bpg\d{2}\b",
    "RDS engine version": r"engine_?version\W+\d",
    "image digest": r"sha256:[0-9a-f]{64}",
}
# docs/benchmarks.md records what was measured, on which build: a past fact, not a setting.
ALLOWED_FILES = {"scripts/versions.env", "tests/unit/test_versions.py", "docs/benchmarks.md"}


def _violations(text: str) -> list[str]:
    out = [name for name, rx in PATTERNS.items() if re.search(rx, text, re.I)]
    for value in (V.timescaledb, V.timescaledb_sha256, V.timescaledb_tree_sha256,
                  V.timescaledb_previous, V.timescaledb_previous_sha256,
                  V.timescaledb_previous_tree_sha256, V.postgresql_sha256, V.pgvector_sha256,
                  V.pgvector_tree_sha256, V.primary_image_digest):
        if value and re.search(rf"(?<![\w.]){re.escape(value)}(?![\w.])", text):
            out.append(f"the table's {value}")
    return out


@pytest.mark.parametrize("text", [
    "PostgreSQL 15", "/usr/lib/postgresql/16/bin", "postgresql-server-dev-15", "pg16-ts2.17",
    "timescale/timescaledb-ha:latest", "TimescaleDB 2.19.3", "timescaledb-2.28.3.so",
    "timescaledb-tsl-2.28.3.so", "pgvector 0.8.0", "pgBackRest 2.45", 'engine_version="16.4"',
    "replicaEngineVersion: 15", "family=postgres16", "@sha256:" + "0" * 64,
])
def test_the_patterns_catch_a_written_version(text: str) -> None:
    assert _violations(text)


@pytest.mark.parametrize("text", [
    "annotated-types==0.8.0", "port 5432", "postgres_dsn(user=u)", "pg_upgrade", "pgBackRest",
    "PG_MAJOR", "postgresql.conf", "tickstack_pg16ish",
])
def test_the_patterns_leave_other_numbers_alone(text: str) -> None:
    assert not _violations(text)


def test_no_version_of_the_stack_is_written_outside_the_table() -> None:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    found = []
    for rel in files:
        path = REPO / rel
        if rel in ALLOWED_FILES or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            for what in _violations(line):
                found.append(f"{rel}:{n}: {what}: {line.strip()[:120]}")
    assert not found, "versions belong in scripts/versions.env only:\n" + "\n".join(found)
