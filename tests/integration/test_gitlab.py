"""``integrations.gitlab`` against a local GitLab REST v4 protocol server.

The API server is ``flows.drill.servers.gitlab.GitLabServer``, a local protocol server: no
real GitLab can run on these machines. It keeps the GitLab behaviours the client relies
on (partial PUT of variables, 404 then create, 409 for ambiguous environment scopes,
masked-value rules, 409 for a duplicate MR, raw runner traces, Link pagination).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from digestguard.errors import AuthError, InputError, NotFound, Refused, Unavailable
from flows.drill.servers.gitlab import DEFAULT_TOKEN, GitLabServer, gitlab_job_trace
from integrations.gitlab import GitLabClient, open_or_update_merge_request, open_or_update_pull_request

KICS_LATEST = "sha256:a0d9366f6f0166dcbf92fcdc98e1a03d2e6210e8d7e8573f74d50849130651a0"
START = datetime(2026, 4, 22, 12, 35, tzinfo=timezone.utc)
END = datetime(2026, 4, 22, 15, 41, 31, tzinfo=timezone.utc)
REPORTER = "glpat-reporterOnly000000000"


@pytest.fixture(scope="module")
def server() -> Iterator[GitLabServer]:
    with GitLabServer(reporter_tokens=(REPORTER,)) as srv:
        yield srv


@pytest.fixture()
def gl(server: GitLabServer) -> Iterator[GitLabClient]:
    server.reset_calls()
    server.clear_faults()
    with GitLabClient(DEFAULT_TOKEN, api_url=server.base, max_retries=3, max_wait=5.0, backoff=0.05) as client:
        yield client


def test_pipelines_in_window_include_those_still_running_into_it(server: GitLabServer, gl: GitLabClient) -> None:
    pid = server.add_project("platform/ci-images")
    before_but_running = server.add_pipeline(pid, created_at=START - timedelta(minutes=10), duration=timedelta(minutes=30))
    finished_before = server.add_pipeline(pid, created_at=START - timedelta(hours=2))
    inside = [server.add_pipeline(pid, created_at=START + timedelta(minutes=i)) for i in range(0, 150, 1)]
    after = server.add_pipeline(pid, created_at=END + timedelta(seconds=30))

    found = gl.list_pipelines("platform/ci-images", START, END)  # by path: URL-encoded as group%2Fproject

    ids = [p.id for p in found]
    assert set(ids) == {before_but_running, *inside}
    assert finished_before not in ids and after not in ids
    assert len(server.calls_to("GET", r"/pipelines$")) == 2  # 151 pipelines at 100 per page
    assert server.calls_to("GET", r"/pipelines$")[0].path == "/api/v4/projects/platform%2Fci-images/pipelines"


def test_jobs_and_trace_show_the_pulled_digest(server: GitLabServer, gl: GitLabClient) -> None:
    pid = server.add_project("platform/scan")
    pipe = server.add_pipeline(pid, created_at=START + timedelta(minutes=50))
    trace = gitlab_job_trace("checkmarx/kics:latest", KICS_LATEST, START + timedelta(minutes=51))
    retried = server.add_job(pipe, name="kics", trace=trace, retried=True)
    latest = server.add_job(pipe, name="kics", trace=gitlab_job_trace("checkmarx/kics:latest", KICS_LATEST, START + timedelta(minutes=52), timestamps=True))

    jobs = gl.list_jobs(pid, pipe)
    assert {j.id for j in jobs} == {retried, latest} and all(j.pipeline_id == pipe for j in jobs)
    assert [j.id for j in gl.list_jobs(pid, pipe, include_retried=False)] == [latest]

    text = gl.job_trace(pid, retried)
    assert f"with digest checkmarx/kics@{KICS_LATEST}" in text
    assert "section_start:" in text and "\x1b[0K" in text  # raw runner output, unmodified
    with pytest.raises(NotFound):
        gl.job_trace(pid, 1)


def test_project_variable_update_keeps_flags_and_returns_no_value(server: GitLabServer, gl: GitLabClient) -> None:
    pid = server.add_project("platform/deploy")
    server.add_variable(f"project:{pid}", "DOCKERHUB_TOKEN", "dckr_pat_old-value", masked=True, protected=True)

    result = gl.set_project_variable("platform/deploy", "DOCKERHUB_TOKEN", "dckr_pat_NEW-value-1", masked=False, protected=False)

    stored = server.variables[(f"project:{pid}", "DOCKERHUB_TOKEN", "*")]
    assert stored["value"] == "dckr_pat_NEW-value-1"
    assert (stored["masked"], stored["protected"]) == (True, True)  # kept: only the value was sent
    assert server.calls_to("PUT", r"/variables/DOCKERHUB_TOKEN$")[0].body == {"value": "dckr_pat_NEW-value-1"}
    assert not result.created and result.masked and result.protected
    assert "NEW-value" not in repr(result)


def test_missing_variable_is_created_with_the_given_flags(server: GitLabServer, gl: GitLabClient) -> None:
    pid = server.add_project("platform/new")
    result = gl.set_project_variable(pid, "REGISTRY_PASSWORD", "fresh-value-123", protected=True)
    stored = server.variables[(f"project:{pid}", "REGISTRY_PASSWORD", "*")]
    assert result.created and stored["masked"] and stored["protected"] and stored["value"] == "fresh-value-123"


def test_environment_scoped_variables_need_a_scope(server: GitLabServer, gl: GitLabClient) -> None:
    pid = server.add_project("platform/envs")
    owner = f"project:{pid}"
    server.add_variable(owner, "DB_PASSWORD", "prod-old-value", environment_scope="production", masked=True)
    server.add_variable(owner, "DB_PASSWORD", "stag-old-value", environment_scope="staging", masked=True)

    with pytest.raises(Refused) as err:
        gl.set_project_variable(pid, "DB_PASSWORD", "prod-new-value")
    assert err.value.status == 409 and "filter[environment_scope]" in str(err.value)

    gl.set_project_variable(pid, "DB_PASSWORD", "prod-new-value", environment_scope="production")
    assert server.variables[(owner, "DB_PASSWORD", "production")]["value"] == "prod-new-value"
    assert server.variables[(owner, "DB_PASSWORD", "staging")]["value"] == "stag-old-value"


def test_unmaskable_value_is_refused_without_echoing_it(server: GitLabServer, gl: GitLabClient) -> None:
    pid = server.add_project("platform/masked")
    server.add_variable(f"project:{pid}", "API_KEY", "old-value-ok", masked=True)
    with pytest.raises(Refused) as err:
        gl.set_project_variable(pid, "API_KEY", "sh rt")
    assert err.value.status == 400 and "API_KEY" in str(err.value) and "sh rt" not in str(err.value)


def test_group_variable(server: GitLabServer, gl: GitLabClient) -> None:
    gid = server.add_group("platform")
    gl.set_group_variable("platform", "SHARED_TOKEN", "group-value-1")
    assert server.variables[(f"group:{gid}", "SHARED_TOKEN", "*")]["value"] == "group-value-1"


def test_input_and_auth_errors(server: GitLabServer, gl: GitLabClient) -> None:
    with pytest.raises(InputError):
        gl.set_project_variable(1, "BAD-KEY", "value-123456")
    with pytest.raises(InputError, match="empty"):
        gl.set_project_variable(1, "GOOD_KEY", "")
    with pytest.raises(InputError, match="timezone"):
        gl.list_pipelines(1, datetime(2026, 4, 22), END)
    assert server.calls == []

    pid = server.add_project("platform/locked")
    with GitLabClient("glpat-wrong", api_url=server.url) as bad, pytest.raises(AuthError) as err:
        bad.default_branch(pid)
    assert err.value.status == 401 and "glpat-wrong" not in str(err.value)
    with GitLabClient(REPORTER, api_url=server.url) as reporter, pytest.raises(AuthError) as err:
        reporter.set_project_variable(pid, "X_TOKEN", "value-123456")
    assert err.value.status == 403
    with pytest.raises(NotFound) as err:
        gl.default_branch("nobody/nothing")
    assert "404 Project Not Found" in str(err.value)


def test_retries_429_and_5xx(server: GitLabServer, gl: GitLabClient) -> None:
    pid = server.add_project("platform/busy")
    server.inject("GET", rf"/projects/{pid}$", 429, headers={"Retry-After": "1"}, body={"message": "Retry later"})
    server.inject("GET", rf"/projects/{pid}$", 500)
    started = time.monotonic()
    assert gl.default_branch(pid) == "main"
    assert time.monotonic() - started >= 1.0
    assert [c.status for c in server.calls_to("GET", rf"/projects/{pid}$")] == [429, 500, 200]

    server.inject("GET", rf"/projects/{pid}$", 503, times=9)
    with pytest.raises(Unavailable):
        gl.default_branch(pid)


def test_merge_request_is_opened_once_and_updated_on_rerun(server: GitLabServer, gl: GitLabClient) -> None:
    pid = server.add_project("platform/web", default_branch="develop")
    first = open_or_update_merge_request(gl, "platform/web", head="digestguard/pin-kics", title="Pin kics", body="v1")
    again = open_or_update_pull_request(gl, "platform/web", head="digestguard/pin-kics", title="Pin kics", body="v2")

    assert first.created and not again.created
    assert (again.number, again.html_url) == (first.number, first.html_url)
    mrs = server.merge_requests[pid]
    assert len(mrs) == 1 and mrs[0]["description"] == "v2" and mrs[0]["target_branch"] == "develop"
    assert mrs[0]["state"] == "opened" and mrs[0]["merged_at"] is None

    server.inject("GET", r"/merge_requests$", 200, body=[])  # a look-up that misses: create answers 409
    raced = open_or_update_merge_request(gl, pid, head="digestguard/pin-kics", title="Pin kics", body="v3")
    assert raced.number == first.number and len(server.merge_requests[pid]) == 1
    assert server.merge_requests[pid][0]["description"] == "v3"


def test_file_at_ref(server: GitLabServer, gl: GitLabClient) -> None:
    pid = server.add_project("platform/files")
    server.add_file(pid, ".gitlab-ci.yml", "scan:\n  image: checkmarx/kics:latest\n")
    server.add_file(pid, "ci/templates/scan.yml", "image: aquasec/trivy:0.69.4\n", ref="release")
    assert "checkmarx/kics:latest" in gl.get_file(pid, ".gitlab-ci.yml")
    assert "trivy" in gl.get_file(pid, "ci/templates/scan.yml", ref="release")
    with pytest.raises(NotFound):
        gl.get_file(pid, "ci/templates/scan.yml")
