"""A small HTTP gateway in front of the real local registry, for the paths a plain registry cannot show.

Why: Debian's distribution 2.8 always sends ``Docker-Content-Digest``, never
paginates ``tags/list``, never rate-limits and runs without auth. Real
registries do all of these (Docker Hub: bearer tokens from auth.docker.io,
``ratelimit-remaining``, 429 with ``Retry-After``; some proxies strip the digest
header). The gateway forwards every request to the real registry and then
applies the knobs below, so the content (bytes, digests) is still the real
registry's.

Knobs (attributes of :class:`OciGateway`, change them between tests):

* ``strip_digest`` - drop ``Docker-Content-Digest`` from answers (forces GET-and-hash);
* ``page_size`` - paginate ``tags/list`` with ``Link: <...?n=..&last=..>; rel="next"``;
* ``bearer`` - demand ``Authorization: Bearer`` and serve a Docker-style token
  endpoint at ``/token`` (``realm``/``service``/``scope`` challenge), optionally
  checking basic credentials ``token_user``/``token_password``;
* ``basic`` - demand HTTP basic ``(user, password)`` directly;
* ``failures`` - a queue of ``(status, headers)`` answered before forwarding (429/503...);
* ``ratelimit`` - ``(limit, remaining)`` sent as ``ratelimit-limit``/``ratelimit-remaining``.

Every request is recorded in ``calls`` (method, path, whether it carried auth,
answered status) for assertions; secrets are never recorded.
"""

from __future__ import annotations

import base64
import http.client
import json
import secrets
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

from flows.drill.servers._http import bound_handler, serve_in_thread

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authenticate",
       "proxy-authorization", "content-length"}


@dataclass
class Call:
    method: str
    path: str
    auth: str | None  # "bearer" / "basic" / None: the scheme only, never the value
    status: int


@dataclass
class OciGateway:
    upstream_host: str
    upstream_port: int
    strip_digest: bool = False
    page_size: int | None = None
    bearer: bool = False
    token_user: str | None = None
    token_password: str | None = None
    token_expires_in: int = 300
    basic: tuple[str, str] | None = None
    failures: deque = field(default_factory=deque)
    ratelimit: tuple[int, int] | None = None
    calls: list[Call] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    issued: dict[str, str] = field(default_factory=dict)  # token -> scope
    server: ThreadingHTTPServer | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def host(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.server_address[1]}"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}"

    def reset(self) -> None:
        """Back to a transparent proxy with empty records."""
        self.strip_digest = False
        self.page_size = None
        self.bearer = False
        self.token_user = self.token_password = None
        self.token_expires_in = 300
        self.basic = None
        self.failures.clear()
        self.ratelimit = None
        self.calls.clear()
        self.token_requests.clear()
        self.issued.clear()

    def fail_next(self, status: int, times: int = 1, headers: dict[str, str] | None = None) -> None:
        for _ in range(times):
            self.failures.append((status, dict(headers or {})))

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()


