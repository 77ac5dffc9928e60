"""Assess reading GitLab pipelines, jobs and traces.

The API is ``flows.drill.servers.gitlab.GitLabServer``, a local server speaking the GitLab
REST API v4 (paths, JSON shapes, Link pagination, ``PRIVATE-TOKEN``);
``integrations.gitlab.GitLabClient`` talks to it unchanged.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from digestguard.advisory import load_advisory
from digestguard.inventory import load_inventory
from flows.drill.servers.gitlab import DEFAULT_TOKEN, GitLabServer, gitlab_job_trace
from tasks.assess import assess

UTC = timezone.utc
ALPINE = "sha256:2588a44890263a8185bd5d9fadb6bc9220b60245dbcbc4da35e1b62a6f8c230d"
START = datetime(2026, 4, 22, 12, 35, tzinfo=UTC)
DETECTED = datetime(2026, 4, 22, 15, 0, tzinfo=UTC)
GITLAB_CI = """\
kics:
  image: checkmarx/kics:alpine
  script:
    - echo "$SONAR_TOKEN" > /dev/null
    - kics scan -p .
"""


def test_pipeline_jobs_in_the_window_with_trace_digests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DG_TEST_GITLAB_TOKEN", DEFAULT_TOKEN)
    with GitLabServer() as srv:
        pid = srv.add_project("acme/infra")
        inside = START + timedelta(hours=1)
        pipe = srv.add_pipeline(pid, created_at=inside, sha="d" * 40)
        srv.add_job(pipe, name="kics", trace=gitlab_job_trace("checkmarx/kics:alpine", ALPINE, inside, timestamps=True))
        srv.add_file(pid, ".gitlab-ci.yml", GITLAB_CI, ref="d" * 40)
        old = srv.add_pipeline(pid, created_at=START - timedelta(days=2))
        srv.add_job(old, name="kics", trace=gitlab_job_trace("checkmarx/kics:alpine", ALPINE, START - timedelta(days=2)))
        (tmp_path / "inventory.yaml").write_text(yaml.safe_dump({
            "ci_logs": [{"name": "gitlab-infra", "kind": "gitlab", "repo": "acme/infra", "api_url": srv.url,
                         "token": "env:DG_TEST_GITLAB_TOKEN"}],
        }))
        report = assess(load_advisory("kics-2026-04"), load_inventory(tmp_path / "inventory.yaml"),
                        detected_at=DETECTED, network_hits=[])
    assert [e for e in report.errors if not e.startswith("note:")] == []
    (job,) = report.jobs  # the pipeline two days earlier is not listed
    assert job.verdict == "confirmed" and job.digest == ALPINE
    assert job.workflow == ".gitlab-ci.yml" and job.url and "/-/jobs/" in job.url
    assert [(s.name, s.mapped) for s in report.secrets] == [("SONAR_TOKEN", False)]
