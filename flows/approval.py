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

import json
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from typing import Any, Callable, Literal
from uuid import UUID

from prefect import get_client, get_run_logger, pause_flow_run
from prefect.exceptions import FlowPauseTimeout
from prefect.input import RunInput
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL
from prefect.states import Running
from pydantic import Field, ValidationError

from digestguard.errors import DigestguardError
from digestguard.inventory import ApprovalPolicy
from digestguard.journal import Journal
from digestguard.markdown import md_cell, md_code
from digestguard.plan import Approval, Plan
from flows.answer import answer_gate, confirm_manual
from flows.identity import verify_answer
from integrations.slack import ButtonClick
from tasks.notify import flow_run_url

APPROVAL_STAGE = "approval"
MAX_ASKS = 12


class ApprovalForm(RunInput):
    """The resume form an approver fills in (flat, so the Prefect UI renders it as plain fields).

    Nothing here approves by default: ``decision`` starts at ``reject``, ``approver`` and ``plan_hash`` start
    empty, and the gate refuses an answer without a name or with a hash other than the plan's. The transport
    schema accepts any string on purpose: a blank or malformed answer must reach the gate so it is journaled as
    refused and the gate asks again saying why (a schema refusal at the server would leave no record).
    """

    decision: Literal["approve", "reject"] = Field("reject", description="approve runs the plan above; reject skips the stage")
    approver: str = Field("", description="required: your handle, as it should appear in the record")
    reason: str = Field("", description="why (shown in Slack and the report)")
    plan_hash: str = Field("", description="required: copy the plan hash shown above (sha256:...)")
    signature: str = Field("", description="terminal answers only (digestguard approve --sign); leave empty here")
    slack_confirmation: str = Field("", description="Slack button answers only; leave empty here")


def normalise_name(name: str | None) -> str:
    """A person's handle as every rule compares it: whitespace trimmed and collapsed, case-folded."""
    return " ".join((name or "").split()).casefold()


def approval_from_journal(journal: Journal, plan: Plan) -> Approval | None:
    """An approval already given for exactly this plan in an earlier run of the incident."""
    e = journal.get(plan.incident, APPROVAL_STAGE, plan.stage, plan.hash)
    if e is None or e.status != "done":
        return None
    return Approval(decision="approve", approvers=e.detail.get("approvers", []) or [e.approver or "?"],
                    reason=e.detail.get("reason", ""), plan_hash=plan.hash,
                    at=datetime.fromisoformat(e.finished_at) if e.finished_at else datetime.now(timezone.utc),
                    flow_run_id=e.detail.get("flow_run_id"), identities=e.detail.get("identities", []))


def _record(journal: Journal, plan: Plan, approval: Approval) -> None:
    journal.record(plan.incident, APPROVAL_STAGE, plan.stage, plan.hash, "done" if approval.approved else "failed",
                   detail={"approvers": approval.approvers, "reason": approval.reason, "decision": approval.decision,
                           "flow_run_id": approval.flow_run_id, "identities": approval.identities,
                           "expired": approval.expired},
                   approver=",".join(approval.approvers),
                   error=None if approval.approved
                   else f"{'expired' if approval.expired else 'rejected'}: {approval.reason}"[:300])


