"""A local server speaking the subset of the GitHub REST API v3 that digestguard uses.

Why it exists: no GitHub (or Gitea/Forgejo) can run on the test machines, so this
stands in for ``api.github.com``. It speaks the real wire protocol - paths, JSON
shapes, status codes, ``Link`` pagination, rate-limit headers, the 302 log redirect
to a separate blob-storage origin - so ``integrations.github`` talks to it unchanged.

What it checks that a mock would not:

* secrets: every scope (repository, environment, organisation) has a real NaCl
  keypair; a PUT must be sealed to the current ``key_id`` and must open with the
  private key, or it is refused (422). Tests read the plaintext back with
  :meth:`GitHubServer.decrypt_secret`; the client never echoes it;
* log downloads: the blob origin refuses requests that carry an ``Authorization``
  header (the token must not travel to storage) and unknown signatures;
* pull requests: a second open PR for the same head answers 422 "already exists".

Control: ``add_repo``, ``add_commit``, ``move_tag``, ``add_run``, ``add_job``, ``add_file``, ``add_environment``,
``inject`` (one-shot faults: 429 + Retry-After, 5xx, 403 rate limit), ``calls``.
"""

from __future__ import annotations

import base64
import re
import secrets as _secrets
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from nacl import encoding, public
from nacl.exceptions import CryptoError

from flows.drill.servers._forge import Call, ForgeServer, Reply, Request

DEFAULT_TOKEN = "ghp_localTestToken000000000000000000000"


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: str) -> datetime:
    value = value.strip()
    if len(value) == 10:
        return datetime.fromisoformat(value).replace(tzinfo=timezone.utc)
    t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _created_filter(expr: str) -> tuple[datetime | None, datetime | None]:
    """GitHub's search-style date qualifier: ``A..B``, ``>=A``, ``<=B``, ``>A``, ``<B`` or a date."""
    if ".." in expr:
        a, b = expr.split("..", 1)
        return (None if a in ("", "*") else _parse_time(a), None if b in ("", "*") else _parse_time(b))
    for op in (">=", "<=", ">", "<"):
        if expr.startswith(op):
            t = _parse_time(expr[len(op):])
            return (t, None) if op.startswith(">") else (None, t)
    day = _parse_time(expr[:10])
    return day, day + timedelta(days=1) - timedelta(seconds=1)


class _Keypair:
    def __init__(self) -> None:
        self.private = public.PrivateKey.generate()
        self.key_id = str(_secrets.randbelow(10**18) + 10**17)

    @property
    def public_b64(self) -> str:
        return self.private.public_key.encode(encoding.Base64Encoder()).decode()

    def open(self, encrypted_b64: str) -> str:
        return public.SealedBox(self.private).decrypt(base64.b64decode(encrypted_b64)).decode("utf-8")


_RUNNER_PREAMBLE = (
    "Current runner version: '2.333.1'",
    "##[group]Runner Image Provisioner",
    "Hosted Compute Agent",
    "Version: 20260415.279",
    "##[endgroup]",
    "##[group]Operating System",
    "Ubuntu",
    "24.04.2",
    "LTS",
    "##[endgroup]",
    "##[group]GITHUB_TOKEN Permissions",
    "Contents: read",
    "Metadata: read",
    "##[endgroup]",
    "Secret source: Actions",
    "Prepare workflow directory",
    "Prepare all required actions",
    "Getting action download info",
    "Download action repository 'actions/checkout@v4' (SHA:11bd71901bbe5b1630ceea73d27597364c9af683)",
)


def _pull_lines(image: str, digest: str, tag: str, repo_short: str, tag_line: str | None) -> list[str]:
    """The runner's ``docker pull`` output: command, layer progress, digest, status, fully-qualified name."""
    return [
        f"##[command]/usr/bin/docker pull {image}",
        f"{tag}: Pulling from {repo_short}",
        "4abcf2066143: Pulling fs layer",
        "9f0a3b2c1d4e: Pulling fs layer",
        "4abcf2066143: Verifying Checksum",
        "4abcf2066143: Download complete",
        "4abcf2066143: Pull complete",
        "9f0a3b2c1d4e: Pull complete",
        f"Digest: {digest}",
        f"Status: Downloaded newer image for {image}",
        tag_line or f"docker.io/{repo_short if '/' in repo_short else 'library/' + repo_short}:{tag}",
    ]


