"""detect's other sources: Kubernetes pods (a local server speaking the Kubernetes API's JSON for pod lists, since no
cluster can run here) and GitHub Actions job logs (a local server speaking the GitHub REST API, since no GitHub can
run here), through the real kubernetes client and our GitHub client."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from digestguard.advisory import Advisory
from digestguard.inventory import CISource, Inventory, KubernetesCluster
from flows.drill.servers.github import GitHubServer, github_job_log
from tasks.detect import detect
from tests.fakes.kubernetes import KubeServer, make_pod

BAD = "sha256:" + "b" * 64
CHILD = "sha256:" + "c" * 64
GOOD = "sha256:" + "d" * 64


def _adv() -> Advisory:
    return Advisory.model_validate({
        "id": "src", "title": "t", "window": {"start": "2026-04-22T12:35:00Z", "source": "t"},
        "images": [{"repository": "checkmarx/kics", "tags_overwritten": ["latest"], "malicious": [
            {"digest": BAD, "kind": "index", "tags": ["latest"], "source": "t"},
            {"digest": CHILD, "kind": "manifest", "platform": "linux/amd64", "parent": BAD, "source": "t"}]}]})


def test_pods_running_a_malicious_digest_are_found_with_workload_and_node(tmp_path, monkeypatch):
    monkeypatch.setenv("DG_K8S_TOKEN", "k8s-token")
    with KubeServer(token="k8s-token") as kube:
        kube.state.reset([
            make_pod("ci", "kics-scan-7d9f8-abcde", [("kics", "checkmarx/kics:latest", f"docker-pullable://checkmarx/kics@{CHILD}")],
                     owner=("ReplicaSet", "kics-scan-7d9f8"), labels={"pod-template-hash": "7d9f8"}, node="node-7"),
            make_pod("ci", "kics-ok", [("kics", "checkmarx/kics:v2.1.19", f"docker.io/checkmarx/kics@{GOOD}")]),
            make_pod("web", "nginx", [("nginx", "nginx:1.27", "docker.io/library/nginx@sha256:" + "e" * 64)]),
        ])
        inv = Inventory(kubernetes=[KubernetesCluster(name="prod", url=kube.url, token="env:DG_K8S_TOKEN")], base_dir=str(tmp_path))
        res = detect(_adv(), inv)
    by_loc = {f.location: f for f in res.findings}
    bad = by_loc["ci/kics-scan-7d9f8-abcde/kics"]
    assert bad.verdict == "compromised" and bad.matched == BAD and bad.match_kind == "manifest"
    assert bad.detail["workload"] == "Deployment/kics-scan" and bad.detail["node"] == "node-7"
    assert by_loc["ci/kics-ok/kics"].verdict == "clean"
    assert not any("nginx" in loc for loc in by_loc)


def test_wrong_cluster_token_is_an_unknown_finding(tmp_path, monkeypatch):
    monkeypatch.setenv("DG_K8S_TOKEN", "wrong")
    with KubeServer(token="k8s-token") as kube:
        inv = Inventory(kubernetes=[KubernetesCluster(name="prod", url=kube.url, token="env:DG_K8S_TOKEN")], base_dir=str(tmp_path))
        res = detect(_adv(), inv)
    assert [f.verdict for f in res.findings] == ["unknown"] and "Auth" in res.findings[0].error


def test_github_actions_logs_in_the_window(tmp_path, monkeypatch):
    monkeypatch.setenv("DG_GH_TOKEN", "gh-token")
    gh = GitHubServer(token="gh-token").start()
    try:
        gh.add_repo("acme", "infra")
        at = datetime(2026, 4, 22, 13, 5, tzinfo=timezone.utc)
        run = gh.add_run("acme", "infra", created_at=at, path=".github/workflows/scan.yml")
        gh.add_job(run, name="kics", log=github_job_log("checkmarx/kics:latest", BAD, at), started_at=at)
        run2 = gh.add_run("acme", "infra", created_at=at + timedelta(hours=1))
        gh.add_job(run2, name="kics", log=github_job_log("checkmarx/kics:v2.1.19", GOOD, at + timedelta(hours=1)),
                   started_at=at + timedelta(hours=1))
        inv = Inventory(ci_logs=[CISource(name="gha", kind="github", repo="acme/infra", api_url=gh.url, token="env:DG_GH_TOKEN")],
                        base_dir=str(tmp_path))
        adv = _adv().model_copy(update={"window": _adv().window.model_copy(update={"end": at + timedelta(hours=3)})})
        res = detect(adv, inv)
    finally:
        gh.stop()
    comp = [f for f in res.findings if f.verdict == "compromised"]
    assert len(comp) == 1 and comp[0].kind == "ci-log" and comp[0].digest == BAD
    assert comp[0].seen_at is not None and comp[0].detail["tag"] == "latest"


def test_ci_configuration_in_repositories(tmp_path):
    """Every file that references the affected repository, with the tag used; other images are not findings."""
    from digestguard.inventory import Repository

    repo = tmp_path / "infra"
    (repo / ".github/workflows").mkdir(parents=True)
    (repo / ".github/workflows/scan.yml").write_text("jobs:\n  scan:\n    container: checkmarx/kics:latest\n")
    (repo / "Dockerfile").write_text(f"FROM checkmarx/kics@{BAD}\nFROM alpine:3.20\n")
    (repo / ".gitlab-ci.yml").write_text("scan:\n  image: {name: 'checkmarx/kics-github-action:v2'}\n")
    inv = Inventory(repositories=[Repository(name="acme/infra", kind="local", path=str(repo))], base_dir=str(tmp_path))
    res = detect(_adv(), inv)
    got = {(f.location, f.verdict, f.detail["tag"]) for f in res.findings}
    assert got == {(".github/workflows/scan.yml:3", "suspect", "latest"), ("Dockerfile:1", "compromised", "latest")}
