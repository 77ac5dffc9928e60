"""CloudWatch Logs: every event of a log group through boto3's ``filter_log_events`` pagination.

The network sweep and the watch read CloudWatch like any other log source; the
lines themselves are parsed by ``digestguard.netlog``.

Bounds (issue 15): each ``filter_log_events`` call (every attempt, retry wait and read)
ends within ``deadline`` and reads at most :data:`integrations._rest.MAX_JSON_BYTES`
(:func:`integrations._rest.bound_botocore`, which says exactly what botocore itself still
bounds only per socket wait); one iteration follows at most ``max_pages`` pages, so at
most ``max_pages * page_size`` events. Past a bound the error is typed and names the
log group, and a sweep records it as that unit's error (partial, never clean).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs

import boto3

from digestguard.errors import InputError, IntegrationError
from digestguard.netlog import epoch_to_utc
from integrations._errors import aws_errors
from integrations._rest import DEFAULT_DEADLINE, MAX_PAGES, botocore_config, bound_botocore


@dataclass(frozen=True)
class LogEvent:
    """One CloudWatch Logs event: the stream it is in, its time (UTC) and message."""

    stream: str
    timestamp: datetime
    message: str
    event_id: str = ""


def iter_log_events(
    log_group: str,
    *,
    stream_prefix: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    client: Any = None,
    page_size: int = 10000,
    deadline: float = DEFAULT_DEADLINE,
    max_pages: int = MAX_PAGES,
) -> Iterator[LogEvent]:
    """Every event of ``log_group`` via ``filter_log_events`` pagination (``nextToken``).

    No ``filterPattern`` is sent on purpose: CloudWatch's term matching is case
    sensitive and knows nothing of label boundaries, and the sweep must count
    every line it read; matching happens on our side. ``endpoint_url`` lets
    tests point boto3 at a moto server (boto3 also honours
    ``AWS_ENDPOINT_URL_LOGS``). Errors come out typed and name the log group.
    ``deadline`` bounds each page's call and ``max_pages`` the pages (see the module docstring);
    a ``client`` passed in is bounded by whoever made it.
    """
    source = f"cloudwatch:{log_group}"
    if client is None:
        with aws_errors(source):
            client = bound_botocore(boto3.client("logs", endpoint_url=endpoint_url, region_name=region,
                                                 config=botocore_config()), source, deadline=deadline)
    kwargs: dict[str, Any] = {"logGroupName": log_group, "limit": page_size}
    if stream_prefix:
        kwargs["logStreamNamePrefix"] = stream_prefix
    if start is not None:
        kwargs["startTime"] = int(start.timestamp() * 1000)
    if end is not None:
        kwargs["endTime"] = int(end.timestamp() * 1000)
    token = None
    for _ in range(max_pages):
        if token:
            kwargs["nextToken"] = token
        with aws_errors(source):
            page = client.filter_log_events(**kwargs)
        for ev in page.get("events", []):
            if stream_prefix and not str(ev.get("logStreamName", "")).startswith(stream_prefix):
                continue  # the prefix is also enforced here: some emulators ignore it
            yield LogEvent(
                stream=str(ev.get("logStreamName", "")),
                timestamp=epoch_to_utc(int(ev.get("timestamp", 0)) / 1000.0),
                message=str(ev.get("message", "")),
                event_id=str(ev.get("eventId", "")),
            )
        new = page.get("nextToken")
        if not new or new == token:
            return
        token = new
    raise IntegrationError(source, f"more than {max_pages} pages of events; narrow the time window or stream prefix")


def parse_cloudwatch_uri(uri: str) -> dict[str, str]:
    """``cloudwatch://LOG-GROUP[?stream=PREFIX&region=R&endpoint=URL]`` -> its parts.

    The log group is everything after ``cloudwatch://`` up to ``?`` (names such
    as ``/aws/route53/resolver`` keep their slashes).
    """
    if not uri.startswith("cloudwatch://"):
        raise InputError(uri, "not a cloudwatch:// address")
    rest = uri[len("cloudwatch://"):]
    group, _, query = rest.partition("?")
    if not group:
        raise InputError(uri, "no log group named (cloudwatch://LOG-GROUP)")
    out = {"log_group": group}
    for k, v in parse_qs(query).items():
        if k not in ("stream", "region", "endpoint"):
            raise InputError(uri, f"unknown parameter {k!r} (known: stream, region, endpoint)")
        out[k] = v[-1]
    return out
