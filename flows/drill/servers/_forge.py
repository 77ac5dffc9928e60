"""Plumbing shared by the local GitHub and GitLab protocol servers.

Both vendors speak JSON over HTTP with ``Link`` pagination and rate-limit headers, so
the servers share: a ThreadingHTTPServer on 127.0.0.1 (port 0), a route table of
``(method, regex) -> handler``, a record of every call, and one-shot fault injection
(``inject``) for retry tests. Vendor specifics (auth header, error bodies, routes)
live in ``github.py`` / ``gitlab.py``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit


@dataclass
class Call:
    """One request as the server saw it. ``authorized`` says whether a valid token came with it."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str]
    status: int = 0
    authorized: bool = False
    at: float = field(default_factory=time.monotonic)
    """When the request arrived (monotonic seconds): rate-limit tests read the spacing of calls from it."""


@dataclass
class Fault:
    method: str
    pattern: re.Pattern[str]
    status: int
    headers: dict[str, str]
    body: Any
    times: int


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    content_type: str = "application/json; charset=utf-8"


class Request:
    """What a route handler gets: method, path groups, query (last value wins), JSON body."""

    def __init__(self, method: str, path: str, query: dict[str, str], body: Any, headers: dict[str, str], match: re.Match[str]):
        self.method = method
        self.path = path
        self.query = query
        self.body = body
        self.headers = headers
        self.match = match

    def group(self, name: str) -> str:
        return self.match.group(name)


Handler = Callable[[Request], Reply]


class ForgeServer:
    """Base: subclasses register routes in ``_routes()`` and implement ``_authorize``."""

    vendor = "forge"

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._faults: list[Fault] = []
        self._lock = threading.RLock()
        self._routes_table: list[tuple[str, re.Pattern[str], Handler]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._register()

    # ------------------------------------------------------------- life cycle

    def start(self) -> ForgeServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"{self.vendor}-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------- test controls

    def inject(self, method: str, path_regex: str, status: int, *, headers: dict[str, str] | None = None,
               body: Any = None, times: int = 1) -> None:
        """Answer the next ``times`` matching requests with ``status`` instead of the real answer."""
        with self._lock:
            self._faults.append(Fault(method.upper(), re.compile(path_regex), status, dict(headers or {}), body, times))

    def calls_to(self, method: str, path_regex: str) -> list[Call]:
        rx = re.compile(path_regex)
        with self._lock:
            return [c for c in self.calls if c.method == method.upper() and rx.search(c.path)]

    def reset_calls(self) -> None:
        with self._lock:
            self.calls.clear()

    def clear_faults(self) -> None:
        """Drop faults not yet used up, so one test's leftovers cannot hit the next."""
        with self._lock:
            self._faults.clear()

    # ------------------------------------------------------------- for subclasses

    def route(self, method: str, regex: str, handler: Handler) -> None:
        self._routes_table.append((method.upper(), re.compile("^" + regex + "$"), handler))

    def _register(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _authorize(self, headers: dict[str, str], method: str, path: str) -> Reply | None:
        """``None`` when the request may proceed, else the vendor's 401/403 reply."""
        raise NotImplementedError

    def _not_found(self) -> Reply:
        return Reply(404, {"message": "Not Found"})

    def _pre_route(self, method: str, path: str, query: dict[str, str]) -> Reply | None:
        """A chance to answer before routing (redirects for renamed things); ``None`` to route normally."""
        return None

    def _common_headers(self) -> dict[str, str]:
        return {}

    def paginate(self, req: Request, items: list[Any], *, default_per_page: int = 30, wrap: Callable[[list[Any]], Any] | None = None) -> Reply:
        """Slice ``items`` by ``page``/``per_page`` and add a ``Link`` header the way both vendors do."""
        per_page = max(1, min(100, int(req.query.get("per_page", default_per_page))))
        page = max(1, int(req.query.get("page", 1)))
        chunk = items[(page - 1) * per_page: page * per_page]
        headers: dict[str, str] = {}
        links = []
        query = dict(req.query)
        if page * per_page < len(items):
            query.update(page=str(page + 1), per_page=str(per_page))
            links.append(f'<{self.base}{req.path}?{urlencode(query)}>; rel="next"')
        last = max(1, -(-len(items) // per_page))
        query.update(page=str(last), per_page=str(per_page))
        links.append(f'<{self.base}{req.path}?{urlencode(query)}>; rel="last"')
        headers["Link"] = ", ".join(links)
        headers["X-Total"] = str(len(items))
        return Reply(200, wrap(chunk) if wrap else chunk, headers)

    # ------------------------------------------------------------- HTTP

    def _dispatch(self, method: str, raw_path: str, headers: dict[str, str], raw_body: bytes) -> tuple[Reply, Call]:
        parts = urlsplit(raw_path)
        path = parts.path
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        body: Any = None
        if raw_body:
            ctype = headers.get("content-type", "")
            if "json" in ctype:
                body = json.loads(raw_body)
            elif "x-www-form-urlencoded" in ctype:
                body = {k: v[-1] for k, v in parse_qs(raw_body.decode(), keep_blank_values=True).items()}
            else:
                body = raw_body.decode("utf-8", errors="replace")
        visible = {k: v for k, v in headers.items() if k not in ("authorization", "private-token")}
        call = Call(method, path, query, body, visible)
        with self._lock:
            self.calls.append(call)
            for fault in self._faults:
                if fault.times > 0 and fault.method == method and fault.pattern.search(path):
                    fault.times -= 1
                    call.status = fault.status
                    return Reply(fault.status, fault.body if fault.body is not None else {"message": "injected"}, dict(fault.headers)), call
        denied = self._authorize(headers, method, path)
        call.authorized = denied is None
        if denied is not None:
            call.status = denied.status
            return denied, call
        early = self._pre_route(method, path, query)
        if early is not None:
            call.status = early.status
            return early, call
        for route_method, rx, handler in self._routes_table:
            m = rx.match(path)
            if m and route_method == method:
                with self._lock:
                    reply = handler(Request(method, path, query, body, headers, m))
                call.status = reply.status
                return reply, call
        reply = self._not_found()
        call.status = reply.status
        return reply, call

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                return

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    reply, _ = outer._dispatch(self.command, self.path, headers, raw)
                except Exception as exc:  # a bug in the fake must show as a 500, not hang the client
                    reply = Reply(500, {"message": f"server error: {type(exc).__name__}: {exc}"})
                if reply.raw is not None:
                    payload = reply.raw
                elif reply.body is None:
                    payload = b""
                else:
                    payload = json.dumps(reply.body).encode()
                self.send_response(reply.status)
                all_headers = {**outer._common_headers(), **reply.headers}
                if payload or reply.status not in (204, 302, 304):
                    all_headers.setdefault("Content-Type", reply.content_type)
                for k, v in all_headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

        return H
