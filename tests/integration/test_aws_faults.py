"""CloudWatch Logs and CloudTrail reads against a hostile loopback server (issue 15, point 2).

Stand-in: :mod:`tests.fakes.hostile_http`, a plain HTTP server answering every request with one fault (a
drip, a flood, a paginated answer that never ends); the clients are the vendor's unmodified boto3/botocore
clients made by our modules (``integrations.cloudwatch``, ``integrations.aws_cloudtrail``), bounded by
:func:`integrations._rest.bound_botocore`. Well-behaved reads are proven against moto in server mode in
``test_sweep_cloudwatch.py``. For each fault the read ends within its deadline (plus one socket timeout)
or its page cap, with a typed error naming the source, and no more than the cap (plus socket buffers) was read.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from digestguard.advisory import Indicator, Window
from digestguard.errors import IntegrationError, Refused, Unavailable
from integrations import aws_cloudtrail, cloudwatch
from integrations._rest import MAX_JSON_BYTES
from tasks.sweep.run import sweep_paths
from tests.fakes.hostile_http import start_hostile_http

DEADLINE = 2.0
SLACK = 8 << 20  # loopback socket buffers: what a server may have written that nobody read
GROUP = "/vpc/flow"


@pytest.fixture(autouse=True)
def _dummy_aws_credentials(monkeypatch):
    for k, v in {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "x" * 40,
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)


@pytest.fixture
def hostile(request):
    h = start_hostile_http(request.param)
    yield h
    h.stop()


@pytest.mark.parametrize(("hostile", "kind", "words"), [
    ("drip", Unavailable, "deadline"), ("huge", Refused, "cap"), ("huge-declared", Refused, "cap"),
], indirect=["hostile"])
def test_cloudwatch_page_is_bounded(hostile, kind, words):
    t0 = time.monotonic()
    with pytest.raises(kind) as err:
        list(cloudwatch.iter_log_events(GROUP, endpoint_url=hostile.url, region="us-east-1", deadline=DEADLINE))
    took = time.monotonic() - t0
    assert took < DEADLINE + 1.5, f"{hostile.fault}: took {took:.1f}s"
    assert f"cloudwatch:{GROUP}" in str(err.value) and words in str(err.value)
    assert hostile.sent <= MAX_JSON_BYTES + SLACK
    assert hostile.calls == 1  # a deadline or a cap is not retried


@pytest.mark.parametrize("hostile", ["pages-forever"], indirect=True)
def test_cloudwatch_pages_forever_is_cut_at_the_page_cap(hostile):
    read = []
    with pytest.raises(IntegrationError, match=f"cloudwatch:{GROUP}.*more than 5 pages"):
        for ev in cloudwatch.iter_log_events(GROUP, endpoint_url=hostile.url, region="us-east-1", max_pages=5):
            read.append(ev)
    assert len(read) == 5 and hostile.calls == 5


@pytest.mark.parametrize("hostile", ["pages-forever"], indirect=True)
def test_cloudtrail_pages_forever_is_cut_at_the_page_cap(hostile):
    ct = aws_cloudtrail.cloudtrail_client(endpoint_url=hostile.url, region_name="us-east-1")
    end = datetime.now(timezone.utc)
    tokens = []
    with pytest.raises(IntegrationError, match="more than 3 pages"):
        list(aws_cloudtrail.lookup_by_access_key(ct, "AKIAEXAMPLE", end - timedelta(days=1), end,
                                                 on_page=tokens.append, max_pages=3))
    assert hostile.calls == 3 and tokens[-1] == "page-3"  # the caller can resume from the last token


@pytest.mark.parametrize("hostile", ["drip"], indirect=True)
def test_cloudtrail_call_is_bounded(hostile):
    ct = aws_cloudtrail.cloudtrail_client(endpoint_url=hostile.url, region_name="us-east-1", deadline=DEADLINE)
    end = datetime.now(timezone.utc)
    t0 = time.monotonic()
    with pytest.raises(Unavailable, match="deadline"):
        list(aws_cloudtrail.lookup_by_access_key(ct, "AKIAEXAMPLE", end - timedelta(days=1), end))
    assert time.monotonic() - t0 < DEADLINE + 1.5


@pytest.mark.parametrize("hostile", ["huge-declared"], indirect=True)
def test_sweep_reports_a_flooding_log_group_as_an_error_not_clean(hostile):
    """The sweep stage: the unit carries the named error (coverage partial), and no hit is invented."""
    window = Window(start=datetime(2023, 1, 1, tzinfo=timezone.utc), source="seed")
    res = sweep_paths([f"cloudwatch://{GROUP}"], [Indicator(kind="domain", value="evil.example", source="seed")], window,
                      cloudwatch_endpoint=hostile.url)
    assert res.hits == [] and f"cloudwatch:{GROUP}" in res.files[0].errors[0] and "cap" in res.files[0].errors[0]
