"""A local HTTPS server speaking the Azure Key Vault *secrets* REST API, for tests.

Why: no Key Vault emulator exists, and ``azure-keyvault-secrets`` refuses plain
http, so this serves TLS with a self-signed certificate (made with
``cryptography``) and does Key Vault's challenge-auth dance exactly as the
service does: a request without ``Authorization`` gets ``401`` with
``WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/<tenant>",
resource="https://vault.azure.net"``; the SDK then asks its credential for a
token and repeats the request with ``Authorization: Bearer <token>``.

Speaks (``?api-version=...`` on all):
  PUT   /secrets/<name>                 set (new version)
  GET   /secrets/<name>[/<version>]     get (latest when no version); 403 if disabled
  GET   /secrets/<name>/versions        list versions (no values)
  PATCH /secrets/<name>/<version>       update attributes (enabled, exp, nbf), tags, contentType

Every request is recorded in ``server.calls`` (values redacted); ``server.fail_next``
injects error answers (429 with Retry-After, 503, ...).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import ssl
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from ipaddress import IPv4Address
from urllib.parse import parse_qs, unquote, urlsplit

from flows.drill.servers._http import StandIn, bound_handler, serve_in_thread

TENANT = "00000000-0000-0000-0000-00000000dg01"
RESOURCE = "https://vault.azure.net"


def make_self_signed_cert(directory: str) -> tuple[str, str]:
    """Write a self-signed cert for 127.0.0.1/localhost and its key into ``directory``; return the paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = os.path.join(directory, "kv-cert.pem"), os.path.join(directory, "kv-key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return cert_path, key_path


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, list[str]]
    authorized: bool
    body: dict | None


@dataclass
class _Version:
    version: str
    value: str = field(repr=False)
    enabled: bool
    created: int
    updated: int
    content_type: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    nbf: int | None = None
    exp: int | None = None

    def apply_patch(self, body: dict) -> None:
        """Apply a ``PATCH`` body (attributes enabled/nbf/exp, tags, contentType) to this version."""
        attrs = body.get("attributes") or {}
        if "enabled" in attrs:
            self.enabled = bool(attrs["enabled"])
        for key in ("nbf", "exp"):
            if key in attrs:
                setattr(self, key, attrs[key])
        if "tags" in body:
            self.tags = body["tags"] or {}
        if "contentType" in body:
            self.content_type = body["contentType"]
        self.updated = int(time.time())


class KeyVaultServer(StandIn):
    """State + HTTPS server; use :func:`start_keyvault_server` to run one."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token
        self.secrets: dict[str, list[_Version]] = {}
        self.cert_path = ""

    # -- model -------------------------------------------------------------

    def bundle(self, name: str, v: _Version, *, with_value: bool) -> dict:
        attributes = {
            "enabled": v.enabled,
            "created": v.created,
            "updated": v.updated,
            "recoveryLevel": "Recoverable+Purgeable",
            "recoverableDays": 90,
        }
        if v.nbf is not None:
            attributes["nbf"] = v.nbf
        if v.exp is not None:
            attributes["exp"] = v.exp
        out: dict = {"id": f"{self.url}/secrets/{name}/{v.version}", "attributes": attributes, "tags": v.tags}
        if v.content_type:
            out["contentType"] = v.content_type
        if with_value:
            out["value"] = v.value
        return out


_CHALLENGE = {"WWW-Authenticate": f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", '
                                  f'resource="{RESOURCE}"'}


def _json_or_none(raw: bytes) -> object:
    """The request body parsed as JSON; None when empty or not JSON (Key Vault then answers per route)."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _redacted(body: object) -> dict | None:
    """A copy of a JSON request body for ``server.calls``, with ``value`` replaced."""
    redacted = dict(body) if isinstance(body, dict) else None
    if redacted and "value" in redacted:
        redacted["value"] = "<redacted>"
    return redacted


def _new_version(body: dict) -> _Version:
    """The version a ``PUT /secrets/<name>`` body describes, created now with a fresh version id."""
    now = int(time.time())
    attrs = body.get("attributes") or {}
    return _Version(
        version=uuid.uuid4().hex, value=body["value"], enabled=attrs.get("enabled", True),
        created=now, updated=now, content_type=body.get("contentType"), tags=body.get("tags") or {},
        nbf=attrs.get("nbf"), exp=attrs.get("exp"),
    )


