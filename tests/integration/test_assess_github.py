"""Assess reading GitHub Actions runs, jobs, logs and workflow files.

The API is ``flows.drill.servers.github.GitHubServer``, a local server speaking the GitHub
REST API (paths, JSON shapes, Link pagination, the 302 log redirect to a separate
blob-storage origin); ``integrations.github.GitHubClient`` talks to it unchanged,
and assess drives that client through ``tasks.ci_logs.read_ci_sources`` / ``assess``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from digestguard.advisory import load_advisory
from digestguard.inventory import load_inventory
from flows.drill.servers.github import DEFAULT_TOKEN, GitHubServer, github_job_log
from integrations.github import GitHubClient
from tasks.assess import assess, exposure_window
from tasks.ci_logs import read_ci_sources

UTC = timezone.utc
LATEST = "sha256:a0d9366f6f0166dcbf92fcdc98e1a03d2e6210e8d7e8573f74d50849130651a0"
CLEAN = "sha256:" + "b" * 64
START = datetime(2026, 4, 22, 12, 35, tzinfo=UTC)
DETECTED = datetime(2026, 4, 22, 15, 0, tzinfo=UTC)
SHA = "f" * 40

WORKFLOW = """\
on: push
jobs:
  kics:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: docker://checkmarx/kics:latest
        env:
          DOCKERHUB_TOKEN: ${{ secrets.DOCKERHUB_TOKEN }}
          SLACK_WEBHOOK: ${{ secrets.SLACK_WEBHOOK }}
"""


@pytest.fixture(scope="module")
def server() -> Iterator[GitHubServer]:
    with GitHubServer() as srv:
        srv.add_repo("acme", "api")
        srv.add_file("acme", "api", ".github/workflows/kics.yml", WORKFLOW, ref=SHA)
        inside = START + timedelta(hours=1)
        run = srv.add_run("acme", "api", created_at=inside, name="kics", path=".github/workflows/kics.yml", head_sha=SHA)
        srv.add_job(run, name="kics", log=github_job_log("checkmarx/kics:latest", LATEST, inside + timedelta(seconds=20)))
        srv.add_job(run, name="lint", log=github_job_log("library/alpine:3.20", "sha256:" + "1" * 64, inside, style="run"))
        clean = srv.add_run("acme", "api", created_at=inside + timedelta(minutes=5), name="nightly",
                            path=".github/workflows/nightly.yml")
        srv.add_job(clean, name="scan",
                    log=github_job_log("checkmarx/kics:v2.1.20", CLEAN, inside + timedelta(minutes=5), style="container"))
        long_before = srv.add_run("acme", "api", created_at=START - timedelta(days=3), path=".github/workflows/kics.yml")
        srv.add_job(long_before, name="kics", log=github_job_log("checkmarx/kics:latest", LATEST, START - timedelta(days=3)))
        yield srv


@pytest.fixture()
def inventory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: GitHubServer):
    monkeypatch.setenv("DG_TEST_GITHUB_TOKEN", DEFAULT_TOKEN)
    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump({
        "ci_logs": [{"name": "github-api", "kind": "github", "repo": "acme/api", "api_url": server.url,
                     "token": "env:DG_TEST_GITHUB_TOKEN"}],
        "secrets": [{"name": "dockerhub-token", "backend": "manual", "aliases": ["DOCKERHUB_TOKEN"]}],
    }))
    return load_inventory(tmp_path / "inventory.yaml")


def test_runs_in_the_window_are_read_and_classified(server: GitHubServer, inventory) -> None:
    kics = load_advisory("kics-2026-04")
    window = exposure_window(kics, detected_at=DETECTED)
    read = read_ci_sources(inventory, kics, window)
    assert read.errors == []
    names = sorted(j.job.rsplit("(", 1)[1] for j in read.jobs)
    assert names == ["kics / kics)", "kics / lint)", "nightly / scan)"]  # the run 3 days earlier is not listed

    report = assess(kics, inventory, detected_at=DETECTED, network_hits=[])
    by_name = {j.job.rsplit("(", 1)[1]: j for j in report.jobs}
    assert set(by_name) == {"kics / kics)", "nightly / scan)"}  # lint never used kics
    confirmed = by_name["kics / kics)"]
    assert confirmed.verdict == "confirmed" and confirmed.digest == LATEST
    assert confirmed.workflow == ".github/workflows/kics.yml"
    assert confirmed.url and confirmed.url.startswith("https://github.com/acme/api/actions/runs/")
    assert any(e.endswith(f"Digest: {LATEST}") for e in confirmed.evidence)
    assert by_name["nightly / scan)"].verdict == "clear"

    # the workflow file was read at the run's commit, through the API
    fetched = server.calls_to("GET", r"/repos/acme/api/contents/\.github/workflows/kics\.yml")
    assert fetched and all(c.query.get("ref") == SHA for c in fetched)
    secrets = {s.name: s for s in report.secrets}
    assert secrets["dockerhub-token"].mapped and secrets["dockerhub-token"].exposure == "confirmed"
    assert secrets["SLACK_WEBHOOK"].mapped is False
    # logs were fetched from the storage origin without the token
    assert server.log_store.calls and not any(c.authorized for c in server.log_store.calls)


def test_an_unreachable_github_is_an_error_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DG_TEST_GITHUB_TOKEN", DEFAULT_TOKEN)
    with GitHubServer() as srv:
        url = srv.url
    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump({
        "ci_logs": [{"name": "gh-down", "kind": "github", "repo": "acme/api", "api_url": url,
                     "token": "env:DG_TEST_GITHUB_TOKEN"}],
    }))
    inv = load_inventory(tmp_path / "inventory.yaml")
    kics = load_advisory("kics-2026-04")
    # a ready client with no retries keeps the test fast; the default client retries refused connections
    down = GitHubClient(DEFAULT_TOKEN, api_url=url, max_retries=0)
    read = read_ci_sources(inv, kics, exposure_window(kics, detected_at=DETECTED), clients={"gh-down": down})
    down.close()
    assert read.jobs == []
    assert len(read.errors) == 1 and read.errors[0].startswith("gh-down: cannot list workflow runs of acme/api")
    assert DEFAULT_TOKEN not in read.errors[0]
