"""integrations.gar against the local Artifact Registry REST stand-in (tests/fakes/gar.py).

Uses the local protocol server tests/fakes/gar.py: no Artifact Registry
emulator exists for this machine. The server keeps the real service's rule
that a tagged version cannot be deleted without deleting its tags.
"""

from __future__ import annotations

import pytest

from digestguard.errors import AuthError, InputError, NotFound, Refused
from integrations.gar import ArtifactRegistry, GarPackage, parse_gar_image
from tests.fakes.gar import start_gar

BAD = "sha256:" + "a" * 64
GOOD = "sha256:" + "b" * 64
OLD = "sha256:" + "c" * 64


@pytest.fixture
def server():
    gs = start_gar()
    gs.add_image("acme", "us", "images", "team/kics", GOOD, ["v2.1.19"], create_time="2026-03-03T00:00:00Z")
    gs.add_image("acme", "us", "images", "team/kics", BAD, ["latest", "v2.1.20", "alpine"], create_time="2026-04-22T12:40:00Z")
    gs.add_image("acme", "us", "images", "team/kics", OLD, [])
    yield gs
    gs.stop()


@pytest.fixture
def gar(server):
    with ArtifactRegistry(server.token, api_url=server.url, sleep=lambda s: None) as c:
        yield c


PKG = GarPackage("acme", "us", "images", "team/kics")


def test_parse_gar_image():
    assert parse_gar_image("us-docker.pkg.dev/acme/images/team/kics:latest") == PKG
    assert PKG.image == "us-docker.pkg.dev/acme/images/team/kics"
    assert PKG.name.endswith("/packages/team%2Fkics")
    with pytest.raises(InputError):
        parse_gar_image("ghcr.io/acme/kics")


def test_list_and_get_versions_with_tags(gar, server):
    versions = {v.digest: v for v in gar.list_versions(PKG)}
    assert set(versions) == {BAD, GOOD, OLD}
    assert set(versions[BAD].tags) == {"latest", "v2.1.20", "alpine"} and versions[OLD].tags == ()
    assert gar.get_version(PKG, GOOD).tags == ("v2.1.19",)
    assert sum(1 for m, p in server.calls if p.endswith("/versions")) == 2  # followed nextPageToken (2 per page)
    with pytest.raises(NotFound):
        gar.get_version(PKG, "sha256:" + "0" * 64)


def test_tags(gar):
    assert gar.get_tag(PKG, "latest").digest == BAD
    assert {t.tag for t in gar.list_tags(PKG)} == {"latest", "v2.1.20", "alpine", "v2.1.19"}
    assert {t.tag for t in gar.list_tags(PKG, BAD)} == {"latest", "v2.1.20", "alpine"}
    with pytest.raises(NotFound):
        gar.get_tag(PKG, "nope")


def test_tagged_version_is_refused_without_tag_deletion(gar):
    with pytest.raises(Refused) as e:
        gar.delete_version(PKG, BAD, delete_tags=False)
    assert "FAILED_PRECONDITION" in str(e.value) or "tags" in str(e.value)
    assert gar.get_version(PKG, BAD).digest == BAD


def test_delete_version_deletes_tags_first_and_waits(gar, server):
    result = gar.delete_version(PKG, BAD)
    assert set(result.tags_deleted) == {"latest", "v2.1.20", "alpine"} and result.version_deleted
    deletes = [p for m, p in server.calls if m == "DELETE"]
    assert [p.split("/")[-2] for p in deletes] == ["tags", "tags", "tags", "versions"]  # tags first
    assert "/operations/" in server.calls[-1][1]  # waited for the long-running operation
    with pytest.raises(NotFound):
        gar.get_version(PKG, BAD)
    assert gar.get_tag(PKG, "v2.1.19").digest == GOOD
    with pytest.raises(NotFound):
        gar.delete_version(PKG, BAD)


def test_untagged_version_deletes_directly(gar):
    assert gar.delete_version(PKG, OLD).tags_deleted == ()


def test_wrong_token_is_auth_error(server):
    with ArtifactRegistry("wrong-token-value", api_url=server.url, sleep=lambda s: None) as c:
        with pytest.raises(AuthError) as e:
            c.list_versions(PKG)
    assert "wrong-token-value" not in str(e.value)
