"""Action provenance against ``flows.drill.servers.github.GitHubServer`` (a local server speaking the
GitHub REST API's documented wire protocol, since no GitHub runs here), through the unmodified
``integrations.github.GitHubClient``: a fork-only (impostor) commit, a version comment that does
not match its tag, a tag moved since the watch state first saw it; and pin's ``@SHA # vX.Y.Z``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from digestguard.advisory import load_advisory
from flows.cli import app
from flows.drill.servers.github import DEFAULT_TOKEN, GitHubServer
from integrations.github import GitHubClient
from tasks.pin import apply_pins, plan_pins
from tasks.provenance import check_actions
from tasks.watch.state import WatchState

ROOT_C, V1, V2, FORK, MOVED = "1" * 40, "a" * 40, "b" * 40, "f" * 40, "e" * 40
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.fixture()
def github():
    with GitHubServer() as srv:
        srv.add_repo("acme", "setup-tool")
        srv.add_commit("acme", "setup-tool", ROOT_C, date=T0)
        srv.add_commit("acme", "setup-tool", V1, date=T0, parents=(ROOT_C,), tags=("v1.0.0",))
        srv.add_commit("acme", "setup-tool", V2, date=T0, parents=(V1,), branches=("main",), tags=("v2.0.0",))
        # pushed to a fork only: served under acme/setup-tool like GitHub does, reachable from nothing
        srv.add_commit("acme", "setup-tool", FORK, date=T0, parents=(V2,))
        srv.add_commit("acme", "setup-tool", MOVED, date=T0, parents=(ROOT_C,))
        yield srv


def _workflow(root: Path, *uses: str) -> None:
    wf = root / ".github/workflows/ci.yml"
    wf.parent.mkdir(parents=True, exist_ok=True)
    wf.write_text("jobs:\n  a:\n    steps:\n" + "".join(f"      - uses: {u}\n" for u in uses))


def test_good_pins_pass_and_each_bad_one_is_named(tmp_path: Path, github):
    client = GitHubClient(DEFAULT_TOKEN, api_url=github.url)
    _workflow(tmp_path,
              f"acme/setup-tool@{V2} # v2.0.0",     # tag's commit, comment matches
              f"acme/setup-tool@{V1} # v1.0.0",     # an older tag, still reachable
              f"acme/setup-tool@{ROOT_C}",          # reachable from a branch, no comment
              f"acme/setup-tool@{FORK} # v2.0.0",   # impostor, and the comment lies
              f"acme/setup-tool@{V1} # v9.9.9",     # comment names no tag
              f"acme/setup-tool@{'9' * 40}")        # no such commit
    got = sorted((f.line, f.kind) for f in check_actions(tmp_path, client))
    assert got == [(7, "comment-mismatch"), (7, "impostor-commit"), (8, "comment-mismatch"), (9, "unknown-commit")]


def test_a_tag_moved_since_first_seen_is_reported_once(tmp_path: Path, github):
    client = GitHubClient(DEFAULT_TOKEN, api_url=github.url)
    _workflow(tmp_path, f"acme/setup-tool@{V1} # v1.0.0", f"acme/setup-tool@{V2} # v2.0.0")
    with WatchState(tmp_path / "state.sqlite") as st:
        assert check_actions(tmp_path, client, st) == []
        github.move_tag("acme", "setup-tool", "v1.0.0", MOVED)  # force-pushed
        found = check_actions(tmp_path, client, st)
        assert [(f.kind, f.line) for f in found if f.kind == "moved-tag"] == [("moved-tag", 4)]
        assert "moved from aaaaaaaaaaaa" in next(f.reason for f in found if f.kind == "moved-tag")
        # the version comment no longer matches the tag's current commit either
        assert ("comment-mismatch", 4) in [(f.kind, f.line) for f in found]
        # the first-seen commit is kept: the move stays visible on the next run
        assert st.action_tags("acme/setup-tool")["v1.0.0"] == V1


def test_cli_check_actions(tmp_path: Path, github, monkeypatch):
    monkeypatch.setenv("GITHUB_TOKEN", DEFAULT_TOKEN)
    _workflow(tmp_path, f"acme/setup-tool@{FORK} # v2.0.0")
    r = CliRunner().invoke(app, ["lint", str(tmp_path), "--json", "--check-actions", "--github-api", github.url])
    assert r.exit_code == 1, r.output
    assert {o["kind"] for o in json.loads(r.stdout)["offenders"]} == {"impostor-commit", "comment-mismatch"}


def test_pin_writes_sha_and_version_comment_replacing_the_old_one(tmp_path: Path):
    trivy = load_advisory("trivy-2026-03")
    _workflow(tmp_path, "aquasecurity/trivy-action@0.34.0 # v0.34.0", "aquasecurity/trivy-action@master  # moving branch")
    plan = plan_pins(tmp_path, trivy)
    apply_pins(plan)
    text = (tmp_path / ".github/workflows/ci.yml").read_text()
    safe = "57a97c7e7821a5776cebc9bb87c984fa69cba8f1"
    assert f"uses: aquasecurity/trivy-action@{safe} # 0.35.0\n" in text
    assert f"uses: aquasecurity/trivy-action@{safe} # 0.35.0  # moving branch\n" in text  # a note is kept
    assert plan_pins(tmp_path, trivy).changes == []


@pytest.mark.parametrize("comment,judged", [
    ("# v1.0.0", True), ("# tag=v1.0.0", True), ("# renovate: tag=v1.0.0", True), ("# pin @v1.0.0", True),
    ("# @v1.0.0", True), ("# ratchet:acme/setup-tool@v1.0.0", True), ("#v1.0.0", True),
    ("# v1.0.0 pinned by the platform team", True),
    # not a version: not judged (no comment-mismatch for prose or markers)
    ("# needed for the 2.1.0 migration", False), ("# ratchet:exclude", False), ("# keep", False),
])
def test_version_comment_forms_pinning_tools_write(tmp_path: Path, github, comment: str, judged: bool):
    """The comment forms Renovate, pinact and ratchet write; a wrong version in any of them is a mismatch."""
    client = GitHubClient(DEFAULT_TOKEN, api_url=github.url)
    _workflow(tmp_path, f"acme/setup-tool@{V1} {comment}", f"acme/setup-tool@{V2} {comment}")
    found = [(f.line, f.kind) for f in check_actions(tmp_path, client)]
    # V1 is what v1.0.0 points at; V2 is not: exactly the second use is a mismatch when the comment names a version
    assert found == ([(5, "comment-mismatch")] if judged else [])
