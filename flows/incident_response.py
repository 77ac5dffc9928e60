"""``incident_response``: the playbook as one Prefect flow.

    detect -> assess -> [approval] rotate -> [approval] purge -> pin -> notify

Each stage is the one coarse Prefect task its module exposes (it fans out
inside); Slack hears about every stage as it ends, about each approval request
and decision, and about a failed run. A dry run plans every stage, renders every
plan and changes nothing anywhere. An execute run changes nothing destructive
without an approval recorded on the flow run (``flows.approval``), and every side
effect is journaled, so re-running the same incident id resumes instead of repeating.

This module holds the stage sequence and the gates; what a stage does lives in
its ``tasks`` module, what the run carries from stage to stage in :class:`Response`.
No secret is ever a parameter: the inventory names credentials by reference.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Failed
from pydantic import Field

from digestguard.advisory import Advisory, load_advisory
from digestguard.findings import ActionOutcome, DetectResult, ExposureReport, StageResult, overall_verdict
from digestguard.inventory import Inventory, load_inventory
from digestguard.journal import Journal, Lease
from digestguard.plan import Approval, Plan
from digestguard.redact import install as install_redaction, redact
from digestguard.timeutil import now
from flows.approval import confirm_manual_rotation, drill_approving, drill_person, request_approval
from flows.incident_lease import hold_incident, incident_id_for
from tasks.assess import assess_exposure_task, exposure_markdown
from tasks.connect import Connections
from tasks.detect import detect_task
from tasks.notify import Notifier, flow_run_url
from tasks.pin import parse_to, pin_task
from tasks.purge import dry_run_result as purge_dry_run, known_good_targets, plan_purge, purge_task, reverify_purge
from tasks.report.artifacts import publish_report
from tasks.report.from_journal import record_report
from tasks.report.html import render_report_html
from tasks.report.model import ApprovalRecord, IncidentReport, PullRequestLink
from tasks.rotate.stage import dry_run_result as rotate_dry_run, plan_rotation, rotate_task

Mode = Literal["dry-run", "execute"]
# Who started the run. Required, with no default, so every deployment's form (the schema Prefect derives from this
# signature, for `prefect deploy` and `digestguard serve` alike) marks it required and the API refuses a run without
# it; null stays possible for callers that cannot say (then a policy with distinct_from_trigger refuses at the gate).
TriggeredBy = Optional[Annotated[str, Field(min_length=1, max_length=200)]]
Apply = Callable[[Plan, Approval], StageResult]


def new_incident_id(advisory_id: str, when: datetime | None = None) -> str:
    """A readable, unique incident id: ``kics-2026-04-20261127-1930-3f2a``."""
    when = when or now()
    return f"{advisory_id}-{when:%Y%m%d-%H%M}-{uuid.uuid4().hex[:4]}"


def known_good_map(advisory: Advisory, to: list[str] | None) -> dict[str, str]:
    """``--known-good`` values as {tag or '*': digest}; falls back to the advisory's known-good digests."""
    single, pairs = parse_to(to or None, advisory)
    out = dict(pairs)
    if single:
        out["*"] = single
    for img in advisory.images:
        for kg in img.known_good:
            if kg.tag and kg.digest:
                out.setdefault(kg.tag, kg.digest)
                for t in kg.replaces:  # an attacker tag with no clean image of its own: its replacement's digest
                    out.setdefault(t, kg.digest)
    return out


