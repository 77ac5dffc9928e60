"""The approval gate: show a plan, pause the flow run, return a decision bound to the plan's hash.

Destructive stages (rotate, purge) never run without an approval recorded on
the flow run. The gate pauses with ``pause_flow_run(wait_for_input=...)``: the
Prefect UI shows the plan's Markdown (items, evidence, hash) above a flat form
(decision, approver, reason, plan hash). The decision only counts for the plan
whose hash it carries, so a plan that changed since it was shown must be
approved again.

Approvals are journaled under (incident, "approval", stage, plan hash): a re-run
of the same incident with an unchanged plan honours the approval already given
instead of asking again. Pause keys carry the flow run's run count, so a retried
run (the UI's Retry) asks again where it must.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Callable, Literal
from uuid import UUID

from prefect import get_client, get_run_logger, pause_flow_run
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import resume_flow_run
from prefect.input import RunInput
from prefect.input.actions import read_flow_run_input
from prefect.input.run_input import keyset_from_paused_state
from prefect.runtime import flow_run
from pydantic import Field

from digestguard.errors import InputError
from digestguard.inventory import ApprovalPolicy
from digestguard.journal import Journal
from digestguard.plan import Approval, Plan
from tasks.notify import flow_run_url

APPROVAL_STAGE = "approval"
MAX_ASKS = 5
HASH_IN_DESCRIPTION = re.compile(r"Plan hash `(sha256:[0-9a-f]{64})`")


class ApprovalForm(RunInput):
    """The resume form an approver fills in (flat, so the Prefect UI renders it as plain fields)."""

    decision: Literal["approve", "reject"] = Field(description="approve runs the plan above; reject skips the stage")
    approver: str = Field(min_length=1, description="your handle, as it should appear in the record")
    reason: str = Field("", description="why (shown in Slack and the report)")
    plan_hash: str = Field(description="the hash of the plan you read; leave as shown")


def approval_from_journal(journal: Journal, plan: Plan) -> Approval | None:
    """An approval already given for exactly this plan in an earlier run of the incident."""
    e = journal.get(plan.incident, APPROVAL_STAGE, plan.stage, plan.hash)
    if e is None or e.status != "done":
        return None
    return Approval(decision="approve", approvers=e.detail.get("approvers", []) or [e.approver or "?"],
                    reason=e.detail.get("reason", ""), plan_hash=plan.hash,
                    at=datetime.fromisoformat(e.finished_at) if e.finished_at else datetime.now(timezone.utc),
                    flow_run_id=e.detail.get("flow_run_id"))


def _record(journal: Journal, plan: Plan, approval: Approval) -> None:
    journal.record(plan.incident, APPROVAL_STAGE, plan.stage, plan.hash, "done" if approval.approved else "failed",
                   detail={"approvers": approval.approvers, "reason": approval.reason, "decision": approval.decision,
                           "flow_run_id": approval.flow_run_id},
                   approver=",".join(approval.approvers),
                   error=None if approval.approved else f"rejected: {approval.reason}"[:300])


def request_approval(plan: Plan, journal: Journal, policy: ApprovalPolicy, *, triggered_by: str | None = None,
                     auto_approver: str | None = None, on_asked: Callable[[Plan, str | None], None] | None = None) -> Approval:
    """Ask for (or find) an approval of ``plan``; always returns a decision (reject on timeout).

    ``auto_approver`` (the drill's ``--auto-approve``) records that name without pausing.
    ``on_asked`` is called once before pausing (the Slack approval request).
    """

    log = get_run_logger()
    done = approval_from_journal(journal, plan)
    if done is not None:
        log.info("%s plan %s was already approved by %s; honouring it", plan.stage, plan.short_hash, ", ".join(done.approvers))
        return done
    run_id = str(flow_run.id) if flow_run.id else None
    if auto_approver:
        approval = Approval(decision="approve", approvers=[auto_approver], reason="auto-approved", plan_hash=plan.hash,
                            flow_run_id=run_id)
        _record(journal, plan, approval)
        return approval

    needed = 2 if policy.two_approvers else 1
    approvers: list[str] = []
    reasons: list[str] = []
    journal.event(plan.incident, APPROVAL_STAGE, "asked", {"stage": plan.stage, "plan_hash": plan.hash, "flow_run_id": run_id})
    if on_asked:
        on_asked(plan, run_id)
    description = plan.markdown() + _rules_text(policy, triggered_by, needed)

    log.warning("APPROVAL NEEDED for the %s stage\n%s\n\nApprove in the Prefect UI: %s\nor: digestguard approve %s --approver NAME "
                "[--reject --reason TEXT]", plan.stage, description, flow_run_url(run_id) or "(no UI URL)", run_id)
    for attempt in range(1, MAX_ASKS + 1):
        key = f"{plan.stage}-{flow_run.run_count or 1}-{plan.short_hash}-{attempt}"
        try:
            form = pause_flow_run(
                wait_for_input=ApprovalForm.with_initial_data(description=description, plan_hash=plan.hash, decision="approve",
                                                              approver="", reason=""),
                timeout=policy.timeout_seconds, poll_interval=1, key=key)
        except FlowPauseTimeout:
            approval = Approval(decision="reject", approvers=approvers or ["(nobody)"], plan_hash=plan.hash,
                                reason=f"no decision within {policy.timeout_seconds} s", flow_run_id=run_id)
            _record(journal, plan, approval)
            return approval
        problem = _problem(form, plan, policy, triggered_by, approvers)
        if form.decision == "reject":
            approval = Approval(decision="reject", approvers=[form.approver], reason=form.reason, plan_hash=plan.hash,
                                flow_run_id=run_id)
            _record(journal, plan, approval)
            return approval
        if problem:
            log.warning("approval by %s not accepted: %s; asking again", form.approver, problem)
            journal.event(plan.incident, APPROVAL_STAGE, "refused", {"stage": plan.stage, "approver": form.approver, "why": problem})
            description = f"**Previous answer not accepted: {problem}.**\n\n" + plan.markdown() + _rules_text(policy, triggered_by, needed)
            continue
        approvers.append(form.approver)
        if form.reason:
            reasons.append(form.reason)
        if len(approvers) >= needed:
            approval = Approval(decision="approve", approvers=approvers, reason="; ".join(reasons), plan_hash=plan.hash,
                                flow_run_id=run_id)
            _record(journal, plan, approval)
            return approval
        description = f"**Approved by {', '.join(approvers)}; a second, different approver is required.**\n\n" + plan.markdown()
    approval = Approval(decision="reject", approvers=approvers or ["(nobody)"], plan_hash=plan.hash,
                        reason=f"no acceptable approval after {MAX_ASKS} answers", flow_run_id=run_id)
    _record(journal, plan, approval)
    return approval


def _problem(form: ApprovalForm, plan: Plan, policy: ApprovalPolicy, triggered_by: str | None, approvers: list[str]) -> str | None:
    if form.plan_hash.strip() != plan.hash:
        return f"the answer names plan {form.plan_hash[:19]}..., but the plan now is {plan.short_hash}: read it and approve again"
    if form.decision == "approve" and policy.distinct_from_trigger and triggered_by and form.approver == triggered_by:
        return f"{form.approver} started this run and may not approve it"
    if form.decision == "approve" and form.approver in approvers:
        return f"{form.approver} already approved; a different second approver is required"
    return None


def _rules_text(policy: ApprovalPolicy, triggered_by: str | None, needed: int) -> str:
    rules = []
    if policy.distinct_from_trigger and triggered_by:
        rules.append(f"the approver must not be {triggered_by}, who started the run")
    if needed > 1:
        rules.append("two distinct approvers are required")
    return ("\n\n**Rules:** " + "; ".join(rules) + ".") if rules else ""


def plan_hash_of_paused_run(description: str | None) -> str | None:
    """The plan hash shown in a paused run's form description (used by ``digestguard approve``)."""
    m = HASH_IN_DESCRIPTION.search(description or "")
    return m.group(1) if m else None


class ManualRotationForm(RunInput):
    """A person confirms a credential the playbook cannot change at its source was rotated by hand."""

    rotated: bool = Field(description="true once the credential was rotated and the old one revoked")
    who: str = Field(min_length=1, description="your handle")
    note: str = Field("", description="where/how (no secret values)")


def confirm_manual_rotation(item) -> bool:
    """Pause until a person confirms a manual rotation item; False on timeout or 'not rotated'."""

    key = f"manual-{flow_run.run_count or 1}-{re.sub(r'[^a-z0-9-]', '-', item.target.lower())[:60]}"
    try:
        form = pause_flow_run(
            wait_for_input=ManualRotationForm.with_initial_data(
                description=f"### Manual rotation: `{item.target}`\n\n{item.reason}\n\nRotate it at its source, revoke the old "
                            "credential, update its consumers, then confirm here.", rotated=False, who=""),
            timeout=3600, poll_interval=1, key=key)
    except FlowPauseTimeout:
        return False
    return bool(form.rotated)


def answer_paused_run(flow_run_id: str, *, approver: str, reject: bool = False, reason: str = "") -> str:
    """Answer a paused approval gate from outside the flow (``digestguard approve``); returns the plan hash answered.

    The answer carries the hash of the plan the gate is showing right now, read from the pause's own
    description, so the approver approves exactly what the UI would show.
    """



    run_uuid = UUID(flow_run_id)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_uuid)
    if not run.state or not run.state.is_paused():
        raise InputError(flow_run_id, f"flow run is {run.state.name if run.state else 'unknown'}, not paused at a gate")
    keyset = keyset_from_paused_state(run.state)
    description = read_flow_run_input(keyset["description"], flow_run_id=run_uuid)
    plan_hash = plan_hash_of_paused_run(description if isinstance(description, str) else str(description))
    if not plan_hash:
        raise InputError(flow_run_id, "the paused run is not waiting at a digestguard approval gate")
    resume_flow_run(run_uuid, run_input={"decision": "reject" if reject else "approve", "approver": approver,
                                         "reason": reason, "plan_hash": plan_hash})
    return plan_hash
