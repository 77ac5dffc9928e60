"""A local stand-in for Docker Hub's API (hub.docker.com/v2): auth token, tags, audit logs.

Speaks the documented wire format: ``POST /v2/auth/token`` {identifier, secret}
-> {access_token}; ``GET /v2/namespaces/{ns}/repositories/{repo}/tags[/{tag}]``
(``count/next/previous/results`` pages, tag objects with ``digest``,
``tag_last_pushed``, ``images``); ``GET /v2/auditlogs/{account}`` with
action/name/actor/from/to/page/page_size -> {"logs": [...]}, newest first.
Audit logs need a bearer token; tags answer anonymously (public repos).
``fail_next`` injects 429 (with Retry-After) for retry tests; ``calls`` records
(method, path, has-auth).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

from flows.drill.servers._http import serve_in_thread


@dataclass
class DockerHubServer:
    users: dict[str, str] = field(default_factory=dict)  # identifier -> secret (PAT)
    tokens: set[str] = field(default_factory=set)
    tags: dict[str, dict[str, dict]] = field(default_factory=dict)  # "ns/repo" -> tag -> object
    logs: dict[str, list[dict]] = field(default_factory=dict)  # account -> events
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

    def fail_next(self, status: int, retry_after: str | None = None) -> None:
        self.failures.append((status, retry_after))

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()


def _handler(hs: DockerHubServer) -> type[BaseHTTPRequestHandler]:
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
            if self.command == "POST" and url.path == "/v2/auth/token":
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if hs.users.get(body.get("identifier")) != body.get("secret") or not body.get("secret"):
                    self._json(401, {"errinfo": {}, "detail": "Incorrect authentication credentials", "message": "incorrect authentication credentials"})
                    return
                tok = secrets.token_urlsafe(16)
                hs.tokens.add(tok)
                self._json(200, {"access_token": tok})
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

        do_GET = do_POST = _handle

    return Handler


def start_dockerhub() -> DockerHubServer:
    """Start the stand-in on 127.0.0.1 (port 0); ``.url`` is the api_url for the client."""
    hs = DockerHubServer()
    hs.server = serve_in_thread(_handler(hs), "dockerhub-server", poll_interval=0.05)
    return hs
