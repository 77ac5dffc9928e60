"""The gate's rules, tried from outside on the shared Prefect test server.

Answers arrive the way anyone can send them: Prefect's own ``resume_flow_run`` client call and a bare
POST to the REST API's ``/flow_runs/{id}/resume``, with ``{}``, with no input at all, a blank or whitespace
approver, a wrong plan hash, the run's own trigger in another spelling, and one person under a second
spelling. None of them may reach the destructive step; each is journaled as refused and the gate asks again.
"""

from __future__ import annotations

import contextvars
import threading
import time

import httpx
import pytest
from prefect import flow, get_client
from prefect.flow_runs import resume_flow_run

from digestguard.inventory import ApprovalPolicy
from digestguard.journal import Journal
from digestguard.plan import Plan, PlanItem, require_approved
from flows.approval import answer_paused_run, request_approval
from flows.drill.servers.slack import SlackServer
from integrations.slack import APPROVE_ACTION, ButtonListener


@flow(name="gate-under-test")
def gate_flow(plan_json: str, policy_json: str, journal_path: str, marker: str, triggered_by: str | None = None,
              gates: int = 1, slack_api: str | None = None) -> list[dict]:
    """One or more gates like the incident flow's; an approved plan 'destroys' by writing ``marker``.
    With ``slack_api``: Slack buttons over Socket Mode (the stand-in's app token), as the incident flow listens."""
    out = []
    buttons = None
    if slack_api:
        def buttons(on_click):
            return ButtonListener(SlackServer().app_token, on_click, base_url=slack_api).start()
    for n in range(gates):
        plan = Plan.model_validate_json(plan_json)
        if n:
            plan = plan.model_copy(update={"stage": "rotate"})
        approval = request_approval(plan, Journal(journal_path), ApprovalPolicy.model_validate_json(policy_json),
                                    triggered_by=triggered_by, buttons=buttons)
        if approval.approved:
            require_approved(plan, approval)
            with open(marker, "a") as f:
                f.write(f"{plan.stage} destroyed\n")
        out.append(approval.model_dump(mode="json"))
    return out


def _plan(incident: str) -> Plan:
    return Plan(stage="purge", incident=incident, advisory="kics-2026-04",
                items=[PlanItem(target="mirror/checkmarx/kics@sha256:" + "1" * 64, action="delete-manifest", kind="registry")])


def _start(plan: Plan, policy: ApprovalPolicy, tmp_path, triggered_by=None, gates=1, slack_api=None):
    box: dict = {}

    def go():
        box["state"] = gate_flow(plan.model_dump_json(), policy.model_dump_json(), str(tmp_path / "j.db"),
                                 str(tmp_path / "destroyed"), triggered_by, gates, slack_api, return_state=True)

    t = threading.Thread(target=contextvars.copy_context().run, args=(go,), daemon=True)
    t.start()
    return t, box


