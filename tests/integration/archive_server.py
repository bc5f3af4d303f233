"""A local HTTP server laid out like Binance's public archive, with faults on demand (tests, bench).

It serves a directory whose tree is the archive's (`data/spot/daily/trades/BTCUSDT/…zip` and
`.CHECKSUM` beside each), answers HEAD and GET with byte ranges (206, 416) over HTTP/1.1
keep-alive, and records every request. Faults (archive_faults.py) are queued per path and used
up one per GET, or set for every GET of a path.

`sent[path]` counts the body bytes written for each path (all requests).

The builders make such a directory from the real day in ../shared/data (its real CHECKSUM) and
from generated days in the spot `trades` layout.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import socket
import threading
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.integration.archive_faults import Fault, fault_ignores_range

REAL_DAY = date(2019, 4, 1)
REAL_NAME = "BTCUSDT-trades-2019-04-01"


@dataclass(frozen=True)
class Req:
    t: float  # time.monotonic() when it arrived
    method: str
    path: str
    range: str | None
    status: int


class ArchiveServer:
    def __init__(self, root: Path, host: str = "127.0.0.1"):
        self.root = Path(root)
        self.host = host  # any of 127.0.0.0/8 on Linux: a second server is another host
        self.requests: list[Req] = []
        self.queued: dict[str, list[Fault]] = {}
        self.every: dict[str, Fault] = {}
        self.sent: dict[str, int] = {}
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    # --- faults and the request log ----------------------------------------------------------
    def queue(self, path: str, *faults: Fault) -> None:
        """Faults for the next GETs of `path` (archive path, e.g. data/spot/…/X.zip), in order."""
        with self._lock:
            self.queued.setdefault(path.lstrip("/"), []).extend(faults)

    def always(self, path: str, fault: Fault | None) -> None:
        with self._lock:
            if fault is None:
                self.every.pop(path.lstrip("/"), None)
            else:
                self.every[path.lstrip("/")] = fault

    def clear(self) -> None:
        with self._lock:
            self.queued.clear()
            self.every.clear()
            self.requests.clear()
            self.sent.clear()

    def gets(self, suffix: str = "") -> list[Req]:
        return [r for r in self.requests if r.method == "GET" and r.path.endswith(suffix)]

    def _next_fault(self, path: str) -> Fault | None:
        with self._lock:
            q = self.queued.get(path)
            if q:
                return q.pop(0)
            return self.every.get(path)

    def _head_fault(self, path: str) -> Fault | None:
        with self._lock:
            f = self.every.get(path)
        return f if f is not None and f.on_head else None

    def _sent(self, path: str, n: int) -> None:
        with self._lock:
            self.sent[path] = self.sent.get(path, 0) + n

    def _record(self, req: Req) -> None:
        with self._lock:
            self.requests.append(req)

    # --- life --------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ArchiveServer:
        server = self

        class Handler(_Handler):
            archive = server

        self._httpd = ThreadingHTTPServer((self.host, 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True,
                         name="archive-server").start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> ArchiveServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    archive: ArchiveServer

    def log_message(self, *args) -> None:  # quiet: the request log is in ArchiveServer.requests
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        path, _, query = self.path.partition("?")
        path = path.lstrip("/")
        rng = self.headers.get("Range")
        fault = self.archive._next_fault(path) if body else self.archive._head_fault(path)
        if self._refused(path, query, rng, fault):
            return
        data = (self.archive.root / path).resolve().read_bytes()
        if fault and fault.kind == "corrupt":
            mid = len(data) // 2
            data = data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1:]
        if fault and fault.kind == "endless":
            return self._endless(path, rng, data, fault, body)
        span = _span(rng, len(data), fault)
        if span is None:
            self._record(path, rng, 416)
            return self._plain(416, b"", {"Content-Range": f"bytes */{len(data)}"})
        start, end, code = span  # the answer's bytes: data[start:end]
        self._record(path, rng, code)
        if fault and fault.kind == "slow_headers":
            return self._slow_headers(fault.n)
        if fault and fault.kind == "stall" and fault.n is None:
            self.archive.stopping.wait(120)
            self.close_connection = True
            return
        self.send_response(code)
        self.send_header("Content-Type", "application/zip" if path.endswith(".zip")
                         else "text/plain")
        length = end - start
        if fault and (fault.kind == "head_size" and not body or fault.kind == "short_length"):
            length = fault.n
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if body:
            self._body(path, data[start:end], start, fault)

    def _refused(self, path: str, query: str, rng: str | None, fault: Fault | None) -> bool:
        """A redirect, an error status or a 404 in place of the file: answered here."""
        if fault and fault.kind in ("loop", "chain", "redirect"):
            if fault.kind == "loop":
                to = f"/{path}" if query else f"/{path}?loop=1"
            elif fault.kind == "chain":
                hop = int(query.split("=", 1)[1]) if query.startswith("hop=") else 0
                to = f"/{path}?hop={hop + 1}"
            else:
                to = f"{fault.to}/{path}"
            self._record(path, rng, 302)
            self._plain(302, b"", {"Location": to})
            return True
        if fault and fault.kind == "status":
            self._record(path, rng, fault.code)
            extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            self._plain(fault.code, b"slow down\n", extra)
            return True
        file = (self.archive.root / path).resolve()
        if self.archive.root.resolve() not in file.parents or not file.is_file():
            self._record(path, rng, 404)
            self._plain(404, b"<Error><Code>NoSuchKey</Code></Error>\n")
            return True
        return False

    def _body(self, path: str, payload: bytes, start: int, fault: Fault | None) -> None:
        """The announced bytes, or what the fault leaves of them (cut, stalled, throttled)."""
        try:
            if fault and fault.kind in ("cut", "stall", "truncated"):
                keep = fault.n if fault.kind == "cut" else max(0, fault.n - start)
                self.wfile.write(payload[:keep])
                self.wfile.flush()
                self.archive._sent(path, len(payload[:keep]))
                if fault.kind == "stall":
                    self.archive.stopping.wait(120)
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
            elif fault and fault.kind == "throttle":
                step = max(1, fault.n // 20)
                for i in range(0, len(payload), step):
                    self.wfile.write(payload[i:i + step])
                    self.wfile.flush()
                    self.archive._sent(path, len(payload[i:i + step]))
                    time.sleep(step / fault.n)
            else:  # short_length: the rest follows what was announced, then the connection ends
                self.wfile.write(payload)
                self.archive._sent(path, len(payload))
                if fault and fault.kind == "short_length":
                    self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _slow_headers(self, bytes_per_s: int) -> None:
        self.close_connection = True
        try:
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            self.wfile.flush()
            while not self.archive.stopping.wait(1 / bytes_per_s):
                self.wfile.write(b"a")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _endless(self, path: str, rng: str | None, data: bytes, fault: Fault, body: bool) -> None:
        """No length announced (HEAD: only with hide_length): the file, then zeros up to n bytes
        in all, then the connection closes."""
        self._record(path, rng, 200)
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        if not body:  # a HEAD (only with hide_length): no size either
            self.end_headers()
            return
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        sent = 0
        try:
            self.wfile.write(data)
            sent = len(data)
            zeros = bytes(65536)
            while sent < fault.n and not self.archive.stopping.is_set():
                piece = zeros[:fault.n - sent]
                self.wfile.write(piece)
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            self.archive._sent(path, sent)

    def _plain(self, code: int, text: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(text)

    def _record(self, path: str, rng: str | None, code: int) -> None:
        self.archive._record(Req(time.monotonic(), self.command, path, rng, code))


def _span(rng: str | None, size: int, fault: Fault | None) -> tuple[int, int, int] | None:
    """(start, end, status) of the answer to a Range header (None: 416, nothing to send)."""
    start, code = 0, 200
    if rng and rng.startswith("bytes=") and not fault_ignores_range(fault):
        first = rng[6:].split("-", 1)[0]
        start = int(first) if first.isdigit() else 0
        if start >= size:
            return None
        code = 206
    if code == 206 and fault and fault.kind == "range_from":
        start = min(start, fault.n)
    end = size
    if code == 206 and fault and fault.kind == "range_parts":
        end = min(end, start + fault.n)
    return start, end, code


# --- building an archive tree ----------------------------------------------------------------

def archive_path(period: str, symbol: str, when: str, kind: str = "trades",
                 market: str = "spot") -> str:
    return f"data/{market}/{period}/{kind}/{symbol}/{symbol}-{kind}-{when}.zip"


def put(root: Path, path: str, csv: bytes, *, level: int = 6) -> Path:
    """A zip holding one CSV named like the zip, and its `<sha256>  <name>` CHECKSUM."""
    dest = root / path
    dest.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as z:
        z.writestr(dest.name[:-4] + ".csv", csv)
    dest.write_bytes(buf.getvalue())
    digest = hashlib.sha256(buf.getvalue()).hexdigest()
    dest.with_name(dest.name + ".CHECKSUM").write_text(f"{digest}  {dest.name}\n")
    return dest


def put_real_day(root: Path, shared_data: Path) -> Path:
    """The real day and its real CHECKSUM, where the archive keeps them."""
    dest = root / archive_path("daily", "BTCUSDT", REAL_DAY.isoformat())
    dest.parent.mkdir(parents=True, exist_ok=True)
    src = shared_data / f"{REAL_NAME}.zip"
    shutil.copyfile(src, dest)
    shutil.copyfile(src.with_name(src.name + ".CHECKSUM"), dest.with_name(dest.name + ".CHECKSUM"))
    return dest


def day_csv(day: date, rows: int = 50, first_id: int | None = None,
            span_ms: int = 86_400_000) -> bytes:
    """Deterministic spot trades in the first `span_ms` of a day (no header, ms timestamps, the
    real day's layout). Trade ids grow with time across days, as Binance's do (one id in two
    days would be a conflict, quarantined)."""
    t0 = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
    first_id = first_id if first_id is not None else \
        200_000_000 + day.toordinal() % 10_000 * 1_000_000
    step = span_ms // (rows + 1)
    out = []
    for i in range(rows):
        price = 4000 + (day.toordinal() % 97) + (i % 50) / 10
        qty = 0.001 * (1 + i % 13)
        out.append(f"{first_id + i},{price:.8f},{qty:.8f},{price * qty:.8f},"
                   f"{t0 + (i + 1) * step},{'True' if i % 3 else 'False'},True")
    return ("\n".join(out) + "\n").encode()


def days(first: date, last: date) -> Iterable[date]:
    d = first
    while d <= last:
        yield d
        d += timedelta(days=1)


def put_days(root: Path, first: date, last: date, symbol: str = "BTCUSDT", rows: int = 50,
             skip: Iterable[date] = ()) -> list[Path]:
    skip = set(skip)
    return [put(root, archive_path("daily", symbol, d.isoformat()), day_csv(d, rows))
            for d in days(first, last) if d not in skip]


def put_month(root: Path, year: int, month: int, symbol: str = "BTCUSDT", rows: int = 50) -> Path:
    first = date(year, month, 1)
    last = (first + timedelta(days=32)).replace(day=1) - timedelta(days=1)
    csv = b"".join(day_csv(d, rows) for d in days(first, last))
    return put(root, archive_path("monthly", symbol, f"{year:04d}-{month:02d}"), csv)
