"""The verified cache of workers.sources.binance_archive: what is at a file's final name, how a
download becomes that, and the per-file lock.

The invariant: a zip at its final name has its `.CHECKSUM` beside it and matched it when it was
renamed there (the CHECKSUM is written first, the zip renamed onto its name atomically, the
directory synced). A download in progress is `<zip>.part`, resumed by the next attempt or run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from pathlib import Path

from workers.core import logs
from workers.sources.archive_download import ArchiveError
from workers.sources.binance_files import parse_checksum, sha256_file

log = logs.get("fetch")


def checksum_path(zip_path: Path) -> Path:
    return zip_path.with_name(zip_path.name + ".CHECKSUM")


def part_path(zip_path: Path) -> Path:
    return zip_path.with_name(zip_path.name + ".part")


def is_cached(dest: Path) -> bool:
    """Verified earlier: only a verified zip is ever renamed to its final name."""
    return dest.is_file() and checksum_path(dest).is_file()


def checksum_of(name: str, text: str) -> str:
    """`<sha256>  <zip name>` (Binance's format) -> the sha256."""
    try:
        return parse_checksum(text, name)
    except ValueError as e:
        raise ArchiveError(str(e)) from None


def still_verified(dest: Path, archive_path: str) -> bool:
    """Re-hash a cached file; one that no longer matches its CHECKSUM is removed (and fetched
    again)."""
    try:
        want = checksum_of(dest.name, checksum_path(dest).read_text(errors="replace"))
    except ArchiveError:
        want = None  # a damaged CHECKSUM: fetch both again
    if want is not None and sha256_file(dest) == want:
        return True
    log.warning("cached file no longer matches its CHECKSUM: fetching it again",
                file=archive_path)
    dest.unlink()
    return False


def adopt(dest: Path, sha256: str, checksum_text: str) -> bool:
    """A zip at its final name without its CHECKSUM (a crash between the two renames, or one
    copied in): kept, with the CHECKSUM, only if it verifies; removed otherwise."""
    if not dest.exists():
        return False
    if sha256_file(dest) == sha256:
        write_atomic(checksum_path(dest), checksum_text.encode())
        return True
    dest.unlink()
    return False


def install(part: Path, dest: Path, checksum_text: str) -> None:
    """A verified .part to its final name: durable, CHECKSUM first (a zip at its final name
    always has one beside it)."""
    with open(part, "rb+") as fh:
        os.fsync(fh.fileno())
    write_atomic(checksum_path(dest), checksum_text.encode())
    os.replace(part, dest)
    fsync_dir(dest.parent)


@contextlib.contextmanager
def file_lock(cache_dir: Path, key: str):
    """Exclusive, across processes, per archive path: each file is downloaded once."""
    d = cache_dir / ".locks"
    d.mkdir(parents=True, exist_ok=True)
    # Lock files stay: removing one would let two processes lock different inodes.
    with open(d / (hashlib.sha1(key.encode()).hexdigest()[:20] + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