class _KeyVaultHandler(BaseHTTPRequestHandler):
    """One request against ``state`` (set per server by :func:`_handler`).

    ``_handle`` reads and records the request, then refuses it (challenge, bad token,
    no api-version, injected fault, unknown path) or hands ``/secrets/<name>[/<rest>]``
    to ``_route``.
    """

    protocol_version = "HTTP/1.1"
    state: KeyVaultServer

    def log_message(self, *args: object) -> None:  # quiet
        pass

    # -- replies -----------------------------------------------------------

    def _send(self, status: int, body: dict | None = None, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-ms-keyvault-service-version", "1.9.0.0")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, {"error": {"code": code, "message": message}}, headers)

    def _not_found(self, what: str) -> None:
        self._error(404, "SecretNotFound", f"A secret with (name/id) {what} was not found in this key vault.")

    # -- dispatch ----------------------------------------------------------

    def _handle(self, method: str) -> None:
        state = self.state
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        auth = self.headers.get("Authorization", "")
        authorized = auth == f"Bearer {state.token}"
        body = _json_or_none(raw)
        with state.lock:
            state.calls.append(Call(method, parts.path, query, authorized, _redacted(body)))
        if self._refused(auth, authorized, query):
            return None
        segs = [unquote(s) for s in parts.path.strip("/").split("/") if s]
        if not segs or segs[0] != "secrets" or len(segs) < 2 or len(segs) > 3:
            return self._error(404, "NotFound", f"no route {parts.path}")
        rest = segs[2] if len(segs) == 3 else None
        with state.lock:
            return self._route(method, segs[1], rest, body)

    def _refused(self, auth: str, authorized: bool, query: dict) -> bool:
        """Answer and return True when the request does not get past auth, api-version or an injected fault."""
        if not auth:
            self._error(401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.", _CHALLENGE)
            return True
        if not authorized:
            self._error(401, "Unauthorized", "AKV10032: Invalid issuer or token.", _CHALLENGE)
            return True
        if "api-version" not in query:
            self._error(400, "BadParameter", "The 'api-version' query parameter is missing.")
            return True
        with self.state.lock:
            fault = self.state.faults.pop(0) if self.state.faults else None
        if fault:
            self._error(fault[0], "Throttled" if fault[0] == 429 else "ServiceUnavailable", "injected fault", fault[1])
            return True
        return False

    def _route(self, method: str, name: str, rest: str | None, body: object) -> None:
        """``rest`` is None (the secret), ``versions`` or a version id."""
        if method == "PUT" and rest is None:
            return self._set(name, body)
        versions = self.state.secrets.get(name)
        if versions is None:
            return self._not_found(name)
        if method == "GET" and rest == "versions":
            items = [self.state.bundle(name, v, with_value=False) for v in versions]
            return self._send(200, {"value": items, "nextLink": None})
        target = versions[-1] if rest in (None, "") else next((v for v in versions if v.version == rest), None)
        if target is None:
            return self._not_found(f"{name}/{rest}")
        if method == "GET":
            if not target.enabled:
                return self._error(403, "Forbidden", "Operation get is not allowed on a disabled secret.")
            return self._send(200, self.state.bundle(name, target, with_value=True))
        if method == "PATCH" and rest:
            target.apply_patch(body or {})
            return self._send(200, self.state.bundle(name, target, with_value=False))
        return self._error(405, "MethodNotAllowed", f"{method} not allowed here")

    def _set(self, name: str, body: object) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("value"), str):
            return self._error(400, "BadParameter", "Property 'value' is required.")
        v = _new_version(body)
        self.state.secrets.setdefault(name, []).append(v)
        return self._send(200, self.state.bundle(name, v, with_value=True))

    def _dispatch(self) -> None:
        self._handle(self.command)

    do_GET = do_PUT = do_PATCH = do_DELETE = _dispatch


def start_keyvault_server(directory: str, token: str = "kv-test-token") -> KeyVaultServer:
    """Start a TLS Key Vault server on 127.0.0.1 (port picked by the OS) in a daemon thread.

    ``server.url`` is the vault URL, ``server.cert_path`` the CA file to pass as
    ``connection_verify``; the accepted bearer token is ``token``.
    """
    state = KeyVaultServer(token)
    cert_path, key_path = make_self_signed_cert(directory)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_path, key_path)
    state.httpd = serve_in_thread(bound_handler(_KeyVaultHandler, state=state), "fake-keyvault", tls=ctx)
    state.url = f"https://127.0.0.1:{state.httpd.server_address[1]}"
    state.cert_path = cert_path
    return state
