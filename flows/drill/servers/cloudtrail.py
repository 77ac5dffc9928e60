"""A local stand-in for AWS CloudTrail's ``LookupEvents`` (moto has none), for the unmodified boto3 client.

Speaks CloudTrail's documented JSON 1.1 protocol: ``POST /`` with
``X-Amz-Target: com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.LookupEvents`` and
``Content-Type: application/x-amz-json-1.1``; the body has ``LookupAttributes`` (one
``{AttributeKey, AttributeValue}``), ``StartTime``/``EndTime`` (epoch seconds), ``MaxResults``
(at most 50) and ``NextToken``; the answer ``{"Events": [...], "NextToken": ...}``, newest first,
each event with ``EventId``, ``EventName``, ``EventTime`` (epoch), ``EventSource``, ``Username``,
``AccessKeyId``, ``ReadOnly`` and ``CloudTrailEvent`` (the full record as a JSON string).

Like CloudTrail it allows 2 requests per second (per account and region): a third request within
one second is answered ``400 ThrottlingException``. ``page_size`` forces small pages;
``fail_after`` makes every request after the N-th answer 503 (a service outage mid-pagination).
``requests`` records (time, body) of each accepted request; ``throttled`` counts refusals.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TARGET = "com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.LookupEvents"
_KEYS = {"AccessKeyId", "Username", "EventName", "EventSource", "EventId", "ReadOnly", "ResourceName", "ResourceType"}


@dataclass
class CloudTrailServer:
    events: list[dict] = field(default_factory=list)
    page_size: int = 50
    rate_per_second: int = 2
    fail_after: int | None = None
    requests: list[tuple[float, dict]] = field(default_factory=list)
    throttled: int = 0
    server: ThreadingHTTPServer | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    _recent: list[float] = field(default_factory=list)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add_event(self, name: str, at: datetime, access_key_id: str, *, username: str = "ci-deployer",
                  source: str = "s3.amazonaws.com", ip: str = "203.0.113.9") -> dict:
        record = {"eventVersion": "1.08", "eventTime": at.strftime("%Y-%m-%dT%H:%M:%SZ"), "eventSource": source,
                  "eventName": name, "sourceIPAddress": ip, "userAgent": "aws-cli/2.15",
                  "userIdentity": {"type": "IAMUser", "userName": username, "accessKeyId": access_key_id}}
        ev = {"EventId": str(uuid.uuid4()), "EventName": name, "ReadOnly": "true", "AccessKeyId": access_key_id,
              "EventTime": at.timestamp(), "EventSource": source, "Username": username, "Resources": [],
              "CloudTrailEvent": json.dumps(record)}
        self.events.append(ev)
        return ev

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def _admit(self) -> bool:
        with self.lock:
            now = time.monotonic()
            self._recent = [t for t in self._recent if now - t < 1.0]
            if len(self._recent) >= self.rate_per_second:
                self.throttled += 1
                return False
            self._recent.append(now)
            return True

    def lookup(self, body: dict) -> tuple[int, dict]:
        attrs = body.get("LookupAttributes") or []
        if len(attrs) > 1:
            return 400, {"__type": "InvalidLookupAttributesException", "Message": "only one lookup attribute"}
        if attrs and attrs[0].get("AttributeKey") not in _KEYS:
            return 400, {"__type": "InvalidLookupAttributesException", "Message": "unknown attribute key"}
        size = int(body.get("MaxResults") or 50)
        if not 1 <= size <= 50:
            return 400, {"__type": "InvalidMaxResultsException", "Message": "MaxResults must be 1..50"}
        size = min(size, self.page_size)
        start, end = body.get("StartTime"), body.get("EndTime")
        hits = [e for e in self.events
                if (not attrs or str(e.get(attrs[0]["AttributeKey"])) == attrs[0]["AttributeValue"])
                and (start is None or e["EventTime"] >= float(start)) and (end is None or e["EventTime"] <= float(end))]
        hits.sort(key=lambda e: -e["EventTime"])
        offset = 0
        if body.get("NextToken"):
            try:
                offset = int(str(body["NextToken"]).removeprefix("page-"))
            except ValueError:
                return 400, {"__type": "InvalidNextTokenException", "Message": "invalid token"}
        page = hits[offset:offset + size]
        out: dict = {"Events": page}
        if offset + size < len(hits):
            out["NextToken"] = f"page-{offset + size}"
        return 200, out


def start_cloudtrail_server(**kw) -> CloudTrailServer:
    state = CloudTrailServer(**kw)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a) -> None:
            pass

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("X-Amz-Target") != TARGET:
                return self._send(400, {"__type": "UnknownOperationException", "Message": "unknown operation"})
            if "Credential=" not in (self.headers.get("Authorization") or ""):
                return self._send(400, {"__type": "MissingAuthenticationTokenException", "Message": "not signed"})
            if not state._admit():
                return self._send(400, {"__type": "ThrottlingException", "Message": "Rate exceeded"})
            body = json.loads(raw or b"{}")
            with state.lock:
                n = len(state.requests)
                state.requests.append((time.monotonic(), body))
            if state.fail_after is not None and n >= state.fail_after:
                return self._send(503, {"__type": "ServiceUnavailableException", "Message": "try later"})
            status, out = state.lookup(body)
            self._send(status, out)

    state.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=state.server.serve_forever, daemon=True).start()
    return state
