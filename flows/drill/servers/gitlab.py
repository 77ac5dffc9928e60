"""A local server speaking the subset of the GitLab REST API v4 that digestguard uses.

Why it exists: no GitLab can run on the test machines (it needs gigabytes and many
minutes to boot), so this stands in for ``gitlab.com/api/v4``. It speaks the real
protocol - ``PRIVATE-TOKEN`` auth, URL-encoded project paths, offset pagination with
``Link``/``X-Total``, 429 with ``Retry-After``/``RateLimit-Reset`` - so
``integrations.gitlab`` talks to it unchanged.

Behaviour kept from GitLab because the client depends on it:

* ``PUT /projects/:id/variables/:key`` changes only the attributes sent (GitLab uses
  ``declared_params(include_missing: false)``), answers 404 for an unknown key, and 409
  when several environment scopes share the key and no ``filter[environment_scope]`` is
  given; masked values must be at least 8 characters without spaces (else 400);
* job traces are raw runner output with ANSI codes and ``section_start`` markers;
* a second open MR from the same source branch answers 409 "already exists";
* project and group access tokens (``GET .../access_tokens``, ``POST
  .../access_tokens/:id/rotate``): rotation revokes the old token and answers a new
  one (new id, same name, ``token`` shown once); rotating a revoked token answers 400.
  An active access token authenticates like a user; ``GET /personal_access_tokens/self``
  answers the token's own record (401 once revoked).

Control: ``add_access_token``, ``access_tokens`` (state incl. values), ``add_project``, ``add_pipeline``, ``add_job``, ``add_variable``, ``add_file``,
``variables`` (stored values, for assertions), ``inject``, ``calls``.
"""

from __future__ import annotations

import secrets as _secrets
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import unquote

from flows.drill.servers._forge import ForgeServer, Reply, Request

DEFAULT_TOKEN = "glpat-localTestToken0000000"


