"""``incident_response``: the playbook as one Prefect flow.

    detect -> assess -> [approval] rotate -> [approval] purge -> pin -> notify

Each stage is one coarse task (it fans out inside); Slack hears about every
stage as it ends, about each approval request and decision, and about a failed
run. A dry run plans every stage, renders every plan and changes nothing
anywhere. An execute run changes nothing destructive without an approval
recorded on the flow run (``flows.approval``), and every side effect is
journaled, so re-running the same incident id resumes instead of repeating.

No secret is ever a parameter: the inventory names credentials by reference.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from digestguard.advisory import Advisory, load_advisory
from digestguard.errors import InputError
from digestguard.findings import ActionOutcome, StageResult
from digestguard.inventory import Inventory, load_inventory
from digestguard.journal import Journal
from digestguard.plan import Approval, Plan
from flows.approval import request_approval
from flows.incident_lease import hold_incident, incident_id_for

Mode = Literal["dry-run", "execute"]


def new_incident_id(advisory_id: str, now: datetime | None = None) -> str:
    """A readable, unique incident id: ``kics-2026-04-20261127-1930-3f2a``."""
    now = now or datetime.now(timezone.utc)
    return f"{advisory_id}-{now:%Y%m%d-%H%M}-{uuid.uuid4().hex[:4]}"


def known_good_map(advisory: Advisory, to: list[str] | None) -> dict[str, str]:
    """``--known-good`` values as {tag or '*': digest}; falls back to the advisory's known-good digests."""
    from tasks.pin import parse_to

    single, pairs = parse_to(to or None, advisory)
    out = dict(pairs)
    if single:
        out["*"] = single
    for img in advisory.images:
        for kg in img.known_good:
            if kg.tag and kg.digest:
                out.setdefault(kg.tag, kg.digest)
    return out


@task(name="pin", cache_policy=NO_CACHE)
def pin_stage(advisory: Advisory, inventory: Inventory, incident: str, journal_path: str, *, dry_run: bool,
              to: list[str] | None = None, open_pull_requests: bool = True) -> tuple[StageResult, list[dict[str, Any]]]:
    """Plan pins in every inventory repository; in execute mode push a branch and open/update a pull request."""
    from tasks.pin import plan_pins, render_pins
    from tasks.pull_requests import open_pin_pull_request

    journal = Journal(journal_path)
    result = StageResult(stage="pin", dry_run=dry_run)
    prs: list[dict[str, Any]] = []
    for repo in inventory.repositories:
        checkout = inventory.resolve_path(repo.path)
        try:
            plan = plan_pins(checkout, advisory, to=to or None, resolve=_resolver(inventory, advisory))
        except InputError as e:
            result.actions.append(ActionOutcome(stage="pin", target=repo.name, action="plan", outcome="failed", error=str(e)))
            continue
        for c in plan.changes:
            result.actions.append(ActionOutcome(stage="pin", target=f"{repo.name}:{c.path}:{c.line}", action="pin",
                                                outcome="planned" if dry_run else "done",
                                                detail={"before": c.before, "after": c.after}))
        for d in plan.needs_decision:
            result.actions.append(ActionOutcome(stage="pin", target=f"{repo.name}:{d.path}:{d.line or '-'}", action="decide",
                                                outcome="needs-person", detail={"reference": d.reference, "reason": d.reason}))
        if dry_run or not plan.changes or not open_pull_requests:
            continue
        out = open_pin_pull_request(repo, plan, advisory, incident, inventory, journal, rendered=render_pins(plan))
        result.actions.append(out)
        if out.outcome == "done":
            prs.append({"repository": repo.name, "url": out.detail.get("url") or out.detail.get("branch"),
                        "number": out.detail.get("number"), "changes": len(plan.changes),
                        "title": f"Pin {advisory.id} references", "state": "open"})
    return result, prs


def _resolver(inventory: Inventory, advisory: Advisory):
    """Tag -> digest for unaffected tags, through the inventory's first registry that mirrors the image (or none)."""
    regs = [r for r in inventory.registries if r.kind in ("distribution", "dockerhub")]
    if not regs:
        return None
    from tasks.detect import registry_client_for

    client = registry_client_for(regs[0])

    def resolve(ref) -> str:
        return client.resolve(ref.repository, ref.effective_tag)

    return resolve


