"""A hostile OCI distribution registry on loopback, for the fault-injection suite (issue 15, point 2).

Why a stand-in: no real registry misbehaves on demand. This one speaks the
distribution API's wire format (``GET /v2/``, ``GET /v2/<name>/tags/list``,
``HEAD``/``GET /v2/<name>/manifests/<reference>`` with ``Docker-Content-Digest``,
``{"errors": [{"code", "message"}]}`` bodies) and serves one repository,
``checkmarx/kics``, whose ``latest`` is a (malicious, per the test's pack)
OCI index with two children. One more tag, :data:`FAULTY_TAG`, misbehaves the
way ``fault`` says; a few faults (``tags-*``) break the tag list instead:

``401``          the faulty tag answers 401 with no usable challenge
``429``          the faulty tag is always rate limited (``Retry-After: 1``)
``500``          the faulty tag always answers 500
``503-long``     the faulty tag answers 503 with ``Retry-After: 3600``
``non-json``     the faulty tag is an "index" whose bytes are not JSON
``malformed``    an index whose first entry has no ``digest``
``wrong-types``  an index whose ``manifests`` is a string
``huge``         a 400 MB index, streamed with no Content-Length
``drip``         an index body dripping one byte every 0.5 s, forever
``header-drip``  the faulty tag's status line and headers (HEAD and GET) drip one byte every 0.3 s, forever
``tags-unbounded`` tags/list pages forever (1000 tags a page, ``Link: rel="next"``)
``tags-string``  tags/list answers ``{"tags": "latest"}``
``not-registry`` every path answers 404, ``/v2/`` too
``echo-secret``  asks for basic auth, then answers 500 to every repository call with the password it was
                 sent quoted in the error body (a vendor echoing a credential in an error)

``calls`` counts requests per (method, path prefix) for assertions.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from tests.fakes.hostile_http import HostileServer

REPO = "checkmarx/kics"
FAULTY_TAG = "v2.1.20"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
FAULTS = ("401", "429", "500", "503-long", "non-json", "malformed", "wrong-types", "huge", "drip",
          "header-drip", "tags-unbounded", "tags-string", "not-registry", "echo-secret")


def _digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _child(arch: str) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"digest": _digest(arch.encode()),
                       "mediaType": "application/vnd.oci.image.config.v1+json", "size": len(arch)}, "layers": []},
                      sort_keys=True).encode()


CHILDREN = {f"linux/{a}": _child(a) for a in ("amd64", "arm64")}
LATEST = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
    {"mediaType": OCI_MANIFEST, "digest": _digest(b), "size": len(b),
     "platform": {"os": p.split("/")[0], "architecture": p.split("/")[1]}} for p, b in CHILDREN.items()]},
    sort_keys=True).encode()
LATEST_DIGEST = _digest(LATEST)
CHILD_DIGESTS = {p: _digest(b) for p, b in CHILDREN.items()}


def _faulty_index(fault: str) -> bytes:
    if fault == "non-json":
        return b"<html>this is not a manifest</html>"
    if fault == "malformed":
        return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                           "manifests": [{"mediaType": OCI_MANIFEST, "size": 3}]}).encode()
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": "sha256:abc"}).encode()


@dataclass
class HostileRegistry(HostileServer):
    calls: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        return self.url


def _handler(reg: HostileRegistry) -> type[BaseHTTPRequestHandler]:  # noqa: C901 - one small method per fault
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, code: str, headers: dict[str, str] | None = None) -> None:
            body = json.dumps({"errors": [{"code": code, "message": f"{code.lower()} (hostile registry)"}]}).encode()
            self._send(status, body, {"Content-Type": "application/json", **(headers or {})})

        def _stream_forever(self, chunk: bytes, pause: float, limit: int | None) -> None:
            """A close-delimited body (no Content-Length): ``chunk`` after ``chunk`` until ``limit`` or the client leaves."""
            self.send_response(200)
            self.send_header("Content-Type", OCI_INDEX)
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            sent = 0
            try:
                while not reg.stopping.is_set() and (limit is None or sent < limit):
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    sent += len(chunk)
                    if pause:
                        time.sleep(pause)
            except OSError:
                pass

        def _drip_head(self) -> None:
            """The status line and headers one byte at a time, each well within any socket timeout."""
            self.close_connection = True
            head = b"HTTP/1.1 200 OK\r\nContent-Type: " + OCI_INDEX.encode() + b"\r\nX-Padding: " + b"p" * 4000
            try:
                for i in range(len(head)):
                    if reg.stopping.is_set():
                        return
                    self.wfile.write(head[i:i + 1])
                    self.wfile.flush()
                    time.sleep(0.3)
            except OSError:
                pass

        def do_HEAD(self) -> None:
            self._handle()

        def do_GET(self) -> None:
            self._handle()

        def _handle(self) -> None:
            parts = urlsplit(self.path)
            path = parts.path
            with reg.lock:
                reg.calls[(self.command, path.split("/manifests/")[0] if "/manifests/" in path else path)] += 1
            if reg.fault == "not-registry":
                return self._error(404, "NOT_FOUND")
            if reg.fault == "echo-secret":
                return self._echo_secret(path)
            if path in ("/v2/", "/v2"):
                return self._send(200, b"{}", {"Content-Type": "application/json"})
            if path == f"/v2/{REPO}/tags/list":
                return self._tags(parse_qs(parts.query))
            prefix = f"/v2/{REPO}/manifests/"
            if not path.startswith(prefix):
                return self._error(404, "NAME_UNKNOWN")
            return self._manifest(path[len(prefix):])

        def _echo_secret(self, path: str) -> None:
            auth = self.headers.get("Authorization", "")
            if not auth.startswith("Basic "):
                return self._error(401, "UNAUTHORIZED", {"WWW-Authenticate": 'Basic realm="hostile"'})
            if path in ("/v2/", "/v2"):
                return self._send(200, b"{}", {"Content-Type": "application/json"})
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            body = json.dumps({"errors": [{"code": "INTERNAL", "message": f"backend rejected {user}:{password} "
                                           f"(token={password})"}]}).encode()
            return self._send(500, body, {"Content-Type": "application/json"})

        def _tags(self, query: dict[str, list[str]]) -> None:
            if reg.fault == "tags-string":
                return self._send(200, b'{"name": "checkmarx/kics", "tags": "latest"}', {"Content-Type": "application/json"})
            if reg.fault == "tags-unbounded":
                page = int(query.get("page", ["0"])[0])
                tags = [f"t{page}-{i}" for i in range(1000)] + (["latest"] if page == 0 else [])
                body = json.dumps({"name": REPO, "tags": tags}).encode()
                return self._send(200, body, {"Content-Type": "application/json",
                                              "Link": f'</v2/{REPO}/tags/list?page={page + 1}>; rel="next"'})
            body = json.dumps({"name": REPO, "tags": ["latest", FAULTY_TAG, "v1"]}).encode()
            return self._send(200, body, {"Content-Type": "application/json"})

        def _manifest(self, ref: str) -> None:
            known = {"latest": LATEST, LATEST_DIGEST: LATEST, **{d: CHILDREN[p] for p, d in CHILD_DIGESTS.items()}}
            if ref in known:
                body = known[ref]
                media = OCI_INDEX if body is LATEST else OCI_MANIFEST
                return self._send(200, body, {"Content-Type": media, "Docker-Content-Digest": _digest(body)})
            if reg.fault in ("non-json", "malformed", "wrong-types") and ref == _digest(_faulty_index(reg.fault)):
                return self._send(200, _faulty_index(reg.fault), {"Content-Type": OCI_INDEX})  # by digest, as pushed
            if ref != FAULTY_TAG or reg.fault.startswith("tags-"):
                return self._error(404, "MANIFEST_UNKNOWN")
            return self._fault()

        def _fault(self) -> None:
            f = reg.fault
            if f == "401":
                return self._error(401, "UNAUTHORIZED")
            if f == "429":
                return self._error(429, "TOOMANYREQUESTS", {"Retry-After": "1"})
            if f == "500":
                return self._error(500, "INTERNAL")
            if f == "503-long":
                return self._error(503, "UNAVAILABLE", {"Retry-After": "3600"})
            if f == "header-drip":
                return self._drip_head()
            if self.command == "HEAD":  # no digest header: the client must GET and hash the bytes
                return self._send(200, b"", {"Content-Type": OCI_INDEX})
            if f == "huge":
                return self._stream_forever(b" " * (1 << 20), 0, 400 << 20)
            if f == "drip":
                return self._stream_forever(b" ", 0.5, None)
            body = _faulty_index(f)
            return self._send(200, body, {"Content-Type": OCI_INDEX})

    return Handler


def start_hostile_registry(fault: str) -> HostileRegistry:
    """Serve ``fault`` (one of :data:`FAULTS`) on a free loopback port; ``stop()`` when done."""
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; one of {', '.join(FAULTS)}")
    reg = HostileRegistry(fault)
    reg.serve(_handler(reg))
    return reg


def pack_yaml() -> str:
    """An advisory pack naming ``latest``'s index and children as malicious and :data:`FAULTY_TAG` as overwritten."""
    malicious = [{"digest": LATEST_DIGEST, "kind": "index", "tags": ["latest"], "source": "test"}] + [
        {"digest": d, "kind": "manifest", "platform": p, "parent": LATEST_DIGEST, "source": "test"}
        for p, d in CHILD_DIGESTS.items()]
    return json.dumps({"id": "hostile-pack", "title": "hostile registry", "window": {"start": "2026-04-22T12:35:00Z",
                       "source": "test"}, "images": [{"repository": REPO, "tags_overwritten": ["latest", FAULTY_TAG],
                                                      "malicious": malicious}]})
