"""A local plain-http server speaking the GCP Secret Manager v1 REST API, for tests.

Why: no Secret Manager emulator exists. ``google-cloud-secret-manager`` with
``transport="rest"``, ``AnonymousCredentials`` and
``ClientOptions(api_endpoint="http://127.0.0.1:PORT")`` talks to this unchanged.

Speaks (JSON, errors in Google's ``{"error": {"code", "message", "status"}}`` shape):
  POST /v1/projects/<p>/secrets?secretId=<s>                 create secret
  GET  /v1/projects/<p>/secrets/<s>                          get secret
  POST /v1/projects/<p>/secrets/<s>:addVersion               add version (checks dataCrc32c when sent)
  GET  /v1/projects/<p>/secrets/<s>/versions                 list versions (pageSize/pageToken)
  POST /v1/projects/<p>/secrets/<s>/versions/<n>:disable     disable
  POST /v1/projects/<p>/secrets/<s>/versions/<n>:enable      enable
  GET  /v1/projects/<p>/secrets/<s>/versions/<n|latest>:access

Calls are recorded in ``server.calls`` (payload data redacted); ``server.fail_next``
injects error answers.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, unquote, urlsplit

from flows.drill.servers._http import StandIn, bound_handler, serve_in_thread

_STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 409: "ALREADY_EXISTS",
           429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 412: "FAILED_PRECONDITION"}


def crc32c(data: bytes) -> int:
    """Bitwise CRC-32C (Castagnoli), written independently of the client's table version."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, list[str]]
    body: dict | None


@dataclass
class _Version:
    number: int
    data: bytes = field(repr=False)
    state: str
    create_time: str
    destroy_time: str | None = None


@dataclass
class _Secret:
    name: str
    create_time: str
    labels: dict[str, str]
    versions: list[_Version] = field(default_factory=list)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


class SecretManagerServer(StandIn):
    def __init__(self) -> None:
        super().__init__()
        self.secrets: dict[str, _Secret] = {}

    def version_json(self, secret: _Secret, v: _Version) -> dict:
        out = {
            "name": f"{secret.name}/versions/{v.number}",
            "createTime": v.create_time,
            "state": v.state,
            "etag": f'"{v.number}-{v.state.lower()}"',
            "replicationStatus": {"automatic": {}},
            "clientSpecifiedPayloadChecksum": True,
        }
        if v.destroy_time:
            out["destroyTime"] = v.destroy_time
        return out


def _redacted(body: object) -> dict | None:
    """A deep copy of a JSON request body for ``server.calls``, with ``payload.data`` replaced."""
    redacted = json.loads(json.dumps(body)) if isinstance(body, dict) else None
    if redacted and isinstance(redacted.get("payload"), dict) and "data" in redacted["payload"]:
        redacted["payload"]["data"] = "<redacted>"
    return redacted


