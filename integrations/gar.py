"""Google Artifact Registry (Docker format) over its REST API: versions, tags, delete.

Why the REST API and not the registry protocol: Artifact Registry refuses to
delete a digest that still has tags unless the tags go first (or ``force``),
and its REST API is where tags and versions are first-class. A purge here is
therefore: list the version's tags -> delete each tag -> delete the version
(without ``force``, so a tag added meanwhile makes the delete fail loudly
rather than vanish silently).

Names: ``projects/{project}/locations/{location}/repositories/{repository}/packages/{package}``
where a Docker image name with slashes is one package, URL-encoded (``team%2Fapp``);
versions are digests (``.../versions/sha256:...``). An image reference
``us-docker.pkg.dev/proj/repo/team/app`` maps with :func:`parse_gar_image`.

The access token is a plain parameter (the caller resolves it); it is sent only
to ``api_url`` and never appears in errors.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from digestguard.errors import InputError, IntegrationError, NotFound, Unavailable
from digestguard.reference import parse_digest, parse_reference
from integrations._rest import RestBackedClient, RestClient

API_URL = "https://artifactregistry.googleapis.com"
_GAR_HOST = re.compile(r"^([a-z0-9-]+)-docker\.pkg\.dev$")
_MAX_PAGES = 1000


@dataclass(frozen=True)
class GarPackage:
    """One Docker image (package) in one Artifact Registry repository."""

    project: str
    location: str
    repository: str
    package: str

    @property
    def name(self) -> str:
        """The REST resource name, package URL-encoded as the API wants it."""
        return (f"projects/{self.project}/locations/{self.location}/repositories/{self.repository}"
                f"/packages/{quote(self.package, safe='')}")

    @property
    def image(self) -> str:
        """The pull name: ``us-docker.pkg.dev/proj/repo/team/app``."""
        return f"{self.location}-docker.pkg.dev/{self.project}/{self.repository}/{self.package}"


@dataclass(frozen=True)
class GarVersion:
    digest: str
    tags: tuple[str, ...]
    create_time: str | None
    update_time: str | None


@dataclass(frozen=True)
class GarTag:
    tag: str
    digest: str


@dataclass(frozen=True)
class GarDeletion:
    """What :meth:`ArtifactRegistry.delete_version` did: the tags removed first, then the version."""

    digest: str
    tags_deleted: tuple[str, ...]
    version_deleted: bool


def parse_gar_image(image: str) -> GarPackage:
    """``us-docker.pkg.dev/proj/repo/team/app[:tag|@digest]`` -> GarPackage (tag/digest ignored)."""
    ref = parse_reference(image, "artifact registry image")
    m = _GAR_HOST.match(ref.registry)
    parts = ref.repository.split("/")
    if not m or len(parts) < 3:
        raise InputError("artifact registry image", f"{image!r} is not LOCATION-docker.pkg.dev/PROJECT/REPOSITORY/IMAGE")
    return GarPackage(parts[0], m.group(1), parts[1], "/".join(parts[2:]))


def _digest_of(name: str) -> str:
    return parse_digest(name.rsplit("/versions/", 1)[-1], "artifact registry version")


def _tag_of(name: str) -> str:
    return name.rsplit("/tags/", 1)[-1]


class ArtifactRegistry(RestBackedClient):
    """Client for the Artifact Registry REST API (v1) with a bearer access token."""

    def __init__(self, token: str, *, api_url: str = API_URL, timeout: float = 30.0, max_retries: int = 4,
                 operation_timeout: float = 120.0, sleep: Callable[[float], None] = time.sleep) -> None:
        if not token:
            raise InputError("artifact registry token", "an access token is required")
        self.rest = RestClient(vendor="artifact-registry", api_url=api_url,
                               auth_headers={"Authorization": f"Bearer {token}"},
                               default_headers={"Accept": "application/json"},
                               timeout=timeout, max_retries=max_retries, sleep=sleep)
        self.operation_timeout = operation_timeout
        self._sleep = sleep

    # -- pagination

    def _pages(self, path: str, key: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        params = dict(params)
        for _ in range(_MAX_PAGES):
            body = self.rest.get_json(path, params=params)
            yield from body.get(key) or []
            token = body.get("nextPageToken")
            if not token:
                return
            params["pageToken"] = token
        raise IntegrationError(self.rest.source("GET", path), f"more than {_MAX_PAGES} pages")

    # -- versions

    def list_versions(self, pkg: GarPackage, page_size: int = 500) -> list[GarVersion]:
        """Every version (digest) of the image, with its tags (``view=FULL`` returns relatedTags)."""
        out = []
        for v in self._pages(f"/v1/{pkg.name}/versions", "versions", {"pageSize": page_size, "view": "FULL"}):
            out.append(GarVersion(_digest_of(v["name"]), tuple(_tag_of(t["name"]) for t in v.get("relatedTags") or []),
                                  v.get("createTime"), v.get("updateTime")))
        return out

    def get_version(self, pkg: GarPackage, digest: str) -> GarVersion:
        """One version by digest, with its tags; NotFound when absent."""
        digest = parse_digest(digest, "artifact registry digest")
        v = self.rest.get_json(f"/v1/{pkg.name}/versions/{digest}", params={"view": "FULL"})
        return GarVersion(_digest_of(v["name"]), tuple(_tag_of(t["name"]) for t in v.get("relatedTags") or []),
                          v.get("createTime"), v.get("updateTime"))

    # -- tags

    def list_tags(self, pkg: GarPackage, digest: str | None = None, page_size: int = 500) -> list[GarTag]:
        """Tags of the image, or only those on ``digest`` (server-side filter ``version="..."``)."""
        params: dict[str, Any] = {"pageSize": page_size}
        if digest:
            params["filter"] = f'version="{pkg.name}/versions/{parse_digest(digest, "artifact registry digest")}"'
        return [GarTag(_tag_of(t["name"]), _digest_of(t["version"]))
                for t in self._pages(f"/v1/{pkg.name}/tags", "tags", params)]

    def get_tag(self, pkg: GarPackage, tag: str) -> GarTag:
        """Where ``tag`` points now; NotFound when absent."""
        t = self.rest.get_json(f"/v1/{pkg.name}/tags/{quote(tag, safe='')}")
        return GarTag(_tag_of(t["name"]), _digest_of(t["version"]))

    def delete_tag(self, pkg: GarPackage, tag: str) -> None:
        self.rest.request("DELETE", f"/v1/{pkg.name}/tags/{quote(tag, safe='')}", ok=(200, 204))

    # -- delete

    def delete_version(self, pkg: GarPackage, digest: str, *, delete_tags: bool = True) -> GarDeletion:
        """Delete a digest: its tags first (when ``delete_tags``), then the version, waiting for the operation.

        With ``delete_tags=False`` a tagged version is Refused by the service
        (FAILED_PRECONDITION), which is the point: no tag disappears unasked.
        A tag already gone between listing and deleting counts as done.
        """
        digest = parse_digest(digest, "artifact registry digest")
        removed: list[str] = []
        if delete_tags:
            for t in self.list_tags(pkg, digest):
                try:
                    self.delete_tag(pkg, t.tag)
                except NotFound:
                    pass
                removed.append(t.tag)
        r = self.rest.request("DELETE", f"/v1/{pkg.name}/versions/{digest}", ok=(200, 204))
        op = self.rest.json_of(r, f"/v1/{pkg.name}/versions/{digest}", method="DELETE") if r.content else {}
        self._wait(op, f"artifact-registry {pkg.image}@{digest}")
        return GarDeletion(digest, tuple(removed), True)

    def _wait(self, op: dict[str, Any], source: str) -> None:
        """Poll a long-running operation until done; its error becomes a typed error."""
        deadline = time.monotonic() + self.operation_timeout
        delay = 0.2
        while op and not op.get("done"):
            name = op.get("name")
            if not name:
                return
            if time.monotonic() > deadline:
                raise Unavailable(source, f"operation {name} not done after {self.operation_timeout:.0f}s")
            self._sleep(delay)
            delay = min(delay * 2, 5.0)
            op = self.rest.get_json(f"/v1/{name}")
        err = (op or {}).get("error")
        if err:
            raise IntegrationError(source, f"operation failed: {err.get('status') or err.get('code')}: {str(err.get('message'))[:300]}")
