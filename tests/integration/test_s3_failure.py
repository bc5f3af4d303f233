"""The S3 server dies mid-ingest: one line that says so, exit 1, no traceback (issue 21).

The S3 server here is a throwaway moto of this test's own (killed with SIGKILL, as a crash),
so the session's S3 and its other tests are untouched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from infra.local.procs import free_port, wait_until
from infra.local.s3 import Moto, s3_client
from tests.conftest import REPO
from tests.integration.pipeline import Stack

DAY = "BTCUSDT-trades-2019-04-01"


def test_s3_server_crash_mid_ingest_is_one_line_and_exit_1(local_env, shared_data, tmp_path):
    moto = Moto(tmp_path / "s3", free_port())
    stack = Stack(local_env)
    try:
        moto.start()
        moto.ensure_buckets(["crash-landing"])
        env = {**stack.cli_env(), "TICKSTACK_S3_ENDPOINT_URL": moto.endpoint,
               "TICKSTACK_LANDING_BUCKET": "crash-landing",
               # small flushes: landing writes all through the file, so the kill lands mid-run
               "TICKSTACK_INGEST_FLUSH_ROWS": "2000"}
        proc = subprocess.Popen([sys.executable, "-m", "workers", "ingest",
                                 str(shared_data / f"{DAY}.csv")], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        s3 = s3_client(moto.endpoint)
        landed = wait_until(lambda: s3.list_objects_v2(
            Bucket="crash-landing", Prefix="raw/").get("KeyCount", 0) > 0, 120, 0.2)
        assert landed and proc.poll() is None, "the ingest must be mid-run when S3 dies"
        os.kill(moto.pid(), signal.SIGKILL)
        t0 = time.monotonic()
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, (out[-1000:], err[-3000:])
        assert "Traceback" not in err
        reason = err.strip().splitlines()[-1]
        assert reason.startswith("ingest: S3 error ("), err[-2000:]
        assert moto.endpoint.split("//")[1] in reason  # which server it could not reach
        print(f"S3 gone -> exit after {time.monotonic() - t0:.1f} s: {reason}")
    finally:
        moto.stop()
        stack.close()
