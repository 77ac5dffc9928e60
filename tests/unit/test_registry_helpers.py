"""Pure helpers of integrations.registry: challenge and header parsing, index walking, digest checks."""

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
