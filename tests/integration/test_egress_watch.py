"""The watch checks egress baselines: a new destination reaches Slack (the local ``SlackServer`` stand-in from
``flows/drill/servers/slack.py``, speaking the Web API to the real slack-sdk) with job, image, destination and the
dry-run command, escaped, with no secret from the log line; an undelivered alert is queued and read back exactly."""

from __future__ import annotations

import json
from pathlib import Path

from digestguard.inventory import load_inventory
from flows.drill.servers.slack import SlackServer
from tasks.watch.alerts import slack_alerter
from tasks.watch.cycle import run_watch
from tasks.watch.events import NewDestinationEvent
from tasks.watch.state import WatchState
from tests.egress_logs import DAY, T0, daily, github_job, squid, write_inventory

DIGEST = "sha256:" + "c" * 64
SECRET = "tok_live_9f8e7d6c5b4a39281706"


def test_new_destination_alert_in_slack_escaped_without_secrets(tmp_path: Path, monkeypatch):
    """Slack: the local SlackServer receives one message naming group, job, image, destination and the command."""
    with SlackServer() as slack:
        monkeypatch.setenv("DG_EGRESS_SLACK", slack.token)
        call = T0 + 9 * DAY + 200
        (tmp_path / "ci").mkdir()
        (tmp_path / "ci" / "deploy.log").write_text(github_job(call - 60, "runner-a-1",
                                                               images=[("acme/deployer:1.4", DIGEST)]))
        (tmp_path / "logs").mkdir()
        rows = daily(range(8), "10.0.0.11", ["pypi.org", "github.com"]) + [
            (call, "10.0.0.11", f"http://<!channel>.attacker-drop.com/up?token={SECRET}&x=1")]
        (tmp_path / "logs" / "access.log").write_text(squid(rows))
        inv_path = write_inventory(
            tmp_path, network_logs=[{"name": "proxy", "path": "logs"}],
            ci_logs=[{"name": "ci", "kind": "folder", "path": "ci"}],
            runners=[{"name": "deployers", "hosts": [{"name": "runner-a-1", "address": "10.0.0.11"}]}],
            egress={"learning_days": 7},
            slack={"channel": "#sec-incident", "token": "env:DG_EGRESS_SLACK", "api_url": slack.api_url})
        inv = load_inventory(inv_path)
        alert, why = slack_alerter(inv)
        assert alert is not None, why
        with WatchState.for_inventory(inv) as state:
            (rep,) = run_watch(inv, state, cycles=1, alert=alert, packs=[], inventory_path=str(inv_path))
            (ev,) = rep.by_kind("new-destination")
            assert ev.destination == "attacker-drop.com" and ev.job == "deploy.log"
            assert rep.alerts_sent == 1
            (again,) = run_watch(inv, state, cycles=1, alert=alert, packs=[], inventory_path=str(inv_path))
            assert again.by_kind("new-destination") == []  # said once
        calls = slack.calls_to("chat.postMessage", ok_only=True)
        assert len(calls) == 1
        blob = json.dumps(calls[0].params)
        text = calls[0].params["blocks"][0]["text"]["text"] if isinstance(calls[0].params.get("blocks"), list) \
            else json.loads(calls[0].params["blocks"])[0]["text"]["text"]
        assert "deployers" in text and "deploy.log" in text and f"acme/deployer:1.4@{DIGEST}" in text
        assert "attacker-drop.com" in text and "digestguard respond --dry-run --advisory" in text
        assert "<!channel>" not in blob and "&lt;!channel&gt;" in text
        assert SECRET not in blob


def test_new_destination_event_survives_the_pending_queue(tmp_path: Path):
    ev = NewDestinationEvent(group="g", destination="x.com", host="a.x.com", first_at="2026-04-10T00:00:00Z",
                             source="/l", line=3, client="10.0.0.1", images=["alpine@" + DIGEST], young=True)
    with WatchState(tmp_path / "w.sqlite") as state:
        state.queue_alerts([ev])
        ((_, back),) = state.pending_alerts()
    assert back == ev


def test_cloudwatch_resolver_log_group_is_followed(moto_server: str, tmp_path: Path):
    """Route 53 Resolver events in a CloudWatch log group on the session moto server (boto3, filter_log_events):
    learnt, then the new destination flagged; the next check reads only events after the last one read."""
    import uuid
    from datetime import datetime, timedelta, timezone

    import boto3

    from digestguard.journal import Journal
    from tasks.egress.check import check_egress

    logs = boto3.client("logs", endpoint_url=moto_server, region_name="us-east-1")
    group = f"/aws/route53/egress-{uuid.uuid4().hex[:8]}"
    logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName="vpc-a")
    base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=3)  # CloudWatch keeps 14 days

    def put(rows: list[tuple[datetime, str]]) -> None:
        logs.put_log_events(logGroupName=group, logStreamName="vpc-a", logEvents=[
            {"timestamp": int(t.timestamp() * 1000), "message": json.dumps({
                "query_timestamp": t.strftime("%Y-%m-%dT%H:%M:%SZ"), "query_name": q + ".", "query_type": "A",
                "rcode": "NOERROR", "srcaddr": "10.9.0.33"})} for t, q in rows])

    put([(base + timedelta(minutes=m), h) for m in range(0, 50, 5) for h in ("pypi.org", "github.com")]
        + [(base + timedelta(hours=2), "new.cw-only.net")])
    inv_path = write_inventory(tmp_path, network_logs=[{"name": "resolver", "kind": "cloudwatch", "log_group": group,
                                                        "region": "us-east-1", "endpoint_url": moto_server}],
                               runners=[{"name": "eph", "cidrs": ["10.9.0.0/24"]}], egress={"learning_days": 1 / 24})
    inv = load_inventory(inv_path)
    j = Journal(tmp_path / "journal.sqlite")
    try:
        rep = check_egress(inv, j)
        assert [e.destination for e in rep.events] == ["cw-only.net"]
        assert rep.coverage[0].state == "checked" and rep.files[0].lines == 21
        put([(base + timedelta(hours=2, minutes=10), "second.cw-late.org")])
        rep2 = check_egress(inv, j)
        assert [e.destination for e in rep2.events] == ["cw-late.org"] and rep2.files[0].lines == 1
    finally:
        j.close()
