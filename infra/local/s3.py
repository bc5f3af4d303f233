"""Local S3: moto in server mode on loopback, stunnel in front for pgBackRest (TLS only).

moto 5 keeps objects in memory only, so `down` snapshots every bucket's object versions to disk
and `up` replays them into a fresh server. What a crash of the moto process loses: everything
written since the last `up` (README, "Local S3").
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from infra.local.procs import PartError, port_open, read_pid, spawn, stop_pid, wait_until

# moto accepts any keys; these are not secrets, and real S3 uses the standard AWS chain instead.
MOTO_KEY = "tickstack-local"
MOTO_SECRET = "tickstack-local-secret"


def s3_client(endpoint: str):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=MOTO_KEY, aws_secret_access_key=MOTO_SECRET,
        config=Config(retries={"max_attempts": 3}, s3={"addressing_style": "path"}),
    )


@dataclass
class Moto:
    root: Path  # .tickstack/s3
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.root / "moto.log"

    @property
    def pidfile(self) -> Path:
        return self.root / "moto.pid"

    def pid(self) -> int | None:
        return read_pid(self.pidfile)

    def healthy(self) -> bool:
        return self.pid() is not None and port_open(self.port)

    def start(self) -> bool:
        """Start moto; True when a fresh (empty) server was started."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self.healthy():
            return False
        if port_open(self.port):
            raise PartError("s3", f"port {self.port} is already in use by another program")
        spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
              log=self.log, pidfile=self.pidfile)
        if not wait_until(lambda: port_open(self.port), 30) or self.pid() is None:
            raise PartError("s3", "moto server did not start", self.log)
        return True

    def stop(self) -> None:
        pid = self.pid()
        if pid:
            stop_pid(pid)
        self.pidfile.unlink(missing_ok=True)

    def ensure_buckets(self, names: list[str]) -> None:
        c = s3_client(self.endpoint)
        have = {b["Name"] for b in c.list_buckets().get("Buckets", [])}
        for name in names:
            if name not in have:
                c.create_bucket(Bucket=name)
            # Versioned, as in the cloud: an overwrite never loses the previous object.
            c.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})

    # --- snapshot (moto has no persistence) ------------------------------------------------

    @property
    def snapshot_dir(self) -> Path:
        return self.root / "snapshot"

    def save(self) -> int:
        """Write every bucket's versions (oldest first) and delete markers; returns versions."""
        c = s3_client(self.endpoint)
        tmp = self.root / "snapshot.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "blobs").mkdir(parents=True)
        manifest: dict[str, list[dict]] = {}
        count = 0
        for b in c.list_buckets().get("Buckets", []):
            entries = []
            for page in c.get_paginator("list_object_versions").paginate(Bucket=b["Name"]):
                for v in page.get("Versions", []):
                    body = c.get_object(Bucket=b["Name"], Key=v["Key"],
                                        VersionId=v["VersionId"])["Body"].read()
                    digest = hashlib.sha256(body).hexdigest()
                    blob = tmp / "blobs" / digest
                    if not blob.exists():
                        blob.write_bytes(body)
                    entries.append({"key": v["Key"], "blob": digest, "latest": v["IsLatest"],
                                    "at": v["LastModified"].isoformat(), "order": len(entries)})
                for m in page.get("DeleteMarkers", []):
                    entries.append({"key": m["Key"], "delete": True, "latest": m["IsLatest"],
                                    "at": m["LastModified"].isoformat(), "order": len(entries)})
            # Oldest first. Timestamps can tie (1 ms resolution), so each key's current version
            # or delete marker goes last, and ties otherwise keep S3's newest-first order reversed.
            entries.sort(key=lambda e: (e["latest"], e["at"], -e["order"]))
            manifest[b["Name"]] = entries
            count += len(entries)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        old = self.root / "snapshot.old"
        shutil.rmtree(old, ignore_errors=True)
        if self.snapshot_dir.exists():
            os.replace(self.snapshot_dir, old)
        os.replace(tmp, self.snapshot_dir)
        shutil.rmtree(old, ignore_errors=True)
        return count

    def restore(self) -> int:
        mf = self.snapshot_dir / "manifest.json"
        if not mf.exists():
            return 0
        manifest = json.loads(mf.read_text())
        c = s3_client(self.endpoint)
        self.ensure_buckets(list(manifest))
        n = 0
        for bucket, entries in manifest.items():
            for e in entries:
                if e.get("delete"):
                    c.delete_object(Bucket=bucket, Key=e["key"])
                else:
                    c.put_object(Bucket=bucket, Key=e["key"],
                                 Body=(self.snapshot_dir / "blobs" / e["blob"]).read_bytes())
                n += 1
        return n


@dataclass
class Stunnel:
    """TLS terminator: pgBackRest speaks only TLS to S3; moto's own --ssl breaks it."""

    root: Path  # .tickstack/stunnel
    port: int
    upstream: int

    @property
    def log(self) -> Path:
        return self.root / "stunnel.log"

    @property
    def pidfile(self) -> Path:
        return self.root / "stunnel.pid"

    def pid(self) -> int | None:
        return read_pid(self.pidfile)

    def healthy(self) -> bool:
        return self.pid() is not None and port_open(self.port)

    def _cert(self) -> Path:
        pem = self.root / "tls.pem"
        if not pem.exists():
            key, crt = self.root / "tls.key", self.root / "tls.crt"
            r = subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
                 "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(crt)],
                capture_output=True, text=True, check=False,
            )
            if r.returncode != 0:
                raise PartError("s3-tls", f"openssl could not make a certificate: {r.stderr}")
            pem.write_bytes(key.read_bytes() + crt.read_bytes())
            os.chmod(pem, 0o600)
            key.unlink()
            crt.unlink()
        return pem

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.healthy():
            return
        if port_open(self.port):
            raise PartError("s3-tls", f"port {self.port} is already in use by another program")
        binary = shutil.which("stunnel4") or shutil.which("stunnel")
        if not binary:
            raise PartError("s3-tls", "stunnel4 is not installed (scripts/install_system.sh)")
        conf = self.root / "stunnel.conf"
        conf.write_text(
            f"foreground = yes\npid =\noutput = {self.log}\n\n"
            f"[s3]\naccept = 127.0.0.1:{self.port}\nconnect = 127.0.0.1:{self.upstream}\n"
            f"cert = {self._cert()}\n"
        )
        spawn([binary, str(conf)], log=self.log, pidfile=self.pidfile)
        if not wait_until(lambda: port_open(self.port), 15) or self.pid() is None:
            raise PartError("s3-tls", "stunnel did not start", self.log)

    def stop(self) -> None:
        pid = self.pid()
        if pid:
            stop_pid(pid)
        self.pidfile.unlink(missing_ok=True)
