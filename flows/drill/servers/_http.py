"""What every local protocol stand-in shares: a handler class bound to its state, and a server on loopback in a thread."""

from __future__ import annotations

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def bound_handler(base: type[BaseHTTPRequestHandler], **state: Any) -> type[BaseHTTPRequestHandler]:
    """A subclass of ``base`` carrying ``state`` as class attributes (``ThreadingHTTPServer`` wants a class)."""
    return type("Handler", (base,), state)


def serve_in_thread(handler: type[BaseHTTPRequestHandler], name: str, *, tls: ssl.SSLContext | None = None,
                    poll_interval: float = 0.5) -> ThreadingHTTPServer:
    """Start ``handler`` on 127.0.0.1 (a port the OS picks) in a daemon thread; returns the running server."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, args=(poll_interval,), name=name, daemon=True).start()
    return server


class StandIn:
    """What every stand-in's state holds: the calls it saw, the faults to inject next, and its running server."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.faults: list[tuple[int, dict[str, str]]] = []
        self.lock = threading.Lock()
        self.httpd: ThreadingHTTPServer | None = None
        self.url = ""

    def fail_next(self, status: int, times: int = 1, headers: dict[str, str] | None = None) -> None:
        """The next ``times`` accepted requests get ``status`` (e.g. 429 with a Retry-After header)."""
        with self.lock:
            self.faults.extend([(status, headers or {})] * times)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()
