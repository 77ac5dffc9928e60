"""The gate's rules, on the shared Prefect test server: the approver must differ from whoever started the run;
two distinct approvers; no answer in time means reject. Answers come through the same call `digestguard approve`
makes (resume with the form's fields)."""

from __future__ import annotations

import contextvars
import threading
import time

from prefect import flow

from digestguard.inventory import ApprovalPolicy
from digestguard.journal import Journal
from digestguard.plan import Plan, PlanItem
from flows.approval import answer_paused_run, request_approval


@flow(name="gate-under-test")
def gate_flow(plan_json: str, policy_json: str, journal_path: str, triggered_by: str | None = None) -> dict:
    plan = Plan.model_validate_json(plan_json)
    approval = request_approval(plan, Journal(journal_path), ApprovalPolicy.model_validate_json(policy_json),
                                triggered_by=triggered_by)
    return approval.model_dump(mode="json")


def _plan(incident: str) -> Plan:
    return Plan(stage="purge", incident=incident, advisory="kics-2026-04",
                items=[PlanItem(target="mirror/checkmarx/kics@sha256:" + "1" * 64, action="delete-manifest", kind="registry")])


def _start(plan: Plan, policy: ApprovalPolicy, jpath, triggered_by=None):
    box: dict = {}

    def go():
        box["result"] = gate_flow(plan.model_dump_json(), policy.model_dump_json(), str(jpath), triggered_by)

    t = threading.Thread(target=contextvars.copy_context().run, args=(go,), daemon=True)
    t.start()
    return t, box


def _paused_run(jpath, incident, after_refusals=0, timeout=60) -> str:
    from prefect import get_client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if jpath.exists():
            ev = Journal(jpath).events(incident)
            asked = [e for e in ev if e["kind"] == "asked"]
            refused = [e for e in ev if e["kind"] == "refused"]
            if asked and len(refused) >= after_refusals:
                run_id = asked[0]["detail"]["flow_run_id"]
                with get_client(sync_client=True) as c:
                    if c.read_flow_run(run_id).state.is_paused():
                        return run_id
        time.sleep(0.3)
    raise AssertionError("no paused gate")


def test_approver_must_differ_from_the_trigger(prefect_harness, tmp_path):
    jpath, plan = tmp_path / "j.db", _plan("rule-distinct")
    t, box = _start(plan, ApprovalPolicy(distinct_from_trigger=True), jpath, triggered_by="oncall")
    answer_paused_run(_paused_run(jpath, plan.incident), approver="oncall")
    answer_paused_run(_paused_run(jpath, plan.incident, after_refusals=1), approver="alice")
    t.join(60)
    assert box["result"]["decision"] == "approve" and box["result"]["approvers"] == ["alice"]
    refused = [e for e in Journal(jpath).events(plan.incident) if e["kind"] == "refused"]
    assert refused[0]["detail"]["approver"] == "oncall" and "started this run" in refused[0]["detail"]["why"]


def test_two_distinct_approvers(prefect_harness, tmp_path):
    jpath, plan = tmp_path / "j.db", _plan("rule-two")
    t, box = _start(plan, ApprovalPolicy(two_approvers=True), jpath)
    answer_paused_run(_paused_run(jpath, plan.incident), approver="alice")
    time.sleep(1.5)
    answer_paused_run(_paused_run(jpath, plan.incident), approver="alice")       # the same person again: refused
    answer_paused_run(_paused_run(jpath, plan.incident, after_refusals=1), approver="bob")
    t.join(60)
    assert box["result"]["approvers"] == ["alice", "bob"]
    e = Journal(jpath).get(plan.incident, "approval", "purge", plan.hash)
    assert e.status == "done" and e.approver == "alice,bob"


def test_no_answer_in_time_is_a_rejection(prefect_harness, tmp_path):
    jpath, plan = tmp_path / "j.db", _plan("rule-timeout")
    t, box = _start(plan, ApprovalPolicy(timeout_seconds=10), jpath)
    t.join(90)
    assert box["result"]["decision"] == "reject" and "no decision within 10 s" in box["result"]["reason"]
    assert Journal(jpath).get(plan.incident, "approval", "purge", plan.hash).status == "failed"
