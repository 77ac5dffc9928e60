"""GitHub REST API v3 client: Actions runs, jobs and logs; Actions secrets; pull requests.

What the stages use it for:

* **assess** - which workflow runs ran inside the attack window, which of their jobs
  pulled the image, and the job log that shows the digest actually pulled
  (``Digest: sha256:...`` lines), plus the workflow file at the run's commit;
* **rotate** - write a new value into a repository, environment or organisation
  Actions secret. GitHub only accepts values sealed (libsodium ``crypto_box_seal``)
  to the scope's public key, so the plaintext is sealed here and only the
  ciphertext leaves the process; it is never logged, returned or put in an error;
* **pin** - open (or, on a re-run, update) a pull request with the pinned references.
  Nothing here ever merges: a person reviews and merges.

Works against github.com (``api_url="https://api.github.com"``) and GitHub Enterprise
Server (``api_url="https://ghe.example/api/v3"``). Errors are the typed errors of
:mod:`digestguard.errors` and name the API host, method and path.

Example::

    with GitHubClient(token=token) as gh:
        runs = gh.list_workflow_runs("acme", "api", start, end)
        for run in runs:
            for job in gh.list_jobs("acme", "api", run.id):
                text = gh.download_job_log("acme", "api", job.id)
        gh.set_repository_secret("acme", "api", "DOCKERHUB_TOKEN", new_value)
        pr = open_or_update_pull_request(gh, "acme", "api", head="digestguard/pin-kics",
                                         title="Pin images to digests", body=markdown)
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Unpack
from urllib.parse import quote

from nacl import encoding, public
from nacl.exceptions import CryptoError

from digestguard.errors import InputError, IntegrationError, NotFound, Refused
from digestguard.timeutil import parse_time, utc
from integrations._rest import MAX_LOG_BYTES, RestBackedClient, RestOptions, iso_utc, next_link, rate_limit
from integrations._secret_values import SecretLike, reveal

__all__ = [
    "DEFAULT_API_URL",
    "GitHubClient",
    "Job",
    "PublicKey",
    "PullRequest",
    "SecretWrite",
    "WorkflowFile",
    "WorkflowRun",
    "open_or_update_pull_request",
    "seal_secret",
    "split_repo",
    "write_actions_secret",
]

DEFAULT_API_URL = "https://api.github.com"
API_VERSION = "2022-11-28"
WRITES_PER_MINUTE = 80
"""GitHub's documented secondary rate limit: at most 80 content-generating requests per minute."""

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
_SECRET_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
Visibility = Literal["all", "private", "selected"]
_RUN_LIST_CAP = 1000  # GitHub stops listing filtered runs after this many


# --------------------------------------------------------------------------- types


def _utc(value: datetime, name: str) -> str:
    return iso_utc(value, name, "github time range")


@dataclass(frozen=True)
class WorkflowRun:
    """One Actions workflow run (attempt numbers and commit included: the assess stage cites them)."""

    id: int
    name: str
    path: str
    head_sha: str
    head_branch: str | None
    event: str
    status: str | None
    conclusion: str | None
    created_at: datetime | None
    run_started_at: datetime | None
    updated_at: datetime | None
    run_attempt: int
    html_url: str
    repository: str

    @classmethod
    def from_api(cls, d: dict[str, Any]) -> WorkflowRun:
        return cls(
            id=int(d["id"]),
            name=d.get("name") or "",
            path=d.get("path") or "",
            head_sha=d.get("head_sha") or "",
            head_branch=d.get("head_branch"),
            event=d.get("event") or "",
            status=d.get("status"),
            conclusion=d.get("conclusion"),
            created_at=parse_time(d.get("created_at")),
            run_started_at=parse_time(d.get("run_started_at")),
            updated_at=parse_time(d.get("updated_at")),
            run_attempt=int(d.get("run_attempt") or 1),
            html_url=d.get("html_url") or "",
            repository=(d.get("repository") or {}).get("full_name", ""),
        )


