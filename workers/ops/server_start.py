"""Starting a restored primary with the configuration of today, not the one in its backup.

The server's configuration lives outside its data directory (infra/configs.py: postgresql.conf,
tickstack.conf, pg_hba.conf in a directory of their own), so a point-in-time restore cannot
bring back older files — one without TLS, before an upgrade. `start` starts the restored data
directory with that file (`-c config_file=`); `drop_security_overrides` clears what could still
override it from inside the data directory; `probe` tells a server still recovering from one
that refuses the admin for good (TLS, pg_hba.conf), so the restore fails at once with the
real reason.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import psycopg

from workers.core import logs
from workers.core.sqlfiles import query
from workers.ops.backup import Tool

log = logs.get("restore")

# Settings that decide who may connect and how (infra/configs.py SECURITY_SETTINGS; workers
# never import infra): the restored server takes them from its configuration file outside the
# data directory (TICKSTACK_PG_CONFIG_FILE). The one file of the data directory that still
# sets settings, postgresql.auto.conf (ALTER SYSTEM; pgBackRest writes the recovery options
# there), comes back from the backup: these are removed from it before the server starts.
SECURITY_SETTINGS = ("listen_addresses", "port", "unix_socket_directories", "unix_socket_group",
                     "unix_socket_permissions", "hba_file", "ident_file", "ssl",
                     "ssl_cert_file", "ssl_key_file", "ssl_ca_file", "ssl_crl_file",
                     "ssl_crl_dir", "ssl_min_protocol_version", "ssl_max_protocol_version",
                     "ssl_ciphers", "ssl_ecdh_curve", "ssl_dh_params_file",
                     "ssl_prefer_server_ciphers", "ssl_passphrase_command",
                     "ssl_passphrase_command_supports_reload", "password_encryption",
                     "scram_iterations", "authentication_timeout", "db_user_namespace",
                     "krb_server_keyfile", "krb_caseins_users", "config_file",
                     # A file may include others: from postgresql.auto.conf, a file the backup
                     # restored into the data directory would set all of the above again.
                     "include", "include_if_exists", "include_dir")
# What a server in recovery answers before it takes connections: wait. Any other refusal of
# the admin's connection (TLS, pg_hba.conf, password) will not pass by waiting.
STARTING = ("the database system is starting up", "not yet accepting connections",
            "consistent recovery state has not been yet reached",
            "the database system is in recovery mode")


def start(tool: Tool, bindir: str, data: Path, log_file: Path, config_file: str | None, *,
          wait: int):
    """Start the server on `data` with the configuration file outside it (`config_file`)."""
    opts = ["-o", shlex.join(["-c", f"config_file={config_file}"])] if config_file else []
    return tool.exec([str(Path(bindir) / "pg_ctl"), "-D", str(data), "-l", str(log_file),
                      *opts, "-w", "-t", str(wait), "start"], timeout=wait + 60)


def drop_security_overrides(data: Path) -> list[str]:
    """Remove SECURITY_SETTINGS from the restored postgresql.auto.conf (rewritten in place:
    owner and mode stay); returns the lines removed."""
    p = data / "postgresql.auto.conf"
    if not p.exists():
        return []
    kept, dropped = [], []
    for line in p.read_text().splitlines(keepends=True):
        m = re.match(r"\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(=|\s)", line)
        (dropped if m and m.group(1).lower() in SECURITY_SETTINGS else kept).append(line)
    if dropped:
        p.write_text("".join(kept))
        log.warning("settings that decide who may connect removed from the restored "
                    "postgresql.auto.conf: the configuration file outside the data directory "
                    "sets them", settings=[ln.split("=", 1)[0].strip() for ln in dropped])
    return dropped


def probe(dsn: str) -> tuple[bool | None, str | None]:
    """(True: a primary, False: in recovery, None: no session; the refusal when none)."""
    try:
        with psycopg.connect(dsn, connect_timeout=3) as c:
            return (not c.execute(query(__package__, "in_recovery")).fetchone()[0]), None
    except psycopg.Error as e:
        return None, " ".join(str(e).split()) or type(e).__name__

