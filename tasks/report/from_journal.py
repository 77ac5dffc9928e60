"""The incident report rebuilt from the journal: what the CLI's ``report`` writes when the run's own file is gone.

A run records its report in the journal (:func:`record_report`, after every stage and at the end), so the
rebuilt report is the run's own: same title, findings, coverage, verdict and counts, with the timeline
taken from the journal's actions as the run's own is. Only for an incident recorded before that (or a run
that died before its first stage ended) is it pieced together from the actions, approvals and pull
requests alone; findings and exposure then come out empty and the report says so. The tag timelines assess judged by are
journaled (``assess``/``tag-timelines`` event) and come back as they were.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from digestguard.advisory import Advisory, Window, load_advisory
from digestguard.errors import InputError
from digestguard.findings import ActionOutcome, StageResult
from digestguard.journal import Entry, Journal
from digestguard.timeline import TagTimeline
from digestguard.timeutil import parse_time
from tasks.report.model import ApprovalRecord, IncidentReport, PullRequestLink

__all__ = ["record_report", "report_from_journal"]

SNAPSHOT_STAGE, SNAPSHOT_KIND = "report", "snapshot"


def record_report(journal: Journal, report: IncidentReport) -> None:
    """Keep the run's report in the journal (an event; the latest one is the report), redacted like every row."""
    journal.event(report.incident, SNAPSHOT_STAGE, SNAPSHOT_KIND,
                  {"report": report.model_dump(mode="json", exclude={"actions"})})

_STATUS_TO_OUTCOME = {"done": "done", "failed": "failed", "skipped": "skipped", "planned": "planned", "started": "needs-person"}
_NO_ADVISORY = "unknown: rebuilt from the journal without the advisory"
_INTERRUPTED = "started but never finished (interrupted run?)"
_REBUILT = "This report was rebuilt from the journal: findings and exposure are not in it (see the run's report artifact)"


def report_from_journal(journal: Journal, incident: str, advisory: Advisory | None = None) -> IncidentReport:
    """Rebuild what the journal knows of an incident (the CLI's ``report`` when the run's own file is gone).

    The run's last recorded report (:func:`record_report`) is returned as it was. Without one (an
    incident recorded before snapshots, or a run that died before its first stage ended) it is pieced
    together from actions, approvals and pull requests: findings and exposure come out empty and the
    report says so. An action left ``started`` (an interrupted run) is reported as needing a person.
    ``advisory`` defaults to the shipped pack whose id prefixes the incident id.
    """
    entries = journal.entries(incident)
    events = journal.events(incident)
    if not entries and not events:
        raise InputError(incident, "the journal has no record of this incident")
    snapshots = [e["detail"].get("report") for e in events if e["stage"] == SNAPSHOT_STAGE and e["kind"] == SNAPSHOT_KIND]
    if snapshots and isinstance(snapshots[-1], dict):
        return IncidentReport.model_validate(snapshots[-1]).with_journal(journal)
    if advisory is None:
        advisory = _advisory_of(incident)
    started_at, finished_at = _run_times(entries, events)

    results = {stage: _stage_result(stage, rows) for stage in ("rotate", "purge", "pin")
               if (rows := [e for e in entries if e.stage == stage])}
    approvals = [_approval(e, started_at) for e in entries if e.stage == "approval"]
    prs = [pr for pr in map(_pull_request, entries) if pr is not None]
    window = advisory.window if advisory else Window(start=started_at, source=_NO_ADVISORY)
    report = IncidentReport(
        incident=incident, advisory_id=advisory.id if advisory else "unknown", advisory_title=advisory.title if advisory else "",
        window=window, rotate=results.get("rotate"), purge=results.get("purge"), pin=results.get("pin"),
        pull_requests=prs, approvals=approvals, started_at=started_at, finished_at=finished_at, needs_person=[_REBUILT],
    )
    tl = [e["detail"] for e in events if e["stage"] == "assess" and e["kind"] == "tag-timelines"]
    if tl:  # the last assess of the run: the timelines it judged by
        report = report.model_copy(update={"tag_timelines": [TagTimeline.model_validate(t) for t in tl[-1].get("timelines", [])],
                                           "malicious_digests": list(tl[-1].get("malicious", []))})
    return report.with_journal(journal)


def _advisory_of(incident: str) -> Advisory | None:
    """The shipped pack whose id is the longest prefix of ``incident`` (``kics-2026-04-2026...`` -> ``kics-2026-04``)."""
    parts = incident.split("-")
    for n in range(len(parts) - 1, 0, -1):
        try:
            return load_advisory("-".join(parts[:n]))
        except InputError:
            continue
    return None


def _run_times(entries: list[Entry], events: list[dict[str, Any]]) -> tuple[datetime, datetime | None]:
    """When the response started (its flow event, else the earliest record) and finished (its last end event)."""
    started = [parse_time(e["at"]) for e in events if e["stage"] == "flow" and e["kind"] == "started"]
    finished = [parse_time(e["at"]) for e in events if e["stage"] == "flow" and e["kind"] in ("finished", "failed")]
    times = [t for t in (parse_time(x.started_at or x.finished_at) for x in entries) if t] + \
        [t for t in (parse_time(e["at"]) for e in events) if t]
    started_at = next((t for t in started if t), None) or min(times)
    finished_at = next((t for t in reversed(finished) if t), None)
    return started_at, finished_at


def _approval(e: Entry, started_at: datetime) -> ApprovalRecord:
    """An ``approval`` journal row as a decision (its target is the stage, its action the plan hash)."""
    decision = e.detail.get("decision") or ("approve" if e.status == "done" else "reject")
    if e.detail.get("expired"):
        decision = "timeout"
    return ApprovalRecord(stage=e.target, decision=decision if decision in ("approve", "reject", "timeout") else "reject",
                          identities=list(e.detail.get("identities") or []),
                          approvers=list(e.detail.get("approvers") or ([e.approver] if e.approver else [])),
                          at=parse_time(e.finished_at or e.started_at) or started_at, plan_hash=e.action,
                          reason=str(e.detail.get("reason") or ""))


def _stage_result(stage: str, rows: list[Entry]) -> StageResult:
    """One stage's result from its journal rows: each row an action, their approvers the result's."""
    actions = [ActionOutcome(stage=e.stage, target=e.target, action=e.action, detail=e.detail,
                             error=e.error or (_INTERRUPTED if e.status == "started" else None),
                             outcome=_STATUS_TO_OUTCOME.get(e.status, "needs-person"))  # type: ignore[arg-type]
               for e in rows]
    approved_by = list(dict.fromkeys(e.approver for e in rows if e.approver))
    return StageResult(stage=stage, actions=actions, approved_by=approved_by)


def _pull_request(e: Entry) -> PullRequestLink | None:
    """The pull request a done ``pin``/``pull-request`` row opened, or None for any other row."""
    opened = e.stage == "pin" and e.action == "pull-request" and e.status == "done"
    if not (opened and (e.detail.get("url") or e.detail.get("branch"))):
        return None
    number = e.detail.get("number")
    return PullRequestLink(repository=e.target, url=str(e.detail.get("url") or e.detail.get("branch")),
                           number=int(number) if isinstance(number, int) else None, state="open")
