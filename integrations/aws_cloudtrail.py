"""AWS CloudTrail ``LookupEvents`` by access key: the provider's own answer to "was this key used?".

``LookupEvents`` is limited to 2 requests per second per account and region; this client
keeps to that itself (one shared pacer per process and endpoint) rather than leaning on
throttling retries. Pagination resumes from a page token: ``on_page(token)`` is called with
each next token before that page is fetched, so a caller can journal it and a later call with
``resume_token`` continues exactly there (no page read twice, none skipped).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import boto3

from digestguard.errors import IntegrationError
from integrations._errors import aws_errors, keep_secrets_out_of_botocore_debug_logs
from integrations._rest import DEFAULT_DEADLINE, MAX_PAGES, RateLimit, botocore_config, bound_botocore, rate_limit

keep_secrets_out_of_botocore_debug_logs()

__all__ = ["RATE_PER_SECOND", "TrailEvent", "cloudtrail_client", "lookup_by_access_key"]

RATE_PER_SECOND = 2.0
"""CloudTrail's published LookupEvents limit, per account and region."""
DELIVERY_HORIZON_SECONDS = 15 * 60
"""CloudTrail delivers an event to event history within about 5 minutes of the call, usually; "not used" is said
only once 15 minutes have passed since the end of the window."""


@dataclass(frozen=True)
class TrailEvent:
    """One CloudTrail event (ids, names, addresses; no request parameters)."""

    event_id: str
    name: str
    at: datetime
    source: str
    username: str
    access_key_id: str
    source_ip: str


def _pacer(key: str) -> RateLimit:
    """The process-wide LookupEvents budget of one endpoint and region: 2 a second, evenly spaced, 10 % margin."""
    return rate_limit("cloudtrail", key, 1, 1.1 / RATE_PER_SECOND)


def cloudtrail_client(*, session: boto3.session.Session | None = None, endpoint_url: str | None = None,
                      deadline: float = DEFAULT_DEADLINE, **kwargs: Any):
    """A CloudTrail client whose every call ends within ``deadline`` with a capped answer (:func:`bound_botocore`)."""
    client = (session or boto3.session.Session()).client("cloudtrail", endpoint_url=endpoint_url,
                                                         config=botocore_config(), **kwargs)
    return bound_botocore(client, f"aws cloudtrail {endpoint_url or client.meta.endpoint_url}", deadline=deadline)


def _event(e: dict) -> TrailEvent:
    try:
        record = json.loads(e.get("CloudTrailEvent") or "{}")
    except ValueError:
        record = {}
    at = e.get("EventTime")
    at = at if isinstance(at, datetime) else datetime.fromtimestamp(float(at or 0), timezone.utc)
    return TrailEvent(event_id=str(e.get("EventId", "")), name=str(e.get("EventName", "")), at=at.astimezone(timezone.utc),
                      source=str(e.get("EventSource", "")), username=str(e.get("Username", "")),
                      access_key_id=str(e.get("AccessKeyId", "")), source_ip=str(record.get("sourceIPAddress", "")))


def lookup_by_access_key(ct, access_key_id: str, start: datetime, end: datetime, *, resume_token: str | None = None,
                         on_page: Callable[[str], None] | None = None, max_pages: int = MAX_PAGES) -> Iterator[TrailEvent]:
    """Every event signed with ``access_key_id`` between ``start`` and ``end``, newest first, paced to 2 requests/s.

    At most ``max_pages`` pages per call: past them ``IntegrationError`` (the caller resumes from the last
    ``on_page`` token), so a server that pages forever cannot hold a run forever."""
    pacer = _pacer(str(getattr(getattr(ct, "meta", None), "endpoint_url", "")) + str(getattr(getattr(ct, "meta", None),
                                                                                          "region_name", "")))
    token = resume_token
    for _ in range(max_pages):
        req: dict[str, Any] = {"LookupAttributes": [{"AttributeKey": "AccessKeyId", "AttributeValue": access_key_id}],
                               "StartTime": start, "EndTime": end, "MaxResults": 50}
        if token:
            req["NextToken"] = token
        pacer.acquire(f"aws cloudtrail LookupEvents ({access_key_id})")
        with aws_errors(f"aws cloudtrail LookupEvents ({access_key_id})"):
            page = ct.lookup_events(**req)
        for e in page.get("Events", []):
            yield _event(e)
        token = page.get("NextToken")
        if not token:
            return
        if on_page is not None:
            on_page(token)
    raise IntegrationError(f"aws cloudtrail LookupEvents ({access_key_id})",
                           f"more than {max_pages} pages; resume from the last page token")
