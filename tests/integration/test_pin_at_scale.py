"""The pin stage over many repositories: a bounded pool, one forge client per run, per-repository progress in the
Prefect UI, GitHub's write budget respected and throttled repositories reported.

No GitHub can run here: the drill's GitHub stand-in (``flows/drill/servers/github.py``, speaking GitHub's REST
protocol to our unmodified client) records every request with its arrival time; git is real (bare remotes).
Progress artifacts are read back from the shared Prefect test server.
"""

from __future__ import annotations

import subprocess
import threading
import time

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

import tasks.pin as pin_mod
from digestguard.advisory import load_advisory
from digestguard.errors import RateLimited
from digestguard.inventory import Backends, Inventory, Repository
from digestguard.journal import Journal
from integrations import github
from integrations._rest import RateLimit
from tasks.connect import Connections
from tasks.pin import pin_task
from tasks.report.artifacts import artifact_key

GOOD = "sha256:" + "a" * 64
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "-c", "init.defaultBranch=main"]
N = 12


def _estate(tmp_path, server, n=N):
    repos = []
    for i in range(n):
        name = f"svc-{i}"
        remote, work = tmp_path / "git" / f"{name}.git", tmp_path / "co" / name
        work.parent.mkdir(parents=True, exist_ok=True)
        remote.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([*GIT, "init", "-q", "--bare", str(remote)], check=True)
        subprocess.run([*GIT, "init", "-q", str(work)], check=True)
        (work / "Dockerfile").write_text("FROM checkmarx/kics:latest\n")
        for cmd in (["add", "-A"], ["commit", "-q", "-m", "init"], ["remote", "add", "origin", str(remote)],
                    ["push", "-q", "origin", "main"]):
            subprocess.run([*GIT, "-C", str(work), *cmd], check=True)
        server.add_repo("acme", name)
        # repositories name the same endpoint and token reference as the backends: one client for all of them
        repos.append(Repository(name=f"acme/{name}", kind="github", path=str(work), base_branch="main",
                                api_url=server.url, token="env:DG_GH_SCALE"))
    return Inventory(repositories=repos, base_dir=str(tmp_path),
                     backends=Backends(github_api_url=server.url, github_token="env:DG_GH_SCALE"))


@pytest.fixture()
def counted(monkeypatch):
    """Count GitHubClient constructions and the most pull requests in flight at once."""
    built = []
    real_init = github.GitHubClient.__init__

    def init(self, *a, **kw):
        built.append(1)
        real_init(self, *a, **kw)

    monkeypatch.setattr(github.GitHubClient, "__init__", init)
    state = {"now": 0, "max": 0}
    lock = threading.Lock()
    real_open = pin_mod.open_pin_pull_request

    def open_pr(*a, **kw):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        try:
            time.sleep(0.05)  # make overlap observable
            return real_open(*a, **kw)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(pin_mod, "open_pin_pull_request", open_pr)
    return built, state


def test_pool_is_bounded_one_client_per_forge_and_order_kept(tmp_path, github_server, monkeypatch, counted):
    monkeypatch.setenv("DG_GH_SCALE", github_server.token)
    built, state = counted
    inv = _estate(tmp_path, github_server)
    with Connections(inv) as conns:
        result, prs = pin_task.fn(load_advisory("kics-2026-04"), inv, "inc-scale-1", Journal(tmp_path / "j.db"), conns,
                                  dry_run=False, to=[f"latest={GOOD}"], workers=3)
        assert conns.built() == ["github"]
    assert len(built) == 1, "one GitHub client for the whole run"
    assert 1 < state["max"] <= 3, state
    assert [p["repository"] for p in prs] == [r.name for r in inv.repositories]
    assert all(github_server.pulls[f"acme/svc-{i}"] for i in range(N))
    assert result.ok and result.count("done") == 2 * N  # a pin and a pull request per repository


def test_progress_artifact_follows_the_repositories(prefect_harness, tmp_path, github_server, monkeypatch):
    monkeypatch.setenv("DG_GH_SCALE", github_server.token)
    inv = _estate(tmp_path, github_server, n=5)

    @flow(name="pin-progress-test")
    def run() -> None:
        with Connections(inv) as conns:
            pin_task(load_advisory("kics-2026-04"), inv, "inc-scale-progress", Journal(tmp_path / "j.db"), conns,
                     dry_run=True, to=[f"latest={GOOD}"])

    run()
    key = artifact_key("inc-scale-progress", "pin", "progress")
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    assert len(arts) == 1 and arts[0].type == "progress"
    assert float(arts[0].data) == 100.0
    assert arts[0].description == "pin: 5/5 target(s)"


def test_writes_are_paced_against_the_stand_in(github_server, monkeypatch):
    """The client-side budget holds on the wire: no 0.5 s window at the stand-in saw more than 4 writes."""
    github_server.add_repo("acme", "paced")
    github_server.reset_calls()
    client = github.GitHubClient(github_server.token, github_server.url, write_limit=RateLimit(4, 0.5))
    with client:
        for i in range(10):
            client.create_pull_request("acme", "paced", head=f"h{i}", base="main", title="t", body="b")
    times = sorted(c.at for c in github_server.calls_to("POST", r"/repos/acme/paced/pulls"))
    assert len(times) == 10
    assert max(sum(1 for u in times if t <= u < t + 0.49) for t in times) <= 4
    assert times[-1] - times[0] >= 1.0  # 10 writes at 4 per 0.5 s need at least two more windows


def test_spent_budget_and_forge_throttling_are_reported_not_dropped(tmp_path, github_server, monkeypatch):
    monkeypatch.setenv("DG_GH_SCALE", github_server.token)
    inv = _estate(tmp_path, github_server, n=4)
    # GitHub's secondary limit, as GitHub answers it: 403 with Retry-After, far beyond the client's wait budget
    github_server.inject("POST", r"/repos/acme/svc-2/pulls$", 403, headers={"Retry-After": "3600"},
                         body={"message": "You have exceeded a secondary rate limit."})
    with Connections(inv) as conns:
        result, prs = pin_task.fn(load_advisory("kics-2026-04"), inv, "inc-scale-throttle", Journal(tmp_path / "j.db"),
                                  conns, dry_run=False, to=[f"latest={GOOD}"], workers=2)
    github_server.clear_faults()
    throttled = [a for a in result.actions if a.detail.get("throttled")]
    assert [a.target for a in throttled] == ["acme/svc-2"] and throttled[0].outcome == "failed"
    assert not result.ok and any("acme/svc-2" in n and "throttled" in n for n in result.notes)
    assert sorted(p["repository"] for p in prs) == ["acme/svc-0", "acme/svc-1", "acme/svc-3"]

    # a client-side budget that is spent for longer than the client waits: RateLimited, nothing sent
    github_server.reset_calls()
    client = github.GitHubClient(github_server.token, github_server.url, write_limit=RateLimit(1, 600), max_wait=1)
    with client:
        client.create_pull_request("acme", "svc-0", head="x1", base="main", title="t", body="b")
        with pytest.raises(RateLimited, match="throttled"):
            client.create_pull_request("acme", "svc-0", head="x2", base="main", title="t", body="b")
    assert len(github_server.calls_to("POST", r"/pulls$")) == 1