@dataclass(frozen=True)
class Job:
    """One job of a workflow run; its log is fetched separately by ``id``."""

    id: int
    run_id: int
    run_attempt: int
    name: str
    status: str | None
    conclusion: str | None
    started_at: datetime | None
    completed_at: datetime | None
    runner_name: str | None
    labels: tuple[str, ...]
    html_url: str

    @classmethod
    def from_api(cls, d: dict[str, Any]) -> Job:
        return cls(
            id=int(d["id"]),
            run_id=int(d.get("run_id") or 0),
            run_attempt=int(d.get("run_attempt") or 1),
            name=d.get("name") or "",
            status=d.get("status"),
            conclusion=d.get("conclusion"),
            started_at=parse_time(d.get("started_at")),
            completed_at=parse_time(d.get("completed_at")),
            runner_name=d.get("runner_name"),
            labels=tuple(d.get("labels") or ()),
            html_url=d.get("html_url") or "",
        )


@dataclass(frozen=True)
class WorkflowFile:
    """A file's text at a ref, with the blob sha GitHub reports (to cite exactly what was read)."""

    path: str
    ref: str | None
    sha: str
    text: str


@dataclass(frozen=True)
class PublicKey:
    """A secrets scope's sealing key: ``key`` is base64 of the 32-byte Curve25519 public key."""

    key_id: str
    key: str


@dataclass(frozen=True)
class SecretWrite:
    """What a secret write returns: where and whether it was created. Never the value."""

    scope: str
    name: str
    created: bool
    key_id: str


@dataclass(frozen=True)
class PullRequest:
    number: int
    html_url: str
    state: str
    head: str
    base: str
    title: str
    created: bool = False
    """True when this call opened it; False when an open one was found (and updated)."""

    @classmethod
    def from_api(cls, d: dict[str, Any], created: bool = False) -> PullRequest:
        return cls(
            number=int(d["number"]),
            html_url=d.get("html_url") or "",
            state=d.get("state") or "",
            head=(d.get("head") or {}).get("ref", ""),
            base=(d.get("base") or {}).get("ref", ""),
            title=d.get("title") or "",
            created=created,
        )


# --------------------------------------------------------------------------- sealing


def seal_secret(public_key_b64: str, value: SecretLike, *, source: str = "github secret") -> str:
    """Seal ``value`` to a GitHub public key (libsodium sealed box) and return base64 ciphertext.

    Only the holder of the private key (GitHub) can open it; the ciphertext differs on every
    call because a sealed box uses a fresh ephemeral key.
    """
    plain = reveal(value, source=source)
    try:
        key = public.PublicKey(public_key_b64.encode("ascii"), encoding.Base64Encoder())
    except (CryptoError, ValueError, TypeError) as exc:
        raise IntegrationError(source, f"the public key GitHub returned is not a Curve25519 key: {type(exc).__name__}") from None
    sealed = public.SealedBox(key).encrypt(plain.encode("utf-8"))
    return base64.b64encode(sealed).decode("ascii")


# --------------------------------------------------------------------------- client


def split_repo(full_name: str) -> tuple[str, str]:
    """``("acme", "api")`` from ``"acme/api"`` (also accepts ``https://github.com/acme/api(.git)``)."""
    text = (full_name or "").strip().removesuffix(".git").rstrip("/")
    if "://" in text:
        text = text.split("://", 1)[1].split("/", 1)[-1]
    parts = text.split("/")
    if len(parts) != 2 or not all(_NAME_RE.match(p) for p in parts):
        raise InputError("github repository", f"{full_name!r} is not 'owner/name'", field="repo")
    return parts[0], parts[1]


def _seg(value: str | int, name: str) -> str:
    """One URL path segment from an owner/repo/environment/branch name, validated and quoted."""
    text = str(value)
    if not text or "/" in text or text in (".", ".."):
        raise InputError("github", f"{text!r} is not a valid {name}", field=name)
    return quote(text, safe="")


