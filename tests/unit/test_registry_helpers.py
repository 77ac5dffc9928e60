"""Pure helpers of integrations.registry (challenge and header parsing, index walking, digest checks) and the one retry policy."""

from __future__ import annotations

import json

import pytest

from digestguard.errors import IntegrationError
from integrations.registry import (
    OCI_INDEX,
    OCI_MANIFEST,
    Manifest,
    index_children,
    parse_challenge,
    parse_ratelimit,
    parse_retry_after,
    sha256_of,
    verify_digest,
)


def test_parse_docker_hub_challenge():
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:checkmarx/kics:pull"'
    )
    assert scheme == "bearer"
    assert params == {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                      "scope": "repository:checkmarx/kics:pull"}
    assert parse_challenge('Basic realm="Registry Realm"') == ("basic", {"realm": "Registry Realm"})


def test_parse_ratelimit_and_retry_after():
    assert parse_ratelimit("100;w=21600") == (100, 21600)
    assert parse_ratelimit("0") == (0, None)
    assert parse_ratelimit("junk") == (None, None)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None


def test_index_children_keeps_platforms_and_attestations():
    d1, d2, d3 = ("sha256:" + c * 64 for c in "abc")
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": d1, "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": OCI_MANIFEST, "digest": d2, "size": 2,
         "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"mediaType": OCI_MANIFEST, "digest": d3, "size": 3, "platform": {"os": "unknown", "architecture": "unknown"}},
    ]}).encode()
    kids = index_children(Manifest(body, OCI_INDEX, sha256_of(body)))
    assert [(k.platform, k.digest) for k in kids] == [("linux/amd64", d1), ("linux/arm64/v8", d2), ("unknown/unknown", d3)]
    assert index_children(Manifest(b"{}", OCI_MANIFEST, sha256_of(b"{}"))) == []


def test_verify_digest_catches_other_bytes():
    verify_digest(b"abc", sha256_of(b"abc"), "src")
    with pytest.raises(IntegrationError, match="does not match"):
        verify_digest(b"abd", sha256_of(b"abc"), "src")


# ---------------------------------------------------------------- the one retry policy (integrations._rest)


def test_retry_policy_decides_the_same_for_every_client():
    from integrations._rest import RETRY_STATUSES, Retrier, RetryPolicy

    assert RETRY_STATUSES == {429, 500, 502, 503, 504}
    policy = RetryPolicy(max_retries=2, backoff=0.5, max_backoff=0.75, max_wait=10.0)
    assert policy.retryable(None) and policy.retryable(503) and not policy.retryable(404)
    assert not policy.retryable(503, safe=False)  # a POST is not repeated after a 5xx
    slept: list[float] = []
    retrier = Retrier(policy, slept.append)
    assert retrier.again(503) and retrier.again(429, retry_after=3.0)
    assert not retrier.again(503)  # two retries spent
    assert slept == [0.5, 3.0] and retrier.attempts == 3
    assert policy.wait(0, retry_after=11.0) is None  # longer than max_wait: the caller decides
    assert RetryPolicy(deadline=1.0).wait(0, elapsed=0.9) is None
    with pytest.raises(ValueError):
        RetryPolicy(max_retries=-1)


def test_sdk_retries_come_from_the_named_policies():
    from integrations._rest import AWS_SDK_POLICY, VAULT_READ_POLICY, botocore_config, urllib3_retry

    assert botocore_config().retries == {"mode": "standard", "max_attempts": AWS_SDK_POLICY.max_retries}
    retry = urllib3_retry()
    assert (retry.total, retry.connect, retry.read) == (VAULT_READ_POLICY.max_retries, 2, 0)
    assert set(retry.status_forcelist) == {429, 502, 503, 504}
