"""The network sweep reading CloudWatch Logs through boto3 against a real moto server.

Uses the session ``moto_server`` (tests/support/aws.py): a log group with two
streams gets Route 53 Resolver query events; the sweep pages through
``filter_log_events`` and finds the indicators with their event times.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import boto3
import pytest

from digestguard.advisory import Indicator, Window
from digestguard.errors import NotFound
from integrations import cloudwatch
from tasks.sweep.run import sweep_paths

UTC = timezone.utc
# CloudWatch (and moto) refuse events older than 14 days: the story is replayed two hours ago
BASE = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)
EARLY = BASE - timedelta(hours=1)
WINDOW = Window(start=BASE, source="seed")
KICS = [
    Indicator(kind="domain", value="audit.checkmarx[.]cx", source="seed"),
    Indicator(kind="ip", value="94.154.172.43", source="third party"),
]


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


@pytest.fixture()
def log_group(moto_server: str) -> str:
    """A fresh log group holding 30 resolver events, two of them malicious."""
    logs = boto3.client("logs", endpoint_url=moto_server, region_name="us-east-1")
    group = f"/aws/route53/resolver-{uuid.uuid4().hex[:8]}"
    logs.create_log_group(logGroupName=group)
    for stream in ("vpc-a", "vpc-b"):
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
    events = []
    for i in range(15):
        when = BASE + timedelta(minutes=i)
        name = "x.audit.checkmarx.cx." if i == 7 else f"host{i}.example.com."
        events.append({"timestamp": _ms(when), "message": json.dumps({
            "version": "1.100000", "query_timestamp": when.strftime("%Y-%m-%dT%H:%M:%SZ"), "query_name": name,
            "query_type": "A", "rcode": "NOERROR", "answers": [{"Rdata": "203.0.113.5", "Type": "A"}], "srcaddr": "10.0.0.5",
        })})
    logs.put_log_events(logGroupName=group, logStreamName="vpc-a", logEvents=events)
    plain = [{"timestamp": _ms(EARLY + timedelta(minutes=i)), "message": f"conn from 10.0.0.{i} to 194.154.172.{i}"} for i in range(14)]
    plain.append({"timestamp": _ms(EARLY + timedelta(minutes=30)), "message": "conn from 10.0.0.9 to 94.154.172.43:443"})
    logs.put_log_events(logGroupName=group, logStreamName="vpc-b", logEvents=plain)
    return group


def test_sweep_finds_indicators_in_a_log_group(moto_server: str, log_group: str) -> None:
    res = sweep_paths([f"cloudwatch://{log_group}?region=us-east-1"], KICS, WINDOW, cloudwatch_endpoint=moto_server)
    (stats,) = res.files
    assert (stats.format, stats.lines, stats.unparsable, stats.errors) == ("cloudwatch", 30, 0, [])
    got = sorted((h.kind, h.indicator, h.timestamp, h.in_window) for h in res.hits)
    assert got == [
        ("domain", "audit.checkmarx.cx", BASE + timedelta(minutes=7), True),  # the message's own query_timestamp
        ("ip", "94.154.172.43", EARLY + timedelta(minutes=30), False),  # the event's time: the text has none
    ]
    assert all(h.path == f"cloudwatch://{log_group}?region=us-east-1" and h.line >= 1 for h in res.hits)


def test_reader_follows_next_token_and_stream_prefix(moto_server: str, log_group: str) -> None:
    events = list(cloudwatch.iter_log_events(log_group, endpoint_url=moto_server, region="us-east-1", page_size=4))
    assert len(events) == 30 and len({e.event_id for e in events}) == 30
    only_b = list(cloudwatch.iter_log_events(log_group, stream_prefix="vpc-b", endpoint_url=moto_server, region="us-east-1"))
    assert {e.stream for e in only_b} == {"vpc-b"} and len(only_b) == 15


def test_missing_log_group_is_reported_not_raised(moto_server: str) -> None:
    with pytest.raises(NotFound, match="cloudwatch:/no/such/group"):
        list(cloudwatch.iter_log_events("/no/such/group", endpoint_url=moto_server, region="us-east-1"))
    res = sweep_paths(["cloudwatch:///no/such/group"], KICS, WINDOW, cloudwatch_endpoint=moto_server)
    assert res.hits == [] and "cloudwatch:/no/such/group" in res.files[0].errors[0]