@flow(name="incident_response", persist_result=False, log_prints=False)
def incident_response(
    advisory: str,
    inventory: str,
    mode: Mode = "dry-run",
    incident_id: str | None = None,
    window_start: datetime | None = None,
    window_end: datetime | None = None,
    known_good: list[str] | None = None,
    triggered_by: str | None = None,
    auto_approve: str | None = None,
    open_pull_requests: bool = True,
    remove_containers: bool = True,
    report_path: str | None = None,
) -> dict[str, Any]:
    """Run the playbook for ``advisory`` over the estate described by ``inventory``.

    ``mode``: ``dry-run`` plans everything and changes nothing; ``execute`` acts after approvals.
    ``known_good``: ``sha256:...`` for every affected tag, or ``TAG=sha256:...`` pairs (pin and purge verification).
    ``auto_approve``: an approver name recorded without pausing (the drill); never set it for a real incident.
    ``remove_containers``: the purge plan also removes containers created from a malicious image (shown in the plan).
    Returns a summary with counts, ids and links only; when rotate or purge had failures the run ends
    Failed with that same summary as its data, so the record is never lost.
    """
    from prefect.runtime import flow_run

    from tasks.assess import assess_exposure_task, exposure_markdown
    from tasks.detect import detect_task
    from tasks.notify import Notifier
    from tasks.purge import apply_purge, dry_run_result as purge_dry_run, plan_purge
    from tasks.report.model import IncidentReport, PullRequestLink, publish_report
    from tasks.rotate.stage import apply_rotation, dry_run_result as rotate_dry_run, plan_rotation

    log = get_run_logger()
    dry_run = mode != "execute"
    adv = load_advisory(advisory)
    inv = load_inventory(inventory)
    journal_path = inv.journal_location()
    journal = Journal(journal_path)
    started = datetime.now(timezone.utc)
    run_id = str(flow_run.id) if flow_run.id else None
    incident = incident_id or incident_id_for(adv.id, run_id, started)
    lease = hold_incident(journal, incident, run_id)  # one run per incident: a second one ends here, naming the holder
    journal.event(incident, "flow", "started", {"mode": mode, "flow_run_id": run_id, "triggered_by": triggered_by,
                                                "run_count": flow_run.run_count})
    from tasks.notify import flow_run_url

    notifier = Notifier.from_inventory(inv, journal, incident, advisory_id=adv.id, title=adv.title, run_url=flow_run_url(run_id))
    notifier.open_incident()
    report = IncidentReport.for_advisory(incident, adv, started_at=started, flow_run_url=flow_run_url(run_id))
    summary: dict[str, Any] = {"incident": incident, "advisory": adv.id, "mode": mode, "flow_run_id": run_id}
    log.info("incident %s (%s, %s)", incident, adv.id, mode)
    timings: dict[str, float] = {}
    summary["timings"] = timings
    clock = [time.monotonic()]

    def _lap() -> float:
        now = time.monotonic()
        took, clock[0] = round(now - clock[0], 2), now
        return took
    try:
        # 1. detect
        detected = detect_task(adv, inv)
        report.detect = detected
        counts = detected.counts()
        notifier.stage_update("detect", "done", _counts_text(counts))
        summary["detect"] = counts
        summary["detect_compromised"] = sorted({f.location for f in detected.findings if f.verdict == "compromised"})
        timings["detect"] = _lap()

        # 2. assess
        exposure = assess_exposure_task(adv, inv, detected_at=started, start_override=window_start, end_override=window_end)
        report.exposure = exposure
        notifier.stage_update("assess", "done",
                              f"{len(exposure.jobs_by('confirmed'))} confirmed, {len(exposure.jobs_by('probable'))} probable job(s); "
                              f"{len(exposure.secrets)} secret(s); {len(exposure.network_hits)} network hit(s)",
                              details=exposure_markdown(exposure))
        summary["assess"] = {"confirmed": len(exposure.jobs_by("confirmed")), "probable": len(exposure.jobs_by("probable")),
                             "clear": len(exposure.jobs_by("clear")), "secrets": len(exposure.secrets),
                             "unmapped_secrets": sum(1 for s in exposure.secrets if not s.mapped),
                             "network_hits": len(exposure.network_hits)}
        summary["assess_jobs"] = {j.job: j.verdict for j in exposure.jobs}
        summary["assess_secrets"] = sorted({s.inventory_name or s.name for s in exposure.secrets})
        timings["assess"] = _lap()

        # 3. rotate (gated)
        rplan = plan_rotation(incident, adv, exposure, inv)
        auto_manual = (lambda item: True) if auto_approve else None
        report.rotate, rapproval = _gated(rplan, dry_run, journal, inv, notifier, triggered_by, auto_approve, rotate_dry_run,
                                          lambda plan, appr: apply_rotation(plan, appr, inv, journal, confirm_manual=auto_manual))
        if rapproval is not None and rapproval.approved and not auto_approve:
            report.rotate = _confirm_manual_rotations(rplan, rapproval, report.rotate, notifier,
                                                      lambda plan, appr, confirmed: apply_rotation(
                                                          plan, appr, inv, journal, confirm_manual=lambda i: i.target in confirmed))
        _approval_record(report, rplan, rapproval)
        summary["rotate"] = _stage_counts(report.rotate)
        summary["rotate_confirmed_manual"] = sorted(a.target.split(":", 1)[-1] for a in report.rotate.actions
                                                    if a.detail.get("manual") and a.outcome in ("done", "already-done"))
        timings["rotate"] = _lap()

        # 4. purge (gated)
        kg = known_good_map(adv, known_good)
        pplan = plan_purge(incident, adv, detected, inv, remove_containers=remove_containers)
        verify_targets = _known_good_targets(detected, kg)
        report.purge, papproval = _gated(pplan, dry_run, journal, inv, notifier, triggered_by, auto_approve, purge_dry_run,
                                         lambda plan, appr: apply_purge(plan, appr, inv, journal, known_good=verify_targets))
        _approval_record(report, pplan, papproval)
        summary["purge"] = _stage_counts(report.purge)
        timings["purge"] = _lap()

        # 5. pin
        pin_result, prs = pin_stage(adv, inv, incident, journal_path, dry_run=dry_run, to=known_good,
                                    open_pull_requests=open_pull_requests)
        report.pin = pin_result
        report.pull_requests = [PullRequestLink(**p) for p in prs]
        notifier.stage_update("pin", "planned" if dry_run else "done",
                              f"{pin_result.count('planned') + pin_result.count('done')} reference(s); {len(prs)} pull request(s)")
        summary["pin"] = {**_stage_counts(pin_result), "pull_requests": [p["url"] for p in prs]}
        timings["pin"] = _lap()
    except BaseException as e:
        notifier.stage_update("flow", "failed", f"{type(e).__name__}: {str(e)[:300]}")
        journal.event(incident, "flow", "failed", {"error": f"{type(e).__name__}: {str(e)[:300]}"})
        raise
    finally:
        # 6. notify + record, also after a failure
        report.finished_at = datetime.now(timezone.utc)
        report = report.with_journal(journal)
        html_path = Path(report_path) if report_path else inv.resolve_path(f".digestguard/reports/{incident}.html")
        try:
            published = publish_report(report, html_path)
            summary["report"] = str(html_path)
            summary["artifacts"] = published.get("artifacts") if isinstance(published, dict) else None
        except Exception as e:  # the record must not hide the response's own outcome
            log.warning("report could not be written: %s", e)
        from tasks.report.model import render_report_html

        notifier.final_summary(report, html=render_report_html(report) if html_path else None, filename=f"{incident}.html")
        summary["slack_failures"] = len(notifier.failures())
        summary["needs_person"] = report.all_needs_person()
        timings["notify"] = _lap()
        lease.release()
    journal.event(incident, "flow", "finished", {"mode": mode})
    failed = [s for s in ("rotate", "purge") if getattr(report, s) and not getattr(report, s).ok]
    summary["ok"] = not failed
    if failed:
        from prefect.states import Failed

        return Failed(message=f"incident {incident}: {', '.join(failed)} had failures; see the report {summary.get('report')}",
                      data=summary)
    return summary


