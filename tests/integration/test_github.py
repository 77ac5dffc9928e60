"""``integrations.github`` against a local GitHub REST protocol server.

The API server is ``flows.drill.servers.github.GitHubServer``, a local protocol server:
no real GitHub (nor Gitea/Forgejo) can run on these machines. It speaks GitHub's
wire protocol (paths, JSON, Link pagination, rate-limit headers, the 302 log
redirect to a separate storage origin) and holds real NaCl keypairs, so the
secrets the client seals are opened and compared here.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from pydantic import SecretStr

from digestguard.errors import AuthError, InputError, NotFound, RateLimited, Refused, Unavailable
from flows.drill.servers.github import DEFAULT_TOKEN, GitHubServer, github_job_log
from integrations.github import GitHubClient, open_or_update_pull_request, split_repo, write_actions_secret

KICS_LATEST = "sha256:a0d9366f6f0166dcbf92fcdc98e1a03d2e6210e8d7e8573f74d50849130651a0"
ATTACK_START = datetime(2026, 4, 22, 12, 35, tzinfo=timezone.utc)
ATTACK_END = datetime(2026, 4, 22, 15, 41, 31, tzinfo=timezone.utc)
READ_ONLY = "ghp_readOnly0000000000000000000000000000"


@pytest.fixture(scope="module")
def server() -> Iterator[GitHubServer]:
    with GitHubServer(read_only_tokens=(READ_ONLY,)) as srv:
        srv.add_repo("acme", "api", default_branch="trunk", environments=("production",))
        srv.add_repo("acme", "web")
        yield srv


@pytest.fixture()
def gh(server: GitHubServer) -> Iterator[GitHubClient]:
    server.reset_calls()
    server.clear_faults()
    with GitHubClient(SecretStr(DEFAULT_TOKEN), api_url=server.url, max_wait=5.0, max_retries=3, backoff=0.05) as client:
        yield client


# ------------------------------------------------------------------- Actions


def test_runs_in_window_follow_pagination_and_exclude_outside(server: GitHubServer, gh: GitHubClient) -> None:
    server.add_repo("acme", "busy")
    inside = [server.add_run("acme", "busy", created_at=ATTACK_START + timedelta(seconds=60 * i)) for i in range(130)]
    server.add_run("acme", "busy", created_at=ATTACK_START - timedelta(minutes=1))
    server.add_run("acme", "busy", created_at=ATTACK_END + timedelta(minutes=1))

    runs = gh.list_workflow_runs("acme", "busy", ATTACK_START, ATTACK_END)

    assert sorted(r.id for r in runs) == sorted(inside)
    assert [r.created_at for r in runs] == sorted(r.created_at for r in runs)
    pages = server.calls_to("GET", r"/repos/acme/busy/actions/runs$")
    assert len(pages) == 2  # 130 runs at 100 per page
    assert pages[0].query["created"] == "2026-04-22T12:35:00Z..2026-04-22T15:41:31Z"
    assert runs[0].path == ".github/workflows/ci.yml" and runs[0].repository == "acme/busy"


def test_more_runs_than_github_lists_splits_the_window(server: GitHubServer, gh: GitHubClient) -> None:
    server.add_repo("acme", "huge")
    made = {server.add_run("acme", "huge", created_at=ATTACK_START + timedelta(seconds=10 * i)) for i in range(1005)}

    runs = gh.list_workflow_runs("acme", "huge", ATTACK_START, ATTACK_END)

    assert {r.id for r in runs} == made and len(runs) == 1005
    windows = {c.query["created"] for c in server.calls_to("GET", r"/repos/acme/huge/actions/runs$") if "created" in c.query}
    assert len(windows) >= 3  # the whole window, then its halves


def test_renamed_repository_is_followed(server: GitHubServer, gh: GitHubClient) -> None:
    server.add_repo("acme", "old-name", default_branch="main")
    run_id = server.add_run("acme", "old-name", created_at=ATTACK_START + timedelta(minutes=5))
    server.rename_repo("acme", "old-name", "acme-platform", "new-name")

    assert gh.default_branch("acme", "old-name") == "main"
    assert [r.id for r in gh.list_workflow_runs("acme", "old-name", ATTACK_START, ATTACK_END)] == [run_id]
    moved = server.calls_to("GET", r"^/repos/acme-platform/new-name")
    assert moved and all(c.authorized for c in moved)  # same origin: the token went along


def test_naive_or_reversed_window_is_refused(gh: GitHubClient) -> None:
    with pytest.raises(InputError, match="timezone"):
        gh.list_workflow_runs("acme", "api", datetime(2026, 4, 22), ATTACK_END)
    with pytest.raises(InputError, match="before start"):
        gh.list_workflow_runs("acme", "api", ATTACK_END, ATTACK_START)


def test_job_log_download_follows_redirect_without_sending_the_token(server: GitHubServer, gh: GitHubClient) -> None:
    run_id = server.add_run("acme", "api", created_at=ATTACK_START + timedelta(minutes=30), run_attempt=2)
    at = ATTACK_START + timedelta(minutes=31)
    first = server.add_job(run_id, name="kics scan", log=github_job_log("checkmarx/kics:latest", KICS_LATEST, at), run_attempt=1)
    second = server.add_job(run_id, name="kics scan", log=github_job_log("checkmarx/kics:latest", KICS_LATEST, at, style="container"), run_attempt=2)

    jobs = gh.list_jobs("acme", "api", run_id)
    assert {j.id for j in jobs} == {first, second}  # earlier attempts pulled too
    assert [j.id for j in gh.list_jobs("acme", "api", run_id, all_attempts=False)] == [second]

    server.log_store.calls.clear()
    text = gh.download_job_log("acme", "api", first)

    assert text.startswith("2026-04-22T13:06:00.0000001Z Current runner version")  # BOM dropped
    assert f"Digest: {KICS_LATEST}" in text
    assert "##[group]Pull down action image 'checkmarx/kics:latest'" in text
    assert len(server.log_store.calls) == 1
    assert server.log_store.calls[0].authorized is False  # no Authorization header reached storage
    assert server.log_store.calls[0].status == 200


def test_missing_job_log_is_not_found(gh: GitHubClient) -> None:
    with pytest.raises(NotFound) as err:
        gh.download_job_log("acme", "api", 999)
    assert "/repos/acme/api/actions/jobs/999/logs" in str(err.value)


def test_workflow_file_at_ref(server: GitHubServer, gh: GitHubClient) -> None:
    server.add_file("acme", "api", ".github/workflows/ci.yml", "jobs:\n  scan:\n    uses: ./\n")
    server.add_file("acme", "api", ".github/workflows/ci.yml", "jobs:\n  scan:\n    container: checkmarx/kics:latest\n", ref="b" * 40)

    at_commit = gh.get_workflow_file("acme", "api", ".github/workflows/ci.yml", ref="b" * 40)
    current = gh.get_workflow_file("acme", "api", ".github/workflows/ci.yml")

    assert "checkmarx/kics:latest" in at_commit.text and at_commit.ref == "b" * 40 and len(at_commit.sha) == 40
    assert "checkmarx/kics" not in current.text
    assert gh.list_workflow_files("acme", "api") == [".github/workflows/ci.yml"]
    assert gh.list_workflow_files("acme", "web") == []
    with pytest.raises(InputError):
        gh.get_file("acme", "api", "../../etc/passwd")

    big = "# generated\n" * 100_000 + "image: aquasec/trivy:0.69.4\n"
    server.add_file("acme", "api", "deploy/big.yaml", big)
    assert gh.get_file("acme", "api", "deploy/big.yaml").text == big  # over 1 MB: fetched raw, not dropped


# ------------------------------------------------------------------- secrets


def _all_recorded_text(server: GitHubServer) -> str:
    return repr([(c.path, c.query, c.body, c.headers) for c in server.calls])


def test_repository_secret_is_sealed_and_opens_to_the_value(server: GitHubServer, gh: GitHubClient) -> None:
    value = SecretStr("dckr_pat_N3wValue-" + "x" * 20)

    first = gh.set_repository_secret("acme", "api", "DOCKERHUB_TOKEN", value)
    server.rotate_public_key("repo:acme/api")  # GitHub may rotate keys: the client must fetch the key each time
    second = gh.set_repository_secret("acme", "api", "DOCKERHUB_TOKEN", value.get_secret_value() + "2")

    assert (first.created, second.created) == (True, False)
    assert "N3wValue" not in repr(first) + repr(second)
    assert server.decrypt_secret("repo:acme/api", "DOCKERHUB_TOKEN") == value.get_secret_value() + "2"
    assert "N3wValue" not in _all_recorded_text(server)  # only ciphertext went over the wire
    assert gh.secret_updated_at("acme", "api", "DOCKERHUB_TOKEN") is not None


def test_environment_and_organisation_secrets(server: GitHubServer, gh: GitHubClient) -> None:
    gh.set_environment_secret("acme", "api", "production", "REGISTRY_PASSWORD", "env-value-123")
    assert server.decrypt_secret("env:acme/api/production", "REGISTRY_PASSWORD") == "env-value-123"
    with pytest.raises(NotFound):
        gh.set_environment_secret("acme", "api", "staging", "REGISTRY_PASSWORD", "x")

    new = gh.set_organization_secret("acme", "NEW_ORG_SECRET", "org-value-1")
    assert new.created and server.secrets[("org:acme", "NEW_ORG_SECRET")]["visibility"] == "private"

    api_id = server.repos["acme/api"]["id"]
    server.add_org_secret("acme", "SHARED_TOKEN", visibility="selected", repository_ids=(api_id,))
    kept = gh.set_organization_secret("acme", "SHARED_TOKEN", "org-value-2")
    stored = server.secrets[("org:acme", "SHARED_TOKEN")]
    assert not kept.created
    assert (stored["visibility"], stored["selected_repository_ids"]) == ("selected", [api_id])  # rotation kept who can read it
    assert server.decrypt_secret("org:acme", "SHARED_TOKEN") == "org-value-2"


def test_write_actions_secret_follows_the_inventory_destination(server: GitHubServer, gh: GitHubClient) -> None:
    assert write_actions_secret(gh, "INV_TOKEN", "v-repo-1", repo="acme/api").scope == "repo acme/api"
    write_actions_secret(gh, "INV_TOKEN", "v-env-1", repo="acme/api", environment="production")
    write_actions_secret(gh, "INV_TOKEN", "v-org-1", org="acme", visibility="all")
    assert server.decrypt_secret("repo:acme/api", "INV_TOKEN") == "v-repo-1"
    assert server.decrypt_secret("env:acme/api/production", "INV_TOKEN") == "v-env-1"
    assert server.decrypt_secret("org:acme", "INV_TOKEN") == "v-org-1"
    with pytest.raises(InputError):
        write_actions_secret(gh, "INV_TOKEN", "v", repo="acme/api", org="acme")
    assert split_repo("https://github.com/acme/api.git") == ("acme", "api")
    with pytest.raises(InputError):
        split_repo("acme")


def test_secret_names_and_empty_values_are_checked_before_any_call(server: GitHubServer, gh: GitHubClient) -> None:
    for bad in ("GITHUB_TOKEN", "1ABC", "has space", ""):
        with pytest.raises(InputError):
            gh.set_repository_secret("acme", "api", bad, "v")
    with pytest.raises(InputError, match="empty"):
        gh.set_repository_secret("acme", "api", "OK_NAME", "")
    assert server.calls == []


def test_refused_write_names_the_secret_but_not_the_value(server: GitHubServer, gh: GitHubClient) -> None:
    server.inject("PUT", r"/actions/secrets/LEAKY$", 422, body={"message": "Validation Failed"})
    with pytest.raises(Refused) as err:
        gh.set_repository_secret("acme", "api", "LEAKY", "super-secret-value-42")
    assert "/repos/acme/api/actions/secrets/LEAKY" in str(err.value)
    assert "super-secret-value-42" not in str(err.value) and err.value.status == 422


def test_bad_and_read_only_tokens_are_auth_errors_without_the_token(server: GitHubServer) -> None:
    with GitHubClient("ghp_wrong-token-value", api_url=server.url) as bad:
        with pytest.raises(AuthError) as err:
            bad.default_branch("acme", "api")
    assert err.value.status == 401 and "ghp_wrong-token-value" not in str(err.value)
    assert server.url in str(err.value)

    with GitHubClient(READ_ONLY, api_url=server.url) as ro:
        assert ro.default_branch("acme", "api") == "trunk"
        with pytest.raises(AuthError) as err:
            ro.set_repository_secret("acme", "api", "X_TOKEN", "v")
    assert err.value.status == 403


# ------------------------------------------------------------------- retries


def test_429_with_retry_after_is_waited_out(server: GitHubServer, gh: GitHubClient) -> None:
    server.inject("GET", r"^/repos/acme/api$", 429, headers={"Retry-After": "1"}, body={"message": "secondary rate limit"})
    started = time.monotonic()
    assert gh.default_branch("acme", "api") == "trunk"
    assert time.monotonic() - started >= 1.0
    assert [c.status for c in server.calls_to("GET", r"^/repos/acme/api$")] == [429, 200]


def test_retry_after_as_an_http_date(server: GitHubServer, gh: GitHubClient) -> None:
    when = email.utils.formatdate(time.time() + 1, usegmt=True)
    server.inject("GET", r"^/repos/acme/api$", 429, headers={"Retry-After": when})
    assert gh.default_branch("acme", "api") == "trunk"
    assert [c.status for c in server.calls_to("GET", r"^/repos/acme/api$")] == [429, 200]


def test_primary_rate_limit_403_waits_until_reset(server: GitHubServer, gh: GitHubClient) -> None:
    reset = str(int(time.time()) + 1)
    server.inject("GET", r"^/repos/acme/api$", 403, headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset},
                  body={"message": "API rate limit exceeded for user ID 1."})
    assert gh.default_branch("acme", "api") == "trunk"
    assert [c.status for c in server.calls_to("GET", r"^/repos/acme/api$")] == [403, 200]


def test_wait_longer_than_max_wait_is_raised_not_slept(server: GitHubServer, gh: GitHubClient) -> None:
    server.inject("GET", r"^/repos/acme/api$", 429, headers={"Retry-After": "3600"})
    started = time.monotonic()
    with pytest.raises(RateLimited) as err:
        gh.default_branch("acme", "api")
    assert time.monotonic() - started < 1.0
    assert err.value.retry_after == 3600 and err.value.retryable


def test_5xx_is_retried_with_backoff_then_given_up(server: GitHubServer, gh: GitHubClient) -> None:
    server.inject("GET", r"^/repos/acme/api$", 502, times=2)
    assert gh.default_branch("acme", "api") == "trunk"

    server.reset_calls()
    server.inject("GET", r"^/repos/acme/api$", 503, times=10)
    with pytest.raises(Unavailable) as err:
        gh.default_branch("acme", "api")
    assert err.value.status == 503
    assert len(server.calls) == 4  # one try + max_retries=3


def test_post_is_not_repeated_after_a_5xx(server: GitHubServer, gh: GitHubClient) -> None:
    server.inject("POST", r"/repos/acme/web/pulls$", 502)
    with pytest.raises(Unavailable):
        gh.create_pull_request("acme", "web", head="x", base="main", title="t", body="b")
    assert len(server.calls_to("POST", r"/pulls$")) == 1


# ------------------------------------------------------------------- pull requests


def test_open_or_update_pull_request_is_idempotent(server: GitHubServer, gh: GitHubClient) -> None:
    first = open_or_update_pull_request(gh, "acme", "api", head="digestguard/pin-kics",
                                        title="Pin checkmarx/kics to a digest", body="v1")
    again = open_or_update_pull_request(gh, "acme", "api", head="digestguard/pin-kics",
                                        title="Pin checkmarx/kics to a digest", body="v2 with more findings")

    assert first.created and not again.created
    assert again.number == first.number and again.html_url == first.html_url
    assert first.base == "trunk"  # the repository's default branch
    prs = server.pulls["acme/api"]
    assert len([p for p in prs if p["head"]["ref"] == "digestguard/pin-kics"]) == 1
    assert prs[0]["body"] == "v2 with more findings" and prs[0]["merged"] is False
    assert not server.calls_to("PUT", r"/merge$")  # never merged


def test_open_or_update_survives_a_race_with_another_run(server: GitHubServer, gh: GitHubClient) -> None:
    made = open_or_update_pull_request(gh, "acme", "web", head="digestguard/race", base="main", title="t", body="b1")
    # The next look-up misses the PR (another run opened it a moment ago): create answers 422 "already exists".
    server.inject("GET", r"/repos/acme/web/pulls$", 200, body=[])
    again = open_or_update_pull_request(gh, "acme", "web", head="digestguard/race", base="main", title="t", body="b2")
    assert again.number == made.number and not again.created
    assert [p["body"] for p in server.pulls["acme/web"] if p["head"]["ref"] == "digestguard/race"] == ["b2"]
