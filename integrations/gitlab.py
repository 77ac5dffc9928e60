"""GitLab REST API v4 client: pipelines, jobs and traces; CI/CD variables; merge requests.

What the stages use it for:

* **assess** - pipelines that ran in the attack window, their jobs, and each job's
  trace, where the runner prints the digest it pulled
  (``Using docker image sha256:... for checkmarx/kics:latest with digest checkmarx/kics@sha256:...``);
* **rotate** - put a new value into a project or group CI/CD variable. The update
  changes the value only, so ``masked``/``protected``/``environment_scope`` stay as
  they were; a missing variable is created with the flags the caller gives. GitLab
  answers with the variable *including its value*: this client drops it and returns
  only the metadata;
* **pin** - open (or on a re-run update) a merge request. Never merges;
* **rotate / contain** - project and group access tokens: list them and rotate one
  (``POST /projects/:id/access_tokens/:token_id/rotate``, ``/groups/...``): GitLab
  revokes the old token and answers the new one in the same call, the only time it
  shows it. :func:`token_probe` asks ``GET /personal_access_tokens/self`` (works for
  project and group tokens too) whether a token still works.

Works against gitlab.com (``api_url="https://gitlab.com/api/v4"``) and self-managed
instances; an ``api_url`` given without ``/api/v4`` gets it appended. The token goes in
the ``PRIVATE-TOKEN`` header. Projects are named by numeric id or by path
(``group/sub/project``, URL-encoded here). Errors are :mod:`digestguard.errors` naming
the host, method and path.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Unpack
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from digestguard.errors import InputError, IntegrationError, NotFound, Refused, Unavailable
from digestguard.timeutil import parse_time
from integrations._rest import MAX_LOG_BYTES, RestBackedClient, RestOptions, iso_utc
from integrations._secret_values import SecretLike, reveal

__all__ = [
    "DEFAULT_API_URL",
    "GitLabClient",
    "GitLabJob",
    "MergeRequest",
    "Pipeline",
    "VariableWrite",
    "open_or_update_merge_request",
    "open_or_update_pull_request",
]

DEFAULT_API_URL = "https://gitlab.com/api/v4"


def _utc(value: datetime, name: str) -> str:
    return iso_utc(value, name, "gitlab time range")


def project_path(project: int | str) -> str:
    """``/projects/<id>`` with a path-style id URL-encoded (``group/app`` -> ``group%2Fapp``)."""
    if isinstance(project, int) or (isinstance(project, str) and project.isdigit()):
        return f"/projects/{int(project)}"
    if not isinstance(project, str) or not project.strip("/") or ".." in project.split("/"):
        raise InputError("gitlab project", f"{project!r} is not a project id or path", field="project")
    return f"/projects/{quote(project.strip('/'), safe='')}"


def group_path(group: int | str) -> str:
    if isinstance(group, int) or (isinstance(group, str) and group.isdigit()):
        return f"/groups/{int(group)}"
    if not isinstance(group, str) or not group.strip("/"):
        raise InputError("gitlab group", f"{group!r} is not a group id or path", field="group")
    return f"/groups/{quote(group.strip('/'), safe='')}"


@dataclass(frozen=True)
class Pipeline:
    id: int
    iid: int | None
    project_id: int
    sha: str
    ref: str
    status: str
    source: str | None
    created_at: datetime | None
    updated_at: datetime | None
    web_url: str

    @classmethod
    def from_api(cls, d: dict[str, Any]) -> Pipeline:
        return cls(
            id=int(d["id"]), iid=d.get("iid"), project_id=int(d.get("project_id") or 0), sha=d.get("sha") or "",
            ref=d.get("ref") or "", status=d.get("status") or "", source=d.get("source"),
            created_at=parse_time(d.get("created_at")), updated_at=parse_time(d.get("updated_at")), web_url=d.get("web_url") or "",
        )


@dataclass(frozen=True)
class GitLabJob:
    id: int
    name: str
    stage: str
    status: str
    pipeline_id: int
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    runner: str | None
    web_url: str
    retried: bool

    @classmethod
    def from_api(cls, d: dict[str, Any]) -> GitLabJob:
        runner = d.get("runner") or {}
        return cls(
            id=int(d["id"]), name=d.get("name") or "", stage=d.get("stage") or "", status=d.get("status") or "",
            pipeline_id=int((d.get("pipeline") or {}).get("id") or 0),
            created_at=parse_time(d.get("created_at")), started_at=parse_time(d.get("started_at")),
            finished_at=parse_time(d.get("finished_at")),
            runner=runner.get("description") if isinstance(runner, dict) else None,
            web_url=d.get("web_url") or "", retried=bool(d.get("retried")),
        )


@dataclass(frozen=True)
class VariableWrite:
    """The outcome of a variable write: where, whether created, the flags it has now. Never the value."""

    scope: str
    key: str
    created: bool
    masked: bool
    protected: bool
    environment_scope: str


@dataclass(frozen=True)
class MergeRequest:
    iid: int
    web_url: str
    state: str
    source_branch: str
    target_branch: str
    title: str
    created: bool = False

    @property
    def number(self) -> int:
        """The MR's project-level number (``!iid``), named like a GitHub PR number for the pin stage."""
        return self.iid

    @property
    def html_url(self) -> str:
        return self.web_url

    @classmethod
    def from_api(cls, d: dict[str, Any], created: bool = False) -> MergeRequest:
        return cls(
            iid=int(d["iid"]), web_url=d.get("web_url") or "", state=d.get("state") or "",
            source_branch=d.get("source_branch") or "", target_branch=d.get("target_branch") or "",
            title=d.get("title") or "", created=created,
        )