def _gated(plan: Plan, dry_run: bool, journal: Journal, inv: Inventory, notifier, triggered_by: str | None,
           auto_approve: str | None, dry, apply) -> tuple[StageResult, Approval | None]:
    """Dry run: the plan as a result. Execute: approval (or its absence) decides; the stage runs only when approved."""
    stage = plan.stage
    if dry_run:
        notifier.stage_update(stage, "planned", f"{len(plan.items)} action(s) planned (dry run), plan {plan.short_hash}",
                              details=plan.markdown())
        return dry(plan), None
    if not plan.items:
        notifier.stage_update(stage, "done", "nothing to do")
        return StageResult(stage=stage, plan_hash=plan.hash), None

    def asked(p: Plan, run_id: str | None) -> None:
        notifier.request_approval(p, flow_run_id=run_id, policy=inv.approvals, triggered_by=triggered_by)

    approval = request_approval(plan, journal, inv.approvals, triggered_by=triggered_by, auto_approver=auto_approve, on_asked=asked)
    notifier.record_decision(plan, approval, policy=inv.approvals)
    if not approval.approved:
        notifier.stage_update(stage, "rejected", f"not run: {approval.reason or 'rejected'} ({', '.join(approval.approvers)})")
        result = StageResult(stage=stage, plan_hash=plan.hash, notes=[f"rejected by {', '.join(approval.approvers)}: {approval.reason}"],
                             actions=[ActionOutcome(stage=stage, target=i.target, action=i.action, outcome="skipped",
                                                    detail={"reason": "not approved"}) for i in plan.items])
        return result, approval
    result = _run_stage_task(stage, apply, plan, approval)
    notifier.stage_update(stage, "done" if result.ok else "failed", _counts_text(_stage_counts(result)))
    return result, approval


