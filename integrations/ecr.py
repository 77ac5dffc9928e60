"""Amazon ECR: describe images by digest or tag, list a repository, delete by digest.

Why by digest: in ECR a tag is a movable pointer; the incident's facts are
digests. ``batch_delete_image`` with ``imageDigest`` removes the image *and
every tag on it* in one call, which is what a purge wants. Deleting by tag
only removes that tag and leaves the content pullable by digest.

The digest we return is always ECR's ``imageDigest`` as the service reports it
(real ECR: sha256 of the manifest bytes, equal to what a registry HEAD
answers). Nothing here recomputes digests, so a backend that computes them
differently (moto derives them from layer digests) is reported faithfully,
not "corrected".

Every function takes a boto3 ECR client (see :func:`ecr_client`) so tests point
it at a moto server with ``endpoint_url``.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import boto3
import botocore.exceptions as bx

from digestguard.errors import InputError, IntegrationError, NotFound
from digestguard.reference import parse_digest
from integrations._errors import aws_errors
from integrations._rest import botocore_config

__all__ = [
    "DeleteFailure",
    "DeleteResult",
    "EcrImage",
    "batch_delete_images",
    "describe_by_digest",
    "describe_by_tag",
    "ecr_client",
    "list_images",
    "registry_login",
    "RegistryLogin",
]

_ECR_NOT_FOUND = {"RepositoryNotFoundException", "ImageNotFoundException", "RegistryPolicyNotFoundException"}
_BATCH_DELETE_MAX = 100  # ECR's limit of imageIds per batch_delete_image call
_DESCRIBE_MAX = 100


@dataclass(frozen=True)
class EcrImage:
    """One image as ECR describes it."""

    repository: str
    registry_id: str
    digest: str
    tags: tuple[str, ...]
    pushed_at: datetime | None
    media_type: str | None
    size: int | None

    def reference(self, region: str) -> str:
        """``<account>.dkr.ecr.<region>.amazonaws.com/<repo>@<digest>`` (pull-by-digest form)."""
        return f"{self.registry_id}.dkr.ecr.{region}.amazonaws.com/{self.repository}@{self.digest}"


@dataclass(frozen=True)
class DeleteFailure:
    digest: str | None
    tag: str | None
    code: str
    reason: str


@dataclass(frozen=True)
class DeleteResult:
    """``deleted`` as (digest, tag-or-None) pairs as ECR reports them; ``failures`` never dropped."""

    deleted: tuple[tuple[str, str | None], ...]
    failures: tuple[DeleteFailure, ...]

    @property
    def deleted_digests(self) -> frozenset[str]:
        return frozenset(d for d, _ in self.deleted)


def ecr_client(*, region_name: str | None = None, endpoint_url: str | None = None,
               aws_access_key_id: str | None = None, aws_secret_access_key: str | None = None,
               aws_session_token: str | None = None) -> Any:
    """A boto3 ECR client with bounded retries; credentials default to boto3's chain when not given."""
    return boto3.client(
        "ecr", region_name=region_name, endpoint_url=endpoint_url, config=botocore_config(),
        aws_access_key_id=aws_access_key_id, aws_secret_access_key=aws_secret_access_key,
        aws_session_token=aws_session_token,
    )


