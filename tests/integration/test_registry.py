"""integrations.registry against a REAL registry (Debian docker-registry 2.8, session fixtures).

Paths a plain registry cannot show (no digest header, paginated tags, bearer
and basic auth, 429/5xx) go through the local protocol server
``tests/fakes/oci_gateway.py``, which forwards to the same real registry, so
bytes and digests stay the registry's own.
"""

from __future__ import annotations

import hashlib

import httpx
import pytest

from digestguard.errors import AuthError, InputError, NotFound, RateLimited, Refused, Unavailable
from integrations.registry import (
    DELETE_SETTING,
    DOCKER_MANIFEST_LIST,
    MANIFEST_ACCEPT,
    OCI_INDEX,
    RegistryClient,
    registry_base_url,
    registry_repository,
    resolve_many,
)
from tests.fakes.oci_gateway import start_gateway
from tests.support.registry import overwrite_tag, push_image, push_index, push_many_tags


@pytest.fixture(scope="module")
def gateway(registry):
    gw = start_gateway(registry.base_url)
    yield gw
    gw.stop()


@pytest.fixture
def gw(gateway):
    gateway.reset()
    yield gateway
    gateway.reset()


def client(host: str, **kw) -> RegistryClient:
    kw.setdefault("backoff", 0.01)
    return RegistryClient(host, **kw)