@dataclass
class Response:
    """What one incident run carries from stage to stage: who, where, the record, and the gates' rules."""

    advisory: Advisory
    inventory: Inventory
    incident: str
    dry_run: bool
    journal: Journal
    notifier: Notifier
    connections: Connections
    report: IncidentReport
    lease: Lease
    run_id: str | None = None
    triggered_by: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    _clock: float = field(default_factory=time.monotonic)

    def lap(self, stage: str) -> None:
        """Record how long ``stage`` took since the previous lap, and the report so far in the journal."""
        t = time.monotonic()
        self.timings[stage], self._clock = round(t - self._clock, 2), t
        record_report(self.journal, self.report)

    def gate(self, plan: Plan, dry: Callable[[Plan], StageResult], apply: Apply) -> tuple[StageResult, Approval | None]:
        """Dry run: the plan as a result. Execute: approval (or its absence) decides; the stage runs only when approved."""
        stage = plan.stage
        if self.dry_run:
            self.notifier.stage_update(stage, "planned", f"{len(plan.items)} action(s) planned (dry run), plan {plan.short_hash}",
                                       details=plan.markdown())
            return dry(plan), None
        if not plan.items:
            if self.report.coverage_note():  # an empty plan from incomplete answers is no all-clear
                self.notifier.stage_update(stage, "partial", "nothing to do in the sources that were checked")
            else:
                self.notifier.stage_update(stage, "done", "nothing to do")
            return StageResult(stage=stage, plan_hash=plan.hash), None
        policy = self.inventory.approvals

        def asked(p: Plan, run_id: str | None) -> None:
            self.notifier.request_approval(p, flow_run_id=run_id, policy=policy, triggered_by=self.triggered_by)

        approval = request_approval(plan, self.journal, policy, triggered_by=self.triggered_by, on_asked=asked,
                                    buttons=self.notifier.button_listener if self.notifier.buttons else None)
        self.notifier.record_decision(plan, approval, policy=policy)
        self.report.approvals.append(ApprovalRecord.from_approval(stage, approval))
        if not approval.approved:
            who = ", ".join(approval.approvers)
            self.notifier.stage_update(stage, "rejected", f"not run: {approval.reason or 'rejected'} ({who})")
            return StageResult(stage=stage, plan_hash=plan.hash, notes=[f"rejected by {who}: {approval.reason}"],
                               actions=[ActionOutcome(stage=stage, target=i.target, action=i.action, outcome="skipped",
                                                      detail={"reason": "not approved"}) for i in plan.items]), approval
        result = apply(plan, approval)
        self.notifier.stage_update(stage, "done" if result.ok else "failed", counts_text(stage_counts(result)))
        return result, approval


@flow(name="incident_response", persist_result=False, log_prints=False)
def incident_response(
    advisory: str,
    inventory: str,
    triggered_by: TriggeredBy,
    mode: Mode = "dry-run",
    incident_id: str | None = None,
    window_start: datetime | None = None,
    window_end: datetime | None = None,
    known_good: list[str] | None = None,
    open_pull_requests: bool = True,
    remove_containers: bool = True,
    report_path: str | None = None,
) -> dict[str, Any]:
    """Run the playbook for ``advisory`` over the estate described by ``inventory``.

    ``mode``: ``dry-run`` plans everything and changes nothing; ``execute`` acts after approvals.
    ``known_good``: ``sha256:...`` for every affected tag, or ``TAG=sha256:...`` pairs (pin and purge verification).
    ``triggered_by``: who started the run. Always a required field of the form (the policy lives in the
    inventory, which the form cannot read); when the inventory's approval policy has ``distinct_from_trigger``,
    a run with it null or blank is refused at its first gate, saying so. No parameter skips a gate.
    ``remove_containers``: the purge plan also removes containers created from a malicious image (shown in the plan).
    Returns a summary with counts, ids and links only; when rotate or purge had failures the run ends
    Failed with that same summary as its data, so the record is never lost.
    """
    r = _open(advisory, inventory, mode, incident_id, triggered_by)
    summary: dict[str, Any] = {}
    try:
        with r.connections:
            detected = _detect(r)
            exposure = _assess(r, window_start, window_end)
            _rotate(r, exposure)
            _purge(r, detected, known_good, remove_containers)
            _pin(r, known_good, open_pull_requests)
        summary = run_summary(r.report)
    except BaseException as e:
        error = redact(f"{type(e).__name__}: {str(e)[:300]}")
        r.notifier.stage_update("flow", "failed", error)
        r.journal.event(r.incident, "flow", "failed", {"error": error})
        raise
    finally:
        summary.update(_finish(r, report_path))
    r.journal.event(r.incident, "flow", "finished", {"mode": mode})
    summary = {"incident": r.incident, "advisory": r.advisory.id, "mode": mode, "flow_run_id": r.run_id,
               "timings": r.timings, **summary}
    note = r.report.coverage_note()
    summary = {**({"coverage_note": note} if note else {}), **summary}
    failed = [s for s in ("rotate", "purge") if getattr(r.report, s) and not getattr(r.report, s).ok]
    summary["ok"] = not failed and note is None
    if failed:
        return Failed(message=f"incident {r.incident}: {', '.join(failed)} had failures; see the report {summary.get('report')}",
                      data=summary)
    if note and mode == "execute":
        return Failed(message=f"incident {r.incident}: incomplete: {note}", data=summary)
    return summary