def _basic(user: str | None, password: str | None) -> str:
    """The ``Authorization`` value HTTP basic auth sends for ``user``/``password``."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _repo_scope(path: str, method: str) -> str | None:
    """``repository:<name>:pull|delete`` for a ``/v2/<name>/(manifests|tags|blobs)/...`` path; None for others."""
    parts = path.split("/")
    if not (path.startswith("/v2/") and len(parts) > 4):
        return None
    marker = next((i for i, p in enumerate(parts) if p in ("manifests", "tags", "blobs")), None)
    repo = "/".join(parts[2:marker]) if marker else ""
    action = "delete" if method == "DELETE" else "pull"
    return f"repository:{repo}:{action}"


class _GatewayHandler(BaseHTTPRequestHandler):
    """One request through ``gw`` (set per gateway by :func:`_handler`).

    ``_handle``: the token endpoint, else an injected failure, else the auth gate,
    else forward upstream and apply the knobs (strip digest, paginate tags) to the answer.
    """

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes: avoid 40 ms delayed-ACK stalls
    gw: OciGateway

    def log_message(self, *args: object) -> None:  # quiet
        pass

    # -- replies -----------------------------------------------------------

    def _auth_scheme(self) -> str | None:
        h = self.headers.get("Authorization")
        return h.split(" ", 1)[0].lower() if h else None

    def _send(self, status: int, headers: dict[str, str], body: bytes = b"", length: str | None = None) -> None:
        """Answer and record the call; ``length`` overrides Content-Length (a HEAD keeps the upstream one)."""
        gw = self.gw
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if gw.ratelimit:
            self.send_header("ratelimit-limit", f"{gw.ratelimit[0]};w=21600")
            self.send_header("ratelimit-remaining", f"{gw.ratelimit[1]};w=21600")
        self.send_header("Content-Length", str(len(body)) if length is None else length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        with gw.lock:
            gw.calls.append(Call(self.command, self.path, self._auth_scheme(), status))

    def _error(self, status: int, code: str, extra: dict[str, str] | None = None) -> None:
        body = json.dumps({"errors": [{"code": code, "message": code.lower().replace("_", " ")}]}).encode()
        self._send(status, {"Content-Type": "application/json", **(extra or {})}, body)

    # -- token endpoint and auth --------------------------------------------

    def _token(self) -> None:
        gw = self.gw
        q = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        with gw.lock:
            gw.token_requests.append(q)
        if gw.token_user is not None and self.headers.get("Authorization") != _basic(gw.token_user, gw.token_password):
            self._error(401, "UNAUTHORIZED")
            return
        tok = secrets.token_urlsafe(16)
        with gw.lock:
            gw.issued[tok] = q.get("scope", "")
        body = json.dumps({"token": tok, "access_token": tok, "expires_in": gw.token_expires_in}).encode()
        self._send(200, {"Content-Type": "application/json"}, body)

    def _authorised(self, repo_scope: str) -> bool:
        gw = self.gw
        h = self.headers.get("Authorization", "")
        if gw.basic and h != _basic(*gw.basic):
            self._error(401, "UNAUTHORIZED", {"WWW-Authenticate": 'Basic realm="gateway"'})
            return False
        if gw.bearer:
            tok = h[7:] if h.startswith("Bearer ") else None
            with gw.lock:
                scope = gw.issued.get(tok or "")
            if scope is None or scope != repo_scope:
                challenge = (f'Bearer realm="{gw.base_url}/token",service="gateway.test",scope="{repo_scope}"')
                self._error(401, "UNAUTHORIZED", {"WWW-Authenticate": challenge})
                return False
        return True

    def _injected_failure(self) -> bool:
        """Answer the next queued ``(status, headers)`` failure, if any; True when one was answered."""
        gw = self.gw
        if not gw.failures:
            return False
        with gw.lock:
            status, headers = gw.failures.popleft() if gw.failures else (None, None)
        if status is None:
            return False
        self._error(status, "TOOMANYREQUESTS" if status == 429 else "UNAVAILABLE", headers)
        return True

    # -- forwarding ----------------------------------------------------------

    def _handle(self) -> None:
        path = urlsplit(self.path).path
        if path == "/token":
            self._token()
            return
        if self._injected_failure():
            return
        scope = _repo_scope(path, self.command)
        if scope is not None and not self._authorised(scope):
            return
        paginate = bool(self.gw.page_size) and path.endswith("/tags/list")
        status, headers, data, length = self._forward(path if paginate else self.path)
        if self.gw.strip_digest:
            headers = {k: v for k, v in headers.items() if k.lower() not in ("docker-content-digest", "etag")}
        if paginate and status == 200:
            data, link = self._page(path, json.loads(data))
            if link:
                headers["Link"] = link
        if self.command == "HEAD":
            self._send(status, headers, length=length or "0")  # keep the upstream Content-Length for HEAD
            return
        self._send(status, headers, data)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = _handle

    def _forward(self, upstream_path: str) -> tuple[int, dict[str, str], bytes, str | None]:
        """Send this request upstream (auth and hop-by-hop headers dropped): status, headers, body, Content-Length."""
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        fwd = {k: v for k, v in self.headers.items() if k.lower() not in HOP | {"host", "authorization"}}
        conn = http.client.HTTPConnection(self.gw.upstream_host, self.gw.upstream_port, timeout=30)
        try:
            conn.request(self.command, upstream_path, body=body, headers=fwd)
            resp = conn.getresponse()
            data = resp.read()
            headers = {k: v for k, v in resp.getheaders() if k.lower() not in HOP}
        finally:
            conn.close()
        return resp.status, headers, data, resp.getheader("Content-Length")

    def _page(self, path: str, doc: dict) -> tuple[bytes, str | None]:
        q = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        n = int(q.get("n", self.gw.page_size))
        tags = sorted(doc.get("tags") or [])
        last = q.get("last")
        if last:
            tags = [t for t in tags if t > last]
        page, rest = tags[:n], tags[n:]
        link = f'<{path}?{urlencode({"n": n, "last": page[-1]})}>; rel="next"' if rest and page else None
        return json.dumps({"name": doc.get("name"), "tags": page}).encode(), link


def start_gateway(upstream_base_url: str) -> OciGateway:
    """Start a gateway on 127.0.0.1 (port 0) in front of ``http://host:port`` of a real registry."""
    up = urlsplit(upstream_base_url)
    gw = OciGateway(up.hostname or "127.0.0.1", up.port or 80)
    gw.server = serve_in_thread(bound_handler(_GatewayHandler, gw=gw), "oci-gateway", poll_interval=0.05)
    return gw
