"""A local stand-in for Docker Hub's API (hub.docker.com/v2): auth token, tags, audit logs, personal access tokens.

Speaks the documented wire format: ``POST /v2/auth/token`` {identifier, secret}
-> {access_token}; ``GET /v2/namespaces/{ns}/repositories/{repo}/tags[/{tag}]``
(``count/next/previous/results`` pages, tag objects with ``digest``,
``tag_last_pushed``, ``images``); ``GET /v2/auditlogs/{account}`` with
action/name/actor/from/to/page/page_size -> {"logs": [...]}, newest first.
Audit logs need a bearer token; tags answer anonymously (public repos).
Personal access tokens as Hub documents them: ``POST /v2/users/login``
{username, password} -> {token} (a JWT for the account); with it ``GET
/v2/access-tokens`` (``count/next/active_count/results``), ``POST /v2/access-tokens``
{token_label, scopes} -> 201 with ``token`` (shown once), ``PATCH
/v2/access-tokens/{uuid}`` {is_active}, ``DELETE /v2/access-tokens/{uuid}`` -> 204.
``POST /v2/auth/token`` accepts an account's *active* PAT as its secret, so a
deactivated or deleted PAT is refused (401) like at Hub. ``add_account`` and
``add_pat`` plant them; ``pats`` is the state a test checks.
``fail_next`` injects 429 (with Retry-After) for retry tests; ``calls`` records
(method, path, has-auth).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

from flows.drill.servers._http import serve_in_thread


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _public(p: dict) -> dict:
    return {k: v for k, v in p.items() if k not in ("token", "username")}


@dataclass
class DockerHubServer:
    users: dict[str, str] = field(default_factory=dict)  # identifier -> secret (PAT)
    tokens: set[str] = field(default_factory=set)
    tags: dict[str, dict[str, dict]] = field(default_factory=dict)  # "ns/repo" -> tag -> object
    logs: dict[str, list[dict]] = field(default_factory=dict)  # account -> events
    passwords: dict[str, str] = field(default_factory=dict)  # account -> password (for /v2/users/login)
    pats: dict[str, dict] = field(default_factory=dict)  # uuid -> {uuid, username, token_label, token, is_active, ...}
    jwts: dict[str, str] = field(default_factory=dict)  # JWT -> account
    failures: deque = field(default_factory=deque)
    calls: list[tuple[str, str, bool]] = field(default_factory=list)
    call_times: list[float] = field(default_factory=list)  # monotonic arrival time of each call (rate-limit tests)
    server: ThreadingHTTPServer | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add_tag(self, repo: str, tag: str, digest: str, pushed: str, platforms: dict[str, str] | None = None) -> None:
        images = [{"architecture": p.split("/")[1], "os": p.split("/")[0], "variant": None, "digest": d,
                   "last_pushed": pushed, "status": "active", "size": 1234}
                  for p, d in (platforms or {}).items()]
        self.tags.setdefault(repo, {})[tag] = {
            "name": tag, "digest": digest, "last_updated": pushed, "tag_last_pushed": pushed,
            "tag_last_pulled": None, "tag_status": "active", "images": images, "full_size": 1234,
            "media_type": "application/vnd.oci.image.index.v1+json", "content_type": "image",
        }

    def add_event(self, account: str, action: str, name: str, actor: str, timestamp: str, **data: str) -> None:
        self.logs.setdefault(account, []).append({
            "account": account, "action": action, "name": name, "actor": actor, "data": data,
            "timestamp": timestamp, "action_description": f"{action} by {actor}",
        })

    def add_account(self, username: str, password: str) -> None:
        self.passwords[username] = password

    def add_pat(self, username: str, label: str, scopes: list[str] | None = None) -> dict:
        """A PAT of ``username``; the returned record holds ``token`` (the value) and ``uuid``."""
        rec = {"uuid": str(uuid.uuid4()), "username": username, "token_label": label, "token": "dckr_pat_" + secrets.token_urlsafe(20),
               "is_active": True, "scopes": list(scopes or ["repo:read"]), "created_at": _now(), "last_used": None,
               "creator_ip": "127.0.0.1", "creator_ua": "stand-in", "generated_by": "manual"}
        with self.lock:
            self.pats[rec["uuid"]] = rec
        return dict(rec)

    def pat_accepted(self, username: str, value: str) -> bool:
        return any(p["username"] == username and p["token"] == value and p["is_active"] for p in self.pats.values())

    def auth_token(self, body: dict) -> tuple[int, object]:
        """``POST /v2/auth/token`` {identifier, secret}: a bearer token for a known secret or an active PAT."""
        ident, secret = body.get("identifier"), body.get("secret")
        with self.lock:
            ok = bool(secret) and (self.users.get(ident) == secret or self.pat_accepted(str(ident), str(secret)))
            if not ok:
                return 401, {"errinfo": {}, "detail": "Incorrect authentication credentials",
                             "message": "incorrect authentication credentials"}
            tok = secrets.token_urlsafe(16)
            self.tokens.add(tok)
        return 200, {"access_token": tok}

    def access_tokens(self, method: str, path: str, q: dict[str, str], body: dict, auth: str) -> tuple[int, object]:
        """``/v2/users/login`` and ``/v2/access-tokens[/{uuid}]``: (status, body)."""
        if path == "/v2/users/login" and method == "POST":
            user = body.get("username")
            if not user or self.passwords.get(user) != body.get("password"):
                return 401, {"detail": "Incorrect authentication credentials"}
            jwt = "eyJ" + secrets.token_urlsafe(24)
            with self.lock:
                self.jwts[jwt] = user
            return 200, {"token": jwt}
        user = self.jwts.get(auth[7:]) if auth.startswith("Bearer ") else None
        if user is None:
            return 401, {"detail": "Authentication credentials were not provided."}
        parts = [p for p in path.split("/") if p]
        with self.lock:
            mine = {u: p for u, p in self.pats.items() if p["username"] == user}
            if len(parts) == 2 and method == "GET":
                page, size = int(q.get("page", 1)), int(q.get("page_size", 10))
                rows = sorted(mine.values(), key=lambda p: p["created_at"])
                nxt = f"{self.url}/v2/access-tokens?page={page + 1}&page_size={size}" if page * size < len(rows) else None
                return 200, {"count": len(rows), "next": nxt, "previous": None,
                             "active_count": sum(1 for p in rows if p["is_active"]),
                             "results": [_public(p) for p in rows[(page - 1) * size: page * size]]}
            if len(parts) == 2 and method == "POST":
                if not body.get("token_label"):
                    return 400, {"detail": "token_label is required"}
                rec = {"uuid": str(uuid.uuid4()), "username": user, "token_label": body["token_label"],
                       "token": "dckr_pat_" + secrets.token_urlsafe(20), "is_active": True,
                       "scopes": list(body.get("scopes") or ["repo:admin"]), "created_at": _now(), "last_used": None,
                       "creator_ip": "127.0.0.1", "creator_ua": "api", "generated_by": "manual"}
                self.pats[rec["uuid"]] = rec
                return 201, {k: v for k, v in rec.items() if k != "username"}
            if len(parts) != 3 or parts[2] not in mine:
                return 404, {"detail": "Not found."}
            rec = self.pats[parts[2]]
            if method == "PATCH":
                if "is_active" in body:
                    rec["is_active"] = bool(body["is_active"])
                if "token_label" in body:
                    rec["token_label"] = str(body["token_label"])
            elif method == "DELETE":
                del self.pats[parts[2]]
                return 204, None
            return 200, _public(rec)

    def fail_next(self, status: int, retry_after: str | None = None) -> None:
        self.failures.append((status, retry_after))

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()


def _handler(hs: DockerHubServer) -> type[BaseHTTPRequestHandler]:  # noqa: C901 - one dispatcher over the vendor paths
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args: object) -> None:
            pass

        def _json(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authed(self) -> bool:
            h = self.headers.get("Authorization", "")
            return h.startswith("Bearer ") and h[7:] in hs.tokens

        def _handle(self) -> None:
            url = urlsplit(self.path)
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            with hs.lock:
                hs.calls.append((self.command, url.path, "Authorization" in self.headers))
                hs.call_times.append(time.monotonic())
                failure = hs.failures.popleft() if hs.failures else None
            if failure:
                status, after = failure
                self._json(status, {"message": "too many requests"}, {"Retry-After": after} if after else None)
                return
            parts = [p for p in url.path.split("/") if p]
            if url.path.startswith("/v2/users/login") or url.path.startswith("/v2/access-tokens"):
                self._tokens(url.path, q)
                return
            if self.command == "POST" and url.path == "/v2/auth/token":
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                self._json(*hs.auth_token(body))
                return
            if len(parts) >= 6 and parts[:2] == ["v2", "namespaces"] and parts[3] == "repositories" and parts[5] == "tags":
                repo = f"{parts[2]}/{parts[4]}"
                tags = hs.tags.get(repo)
                if tags is None:
                    self._json(404, {"message": "object not found", "errinfo": {}})
                    return
                if len(parts) == 7:
                    t = tags.get(parts[6])
                    self._json(200, t) if t else self._json(404, {"message": "tag not found", "errinfo": {}})
                    return
                page, size = int(q.get("page", 1)), int(q.get("page_size", 10))
                names = sorted(tags)
                chunk = names[(page - 1) * size: page * size]
                nxt = (f"{hs.url}{url.path}?{urlencode({'page': page + 1, 'page_size': size})}"
                       if page * size < len(names) else None)
                self._json(200, {"count": len(names), "next": nxt, "previous": None, "results": [tags[n] for n in chunk]})
                return
            if len(parts) == 3 and parts[:2] == ["v2", "auditlogs"]:
                if not self._authed():
                    self._json(401, {"message": "authentication required", "errinfo": {}})
                    return
                events = sorted(hs.logs.get(parts[2], []), key=lambda e: e["timestamp"], reverse=True)
                for key in ("action", "name", "actor"):
                    if q.get(key):
                        events = [e for e in events if e[key] == q[key]]
                if q.get("from"):
                    lo = datetime.fromisoformat(q["from"].replace("Z", "+00:00"))
                    events = [e for e in events if datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")) >= lo]
                if q.get("to"):
                    hi = datetime.fromisoformat(q["to"].replace("Z", "+00:00"))
                    events = [e for e in events if datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")) <= hi]
                page, size = int(q.get("page", 1)), int(q.get("page_size", 25))
                self._json(200, {"logs": events[(page - 1) * size: page * size]})
                return
            self._json(404, {"message": "not found"})

        def _tokens(self, path: str, q: dict[str, str]) -> None:
            body = {}
            if self.command in ("POST", "PATCH"):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            status, out = hs.access_tokens(self.command, path, q, body, self.headers.get("Authorization", ""))
            self._json(status, out) if status != 204 else self._empty()

        def _empty(self) -> None:
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = do_PATCH = do_DELETE = _handle

    return Handler


def start_dockerhub() -> DockerHubServer:
    """Start the stand-in on 127.0.0.1 (port 0); ``.url`` is the api_url for the client."""
    hs = DockerHubServer()
    hs.server = serve_in_thread(_handler(hs), "dockerhub-server", poll_interval=0.05)
    return hs