def _paused(jpath, incident, after=None, timeout=120) -> tuple[str, str]:
    """(run id, pause key) of the gate's current pause; with ``after``, wait for a pause other than that key."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if jpath.exists():
            asked = [e for e in Journal(jpath).events(incident) if e["kind"] == "asked"]
            if asked:
                run_id = asked[-1]["detail"]["flow_run_id"]
                with get_client(sync_client=True) as c:
                    st = c.read_flow_run(run_id).state
                if st.is_paused() and st.state_details.pause_key != after:
                    return run_id, st.state_details.pause_key
        time.sleep(0.2)
    raise AssertionError("no paused gate")


def _refusals(jpath, incident) -> list[dict]:
    return [e["detail"] for e in Journal(jpath).events(incident) if e["kind"] == "refused"]


def _rest_resume(run_id: str, body: dict) -> None:
    from prefect.settings import PREFECT_API_URL

    for wait in (0.5, 1, 2, 4, 0):  # the test server's SQLite answers 503 "database is locked" under load: ask again
        r = httpx.post(f"{PREFECT_API_URL.value()}/flow_runs/{run_id}/resume", json=body, timeout=10)
        if r.status_code != 503 or not wait:
            break
        time.sleep(wait)
    assert r.status_code in (200, 201) and r.json()["status"] == "ACCEPT", r.text


def test_hostile_answers_are_refused_and_the_gate_asks_again(prefect_harness, tmp_path):
    jpath, plan = tmp_path / "j.db", _plan("rule-hostile")
    t, box = _start(plan, ApprovalPolicy(distinct_from_trigger=True, two_approvers=True), tmp_path, triggered_by="Alice")
    good = plan.hash
    answers = [
        lambda rid: resume_flow_run(rid, run_input={}),                              # {} through Prefect's client
        lambda rid: resume_flow_run(rid),                                            # no input at all
        lambda rid: _rest_resume(rid, {}),                                           # no input, bare REST call
        lambda rid: _rest_resume(rid, {"run_input": {"decision": "approve", "approver": "", "plan_hash": good}}),
        lambda rid: _rest_resume(rid, {"run_input": {"decision": "approve", "approver": " \t ", "plan_hash": good}}),
        lambda rid: _rest_resume(rid, {"run_input": {"decision": "approve", "approver": "bob",
                                                     "plan_hash": "sha256:" + "0" * 64}}),
        lambda rid: _rest_resume(rid, {"run_input": {"decision": "approve", "approver": "bob"}}),  # no hash
        lambda rid: _rest_resume(rid, {"run_input": {"decision": "approve", "approver": " ALICE ", "plan_hash": good}}),
    ]
    key = None
    for n, answer in enumerate(answers, 1):
        run_id, key = _paused(jpath, plan.incident, after=key)
        answer(run_id)
        deadline = time.monotonic() + 90
        while len(_refusals(jpath, plan.incident)) < n and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(_refusals(jpath, plan.incident)) == n, f"answer {n} was not refused"
        assert not (tmp_path / "destroyed").exists()
    run_id, key = _paused(jpath, plan.incident, after=key)
    answer_paused_run(run_id, approver="Bob")                                        # first approver counts
    run_id, key = _paused(jpath, plan.incident, after=key)
    answer_paused_run(run_id, approver=" bob ")                                      # the same person again: refused
    run_id, key = _paused(jpath, plan.incident, after=key)
    assert not (tmp_path / "destroyed").exists()
    answer_paused_run(run_id, approver="carol")
    t.join(120)
    assert box["state"].is_completed()
    (result,) = box["state"].result()
    assert result["decision"] == "approve" and result["approvers"] == ["bob", "carol"]
    refused = _refusals(jpath, plan.incident)
    whys = [r["why"] for r in refused]
    assert len(refused) == 9
    assert all("no approver named" in w for w in whys[:5])
    assert "but the plan now is" in whys[5] and "no plan hash" in whys[6]
    assert "alice started this run" in whys[7] and "bob already approved" in whys[8]
    e = Journal(jpath).get(plan.incident, "approval", "purge", plan.hash)
    assert e.status == "done" and e.approver == "bob,carol"
    assert [i["name"] for i in e.detail["identities"]] == ["bob", "carol"]


def test_a_run_without_triggered_by_is_refused_when_a_rule_needs_it(prefect_harness, tmp_path):
    jpath, plan = tmp_path / "j.db", _plan("rule-no-trigger")
    t, box = _start(plan, ApprovalPolicy(distinct_from_trigger=True), tmp_path, triggered_by="  ")
    t.join(120)
    (result,) = box["state"].result()
    assert result["decision"] == "reject" and "does not say who started it" in result["reason"]
    assert not (tmp_path / "destroyed").exists()
    assert Journal(jpath).get(plan.incident, "approval", "purge", plan.hash).status == "failed"


def test_a_blank_approver_is_refused_by_the_cli_call():
    from digestguard.errors import InputError

    with pytest.raises(InputError, match="blank approver"):
        answer_paused_run("00000000-0000-0000-0000-000000000000", approver="  ")


def test_a_timeout_rejects_that_gate_and_the_next_gate_still_asks(prefect_harness, tmp_path):
    jpath, plan = tmp_path / "j.db", _plan("rule-timeout")
    t, box = _start(plan, ApprovalPolicy(timeout_seconds=10), tmp_path, gates=2)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        asked = [e for e in Journal(jpath).events(plan.incident) if e["kind"] == "asked"] if jpath.exists() else []
        if len(asked) == 2:
            break
        time.sleep(0.3)
    run_id, _ = _paused(jpath, plan.incident)
    answer_paused_run(run_id, approver="alice")
    t.join(120)
    state = box["state"]
    assert state.is_completed(), state.message
    first, second = state.result()
    assert first["decision"] == "reject" and first["expired"] and "no decision within 10 s" in first["reason"]
    assert second["decision"] == "approve" and second["approvers"] == ["alice"]
    assert Journal(jpath).get(plan.incident, "approval", "purge", plan.hash).status == "failed"
    assert (tmp_path / "destroyed").read_text() == "rotate destroyed\n"
    with get_client(sync_client=True) as c:
        assert not c.read_flow_run(run_id).state.is_paused()


def test_the_drill_context_approves_as_drill_without_pausing(prefect_harness, tmp_path):
    from flows.approval import drill_approver

    jpath, plan = tmp_path / "j.db", _plan("rule-drill")
    with drill_approver():
        state = gate_flow(plan.model_dump_json(), ApprovalPolicy().model_dump_json(), str(jpath), str(tmp_path / "destroyed"),
                          "drill-runner", return_state=True)
    (result,) = state.result()
    assert result["approvers"] == ["drill"] and result["identities"] == [{"name": "drill", "via": "drill", "verified": "no"}]
    assert Journal(jpath).get(plan.incident, "approval", "purge", plan.hash).approver == "drill"


def _keypair(tmp_path, name: str) -> tuple[str, str]:
    import subprocess

    key = tmp_path / f"{name}_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
    return str(key), (tmp_path / f"{name}_ed25519.pub").read_text().strip()


def test_require_verified_counts_only_ssh_signed_answers_from_listed_approvers(prefect_harness, tmp_path):
    """Real ``ssh-keygen -Y sign/verify`` (OpenSSH); answers sent as anyone could send them, over the REST API."""
    from digestguard.inventory import Approver
    from flows.identity import sign_answer

    (bob_key, bob_pub), (carol_key, carol_pub) = _keypair(tmp_path, "bob"), _keypair(tmp_path, "carol")
    policy = ApprovalPolicy(require_verified=True, two_approvers=True,
                            approvers=[Approver(name="Bob", ssh_key=bob_pub), Approver(name="carol", ssh_key=carol_pub),
                                       Approver(name="dave")])
    jpath, plan = tmp_path / "j.db", _plan("rule-verified")
    t, box = _start(plan, policy, tmp_path)
    good = plan.hash

    def signed(rid, who, key, decision="approve", run=None, plan_hash=None):
        sig = sign_answer(key, plan_hash=plan_hash or good, run_id=run or rid, decision=decision)
        _rest_resume(rid, {"run_input": {"decision": "approve", "approver": who, "plan_hash": good, "signature": sig}})

    answers = [
        lambda rid: answer_paused_run(rid, approver="bob"),                               # unsigned: asserted
        lambda rid: answer_paused_run(rid, approver="dave"),                              # listed, no key, unsigned
        lambda rid: answer_paused_run(rid, approver="mallory", sign_with=bob_key),        # not listed
        lambda rid: signed(rid, "bob", carol_key),                                        # someone else's key
        lambda rid: signed(rid, "bob", bob_key, decision="reject"),                       # signed reject sent as approve
        lambda rid: signed(rid, "bob", bob_key, run="00000000-0000-0000-0000-000000000000"),  # replay from another run
        lambda rid: signed(rid, "bob", bob_key, plan_hash="sha256:" + "2" * 64),          # signed another plan
        lambda rid: signed(rid, "dave", bob_key),                                         # dave has no key
    ]
    key = None
    for n, answer in enumerate(answers, 1):
        run_id, key = _paused(jpath, plan.incident, after=key)
        answer(run_id)
        deadline = time.monotonic() + 90
        while len(_refusals(jpath, plan.incident)) < n and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(_refusals(jpath, plan.incident)) == n, f"answer {n} was not refused"
    run_id, key = _paused(jpath, plan.incident, after=key)
    answer_paused_run(run_id, approver=" BOB", sign_with=bob_key)
    run_id, key = _paused(jpath, plan.incident, after=key)
    answer_paused_run(run_id, approver="bob", sign_with=bob_key)                          # one person twice: refused
    run_id, key = _paused(jpath, plan.incident, after=key)
    assert not (tmp_path / "destroyed").exists()
    answer_paused_run(run_id, approver="carol", sign_with=carol_key)
    t.join(120)
    (result,) = box["state"].result()
    assert result["approvers"] == ["bob", "carol"]
    assert result["identities"] == [{"name": "bob", "via": "ssh", "verified": "yes"},
                                    {"name": "carol", "via": "ssh", "verified": "yes"}]
    whys = [r["why"] for r in _refusals(jpath, plan.incident)]
    assert len(whys) == 9
    assert "asserted identity" in whys[0] and "asserted identity" in whys[1] and "not a listed approver" in whys[2]
    assert all("does not verify" in w for w in whys[3:7]) and "no SSH key" in whys[7] and "already approved" in whys[8]
    e = Journal(jpath).get(plan.incident, "approval", "purge", plan.hash)
    assert e.status == "done" and e.detail["identities"][0]["via"] == "ssh"


def test_two_person_approval_one_verified_in_slack_one_by_ssh(prefect_harness, tmp_path):
    """Slack buttons over Socket Mode: the stand-in speaks ``apps.connections.open`` and the websocket envelopes to
    slack-sdk's unmodified ``SocketModeClient`` (no Slack server can run here), which acknowledges each one."""
    import json

    from digestguard.inventory import Approver

    carol_key, carol_pub = _keypair(tmp_path, "carol")
    policy = ApprovalPolicy(require_verified=True, two_approvers=True,
                            approvers=[Approver(name="bob", slack_user_id="U0BOB"), Approver(name="carol", ssh_key=carol_pub)])
    jpath, plan = tmp_path / "j.db", _plan("rule-slack")
    with SlackServer() as slack:
        t, box = _start(plan, policy, tmp_path, slack_api=slack.api_url)
        run_id, key = _paused(jpath, plan.incident)
        value = json.dumps({"run": run_id, "stage": "purge", "plan_hash": plan.hash})
        envelope = slack.click("U0MALLORY", APPROVE_ACTION, value)                   # not a listed approver
        assert envelope in slack.acks
        deadline = time.monotonic() + 30
        while not _refusals(jpath, plan.incident) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "U0MALLORY is not a listed approver" in _refusals(jpath, plan.incident)[0]["why"]
        # a forged Slack answer through the REST API: the one-time confirmation is not known outside the flow
        _rest_resume(run_id, {"run_input": {"decision": "approve", "approver": "bob", "plan_hash": plan.hash,
                                            "slack_confirmation": "forged"}})
        run_id, key = _paused(jpath, plan.incident, after=key)
        assert "not one this gate issued" in _refusals(jpath, plan.incident)[1]["why"]
        slack.click("U0BOB", APPROVE_ACTION, value)                                  # bob, verified by Slack
        run_id, key = _paused(jpath, plan.incident, after=key)
        assert not (tmp_path / "destroyed").exists()
        assert slack.calls_to("apps.connections.open") and all(c.authorized for c in slack.calls_to("apps.connections.open"))
        answer_paused_run(run_id, approver="carol", sign_with=carol_key)            # carol, verified by SSH
        t.join(120)
    (result,) = box["state"].result()
    assert result["decision"] == "approve" and result["approvers"] == ["bob", "carol"]
    assert result["identities"] == [{"name": "bob", "via": "slack", "verified": "yes"},
                                    {"name": "carol", "via": "ssh", "verified": "yes"}]
    assert (tmp_path / "destroyed").read_text() == "purge destroyed\n"
    assert len(_refusals(jpath, plan.incident)) == 2
