"""The public-mirror needs-person item reaches Slack and the HTML report (never silence).

Slack through the local stand-in speaking the Slack Web API (``flows/drill/servers/slack.py``; no Slack runs here)
to the unmodified slack-sdk; the purge result comes from the real purge stage over a detect result whose finding
went through mirror.gcr.io.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from digestguard.advisory import load_advisory
from digestguard.findings import DetectResult, Finding
from digestguard.inventory import Inventory, parse_inventory
from digestguard.journal import Journal
from digestguard.plan import Approval
from flows.drill.servers.slack import SlackServer
from tasks.notify import Notifier
from tasks.purge import apply_purge, plan_purge
from tasks.report.html import render_report_html
from tasks.report.model import IncidentReport

BAD = "sha256:425cd3e1a2846ac73944e891250377d2b03653e6f028833e30fc00c1abbc6d33"


def test_slack_summary_and_html_report_carry_the_mirror_item(tmp_path: Path, monkeypatch):
    trivy = load_advisory("trivy-2026-03")
    detected = DetectResult(advisory=trivy.id, findings=[
        Finding(source="gha", kind="ci-log", location="run 7/job 9:12", reference="mirror.gcr.io/aquasec/trivy:0.69.6",
                digest=BAD, matched=BAD, match_kind="index", verdict="compromised", mirror="mirror.gcr.io")])
    journal = Journal(tmp_path / "journal.sqlite")
    plan = plan_purge("inc-20", trivy, detected, Inventory(base_dir=str(tmp_path)))
    purge = apply_purge(plan, Approval(decision="approve", approvers=["alice"], plan_hash=plan.hash),
                        Inventory(base_dir=str(tmp_path)), journal)
    report = IncidentReport.for_advisory("inc-20", trivy, started_at=datetime(2026, 3, 25, tzinfo=timezone.utc),
                                         detect=detected, purge=purge)
    html = render_report_html(report)
    assert "report-mirror mirror.gcr.io/aquasec/trivy needs a person" in html and "operator" in html
    with SlackServer() as slack:
        monkeypatch.setenv("TEST_SLACK_TOKEN", slack.token)
        inv = parse_inventory({"slack": {"channel": "#sec-incident", "token": "env:TEST_SLACK_TOKEN",
                                         "api_url": slack.api_url}}, "inventory.yaml", Path("."))
        n = Notifier.from_inventory(inv, journal, "inc-20", advisory_id=trivy.id, title=trivy.title)
        assert n.open_incident().outcome == "done"
        outs = n.final_summary(report, html=html)
        summary = slack.messages[(n.message.channel, outs[0].detail["ts"])]
    assert "Still needs a person" in summary.text
    assert "report-mirror mirror.gcr.io/aquasec/trivy needs a person" in summary.text
    assert "verify-absent mirror.gcr.io/aquasec/trivy needs a person" in summary.text
    journal.close()
