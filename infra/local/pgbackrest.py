"""pgBackRest's TLS server, locally: the cloud's sidecar in the primary's pod.

Backups are taken through it by the backup workers (their client certificate), as in the
cloud; it runs as `postgres` with the database host's pgbackrest.conf.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from infra.local.procs import PartError, db_user, port_open, read_pid, stop_pid, wait_until


@dataclass
class PgBackRestServer:
    root: Path  # .tickstack/pgbackrest
    port: int
    config: Path  # the database host's pgbackrest.conf
    env: dict[str, str]  # pgBackRest's S3 keys (never in its config file)

    @property
    def pidfile(self) -> Path:
        return self.root / "server.pid"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def pid(self) -> int | None:
        return read_pid(self.pidfile)

    def healthy(self) -> bool:
        return self.pid() is not None and port_open(self.port)

    def start(self) -> None:
        if self.healthy():
            return
        if port_open(self.port):
            raise PartError("pgbackrest-server",
                            f"port {self.port} is already in use by another program")
        u = db_user()
        kw: dict = {}
        env = {**os.environ, **self.env}
        if u is not None:
            kw = {"user": u.pw_uid, "group": u.pw_gid, "extra_groups": []}
            env.update(HOME=u.pw_dir, USER="postgres", LOGNAME="postgres")
        with open(self.log, "ab") as out:
            p = subprocess.Popen(
                ["pgbackrest", f"--config={self.config}", "server"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=env, close_fds=True, cwd="/", **kw)
        self.pidfile.write_text(str(p.pid))
        if not wait_until(lambda: port_open(self.port), 15) or self.pid() is None:
            raise PartError("pgbackrest-server", "pgbackrest server did not start", self.log)

    def stop(self) -> None:
        pid = self.pid()
        if pid:
            stop_pid(pid)
        self.pidfile.unlink(missing_ok=True)
