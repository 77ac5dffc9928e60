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


# ------------------------------------------------------------------ image push times (issue 17)
# Docker Hub's API is flows/drill/servers/dockerhub.py (a local server speaking hub.docker.com's documented
# /v2/namespaces/{ns}/repositories/{repo}/tags wire format to integrations.dockerhub.DockerHub);
# the registry is the real Debian docker-registry (tests/support/registry.py); the watch state is
# the real SQLite file.

@pytest.fixture()
def hub():
    from flows.drill.servers.dockerhub import start_dockerhub

    srv = start_dockerhub()
    yield srv
    srv.stop()


def _times(**kw):
    from tasks.quarantine import ImagePushTimes

    return ImagePushTimes(**kw)


def test_docker_hub_push_time_refuses_the_attackers_digest_update_and_passes_a_legitimate_one(repo: Path, hub):
    """The tag was overwritten at 13:05 on April 22: the digest update a bot proposes is the attacker's."""
    from integrations.dockerhub import DockerHub

    hub.add_tag("checkmarx/kics", "latest", NEW, "2026-04-22T13:05:00Z", platforms={"linux/amd64": "sha256:" + "4" * 64})
    (repo / "Dockerfile").write_text(f"FROM checkmarx/kics:latest@{NEW}\nFROM alpine:3.20@{OLD}\n")
    with DockerHub(api_url=hub.url) as client:
        times = _times(hub=client)
        refused, _ = check_updates(updates_since(repo, "main"), [KICS], pushed_at=times.for_update)
        assert len(refused) == 1
        assert "pushed 2026-04-22 13:05Z (Docker Hub (latest)) inside kics-2026-04's window" in refused[0].reason
        # a legitimate update: the digest of a tag pushed in March (found by listing the tags)
        legit = "sha256:" + "5" * 64
        hub.add_tag("checkmarx/kics", "v2.1.19", legit, "2026-03-03T09:00:00Z")
        (repo / "Dockerfile").write_text(f"FROM checkmarx/kics:latest@{legit}\nFROM alpine:3.20@{OLD}\n")
        assert check_updates(updates_since(repo, "main"), [KICS], pushed_at=times.for_update) == ([], [])
        # a platform digest is matched through the tag's images (its own last_pushed)
        assert [t.source for t in times(ref=load_ref("checkmarx/kics:latest"), digest="sha256:" + "4" * 64)] == [
            "Docker Hub (latest)"]


def load_ref(text: str):
    from digestguard.reference import parse_reference

    return parse_reference(text)


def test_a_hub_that_does_not_answer_fails_closed_and_says_so(repo: Path):
    from integrations.dockerhub import DockerHub

    (repo / "Dockerfile").write_text(f"FROM checkmarx/kics:latest@{NEW}\nFROM alpine:3.20@{OLD}\n")
    with DockerHub(api_url="http://127.0.0.1:9", max_retries=0, timeout=2) as client:
        times = _times(hub=client)
        refused, _ = check_updates(updates_since(repo, "main"), [KICS], pushed_at=times.for_update)
    assert len(refused) == 1 and "when this was pushed is unknown" in refused[0].reason
    assert times.errors and "checkmarx/kics" in times.errors[0]


def test_watch_first_seen_is_an_upper_bound(repo: Path, tmp_path: Path):
    """Seen before the window: pushed before it (passes). Seen inside: cannot be ruled out (refused).
    Seen only after the window opened and no other source: unknown (fails closed)."""
    from tasks.watch.state import WatchState

    (repo / "Dockerfile").write_text(f"FROM checkmarx/kics:latest@{NEW}\nFROM alpine:3.20@{OLD}\n")
    with WatchState(tmp_path / "w.sqlite") as st:
        times = _times(state=st)
        refused, _ = check_updates(updates_since(repo, "main"), [KICS], pushed_at=times.for_update)
        assert "unknown" in refused[0].reason  # never seen
        st.record_digests({"docker.io/checkmarx/kics:latest": NEW}, when=datetime(2026, 4, 22, 13, 0, tzinfo=timezone.utc))
        refused, _ = check_updates(updates_since(repo, "main"), [KICS], pushed_at=times.for_update)
        assert "first seen 2026-04-22 13:00Z (first seen by the watch) inside kics-2026-04's window" in refused[0].reason
    with WatchState(tmp_path / "w2.sqlite") as st:
        st.record_digests({"docker.io/checkmarx/kics:v2.1.19": NEW}, when=datetime(2026, 3, 10, tzinfo=timezone.utc))
        assert check_updates(updates_since(repo, "main"), [KICS], pushed_at=_times(state=st).for_update) == ([], [])