def _action_step(image: str, repo_short: str, pull: list[str]) -> list[str]:
    """A Docker container action: "Pull down action image '<image>'", then the checkout and the action's run."""
    return [
        f"##[group]Pull down action image '{image}'",
        *pull,
        "##[endgroup]",
        "##[group]Run actions/checkout@v4",
        "with:",
        "  repository: acme/api",
        "##[endgroup]",
        "##[group]Run ./",
        "##[endgroup]",
        f"/usr/bin/docker run --name {repo_short.replace('/', '')}_3c1e --label 8a1f3e --workdir /github/workspace"
        f" --rm {image} scan -p .",
    ]


def _container_step(pull: list[str]) -> list[str]:
    """A ``container:`` job: the pull inside "Initialize containers"."""
    return [
        "##[group]Initialize containers",
        "##[group]Checking docker version",
        "##[command]/usr/bin/docker version --format '{{.Server.APIVersion}}'",
        "'1.48'",
        "##[endgroup]",
        "##[group]Pull down action image",
        *pull,
        "##[endgroup]",
        "##[endgroup]",
    ]


def _run_step(image: str, pull: list[str]) -> list[str]:
    """A ``run: docker run ...`` step: docker's own pull output (no command line, no qualified name)."""
    return [
        "##[group]Run docker run --rm -v \"$PWD:/path\" " + image + " scan -p /path",
        "docker run --rm -v \"$PWD:/path\" " + image + " scan -p /path",
        "shell: /usr/bin/bash -e {0}",
        "##[endgroup]",
        f"Unable to find image '{image}' locally",
        *pull[1:-1],
    ]


def _timestamped(texts: list[str], at: datetime) -> str:
    """Prefix each line with the runner's 7-digit-fraction UTC timestamp, 137 ms apart, starting at ``at``."""
    t = at.astimezone(timezone.utc)
    step = timedelta(milliseconds=137)
    lines: list[str] = []
    for text in texts:
        lines.append(t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond:06d}" + "1Z " + text)
        t += step
    return "\n".join(lines) + "\n"


def github_job_log(
    image: str,
    digest: str,
    at: datetime,
    *,
    style: str = "action",
    job_name: str = "scan",
    tag_line: str | None = None,
) -> str:
    """A job log in the format GitHub's runner writes, with one ``docker pull`` of ``image``.

    ``style``: ``action`` (a Docker container action: "Pull down action image"),
    ``container`` (a ``container:`` job: "Initialize containers") or ``run``
    (a ``run: docker run ...`` step). ``image`` is as written in the workflow
    (``checkmarx/kics:latest``); ``digest`` is what the registry served.
    """
    name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "latest")
    repo_short = name
    pull = _pull_lines(image, digest, tag, repo_short, tag_line)
    if style == "action":
        body = _action_step(image, repo_short, pull)
    elif style == "container":
        body = _container_step(pull)
    elif style == "run":
        body = _run_step(image, pull)
    else:
        raise ValueError(f"unknown style {style!r}")
    texts = [*_RUNNER_PREAMBLE, f"Complete job name: {job_name}", *body, "Cleaning up orphan processes"]
    return _timestamped(texts, at)


