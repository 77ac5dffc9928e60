"""The non-registry clients against a hostile loopback server (issue 15, point 2).

Stand-in: :mod:`tests.fakes.hostile_http`, a plain HTTP server answering every path with one fault; the
clients under test are our own GitHub/GitLab clients (httpx, through ``integrations._rest.RestClient``) and
``SlackClient`` (the vendor's unmodified ``slack_sdk.WebClient`` with our bounded transport). For each fault:
the call ends within its deadline (plus one socket timeout), with the typed error that says what happened,
and no more than the cap (plus socket buffers) was read.
"""

from __future__ import annotations

import time

import pytest

from digestguard.errors import IntegrationError, RateLimited, Refused, Unavailable
from integrations._rest import MAX_JSON_BYTES, MAX_LOG_BYTES
from integrations.github import GitHubClient
from integrations.gitlab import GitLabClient
from integrations.slack import MAX_ANSWER_BYTES, SlackClient
from tests.fakes.hostile_http import start_hostile_http

DEADLINE = 2.0
SLACK = 8 << 20  # loopback socket buffers: what a server may have written that nobody read


@pytest.fixture
def hostile(request):
    h = start_hostile_http(request.param)
    yield h
    h.stop()


def _github(h):
    return GitHubClient("ghp_" + "x" * 36, api_url=h.url, deadline=DEADLINE, timeout=1.0, max_retries=2, backoff=0.05)


def _slack(h):
    return SlackClient("xoxb-test", base_url=h.url + "/api/", deadline=DEADLINE, timeout=1)


EXPECT = {  # fault -> (error type, words the message carries)
    "drip": (Unavailable, "deadline"),
    "header-drip": (Unavailable, "deadline"),
    "huge": (Refused, "cap"),
    "huge-declared": (Refused, "cap"),
    "429-long": (RateLimited, ""),
    "503-long": (Unavailable, ""),
    "non-json": (IntegrationError, "not JSON"),
    "wrong-type": (IntegrationError, "expected"),
}


@pytest.mark.parametrize("hostile", list(EXPECT), indirect=True)
def test_github_call_is_bounded(hostile):
    kind, words = EXPECT[hostile.fault]
    with _github(hostile) as gh:
        t0 = time.monotonic()
        with pytest.raises(kind) as err:
            gh.get_repository("octo", "app")
        took = time.monotonic() - t0
    assert took < DEADLINE + 1.5, took
    assert words in str(err.value)
    assert "ghp_" not in str(err.value)
    assert hostile.sent <= MAX_JSON_BYTES + SLACK
    if hostile.fault.endswith("-long"):
        assert hostile.calls == 1  # an hour's wait is not slept through, nor hammered
        assert err.value.status == int(hostile.fault[:3])


@pytest.mark.parametrize("hostile", ["huge"], indirect=True)
def test_ci_log_download_is_capped(hostile):
    """A CI log is allowed more than an API answer, but not without end (200 MiB sent, 64 MiB cap)."""
    with GitLabClient("glpat-" + "x" * 20, api_url=hostile.url + "/api/v4", deadline=30, timeout=5) as gl:
        with pytest.raises(Refused, match="cap"):
            gl.job_trace(1, 2)
    assert hostile.sent <= MAX_LOG_BYTES + SLACK


@pytest.mark.parametrize("hostile", ["flood-error"], indirect=True)
def test_error_body_flood_is_cut(hostile):
    with _github(hostile) as gh:
        with pytest.raises(Unavailable) as err:
            gh.get_repository("octo", "app")
    assert len(str(err.value)) < 1000
    assert hostile.sent < 3 * (64 << 10) + 3 * SLACK  # three attempts, each reading 64 KiB of the error


SLACK_EXPECT = {
    "drip": (Unavailable, "deadline"),
    "header-drip": (Unavailable, "deadline"),
    "huge": (Refused, "cap"),
    "huge-declared": (Refused, "cap"),
    "429-long": (RateLimited, ""),
    "503-long": (Unavailable, ""),
    "non-json": (Unavailable, ""),
    "wrong-type": (Unavailable, "not a JSON object"),
    "flood-error": (Unavailable, ""),
}


@pytest.mark.parametrize("hostile", list(SLACK_EXPECT), indirect=True)
def test_slack_post_is_bounded(hostile):
    kind, words = SLACK_EXPECT[hostile.fault]
    client = _slack(hostile)
    t0 = time.monotonic()
    with pytest.raises(kind) as err:
        client.post("#sec-incident", "incident opened")
    took = time.monotonic() - t0
    assert took < DEADLINE + 1.5, took
    assert words in str(err.value)
    assert "xoxb-" not in str(err.value)
    assert hostile.sent < max(MAX_ANSWER_BYTES, 64 << 10) * 3 + 3 * SLACK
    if hostile.fault == "429-long":
        assert hostile.calls == 1 and err.value.retry_after == 3600