class _SecretManagerHandler(BaseHTTPRequestHandler):
    """One request against ``state`` (set per server by :func:`_handler`).

    ``_handle`` reads, records and applies an injected fault; ``_route`` picks the
    resource handler from the path segments after ``/v1/`` and the ``:verb``.
    """

    protocol_version = "HTTP/1.1"
    state: SecretManagerServer

    def log_message(self, *args: object) -> None:
        pass

    # -- replies -----------------------------------------------------------

    def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, {"error": {"code": status, "message": message, "status": _STATUS.get(status, "UNKNOWN")}},
                   headers)

    def _no_route(self, what: str) -> None:
        self._error(404, f"no route {what}")

    # -- dispatch ----------------------------------------------------------

    def _handle(self, method: str) -> None:
        state = self.state
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return self._error(400, "Invalid JSON payload received.")
        with state.lock:
            state.calls.append(Call(method, unquote(parts.path), query, _redacted(body)))
            fault = state.faults.pop(0) if state.faults else None
        if fault:
            return self._error(fault[0], "injected fault", fault[1])
        path = unquote(parts.path)
        if not path.startswith("/v1/projects/"):
            return self._no_route(path)
        resource, _, verb = path[len("/v1/"):].partition(":")
        with state.lock:
            return self._route(method, resource.split("/"), verb, query, body or {})

    def _route(self, method: str, segs: list[str], verb: str, query: dict, body: dict) -> None:
        """``segs`` is ``projects/<p>/secrets[/<s>[/versions[/<n>]]]`` split on ``/``."""
        if method == "POST" and len(segs) == 3 and segs[2] == "secrets" and not verb:
            return self._create(segs[1], query, body)
        if len(segs) < 4 or segs[2] != "secrets":
            return self._no_route("/".join(segs))
        name = "/".join(segs[:4])
        secret = self.state.secrets.get(name)
        if secret is None:
            return self._error(404, f"Secret [{name}] not found or has no versions.")
        if len(segs) == 4:
            return self._secret(method, secret, verb, body)
        if len(segs) == 5 and segs[4] == "versions" and method == "GET" and not verb:
            return self._list(secret, query)
        if len(segs) == 6 and segs[4] == "versions":
            return self._version(method, secret, segs[5], verb)
        return self._no_route("/".join(segs))

    # -- secrets -----------------------------------------------------------

    def _create(self, project: str, query: dict, body: dict) -> None:
        secret_id = (query.get("secretId") or [""])[0]
        if not secret_id:
            return self._error(400, "secretId is required")
        name = f"projects/{project}/secrets/{secret_id}"
        if name in self.state.secrets:
            return self._error(409, f"Secret [{name}] already exists.")
        s = _Secret(name=name, create_time=_now(), labels=body.get("labels") or {})
        self.state.secrets[name] = s
        return self._send(200, self._secret_json(s))

    def _secret(self, method: str, secret: _Secret, verb: str, body: dict) -> None:
        if method == "GET" and not verb:
            return self._send(200, self._secret_json(secret))
        if method == "POST" and verb == "addVersion":
            return self._add_version(secret, body)
        return self._no_route(f"{secret.name}:{verb}")

    def _secret_json(self, s: _Secret) -> dict:
        return {"name": s.name, "createTime": s.create_time, "labels": s.labels,
                "replication": {"automatic": {}}, "etag": f'"{len(s.versions)}"'}

    # -- versions ----------------------------------------------------------

    def _add_version(self, secret: _Secret, body: dict) -> None:
        payload = body.get("payload") or {}
        try:
            data = base64.b64decode(payload.get("data", ""), validate=True)
        except ValueError:
            return self._error(400, "payload.data is not valid base64")
        if "dataCrc32c" in payload and int(payload["dataCrc32c"]) != crc32c(data):
            return self._error(400, "Checksum mismatch: data_crc32c does not match the payload.")
        v = _Version(number=len(secret.versions) + 1, data=data, state="ENABLED", create_time=_now())
        secret.versions.append(v)
        return self._send(200, self.state.version_json(secret, v))

    def _list(self, secret: _Secret, query: dict) -> None:
        size = int((query.get("pageSize") or ["25"])[0] or 25)
        start = int((query.get("pageToken") or ["0"])[0] or 0)
        newest_first = sorted(secret.versions, key=lambda v: v.number, reverse=True)
        page = newest_first[start:start + size]
        out: dict = {"versions": [self.state.version_json(secret, v) for v in page], "totalSize": len(newest_first)}
        if start + size < len(newest_first):
            out["nextPageToken"] = str(start + size)
        return self._send(200, out)

    def _version(self, method: str, secret: _Secret, which: str, verb: str) -> None:
        v = _find_version(secret, which)
        if v is None:
            return self._error(404, f"Secret Version [{secret.name}/versions/{which}] not found.")
        if method == "GET" and verb == "access":
            return self._access(secret, v)
        if method == "GET" and not verb:
            return self._send(200, self.state.version_json(secret, v))
        if method == "POST" and verb in ("disable", "enable"):
            return self._set_state(secret, v, "DISABLED" if verb == "disable" else "ENABLED")
        return self._no_route(f"{secret.name}/versions/{which}:{verb}")

    def _access(self, secret: _Secret, v: _Version) -> None:
        if v.state != "ENABLED":
            return self._error(412, f"Secret Version [{secret.name}/versions/{v.number}] is in {v.state} state.")
        return self._send(200, {
            "name": f"{secret.name}/versions/{v.number}",
            "payload": {"data": base64.b64encode(v.data).decode(), "dataCrc32c": str(crc32c(v.data))},
        })

    def _set_state(self, secret: _Secret, v: _Version, new_state: str) -> None:
        if v.state == "DESTROYED":
            return self._error(412, f"Secret Version [{secret.name}/versions/{v.number}] is destroyed.")
        v.state = new_state
        return self._send(200, self.state.version_json(secret, v))

    def _dispatch(self) -> None:
        self._handle(self.command)

    do_GET = do_POST = do_PATCH = do_DELETE = _dispatch


def _find_version(secret: _Secret, which: str) -> _Version | None:
    """Version ``which`` (a number, or ``latest`` = the newest ENABLED one) of ``secret``, or None."""
    if which == "latest":
        enabled = [v for v in secret.versions if v.state == "ENABLED"]
        return enabled[-1] if enabled else None
    return next((x for x in secret.versions if str(x.number) == which), None)


def start_secret_manager_server() -> SecretManagerServer:
    """Start the server on 127.0.0.1 (OS-chosen port) in a daemon thread; ``server.url`` is the endpoint."""
    state = SecretManagerServer()
    state.httpd = serve_in_thread(bound_handler(_SecretManagerHandler, state=state), "fake-secretmanager")
    state.url = f"http://127.0.0.1:{state.httpd.server_address[1]}"
    return state