def _run_stage_task(stage: str, apply, plan: Plan, approval: Approval) -> StageResult:
    """Run the stage's apply function as its own Prefect task run (no result persisted: ids only anyway)."""
    t = task(name=stage, cache_policy=NO_CACHE, persist_result=False)(lambda: apply(plan, approval))
    return t()


def _confirm_manual_rotations(plan: Plan, approval: Approval, result: StageResult, notifier, reapply) -> StageResult:
    """Manual rotations wait for a person: the flow pauses once per open checklist item (a task cannot pause),
    then re-applies the plan; the journal makes every finished secret a no-op on that second pass."""
    from flows.approval import confirm_manual_rotation

    open_items = [i for i in plan.items if any(a.target == i.target and a.outcome == "needs-person" and a.detail.get("manual")
                                              for a in result.actions)]
    if not open_items:
        return result
    confirmed: set[str] = set()
    for item in open_items:
        notifier.stage_update("rotate", "awaiting-person", f"manual rotation of {item.target}: confirm in the Prefect UI")
        if confirm_manual_rotation(item):
            confirmed.add(item.target)
    if not confirmed:
        return result
    second = _run_stage_task("rotate", lambda p, a: reapply(p, a, confirmed), plan, approval)
    first = {(a.target, a.action): a for a in result.actions}
    merged = [first[(a.target, a.action)] if a.outcome == "already-done" and (a.target, a.action) in first else a
              for a in second.actions]
    return second.model_copy(update={"actions": merged, "verification": result.verification + second.verification})


def _known_good_targets(detected, kg: dict[str, str]) -> dict[str, str]:
    """Purge verification targets {registry/repo: digest} for every registry repo where something was compromised."""
    if not kg:
        return {}
    out: dict[str, str] = {}
    for f in detected.findings:
        if f.kind == "registry" and f.verdict == "compromised":
            from tasks.purge import _repo_of

            tag = f.detail.get("tag")
            digest = kg.get(tag) if tag else None
            digest = digest or kg.get("*") or kg.get("latest")
            if digest:
                out.setdefault(f"{f.source}/{_repo_of(f.location, f.source)}", digest)
    return out


def _approval_record(report, plan: Plan, approval: Approval | None) -> None:
    if approval is not None:
        from tasks.report.model import ApprovalRecord

        report.approvals.append(ApprovalRecord.from_approval(plan.stage, approval))


def _stage_counts(result: StageResult | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for a in (result.actions if result else []):
        out[a.outcome] = out.get(a.outcome, 0) + 1
    if result and result.verification:
        out["verified"] = sum(1 for v in result.verification if v.outcome == "done")
        out["verify_failed"] = sum(1 for v in result.verification if v.outcome == "failed")
    return out


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "nothing found"
