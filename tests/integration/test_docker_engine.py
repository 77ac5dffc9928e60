"""integrations.docker_engine through a REAL podman API service (Docker-compatible) and a REAL local registry.

No local protocol server: podman answers the Docker Engine API on a unix socket
(tests/support/podman.py); images come from the session's docker-registry.
Containers are created, not started (crun cannot start them in this sandbox).
"""

from __future__ import annotations

import pytest

from digestguard.errors import InputError, NotFound, Refused
from integrations.docker_engine import DockerEngine
from tests.support.registry import overwrite_tag, push_image, push_index


@pytest.fixture(scope="module")
def engine(podman_engine):
    with DockerEngine(podman_engine.url) as eng:
        yield eng


def test_bad_url_is_input_error():
    with pytest.raises(InputError):
        DockerEngine("/var/run/docker.sock")


def test_pull_index_lists_repo_digests(engine, registry):
    idx = push_index(registry.base_url, "engine/kics", "v1")
    img = engine.pull(registry.ref("engine/kics", "v1"))
    assert idx.digest in img.digests  # the index digest a pin would use
    assert idx.children["linux/amd64"] in img.digests  # podman also lists the platform digest
    listed = {i.id: i for i in engine.list_images()}
    assert img.id in listed and registry.ref("engine/kics", "v1") in listed[img.id].repo_tags
    assert [i.id for i in engine.images_with_digest(idx.digest)] == [img.id]


def test_pull_by_digest_and_missing_tag(engine, registry):
    pushed = push_image(registry.base_url, "engine/single", "1.0")
    img = engine.pull(registry.ref("engine/single", digest=pushed.digest))
    assert pushed.digest in img.digests
    with pytest.raises(NotFound) as e:
        engine.pull(registry.ref("engine/single", "no-such-tag"))
    assert "engine/single" in str(e.value)


def test_containers_created_are_listed_with_image_ids(engine, registry):
    push_image(registry.base_url, "engine/ctr", "latest")
    img = engine.pull(registry.ref("engine/ctr", "latest"))
    ctr = engine.sdk.containers.create(registry.ref("engine/ctr", "latest"), command=["true"], name="dg-ctr-test")
    try:
        found = [c for c in engine.list_containers() if c.id == ctr.id]
        assert found and found[0].image_id.removeprefix("sha256:") == img.id.removeprefix("sha256:")
        assert found[0].status in ("created", "configured")
        assert [c.id for c in engine.containers_using(img.id)] == [ctr.id]
    finally:
        engine.sdk.api.remove_container(ctr.id, force=True)


def test_remove_malicious_by_digest_keeps_the_clean_image(engine, registry):
    """The purge on a host: tag overwritten, both versions pulled, the bad one (and its container) removed by digest."""
    push_index(registry.base_url, "engine/victim", "latest")
    clean_img = engine.pull(registry.ref("engine/victim", "latest"))
    engine.sdk.api.tag(clean_img.id, registry.ref("engine/victim"), "clean")
    bad = overwrite_tag(registry.base_url, "engine/victim", "latest")
    bad_img = engine.pull(registry.ref("engine/victim", "latest"))
    assert bad_img.id != clean_img.id
    ctr = engine.sdk.containers.create(bad_img.id, command=["true"])

    with pytest.raises(Refused):
        engine.remove_image(bad_img.id)  # in use by a container

    matches = engine.images_with_digest(bad.digest)
    assert [m.id for m in matches] == [bad_img.id]
    result = engine.remove_image(bad_img.id, force=True, remove_containers=True)
    assert result.containers_removed == (ctr.id,)
    assert bad_img.id.removeprefix("sha256:") in {d.removeprefix("sha256:") for d in result.deleted}
    assert engine.images_with_digest(bad.digest) == []
    assert ctr.id not in {c.id for c in engine.list_containers()}
    assert engine.get_image(clean_img.id).id == clean_img.id
    with pytest.raises(NotFound):
        engine.get_image(bad_img.id)


def test_prune_dangling(engine, registry):
    push_image(registry.base_url, "engine/dangle", "latest")
    first = engine.pull(registry.ref("engine/dangle", "latest"))
    push_image(registry.base_url, "engine/dangle", "latest")  # new content under the same tag
    second = engine.pull(registry.ref("engine/dangle", "latest"))
    assert first.id != second.id
    assert engine.get_image(first.id).dangling
    result = engine.prune_dangling()
    assert first.id.removeprefix("sha256:") in {d.removeprefix("sha256:") for d in result.deleted}
    assert engine.get_image(second.id).id == second.id


def test_remove_by_digest_reference(engine, registry):
    """Removal named by ``name@digest`` (what an advisory gives) rather than by image id."""
    pushed = push_index(registry.base_url, "engine/bydigest", "latest")
    img = engine.pull(registry.ref("engine/bydigest", "latest"))
    result = engine.remove_image(registry.ref("engine/bydigest", digest=pushed.digest), force=True, remove_containers=True)
    assert result.target.endswith(pushed.digest)
    assert engine.images_with_digest(pushed.digest) == []
    with pytest.raises(NotFound):
        engine.get_image(img.id)
    with pytest.raises(NotFound):
        engine.remove_image(registry.ref("engine/bydigest", digest=pushed.digest))