class _LogStore:
    """The blob-storage origin that job logs are redirected to (a different port = a different origin)."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.calls: list[Call] = []
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        store = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                return

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                headers = {k.lower(): v for k, v in self.headers.items()}
                call = Call("GET", parts.path, query, None, {k: v for k, v in headers.items() if k != "authorization"})
                call.authorized = "authorization" in headers  # here: True means a token leaked to storage
                store.calls.append(call)
                blob = store.blobs.get(query.get("sig", ""))
                if "authorization" in headers:
                    status, body, ctype = 400, b"<Error><Code>InvalidAuthenticationInfo</Code></Error>", "application/xml"
                elif blob is None or not parts.path.endswith("/job-logs.txt"):
                    status, body, ctype = 403, b"<Error><Code>AuthenticationFailed</Code></Error>", "application/xml"
                else:
                    status, body, ctype = 200, blob, "text/plain; charset=utf-8"
                call.status = status
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    @property
    def base(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"


class GitHubServer(ForgeServer):
    """The GitHub stand-in. ``url`` is the ``api_url`` to hand the client."""

    vendor = "github"

    def __init__(self, token: str = DEFAULT_TOKEN, *, read_only_tokens: tuple[str, ...] = ()) -> None:
        self.token = token
        self.read_only_tokens = set(read_only_tokens)
        self.repos: dict[str, dict[str, Any]] = {}
        self.orgs: dict[str, dict[str, Any]] = {}
        self.runs: dict[int, dict[str, Any]] = {}
        self.jobs: dict[int, dict[str, Any]] = {}
        self.logs: dict[int, str] = {}
        self.pulls: dict[str, list[dict[str, Any]]] = {}
        self.keys: dict[str, _Keypair] = {}
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.renamed: dict[str, str] = {}
        self.rate_remaining = 5000
        self.audit_log: dict[str, list[dict[str, Any]]] = {}  # org -> events (GitHub's audit-log entry shape)
        self._next_id = 1000
        self.log_store = _LogStore()
        super().__init__()

    def add_audit_event(self, org: str, action: str, at: datetime, *, token: str | None = None, actor: str = "ci-bot",
                        actor_ip: str = "203.0.113.50", **extra: Any) -> dict[str, Any]:
        """An audit-log entry; ``token`` sets ``hashed_token`` as GitHub does (base64 of the token's SHA-256)."""
        import hashlib

        ev = {"@timestamp": int(at.timestamp() * 1000), "action": action, "actor": actor, "actor_ip": actor_ip,
              "org": org, "_document_id": _secrets.token_urlsafe(16), "created_at": int(at.timestamp() * 1000), **extra}
        if token:
            ev["hashed_token"] = base64.b64encode(hashlib.sha256(token.encode()).digest()).decode()
            ev["programmatic_access_type"] = "Fine-grained personal access token"
        self.audit_log.setdefault(org, []).append(ev)
        return ev

    def start(self) -> GitHubServer:
        self.log_store.start()
        super().start()
        return self

    def stop(self) -> None:
        super().stop()
        self.log_store.stop()

    @property
    def url(self) -> str:
        return self.base

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id

    # ------------------------------------------------------------- fixtures

    def add_repo(self, owner: str, repo: str, *, default_branch: str = "main", environments: tuple[str, ...] = ()) -> dict[str, Any]:
        full = f"{owner}/{repo}"
        d = {
            "id": self._id(), "name": repo, "full_name": full, "private": True,
            "owner": {"login": owner, "type": "Organization"},
            "default_branch": default_branch, "html_url": f"https://github.com/{full}",
            "environments": set(environments), "files": {},
        }
        self.repos[full] = d
        self.orgs.setdefault(owner, {"login": owner})
        self.pulls.setdefault(full, [])
        return d

    def add_commit(self, owner: str, repo: str, sha: str, *, date: datetime, parents: tuple[str, ...] = (),
                   branches: tuple[str, ...] = (), tags: tuple[str, ...] = ()) -> None:
        """A commit of ``owner/repo``'s fork network, with the branches/tags that point at it now.

        Like GitHub, ``/repos/{owner}/{repo}/commits/{sha}`` answers for any commit of the network,
        including one pushed only to a fork (the impostor-commit case): give it no branch or tag and
        no descendant that has one. Pointing a tag at a new commit moves it (a force-pushed tag).
        """
        d = self.repos[f"{owner}/{repo}"]
        d.setdefault("commits", {})[sha] = {"date": date, "parents": tuple(parents)}
        for b in branches:
            d.setdefault("branches", {})[b] = sha
        for t in tags:
            d.setdefault("tags", {})[t] = sha

    def move_tag(self, owner: str, repo: str, tag: str, sha: str) -> None:
        """Force-push ``tag`` to ``sha`` (which must be a known commit)."""
        d = self.repos[f"{owner}/{repo}"]
        assert sha in d.get("commits", {}), sha
        d.setdefault("tags", {})[tag] = sha

    def rename_repo(self, owner: str, repo: str, new_owner: str, new_repo: str) -> None:
        """Move a repository; the old path then answers 301 like GitHub does for renamed/transferred repos."""
        d = self.repos.pop(f"{owner}/{repo}")
        full = f"{new_owner}/{new_repo}"
        d.update(name=new_repo, full_name=full, html_url=f"https://github.com/{full}")
        self.repos[full] = d
        self.pulls[full] = self.pulls.pop(f"{owner}/{repo}")
        for run in self.runs.values():
            if run["_repo"] == f"{owner}/{repo}":
                run["_repo"] = full
                run["repository"] = {"full_name": full}
        self.renamed[f"{owner}/{repo}"] = full

    def _pre_route(self, method: str, path: str, query: dict[str, str]) -> Reply | None:
        parts = path.split("/", 4)
        if len(parts) >= 4 and parts[1] == "repos" and f"{parts[2]}/{parts[3]}" in self.renamed:
            new = self.renamed[f"{parts[2]}/{parts[3]}"]
            rest = "/" + parts[4] if len(parts) > 4 else ""
            location = f"{self.base}/repos/{new}{rest}" + (f"?{urlencode(query)}" if query else "")
            return Reply(301, {"message": "Moved Permanently", "url": location,
                               "documentation_url": "https://docs.github.com/rest/guides/best-practices-for-using-the-rest-api#follow-redirects"},
                         {"Location": location})
        return None

    def add_environment(self, owner: str, repo: str, environment: str) -> None:
        self.repos[f"{owner}/{repo}"]["environments"].add(environment)

    def add_run(self, owner: str, repo: str, *, created_at: datetime, name: str = "CI",
                path: str = ".github/workflows/ci.yml", head_sha: str = "a" * 40, head_branch: str = "main",
                event: str = "push", run_attempt: int = 1, conclusion: str = "success") -> int:
        full = f"{owner}/{repo}"
        run_id = self._id() * 1000
        self.runs[run_id] = {
            "id": run_id, "name": name, "path": path, "head_sha": head_sha, "head_branch": head_branch,
            "event": event, "status": "completed", "conclusion": conclusion, "run_attempt": run_attempt,
            "run_number": len(self.runs) + 1, "workflow_id": 161335,
            "created_at": _iso(created_at), "run_started_at": _iso(created_at),
            "updated_at": _iso(created_at + timedelta(minutes=3)),
            "html_url": f"https://github.com/{full}/actions/runs/{run_id}",
            "repository": {"full_name": full},
            "_repo": full,
        }
        return run_id

    def add_job(self, run_id: int, *, name: str, log: str, started_at: datetime | None = None,
                run_attempt: int | None = None, runner_name: str = "GitHub Actions 12") -> int:
        run = self.runs[run_id]
        job_id = self._id() * 10000
        start = started_at or _parse_time(run["run_started_at"])
        self.jobs[job_id] = {
            "id": job_id, "run_id": run_id, "run_attempt": run_attempt or run["run_attempt"],
            "name": name, "status": "completed", "conclusion": "success", "head_sha": run["head_sha"],
            "started_at": _iso(start), "completed_at": _iso(start + timedelta(minutes=2)),
            "runner_name": runner_name, "labels": ["ubuntu-latest"],
            "html_url": f"https://github.com/{run['_repo']}/actions/runs/{run_id}/job/{job_id}",
            "steps": [],
        }
        self.logs[job_id] = log
        return job_id

    def add_file(self, owner: str, repo: str, path: str, text: str, *, ref: str | None = None) -> None:
        """A file at ``ref`` (``None``: on the default branch, and at any ref not given its own version)."""
        self.repos[f"{owner}/{repo}"]["files"][(path.strip("/"), ref)] = text

    def add_org_secret(self, org: str, name: str, *, visibility: str = "private", repository_ids: tuple[int, ...] = ()) -> None:
        """An existing organisation secret (value unknown), to test that a rotation keeps its visibility."""
        self.orgs.setdefault(org, {"login": org})
        self.secrets[(f"org:{org}", name)] = {
            "encrypted_value": None, "key_id": None, "created_at": "2025-01-01T00:00:00Z",
            "updated_at": "2025-01-01T00:00:00Z", "visibility": visibility,
            "selected_repository_ids": list(repository_ids),
        }

    def decrypt_secret(self, scope: str, name: str) -> str:
        """The plaintext of a stored secret: ``scope`` is ``repo:o/r``, ``env:o/r/env`` or ``org:o``."""
        stored = self.secrets[(scope, name)]
        return self.keys[scope].open(stored["encrypted_value"])

    def _key(self, scope: str) -> _Keypair:
        if scope not in self.keys:
            self.keys[scope] = _Keypair()
        return self.keys[scope]

    def rotate_public_key(self, scope: str) -> None:
        """GitHub may rotate a scope's key; a client must fetch the key before each write."""
        self.keys[scope] = _Keypair()

    # ------------------------------------------------------------- protocol

    def _common_headers(self) -> dict[str, str]:
        reset = int((datetime.now(timezone.utc) + timedelta(hours=1)).timestamp())
        return {
            "X-GitHub-Api-Version-Selected": "2022-11-28",
            "X-RateLimit-Limit": "5000",
            "X-RateLimit-Remaining": str(self.rate_remaining),
            "X-RateLimit-Reset": str(reset),
            "X-RateLimit-Used": str(5000 - self.rate_remaining),
            "X-RateLimit-Resource": "core",
            "X-GitHub-Request-Id": _secrets.token_hex(8).upper(),
        }

    def _authorize(self, headers: dict[str, str], method: str, path: str) -> Reply | None:
        auth = headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() not in ("bearer", "token") or value not in ({self.token} | self.read_only_tokens):
            return Reply(401, {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest", "status": "401"})
        if value in self.read_only_tokens and method not in ("GET", "HEAD"):
            return Reply(403, {"message": "Resource not accessible by personal access token",
                               "documentation_url": "https://docs.github.com/rest", "status": "403"})
        return None

    def _not_found(self) -> Reply:
        return Reply(404, {"message": "Not Found", "documentation_url": "https://docs.github.com/rest", "status": "404"})

    def _repo_of(self, req: Request) -> dict[str, Any] | None:
        return self.repos.get(f"{req.group('owner')}/{req.group('repo')}")

    def _register(self) -> None:
        R = r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)"
        self.route("GET", R, self._get_repo)
        self.route("GET", R + r"/actions/runs", self._list_runs)
        self.route("GET", R + r"/actions/runs/(?P<run>\d+)/jobs", self._list_jobs)
        self.route("GET", R + r"/actions/jobs/(?P<job>\d+)/logs", self._job_logs)
        self.route("GET", R + r"/contents/(?P<path>.+)", self._contents)
        self.route("GET", R + r"/actions/secrets/public-key", lambda r: self._public_key(r, self._repo_scope(r)))
        self.route("GET", R + r"/environments/(?P<env>[^/]+)/secrets/public-key", lambda r: self._public_key(r, self._env_scope(r)))
        self.route("GET", r"/orgs/(?P<org>[^/]+)/actions/secrets/public-key", lambda r: self._public_key(r, self._org_scope(r)))
        self.route("PUT", R + r"/actions/secrets/(?P<name>[^/]+)", lambda r: self._put_secret(r, self._repo_scope(r)))
        self.route("PUT", R + r"/environments/(?P<env>[^/]+)/secrets/(?P<name>[^/]+)", lambda r: self._put_secret(r, self._env_scope(r)))
        self.route("PUT", r"/orgs/(?P<org>[^/]+)/actions/secrets/(?P<name>[^/]+)", lambda r: self._put_secret(r, self._org_scope(r)))
        self.route("GET", R + r"/actions/secrets/(?P<name>[^/]+)", lambda r: self._get_secret(r, self._repo_scope(r)))
        self.route("GET", R + r"/environments/(?P<env>[^/]+)/secrets/(?P<name>[^/]+)", lambda r: self._get_secret(r, self._env_scope(r)))
        self.route("GET", r"/orgs/(?P<org>[^/]+)/actions/secrets/(?P<name>[^/]+)", lambda r: self._get_secret(r, self._org_scope(r)))
        self.route("GET", r"/orgs/(?P<org>[^/]+)/actions/secrets/(?P<name>[^/]+)/repositories", self._org_secret_repos)
        self.route("GET", R + r"/commits/(?P<sha>[0-9a-fA-F]{7,40})", self._get_commit)
        self.route("GET", R + r"/tags", lambda r: self._list_refs(r, "tags"))
        self.route("GET", R + r"/branches", lambda r: self._list_refs(r, "branches"))
        self.route("GET", R + r"/compare/(?P<base>[^.]+)\.\.\.(?P<head>[^/]+)", self._compare)
        self.route("GET", r"/orgs/(?P<org>[^/]+)/audit-log", self._audit_log)
        self.route("GET", R + r"/pulls", self._list_pulls)
        self.route("POST", R + r"/pulls", self._create_pull)
        self.route("PATCH", R + r"/pulls/(?P<number>\d+)", self._update_pull)

    # repository ---------------------------------------------------------------

    def _get_repo(self, req: Request) -> Reply:
        repo = self._repo_of(req)
        if repo is None:
            return self._not_found()
        return Reply(200, {k: v for k, v in repo.items() if k not in ("environments", "files")})

    def _contents(self, req: Request) -> Reply:
        repo = self._repo_of(req)
        if repo is None:
            return self._not_found()
        path = req.group("path").strip("/")
        ref = req.query.get("ref")
        files: dict[tuple[str, str | None], str] = repo["files"]
        text = files.get((path, ref), files.get((path, None))) if ref else files.get((path, None))
        if text is not None:
            sha = _secrets.token_hex(20)
            if "raw" in req.headers.get("accept", ""):
                return Reply(200, raw=text.encode(), content_type="application/vnd.github.raw+json; charset=utf-8")
            if len(text.encode()) > 1_000_000:  # GitHub sends no content for files over 1 MB
                return Reply(200, {"type": "file", "encoding": "none", "content": "", "name": path.rsplit("/", 1)[-1],
                                   "path": path, "size": len(text.encode()), "sha": sha})
            return Reply(200, {
                "type": "file", "encoding": "base64", "name": path.rsplit("/", 1)[-1], "path": path,
                "size": len(text.encode()), "sha": sha,
                "content": "\n".join(base64.b64encode(text.encode()).decode()[i:i + 60] for i in range(0, len(base64.b64encode(text.encode())), 60)) + "\n",
            })
        entries = sorted({p for (p, r) in files if p.startswith(path + "/") and "/" not in p[len(path) + 1:] and r in (None, ref)})
        if entries:
            return Reply(200, [{"type": "file", "name": p.rsplit("/", 1)[-1], "path": p, "sha": "0" * 40} for p in entries])
        return self._not_found()

    # git objects --------------------------------------------------------------

    def _commit_sha(self, repo: dict[str, Any], ref: str) -> str | None:
        """A branch, a tag or a (full) commit SHA -> the commit SHA."""
        if ref in repo.get("branches", {}):
            return repo["branches"][ref]
        if ref in repo.get("tags", {}):
            return repo["tags"][ref]
        return ref.lower() if ref.lower() in repo.get("commits", {}) else None

    def _get_commit(self, req: Request) -> Reply:
        repo = self._repo_of(req)
        sha = self._commit_sha(repo, req.group("sha")) if repo is not None else None
        if sha is None:
            return Reply(422, {"message": f"No commit found for SHA: {req.group('sha')}"})
        c = repo["commits"][sha]
        who = {"name": "dev", "email": "dev@example.com", "date": _iso(c["date"])}
        return Reply(200, {"sha": sha, "commit": {"author": who, "committer": who, "message": "commit"},
                           "parents": [{"sha": p} for p in c["parents"]],
                           "html_url": f"https://github.com/{repo['full_name']}/commit/{sha}"})

    def _list_refs(self, req: Request, kind: str) -> Reply:
        repo = self._repo_of(req)
        if repo is None:
            return self._not_found()
        items = [{"name": name, "commit": {"sha": sha}} for name, sha in sorted(repo.get(kind, {}).items())]
        return self.paginate(req, items)

    def _ancestors(self, repo: dict[str, Any], sha: str) -> set[str]:
        seen: set[str] = set()
        todo = [sha]
        while todo:
            cur = todo.pop()
            if cur in seen or cur not in repo.get("commits", {}):
                continue
            seen.add(cur)
            todo.extend(repo["commits"][cur]["parents"])
        return seen

    def _compare(self, req: Request) -> Reply:
        """``GET /compare/BASE...HEAD``: ``behind``/``identical`` when HEAD is an ancestor of BASE."""
        repo = self._repo_of(req)
        if repo is None:
            return self._not_found()
        base, head = self._commit_sha(repo, req.group("base")), self._commit_sha(repo, req.group("head"))
        if base is None or head is None:
            return self._not_found()
        a_base, a_head = self._ancestors(repo, base), self._ancestors(repo, head)
        if base == head:
            status = "identical"
        elif head in a_base:
            status = "behind"
        elif base in a_head:
            status = "ahead"
        else:
            status = "diverged"
        return Reply(200, {"status": status, "ahead_by": len(a_head - a_base), "behind_by": len(a_base - a_head),
                           "base_commit": {"sha": base}, "merge_base_commit": {"sha": max(a_base & a_head, default=base)}})

    # actions ------------------------------------------------------------------

    def _list_runs(self, req: Request) -> Reply:
        repo = self._repo_of(req)
        if repo is None:
            return self._not_found()
        runs = [r for r in self.runs.values() if r["_repo"] == repo["full_name"]]
        if "created" in req.query:
            lo, hi = _created_filter(req.query["created"])
            runs = [r for r in runs if (lo is None or _parse_time(r["created_at"]) >= lo)
                    and (hi is None or _parse_time(r["created_at"]) <= hi)]
        for key in ("event", "branch", "status"):
            if key in req.query:
                field = {"branch": "head_branch"}.get(key, key)
                runs = [r for r in runs if r[field] == req.query[key]]
        runs.sort(key=lambda r: r["created_at"], reverse=True)  # GitHub lists newest first
        public_runs = [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs]
        return self.paginate(req, public_runs, wrap=lambda chunk: {"total_count": len(public_runs), "workflow_runs": chunk})

    def _list_jobs(self, req: Request) -> Reply:
        run = self.runs.get(int(req.group("run")))
        if run is None or self._repo_of(req) is None or run["_repo"] != f"{req.group('owner')}/{req.group('repo')}":
            return self._not_found()
        jobs = [j for j in self.jobs.values() if j["run_id"] == run["id"]]
        if req.query.get("filter", "latest") == "latest" and jobs:
            top = max(j["run_attempt"] for j in jobs)
            jobs = [j for j in jobs if j["run_attempt"] == top]
        return self.paginate(req, jobs, wrap=lambda chunk: {"total_count": len(jobs), "jobs": chunk})

    def _job_logs(self, req: Request) -> Reply:
        job = self.jobs.get(int(req.group("job")))
        if job is None or self._repo_of(req) is None:
            return self._not_found()
        sig = _secrets.token_urlsafe(24)
        self.log_store.blobs[sig] = ("\ufeff" + self.logs[job["id"]]).encode("utf-8")
        expires = _iso(datetime.now(timezone.utc) + timedelta(minutes=1))
        location = (f"{self.log_store.base}/actions-results/{_secrets.token_hex(16)}/workflow-job-run-{job['id']}"
                    f"/logs/job/job-logs.txt?rsct=text%2Fplain&se={expires}&sp=r&spr=https&sr=b&sv=2025-01-05&sig={sig}")
        return Reply(302, None, {"Location": location})

    # secrets ------------------------------------------------------------------

    def _repo_scope(self, req: Request) -> str | None:
        return f"repo:{req.group('owner')}/{req.group('repo')}" if self._repo_of(req) else None

    def _env_scope(self, req: Request) -> str | None:
        repo = self._repo_of(req)
        env = req.group("env")
        if repo is None or env not in repo["environments"]:
            return None
        return f"env:{repo['full_name']}/{env}"

    def _org_scope(self, req: Request) -> str | None:
        org = req.group("org")
        return f"org:{org}" if org in self.orgs else None

    def _public_key(self, req: Request, scope: str | None) -> Reply:
        if scope is None:
            return self._not_found()
        kp = self._key(scope)
        return Reply(200, {"key_id": kp.key_id, "key": kp.public_b64})

    def _put_secret(self, req: Request, scope: str | None) -> Reply:
        if scope is None:
            return self._not_found()
        body = req.body if isinstance(req.body, dict) else {}
        name = req.group("name").upper()
        kp = self._key(scope)
        if body.get("key_id") != kp.key_id:
            return Reply(422, {"message": "Bad request - key_id does not match the current public key", "status": "422"})
        try:
            kp.open(body.get("encrypted_value") or "")
        except (CryptoError, ValueError, TypeError):
            return Reply(422, {"message": "encrypted_value could not be decrypted with the public key", "status": "422"})
        extra: dict[str, Any] = {}
        if scope.startswith("org:"):
            visibility = body.get("visibility")
            if visibility not in ("all", "private", "selected"):
                return Reply(422, {"message": "Invalid request.\n\n\"visibility\" is not a permitted value.", "status": "422"})
            extra["visibility"] = visibility
            extra["selected_repository_ids"] = list(body.get("selected_repository_ids") or []) if visibility == "selected" else []
        now = _iso(datetime.now(timezone.utc))
        existing = self.secrets.get((scope, name))
        self.secrets[(scope, name)] = {
            "encrypted_value": body["encrypted_value"], "key_id": body["key_id"],
            "created_at": existing["created_at"] if existing else now, "updated_at": now, **extra,
        }
        return Reply(204 if existing else 201, None if existing else {})

    def _get_secret(self, req: Request, scope: str | None) -> Reply:
        name = req.group("name").upper()
        stored = self.secrets.get((scope or "", name))
        if scope is None or stored is None:
            return self._not_found()
        d = {"name": name, "created_at": stored["created_at"], "updated_at": stored["updated_at"]}
        if scope.startswith("org:"):
            d["visibility"] = stored["visibility"]
            if stored["visibility"] == "selected":
                d["selected_repositories_url"] = f"{self.base}/orgs/{req.group('org')}/actions/secrets/{name}/repositories"
        return Reply(200, d)

    def _org_secret_repos(self, req: Request) -> Reply:
        stored = self.secrets.get((f"org:{req.group('org')}", req.group("name").upper()))
        if stored is None or stored.get("visibility") != "selected":
            return self._not_found()
        by_id = {r["id"]: r for r in self.repos.values()}
        repos = [{"id": i, "full_name": by_id[i]["full_name"] if i in by_id else f"unknown/{i}"} for i in stored["selected_repository_ids"]]
        return self.paginate(req, repos, wrap=lambda chunk: {"total_count": len(repos), "repositories": chunk})

    # pulls --------------------------------------------------------------------

    def _audit_log(self, req: Request) -> Reply:
        """``GET /orgs/{org}/audit-log?phrase=...``: ``hashed_token:"..."``, ``action:...``, ``created:>=DATE`` terms,
        newest first (``order=desc``, the default), paged with ``per_page``/``page`` and a ``Link`` header."""
        events = list(self.audit_log.get(req.group("org"), []))
        for term in re.findall(r'(\w+):("[^"]*"|\S+)', req.query.get("phrase", "")):
            key, value = term[0], term[1].strip('"')
            if key == "created" and value.startswith(">="):
                lo = datetime.fromisoformat(value[2:].replace("Z", "+00:00"))
                lo = lo if lo.tzinfo else lo.replace(tzinfo=timezone.utc)
                events = [e for e in events if e["@timestamp"] >= lo.timestamp() * 1000]
            elif key in ("hashed_token", "action", "actor"):
                events = [e for e in events if str(e.get(key)) == value]
        events.sort(key=lambda e: e["@timestamp"], reverse=req.query.get("order", "desc") == "desc")
        return self.paginate(req, events)

    def _list_pulls(self, req: Request) -> Reply:
        repo = self._repo_of(req)
        if repo is None:
            return self._not_found()
        pulls = self.pulls[repo["full_name"]]
        state = req.query.get("state", "open")
        out = [p for p in pulls if state == "all" or p["state"] == state]
        if "head" in req.query:
            owner, _, branch = req.query["head"].partition(":")
            out = [p for p in out if p["head"]["ref"] == branch and p["head"]["user"]["login"] == owner]
        if "base" in req.query:
            out = [p for p in out if p["base"]["ref"] == req.query["base"]]
        return self.paginate(req, out)

    def _create_pull(self, req: Request) -> Reply:
        repo = self._repo_of(req)
        if repo is None:
            return self._not_found()
        body = req.body if isinstance(req.body, dict) else {}
        missing = [k for k in ("head", "base") if not body.get(k)]
        if missing or not (body.get("title") or body.get("issue")):
            return Reply(422, {"message": "Validation Failed", "errors": [{"resource": "PullRequest", "field": f, "code": "missing_field"} for f in missing or ["title"]], "status": "422"})
        head_owner, _, head = body["head"].rpartition(":")
        head_owner = head_owner or req.group("owner")
        full = repo["full_name"]
        for p in self.pulls[full]:
            if p["state"] == "open" and p["head"]["ref"] == head and p["head"]["user"]["login"] == head_owner:
                return Reply(422, {"message": "Validation Failed", "errors": [{"resource": "PullRequest", "code": "custom",
                                   "message": f"A pull request already exists for {head_owner}:{head}."}], "status": "422"})
        number = sum(len(v) for v in self.pulls.values()) + 1
        pr = {
            "number": number, "id": self._id(), "state": "open", "title": body["title"], "body": body.get("body"),
            "draft": bool(body.get("draft")), "merged": False, "maintainer_can_modify": bool(body.get("maintainer_can_modify")),
            "html_url": f"https://github.com/{full}/pull/{number}",
            "url": f"{self.base}/repos/{full}/pulls/{number}",
            "head": {"ref": head, "label": f"{head_owner}:{head}", "user": {"login": head_owner}},
            "base": {"ref": body["base"], "label": f"{req.group('owner')}:{body['base']}"},
        }
        self.pulls[full].append(pr)
        return Reply(201, pr)

    def _update_pull(self, req: Request) -> Reply:
        repo = self._repo_of(req)
        if repo is None:
            return self._not_found()
        for p in self.pulls[repo["full_name"]]:
            if p["number"] == int(req.group("number")):
                body = req.body if isinstance(req.body, dict) else {}
                for k in ("title", "body", "state", "base"):
                    if k in body:
                        p[k] = body[k] if k != "base" else {"ref": body[k], "label": body[k]}
                return Reply(200, p)
        return self._not_found()