def _iso(t: datetime) -> str:
    t = t.astimezone(timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _parse(value: str) -> datetime:
    t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def gitlab_job_trace(image: str, digest: str, at: datetime, *, image_id: str | None = None, timestamps: bool = False) -> str:
    """A job trace as the GitLab Runner docker executor writes it, pulling ``image``.

    ``digest`` is the manifest digest the registry served; ``image_id`` the local image
    (config) id the runner prints first. ``timestamps`` adds the per-line prefix newer
    runners write (``2026-04-22T13:05:11.123456Z 00O ``).
    """
    repo = image.rsplit(":", 1)[0] if ":" in image.split("/")[-1] else image
    image_id = image_id or "sha256:" + _secrets.token_hex(32)
    epoch = int(at.timestamp())
    E, R = "\x1b[0K", "\x1b[0;m"
    lines = [
        f"{E}Running with gitlab-runner 17.11.0 (0f67ff19){R}",
        f"{E}  on docker-auto-scale-0277ea0f 0277ea0f, system ID: s_6b1e7a2c9d3f{R}",
        f"section_start:{epoch}:prepare_executor\r{E}{E}\x1b[36;1mPreparing the \"docker\" executor{R}{R}",
        f"{E}Using Docker executor with image {image} ...{R}",
        f"{E}Pulling docker image {image} ...{R}",
        f"{E}Using docker image {image_id} for {image} with digest {repo}@{digest} ...{R}",
        f"section_end:{epoch + 4}:prepare_executor\r{E}",
        f"section_start:{epoch + 4}:prepare_script\r{E}{E}\x1b[36;1mPreparing environment{R}{R}",
        "Running on runner-0277ea0f-project-42-concurrent-0 via runner-0277ea0f-srm-1776863111-2c6f4b9e...",
        f"section_end:{epoch + 6}:prepare_script\r{E}",
        f"section_start:{epoch + 6}:get_sources\r{E}{E}\x1b[36;1mGetting source from Git repository{R}{R}",
        f"{E}\x1b[32;1mFetching changes with git depth set to 20...{R}",
        f"section_end:{epoch + 8}:get_sources\r{E}",
        f"section_start:{epoch + 8}:step_script\r{E}{E}\x1b[36;1mExecuting \"step_script\" stage of the job script{R}{R}",
        f"{E}Using docker image {image_id} for {image} with digest {repo}@{digest} ...{R}",
        f"\x1b[32;1m$ kics scan -p . -o results{R}",
        "Scanning with Keeping Infrastructure as Code Secure v2.1.20",
        f"section_end:{epoch + 40}:step_script\r{E}",
        f"section_start:{epoch + 40}:cleanup_file_variables\r{E}{E}\x1b[36;1mCleaning up project directory and file based variables{R}{R}",
        f"section_end:{epoch + 41}:cleanup_file_variables\r{E}",
        f"{E}\x1b[32;1mJob succeeded{R}",
    ]
    if timestamps:
        t = at.astimezone(timezone.utc)
        stamped = []
        for i, line in enumerate(lines):
            now = t + timedelta(milliseconds=250 * i)
            stamped.append(now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond:06d}Z 00O " + line)
        lines = stamped
    return "\n".join(lines) + "\n"


class GitLabServer(ForgeServer):
    """The GitLab stand-in. ``url`` (``http://127.0.0.1:PORT/api/v4``) is the ``api_url`` to hand the client."""

    vendor = "gitlab"

    def __init__(self, token: str = DEFAULT_TOKEN, *, reporter_tokens: tuple[str, ...] = ()) -> None:
        self.token = token
        self.reporter_tokens = set(reporter_tokens)
        self.projects: dict[int, dict[str, Any]] = {}
        self.groups: dict[int, dict[str, Any]] = {}
        self.pipelines: dict[int, dict[str, Any]] = {}
        self.jobs: dict[int, dict[str, Any]] = {}
        self.traces: dict[int, str] = {}
        self.variables: dict[tuple[str, str, str], dict[str, Any]] = {}  # (owner "project:ID"/"group:ID", key, scope)
        self.merge_requests: dict[int, list[dict[str, Any]]] = {}
        self.access_tokens: dict[int, dict[str, Any]] = {}  # id -> record with "token" (value) and "owner"
        self._next = 100
        super().__init__()

    @property
    def url(self) -> str:
        return self.base + "/api/v4"

    def _id(self) -> int:
        self._next += 1
        return self._next

    # ------------------------------------------------------------- fixtures

    def add_project(self, path: str, *, default_branch: str = "main") -> int:
        pid = self._id()
        self.projects[pid] = {
            "id": pid, "path_with_namespace": path, "name": path.rsplit("/", 1)[-1], "default_branch": default_branch,
            "web_url": f"https://gitlab.example.com/{path}", "files": {},
        }
        self.merge_requests[pid] = []
        return pid

    def add_group(self, path: str) -> int:
        gid = self._id()
        self.groups[gid] = {"id": gid, "full_path": path}
        return gid

    def add_access_token(self, owner: str, name: str, *, scopes: tuple[str, ...] = ("read_api",),
                         access_level: int = 30) -> dict[str, Any]:
        """A project (``owner="project:ID"``) or group (``"group:ID"``) access token; the record holds its value."""
        tid = self._id()
        rec = {"id": tid, "name": name, "revoked": False, "active": True, "scopes": list(scopes), "user_id": 9000 + tid,
               "created_at": _iso(datetime.now(timezone.utc)), "last_used_at": None, "access_level": access_level,
               "expires_at": (datetime.now(timezone.utc) + timedelta(days=30)).date().isoformat(),
               "owner": owner, "token": "glpat-" + _secrets.token_urlsafe(15)}
        with self._lock:
            self.access_tokens[tid] = rec
        return dict(rec)

    def token_active(self, value: str) -> bool:
        return any(t["token"] == value and t["active"] for t in self.access_tokens.values())

    def add_pipeline(self, project_id: int, *, created_at: datetime, duration: timedelta = timedelta(minutes=5),
                     ref: str = "main", sha: str = "c" * 40, source: str = "push", status: str = "success") -> int:
        pipe_id = self._id() * 100
        proj = self.projects[project_id]
        self.pipelines[pipe_id] = {
            "id": pipe_id, "iid": len([p for p in self.pipelines.values() if p["project_id"] == project_id]) + 1,
            "project_id": project_id, "sha": sha, "ref": ref, "status": status, "source": source,
            "created_at": _iso(created_at), "updated_at": _iso(created_at + duration),
            "web_url": f"{proj['web_url']}/-/pipelines/{pipe_id}",
        }
        return pipe_id

    def add_job(self, pipeline_id: int, *, name: str, trace: str, stage: str = "test", retried: bool = False,
                started_at: datetime | None = None) -> int:
        pipe = self.pipelines[pipeline_id]
        job_id = self._id() * 1000
        start = started_at or _parse(pipe["created_at"]) + timedelta(seconds=5)
        self.jobs[job_id] = {
            "id": job_id, "name": name, "stage": stage, "status": "success", "ref": pipe["ref"], "tag": False,
            "created_at": pipe["created_at"], "started_at": _iso(start), "finished_at": _iso(start + timedelta(minutes=1)),
            "duration": 60.0, "retried": retried, "allow_failure": False,
            "pipeline": {k: pipe[k] for k in ("id", "project_id", "ref", "sha", "status")},
            "runner": {"id": 7, "description": "docker-auto-scale", "is_shared": True},
            "web_url": f"{self.projects[pipe['project_id']]['web_url']}/-/jobs/{job_id}",
            "commit": {"id": pipe["sha"]},
        }
        self.traces[job_id] = trace
        return job_id

    def add_variable(self, owner: str, key: str, value: str, *, masked: bool = False, protected: bool = False,
                     environment_scope: str = "*", raw: bool = False) -> None:
        """``owner`` is ``project:ID`` or ``group:ID``."""
        self.variables[(owner, key, environment_scope)] = {
            "variable_type": "env_var", "key": key, "value": value, "protected": protected, "masked": masked,
            "hidden": False, "raw": raw, "environment_scope": environment_scope, "description": None,
        }

    def add_file(self, project_id: int, path: str, text: str, *, ref: str | None = None) -> None:
        self.projects[project_id]["files"][(path, ref or self.projects[project_id]["default_branch"])] = text

    # ------------------------------------------------------------- protocol

    def _authorize(self, headers: dict[str, str], method: str, path: str) -> Reply | None:
        token = headers.get("private-token")
        if token is None and headers.get("authorization", "").lower().startswith("bearer "):
            token = headers["authorization"][7:]
        if token not in ({self.token} | self.reporter_tokens) and not (token and self.token_active(token)):
            return Reply(401, {"message": "401 Unauthorized"})
        if token in self.reporter_tokens and (method != "GET" or "/variables" in path):
            return Reply(403, {"message": "403 Forbidden"})
        return None

    def _not_found(self) -> Reply:
        return Reply(404, {"error": "404 Not Found"})

    def _common_headers(self) -> dict[str, str]:
        return {"RateLimit-Limit": "2000", "RateLimit-Remaining": "1999",
                "RateLimit-Reset": str(int(datetime.now(timezone.utc).timestamp()) + 60),
                "X-Request-Id": _secrets.token_hex(13).upper()}

    def _project(self, req: Request) -> dict[str, Any] | None:
        ident = unquote(req.group("pid"))
        if ident.isdigit():
            return self.projects.get(int(ident))
        return next((p for p in self.projects.values() if p["path_with_namespace"] == ident), None)

    def _group(self, req: Request) -> dict[str, Any] | None:
        ident = unquote(req.group("gid"))
        if ident.isdigit():
            return self.groups.get(int(ident))
        return next((g for g in self.groups.values() if g["full_path"] == ident), None)

    def _register(self) -> None:
        P = r"/api/v4/projects/(?P<pid>[^/]+)"
        G = r"/api/v4/groups/(?P<gid>[^/]+)"
        self.route("GET", P, self._get_project)
        self.route("GET", P + r"/repository/files/(?P<file>[^/]+)/raw", self._get_file)
        self.route("GET", P + r"/pipelines", self._list_pipelines)
        self.route("GET", P + r"/pipelines/(?P<pipe>\d+)/jobs", self._list_jobs)
        self.route("GET", P + r"/jobs/(?P<job>\d+)/trace", self._trace)
        for base, owner in ((P, self._project_owner), (G, self._group_owner)):
            self.route("GET", base + r"/variables/(?P<key>[^/]+)", lambda r, o=owner: self._get_variable(r, o(r)))
            self.route("PUT", base + r"/variables/(?P<key>[^/]+)", lambda r, o=owner: self._put_variable(r, o(r)))
            self.route("POST", base + r"/variables", lambda r, o=owner: self._post_variable(r, o(r)))
        for base, owner in ((P, self._project_owner), (G, self._group_owner)):
            self.route("GET", base + r"/access_tokens", lambda r, o=owner: self._list_tokens(o(r)))
            self.route("POST", base + r"/access_tokens/(?P<tid>\d+)/rotate", lambda r, o=owner: self._rotate_token(r, o(r)))
        self.route("GET", r"/api/v4/personal_access_tokens/self", self._token_self)
        self.route("GET", P + r"/merge_requests", self._list_mrs)
        self.route("POST", P + r"/merge_requests", self._create_mr)
        self.route("PUT", P + r"/merge_requests/(?P<iid>\d+)", self._update_mr)

    def _project_owner(self, req: Request) -> str | None:
        p = self._project(req)
        return f"project:{p['id']}" if p else None

    def _group_owner(self, req: Request) -> str | None:
        g = self._group(req)
        return f"group:{g['id']}" if g else None

    def _get_project(self, req: Request) -> Reply:
        p = self._project(req)
        if p is None:
            return Reply(404, {"message": "404 Project Not Found"})
        return Reply(200, {k: v for k, v in p.items() if k != "files"})

    def _get_file(self, req: Request) -> Reply:
        p = self._project(req)
        if p is None:
            return Reply(404, {"message": "404 Project Not Found"})
        ref = req.query.get("ref") or p["default_branch"]
        text = p["files"].get((unquote(req.group("file")), ref))
        if text is None:
            return Reply(404, {"message": "404 File Not Found"})
        return Reply(200, raw=text.encode(), content_type="text/plain; charset=utf-8")

    def _list_pipelines(self, req: Request) -> Reply:
        p = self._project(req)
        if p is None:
            return Reply(404, {"message": "404 Project Not Found"})
        pipes = [x for x in self.pipelines.values() if x["project_id"] == p["id"]]
        q = req.query
        if "updated_after" in q:
            pipes = [x for x in pipes if _parse(x["updated_at"]) >= _parse(q["updated_after"])]
        if "updated_before" in q:
            pipes = [x for x in pipes if _parse(x["updated_at"]) <= _parse(q["updated_before"])]
        if "created_after" in q:
            pipes = [x for x in pipes if _parse(x["created_at"]) >= _parse(q["created_after"])]
        if "created_before" in q:
            pipes = [x for x in pipes if _parse(x["created_at"]) <= _parse(q["created_before"])]
        pipes.sort(key=lambda x: x["id"], reverse=q.get("sort", "desc") == "desc")
        return self.paginate(req, pipes, default_per_page=20)

    def _list_jobs(self, req: Request) -> Reply:
        p = self._project(req)
        pipe = self.pipelines.get(int(req.group("pipe")))
        if p is None or pipe is None or pipe["project_id"] != p["id"]:
            return Reply(404, {"message": "404 Not found"})
        jobs = [j for j in self.jobs.values() if j["pipeline"]["id"] == pipe["id"]]
        if req.query.get("include_retried", "false") != "true":
            jobs = [j for j in jobs if not j["retried"]]
        return self.paginate(req, jobs, default_per_page=20)

    def _trace(self, req: Request) -> Reply:
        p = self._project(req)
        job = self.jobs.get(int(req.group("job")))
        if p is None or job is None or job["pipeline"]["project_id"] != p["id"]:
            return Reply(404, {"message": "404 Not found"})
        return Reply(200, raw=self.traces[job["id"]].encode(), content_type="text/plain")

    # variables ----------------------------------------------------------------

    def _matching(self, owner: str, key: str, req: Request) -> list[tuple[str, str, str]]:
        scope = req.query.get("filter[environment_scope]")
        return [k for k in self.variables if k[0] == owner and k[1] == key and (scope is None or k[2] == scope)]

    @staticmethod
    def _maskable(value: str) -> bool:
        return len(value) >= 8 and not any(c.isspace() for c in value)

    def _get_variable(self, req: Request, owner: str | None) -> Reply:
        if owner is None:
            return self._not_found()
        found = self._matching(owner, req.group("key"), req)
        if not found:
            return Reply(404, {"message": "404 Variable Not Found"})
        if len(found) > 1:
            return Reply(409, {"message": "There are multiple variables with provided parameters. Please use 'filter[environment_scope]'"})
        return Reply(200, self.variables[found[0]])

    def _put_variable(self, req: Request, owner: str | None) -> Reply:
        if owner is None:
            return self._not_found()
        found = self._matching(owner, req.group("key"), req)
        if not found:
            return Reply(404, {"message": "404 Variable Not Found"})
        if len(found) > 1:
            return Reply(409, {"message": "There are multiple variables with provided parameters. Please use 'filter[environment_scope]'"})
        var = self.variables[found[0]]
        body = req.body if isinstance(req.body, dict) else {}
        updated = {**var, **{k: v for k, v in body.items() if k in ("value", "protected", "masked", "raw", "variable_type", "description")}}
        if updated["masked"] and not self._maskable(str(updated["value"])):
            return Reply(400, {"message": {"value": ["is invalid"]}})
        if "environment_scope" in body and body["environment_scope"] != found[0][2]:
            del self.variables[found[0]]
            updated["environment_scope"] = body["environment_scope"]
            self.variables[(owner, updated["key"], updated["environment_scope"])] = updated
        else:
            self.variables[found[0]] = updated
        return Reply(200, updated)

    def _post_variable(self, req: Request, owner: str | None) -> Reply:
        if owner is None:
            return self._not_found()
        body = req.body if isinstance(req.body, dict) else {}
        key, scope = body.get("key"), body.get("environment_scope", "*")
        if not key or "value" not in body:
            return Reply(400, {"error": "key is missing, value is missing"})
        if (owner, key, scope) in self.variables:
            return Reply(400, {"message": {"key": [f"({key}) has already been taken"]}})
        var = {"variable_type": body.get("variable_type", "env_var"), "key": key, "value": body["value"],
               "protected": bool(body.get("protected", False)), "masked": bool(body.get("masked", False)),
               "hidden": False, "raw": bool(body.get("raw", False)), "environment_scope": scope, "description": None}
        if var["masked"] and not self._maskable(str(var["value"])):
            return Reply(400, {"message": {"value": ["is invalid"]}})
        self.variables[(owner, key, scope)] = var
        return Reply(201, var)

    # access tokens ------------------------------------------------------------

    @staticmethod
    def _token_view(t: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in t.items() if k not in ("token", "owner")}

    def _list_tokens(self, owner: str | None) -> Reply:
        if owner is None:
            return self._not_found()
        return Reply(200, [self._token_view(t) for t in self.access_tokens.values() if t["owner"] == owner])

    def _rotate_token(self, req: Request, owner: str | None) -> Reply:
        old = self.access_tokens.get(int(req.group("tid")))
        if owner is None or old is None or old["owner"] != owner:
            return Reply(404, {"message": "404 Not Found"})
        if req.headers.get("private-token") != self.token:
            return Reply(403, {"message": "403 Forbidden"})
        if not old["active"]:
            return Reply(400, {"message": "400 Bad request - Token already revoked"})
        old["active"], old["revoked"] = False, True
        tid = self._id()
        body = req.body if isinstance(req.body, dict) else {}
        new = {**old, "id": tid, "active": True, "revoked": False, "created_at": _iso(datetime.now(timezone.utc)),
               "expires_at": body.get("expires_at") or (datetime.now(timezone.utc) + timedelta(days=7)).date().isoformat(),
               "token": "glpat-" + _secrets.token_urlsafe(15)}
        self.access_tokens[tid] = new
        return Reply(200, {**self._token_view(new), "token": new["token"]})

    def _token_self(self, req: Request) -> Reply:
        value = req.headers.get("private-token") or req.headers.get("authorization", "")[7:]
        t = next((t for t in self.access_tokens.values() if t["token"] == value), None)
        if t is None:
            return Reply(200, {"id": 1, "name": "admin", "active": True, "revoked": False, "scopes": ["api"]})
        return Reply(200, self._token_view(t))

    # merge requests -----------------------------------------------------------

    def _list_mrs(self, req: Request) -> Reply:
        p = self._project(req)
        if p is None:
            return Reply(404, {"message": "404 Project Not Found"})
        mrs = self.merge_requests[p["id"]]
        q = req.query
        state = q.get("state", "all")
        out = [m for m in mrs if state == "all" or m["state"] == state]
        for key in ("source_branch", "target_branch"):
            if key in q:
                out = [m for m in out if m[key] == q[key]]
        return self.paginate(req, out, default_per_page=20)

    def _create_mr(self, req: Request) -> Reply:
        p = self._project(req)
        if p is None:
            return Reply(404, {"message": "404 Project Not Found"})
        body = req.body if isinstance(req.body, dict) else {}
        missing = [k for k in ("source_branch", "target_branch", "title") if not body.get(k)]
        if missing:
            return Reply(400, {"error": ", ".join(f"{k} is missing" for k in missing)})
        for m in self.merge_requests[p["id"]]:
            if m["state"] == "opened" and m["source_branch"] == body["source_branch"] and m["target_branch"] == body["target_branch"]:
                return Reply(409, {"message": [f"Another open merge request already exists for this source branch: !{m['iid']}"]})
        iid = len(self.merge_requests[p["id"]]) + 1
        mr = {"id": self._id(), "iid": iid, "project_id": p["id"], "state": "opened", "merged_at": None,
              "title": body["title"], "description": body.get("description"),
              "source_branch": body["source_branch"], "target_branch": body["target_branch"],
              "force_remove_source_branch": bool(body.get("remove_source_branch")),
              "web_url": f"{p['web_url']}/-/merge_requests/{iid}"}
        self.merge_requests[p["id"]].append(mr)
        return Reply(201, mr)

    def _update_mr(self, req: Request) -> Reply:
        p = self._project(req)
        if p is None:
            return Reply(404, {"message": "404 Project Not Found"})
        body = req.body if isinstance(req.body, dict) else {}
        for m in self.merge_requests[p["id"]]:
            if m["iid"] == int(req.group("iid")):
                for k in ("title", "description", "target_branch"):
                    if k in body:
                        m[k] = body[k]
                if body.get("state_event") == "close":
                    m["state"] = "closed"
                return Reply(200, m)
        return Reply(404, {"message": "404 Not found"})
