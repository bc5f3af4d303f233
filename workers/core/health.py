"""Health and Prometheus metrics over HTTP: /healthz (alive), /readyz (ready), /metrics.

The Pulumi program probes these paths on TICKSTACK_HEALTH_PORT (default 9108).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class Metrics:
    """The stream and replica metrics, on their own registry (one per process or test)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.messages = Counter("tickstack_stream_messages", "Websocket messages received, by "
                                "kind (trade, other, malformed, too_large).", ["kind"],
                                registry=r)
        self.trades = Counter("tickstack_stream_trades", "Trades by outcome (accepted, "
                              "duplicate, out_of_order, quarantined).", ["outcome"], registry=r)
        self.batches = Counter("tickstack_stream_batches", "Micro-batches committed on the "
                               "primary.", registry=r)
        self.lag = Gauge("tickstack_stream_lag_seconds", "Wall clock minus the exchange time "
                         "of the newest committed trade.", registry=r)
        self.reconnects = Counter("tickstack_stream_reconnects", "Websocket (re)connect "
                                  "attempts after the first.", registry=r)
        self.gaps = Counter("tickstack_stream_gaps", "Trade-id gaps detected.", registry=r)
        self.gap_trades = Counter("tickstack_stream_gap_trades", "Trade ids missing in the "
                                  "gaps detected.", registry=r)
        self.compactions = Counter("tickstack_stream_compactions", "Buckets compacted into "
                                   "their landing object.", registry=r)
        self.replica_writes = Counter("tickstack_replica_writes", "Dual-write replica writes "
                                      "that succeeded.", registry=r)
        self.replica_failures = Counter("tickstack_replica_failures", "Dual-write replica "
                                        "writes that failed, timed out or were skipped, by "
                                        "reason.", ["reason"], registry=r)
        self.replica_breaker_open = Gauge("tickstack_replica_breaker_open", "1 while the "
                                          "replica circuit breaker is open.", registry=r)
        self.last_commit = Gauge("tickstack_stream_last_commit_timestamp_seconds", "Unix time "
                                 "of the last primary commit.", registry=r)

    def value(self, name: str, **labels) -> float:
        v = self.registry.get_sample_value(name, labels or None)
        return v or 0.0


class HealthServer:
    def __init__(self, metrics: Metrics, host: str, port: int,
                 alive: Callable[[], bool], ready: Callable[[], tuple[bool, str]]):
        self.metrics = metrics
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server API
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, ctype, code = generate_latest(outer.metrics.registry), \
                        CONTENT_TYPE_LATEST, 200
                elif path == "/healthz":
                    ok = alive()
                    body, ctype, code = (b"ok\n" if ok else b"stalled\n"), "text/plain", \
                        200 if ok else 503
                elif path == "/readyz":
                    ok, why = ready()
                    body, ctype, code = (why + "\n").encode(), "text/plain", 200 if ok else 503
                else:
                    body, ctype, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # probes every few seconds: not worth a log line
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="health",
                                        daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Heartbeat:
    """The event loop beats; /healthz fails when it stops beating (a wedged process)."""

    def __init__(self, stale_after: float):
        self.stale_after = stale_after
        self.t = time.monotonic()

    def beat(self) -> None:
        self.t = time.monotonic()

    def alive(self) -> bool:
        return time.monotonic() - self.t < self.stale_after
