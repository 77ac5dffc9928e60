"""The incident report's renderings: Markdown, the self-contained HTML page and its SVG timeline.

Pure rendering: no services. The HTML is parsed with the standard library's
parser so the assertions are about elements and attributes, not substrings.
"""

from __future__ import annotations

import re
from datetime import timedelta
from html.parser import HTMLParser

from digestguard.findings import ActionOutcome, DetectResult, Finding, StageResult
from digestguard.journal import Journal
from tasks.report.artifacts import artifact_key
from tasks.report.from_journal import report_from_journal
from tasks.report.html import render_report_html, write_report
from tasks.report.model import IncidentReport, safe_detail
from tests.report_fixtures import START, sample_report


class _Elements(HTMLParser):
    """Every start tag with its attributes, plus all text, in document order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, {k: v or "" for k, v in attrs}))

    handle_startendtag = handle_starttag

    def handle_data(self, data):
        self.text.append(data)

    def select(self, tag: str | None = None, *classes: str, id: str | None = None) -> list[dict[str, str]]:
        out = []
        for t, a in self.elements:
            if tag and t != tag:
                continue
            if id and a.get("id") != id:
                continue
            if not set(classes) <= set(a.get("class", "").split()):
                continue
            out.append(a)
        return out


def _parse(html: str) -> _Elements:
    p = _Elements()
    p.feed(html)
    return p


def test_markdown_has_summary_people_tables_and_links():
    r = sample_report()
    md = r.markdown()
    assert md.startswith("# Incident `INC-2026-0422 kics`: Malicious checkmarx/kics images on Docker Hub")
    assert "- Detected: 2 compromised, 1 suspect, 1 clean, 1 source(s) failed" in md
    assert "- Rotated: 1 of 2 (1 failed)" in md and "- Purged: 2 of 2 (1 verified)" in md
    assert "- Pinned: 1 of 1 in 1 pull request(s)" in md
    assert "[acme/api#12](https://github.example/acme/api/pull/12)" in md
    # derived "needs a person" items: unmapped secret, failed action, unknown source, suspect finding, explicit item
    for item in ("Rotate LEGACY_DEPLOY_KEY by hand", "rotate: rotate-access-key aws-iam:ci-bot failed", "Check gar source gar-eu",
                 "Establish the digest of checkmarx/kics:alpine", "Tell the vendor's security contact"):
        assert f"- [ ] {item}" in md
    assert "## Findings (5)" in md and "## Exposed CI jobs (4)" in md and "## Rotations (2)" in md
    # hostile text cannot break the table or inject HTML
    assert "<script>" not in md and "&lt;script&gt;" in md and '"quoted" \\| piped' in md
    jobs = md.split("## Exposed CI jobs (4)")[1].split("\n## ")[0]
    rows = [ln for ln in jobs.splitlines() if ln.startswith("|")]
    assert len(rows) == 2 + 4
    assert len({len(re.findall(r"(?<!\\)\|", ln)) for ln in rows}) == 1  # an escaped pipe does not add a column


def test_markdown_counts_rows_beyond_the_limit():
    r = sample_report()
    md = r.markdown(limit=2)
    assert "… 3 more row(s): the Prefect table artifact has every row" in md  # counted, not silently dropped
    html = render_report_html(r, limit=2)
    assert "… and 3 more row(s) not shown here" in html


def test_html_is_self_contained_and_escaped():
    html = render_report_html(sample_report())
    doc = _parse(html)
    assert html.startswith("<!DOCTYPE html>")
    assert not doc.select("script") and not doc.select("link") and not doc.select("img") and not doc.select("iframe")
    csp = [a for a in doc.select("meta") if a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]["content"]
    assert "@import" not in html and "url(" not in html and "@font-face" not in html
    for _, attrs in doc.elements:  # nothing is fetched: only <a href> may point elsewhere
        assert not attrs.get("src")
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert {a["href"] for a in doc.select("a")} >= {"https://github.example/acme/api/pull/12",
                                                   "http://127.0.0.1:4200/runs/flow-run/00000000-0000-0000-0000-000000000001"}


def test_timeline_marks_every_job_hit_action_and_approval():
    r = sample_report()
    doc = _parse(render_report_html(r))
    assert len(doc.select("svg", id="timeline")) == 1
    window = doc.select("rect", "window")
    assert len(window) == 1 and "open-ended" not in window[0]["class"]
    assert len(doc.select(None, "job", "confirmed")) == 1
    assert len(doc.select(None, "job", "probable")) == 1  # the undated probable job is counted in a note instead
    assert len(doc.select(None, "job", "clear")) == 1
    assert len(doc.select(None, "hit")) == 2 and len(doc.select(None, "hit", "in-window")) == 1
    actions = doc.select(None, "action")
    assert len(actions) == 5 and len(doc.select(None, "action", "failed")) == 1
    assert {a["data-approver"] for a in actions} == {"alice", "alice, bob", ""}  # pin had no approval
    assert len(doc.select("line", "approval")) == 2
    text = " ".join(doc.text)
    assert "1 CI job(s) without a start time" in text
    assert "purge: approve by alice, bob" in text

    # the confirmed job sits inside the window band, the clear one before it
    band_x, band_w = float(window[0]["x"]), float(window[0]["width"])
    confirmed = float(doc.select(None, "job", "confirmed")[0]["cx"])
    clear = float(doc.select(None, "job", "clear")[0]["cx"])
    assert band_x <= confirmed <= band_x + band_w and clear < band_x


def test_open_window_and_journal_actions(tmp_path):
    r = sample_report(open_window=True)
    j = Journal(tmp_path / "j.sqlite")
    j.record(r.incident, "purge", "registry.local/checkmarx/kics@sha256:x", "delete-manifest", "done", approver="alice")
    j.record(r.incident, "notify", "slack", "incident-message", "done", detail={"channel": "C1", "ts": "1.2"})
    doc = _parse(render_report_html(r.with_journal(j)))
    assert "open-ended" in doc.select("rect", "window")[0]["class"]
    actions = doc.select(None, "action")
    assert len(actions) == 1 and actions[0]["data-approver"] == "alice"  # notify rows are not response actions
    j.close()


def test_minimal_report_renders(tmp_path):
    r = IncidentReport(incident="inc-1", advisory_id="kics-2026-04", window=sample_report().window, started_at=START)
    html = render_report_html(r)
    doc = _parse(html)
    assert doc.select("svg", id="timeline") and doc.select("rect", "window")
    assert not doc.select(None, "job") and not doc.select(None, "action")
    assert "Rotated: not run" in r.markdown() and "Nothing: every item was handled." in r.markdown()
    p = write_report(r, tmp_path / "out" / "report.html")
    written = p.read_text(encoding="utf-8")
    assert written.startswith("<!DOCTYPE html>") and 'id="timeline"' in written
    assert [x.name for x in p.parent.iterdir()] == ["report.html"]  # written atomically, no temp file left


def test_rows_carry_ids_and_versions_only():
    detail = {"old_version": 3, "new_version": 4, "value": "hunter2", "secret_access_key": "abc", "note": "free text",
              "access_key_id": "AKIAEXAMPLE", "password_version": 2}
    assert safe_detail(detail) == "access_key_id=AKIAEXAMPLE; new_version=4; old_version=3"
    r = sample_report()
    r.rotate.actions[0].detail["plaintext"] = "should-never-show"
    tables = r.tables()
    assert "should-never-show" not in str(tables) and "should-never-show" not in render_report_html(r)
    assert tables["rotations"][0]["detail"] == "new_version=4; old_version=3; path=ci/dockerhub"


def test_dry_run_and_rejection_need_a_person():
    r = sample_report()
    planned = ActionOutcome(stage="purge", target="t", action="delete-manifest", outcome="planned")
    r.purge = StageResult(stage="purge", dry_run=True, actions=[planned])
    r.approvals[0].decision = "reject"
    r.approvals[0].reason = "wrong window"
    people = r.all_needs_person()
    assert "purge: ran as a dry run; 1 action(s) not applied" in people
    assert any(p.startswith("rotate: plan aaaaaaaaaaaa was rejected: wrong window") for p in people)
    assert len(people) == len(set(people))


def test_counts():
    r = sample_report()
    c = r.counts()
    assert (c["compromised"], c["suspect"], c["jobs_confirmed"], c["jobs_probable"], c["secrets_unmapped"]) == (2, 1, 1, 2, 1)
    assert c["purge"] == {"done": 2, "failed": 0, "planned": 0, "skipped": 0, "needs_person": 0, "total": 2, "verified": 1,
                          "dry_run": False, "ran": True}
    r.detect = DetectResult(advisory="x", findings=[Finding(source="s", kind="pod", location="ns/p", verdict="compromised")] * 3)
    assert r.counts()["compromised"] == 3


def test_artifact_key():
    assert artifact_key("INC-2026-0422 kics") == "incident-inc-2026-0422-kics"
    assert artifact_key("KICS_2026.04", "pr", "acme/api", "12") == "incident-kics-2026-04-pr-acme-api-12"
    assert artifact_key("--x--") == "incident-x"


def test_report_from_journal_rebuilds_actions_approvals_and_prs(tmp_path):
    inc = "kics-2026-04-20261127-1930-3f2a"
    j = Journal(tmp_path / "j.sqlite")
    j.event(inc, "flow", "started", {"mode": "execute"})
    j.record(inc, "approval", "purge", "sha256:" + "c" * 64, "done", detail={"approvers": ["alice", "bob"], "decision": "approve",
                                                                        "reason": "confirmed"}, approver="alice,bob")
    j.record(inc, "purge", "registry.local/checkmarx/kics@sha256:x", "delete-manifest", "done", approver="alice,bob")
    j.record(inc, "purge", "build-host/checkmarx/kics:latest", "remove-image", "started", approver="alice,bob")
    j.record(inc, "pin", "acme/api", "pull-request", "done",
             detail={"url": "https://github.example/acme/api/pull/3", "number": 3})
    j.record(inc, "notify", "slack", "incident-message", "done", detail={"channel": "C1", "ts": "1.2"})
    j.event(inc, "flow", "finished", {})

    r = report_from_journal(j, inc)
    assert r.advisory_id == "kics-2026-04" and r.window.start.isoformat().startswith("2026-04-22T12:35")
    assert [(a.stage, a.decision, a.approvers) for a in r.approvals] == [("purge", "approve", ["alice", "bob"])]
    assert {a.outcome for a in r.purge.actions} == {"done", "needs-person"}
    assert any("remove-image build-host/checkmarx/kics:latest needs a person" in p for p in r.all_needs_person())
    assert [(p.repository, p.number, p.url) for p in r.pull_requests] == [("acme/api", 3, "https://github.example/acme/api/pull/3")]
    assert r.finished_at is not None and r.rotate is None
    assert {m.stage for m in r.actions} == {"purge", "pin"}  # approval/notify/flow rows are not response actions
    doc = _parse(render_report_html(r))
    assert len(doc.select(None, "action")) == 3 and len(doc.select("line", "approval")) == 1
    j.close()


def test_the_window_drawn_is_the_one_jobs_were_judged_against():
    r = sample_report()
    r.exposure.window_start = START - timedelta(hours=1)  # an operator's --window-start override, used by assess
    r.exposure.window_source = "operator override"
    assert r.effective_window().start == START - timedelta(hours=1)
    assert "2026-04-22 11:35:00 UTC" in r.markdown() and "(operator override)" in r.markdown()
    doc = _parse(render_report_html(r))
    assert "11:35:00 UTC" in " ".join(doc.text)


def test_the_report_shows_each_approver_with_how_they_were_verified(tmp_path):
    inc = "kics-2026-04-20261127-1930-3f2b"
    j = Journal(tmp_path / "j.sqlite")
    j.event(inc, "flow", "started", {"mode": "execute"})
    ids = [{"name": "bob", "via": "ssh", "verified": "yes"}, {"name": "carol", "via": "prefect-ui", "verified": "no"}]
    j.record(inc, "approval", "purge", "sha256:" + "d" * 64, "done",
             detail={"approvers": ["bob", "carol"], "decision": "approve", "identities": ids}, approver="bob,carol")
    j.record(inc, "approval", "rotate", "sha256:" + "e" * 64, "failed",
             detail={"approvers": ["(nobody)"], "decision": "reject", "expired": True, "reason": "no decision within 10 s"})
    r = report_from_journal(j, inc)
    by = {a.stage: a for a in r.approvals}
    assert by["purge"].who() == "bob (ssh, verified), carol (prefect-ui, asserted)"
    assert by["rotate"].decision == "timeout"
    assert "bob (ssh, verified), carol (prefect-ui, asserted)" in render_report_html(r)
    j.close()