def test_host_mapping_for_docker_hub_and_loopback():
    assert registry_base_url("docker.io") == "https://registry-1.docker.io"
    assert registry_base_url("index.docker.io") == "https://registry-1.docker.io"
    assert registry_base_url("127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert registry_base_url("ghcr.io") == "https://ghcr.io"
    assert registry_base_url("reg.internal:5000", insecure=True) == "http://reg.internal:5000"
    assert registry_repository("docker.io", "alpine") == "library/alpine"
    assert registry_repository("docker.io", "checkmarx/kics") == "checkmarx/kics"
    assert registry_repository("ghcr.io", "alpine") == "alpine"


def test_resolve_tag_of_index_and_image(registry):
    idx = push_index(registry.base_url, "checkmarx/kics", "v2.1.20")
    img = push_image(registry.base_url, "checkmarx/kics", "alpine-docker", docker=True)
    with client(registry.host) as reg:
        assert reg.resolve("checkmarx/kics", "v2.1.20") == idx.digest
        assert reg.resolve("checkmarx/kics", "alpine-docker") == img.digest
        with pytest.raises(NotFound) as e:
            reg.resolve("checkmarx/kics", "no-such-tag")
        assert "checkmarx/kics:no-such-tag" in str(e.value)


def test_head_without_oci_accept_is_404_so_we_send_all_four(registry):
    """Why the Accept header matters: the registry hides an OCI index from a bare HEAD."""
    idx = push_index(registry.base_url, "acc/app", "latest")
    bare = httpx.head(f"{registry.base_url}/v2/acc/app/manifests/latest")
    assert bare.status_code == 404
    full = httpx.head(f"{registry.base_url}/v2/acc/app/manifests/latest", headers={"Accept": MANIFEST_ACCEPT})
    assert full.headers["docker-content-digest"] == idx.digest


def test_overwritten_tag_resolves_to_the_new_digest(registry):
    old = push_index(registry.base_url, "attack/kics", "latest")
    new = overwrite_tag(registry.base_url, "attack/kics", "latest")
    assert new.digest != old.digest
    with client(registry.host) as reg:
        assert reg.resolve("attack/kics", "latest") == new.digest
        assert reg.exists("attack/kics", old.digest)  # the old content is still there, untagged


def test_get_manifest_and_index_walk(registry):
    idx = push_index(registry.base_url, "walk/app", "1.0")
    lst = push_index(registry.base_url, "walk/app", "1.0-docker", docker=True)
    with client(registry.host) as reg:
        m = reg.get_manifest("walk/app", "1.0")
        assert m.body == idx.manifest and m.media_type == OCI_INDEX and m.digest == idx.digest and m.is_index
        children = reg.get_index_children("walk/app", idx.digest)
        assert {c.platform: c.digest for c in children} == idx.children
        assert {c.platform for c in reg.get_index_children("walk/app", "1.0-docker")} == {"linux/amd64", "linux/arm64"}
        assert reg.get_manifest("walk/app", lst.digest).media_type == DOCKER_MANIFEST_LIST
        child = reg.get_manifest("walk/app", idx.children["linux/arm64"])
        assert not child.is_index and reg.get_index_children("walk/app", child.digest) == []
        with pytest.raises(NotFound):
            reg.get_manifest("walk/app", "sha256:" + "0" * 64)
        with pytest.raises(InputError):
            reg.get_manifest("walk/app", "sha256:abc")


def test_blob_exists(registry):
    img = push_image(registry.base_url, "blobs/app", "1")
    with client(registry.host) as reg:
        assert reg.blob_exists("blobs/app", img.layer_digests[0])
        assert reg.blob_exists("blobs/app", img.config_digest)
        assert not reg.blob_exists("blobs/app", "sha256:" + hashlib.sha256(b"nope").hexdigest())
        config = reg.get_blob("blobs/app", img.config_digest)
        assert hashlib.sha256(config).hexdigest() == img.config_digest.split(":")[1]
        with pytest.raises(NotFound):
            reg.get_blob("blobs/app", "sha256:" + hashlib.sha256(b"nope").hexdigest())
        with pytest.raises(Refused):
            reg.get_blob("blobs/app", img.layer_digests[0], max_bytes=10)


def test_list_tags_plain(registry):
    push_many_tags(registry.base_url, "tags/plain", 12)
    with client(registry.host) as reg:
        assert sorted(reg.list_tags("tags/plain")) == sorted(f"t{i}" for i in range(12))
        with pytest.raises(NotFound):
            reg.list_tags("tags/never-pushed")


def test_list_tags_follows_link_pagination(registry, gw):
    """Uses the local gateway server (tests/fakes/oci_gateway.py) to paginate tags/list with Link headers."""
    push_many_tags(registry.base_url, "tags/paged", 25)
    gw.page_size = 10
    with client(gw.host) as reg:
        tags = reg.list_tags("tags/paged")
    assert sorted(tags) == sorted(f"t{i}" for i in range(25)) and len(tags) == 25
    pages = [c for c in gw.calls if "/tags/list" in c.path]
    assert len(pages) == 3 and "last=" in pages[1].path


def test_delete_by_digest_202_then_gone(registry):
    idx = push_index(registry.base_url, "del/app", "latest")
    with client(registry.host) as reg:
        reg.delete_manifest("del/app", idx.digest)
        assert not reg.exists("del/app", idx.digest)
        with pytest.raises(NotFound):
            reg.resolve("del/app", "latest")  # the tag vanished with its digest
        with pytest.raises(NotFound):
            reg.delete_manifest("del/app", idx.digest)
        with pytest.raises(InputError, match="digest"):
            reg.delete_manifest("del/app", "latest")


def test_delete_refused_405_names_the_setting(registry_nodelete):
    img = push_image(registry_nodelete.base_url, "keep/app", "latest")
    with client(registry_nodelete.host) as reg:
        with pytest.raises(Refused) as e:
            reg.delete_manifest("keep/app", img.digest)
        assert e.value.status == 405
        assert "storage.delete.enabled: true" in str(e.value) and "REGISTRY_STORAGE_DELETE_ENABLED=true" in str(e.value)
        assert DELETE_SETTING in str(e.value)
        assert reg.resolve("keep/app", "latest") == img.digest


def test_resolve_falls_back_to_get_and_hash(registry, gw):
    """Uses the local gateway server: it strips Docker-Content-Digest, so the client must hash the exact GET body."""
    idx = push_index(registry.base_url, "nohdr/app", "latest")
    gw.strip_digest = True
    with client(gw.host) as reg:
        assert reg.resolve("nohdr/app", "latest") == idx.digest
    methods = [c.method for c in gw.calls if "/manifests/" in c.path]
    assert "HEAD" in methods and "GET" in methods


def test_bearer_token_flow_cached_per_scope(registry, gw):
    """Uses the local gateway server as a Docker-style token-auth registry (realm/service/scope challenge)."""
    idx = push_index(registry.base_url, "auth/app", "latest")
    other = push_image(registry.base_url, "auth/other", "latest")
    gw.bearer = True
    gw.token_user, gw.token_password = "robot", "s3cret-pass"
    with client(gw.host, username="robot", password="s3cret-pass") as reg:
        for _ in range(3):
            assert reg.resolve("auth/app", "latest") == idx.digest
        assert reg.resolve("auth/other", "latest") == other.digest
        assert "s3cret-pass" not in repr(reg)
    scopes = [q["scope"] for q in gw.token_requests]
    assert scopes == ["repository:auth/app:pull", "repository:auth/other:pull"]
    assert all(q["service"] == "gateway.test" for q in gw.token_requests)


def test_bearer_token_refused(registry, gw):
    """Uses the local gateway server: wrong credentials at the token realm -> AuthError without the secret."""
    push_image(registry.base_url, "auth/denied", "latest")
    gw.bearer = True
    gw.token_user, gw.token_password = "robot", "right"
    with client(gw.host, username="robot", password="wrong-secret") as reg:
        with pytest.raises(AuthError) as e:
            reg.resolve("auth/denied", "latest")
    assert "wrong-secret" not in str(e.value) and "auth/denied" in str(e.value)


def test_anonymous_bearer_and_basic(registry, gw):
    """Uses the local gateway server: anonymous token flow, then a basic-auth private registry."""
    img = push_image(registry.base_url, "anon/app", "latest")
    gw.bearer = True
    with client(gw.host) as reg:
        assert reg.resolve("anon/app", "latest") == img.digest
    gw.reset()
    gw.basic = ("alice", "pw-basic")
    with client(gw.host, username="alice", password="pw-basic") as reg:
        assert reg.get_manifest("anon/app", "latest").digest == img.digest
    with client(gw.host) as reg, pytest.raises(AuthError):
        reg.resolve("anon/app", "latest")


def test_retries_5xx_and_429_with_retry_after(registry, gw):
    """Uses the local gateway server to inject 503s and a 429 with Retry-After before forwarding."""
    img = push_image(registry.base_url, "flaky/app", "latest")
    slept: list[float] = []
    gw.fail_next(503, times=2)
    gw.fail_next(429, headers={"Retry-After": "2"})
    with client(gw.host, sleep=slept.append, fast_path=False) as reg:
        assert reg.resolve("flaky/app", "latest") == img.digest
    assert len(slept) == 3 and slept[-1] == 2.0


def test_retry_budget_is_bounded(registry, gw):
    """Uses the local gateway server: persistent 503 -> Unavailable; a long Retry-After -> RateLimited(retry_after)."""
    push_image(registry.base_url, "down/app", "latest")
    gw.fail_next(503, times=10)
    with client(gw.host, sleep=lambda s: None, max_retries=2) as reg, pytest.raises(Unavailable) as e:
        reg.resolve("down/app", "latest")
    assert e.value.retryable
    gw.reset()
    gw.fail_next(429, times=2, headers={"Retry-After": "3600"})
    with client(gw.host, sleep=lambda s: None) as reg, pytest.raises(RateLimited) as e2:
        reg.resolve("down/app", "latest")
    assert e2.value.retry_after == 3600


def test_ratelimit_remaining_zero_stops_gets(registry, gw):
    """Uses the local gateway server to send Docker Hub's ratelimit headers: HEAD still works, GET is refused up front."""
    img = push_image(registry.base_url, "rl/app", "latest")
    gw.ratelimit = (100, 0)
    with client(gw.host) as reg:
        assert reg.resolve("rl/app", "latest") == img.digest
        assert reg.rate_limit.remaining == 0 and reg.rate_limit.limit == 100 and reg.rate_limit.window_seconds == 21600
        with pytest.raises(RateLimited):
            reg.get_manifest("rl/app", "latest")


def test_unreachable_registry_is_unavailable():
    with client("127.0.0.1:9", sleep=lambda s: None, max_retries=1, timeout=1) as reg:
        with pytest.raises(Unavailable) as e:
            reg.resolve("x/y", "latest")
    assert "127.0.0.1:9" in str(e.value)


def test_resolve_many_keeps_order_and_errors(registry):
    tags = push_many_tags(registry.base_url, "many/app", 50)
    idx = push_index(registry.base_url, "many/idx", "latest")
    refs = [registry.ref("many/app", t) for t in tags]
    refs += [registry.ref("many/idx", "latest"), registry.ref("many/app", "missing"), "NOT A REF",
             registry.ref("many/app", digest=idx.digest)]
    out = resolve_many(refs, concurrency=8)
    assert [r.reference for r in out] == refs
    assert [r.digest for r in out[:50]] == list(tags.values())
    assert out[50].digest == idx.digest
    assert isinstance(out[51].error, NotFound) and out[51].digest is None
    assert isinstance(out[52].error, InputError)
    assert out[53].digest == idx.digest and out[53].ok


def test_resolve_many_through_bearer_auth(registry, gw):
    """Uses the local gateway server (bearer auth): one token per repository scope, then keep-alive HEADs carry it."""
    tags = push_many_tags(registry.base_url, "many/auth", 30)
    gw.bearer = True
    refs = [f"{gw.host}/many/auth:{t}" for t in tags]
    out = resolve_many(refs, concurrency=4, backoff=0.01)
    assert all(r.ok for r in out), [r.error for r in out if r.error]
    assert {r.digest for r in out} == set(tags.values())
    assert 1 <= len(gw.token_requests) <= 4  # racing workers may each fetch once, never per reference


def test_a_request_budget_paces_every_request(registry):
    """Docker Hub's per-address abuse budget (any RegistryClient on registry-1.docker.io shares it), exercised on the
    real local registry with a small budget: the fast keep-alive HEAD path and the full path both wait their turn."""
    import time

    from integrations._rest import RateLimit
    from integrations.registry import DOCKER_HUB_REQUESTS_PER_MINUTE, docker_hub_limit

    idx = push_index(registry.base_url, "paced/app", "1.0")
    assert RegistryClient("docker.io").request_limit is docker_hub_limit()
    assert docker_hub_limit().count == DOCKER_HUB_REQUESTS_PER_MINUTE
    limit = RateLimit(3, 0.4)
    client = RegistryClient(registry.host, base_url=registry.base_url, request_limit=limit)
    t = time.monotonic()
    for _ in range(7):
        assert client.resolve("paced/app", "1.0") == idx.digest
    with pytest.raises(NotFound):
        client.resolve("paced/app", "missing")
    assert time.monotonic() - t >= 0.75 and limit.waited > 0
