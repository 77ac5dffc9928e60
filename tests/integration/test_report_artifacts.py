"""Prefect artifacts for the incident report, read back from a real Prefect server.

Uses the shared ``prefect_harness`` session server (tests/support/prefect.py): the
report is published from inside a flow run, and the artifacts are read back
with the Prefect client to check keys, versions, contents and the flow-run link.
"""

from __future__ import annotations

import json

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.runtime import flow_run

from tasks.report.artifacts import artifact_key, publish_artifacts, publish_report
from tasks.report.model import IncidentReport
from tests.report_fixtures import sample_report

INCIDENT = "INC-2026-0422 artifacts"


def _read(client, key: str):
    return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def test_report_artifacts_are_published_and_versioned(prefect_harness, tmp_path):
    report = sample_report(incident=INCIDENT)
    report.rotate.actions[0].detail["plaintext"] = "never-in-an-artifact"

    @flow(name="report-artifacts-test")
    def publish(html_path: str) -> tuple[dict, str]:
        return publish_report(report, html_path), str(flow_run.id)

    first, run_id = publish(str(tmp_path / "report.html"))
    publish(str(tmp_path / "report.html"))  # a re-run: new versions under the same keys

    key = artifact_key(INCIDENT)
    assert key == "incident-inc-2026-0422-artifacts"
    tables = ("findings", "exposed-jobs", "exposed-secrets", "network-hits", "rotations", "purges", "pins", "pull-requests",
              "approvals")
    assert set(first["artifacts"]) == {key, *(f"{key}-{n}" for n in tables), f"{key}-pr-acme-api-12"}
    assert (tmp_path / "report.html").read_text().startswith("<!DOCTYPE html>")

    with get_client(sync_client=True) as client:
        md = _read(client, key)
        assert len(md) == 2 and {a.type for a in md} == {"markdown"}
        mine = [a for a in md if str(a.flow_run_id) == run_id]
        assert mine and mine[0].data == report.markdown()

        findings = _read(client, f"{key}-findings")[0]
        assert findings.type == "table"
        rows = json.loads(findings.data)
        assert len(rows) == 5 and {r["verdict"] for r in rows} == {"compromised", "clean", "unknown", "suspect"}

        rotations = json.loads(_read(client, f"{key}-rotations")[0].data)
        assert rotations[0]["detail"] == "new_version=4; old_version=3; path=ci/dockerhub"
        assert "never-in-an-artifact" not in json.dumps(rotations)

        link = _read(client, f"{key}-pr-acme-api-12")[0]
        assert link.type == "markdown"  # Prefect stores a link artifact as a Markdown link
        assert link.data == "[acme/api#12](https://github.example/acme/api/pull/12)"


def test_empty_tables_still_publish(prefect_harness):
    r = IncidentReport(incident="inc-empty", advisory_id="kics-2026-04", window=sample_report().window,
                       started_at=sample_report().started_at)

    @flow(name="report-empty-test")
    def publish() -> dict:
        return publish_artifacts(r)

    keys = publish()
    assert "incident-inc-empty-purges" in keys
    with get_client(sync_client=True) as client:
        purges = _read(client, "incident-inc-empty-purges")[0]
        assert json.loads(purges.data) == [{"note": "none"}]
        assert purges.description.endswith("0 row(s)")


def test_artifacts_stay_bounded_for_a_large_estate(prefect_harness, tmp_path):
    """256 repositories, each exposing every secret: the server gets bounded events, the HTML keeps everything."""
    from digestguard.findings import ExposedSecret
    from tasks.report.artifacts import ARTIFACT_ROWS, MAX_ARTIFACT_BYTES, MAX_LINK_ARTIFACTS
    from tasks.report.model import PullRequestLink

    n = 256
    report = sample_report(incident="INC big estate")
    jobs = [f"ci-logs/acme/infra-{i}/inside-malicious.log" for i in range(n)]
    report.exposure.secrets = [ExposedSecret(name=f"KICS_API_TOKEN_{k}", mapped=False, exposed_by=jobs,
                                             how=[f"infra-{i}/.github/workflows/scan.yml:9 secrets.KICS_API_TOKEN_{k}"
                                                  for i in range(n)], exposure="confirmed") for k in range(n)]
    report.pull_requests = [PullRequestLink(repository=f"acme/infra-{i}", url=f"https://github.example/acme/infra-{i}/pull/1",
                                            number=1, title="Pin", state="open", changes=2) for i in range(n)]

    @flow(name="report-artifacts-big")
    def publish(html_path: str) -> dict:
        return publish_report(report, html_path)

    html = tmp_path / "report.html"
    out = publish(str(html))
    key = artifact_key("INC big estate")
    assert len([k for k in out["artifacts"] if k.startswith(f"{key}-pr-")]) == MAX_LINK_ARTIFACTS
    with get_client(sync_client=True) as client:
        md = _read(client, key)[0].data
        table = _read(client, f"{key}-exposed-secrets")[0].data
        prs = _read(client, f"{key}-pull-requests")[0].data
    for data in (md, table, prs):
        assert len(data.encode()) <= MAX_ARTIFACT_BYTES
    rows = json.loads(table)
    assert len(rows) == ARTIFACT_ROWS + 1 and f"{n - ARTIFACT_ROWS} more row(s)" in json.dumps(rows[-1])
    assert str(html) in json.dumps(rows[-1])  # says where the full table is
    assert "acme/infra-255" in json.dumps(json.loads(prs)) or "more row(s)" in prs  # every PR counted
    full = html.read_text()
    assert "KICS_API_TOKEN_255" in full and "acme/infra-255" in full  # the HTML report keeps every row
