"""Running `workers fetch` against the test archive, and reading what it did."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

from tests.conftest import REPO
from tests.integration import archive_server as arc
from tests.integration.archive_server import ArchiveServer, archive_path

REAL = archive_path("daily", "BTCUSDT", "2019-04-01")
REAL_SIZE = 3_375_192


def archive_env(server: ArchiveServer, cache: Path, **extra) -> dict[str, str]:
    return {"TICKSTACK_ARCHIVE_BASE_URL": server.url, "TICKSTACK_ARCHIVE_CACHE_DIR": str(cache),
            "TICKSTACK_ARCHIVE_READ_TIMEOUT_SECONDS": "1", "TICKSTACK_ARCHIVE_ATTEMPTS": "3",
            "TICKSTACK_ARCHIVE_BACKOFF_SECONDS": "0.05", "TICKSTACK_LOG_FORMAT": "json",
            **{f"TICKSTACK_ARCHIVE_{k.upper()}": str(v) for k, v in extra.items()}}


def fetch(server, cache, *args: str, base_env: dict | None = None, timeout: float = 120,
          **extra) -> subprocess.CompletedProcess[str]:
    env = {**(base_env or os.environ), **archive_env(server, cache, **extra)}
    return subprocess.run([sys.executable, "-m", "workers", "fetch", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def result(p: subprocess.CompletedProcess[str]) -> dict:
    """The --json report (last stdout line)."""
    return json.loads(p.stdout.strip().splitlines()[-1])


def by_status(report: dict) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for f in report["files"]:
        out.setdefault(f["status"], set()).add(f["path"])
    return out


def day_paths(first: date, last: date, symbol: str = "BTCUSDT") -> set[str]:
    return {archive_path("daily", symbol, d.isoformat()) for d in arc.days(first, last)}


def verified(cache: Path, path: str) -> bool:
    """The cached zip matches the CHECKSUM the archive published (read from the archive's side
    by the caller) — here: the one beside it in the cache, which the fetch copied."""
    z = cache / path
    want = (cache / (path + ".CHECKSUM")).read_text().split()[0]
    return hashlib.sha256(z.read_bytes()).hexdigest() == want


def leftovers(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*.part"))


def log_events(p: subprocess.CompletedProcess[str], event: str) -> list[dict]:
    return [e for e in (json.loads(line) for line in p.stderr.splitlines()
                        if line.startswith("{")) if e["event"] == event]
