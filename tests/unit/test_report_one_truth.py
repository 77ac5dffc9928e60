"""``digestguard report ID`` tells the same story as the run itself (issue 15, point 6a and 6c).

The run's report (the drill's estate in miniature: findings with a failed source, exposure, rotations,
purges with verification, a pull request) is recorded the way the flow records it after each stage and at the
end; the report rebuilt from the journal alone is then compared with it field by field: title, compromised
count, rotated N of M, purge counts, coverage and verdict, every summary line and table. A second record (a
re-run) must not double anything. The end-to-end version of this check is in the drill's scorecard
(``report rebuilt from the journal differs in: []``), run by ``tests/e2e/test_incident_flow.py``.
"""

from __future__ import annotations

from digestguard.journal import Journal
from flows.incident_response import run_summary
from tasks.report.from_journal import record_report, report_from_journal
from tasks.report.html import render_report_html
from tests.report_fixtures import sample_report


def _journal_the_run(j: Journal, report) -> None:
    j.event(report.incident, "flow", "started", {"mode": "execute"})
    for res in report.stage_results():
        for a in [*res.actions, *res.verification]:
            status = {"already-done": "done", "needs-person": "skipped"}.get(a.outcome, a.outcome)
            j.record(report.incident, res.stage, a.target, a.action, status, error=a.error)
    record_report(j, report)


def _facts(r) -> dict:
    return {"title": r.advisory_title, "advisory": r.advisory_id, "window": r.effective_window(),
            "counts": r.counts(), "summary": r.summary_lines(), "coverage": r.coverage(), "note": r.coverage_note(),
            "needs_person": r.all_needs_person(), "tables": r.tables(), "run_summary": run_summary(r),
            "started": r.started_at, "finished": r.finished_at, "prs": r.pull_requests, "links": r.link_origins}


def test_the_rebuilt_report_is_the_runs_own(tmp_path):
    run = sample_report(incident="kics-2026-04-20261202-0500-aaaa")
    j = Journal(tmp_path / "journal.sqlite")
    _journal_the_run(j, run)
    own = run.with_journal(j)  # what the flow publishes at its end
    rebuilt = report_from_journal(j, run.incident)
    mine, theirs = _facts(own), _facts(rebuilt)
    for key in mine:
        assert theirs[key] == mine[key], key
    s = run_summary(rebuilt)
    assert s["verdict"] == "found" and s["detect"]["compromised"] == 2
    assert "Rotated: 1 of 2 (1 failed)" in " ".join(rebuilt.summary_lines())  # not 23/23: the run's own count
    assert rebuilt.markdown() == own.markdown()
    assert len(render_report_html(rebuilt)) > 1000
    j.close()


def test_a_rerun_does_not_double_count(tmp_path):
    run = sample_report(incident="kics-2026-04-20261202-0500-bbbb")
    j = Journal(tmp_path / "journal.sqlite")
    _journal_the_run(j, run)
    once = _facts(report_from_journal(j, run.incident))
    _journal_the_run(j, run)  # a re-run: the same actions found done, the report recorded again
    twice = _facts(report_from_journal(j, run.incident))
    assert twice["counts"] == once["counts"] and twice["run_summary"] == once["run_summary"]
    assert twice["tables"] == once["tables"]
    j.close()


def test_the_record_holds_no_secret_value(tmp_path):
    """The snapshot passes through the one redactor, like every journal row."""
    from digestguard.redact import register

    value = "s3cr3t-value-" + "x" * 20
    run = sample_report(incident="kics-2026-04-20261202-0500-cccc")
    run.needs_person.append(f"vendor said {value}")
    register(value)
    j = Journal(tmp_path / "journal.sqlite")
    record_report(j, run)
    j.close()
    assert value not in (tmp_path / "journal.sqlite").read_bytes().decode("utf-8", "replace")