def _check_secret(name: str, value: SecretLike) -> None:
    """Refuse a bad name or an empty value before any request is made."""
    _check_secret_name(name)
    reveal(value, source=f"github secret {name}")


def _check_secret_name(name: str) -> None:
    if not _SECRET_NAME_RE.match(name or ""):
        raise InputError("github secret", f"{name!r}: names are letters, digits and _ and do not start with a digit", field="name")
    if name.upper().startswith("GITHUB_"):
        raise InputError("github secret", f"{name!r}: names starting with GITHUB_ are reserved by GitHub", field="name")


class GitHubClient(RestBackedClient):
    """A GitHub REST client for one API endpoint and one token.

    ``token`` may be a ``SecretStr``; it is sent as ``Authorization: Bearer`` only to
    ``api_url``. ``max_retries``/``max_wait`` bound how long 429/5xx are retried;
    ``backoff`` is the first wait after a 5xx (doubling each time) when the server named none.
    """

    def __init__(self, token: SecretLike, api_url: str = DEFAULT_API_URL, *, writes_per_minute: int = WRITES_PER_MINUTE,
                 **options: Unpack[RestOptions]) -> None:
        # GitHub's secondary limit: content-creating requests (POST/PATCH/PUT/DELETE) are paced per API
        # endpoint across every client of this process; a wait longer than max_wait raises RateLimited.
        options.setdefault("write_limit", rate_limit("github", api_url.rstrip("/"), writes_per_minute, 60.0))
        self._open("github", token, api_url, lambda tok: {"Authorization": f"Bearer {tok}"}, {
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
            "User-Agent": "digestguard",
        }, options)

    # ---------------------------------------------------------------- audit log

    def audit_log_by_token(self, org: str, token: SecretLike, since: datetime) -> list[dict[str, Any]]:
        """The organisation audit log's entries made with ``token`` since ``since`` (Enterprise Cloud orgs).

        Searched by ``hashed_token`` (base64 of the token's SHA-256), as GitHub documents: the token itself is
        never sent. Entries keep action, actor, actor_ip, repo and ``@timestamp`` (ms).
        """
        import hashlib

        hashed = base64.b64encode(hashlib.sha256(reveal(token, source="github token").encode()).digest()).decode()
        phrase = f'hashed_token:"{hashed}" created:>={utc(since).strftime("%Y-%m-%dT%H:%M:%SZ")}'
        return list(self.rest.paginate(f"/orgs/{_seg(org, 'org')}/audit-log",
                                       params={"phrase": phrase, "per_page": 100, "order": "desc"}))

    # ---------------------------------------------------------------- repository

    def _repo(self, owner: str, repo: str) -> str:
        return f"/repos/{_seg(owner, 'owner')}/{_seg(repo, 'repo')}"

    def get_repository(self, owner: str, repo: str) -> dict[str, Any]:
        return self.rest.get_json(self._repo(owner, repo))

    def default_branch(self, owner: str, repo: str) -> str:
        """The branch pull requests should target when the caller names none."""
        branch = self.get_repository(owner, repo).get("default_branch")
        if not branch:
            raise IntegrationError(self.rest.source("GET", self._repo(owner, repo)), "repository has no default_branch")
        return str(branch)

    # ---------------------------------------------------------------- git objects

    def get_commit(self, owner: str, repo: str, sha: str) -> dict[str, Any] | None:
        """The commit (any commit of the fork network, as GitHub serves it); None when there is none (422/404)."""
        try:
            return self.rest.get_json(f"{self._repo(owner, repo)}/commits/{_seg(sha, 'sha')}")
        except IntegrationError as e:
            if e.status in (404, 422):
                return None
            raise

    def commit_time(self, owner: str, repo: str, sha: str) -> datetime | None:
        """The committer date of ``sha`` (set by whoever made the commit: a hint, not proof)."""
        c = self.get_commit(owner, repo, sha)
        date = ((c or {}).get("commit") or {}).get("committer", {}).get("date")
        return datetime.fromisoformat(date.replace("Z", "+00:00")) if date else None

    def list_tags(self, owner: str, repo: str) -> dict[str, str]:
        """{tag: commit SHA} of every tag."""
        path = f"{self._repo(owner, repo)}/tags"
        return {d["name"]: d["commit"]["sha"] for d in self.rest.paginate(path, params={"per_page": 100})}

    def list_branches(self, owner: str, repo: str) -> dict[str, str]:
        """{branch: commit SHA} of every branch."""
        path = f"{self._repo(owner, repo)}/branches"
        return {d["name"]: d["commit"]["sha"] for d in self.rest.paginate(path, params={"per_page": 100})}

    def compare_status(self, owner: str, repo: str, base: str, head: str) -> str | None:
        """``identical``/``behind``/``ahead``/``diverged`` for ``base...head``; None when either is unknown."""
        try:
            body = self.rest.get_json(f"{self._repo(owner, repo)}/compare/{_seg(base, 'base')}...{_seg(head, 'head')}")
        except IntegrationError as e:
            if e.status in (404, 422):
                return None
            raise
        return str(body.get("status")) if isinstance(body, dict) else None

    # ---------------------------------------------------------------- Actions

    def list_workflow_runs(
        self,
        owner: str,
        repo: str,
        start: datetime,
        end: datetime,
        *,
        event: str | None = None,
        branch: str | None = None,
    ) -> list[WorkflowRun]:
        """Runs *created* between ``start`` and ``end`` (inclusive), oldest first.

        Uses GitHub's ``created=START..END`` filter. GitHub returns at most 1,000 runs for a
        filtered listing, so when ``total_count`` says more exist the window is split in
        halves until each part fits: no run inside the window is silently dropped.
        """
        lo, hi = _utc(start, "start"), _utc(end, "end")
        if end < start:
            raise InputError("github time range", f"end {hi} is before start {lo}", field="end")
        extra: dict[str, Any] = {}
        if event:
            extra["event"] = event
        if branch:
            extra["branch"] = branch
        seen: dict[int, WorkflowRun] = {}
        # GitHub filters by whole seconds: round the end up so a run in its last fraction is kept.
        end_s = utc(end)
        if end_s.microsecond:
            end_s = end_s.replace(microsecond=0) + timedelta(seconds=1)
        for run in self._runs_between(owner, repo, utc(start).replace(microsecond=0), end_s, extra):
            seen[run.id] = run
        return sorted(seen.values(), key=lambda r: (r.created_at or start, r.id))

    def _runs_between(self, owner: str, repo: str, start: datetime, end: datetime, extra: dict[str, Any]) -> list[WorkflowRun]:
        path = f"{self._repo(owner, repo)}/actions/runs"
        params = {"created": f"{_utc(start, 'start')}..{_utc(end, 'end')}", "per_page": 100, **extra}
        first = self.rest.request("GET", path, params=params, ok=(200,))
        body = self.rest.json_of(first, path)
        total = int(body.get("total_count") or 0)
        if total > _RUN_LIST_CAP and (end - start).total_seconds() >= 2:
            middle = start + (end - start) / 2
            middle = middle.replace(microsecond=0)
            return self._runs_between(owner, repo, start, middle, extra) + self._runs_between(
                owner, repo, middle + timedelta(seconds=1), end, extra
            )
        runs = [WorkflowRun.from_api(d) for d in body.get("workflow_runs") or []]
        nxt = next_link(first)
        if nxt:
            runs += [WorkflowRun.from_api(d) for d in self.rest.paginate(nxt, item_key="workflow_runs")]
        return runs

    def list_jobs(self, owner: str, repo: str, run_id: int, *, all_attempts: bool = True) -> list[Job]:
        """Jobs of a run; with ``all_attempts`` also those of earlier attempts (a re-run pulls again)."""
        path = f"{self._repo(owner, repo)}/actions/runs/{int(run_id)}/jobs"
        params = {"per_page": 100, "filter": "all" if all_attempts else "latest"}
        return [Job.from_api(d) for d in self.rest.paginate(path, params=params, item_key="jobs")]

    def download_job_log(self, owner: str, repo: str, job_id: int) -> str:
        """The plain-text log of one job.

        GitHub answers ``302`` to a short-lived URL on its blob storage. The redirect is
        followed by hand so the token is never sent there. The text keeps GitHub's
        ``2026-04-22T13:05:11.1234567Z`` line prefixes; a leading BOM is dropped.
        """
        path = f"{self._repo(owner, repo)}/actions/jobs/{int(job_id)}/logs"
        answer = self.rest.request("GET", path, ok=(200, 302), max_body=MAX_LOG_BYTES)
        if answer.status_code == 200:
            return answer.content.decode("utf-8-sig", errors="replace")
        location = answer.headers.get("location")
        if not location:
            raise IntegrationError(self.rest.source("GET", path), "302 without a Location header", status=302)
        blob = self.rest.request(
            "GET", location, ok=(200,), headers={"Accept": "*/*"},
            source=self.rest.source("GET", path) + " (log download)", max_body=MAX_LOG_BYTES,
        )
        return blob.content.decode("utf-8-sig", errors="replace")

    def get_file(self, owner: str, repo: str, path: str, ref: str | None = None) -> WorkflowFile:
        """A file's content at ``ref`` (a branch, tag or commit sha; default branch when ``None``)."""
        clean = path.strip("/")
        if not clean or ".." in clean.split("/"):
            raise InputError("github file", f"{path!r} is not a repository path", field="path")
        url = f"{self._repo(owner, repo)}/contents/{quote(clean, safe='/')}"
        body = self.rest.get_json(url, params={"ref": ref} if ref else None)
        if not isinstance(body, dict) or body.get("type") != "file":
            raise IntegrationError(self.rest.source("GET", url), f"{clean} is not a file")
        raw = body.get("content") or ""
        if body.get("encoding") == "base64":
            text = base64.b64decode(raw).decode("utf-8", errors="replace")
        elif body.get("encoding") == "none" or (not raw and int(body.get("size") or 0) > 0):
            # Files over 1 MB come without content in the JSON answer: ask for the raw bytes.
            answer = self.rest.request("GET", url, params={"ref": ref} if ref else None, ok=(200,),
                                       headers={"Accept": "application/vnd.github.raw+json"}, max_body=MAX_LOG_BYTES)
            text = answer.content.decode("utf-8", errors="replace")
        else:
            text = raw
        return WorkflowFile(path=clean, ref=ref, sha=body.get("sha") or "", text=text)

    def get_workflow_file(self, owner: str, repo: str, path: str, ref: str | None = None) -> WorkflowFile:
        """A workflow file (``.github/workflows/ci.yml``, as in ``WorkflowRun.path``) at ``ref``."""
        return self.get_file(owner, repo, path.split("@", 1)[0], ref)

    def list_workflow_files(self, owner: str, repo: str, ref: str | None = None) -> list[str]:
        """Paths of the files in ``.github/workflows`` (empty when the directory does not exist)."""
        url = f"{self._repo(owner, repo)}/contents/.github/workflows"
        try:
            body = self.rest.get_json(url, params={"ref": ref} if ref else None, expect=(list, dict))
        except NotFound:
            return []
        if not isinstance(body, list):
            return []  # a file named .github/workflows, not a directory
        return sorted(str(e["path"]) for e in body if isinstance(e, dict) and e.get("type") == "file" and e.get("path")
                      and str(e.get("name", "")).endswith((".yml", ".yaml")))

    # ---------------------------------------------------------------- secrets

    def _public_key(self, path: str) -> PublicKey:
        body = self.rest.get_json(path)
        try:
            return PublicKey(key_id=str(body["key_id"]), key=str(body["key"]))
        except (KeyError, TypeError):
            raise IntegrationError(self.rest.source("GET", path), "public-key answer lacks key_id/key") from None

    def repository_public_key(self, owner: str, repo: str) -> PublicKey:
        return self._public_key(f"{self._repo(owner, repo)}/actions/secrets/public-key")

    def environment_public_key(self, owner: str, repo: str, environment: str) -> PublicKey:
        return self._public_key(f"{self._repo(owner, repo)}/environments/{_seg(environment, 'environment')}/secrets/public-key")

    def organization_public_key(self, org: str) -> PublicKey:
        return self._public_key(f"/orgs/{_seg(org, 'org')}/actions/secrets/public-key")

    def _put_secret(self, scope: str, base: str, name: str, value: SecretLike, key: PublicKey, extra: dict[str, Any] | None = None) -> SecretWrite:
        body = {"encrypted_value": seal_secret(key.key, value, source=f"github {scope} secret {name}"), "key_id": key.key_id}
        body.update(extra or {})
        answer = self.rest.request("PUT", f"{base}/{name}", json=body, ok=(201, 204))
        return SecretWrite(scope=scope, name=name, created=answer.status_code == 201, key_id=key.key_id)

    def set_repository_secret(self, owner: str, repo: str, name: str, value: SecretLike) -> SecretWrite:
        """Create or replace a repository Actions secret. Returns whether it was created (201) or updated (204)."""
        _check_secret(name, value)
        key = self.repository_public_key(owner, repo)
        return self._put_secret(f"repo {owner}/{repo}", f"{self._repo(owner, repo)}/actions/secrets", name, value, key)

    def set_environment_secret(self, owner: str, repo: str, environment: str, name: str, value: SecretLike) -> SecretWrite:
        """Create or replace a secret of a deployment environment (``production``...)."""
        _check_secret(name, value)
        env = _seg(environment, "environment")
        key = self.environment_public_key(owner, repo, environment)
        base = f"{self._repo(owner, repo)}/environments/{env}/secrets"
        return self._put_secret(f"environment {owner}/{repo}/{environment}", base, name, value, key)

    def set_organization_secret(
        self,
        org: str,
        name: str,
        value: SecretLike,
        *,
        visibility: Visibility | None = None,
        selected_repository_ids: list[int] | None = None,
    ) -> SecretWrite:
        """Create or replace an organisation Actions secret.

        ``visibility=None`` keeps what the secret has now (and, for ``selected``, its
        repository list), so a rotation does not widen or narrow who can read it; a
        new secret defaults to ``private``.
        """
        _check_secret(name, value)
        if visibility not in (None, "all", "private", "selected"):
            raise InputError("github org secret", f"{visibility!r} is not all/private/selected", field="visibility")
        base = f"/orgs/{_seg(org, 'org')}/actions/secrets"
        extra: dict[str, Any] = {}
        if visibility is None:
            try:
                current = self.rest.get_json(f"{base}/{name}")
                visibility = current.get("visibility") or "private"
                if visibility == "selected" and selected_repository_ids is None:
                    repos = self.rest.paginate(f"{base}/{name}/repositories", params={"per_page": 100}, item_key="repositories")
                    selected_repository_ids = [int(r["id"]) for r in repos]
            except NotFound:
                visibility = "private"
        extra["visibility"] = visibility
        if visibility == "selected":
            extra["selected_repository_ids"] = list(selected_repository_ids or [])
        elif selected_repository_ids:
            raise InputError("github org secret", "selected_repository_ids needs visibility='selected'", field="selected_repository_ids")
        key = self.organization_public_key(org)
        return self._put_secret(f"org {org}", base, name, value, key, extra)

    def secret_updated_at(self, owner: str, repo: str, name: str, environment: str | None = None) -> datetime | None:
        """When GitHub says a repository (or environment) secret was last written; a value-free check."""
        _check_secret_name(name)
        base = self._repo(owner, repo)
        path = f"{base}/environments/{_seg(environment, 'environment')}/secrets/{name}" if environment else f"{base}/actions/secrets/{name}"
        return parse_time(self.rest.get_json(path).get("updated_at"))

    # ---------------------------------------------------------------- pull requests

    def find_open_pull_request(self, owner: str, repo: str, head: str, *, head_owner: str | None = None, base: str | None = None) -> PullRequest | None:
        """The open PR from branch ``head`` (in ``head_owner``'s fork, default the repo owner), if any."""
        params: dict[str, Any] = {"state": "open", "head": f"{head_owner or owner}:{head}", "per_page": 100}
        if base:
            params["base"] = base
        for d in self.rest.paginate(f"{self._repo(owner, repo)}/pulls", params=params):
            if (d.get("head") or {}).get("ref") == head:
                return PullRequest.from_api(d)
        return None

    def create_pull_request(self, owner: str, repo: str, *, head: str, base: str, title: str, body: str, draft: bool = False) -> PullRequest:
        payload = {"title": title, "head": head, "base": base, "body": body, "draft": draft, "maintainer_can_modify": True}
        d = self.rest.json_of(self.rest.request("POST", f"{self._repo(owner, repo)}/pulls", json=payload, ok=(201,)),
                              f"{self._repo(owner, repo)}/pulls", method="POST")
        return PullRequest.from_api(d, created=True)

    def update_pull_request(self, owner: str, repo: str, number: int, *, title: str | None = None, body: str | None = None) -> PullRequest:
        payload = {k: v for k, v in (("title", title), ("body", body)) if v is not None}
        d = self.rest.json_of(self.rest.request("PATCH", f"{self._repo(owner, repo)}/pulls/{int(number)}", json=payload,
                                                ok=(200,)), f"{self._repo(owner, repo)}/pulls/{int(number)}", method="PATCH")
        return PullRequest.from_api(d)


