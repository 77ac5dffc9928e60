"""Slack notifications through the real ``slack_sdk.WebClient`` against a local Slack Web API server.

Uses the local protocol server ``flows.drill.servers.slack.SlackServer`` (chat.postMessage,
chat.update, conversations.create, the files_upload_v2 steps, auth.test): the SDK
talks to it unchanged over HTTP, and it records every call so the tests assert on
exactly what reached "Slack". Faults it injects (429 with Retry-After, dropped
connections, 500s, stopped server) prove the retries and that Slack being down
never stops the response. The flow-run link test also uses the shared
``prefect_harness`` server.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from prefect import flow
from slack_sdk.http_retry import FixedValueRetryIntervalCalculator

from digestguard.errors import AuthError, InputError, NotFound, RateLimited, Unavailable
from digestguard.inventory import ApprovalPolicy, parse_inventory
from digestguard.journal import Journal
from digestguard.plan import Approval, Plan, PlanItem
from flows.drill.servers.slack import SlackServer
from integrations.slack import SlackClient, channel_name_for
from tasks.notify import MASK, Notifier, flow_run_url, markdown_to_mrkdwn, redact
from tasks.report.html import render_report_html
from tests.report_fixtures import sample_report

SECRET = "dckr_pat_Sup3rSecretValue-0001"
FAST = FixedValueRetryIntervalCalculator(0.01)


@pytest.fixture
def slack():
    with SlackServer() as server:
        yield server


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    j = Journal(tmp_path / "journal.sqlite")
    yield j
    j.close()


def _inventory(slack: SlackServer, monkeypatch: pytest.MonkeyPatch, **extra):
    monkeypatch.setenv("TEST_SLACK_TOKEN", slack.token)
    data = {"slack": {"channel": "#sec-incident", "token": "env:TEST_SLACK_TOKEN", "api_url": slack.api_url, **extra}}
    return parse_inventory(data, "inventory.yaml", Path("."))


def _notifier(inv, journal, incident="inc-2026-04-22", **kw) -> Notifier:
    """A notifier as the flow builds it, with fast connection retries so outage tests stay quick."""
    return Notifier.from_inventory(inv, journal, incident, advisory_id="kics-2026-04", title="Malicious checkmarx/kics images",
                                   secrets=[SECRET], retry_interval=FAST, **kw)


def _plan(stage="purge", n=8) -> Plan:
    return Plan(stage=stage, incident="inc-2026-04-22", advisory="kics-2026-04",
                items=[PlanItem(target=f"registry.local/checkmarx/kics@sha256:{i:064x}",
                                action="delete-manifest" if i % 3 else "remove-image", kind="registry", reason="malicious index")
                       for i in range(n)])


# --------------------------------------------------------------------------- the client


def test_client_speaks_the_web_api(slack: SlackServer):
    client = SlackClient(slack.token, base_url=slack.api_url)
    assert client.auth_test()["team_id"] == slack.team_id

    msg = client.post("#sec-incident", "opened", blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": "*opened*"}}])
    assert msg.channel == slack.channels["sec-incident"]  # the answer carries the id, which chat.update needs
    reply = client.reply(msg, "detail")
    client.update(msg, "updated")
    assert slack.messages[(msg.channel, msg.ts)].text == "updated"
    assert slack.messages[(msg.channel, msg.ts)].blocks == []  # old blocks do not linger over the new text
    assert [m.text for m in slack.thread(msg.channel, msg.ts)] == ["detail"] and reply.thread_ts == msg.ts

    cid = client.create_channel("inc-test")
    assert slack.channels["inc-test"] == cid
    with pytest.raises(Exception) as e:
        client.create_channel("inc-test")
    assert getattr(e.value, "slack_error", None) == "name_taken"

    fid = client.upload_file(msg.channel, "report.html", "<html>report</html>", title="Report", thread_ts=msg.ts)
    assert slack.files[fid]["content"] == b"<html>report</html>" and slack.files[fid]["thread_ts"] == msg.ts
    assert [c.method for c in slack.calls[-3:]] == ["files.getUploadURLExternal", "upload", "files.completeUploadExternal"]
    assert all(c.authorized for c in slack.calls if c.method != "upload")


def test_client_errors_are_typed_and_never_carry_the_token(slack: SlackServer):
    bad = SlackClient("xoxb-wrong-token-123456789", base_url=slack.api_url)
    with pytest.raises(AuthError) as e:
        bad.post("#sec-incident", "x")
    assert "xoxb-wrong" not in str(e.value) and "chat.postMessage" in str(e.value)

    client = SlackClient(slack.token, base_url=slack.api_url, retry_interval=FAST)
    msg = client.post("#sec-incident", "x")
    with pytest.raises(NotFound):  # chat.update takes the channel id, not its name, as on real Slack
        client.update(type(msg)("#sec-incident", msg.ts), "y")
    with pytest.raises(NotFound):
        client.post("#nope", "x")

    slack.fail("chat.postMessage", status=500, times=None)
    with pytest.raises(Unavailable):
        client.post("#sec-incident", "x")
    slack.heal()
    with pytest.raises(InputError):
        SlackClient("", base_url=slack.api_url)
    with pytest.raises(InputError):
        SlackClient(slack.token, base_url="ftp://slack")
    assert slack.token not in "".join(str(c.params) for c in slack.calls)


def test_429_is_retried_after_retry_after(slack: SlackServer):
    client = SlackClient(slack.token, base_url=slack.api_url)
    slack.fail("chat.postMessage", status=429, retry_after=1)
    t0 = time.monotonic()
    msg = client.post("#sec-incident", "after a rate limit")
    assert time.monotonic() - t0 >= 1.0  # it waited as Slack asked
    calls = slack.calls_to("chat.postMessage")
    assert [c.faulted for c in calls] == ["429", None]
    assert slack.messages[(msg.channel, msg.ts)].text == "after a rate limit"

    slack.fail("chat.update", status=429, retry_after=0, times=None)
    limited = SlackClient(slack.token, base_url=slack.api_url, rate_limit_retries=1)
    with pytest.raises(RateLimited):
        limited.update(msg, "never")
    assert len(slack.calls_to("chat.update")) == 2  # one try + one bounded retry
    slack.heal()

    slack.fail("chat.postMessage", status=429, retry_after=120)
    t0 = time.monotonic()
    with pytest.raises(RateLimited) as e:
        client.post("#sec-incident", "not now")
    assert time.monotonic() - t0 < 5 and e.value.retry_after == 120  # too long to wait inside a notification


def test_dropped_connection_is_retried(slack: SlackServer):
    client = SlackClient(slack.token, base_url=slack.api_url, retry_interval=FAST)
    slack.fail("chat.postMessage", mode="close")
    msg = client.post("#sec-incident", "after a reset")
    assert [c.faulted for c in slack.calls_to("chat.postMessage")] == ["close", None]
    assert (msg.channel, msg.ts) in slack.messages


def test_channel_name_for():
    assert channel_name_for("INC 2026/04 kics") == "inc-inc-2026-04-kics"
    assert len(channel_name_for("x" * 200)) == 80
    with pytest.raises(InputError):
        channel_name_for("!!!")


# --------------------------------------------------------------------------- redaction


def test_redact_masks_values_encodings_and_token_shapes():
    text = f'value {SECRET}, json "{SECRET}", url {SECRET.replace("-", "%2D")} and xoxb-123456789012-abcdefghij'
    out = redact(text, [SECRET, "", "ab"])
    assert SECRET not in out and "xoxb-" not in out and out.count(MASK) >= 3
    assert redact("a tab and ab.", ["ab"]) == f"a tab and {MASK}."  # short values only as whole words
    digest = "sha256:" + "a" * 64
    assert redact(f"pinned {digest}", [SECRET]) == f"pinned {digest}"  # ids and digests stay readable


def test_plan_markdown_becomes_slack_mrkdwn():
    plan = _plan(n=2)
    plan.items[0].reason = "bad | <script>"
    text = markdown_to_mrkdwn(plan.markdown())
    assert text.startswith("*Purge plan for incident `inc-2026-04-22` (kics-2026-04)*")
    assert "```" in text and "|---|" not in text and "<script>" not in text and "&lt;script&gt;" in text
    assert markdown_to_mrkdwn("see [PR](https://h/pr/1) and **this**", origins=["https://h"]) == "see <https://h/pr/1|PR> and *this*"
    assert markdown_to_mrkdwn("see [PR](https://h/pr/1)") == "see PR (https[:]//h/pr/1)"  # an origin nobody named
    long = markdown_to_mrkdwn("| a |\n|---|\n" + "| x |\n" * 5000, limit=500)
    assert len(long) <= 510 and long.count("```") % 2 == 0 and "cut here" in long


# --------------------------------------------------------------------------- the notifier


def test_incident_message_stages_approval_and_summary(slack, journal, monkeypatch):
    monkeypatch.setenv("PREFECT_UI_URL", "http://prefect.example:4200")
    n = _notifier(_inventory(slack, monkeypatch), journal)
    assert n.open_incident().outcome == "done"
    msg = n.message
    assert len(slack.channel_messages("sec-incident")) == 1

    out = n.stage_update("detect", "done", "2 compromised, 1 suspect",
                         details=f"• `registry.local/checkmarx/kics:v2.1.20` token={SECRET}")
    assert out.outcome == "done"
    board = slack.messages[(msg.channel, msg.ts)]
    assert "detect" in board.text and "2 compromised" in board.text and board.edits >= 1
    assert any("registry.local/checkmarx/kics:v2.1.20" in m.text for m in slack.thread(msg.channel, msg.ts))

    plan = _plan()
    req = n.request_approval(plan, flow_run_id="4f9c0d6e-run",
                             policy=ApprovalPolicy(two_approvers=True, distinct_from_trigger=True),
                             approvers=["@secops"], triggered_by="carol")
    assert req.outcome == "done"
    ask = slack.messages[(msg.channel, req.detail["ts"])]
    assert ask.thread_ts == msg.ts and ask.reply_broadcast  # in the thread and shown in the channel
    assert "8 item(s) will be purged" in ask.text and "5 delete-manifest" in ask.text and "3 remove-image" in ask.text
    assert "and 3 more" in ask.text and "registry.local/checkmarx/kics@sha256:" in ask.text
    assert "two distinct approvers" in ask.text and "@secops" in ask.text and "not carol" in ask.text
    assert "<http://prefect.example:4200/runs/flow-run/4f9c0d6e-run|" in ask.text
    assert "awaiting-approval" in slack.messages[(msg.channel, msg.ts)].text

    approval = Approval(decision="approve", approvers=["alice", "bob"], plan_hash=plan.hash, reason="malicious digests confirmed")
    assert n.record_decision(plan, approval).outcome == "done"
    ask = slack.messages[(msg.channel, req.detail["ts"])]
    assert ask.edits == 1 and "Approved* by alice, bob at " + approval.at.strftime("%Y-%m-%d %H:%M UTC") in ask.text
    assert "approved" in slack.messages[(msg.channel, msg.ts)].text

    report = sample_report(incident="inc-2026-04-22")
    outs = n.final_summary(report, html=render_report_html(report))
    assert [o.outcome for o in outs] == ["done", "done"]
    summary = slack.messages[(msg.channel, outs[0].detail["ts"])]
    assert "Detected: 2 compromised" in summary.text and "Purged: 2 of 2" in summary.text
    assert "<https://github.example/acme/api/pull/12|acme/api#12>" in summary.text
    assert "Still needs a person" in summary.text and "LEGACY_DEPLOY_KEY" in summary.text
    f = slack.files[outs[1].detail["file_id"]]
    assert f["content"].startswith(b"<!DOCTYPE html>") and f["thread_ts"] == msg.ts

    assert len(slack.channel_messages("sec-incident")) == 3  # incident message, approval request, summary
    assert SECRET not in slack.all_text()
    rows = {e.action: e for e in journal.entries("inc-2026-04-22", stage="notify")}
    assert rows["incident-message"].detail["ts"] == msg.ts and rows["incident-message"].detail["channel"] == msg.channel
    assert {"stage:detect", "approval-request:purge", "final-summary", "report-file"} <= set(rows)


def test_an_expired_gate_edits_its_request_to_expired_and_names_verified_approvers(slack, journal, monkeypatch):
    n = _notifier(_inventory(slack, monkeypatch), journal)
    n.open_incident()
    rotate, purge = _plan("rotate", 2), _plan()
    reqs = [n.request_approval(rotate), n.request_approval(purge)]
    expired = Approval(decision="reject", approvers=["(nobody)"], plan_hash=rotate.hash, expired=True,
                       reason="no decision within 10 s")
    assert n.record_decision(rotate, expired).outcome == "done"
    ask = slack.messages[(n.message.channel, reqs[0].detail["ts"])]
    assert "*Expired*" in ask.text and "no decision within 10 s" in ask.text and "Approval needed" not in ask.text
    assert "rotate" in slack.messages[(n.message.channel, n.message.ts)].text
    assert n.stages["rotate"]["status"] == "expired"
    both = Approval(decision="approve", approvers=["bob", "carol"], plan_hash=purge.hash,
                    identities=[{"name": "bob", "via": "ssh", "verified": "yes"},
                                {"name": "carol", "via": "prefect-ui", "verified": "no"}])
    n.record_decision(purge, both)
    ask = slack.messages[(n.message.channel, reqs[1].detail["ts"])]
    assert "bob (ssh, verified), carol (prefect-ui, asserted)" in ask.text


def test_with_an_app_token_the_request_carries_buttons_and_socket_mode_connects(slack, journal, monkeypatch):
    monkeypatch.setenv("TEST_SLACK_APP_TOKEN", slack.app_token)
    n = _notifier(_inventory(slack, monkeypatch, app_token="env:TEST_SLACK_APP_TOKEN"), journal)
    n.open_incident()
    plan = _plan()
    req = n.request_approval(plan, flow_run_id="4f9c0d6e-run")
    blocks = slack.messages[(n.message.channel, req.detail["ts"])].blocks
    (actions,) = [b for b in blocks if b.get("type") == "actions"]
    assert [e["action_id"] for e in actions["elements"]] == ["digestguard_approve", "digestguard_reject"]
    assert json.loads(actions["elements"][0]["value"]) == {"run": "4f9c0d6e-run", "stage": "purge", "plan_hash": plan.hash}
    clicks = []
    listener = n.button_listener(clicks.append)
    try:
        slack.click("U0BOB", "digestguard_reject", actions["elements"][1]["value"])
        deadline = time.monotonic() + 10
        while not clicks and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        listener.close()
    assert [(c.user_id, c.decision) for c in clicks] == [("U0BOB", "reject")]
    n.record_decision(plan, Approval(decision="reject", approvers=["bob"], plan_hash=plan.hash))
    assert not [b for b in slack.messages[(n.message.channel, req.detail["ts"])].blocks if b.get("type") == "actions"]
    monkeypatch.setenv("TEST_SLACK_APP_TOKEN", "xapp-1-wrong")
    assert n.button_listener(clicks.append) is None  # refused app token: journaled, the gate still answers elsewhere
    assert [e for e in journal.events("inc-2026-04-22") if e["kind"] == "slack-buttons-unavailable"]


def test_rerun_edits_the_same_messages(slack, journal, monkeypatch):
    inv = _inventory(slack, monkeypatch)
    first = _notifier(inv, journal)
    first.stage_update("detect", "done", "2 compromised")
    plan = _plan(n=2)
    first.request_approval(plan)
    report = sample_report(incident="inc-2026-04-22")
    html = render_report_html(report)
    first.final_summary(report, html=html)
    posts = len(slack.calls_to("chat.postMessage", ok_only=True))
    top_level = [m.ts for m in slack.channel_messages("sec-incident")]

    again = _notifier(inv, journal)  # a re-run of the same incident: new process, same journal
    assert again.open_incident().detail["reused"] is True
    again.stage_update("detect", "done", "3 compromised")
    assert again.request_approval(plan).detail["reused"] is True
    assert again.final_summary(report, html=html)[0].detail["reused"] is True

    assert [m.ts for m in slack.channel_messages("sec-incident")] == top_level
    board = slack.messages[(first.message.channel, first.message.ts)]
    assert "3 compromised" in board.text and "awaiting-approval" in board.text  # stages remembered across runs
    assert len(slack.calls_to("chat.postMessage", ok_only=True)) == posts  # only edits, no new posts
    assert len(slack.calls_to("files.completeUploadExternal")) == 1  # the same report is not uploaded twice


def test_channel_named_after_the_incident_is_created_once(slack, journal, monkeypatch):
    inv = _inventory(slack, monkeypatch, create_channel=True)
    n = _notifier(inv, journal, incident="INC 42")
    assert n.open_incident().outcome == "done"
    assert n.message.channel == slack.channels["inc-inc-42"]
    _notifier(inv, journal, incident="INC 42").stage_update("detect", "started")
    assert len(slack.calls_to("conversations.create")) == 1

    slack.channels["inc-inc-43"] = "C99999999"  # someone took the name: fall back to the configured channel
    other = _notifier(inv, journal, incident="INC 43")
    assert other.open_incident().outcome == "done"
    assert other.message.channel == slack.channels["sec-incident"]
    assert journal.get("INC 43", "notify", "slack", "channel").error == "name_taken"


def test_slack_down_never_stops_the_response(slack, journal, monkeypatch):
    inv = _inventory(slack, monkeypatch)
    n = _notifier(inv, journal, cooldown=60)
    slack.stop()  # nothing listens: connection refused, retried, then given up

    t0 = time.monotonic()
    outs = [n.open_incident(), n.stage_update("detect", "done", "2 compromised", details="x"),
            n.request_approval(_plan()), n.record_decision(_plan(), None),
            *n.final_summary(sample_report(incident="inc-2026-04-22"), html="<html></html>")]
    assert time.monotonic() - t0 < 5  # after the first failure the rest fail fast instead of retrying each
    assert all(o.outcome == "failed" for o in outs)
    assert all("Unavailable" in (o.error or "") for o in outs)
    assert "not sent, Slack is unavailable" in outs[1].error  # failed fast inside the cool-down
    assert all(o in n.failures() for o in outs)
    events = [e for e in journal.events("inc-2026-04-22") if e["kind"] == "slack-failed"]
    assert {e["detail"]["action"] for e in events} >= {"incident-message", "stage:detect", "approval-request:purge",
                                                       "final-summary", "report-file"}
    assert journal.get("inc-2026-04-22", "notify", "slack", "stage:detect").status == "failed"

    slack.start()  # Slack is back (same port). The final summary always tries, even inside the cool-down,
    outs = n.final_summary(sample_report(incident="inc-2026-04-22"))
    assert [o.outcome for o in outs] == ["done"]
    board = slack.channel_messages("sec-incident")[0].text  # and the board carries every stage recorded while down
    for stage in ("detect", "purge", "report"):
        assert stage in board
    assert n.stage_update("pin", "done", "1 pull request").outcome == "done"  # success ended the cool-down


def test_rate_limited_notifier_still_delivers(slack, journal, monkeypatch):
    n = _notifier(_inventory(slack, monkeypatch), journal)
    slack.fail("chat.postMessage", status=429, retry_after=0)
    assert n.open_incident().outcome == "done"
    assert [c.faulted for c in slack.calls_to("chat.postMessage")] == ["429", None]


def test_without_slack_or_token_everything_is_skipped(journal, monkeypatch, tmp_path):
    none = Notifier.from_inventory(parse_inventory({}, "inv", tmp_path), journal, "inc-x")
    assert not none.enabled and none.stage_update("detect", "done").outcome == "skipped"

    monkeypatch.delenv("MISSING_SLACK_TOKEN", raising=False)
    inv = parse_inventory({"slack": {"channel": "#x", "token": "env:MISSING_SLACK_TOKEN"}}, "inv", tmp_path)
    n = Notifier.from_inventory(inv, journal, "inc-x")
    out = n.open_incident()
    assert out.outcome == "skipped" and "MISSING_SLACK_TOKEN" in (out.error or "")
    assert [e["kind"] for e in journal.events("inc-x")] == ["slack-disabled"]


def test_inside_a_flow_run_the_request_links_to_it(prefect_harness, slack, journal, monkeypatch):
    monkeypatch.setenv("PREFECT_UI_URL", "http://ui.example")
    inv = _inventory(slack, monkeypatch)
    plan = _plan(n=3)

    @flow(name="notify-test")
    def run() -> tuple[list, str | None]:
        n = _notifier(inv, journal)
        outs = [n.open_incident(), n.stage_update("detect", "done", "2 compromised", "details"),
                n.request_approval(plan),
                n.record_decision(plan, Approval(decision="reject", approvers=["dave"], plan_hash=plan.hash))]
        outs += n.final_summary(sample_report(incident="inc-2026-04-22"))
        return outs, flow_run_url()

    outs, link = run()
    assert [o.outcome for o in outs] == ["done"] * 5
    assert link and link.startswith("http://ui.example/runs/flow-run/")
    ask = slack.messages[(outs[2].detail["channel"], outs[2].detail["ts"])]
    assert link in ask.text  # the request links straight to the paused run
    assert "Rejected* by dave" in ask.text