@dataclass
class _Gate:
    """One gate's asking state: the plan, the rules, who approved so far, and when it gives up."""

    plan: Plan
    journal: Journal
    policy: ApprovalPolicy
    triggered_by: str
    run_id: str | None
    deadline: float
    approvers: list[str] = field(default_factory=list)
    identities: list[dict[str, str]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    log: Any = None
    api: str | None = None
    slack_confirmations: dict[str, str] = field(default_factory=dict)  # one-time token -> approver (Slack-verified)

    @property
    def needed(self) -> int:
        return 2 if self.policy.two_approvers else 1

    def decide(self, decision: str, reason: str, *, expired: bool = False, approvers: list[str] | None = None) -> Approval:
        approval = Approval(decision=decision, approvers=approvers or self.approvers or ["(nobody)"], reason=reason,
                            plan_hash=self.plan.hash, flow_run_id=self.run_id, identities=list(self.identities),
                            expired=expired)
        _record(self.journal, self.plan, approval)
        return approval

    def refuse(self, raw_approver: str, why: str) -> None:
        (self.log or get_run_logger()).warning("answer from %r not accepted: %s; asking again", raw_approver[:80], why)
        self.journal.event(self.plan.incident, APPROVAL_STAGE, "refused",
                           {"stage": self.plan.stage, "approver": raw_approver[:80], "why": why, "flow_run_id": self.run_id})

    def description(self, header: str = "") -> str:
        return (header + self.plan.markdown() + _rules_text(self.policy, self.triggered_by, self.needed)
                + "\n\nAnswer with your handle and the plan hash above; the decision starts at *reject*.")


def request_approval(plan: Plan, journal: Journal, policy: ApprovalPolicy, *, triggered_by: str | None = None,
                     on_asked: Callable[[Plan, str | None], None] | None = None,
                     buttons: Callable[[Callable[[ButtonClick], None]], Any] | None = None) -> Approval:
    """Ask for (or find) an approval of ``plan``; always returns a decision (reject on timeout or refusal).

    ``on_asked`` is called once before pausing (the Slack approval request). ``buttons(on_click)`` starts the
    Slack Socket Mode listener for the request's approve/reject buttons (returns it, or None). The drill's
    automatic approver is not reachable from here by any parameter: it is a context the drill sets in-process
    (:func:`drill_approver`). An earlier approval of the same plan is honoured only if it meets today's policy.
    """

    log = get_run_logger()
    done = approval_from_journal(journal, plan)
    if done is not None and not _meets_policy(done, policy):
        log.warning("%s plan %s was approved earlier by %s, which does not meet the approval policy now; asking again",
                    plan.stage, plan.short_hash, ", ".join(done.approvers))
        done = None
    if done is not None:
        log.info("%s plan %s was already approved by %s; honouring it", plan.stage, plan.short_hash, ", ".join(done.approvers))
        return done
    run_id = str(flow_run.id) if flow_run.id else None
    gate = _Gate(plan, journal, policy, normalise_name(triggered_by), run_id, time.monotonic() + policy.timeout_seconds,
                 log=log, api=str(PREFECT_API_URL.value() or "") or None)
    auto = _DRILL_APPROVER.get()
    if auto:
        gate.approvers, gate.identities = [auto], [{"name": auto, "via": "drill", "verified": "no"}]
        return gate.decide("approve", "the drill's automatic approver")
    if policy.distinct_from_trigger and not gate.triggered_by:
        journal.event(plan.incident, APPROVAL_STAGE, "refused",
                      {"stage": plan.stage, "why": "no triggered_by", "flow_run_id": run_id})
        return gate.decide("reject", "this inventory requires the approver to differ from whoever started the run, and "
                                     "this run does not say who started it: start it again with triggered_by set")
    journal.event(plan.incident, APPROVAL_STAGE, "asked", {"stage": plan.stage, "plan_hash": plan.hash, "flow_run_id": run_id})
    if on_asked:
        on_asked(plan, run_id)
    listener = buttons(partial(_slack_click, gate)) if buttons else None
    try:
        return _ask_until_decided(gate)
    finally:
        if listener is not None:
            listener.close()


def _meets_policy(approval: Approval, policy: ApprovalPolicy) -> bool:
    """Whether a recorded approval still satisfies the policy (enough people; verified ones where required)."""
    ids = approval.identities or [{"name": n, "via": "?", "verified": "no"} for n in approval.approvers]
    counted = [i for i in ids if i.get("verified") == "yes" or not policy.require_verified]
    return len({i.get("name") for i in counted}) >= (2 if policy.two_approvers else 1)


def _ask_until_decided(gate: _Gate) -> Approval:
    """Pause, read the answer, refuse or count it, until the gate has its decision (or its time runs out)."""
    plan, policy, run_id, log = gate.plan, gate.policy, gate.run_id, gate.log
    description = gate.description()
    log.warning("APPROVAL NEEDED for the %s stage\n%s\n\nApprove in the Prefect UI: %s\n"
                "or: digestguard approve %s --approver NAME [--reject --reason TEXT]",
                plan.stage, description, flow_run_url(run_id) or "(no UI URL)", run_id)
    for attempt in range(1, MAX_ASKS + 1):
        form = _ask(gate, description, attempt)
        if form is None:
            return gate.decide("reject", f"no decision within {policy.timeout_seconds} s", expired=True)
        name, problem = _problem(form, gate)
        identity: dict[str, str] = {}
        if not problem:
            identity, problem = _identify(form, name, gate)
        if problem:
            gate.refuse(form.approver, problem)
            description = gate.description(f"**Previous answer not accepted: {problem}.**\n\n")
            continue
        if form.decision == "reject":
            gate.identities = [identity]
            return gate.decide("reject", form.reason, approvers=[name])
        gate.approvers.append(name)
        gate.identities.append(identity)
        if form.reason:
            gate.reasons.append(form.reason)
        if len(gate.approvers) >= gate.needed:
            return gate.decide("approve", "; ".join(gate.reasons))
        description = gate.description(f"**Approved by {', '.join(gate.approvers)}; "
                                       "a second, different approver is required.**\n\n")
    return gate.decide("reject", f"no acceptable approval after {MAX_ASKS} answers")


def _slack_click(gate: _Gate, click: ButtonClick) -> None:
    """An approve/reject button click from Slack (Socket Mode thread). Slack sets the user id, so a listed
    approver's ``slack_user_id`` is a verified identity: the click resumes the gate with a one-time token only
    this process knows; anyone else's click is refused and journaled."""
    who = f"slack:{click.user_id}"
    try:
        value = json.loads(click.value)
    except ValueError:
        value = {}
    if value.get("run") != gate.run_id or value.get("plan_hash") != gate.plan.hash or value.get("stage") != gate.plan.stage:
        return  # a button of another gate or run: not this gate's business
    listed = next((a for a in gate.policy.approvers if a.slack_user_id and a.slack_user_id == click.user_id), None)
    if listed is None:
        gate.refuse(who, f"Slack user {click.user_id} is not a listed approver (approvals.approvers[].slack_user_id)")
        return
    token = secrets.token_urlsafe(24)
    gate.slack_confirmations[token] = listed.name
    try:
        answer_gate(gate.run_id or "", approver=listed.name, reject=click.decision == "reject", reason="answered in Slack",
                    api=gate.api, extra={"slack_confirmation": token})
    except DigestguardError as e:
        gate.slack_confirmations.pop(token, None)
        gate.refuse(who, f"the Slack answer could not be delivered: {e}")


def _identify(form: ApprovalForm, name: str, gate: _Gate) -> tuple[dict[str, str], str | None]:
    """How the answer proves who sent it: a listed approver's SSH signature (verified), else asserted
    (a Prefect UI or unsigned terminal answer: anyone with API access could have typed that name)."""
    policy = gate.policy
    listed = policy.approver(name)
    if policy.approvers and listed is None:
        return {}, f"{name} is not a listed approver (approvals.approvers)"
    if (form.slack_confirmation or "").strip():
        confirmed = gate.slack_confirmations.pop(form.slack_confirmation.strip(), None)
        if confirmed is None or confirmed != name:
            return {}, "the Slack confirmation is not one this gate issued for that approver"
        return {"name": name, "via": "slack", "verified": "yes"}, None
    if (form.signature or "").strip():
        if listed is None or not listed.ssh_key:
            return {}, f"{name} has no SSH key in approvals.approvers, so the signature cannot be verified"
        if not verify_answer(form.signature, principal=name, public_key=listed.ssh_key, plan_hash=gate.plan.hash,
                             run_id=gate.run_id or "", decision=form.decision):
            return {}, f"the SSH signature does not verify as {name}'s for this run, plan and decision"
        return {"name": name, "via": "ssh", "verified": "yes"}, None
    if policy.require_verified:
        return {}, (f"{name}'s answer is an asserted identity (Prefect UI or unsigned terminal) and this inventory requires "
                    "a verified one: `digestguard approve RUN --approver NAME --sign KEY`")
    return {"name": name, "via": "prefect-ui", "verified": "no"}, None


def _ask(gate: _Gate, description: str, attempt: int) -> ApprovalForm | None:
    """One pause for an answer; None when the gate's time ran out (the run is then set running again)."""
    left = max(1, int(gate.deadline - time.monotonic()))
    key = f"{gate.plan.stage}-{flow_run.run_count or 1}-{gate.plan.short_hash}-{attempt}"
    try:
        return pause_flow_run(wait_for_input=ApprovalForm.with_initial_data(description=description),
                              timeout=left, poll_interval=1, key=key)
    except FlowPauseTimeout:
        resume_after_timeout(gate.run_id)
        return None
    except ValidationError:  # an answer the form's own types refuse counts as no answer: refused, asked again
        return ApprovalForm.model_construct(decision="reject", approver="", reason="", plan_hash="")


def resume_after_timeout(run_id: str | None) -> None:
    """After a pause timed out the server still shows the run Paused: set it Running so the flow can go on
    (the next gate can pause again) and the final state is never Paused."""
    if not run_id:
        return
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(run_id))
        if run.state and run.state.is_paused():
            client.set_flow_run_state(UUID(run_id), state=Running(message="approval timed out; going on"), force=True)