def open_or_update_pull_request(
    client: GitHubClient,
    owner: str,
    repo: str,
    *,
    head: str,
    title: str,
    body: str,
    base: str | None = None,
    draft: bool = False,
) -> PullRequest:
    """Open a PR from ``head`` into ``base`` (default branch when ``None``), or update the open one.

    Idempotent: a re-run finds the PR it opened before (by head branch) and rewrites its
    title and body instead of opening a second one. If a concurrent run opened it between
    our look-up and our create (GitHub answers 422 "A pull request already exists"), the
    existing one is looked up and updated. Never merges.
    """
    if not head:
        raise InputError("github pull request", "head branch is empty", field="head")
    target = base or client.default_branch(owner, repo)
    existing = client.find_open_pull_request(owner, repo, head, base=target)
    if existing is None:
        try:
            return client.create_pull_request(owner, repo, head=head, base=target, title=title, body=body, draft=draft)
        except Refused as exc:
            if "already exists" not in exc.message.lower():
                raise
            existing = client.find_open_pull_request(owner, repo, head, base=target)
            if existing is None:
                raise
    updated = client.update_pull_request(owner, repo, existing.number, title=title, body=body)
    return PullRequest(
        number=updated.number, html_url=updated.html_url, state=updated.state,
        head=updated.head, base=updated.base, title=updated.title, created=False,
    )


def write_actions_secret(
    client: GitHubClient,
    name: str,
    value: SecretLike,
    *,
    repo: str | None = None,
    environment: str | None = None,
    org: str | None = None,
    visibility: Visibility | None = None,
) -> SecretWrite:
    """Write one Actions secret wherever an inventory destination points.

    ``repo="owner/name"`` (plus ``environment`` for an environment secret) or ``org``;
    exactly one of ``repo``/``org``. Mirrors the inventory's ``github-actions-secret``
    destination so the rotate stage needs no branching of its own.
    """
    if bool(repo) == bool(org):
        raise InputError("github secret destination", "give exactly one of repo or org", field="repo")
    if org:
        if environment:
            raise InputError("github secret destination", "environment secrets belong to a repo, not an org", field="environment")
        return client.set_organization_secret(org, name, value, visibility=visibility)
    owner, repo_name = split_repo(repo or "")
    if environment:
        return client.set_environment_secret(owner, repo_name, environment, name, value)
    return client.set_repository_secret(owner, repo_name, name, value)
