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
