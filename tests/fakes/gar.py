"""A local stand-in for the Artifact Registry REST API (v1), Docker-format repositories only.

Speaks the wire format of artifactregistry.googleapis.com for what digestguard
uses: list/get versions (``view=FULL`` adds ``relatedTags``), list tags (with the
``version="..."`` filter), get/delete tags, delete versions (a long-running
Operation, done on the second poll), ``nextPageToken`` pagination, Google-style
JSON errors. Like the real service it refuses to delete a version that still
has tags unless ``force=true`` (400 FAILED_PRECONDITION).

State is seeded with :meth:`GarServer.add_image`; ``calls`` records
(method, path) for assertions; a wrong bearer token gets 401 UNAUTHENTICATED.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

from flows.drill.servers._http import bound_handler, serve_in_thread


@dataclass
class GarServer:
    token: str
    # package resource name (package part unencoded) -> {"versions": {digest: {...}}, "tags": {tag: digest}}
    packages: dict[str, dict] = field(default_factory=dict)
    operations: dict[str, int] = field(default_factory=dict)  # op name -> polls remaining
    calls: list[tuple[str, str]] = field(default_factory=list)
    page_size_cap: int = 2
    server: ThreadingHTTPServer | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add_image(self, project: str, location: str, repository: str, package: str, digest: str,
                  tags: list[str] = (), create_time: str = "2026-03-03T10:00:00Z") -> None:
        key = f"projects/{project}/locations/{location}/repositories/{repository}/packages/{package}"
        with self.lock:
            pkg = self.packages.setdefault(key, {"versions": {}, "tags": {}})
            pkg["versions"][digest] = {"createTime": create_time, "updateTime": create_time}
            for t in tags:
                pkg["tags"][t] = digest

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()


def _split(path: str) -> tuple[str, str | None, str | None]:
    """``/v1/projects/.../packages/<enc>/versions/x`` -> (package key, "versions"/"tags"/None, item)."""
    rest = path[len("/v1/"):]
    head, sep, tail = rest.partition("/packages/")
    if not sep:
        return rest, None, None
    enc_pkg, _, sub = tail.partition("/")
    key = f"{head}/packages/{unquote(enc_pkg)}"
    kind, _, item = sub.partition("/")
    return key, kind or None, (unquote(item) if item else None)


def _encoded(key: str) -> str:
    """The package resource name as the API spells it: the package part percent-encoded (``/`` too)."""
    head, package = key.rsplit("/packages/", 1)
    return head + "/packages/" + quote(package, safe="")


def _tag_body(enc: str, tag: str, digest: str) -> dict:
    return {"name": f"{enc}/tags/{tag}", "version": f"{enc}/versions/{digest}"}


def _version_body(pkg: dict, enc: str, digest: str, full: bool) -> dict:
    """A Version resource; ``full`` (``view=FULL``) adds ``relatedTags``."""
    meta = pkg["versions"][digest]
    body = {"name": f"{enc}/versions/{digest}", **meta}
    if full:
        body["relatedTags"] = [_tag_body(enc, t, d) for t, d in sorted(pkg["tags"].items()) if d == digest]
    return body


def _tag_filter(flt: str) -> str | None:
    """The version name of a ``version="<name>"`` filter; None when the filter has another shape."""
    if not flt.startswith('version="') or not flt.endswith('"'):
        return None
    return flt[len('version="'):-1]


class _GarHandler(BaseHTTPRequestHandler):
    """One request against ``gs`` (set per server by :func:`_handler`).

    ``_handle`` checks the token, answers operation polls, finds the package and
    hands ``versions``/``tags`` (collection or one item) to ``_versions``/``_tags``.
    """

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes: avoid 40 ms delayed-ACK stalls
    gs: GarServer

    def log_message(self, *args: object) -> None:
        pass

    # -- replies -----------------------------------------------------------

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _err(self, status: int, grpc: str, msg: str) -> None:
        self._json(status, {"error": {"code": status, "message": msg, "status": grpc}})

    def _page(self, items: list, key: str, q: dict) -> None:
        size = min(int(q.get("pageSize", 50)), self.gs.page_size_cap)
        start = int(q.get("pageToken", 0))
        body: dict = {key: items[start:start + size]}
        if start + size < len(items):
            body["nextPageToken"] = str(start + size)
        self._json(200, body)

    # -- dispatch ----------------------------------------------------------

    def _handle(self) -> None:
        gs = self.gs
        url = urlsplit(self.path)
        with gs.lock:
            gs.calls.append((self.command, url.path))
        if self.headers.get("Authorization") != f"Bearer {gs.token}":
            self._err(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
            return
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        if "/operations/" in url.path:
            self._operation(url.path[len("/v1/"):])
            return
        key, kind, item = _split(url.path)
        with gs.lock:
            pkg = gs.packages.get(key)
            if pkg is None:
                self._err(404, "NOT_FOUND", f"Requested entity was not found: {key}")
            elif kind == "versions":
                self._versions(pkg, _encoded(key), item, q)
            elif kind == "tags":
                self._tags(pkg, _encoded(key), item, q)
            else:
                self._err(404, "NOT_FOUND", "unknown collection")

    do_GET = do_DELETE = _handle

    def _operation(self, name: str) -> None:
        """Poll a long-running operation: done on the poll that finds one (or no) poll left."""
        with self.gs.lock:
            left = self.gs.operations.get(name)
            if left is None:
                self._err(404, "NOT_FOUND", f"operation {name} not found")
                return
            self.gs.operations[name] = max(0, left - 1)
        self._json(200, {"name": name, "done": left <= 1})

    # -- versions ----------------------------------------------------------

    def _versions(self, pkg: dict, enc: str, item: str | None, q: dict) -> None:
        full = q.get("view") == "FULL"
        if item is None and self.command == "GET":
            self._page([_version_body(pkg, enc, d, full) for d in sorted(pkg["versions"])], "versions", q)
            return
        if item not in pkg["versions"]:
            self._err(404, "NOT_FOUND", f"Requested entity was not found: version {item}")
            return
        if self.command == "GET":
            self._json(200, _version_body(pkg, enc, item, full))
        elif self.command == "DELETE":
            self._delete_version(pkg, enc, item, force=q.get("force") == "true")
        else:
            self._err(405, "UNIMPLEMENTED", "method not allowed")

    def _delete_version(self, pkg: dict, enc: str, item: str, *, force: bool) -> None:
        """Refuse while tagged (unless ``force``: the tags go too); answer a not-yet-done Operation."""
        tagged = [t for t, d in pkg["tags"].items() if d == item]
        if tagged and not force:
            self._err(400, "FAILED_PRECONDITION",
                      f"Cannot delete version {item}: it has tags {sorted(tagged)}; delete the tags first or use force")
            return
        for t in tagged:
            del pkg["tags"][t]
        del pkg["versions"][item]
        op = enc.split("/repositories/")[0] + f"/operations/{uuid.uuid4()}"
        self.gs.operations[op] = 2
        self._json(200, {"name": op, "done": False})

    # -- tags --------------------------------------------------------------

    def _tags(self, pkg: dict, enc: str, item: str | None, q: dict) -> None:
        if item is None and self.command == "GET":
            self._list_tags(pkg, enc, q)
            return
        if item not in pkg["tags"]:
            self._err(404, "NOT_FOUND", f"Requested entity was not found: tag {item}")
            return
        if self.command == "GET":
            self._json(200, _tag_body(enc, item, pkg["tags"][item]))
        elif self.command == "DELETE":
            del pkg["tags"][item]
            self._json(200, {})
        else:
            self._err(405, "UNIMPLEMENTED", "method not allowed")

    def _list_tags(self, pkg: dict, enc: str, q: dict) -> None:
        tags = [_tag_body(enc, t, d) for t, d in sorted(pkg["tags"].items())]
        flt = q.get("filter")
        if flt:
            want = _tag_filter(flt)
            if want is None:
                self._err(400, "INVALID_ARGUMENT", f"invalid filter {flt}")
                return
            tags = [t for t in tags if t["version"] == want]
        self._page(tags, "tags", q)


def start_gar(token: str = "gar-test-token") -> GarServer:
    """Start the stand-in on 127.0.0.1 (port 0); ``.url`` is the api_url to give the client."""
    gs = GarServer(token)
    gs.server = serve_in_thread(bound_handler(_GarHandler, gs=gs), "gar-server", poll_interval=0.05)
    return gs