def test_registry_config_created_time(registry, tmp_path: Path):
    """The real registry: a single image's config ``created`` and an index's first linux child's."""
    from digestguard.reference import ImageReference
    from integrations.registry import RegistryClient
    from tests.support.registry import push_image, put_manifest

    one = push_image(registry.base_url, "checkmarx/kics", "created-one", created="2026-04-22T14:00:00Z")
    child = push_image(registry.base_url, "checkmarx/kics", None, created="2026-03-01T08:00:00Z")
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": child.media_type, "digest": child.digest, "size": len(child.manifest),
         "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()
    idx = put_manifest(registry.base_url, "checkmarx/kics", "created-index", index, "application/vnd.oci.image.index.v1+json")
    bare = push_image(registry.base_url, "checkmarx/kics", "no-created")
    with RegistryClient("docker.io", base_url=registry.base_url) as client:
        times = _times(registry=lambda host: client)
        ref = ImageReference("docker.io", "checkmarx/kics", "x", None)
        got = times(ref, one.digest)
        assert [(t.at, t.source) for t in got] == [(datetime(2026, 4, 22, 14, 0, tzinfo=timezone.utc),
                                                     "image config created (set by the builder)")]
        assert times(ref, idx)[0].at == datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)
        assert times(ref, bare.digest) == []  # no created: no answer from this source
        assert times(ref, "sha256:" + "9" * 64) == [] and times.errors  # unknown digest: an error, not a time


def test_cli_check_updates_with_hub_and_github_stand_ins(repo: Path, hub, github, monkeypatch, tmp_path: Path):
    """The Done-when flow: an advisory image's digest update pushed inside the window is refused (exit 1),
    an action SHA pushed inside the window too; updates pushed before the window pass (exit 0)."""
    monkeypatch.setenv("GITHUB_TOKEN", DEFAULT_TOKEN)
    hub.add_tag("checkmarx/kics", "latest", NEW, "2026-04-22T13:05:00Z")
    legit = "sha256:" + "5" * 64
    hub.add_tag("checkmarx/kics", "v2.1.19", legit, "2026-03-03T09:00:00Z")
    args = ["lint", str(repo), "--json", "--check-updates", "main", "--github-api", github.url,
            "--dockerhub-api", hub.url, "--no-registry-times"]
    (repo / "Dockerfile").write_text(f"FROM checkmarx/kics:latest@{NEW}\nFROM alpine:3.20@{OLD}\n")
    (repo / ".github/workflows/ci.yml").write_text(
        f"jobs:\n  a:\n    steps:\n      - uses: aquasecurity/trivy-action@{IN_WINDOW} # 0.34.0\n")
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1, r.output
    got = {(o["path"], o["kind"]): o["reason"] for o in json.loads(r.stdout)["offenders"]}
    assert "Docker Hub" in got[("Dockerfile", "quarantined")]
    assert "inside trivy-2026-03's window" in got[(".github/workflows/ci.yml", "quarantined")]
    (repo / "Dockerfile").write_text(f"FROM checkmarx/kics:latest@{legit}\nFROM alpine:3.20@{OLD}\n")
    (repo / ".github/workflows/ci.yml").write_text(
        f"jobs:\n  a:\n    steps:\n      - uses: aquasecurity/trivy-action@{SAFE_ACTION} # 0.35.0\n")
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output


def test_pin_refuses_a_resolved_digest_the_hub_says_was_pushed_inside_the_window(tmp_path: Path, hub):
    from integrations.dockerhub import DockerHub

    resolved = "sha256:" + "3" * 64
    hub.add_tag("checkmarx/kics", "v2.1.19", resolved, "2026-04-22T14:30:00Z")
    (tmp_path / "Dockerfile").write_text("FROM checkmarx/kics:v2.1.19\n")
    with DockerHub(api_url=hub.url) as client:
        plan = plan_pins(tmp_path, KICS, resolve=lambda r: resolved, pushed_at=_times(hub=client))
    assert plan.changes == []
    assert "pushed 2026-04-22 14:30Z (Docker Hub (v2.1.19)) inside kics-2026-04's window" in plan.needs_decision[0].reason