def _open(advisory: str, inventory: str, mode: Mode, incident_id: str | None, triggered_by: str | None) -> Response:
    """Load the advisory and inventory, open the journal, the Slack board and the report; journal the start."""
    install_redaction()  # every log record of the run passes the one redactor
    adv = load_advisory(advisory)
    inv = load_inventory(inventory)
    journal = Journal(inv.journal_location())
    started = now()
    run_id = str(flow_run.id) if flow_run.id else None
    incident = incident_id or incident_id_for(adv.id, run_id, started)
    lease = hold_incident(journal, incident, run_id)  # one run per incident: a second one ends here, naming the holder
    journal.event(incident, "flow", "started", {"mode": mode, "flow_run_id": run_id, "triggered_by": triggered_by,
                                                "run_count": flow_run.run_count})
    notifier = Notifier.from_inventory(inv, journal, incident, advisory_id=adv.id, title=adv.title, run_url=flow_run_url(run_id))
    notifier.open_incident()
    report = IncidentReport.for_advisory(incident, adv, started_at=started, flow_run_url=flow_run_url(run_id),
                                         link_origins=inv.link_origins())
    get_run_logger().info("incident %s (%s, %s)", incident, adv.id, mode)
    print(f"flow run {run_id}: {flow_run_url(run_id) or '(no Prefect UI URL set)'}", file=sys.stderr, flush=True)
    return Response(advisory=adv, inventory=inv, incident=incident, dry_run=mode != "execute", journal=journal,
                    notifier=notifier, connections=Connections(inv), report=report, lease=lease, run_id=run_id,
                    triggered_by=triggered_by)


def _detect(r: Response) -> DetectResult:
    r.report.detect = detected = detect_task(r.advisory, r.inventory, r.connections)
    r.notifier.coverage_note = r.report.coverage_note()
    r.notifier.stage_update("detect", "done" if detected.verdict != "incomplete" else "partial",
                            counts_text(detected.counts()))
    r.lap("detect")
    return detected


def _assess(r: Response, window_start: datetime | None, window_end: datetime | None) -> ExposureReport:
    r.report.exposure = exposure = assess_exposure_task(r.advisory, r.inventory, detected_at=r.report.started_at,
                                                        start_override=window_start, end_override=window_end,
                                                        journal=r.journal)
    if exposure.tag_timelines:
        r.report = r.report.with_timelines(exposure.tag_timelines, r.advisory)
        r.journal.event(r.incident, "assess", "tag-timelines", r.report.timelines_journal_detail())
    r.notifier.coverage_note = r.report.coverage_note()
    jobs = f"{len(exposure.jobs_by('confirmed'))} confirmed, {len(exposure.jobs_by('probable'))} probable job(s)"
    r.notifier.stage_update("assess", "done" if exposure.verdict != "incomplete" else "partial",
                            f"{jobs}; {len(exposure.secrets)} secret(s); {len(exposure.network_hits)} network hit(s)",
                            details=exposure_markdown(exposure))
    r.lap("assess")
    return exposure