class GitLabClient(RestBackedClient):
    """A GitLab REST v4 client for one instance and one token (``PRIVATE-TOKEN``)."""

    def __init__(self, token: SecretLike, api_url: str = DEFAULT_API_URL, **options: Unpack[RestOptions]) -> None:
        """``options``: ``timeout``, ``max_retries``, ``max_wait``, ``backoff`` (see :class:`RestClient`)."""
        url = api_url.rstrip("/")
        if not url.endswith("/api/v4"):
            url += "/api/v4"
        self._open("gitlab", token, url, lambda tok: {"PRIVATE-TOKEN": tok},
                   {"Accept": "application/json", "User-Agent": "digestguard"}, options)

    # ---------------------------------------------------------------- project

    def get_project(self, project: int | str) -> dict[str, Any]:
        return self.rest.get_json(project_path(project))

    def default_branch(self, project: int | str) -> str:
        branch = self.get_project(project).get("default_branch")
        if not branch:
            raise IntegrationError(self.rest.source("GET", project_path(project)), "project has no default_branch (empty repository?)")
        return str(branch)

    def get_file(self, project: int | str, path: str, ref: str | None = None) -> str:
        """A file's text at ``ref`` (default branch when ``None``), e.g. ``.gitlab-ci.yml``."""
        clean = path.strip("/")
        if not clean or ".." in clean.split("/"):
            raise InputError("gitlab file", f"{path!r} is not a repository path", field="path")
        ref = ref or self.default_branch(project)
        url = f"{project_path(project)}/repository/files/{quote(clean, safe='')}/raw"
        return self.rest.request("GET", url, params={"ref": ref}, ok=(200,),
                                 max_body=MAX_LOG_BYTES).content.decode("utf-8", errors="replace")

    # ---------------------------------------------------------------- CI

    def list_pipelines(self, project: int | str, start: datetime, end: datetime) -> list[Pipeline]:
        """Pipelines that may have run inside ``[start, end]``: created before ``end`` and updated after ``start``.

        Asking for ``updated_after=start`` (supported by every GitLab since 11.x) catches
        pipelines that began before the window but were still running in it;
        ``created_before`` narrows the other end and is checked again here, because
        older instances ignore it.
        """
        lo, hi = _utc(start, "start"), _utc(end, "end")
        if end < start:
            raise InputError("gitlab time range", f"end {hi} is before start {lo}", field="end")
        params = {
            "updated_after": lo,
            "created_before": _utc(end + timedelta(seconds=1), "end"),
            "order_by": "id",
            "sort": "asc",
            "per_page": 100,
        }
        out = []
        for d in self.rest.paginate(f"{project_path(project)}/pipelines", params=params):
            p = Pipeline.from_api(d)
            if p.created_at is not None and p.created_at > end:
                continue
            if p.updated_at is not None and p.updated_at < start:
                continue
            out.append(p)
        return out

    def list_jobs(self, project: int | str, pipeline_id: int, *, include_retried: bool = True) -> list[GitLabJob]:
        """Jobs of a pipeline; retried attempts included by default (each attempt pulled the image again)."""
        path = f"{project_path(project)}/pipelines/{int(pipeline_id)}/jobs"
        params = {"per_page": 100, "include_retried": "true" if include_retried else "false"}
        return [GitLabJob.from_api(d) for d in self.rest.paginate(path, params=params)]

    def job_trace(self, project: int | str, job_id: int) -> str:
        """The raw job log (runner output, ANSI colour codes and ``section_start`` markers included)."""
        path = f"{project_path(project)}/jobs/{int(job_id)}/trace"
        return self.rest.request("GET", path, ok=(200,), headers={"Accept": "text/plain, */*"},
                                 max_body=MAX_LOG_BYTES).content.decode("utf-8", errors="replace")

    # ---------------------------------------------------------------- variables

    def _set_variable(
        self, scope_label: str, base: str, key: str, value: SecretLike, *,
        environment_scope: str | None, masked: bool, protected: bool, raw: bool,
    ) -> VariableWrite:
        if not key or not all(c.isalnum() or c == "_" for c in key) or len(key) > 255:
            raise InputError(f"gitlab variable ({scope_label})", f"{key!r}: keys are letters, digits and _", field="key")
        plain = reveal(value, source=f"gitlab variable {key}")
        filt = {"filter[environment_scope]": environment_scope} if environment_scope else None
        src = self.rest.source("PUT", f"{base}/{key}")
        try:
            answer = self.rest.request("PUT", f"{base}/{key}", params=filt, json={"value": plain}, ok=(200,), source=src)
            created = False
        except NotFound:
            body: dict[str, Any] = {
                "key": key, "value": plain, "masked": masked, "protected": protected, "raw": raw, "variable_type": "env_var",
            }
            if environment_scope:
                body["environment_scope"] = environment_scope
            answer = self.rest.request("POST", base, json=body, ok=(201,), source=self.rest.source("POST", base) + f" ({key})")
            created = True
        d = self.rest.json_of(answer, base)
        return VariableWrite(
            scope=scope_label, key=key, created=created, masked=bool(d.get("masked")),
            protected=bool(d.get("protected")), environment_scope=str(d.get("environment_scope") or "*"),
        )

    def set_project_variable(
        self, project: int | str, key: str, value: SecretLike, *,
        environment_scope: str | None = None, masked: bool = True, protected: bool = False, raw: bool = True,
    ) -> VariableWrite:
        """Replace the value of a project CI/CD variable, or create it when it does not exist.

        An existing variable keeps its masked/protected/raw flags (only ``value`` is sent);
        ``masked``/``protected``/``raw`` apply only when it is created. With several
        variables of the same key in different environment scopes, name the one to
        change with ``environment_scope`` (GitLab refuses an ambiguous update with 409).
        """
        return self._set_variable(f"project {project}", f"{project_path(project)}/variables", key, value,
                                  environment_scope=environment_scope, masked=masked, protected=protected, raw=raw)

    def set_group_variable(
        self, group: int | str, key: str, value: SecretLike, *,
        environment_scope: str | None = None, masked: bool = True, protected: bool = False, raw: bool = True,
    ) -> VariableWrite:
        """Like :meth:`set_project_variable` for a group's CI/CD variable (inherited by its projects)."""
        return self._set_variable(f"group {group}", f"{group_path(group)}/variables", key, value,
                                  environment_scope=environment_scope, masked=masked, protected=protected, raw=raw)

    # ---------------------------------------------------------------- merge requests

    def find_open_merge_request(self, project: int | str, source_branch: str, target_branch: str | None = None) -> MergeRequest | None:
        params: dict[str, Any] = {"state": "opened", "source_branch": source_branch, "per_page": 100}
        if target_branch:
            params["target_branch"] = target_branch
        for d in self.rest.paginate(f"{project_path(project)}/merge_requests", params=params):
            if d.get("source_branch") == source_branch:
                return MergeRequest.from_api(d)
        return None

    def create_merge_request(self, project: int | str, *, source_branch: str, target_branch: str, title: str, description: str) -> MergeRequest:
        body = {"source_branch": source_branch, "target_branch": target_branch, "title": title,
                "description": description, "remove_source_branch": True}
        d = self.rest.json_of(self.rest.request("POST", f"{project_path(project)}/merge_requests", json=body, ok=(201,)),
                              f"{project_path(project)}/merge_requests", method="POST")
        return MergeRequest.from_api(d, created=True)

    def update_merge_request(self, project: int | str, iid: int, *, title: str | None = None, description: str | None = None) -> MergeRequest:
        body = {k: v for k, v in (("title", title), ("description", description)) if v is not None}
        d = self.rest.json_of(self.rest.request("PUT", f"{project_path(project)}/merge_requests/{int(iid)}", json=body,
                                                ok=(200,)), f"{project_path(project)}/merge_requests/{int(iid)}", method="PUT")
        return MergeRequest.from_api(d)


    # ---------------------------------------------------------------- access tokens

    def _token_owner(self, owner: Literal["project", "group"], owner_id: int | str) -> str:
        return project_path(owner_id) if owner == "project" else group_path(owner_id)

    def list_access_tokens(self, owner: Literal["project", "group"], owner_id: int | str) -> list[dict[str, Any]]:
        """The project's or group's access tokens (id, name, active, revoked, scopes, expires_at; never a token)."""
        items = self.rest.paginate(self._token_owner(owner, owner_id) + "/access_tokens", params={"per_page": 100})
        return [{k: v for k, v in t.items() if k != "token"} for t in items]

    def rotate_access_token(self, owner: Literal["project", "group"], owner_id: int | str, token_id: int,
                            expires_at: str | None = None) -> tuple[dict[str, Any], SecretStr]:
        """Rotate a token: GitLab revokes ``token_id`` and answers the new token (its id and value)."""
        path = f"{self._token_owner(owner, owner_id)}/access_tokens/{int(token_id)}/rotate"
        r = self.rest.request("POST", path, json={"expires_at": expires_at} if expires_at else None, ok=(200, 201))
        body = r.json()
        value = body.pop("token", None)
        if not value:
            raise IntegrationError(self.rest.source("POST", path), "answer holds no token")
        return body, SecretStr(str(value))


