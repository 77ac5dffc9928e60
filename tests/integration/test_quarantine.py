"""The quarantine gate (``lint --check-updates``) and pin's refusal of quarantined digests.

Real ``git`` for the base/working-tree diff. Action commit times come from the GitHub REST API
through ``integrations.github.GitHubClient``, served by ``flows.drill.servers.github.GitHubServer``
(a local server speaking GitHub's documented wire protocol; no GitHub can run here).
"""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from digestguard.advisory import load_advisory
from flows.cli import app
from flows.drill.servers.github import DEFAULT_TOKEN, GitHubServer
from integrations.github import GitHubClient
from tasks.pin import plan_pins
from tasks.quarantine import Update, check_updates, github_pushed_at, load_allow_list, updates_since

KICS = load_advisory("kics-2026-04")
TRIVY = load_advisory("trivy-2026-03")
MAL_LATEST = "sha256:a0d9366f6f0166dcbf92fcdc98e1a03d2e6210e8d7e8573f74d50849130651a0"
OLD = "sha256:" + "1" * 64
NEW = "sha256:" + "2" * 64
SAFE_ACTION = "57a97c7e7821a5776cebc9bb87c984fa69cba8f1"
IN_WINDOW = "c" * 40
BEFORE = "b" * 40


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q", "-b", "main")
    _git(root, "config", "user.email", "t@example.com")
    _git(root, "config", "user.name", "t")
    (root / "Dockerfile").write_text(f"FROM checkmarx/kics:latest@{OLD}\nFROM alpine:3.20@{OLD}\n")
    (root / ".github/workflows").mkdir(parents=True)
    (root / ".github/workflows/ci.yml").write_text(
        f"jobs:\n  a:\n    steps:\n      - uses: aquasecurity/trivy-action@{BEFORE} # 0.34.0\n")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "base")
    return root


@pytest.fixture()
def github():
    with GitHubServer() as srv:
        srv.add_repo("aquasecurity", "trivy-action")
        srv.add_commit("aquasecurity", "trivy-action", BEFORE, date=datetime(2026, 1, 5, tzinfo=timezone.utc),
                       branches=("main",))
        srv.add_commit("aquasecurity", "trivy-action", SAFE_ACTION, date=datetime(2026, 2, 1, tzinfo=timezone.utc),
                       parents=(BEFORE,), tags=("0.35.0",))
        srv.add_commit("aquasecurity", "trivy-action", IN_WINDOW, date=datetime(2026, 3, 19, 18, 0, tzinfo=timezone.utc),
                       parents=(SAFE_ACTION,), tags=("0.34.0",))
        yield srv


def test_an_advisory_digest_arriving_as_a_digest_update_is_refused(repo: Path):
    (repo / "Dockerfile").write_text(f"FROM checkmarx/kics:latest@{MAL_LATEST}\nFROM alpine:3.20@{NEW}\n")
    ups = updates_since(repo, "main")
    assert [(u.path, u.line, u.new) for u in ups] == [("Dockerfile", 1, MAL_LATEST), ("Dockerfile", 2, NEW)]
    assert ups[0].old == [OLD]
    refused, allowed = check_updates(ups, [KICS])
    assert [(r.line, r.advisory) for r in refused] == [(1, "kics-2026-04")]
    assert "lists as malicious" in refused[0].reason and allowed == []


def test_an_update_of_an_advisory_image_with_unknown_push_time_fails_closed_until_allow_listed(repo: Path, tmp_path):
    (repo / "Dockerfile").write_text(f"FROM checkmarx/kics:latest@{NEW}\nFROM alpine:3.20@{OLD}\n")
    refused, _ = check_updates(updates_since(repo, "main"), [KICS])
    assert len(refused) == 1 and "when this was pushed is unknown" in refused[0].reason
    # a push time inside the window: refused; before it: passes
    inside = lambda u: datetime(2026, 4, 22, 13, 0, tzinfo=timezone.utc)  # noqa: E731
    before = lambda u: datetime(2026, 3, 3, tzinfo=timezone.utc)  # noqa: E731
    refused, _ = check_updates(updates_since(repo, "main"), [KICS], pushed_at=inside)
    assert len(refused) == 1 and "inside kics-2026-04's window" in refused[0].reason
    assert check_updates(updates_since(repo, "main"), [KICS], pushed_at=before) == ([], [])
    allow = tmp_path / "allow.yaml"
    allow.write_text(f"- digest: {NEW}\n  reason: rebuilt from the March 3 source by the platform team\n")
    refused, allowed = check_updates(updates_since(repo, "main"), [KICS], load_allow_list(allow), pushed_at=inside)
    assert refused == [] and allowed[0][1].startswith("rebuilt")


