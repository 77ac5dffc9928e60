"""integrations.dockerhub against the local Docker Hub API stand-in (flows/drill/servers/dockerhub.py).

Uses the local protocol server flows/drill/servers/dockerhub.py: Docker Hub's API has
no local server. Data modelled on the checkmarx/kics incident (tags overwritten
2026-04-22 from 12:35 UTC).
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from digestguard.errors import AuthError, InputError, NotFound, RateLimited
from flows.drill.servers.dockerhub import start_dockerhub
from integrations.dockerhub import DockerHub, hub_repository

BAD_INDEX = "sha256:a0d9366f6f0166dcbf92fcdc98e1a03d2e6210e8d7e8573f74d50849130651a0"
AMD64 = "sha256:26e8e9c5e53c972997a278ca6e12708b8788b70575ca013fd30bfda34ab5f48f"
GOOD = "sha256:" + "1" * 64


@pytest.fixture
def hub():
    hs = start_dockerhub()
    hs.users["secops-bot"] = "dckr_pat_test_secret"
    hs.add_tag("checkmarx/kics", "latest", BAD_INDEX, "2026-04-22T12:41:07.123456Z", {"linux/amd64": AMD64})
    hs.add_tag("checkmarx/kics", "v2.1.19", GOOD, "2026-03-03T09:00:00Z")
    for i in range(5):
        hs.add_tag("checkmarx/kics", f"old{i}", GOOD, "2025-01-01T00:00:00Z")
    hs.add_event("checkmarx", "repo.tag.push", "checkmarx/kics", "stolen-ci", "2026-04-22T12:41:07Z", tag="latest", digest=BAD_INDEX)
    hs.add_event("checkmarx", "repo.tag.push", "checkmarx/kics", "release-bot", "2026-03-03T09:00:00Z", tag="v2.1.19")
    hs.add_event("checkmarx", "team.member.add", "owners", "admin", "2026-04-01T00:00:00Z")
    yield hs
    hs.stop()


def test_hub_repository_names():
    assert hub_repository("checkmarx/kics") == ("checkmarx", "kics")
    assert hub_repository("index.docker.io/checkmarx/kics:latest") == ("checkmarx", "kics")
    assert hub_repository("alpine") == ("library", "alpine")
    with pytest.raises(InputError):
        hub_repository("ghcr.io/aquasecurity/trivy")


def test_tag_facts_anonymous(hub):
    with DockerHub(api_url=hub.url) as c:
        tag = c.get_tag("checkmarx/kics", "latest")
        assert tag.digest == BAD_INDEX
        assert tag.tag_last_pushed == datetime(2026, 4, 22, 12, 41, 7, 123456, tzinfo=timezone.utc)
        assert [(i.os, i.architecture, i.digest) for i in tag.images] == [("linux", "amd64", AMD64)]
        with pytest.raises(NotFound):
            c.get_tag("checkmarx/kics", "nope")
        tags = c.list_tags("checkmarx/kics", page_size=3)
    assert len(tags) == 7 and {t.name for t in tags} >= {"latest", "v2.1.19"}
    assert all(not auth for _, _, auth in hub.calls)


def test_audit_logs_with_login_and_filters(hub):
    with DockerHub(identifier="secops-bot", secret="dckr_pat_test_secret", api_url=hub.url) as c:
        pushes = c.audit_logs("checkmarx", action="repo.tag.push",
                              start=datetime(2026, 4, 22, 12, 0, tzinfo=timezone.utc),
                              end=datetime(2026, 4, 23, tzinfo=timezone.utc), page_size=1)
        everything = c.audit_logs("checkmarx", page_size=2)
    assert [(e.actor, e.data.get("tag"), e.data.get("digest")) for e in pushes] == [("stolen-ci", "latest", BAD_INDEX)]
    assert pushes[0].timestamp == datetime(2026, 4, 22, 12, 41, 7, tzinfo=timezone.utc)
    assert [e.action for e in everything] == ["repo.tag.push", "team.member.add", "repo.tag.push"]  # newest first
    assert ("POST", "/v2/auth/token", False) in hub.calls


def test_audit_logs_refused(hub):
    with DockerHub(api_url=hub.url) as c, pytest.raises(AuthError):
        c.audit_logs("checkmarx")
    with DockerHub(identifier="secops-bot", secret="wrong-pat-value", api_url=hub.url) as c:
        with pytest.raises(AuthError) as e:
            c.audit_logs("checkmarx")
    assert "wrong-pat-value" not in str(e.value)


def test_429_is_retried_then_surfaces(hub):
    slept: list[float] = []
    hub.fail_next(429, "1")
    with DockerHub(api_url=hub.url, sleep=slept.append) as c:
        assert c.get_tag("checkmarx/kics", "v2.1.19").digest == GOOD
    assert slept == [1.0]
    for _ in range(3):
        hub.fail_next(429, "7200")
    with DockerHub(api_url=hub.url, sleep=slept.append) as c, pytest.raises(RateLimited):
        c.get_tag("checkmarx/kics", "v2.1.19")


def test_requests_are_paced_by_the_shared_abuse_budget(hub):
    """Docker Hub's abuse limit is per address over every Hub property: the client spends one shared budget, and the
    stand-in (Docker Hub's documented HTTP API, recorded with arrival times) never sees more than it allows."""
    from integrations._rest import RateLimit
    from integrations.registry import docker_hub_limit

    assert DockerHub().__dict__["_opts"]["request_limit"] is docker_hub_limit()  # hub.docker.com: the shared budget
    limit = RateLimit(3, 0.4)
    with DockerHub(api_url=hub.url, request_limit=limit) as client:
        for _ in range(8):
            client.get_tag("checkmarx/kics", "latest")
    times = sorted(hub.call_times)[-8:]
    assert max(sum(1 for u in times if t <= u < t + 0.39) for t in times) <= 3
    assert times[-1] - times[0] >= 0.8 and limit.waited > 0
