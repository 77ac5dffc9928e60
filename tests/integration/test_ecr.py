"""integrations.ecr against a REAL moto server (tests/support/aws.py) through boto3.

No local protocol server: moto answers the ECR API over HTTP.
moto computes ``imageDigest`` from the layer digests, not from the manifest
bytes as real ECR does; these tests therefore take every digest from moto's own
answers (put_image) and never assume ``sha256(manifest)``.
"""

from __future__ import annotations

import json
import secrets

import pytest

from digestguard.errors import InputError, NotFound
from integrations import ecr

CREDS = {"region_name": "us-east-1", "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture(scope="module")
def client(moto_server):
    return ecr.ecr_client(endpoint_url=moto_server, **CREDS)


def _manifest() -> str:
    layer = "sha256:" + secrets.token_hex(32)
    return json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": "sha256:" + secrets.token_hex(32), "size": 10},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": layer, "size": 20}],
    })


def put(client, repo: str, tag: str) -> str:
    """Push a manifest under ``tag``; returns the digest ECR (here: moto) reports."""
    return client.put_image(repositoryName=repo, imageManifest=_manifest(), imageTag=tag)["image"]["imageId"]["imageDigest"]


@pytest.fixture
def repo(client) -> str:
    name = f"team/app-{secrets.token_hex(3)}"
    client.create_repository(repositoryName=name)
    return name


def test_describe_by_tag_and_digest(client, repo):
    d1 = put(client, repo, "v1")
    d2 = put(client, repo, "v2")
    img = ecr.describe_by_tag(client, repo, "v1")
    assert img.digest == d1 and img.tags == ("v1",) and img.repository == repo and img.registry_id
    assert img.reference("us-east-1").endswith(f".dkr.ecr.us-east-1.amazonaws.com/{repo}@{d1}")
    gone = "sha256:" + "0" * 64
    found, missing = ecr.describe_by_digest(client, repo, [d1, d2, gone])
    assert {i.digest for i in found} == {d1, d2} and missing == [gone]
    with pytest.raises(NotFound):
        ecr.describe_by_tag(client, repo, "nope")
    with pytest.raises(InputError):
        ecr.describe_by_digest(client, repo, ["latest"])


def test_missing_repository_is_not_found(client):
    with pytest.raises(NotFound) as e:
        ecr.list_images(client, "no/such-repo")
    assert "no/such-repo" in str(e.value)


def test_list_images_paginates(client, repo):
    digests = {put(client, repo, f"t{i}") for i in range(5)}
    assert {i.digest for i in ecr.list_images(client, repo)} == digests


def test_batch_delete_by_digest_removes_tags_and_reports_failures(client, repo):
    bad = put(client, repo, "latest")
    keep = put(client, repo, "stable")
    gone = "sha256:" + "f" * 64
    result = ecr.batch_delete_images(client, repo, [bad, gone])
    assert bad in result.deleted_digests
    assert [(f.digest, f.code) for f in result.failures] == [(gone, "ImageNotFound")]
    with pytest.raises(NotFound):
        ecr.describe_by_tag(client, repo, "latest")  # the tag went with the digest
    assert ecr.describe_by_tag(client, repo, "stable").digest == keep


def test_registry_login_for_the_registry_client(client):
    login = ecr.registry_login(client)
    assert login.username == "AWS" and login.password and ".dkr.ecr." in login.host
    assert login.password not in repr(login)