def _rotate(r: Response, exposure: ExposureReport) -> None:
    """Gate, rotate; then manual items wait for a person (a task cannot pause, so the flow does)."""
    plan = plan_rotation(r.incident, r.advisory, exposure, r.inventory)
    confirm_all = drill_person() if drill_approving() else None

    def apply(p: Plan, approval: Approval, confirm: Callable[[Any], bool] | None = confirm_all) -> StageResult:
        return rotate_task(p, approval, r.inventory, r.journal, r.connections, confirm_manual=confirm)

    r.report.rotate, approval = r.gate(plan, rotate_dry_run, apply)
    if approval is not None and approval.approved and not drill_approving():
        r.report.rotate = _confirm_manual_rotations(r, plan, approval, r.report.rotate, apply)
    r.lap("rotate")


def _confirm_manual_rotations(r: Response, plan: Plan, approval: Approval, result: StageResult, apply) -> StageResult:
    """Pause once per open manual checklist item, then re-apply the plan for the confirmed ones; the journal
    makes every finished secret a no-op on that second pass."""
    open_items = [i for i in plan.items if any(a.target == i.target and a.outcome == "needs-person" and a.detail.get("manual")
                                              for a in result.actions)]
    confirmed: set[str] = set()
    for item in open_items:
        r.notifier.stage_update("rotate", "awaiting-person", f"manual rotation of {item.target}: "
                                f"`digestguard confirm {r.run_id} --who NAME` or confirm in the Prefect UI")
        if confirm_manual_rotation(item, timeout=r.inventory.approvals.timeout_seconds):
            confirmed.add(item.target)
    if not confirmed:
        return result
    second = apply(plan, approval, lambda i: i.target in confirmed)
    first = {(a.target, a.action): a for a in result.actions}
    merged = [first[(a.target, a.action)] if a.outcome == "already-done" and (a.target, a.action) in first else a
              for a in second.actions]
    return second.model_copy(update={"actions": merged, "verification": result.verification + second.verification})


def _purge(r: Response, detected: DetectResult, known_good: list[str] | None, remove_containers: bool) -> None:
    plan = plan_purge(r.incident, r.advisory, detected, r.inventory, remove_containers=remove_containers)
    verify = known_good_targets(detected, known_good_map(r.advisory, known_good))

    def apply(p: Plan, approval: Approval) -> StageResult:
        return purge_task(p, approval, r.inventory, r.journal, r.connections, known_good=verify)

    r.report.purge, _approval = r.gate(plan, purge_dry_run, apply)
    if not plan.items and not r.dry_run:  # a re-run after the last deletion: verify, never "ok" on an empty plan
        again = reverify_purge(r.incident, r.advisory.id, r.inventory, r.journal, r.connections, known_good=verify)
        if again is not None:
            r.report.purge = again
            r.notifier.stage_update("purge", "done" if again.ok else "failed", counts_text(stage_counts(again)))
    r.lap("purge")


def _pin(r: Response, known_good: list[str] | None, open_pull_requests: bool) -> None:
    result, prs = pin_task(r.advisory, r.inventory, r.incident, r.journal, r.connections, dry_run=r.dry_run,
                           to=known_good, open_pull_requests=open_pull_requests)
    r.report.pin = result
    r.report.pull_requests = [PullRequestLink(**p) for p in prs]
    r.notifier.stage_update("pin", "planned" if r.dry_run else "done",
                            f"{result.count('planned') + result.count('done')} reference(s); {len(prs)} pull request(s)")
    r.lap("pin")