def test_allow_list_entries_need_a_reason_and_a_digest(tmp_path: Path):
    bad = tmp_path / "a.yaml"
    bad.write_text(f"- digest: {NEW}\n")
    with pytest.raises(Exception, match="entry 1"):
        load_allow_list(bad)
    bad.write_text("- digest: latest\n  reason: because\n")
    with pytest.raises(Exception, match="neither a digest"):
        load_allow_list(bad)


def test_an_action_sha_pushed_inside_the_window_is_refused_through_the_github_api(repo: Path, github):
    client = GitHubClient(DEFAULT_TOKEN, api_url=github.url)
    wf = repo / ".github/workflows/ci.yml"
    wf.write_text(f"jobs:\n  a:\n    steps:\n      - uses: aquasecurity/trivy-action@{IN_WINDOW} # 0.34.0\n")
    refused, _ = check_updates(updates_since(repo, "main"), [TRIVY], pushed_at=github_pushed_at(client))
    assert len(refused) == 1 and "inside trivy-2026-03's window" in refused[0].reason
    wf.write_text(f"jobs:\n  a:\n    steps:\n      - uses: aquasecurity/trivy-action@{SAFE_ACTION} # 0.35.0\n")
    assert check_updates(updates_since(repo, "main"), [TRIVY], pushed_at=github_pushed_at(client)) == ([], [])
    # an unknown commit has no time: fails closed
    wf.write_text(f"jobs:\n  a:\n    steps:\n      - uses: aquasecurity/trivy-action@{'d' * 40}\n")
    refused, _ = check_updates(updates_since(repo, "main"), [TRIVY], pushed_at=github_pushed_at(client))
    assert len(refused) == 1 and "unknown" in refused[0].reason


def test_unchanged_pins_and_unrelated_images_are_not_judged(repo: Path):
    assert updates_since(repo, "main") == []
    (repo / "Dockerfile").write_text(f"FROM checkmarx/kics:latest@{OLD}\nFROM alpine:3.20@{NEW}\n")
    ups = updates_since(repo, "main")
    assert [u.name for u in ups] == ["docker.io/library/alpine"]
    assert check_updates(ups, [KICS, TRIVY]) == ([], [])


def test_a_missing_base_ref_is_an_input_error(repo: Path):
    with pytest.raises(Exception, match="not a commit"):
        updates_since(repo, "no-such-branch")


def test_cli_check_updates(repo: Path, github, monkeypatch):
    monkeypatch.setenv("GITHUB_TOKEN", DEFAULT_TOKEN)
    (repo / "Dockerfile").write_text(f"FROM checkmarx/kics:latest@{MAL_LATEST}\nFROM alpine:3.20@{OLD}\n")
    r = CliRunner().invoke(app, ["lint", str(repo), "--json", "--check-updates", "main", "--github-api", github.url])
    assert r.exit_code == 1, r.output
    kinds = {(o["path"], o["line"], o["kind"]) for o in json.loads(r.stdout)["offenders"]}
    assert ("Dockerfile", 1, "quarantined") in kinds


def test_pin_never_proposes_a_quarantined_digest_and_says_why(tmp_path: Path):
    (tmp_path / "Dockerfile").write_text("FROM checkmarx/kics:v2.1.19\n")
    resolved = "sha256:" + "3" * 64
    plan = plan_pins(tmp_path, KICS, resolve=lambda r: resolved,
                     pushed_at=lambda ref, d: datetime(2026, 4, 22, 14, 0, tzinfo=timezone.utc))
    assert plan.changes == []
    why = plan.needs_decision[0].reason
    assert why.startswith("quarantined:") and "inside kics-2026-04's window" in why
    assert "Quarantined digests (never proposed)" in plan.markdown()
    ok = plan_pins(tmp_path, KICS, resolve=lambda r: resolved,
                   pushed_at=lambda ref, d: datetime(2026, 3, 3, tzinfo=timezone.utc))
    assert [c.digest for c in ok.changes] == [resolved]
    unknown = plan_pins(tmp_path, KICS, resolve=lambda r: resolved, pushed_at=lambda ref, d: None)
    assert unknown.changes == [] and "unknown" in unknown.needs_decision[0].reason


def test_update_model_round_trips():
    u = Update(path="a", line=1, kind="image", name="docker.io/library/alpine", reference="alpine@x", new=NEW)
    assert Update.model_validate(u.model_dump()) == u
