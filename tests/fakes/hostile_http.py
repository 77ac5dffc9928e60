"""A loopback HTTP server that misbehaves the same way on every path, for the non-registry clients.

Why it exists: a vendor API on a bad day (or a man in the middle) does not answer with a tidy error;
it stalls, floods, or asks to be left alone for an hour. This stands in for any JSON-over-HTTP vendor
(GitHub, GitLab, Docker Hub, Slack's Web API) by answering every request with one fault:

``drip``          200 ``{"ok": true, ...`` then one byte every 0.3 s, forever (no Content-Length)
``header-drip``   the status line and headers themselves, one byte every 0.3 s, forever (each byte well within
                  any socket timeout: only a deadline on the whole call ends it)
``huge``          200, 1 MiB chunks up to 200 MiB, close-delimited (no Content-Length)
``huge-declared`` 200 with ``Content-Length: 1073741824`` and a first megabyte
``flood-error``   500 with a 50 MiB error body
``429-long``      429 with ``Retry-After: 3600``
``503-long``      503 with ``Retry-After: 3600``
``non-json``      200 ``text/html`` page
``wrong-type``    200 ``["not", "an", "object"]``
``pages-forever`` 200, one event and a fresh ``nextToken``/``NextToken`` every time (a paginated API that
                  never ends: CloudWatch Logs ``FilterLogEvents``, CloudTrail ``LookupEvents`` shapes)

``calls`` counts requests; ``sent`` counts body bytes written.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from flows.drill.servers._http import serve_in_thread

FAULTS = ("drip", "header-drip", "huge", "huge-declared", "flood-error", "429-long", "503-long", "non-json", "wrong-type",
          "pages-forever")


@dataclass
class HostileServer:
    """One fault served on loopback: the server, and the event that ends a drip when the test stops it."""

    fault: str
    server: ThreadingHTTPServer | None = None
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = serve_in_thread(handler, f"hostile-{self.fault}")

    def stop(self) -> None:
        self.stopping.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@dataclass
class HostileHTTP(HostileServer):
    calls: int = 0
    sent: int = 0


def _handler(h: HostileHTTP) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _head(self, status: int, headers: dict[str, str]) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()

        def _write(self, data: bytes) -> None:
            self.wfile.write(data)
            self.wfile.flush()
            h.sent += len(data)

        def _answer(self) -> None:
            h.calls += 1
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            f = h.fault
            try:
                if f == "header-drip":
                    self.close_connection = True
                    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Padding: " + b"p" * 4000
                    for i in range(len(head)):
                        if h.stopping.is_set():
                            break
                        self._write(head[i:i + 1])
                        time.sleep(0.3)
                elif f == "drip":
                    self._head(200, {"Content-Type": "application/json", "Connection": "close"})
                    self.close_connection = True
                    self._write(b'{"ok": true, "ts": "1.2", "channel": "C1", "default_branch": "main", "x": "')
                    while not h.stopping.is_set():
                        self._write(b"a")
                        time.sleep(0.3)
                elif f in ("huge", "huge-declared"):
                    declared = {"Content-Length": str(1 << 30)} if f == "huge-declared" else {"Connection": "close"}
                    self._head(200, {"Content-Type": "application/json", **declared})
                    self.close_connection = True
                    chunk = b"[" + b" " * ((1 << 20) - 1)
                    for _ in range(1 if f == "huge-declared" else 200):
                        if h.stopping.is_set():
                            break
                        self._write(chunk)
                        chunk = b" " * (1 << 20)
                elif f == "flood-error":
                    self._head(500, {"Content-Type": "text/plain", "Connection": "close"})
                    self.close_connection = True
                    for _ in range(50):
                        self._write(b"E" * (1 << 20))
                elif f in ("429-long", "503-long"):
                    body = (b'{"ok": false, "error": "ratelimited", "message": "slow down"}' if f == "429-long"
                            else b'{"ok": false, "error": "service_unavailable", "message": "maintenance"}')
                    self._head(int(f[:3]), {"Content-Type": "application/json", "Retry-After": "3600",
                                            "Content-Length": str(len(body))})
                    self._write(body)
                elif f == "pages-forever":
                    token = f"page-{h.calls}"
                    body = json.dumps({"events": [{"logStreamName": "s", "timestamp": 1700000000000, "message": "m",
                                                   "eventId": token}],
                                       "nextToken": token, "Events": [], "NextToken": token}).encode()
                    self._head(200, {"Content-Type": "application/x-amz-json-1.1", "Content-Length": str(len(body))})
                    self._write(body)
                else:
                    body = b"<html>maintenance</html>" if f == "non-json" else b'["not", "an", "object"]'
                    ctype = "text/html" if f == "non-json" else "application/json"
                    self._head(200, {"Content-Type": ctype, "Content-Length": str(len(body))})
                    self._write(body)
            except OSError:
                pass  # the client left: that is the point

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    return Handler


def start_hostile_http(fault: str) -> HostileHTTP:
    """Serve ``fault`` (one of :data:`FAULTS`) on a free loopback port; ``stop()`` when done."""
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; one of {', '.join(FAULTS)}")
    h = HostileHTTP(fault)
    h.serve(_handler(h))
    return h