@contextmanager
def _ecr_errors(source: str) -> Iterator[None]:
    """ECR's own not-found codes first, then the shared AWS mapping."""
    with aws_errors(source):
        try:
            yield
        except bx.ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in _ECR_NOT_FOUND:
                msg = f"{code}: {str(e.response.get('Error', {}).get('Message', ''))[:300]}"
                raise NotFound(source, msg, e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")) from None
            raise


def _source(repository: str, what: str | None = None) -> str:
    return f"ecr {repository}" + (f" ({what})" if what else "")


def _image(detail: dict[str, Any]) -> EcrImage:
    return EcrImage(
        repository=detail.get("repositoryName", ""),
        registry_id=detail.get("registryId", ""),
        digest=detail.get("imageDigest", ""),
        tags=tuple(detail.get("imageTags") or ()),
        pushed_at=detail.get("imagePushedAt"),
        media_type=detail.get("imageManifestMediaType"),
        size=detail.get("imageSizeInBytes"),
    )


def _repo_args(repository: str, registry_id: str | None) -> dict[str, str]:
    if not repository:
        raise InputError("ecr repository", "empty repository name")
    args = {"repositoryName": repository}
    if registry_id:
        args["registryId"] = registry_id
    return args


@dataclass(frozen=True)
class RegistryLogin:
    """Basic credentials for the ECR registry endpoint (``host``), for :class:`integrations.registry.RegistryClient`.

    ``password`` is a 12-hour token; ``repr`` hides it. Hand it straight to the
    registry client; do not store or log it.
    """

    host: str
    username: str
    password: str = field(repr=False)
    expires_at: datetime | None = None


def registry_login(client: Any, *, registry_id: str | None = None) -> RegistryLogin:
    """``get_authorization_token`` decoded: the registry host plus basic credentials (``AWS`` / token)."""
    args = {"registryIds": [registry_id]} if registry_id else {}
    with _ecr_errors("ecr get_authorization_token"):
        resp = client.get_authorization_token(**args)
    data = (resp.get("authorizationData") or [{}])[0]
    try:
        user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    except (KeyError, ValueError):
        raise IntegrationError("ecr get_authorization_token", "answer carries no usable authorization token") from None
    host = str(data.get("proxyEndpoint", "")).removeprefix("https://").removeprefix("http://").rstrip("/")
    return RegistryLogin(host, user, password, data.get("expiresAt"))


def describe_by_digest(client: Any, repository: str, digests: list[str], *,
                       registry_id: str | None = None) -> tuple[list[EcrImage], list[str]]:
    """Describe images by digest: (found images, digests ECR does not have).

    A missing digest is an answer (maybe already purged), not an error; a
    missing repository raises NotFound.
    """
    wanted = [parse_digest(d, f"ecr {repository} digest") for d in digests]
    found: list[EcrImage] = []
    missing: list[str] = []
    for i in range(0, len(wanted), _DESCRIBE_MAX):
        chunk = wanted[i:i + _DESCRIBE_MAX]
        # describe_images fails the whole call on one unknown digest; batch_get_image reports per id
        with _ecr_errors(_source(repository)):
            resp = client.batch_get_image(**_repo_args(repository, registry_id),
                                          imageIds=[{"imageDigest": d} for d in chunk],
                                          acceptedMediaTypes=["application/vnd.oci.image.index.v1+json",
                                                              "application/vnd.docker.distribution.manifest.list.v2+json",
                                                              "application/vnd.oci.image.manifest.v1+json",
                                                              "application/vnd.docker.distribution.manifest.v2+json"])
        present = {img["imageId"]["imageDigest"] for img in resp.get("images", []) if img.get("imageId", {}).get("imageDigest")}
        if present:
            with _ecr_errors(_source(repository)):
                details = client.describe_images(**_repo_args(repository, registry_id),
                                                 imageIds=[{"imageDigest": d} for d in sorted(present)])
            found.extend(_image(d) for d in details.get("imageDetails", []))
        missing.extend(d for d in chunk if d not in present)
    return found, missing


def describe_by_tag(client: Any, repository: str, tag: str, *, registry_id: str | None = None) -> EcrImage:
    """The image a tag points at now; NotFound when the tag (or repository) does not exist."""
    if not tag:
        raise InputError(_source(repository), "empty tag", "tag")
    with _ecr_errors(_source(repository, f"tag {tag}")):
        resp = client.describe_images(**_repo_args(repository, registry_id), imageIds=[{"imageTag": tag}])
    details = resp.get("imageDetails") or []
    if not details:
        raise NotFound(_source(repository, f"tag {tag}"), "no image with this tag")
    return _image(details[0])


def list_images(client: Any, repository: str, *, registry_id: str | None = None) -> list[EcrImage]:
    """Every image in a repository (tagged and untagged), following pagination."""
    out: list[EcrImage] = []
    with _ecr_errors(_source(repository)):
        for page in client.get_paginator("describe_images").paginate(**_repo_args(repository, registry_id)):
            out.extend(_image(d) for d in page.get("imageDetails", []))
    return out


def batch_delete_images(client: Any, repository: str, digests: list[str], *,
                        registry_id: str | None = None) -> DeleteResult:
    """Delete images by digest (each with all its tags). Per-digest failures are returned, not swallowed.

    ``ImageNotFound`` failures mean "already gone": the caller may treat them as done.
    """
    wanted = [parse_digest(d, f"ecr {repository} digest") for d in digests]
    deleted: list[tuple[str, str | None]] = []
    failures: list[DeleteFailure] = []
    for i in range(0, len(wanted), _BATCH_DELETE_MAX):
        chunk = wanted[i:i + _BATCH_DELETE_MAX]
        with _ecr_errors(_source(repository, "batch_delete_image")):
            resp = client.batch_delete_image(**_repo_args(repository, registry_id),
                                             imageIds=[{"imageDigest": d} for d in chunk])
        for ident in resp.get("imageIds", []):
            deleted.append((ident.get("imageDigest", ""), ident.get("imageTag")))
        for f in resp.get("failures", []):
            ident = f.get("imageId", {})
            failures.append(DeleteFailure(ident.get("imageDigest"), ident.get("imageTag"),
                                          f.get("failureCode", ""), str(f.get("failureReason", ""))[:300]))
    return DeleteResult(tuple(deleted), tuple(failures))