def _problem(form: ApprovalForm, gate: _Gate) -> tuple[str, str | None]:
    """The normalised approver and why the answer cannot count (None: it counts)."""
    name = normalise_name(form.approver)
    given = (form.plan_hash or "").strip()
    if not name:
        return name, "no approver named: type your handle"
    if not given:
        return name, "no plan hash: copy the plan hash shown above the form"
    if given != gate.plan.hash:
        return name, (f"the answer names plan {given[:19]}..., but the plan now is {gate.plan.short_hash}: "
                      "read it and approve again")
    if form.decision == "approve" and gate.policy.distinct_from_trigger and name == gate.triggered_by:
        return name, f"{name} started this run and may not approve it"
    if form.decision == "approve" and name in gate.approvers:
        return name, f"{name} already approved; a different second approver is required"
    return name, None


def _rules_text(policy: ApprovalPolicy, triggered_by: str | None, needed: int) -> str:
    rules = []
    if policy.distinct_from_trigger and triggered_by:
        rules.append(f"the approver must not be {triggered_by}, who started the run")
    if needed > 1:
        rules.append("two distinct approvers are required")
    return ("\n\n**Rules:** " + "; ".join(rules) + ".") if rules else ""


_DRILL_APPROVER: ContextVar[str | None] = ContextVar("digestguard_drill_approver", default=None)
_DRILL_PERSON: ContextVar[Callable[[Any], bool] | None] = ContextVar("digestguard_drill_person", default=None)


