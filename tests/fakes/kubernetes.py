"""A local stand-in for a Kubernetes API server: pod lists only.

No real cluster can run here (no kubelet, no container start), so this server
speaks the Kubernetes API's JSON for the two calls the detect stage makes:

* ``GET /api/v1/pods``                      (PodList, all namespaces)
* ``GET /api/v1/namespaces/{ns}/pods``      (PodList, one namespace)

with the real paging contract (``limit`` -> ``metadata.continue`` -> ``continue=``),
a bearer-token check answering a ``Status`` object with 401, and the real
error shapes (``Status`` with ``reason``/``code``). Tests can queue failures
(``fail_next``: 429 with ``Retry-After``, 5xx, 403) and expire continue tokens
(``expire_continue``: 410 ``Expired``) to drive the client's retry and restart
paths. Every request is recorded in ``calls`` for assertions.

:func:`make_pod` builds pod objects shaped like what a kubelet reports
(owner references, pod-template-hash label, container statuses with imageID).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import ssl
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, str]
    authorized: bool


def _status(code: int, reason: str, message: str, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": extra.pop("metadata", {}),
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
        **extra,
    }


@dataclass
class FakeKubeAPI:
    """State of the fake API server. ``pods`` are full pod JSON objects; ``token`` the accepted bearer token."""

    token: str
    pods: list[dict[str, Any]] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    fail_next: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    expire_continue: int = 0  # how many of the next continue-token requests answer 410 Expired
    resource_version: int = 1000
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def reset(self, pods: list[dict[str, Any]] | None = None) -> None:
        with self.lock:
            self.pods = list(pods or [])
            self.calls.clear()
            self.fail_next.clear()
            self.expire_continue = 0
            self.resource_version += 1

    def list_calls(self) -> list[Call]:
        with self.lock:
            return list(self.calls)


def _encode_continue(offset: int, rv: int, ns: str | None) -> str:
    raw = json.dumps({"o": offset, "rv": rv, "ns": ns}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_continue(token: str) -> dict[str, Any] | None:
    try:
        value = json.loads(base64.urlsafe_b64decode(token.encode()))
        return value if isinstance(value, dict) else None
    except (ValueError, TypeError):
        return None


def _handler(state: FakeKubeAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

        def _send(self, code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            authorized = self.headers.get("Authorization") == f"Bearer {state.token}"
            with state.lock:
                state.calls.append(Call("GET", parts.path, query, authorized))
                injected = state.fail_next.pop(0) if state.fail_next else None
            if not authorized:
                self._send(401, _status(401, "Unauthorized", "Unauthorized"))
                return
            if injected is not None:
                code, headers = injected
                reason = {429: "TooManyRequests", 403: "Forbidden", 500: "InternalError", 503: "ServiceUnavailable"}.get(code, "Failure")
                msg = 'pods is forbidden: User "system:serviceaccount:x:y" cannot list resource "pods"' if code == 403 else reason
                self._send(code, _status(code, reason, msg), headers)
                return
            segs = [s for s in parts.path.split("/") if s]
            if segs == ["api", "v1", "pods"]:
                ns = None
            elif len(segs) == 5 and segs[:3] == ["api", "v1", "namespaces"] and segs[4] == "pods":
                ns = segs[3]
            else:
                self._send(404, _status(404, "NotFound", "the server could not find the requested resource"))
                return
            self._list(ns, query)

        def _list(self, ns: str | None, query: dict[str, str]) -> None:
            with state.lock:
                rv = state.resource_version
                items = [p for p in state.pods if ns is None or p["metadata"]["namespace"] == ns]
                items.sort(key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"]))
                offset = 0
                token = query.get("continue")
                if token:
                    decoded = _decode_continue(token)
                    if decoded is None or decoded.get("ns") != ns:
                        self._send(400, _status(400, "BadRequest", "continue key is not valid"))
                        return
                    if state.expire_continue > 0:
                        state.expire_continue -= 1
                        self._send(410, _status(
                            410, "Expired",
                            "The provided continue parameter is too old to display a consistent list result. "
                            "You can start a new list without the continue parameter.",
                        ))
                        return
                    offset = int(decoded.get("o", 0))
                try:
                    limit = int(query["limit"]) if query.get("limit") else 0
                except ValueError:
                    self._send(400, _status(400, "BadRequest", "limit must be an integer"))
                    return
                page = items[offset: offset + limit] if limit > 0 else items[offset:]
                nxt = offset + len(page)
                meta: dict[str, Any] = {"resourceVersion": str(rv)}
                if limit > 0 and nxt < len(items):
                    meta["continue"] = _encode_continue(nxt, rv, ns)
                    meta["remainingItemCount"] = len(items) - nxt
            self._send(200, {"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": page})

    return Handler


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA, as a kubeadm cluster CA is): ``(cert.pem, key.pem)``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")])
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "apiserver.crt", folder / "apiserver.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class KubeServer:
    """The running server: ``url`` (http(s)://127.0.0.1:PORT), ``state`` (a :class:`FakeKubeAPI`).

    ``tls_dir`` given: serve https with a fresh self-signed certificate; ``ca_file`` is its PEM.
    """

    def __init__(self, token: str, tls_dir: Path | None = None) -> None:
        self.state = FakeKubeAPI(token=token)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state))
        self.httpd.daemon_threads = True
        self.ca_file: Path | None = None
        scheme = "http"
        if tls_dir is not None:
            cert, key = self_signed_cert(tls_dir)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
            self.ca_file, scheme = cert, "https"
        self.url = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        self.state.url = self.url
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="fake-kube-api", daemon=True)

    def __enter__(self) -> KubeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ---------------------------------------------------------------- pod builders


def container_status(
    name: str, image: str, image_id: str, *, state: str = "running", started_at: str = "2026-04-22T14:30:00Z"
) -> dict[str, Any]:
    """A container status as a kubelet reports it."""
    st: dict[str, Any]
    if state == "running":
        st = {"running": {"startedAt": started_at}}
    elif state == "terminated":
        st = {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": started_at, "finishedAt": started_at}}
    else:
        st = {"waiting": {"reason": state}}
    return {
        "name": name,
        "image": image,
        "imageID": image_id,
        "ready": state == "running",
        "restartCount": 0,
        "started": state == "running",
        "state": st,
        "lastState": {},
        "containerID": ("containerd://" + hashlib.sha256(f"{name}{image_id}".encode()).hexdigest()) if image_id else None,
    }


def make_pod(
    namespace: str,
    name: str,
    containers: list[tuple[str, str, str | None]],
    *,
    init_containers: list[tuple[str, str, str | None]] | None = None,
    owner: tuple[str, str] | None = None,
    labels: dict[str, str] | None = None,
    node: str | None = "node-1",
    phase: str = "Running",
) -> dict[str, Any]:
    """A pod object. ``containers``/``init_containers`` are ``(name, spec image, imageID or None)``;
    ``None`` imageID means "no status yet", ``""`` a waiting status with nothing pulled (ErrImagePull).
    ``owner`` is ``(kind, name)``."""
    api_version = {"ReplicaSet": "apps/v1", "StatefulSet": "apps/v1", "DaemonSet": "apps/v1", "Job": "batch/v1"}
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": f"uid-{namespace}-{name}",
        "resourceVersion": "1",
        "creationTimestamp": "2026-04-22T14:29:00Z",
        "labels": dict(labels or {}),
    }
    if owner:
        meta["ownerReferences"] = [{
            "apiVersion": api_version.get(owner[0], "v1"), "kind": owner[0], "name": owner[1],
            "uid": f"uid-{owner[1]}", "controller": True, "blockOwnerDeletion": True,
        }]

    def statuses(items: list[tuple[str, str, str | None]], st: str) -> list[dict[str, Any]]:
        out = []
        for cname, image, image_id in items:
            if image_id is None:
                continue
            status_image = image if "/" in image.split(":")[0] and "." in image.split("/")[0] else f"docker.io/{image}"
            # "" = a status exists but nothing was pulled yet (the kubelet reports imageID "").
            out.append(container_status(cname, status_image, image_id, state=st if image_id else "ErrImagePull"))
        return out

    spec: dict[str, Any] = {
        "containers": [{"name": n, "image": i, "imagePullPolicy": "Always"} for n, i, _ in containers],
    }
    if node:
        spec["nodeName"] = node
    if init_containers:
        spec["initContainers"] = [{"name": n, "image": i} for n, i, _ in init_containers]
    status: dict[str, Any] = {"phase": phase, "containerStatuses": statuses(containers, "running")}
    if init_containers:
        status["initContainerStatuses"] = statuses(init_containers, "terminated")
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}
