"""Pin pull requests through real git (a local bare remote) and local servers speaking the GitHub and GitLab REST
APIs (no real forge can run here): one branch, one commit, one pull request; a re-run updates the same one."""

from __future__ import annotations

import subprocess

from digestguard.advisory import load_advisory
from digestguard.inventory import Inventory, Repository
from digestguard.journal import Journal
from tasks.pin import plan_pins, render_pins
from tasks.pull_requests import branch_name, open_pin_pull_request

GOOD = "sha256:" + "a" * 64
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "-c", "init.defaultBranch=main"]


def _checkout(tmp_path, name):
    remote, work = tmp_path / f"{name}.git", tmp_path / name
    subprocess.run([*GIT, "init", "-q", "--bare", str(remote)], check=True)
    subprocess.run([*GIT, "init", "-q", str(work)], check=True)
    (work / ".gitlab-ci.yml").write_text("scan:\n  image: checkmarx/kics:latest\n  script: [kics scan -p .]\n")
    for cmd in (["add", "-A"], ["commit", "-q", "-m", "init"], ["remote", "add", "origin", str(remote)],
                ["push", "-q", "origin", "main"]):
        subprocess.run([*GIT, "-C", str(work), *cmd], check=True)
    return remote, work


def _open(repo, inv, tmp_path, incident="inc-pr-1"):
    adv = load_advisory("kics-2026-04")
    plan = plan_pins(inv.resolve_path(repo.path), adv, to=[f"latest={GOOD}"])
    return open_pin_pull_request(repo, plan, adv, incident, inv, Journal(tmp_path / "j.db"), rendered=render_pins(plan))


def test_github_pull_request_is_opened_once_and_updated(tmp_path, github_server, monkeypatch):
    monkeypatch.setenv("DG_GH", github_server.token)
    github_server.add_repo("acme", "infra")
    remote, work = _checkout(tmp_path, "infra")
    repo = Repository(name="acme/infra", kind="github", path=str(work), api_url=github_server.url, token="env:DG_GH")
    inv = Inventory(repositories=[repo], base_dir=str(tmp_path))
    first = _open(repo, inv, tmp_path)
    assert first.outcome == "done" and first.detail["number"]
    again = _open(repo, inv, tmp_path)
    assert again.detail["number"] == first.detail["number"]
    assert len(github_server.pulls["acme/infra"]) == 1
    pr = github_server.pulls["acme/infra"][0]
    assert "kics-2026-04" in pr["title"] and f"checkmarx/kics:latest@{GOOD}" in pr["body"]
    pinned = subprocess.run(["git", "--git-dir", str(remote), "show", f"{branch_name('inc-pr-1')}:.gitlab-ci.yml"],
                            capture_output=True, text=True, check=True).stdout
    assert pinned == f"scan:\n  image: checkmarx/kics:latest@{GOOD}\n  script: [kics scan -p .]\n"
    main = subprocess.run(["git", "--git-dir", str(remote), "show", "main:.gitlab-ci.yml"], capture_output=True, text=True).stdout
    assert "@sha256" not in main  # nothing merged


def test_gitlab_merge_request(tmp_path, gitlab_server, monkeypatch):
    monkeypatch.setenv("DG_GL", gitlab_server.token)
    gitlab_server.add_project("acme/infra")
    _remote, work = _checkout(tmp_path, "infra-gl")
    repo = Repository(name="acme/infra", kind="gitlab", path=str(work), api_url=gitlab_server.url, token="env:DG_GL")
    inv = Inventory(repositories=[repo], base_dir=str(tmp_path))
    first = _open(repo, inv, tmp_path, "inc-mr")
    again = _open(repo, inv, tmp_path, "inc-mr")
    assert first.outcome == again.outcome == "done" and first.detail["number"] == again.detail["number"]