@contextmanager
def drill_approver(name: str = "drill", person: Callable[[Any], bool] | None = None) -> Iterator[None]:
    """Approve every gate as ``name`` inside this block, in this process only (the drill's sandbox run).

    ``person(item) -> bool`` plays the person of manual rotation items (the drill rotates its manual
    credential at the sandbox's vendor and puts the new value in its store); without it they are confirmed.
    A Python context, never a flow parameter: no deployment, UI form or API call can set it.
    """
    token = _DRILL_APPROVER.set(name)
    ptoken = _DRILL_PERSON.set(person)
    try:
        yield
    finally:
        _DRILL_PERSON.reset(ptoken)
        _DRILL_APPROVER.reset(token)


def drill_person() -> Callable[[Any], bool]:
    """Who answers manual items under the drill's approver (the drill's person, or "confirmed")."""
    return _DRILL_PERSON.get() or (lambda item: True)


def drill_approving() -> bool:
    """Whether the drill's automatic approver is active in this context."""
    return bool(_DRILL_APPROVER.get())


class ManualRotationForm(RunInput):
    """A person confirms a credential the playbook cannot change at its source was rotated by hand."""

    rotated: bool = Field(description="true once the credential was rotated and the old one revoked")
    who: str = Field(min_length=1, description="your handle")
    note: str = Field("", description="where/how (no secret values)")


def confirm_manual_rotation(item, timeout: int = 3600) -> bool:
    """Pause until a person confirms a manual rotation item (``digestguard confirm`` or the UI); False on
    timeout, on 'not rotated', or without a name. A timeout sets the run running again, so the run goes on."""

    key = f"manual-{flow_run.run_count or 1}-{re.sub(r'[^a-z0-9-]', '-', item.target.lower())[:60]}"
    try:
        form = pause_flow_run(
            wait_for_input=ManualRotationForm.with_initial_data(
                description=f"### Manual rotation: `{md_code(item.target)}`\n\n{md_cell(item.reason)}\n\nRotate it at its source, revoke the old "
                            "credential, update its consumers, then confirm here.", rotated=False, who=""),
            timeout=timeout, poll_interval=1, key=key)
    except FlowPauseTimeout:
        resume_after_timeout(str(flow_run.id) if flow_run.id else None)
        return False
    return bool(form.rotated) and bool(normalise_name(form.who))


def answer_paused_run(flow_run_id: str, *, approver: str, reject: bool = False, reason: str = "",
                      sign_with: str | None = None) -> str:
    """Answer a paused approval gate from outside the flow, on the Prefect API this process is configured for
    (the call ``digestguard approve`` makes); returns the plan hash answered."""
    return answer_gate(flow_run_id, approver=approver, reject=reject, reason=reason, sign_with=sign_with,
                       api=str(PREFECT_API_URL.value() or "") or None)


def confirm_paused_run(flow_run_id: str, *, who: str, rotated: bool = True, note: str = "") -> str:
    """Answer a paused manual-rotation item on this process's Prefect API (``digestguard confirm``)."""
    return confirm_manual(flow_run_id, who=who, rotated=rotated, note=note, api=str(PREFECT_API_URL.value() or "") or None)