def token_probe(api_url: str, token: SecretLike, *, timeout: float = 10.0) -> tuple[str, str]:
    """``GET /personal_access_tokens/self`` with ``token`` at its own GitLab: ``("accepted", "token <id>")`` or
    ``("refused", "HTTP 401")``. One request, no retry."""
    url = api_url.rstrip("/")
    if not url.endswith("/api/v4"):
        url += "/api/v4"
    try:
        r = httpx.get(url + "/personal_access_tokens/self", headers={"PRIVATE-TOKEN": reveal(token, source="gitlab token")},
                      timeout=timeout)
    except httpx.HTTPError as e:
        raise Unavailable(f"gitlab {api_url} GET /personal_access_tokens/self", f"no answer: {type(e).__name__}") from None
    if r.status_code == 200:
        return "accepted", f"token {r.json().get('id')}"
    if r.status_code in (401, 403):
        return "refused", f"HTTP {r.status_code}"
    raise Unavailable(f"gitlab {api_url} GET /personal_access_tokens/self", f"unexpected answer {r.status_code}",
                      r.status_code)


def open_or_update_merge_request(
    client: GitLabClient,
    project: int | str,
    *,
    head: str,
    title: str,
    body: str,
    base: str | None = None,
) -> MergeRequest:
    """Open an MR from ``head`` into ``base`` (default branch when ``None``), or update the open one.

    Idempotent like the GitHub helper: a re-run rewrites title and description of the MR it
    opened before; a create that loses a race (409 "already exists") falls back to updating.
    Never merges. ``head``/``base``/``body`` are named as for GitHub so the pin stage can
    call either forge the same way.
    """
    if not head:
        raise InputError("gitlab merge request", "source branch is empty", field="head")
    target = base or client.default_branch(project)
    existing = client.find_open_merge_request(project, head, target)
    if existing is None:
        try:
            return client.create_merge_request(project, source_branch=head, target_branch=target, title=title, description=body)
        except Refused as exc:
            if "already exists" not in exc.message.lower():
                raise
            existing = client.find_open_merge_request(project, head, target)
            if existing is None:
                raise
    updated = client.update_merge_request(project, existing.iid, title=title, description=body)
    return MergeRequest(
        iid=updated.iid, web_url=updated.web_url, state=updated.state, source_branch=updated.source_branch,
        target_branch=updated.target_branch, title=updated.title, created=False,
    )


open_or_update_pull_request = open_or_update_merge_request
"""Same function under the GitHub helper's name; the result has ``number`` and ``html_url`` too."""