def _finish(r: Response, report_path: str | None) -> dict[str, Any]:
    """Notify and record, also after a failure: the report (HTML + artifacts) and Slack's final summary."""
    out: dict[str, Any] = {}
    r.report.finished_at = now()
    record_report(r.journal, r.report)  # the one truth: `digestguard report` rebuilds exactly this
    report = r.report.with_journal(r.journal)
    html = render_report_html(report)
    # the report lives where the team's state lives: inside the journal (SQLite or PostgreSQL) and, for a SQLite
    # journal, as a file beside it; the Prefect artifacts carry its bounded summary
    try:
        r.journal.save_report(r.incident, html)
        out["report_in_journal"] = r.journal.describe()
    except Exception as e:  # noqa: BLE001 - the record must not hide the response's own outcome
        get_run_logger().warning("report could not be kept in the journal: %s", e)
    beside = Path(r.journal.path).parent / "reports" if r.journal.path else r.inventory.resolve_path(".digestguard/reports")
    html_path = Path(report_path) if report_path else beside / f"{r.incident}.html"
    try:
        published = publish_report(report, html_path, html=html)
        out["report"] = str(html_path)
        out["artifacts"] = published.get("artifacts") if isinstance(published, dict) else None
    except Exception as e:  # noqa: BLE001 - the record must not hide the response's own outcome
        get_run_logger().warning("report could not be written: %s", e)
    r.notifier.final_summary(report, html=html, filename=f"{r.incident}.html")
    out["slack_failures"] = len(r.notifier.failures())
    out["needs_person"] = report.all_needs_person()
    r.lap("notify")
    r.lease.release()
    return out


def run_summary(report: IncidentReport) -> dict[str, Any]:
    """The flow's return value: counts, ids and links per stage (never a secret value)."""
    detected, exposure = report.detect, report.exposure
    note = report.coverage_note()
    out: dict[str, Any] = {"coverage_note": note} if note else {}
    found = bool((detected and detected.verdict == "found") or (exposure and exposure.verdict == "found"))
    out["verdict"] = overall_verdict(found, report.coverage())
    out["coverage"] = [c.model_dump(mode="json") for c in report.coverage()]
    if detected is not None:
        out["detect"] = detected.counts()
        out["detect_compromised"] = sorted({f.location for f in detected.findings if f.verdict == "compromised"})
    if exposure is not None:
        out["assess"] = {"confirmed": len(exposure.jobs_by("confirmed")), "probable": len(exposure.jobs_by("probable")),
                         "clear": len(exposure.jobs_by("clear")), "secrets": len(exposure.secrets),
                         "unmapped_secrets": sum(1 for s in exposure.secrets if not s.mapped),
                         "network_hits": len(exposure.network_hits)}
        out["assess_jobs"] = {j.job: j.verdict for j in exposure.jobs}
        out["assess_secrets"] = sorted({s.inventory_name or s.name for s in exposure.secrets})
    out["rotate"] = stage_counts(report.rotate)
    out["rotate_confirmed_manual"] = sorted(a.target.split(":", 1)[-1] for a in (report.rotate.actions if report.rotate else [])
                                            if a.detail.get("manual") and a.outcome in ("done", "already-done"))
    out["contain"] = {v.target.split(":", 1)[-1]: {k: v.detail.get(k) for k in
                                                  ("old_refused", "new_works", "copies_in_step",
                                                                           "used_after_exposure", "containment")}
                      for v in report.containment()}
    out["purge"] = stage_counts(report.purge)
    out["pin"] = {**stage_counts(report.pin), "pull_requests": [p.url for p in report.pull_requests]}
    return out


def stage_counts(result: StageResult | None) -> dict[str, int]:
    """``{outcome: count}`` of a stage's actions, plus verified / verify_failed."""
    out: dict[str, int] = {}
    for a in (result.actions if result else []):
        out[a.outcome] = out.get(a.outcome, 0) + 1
    if result and result.verification:
        out["verified"] = sum(1 for v in result.verification if v.outcome == "done")
        out["verify_failed"] = sum(1 for v in result.verification if v.outcome == "failed")
    return out


def counts_text(counts: dict[str, int]) -> str:
    """``2 done, 1 failed`` (or ``nothing found``)."""
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "nothing found"
