"""A TCP proxy on loopback that can make a server look stopped, hung or frozen (tests, bench).

Modes: "forward" relays to the target; "down" drops every connection (a stopped server);
"hang" accepts and never answers (no target needed); "freeze" keeps connections open but stops
relaying (a server that hangs mid-query).
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading


class Proxy:
    def __init__(self, target_port: int | None = None, mode: str = "forward"):
        self.target_port = target_port
        self.mode = mode
        self.accepted = 0
        self._lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self._lsock.getsockname()[1]
        self._held: list[socket.socket] = []
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def set(self, mode: str) -> None:
        with self._lock:
            self.mode = mode
            if mode == "down":
                for a, b in self._pairs:
                    for s in (a, b):
                        _close(s)
                self._pairs.clear()

    def close(self) -> None:
        self._closed = True
        self.set("down")
        _close(self._lsock)
        for s in self._held:
            _close(s)

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                c, _ = self._lsock.accept()
            except OSError:
                return
            self.accepted += 1
            mode = self.mode
            if mode == "down":
                _close(c)
            elif mode in ("hang", "freeze") or self.target_port is None:
                self._held.append(c)  # accepted, never answered
            else:
                try:
                    t = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                except OSError:
                    _close(c)
                    continue
                with self._lock:
                    self._pairs.append((c, t))
                threading.Thread(target=self._pump, args=(c, t), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peer = {a: b, b: a}
        try:
            while True:
                if self.mode == "freeze":
                    select.select([], [], [], 0.05)
                    continue
                r, _, _ = select.select([a, b], [], [], 0.05)
                for s in r:
                    data = s.recv(65536)
                    if not data:
                        return
                    peer[s].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            _close(a)
            _close(b)


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        s.close()
