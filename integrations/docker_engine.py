"""Docker Engine API client (Docker or podman's compatible service) over unix://, tcp:// or ssh://.

Why: a host that pulled a malicious image keeps it (and containers made from it)
until someone removes them. This module answers "which local images carry this
digest, which containers use them" and does the removal, with the ``docker``
SDK translating to typed errors from :mod:`digestguard.errors`.

Digests on an engine: an image's ``RepoDigests`` lists ``name@sha256:...`` for
the digests it was pulled by. After pulling a multi-platform tag podman lists
both the index digest and the platform manifest digest; Docker lists the index
digest. :meth:`EngineImage.digests` gives the bare digests so a caller can match
either against an advisory.

Example::

    with DockerEngine("unix:///run/podman/podman.sock") as eng:
        for img in eng.images_with_digest("sha256:2588..."):
            eng.remove_image(img.id, force=True, remove_containers=True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors

from digestguard.errors import AuthError, InputError, IntegrationError, NotFound, Unavailable
from digestguard.reference import parse_digest
from integrations._errors import docker_errors
from integrations._rest import Closing

DEFAULT_API_VERSION = "1.41"


@dataclass(frozen=True)
class EngineImage:
    """A local image: ``id`` (sha256:...), its ``repo_tags`` and ``repo_digests`` (``name@sha256:...``)."""

    id: str
    repo_tags: tuple[str, ...]
    repo_digests: tuple[str, ...]
    created: str | None = None
    size: int | None = None

    @property
    def digests(self) -> frozenset[str]:
        """The bare manifest digests this image is known by (from ``RepoDigests``)."""
        out = set()
        for rd in self.repo_digests:
            _, _, dig = rd.rpartition("@")
            if dig:
                out.add(dig.lower())
        return frozenset(out)

    @property
    def dangling(self) -> bool:
        return not any(t and t != "<none>:<none>" for t in self.repo_tags)


@dataclass(frozen=True)
class EngineContainer:
    """A container (any state): ``image_id`` is what it was created from, ``image`` as it was asked for."""

    id: str
    name: str
    image_id: str
    image: str
    status: str


@dataclass(frozen=True)
class RemovedImage:
    """What :meth:`DockerEngine.remove_image` did: containers removed first, then untagged/deleted entries."""

    target: str
    containers_removed: tuple[str, ...] = ()
    untagged: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()


@dataclass(frozen=True)
class PruneResult:
    deleted: tuple[str, ...] = field(default_factory=tuple)
    space_reclaimed: int = 0


def _image(attrs: dict[str, Any]) -> EngineImage:
    return EngineImage(
        id=attrs.get("Id", ""),
        repo_tags=tuple(t for t in (attrs.get("RepoTags") or []) if t),
        repo_digests=tuple(attrs.get("RepoDigests") or []),
        created=str(attrs.get("Created")) if attrs.get("Created") is not None else None,
        size=attrs.get("Size"),
    )


class DockerEngine(Closing):
    """One engine endpoint. ``url`` is ``unix:///path.sock``, ``tcp://host:2376`` or ``ssh://user@host``.

    ``tls`` is passed to the SDK as is (``docker.tls.TLSConfig``) for tcp with TLS;
    ``use_ssh_client=True`` uses the system ``ssh`` binary instead of paramiko.
    """

    def __init__(self, url: str, *, version: str = DEFAULT_API_VERSION, timeout: float = 120.0,
                 tls: Any = None, use_ssh_client: bool = False) -> None:
        if not isinstance(url, str) or not url.startswith(("unix://", "tcp://", "ssh://", "http://", "https://", "npipe://")):
            raise InputError("docker engine url", f"{url!r} is not unix://, tcp://, ssh:// or http(s)://")
        self.url = url
        self.source = f"docker engine {url}"
        try:
            self._client = docker.DockerClient(base_url=url, version=version, timeout=int(timeout), tls=tls,
                                               use_ssh_client=use_ssh_client)
        except docker.errors.DockerException as e:
            raise Unavailable(self.source, f"cannot connect: {e}") from None

    def close(self) -> None:
        self._client.close()


    @property
    def sdk(self) -> docker.DockerClient:
        """The underlying SDK client, for callers needing something this module does not wrap."""
        return self._client

    # -- reads

    def ping(self) -> bool:
        return bool(self._call(self._client.ping))

    def list_images(self) -> list[EngineImage]:
        """Every local image (including untagged ones) with ids, tags and RepoDigests."""
        raw = self._call(self._client.api.images, all=False)
        return [_image(a) for a in raw]

    def get_image(self, ref: str) -> EngineImage:
        """One image by id, ``name:tag`` or ``name@sha256:...``; NotFound when absent."""
        img = self._call(self._client.images.get, ref, what=ref)
        return _image(img.attrs)

    def images_with_digest(self, digest: str) -> list[EngineImage]:
        """Local images known by ``digest`` (an index or platform digest in RepoDigests, or the image id)."""
        digest = parse_digest(digest, "digest")
        return [i for i in self.list_images() if digest in i.digests or i.id.lower() == digest]

    def list_containers(self) -> list[EngineContainer]:
        """Every container in every state (created, exited, running) with the image id it was made from."""
        raw = self._call(self._client.api.containers, all=True)
        out = []
        for c in raw:
            names = c.get("Names") or []
            out.append(EngineContainer(
                id=c.get("Id", ""),
                name=(names[0].lstrip("/") if names else ""),
                image_id=c.get("ImageID", "") or "",
                image=c.get("Image", "") or "",
                status=c.get("State", "") or c.get("Status", ""),
            ))
        return out

    def containers_using(self, image_id: str) -> list[EngineContainer]:
        """Containers created from ``image_id`` (compared with and without the ``sha256:`` prefix)."""
        want = image_id.lower().removeprefix("sha256:")
        return [c for c in self.list_containers() if c.image_id.lower().removeprefix("sha256:") == want]

    # -- writes

    def pull(self, reference: str, *, username: str | None = None, password: str | None = None) -> EngineImage:
        """Pull ``name:tag`` or ``name@sha256:...``; credentials are passed through, never logged."""
        auth = {"username": username, "password": password} if username is not None else None
        repo, tag = _split_pull_ref(reference)
        source = f"{self.source} ({reference})"

        def run() -> None:
            for event in self._client.api.pull(repo, tag=tag, auth_config=auth, stream=True, decode=True):
                err = event.get("error") or (event.get("errorDetail") or {}).get("message")
                if err:
                    low = str(err).lower()
                    if "manifest unknown" in low or "not found" in low or "name unknown" in low:
                        raise NotFound(source, str(err)[:300])
                    if "unauthorized" in low or "denied" in low:
                        raise AuthError(source, str(err)[:300])
                    raise IntegrationError(source, f"pull failed: {str(err)[:300]}")

        self._call(run, what=reference)
        return self.get_image(reference)

    def remove_image(self, target: str, *, force: bool = False, remove_containers: bool = False,
                     prune_parents: bool = True) -> RemovedImage:
        """Remove an image by id, ``name@sha256:...`` or ``name:tag``.

        ``remove_containers=True`` removes (forcibly) every container made from
        the image first, otherwise an image in use is Refused (409) unless
        ``force``. Removing ``name@digest`` of an image that other tags still
        name only untags it; pass the image id to delete the content itself.
        """
        containers: list[str] = []
        if remove_containers:
            img = self.get_image(target)
            for c in self.containers_using(img.id):
                self._call(self._client.api.remove_container, c.id, force=True, v=False, what=c.id)
                containers.append(c.id)
        result = self._call(self._client.api.remove_image, target, force=force, noprune=not prune_parents, what=target)
        untagged, deleted = [], []
        for entry in result or []:
            if "Untagged" in entry:
                untagged.append(entry["Untagged"])
            if "Deleted" in entry:
                deleted.append(entry["Deleted"])
        return RemovedImage(target, tuple(containers), tuple(untagged), tuple(deleted))

    def prune_dangling(self) -> PruneResult:
        """Remove dangling (untagged, unused) images."""
        res = self._call(self._client.api.prune_images, filters={"dangling": True}) or {}
        deleted = []
        for entry in res.get("ImagesDeleted") or []:
            deleted.append(entry.get("Deleted") or entry.get("Untagged") or "")
        return PruneResult(tuple(d for d in deleted if d), int(res.get("SpaceReclaimed") or 0))

    # -- error mapping

    def _call(self, fn: Any, *args: Any, what: str | None = None, **kwargs: Any) -> Any:
        source = f"{self.source} ({what})" if what else self.source
        with docker_errors(source):
            return fn(*args, **kwargs)


def _split_pull_ref(reference: str) -> tuple[str, str | None]:
    """``name:tag`` -> (name, tag); ``name@digest`` -> (name, digest); a bare name -> (name, "latest")."""
    if "@" in reference:
        name, _, dig = reference.partition("@")
        return name, parse_digest(dig, reference)
    slash = reference.rfind("/")
    colon = reference.rfind(":")
    if colon > slash:
        return reference[:colon], reference[colon + 1:]
    return reference, "latest"
