"""Image references, parsed the way the Docker/OCI distribution grammar does.

Why our own parser: every stage compares references written in many spellings
(``checkmarx/kics``, ``docker.io/checkmarx/kics:latest``,
``index.docker.io/checkmarx/kics@sha256:...``). A match must not depend on the
spelling, so everything is normalised to one canonical form first: default
registry ``docker.io``, ``library/`` for official images, lowercase names.

The grammar (github.com/distribution/reference, ``reference.go``)::

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [domain '/'] remote-name
    domain     := host [ ":" port ]   (a first component with '.' or ':' or 'localhost')
    tag        := [\\w][\\w.-]{0,127}
    digest     := algorithm ":" hex
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from digestguard.errors import InputError

DOCKER_HUB = "docker.io"
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_COMPONENT_RE = re.compile(_COMPONENT)
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
)
# ASCII: Go's ``\w`` is [0-9A-Za-z_], Python's would take any Unicode letter.
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
# A bare 64-hex string is an image id in the grammar (``identifier``), never a name.
_IDENTIFIER_RE = re.compile(r"[a-f0-9]{64}")
_DIGEST_HEX_LEN = {"sha256": 64, "sha384": 96, "sha512": 128}
_DIGEST_RE = re.compile(r"^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([0-9a-fA-F]+)$")
# The limit applies to the path (the name without its domain, ``library/`` included), as
# ``reference.Parse`` applies ``RepositoryNameTotalLengthMax``.
NAME_TOTAL_MAX = 255


def parse_digest(value: str, source: str = "digest") -> str:
    """Validate ``algorithm:hex`` and return it lowercased.

    >>> parse_digest("sha256:" + "A" * 64)[:10]
    'sha256:aaa'
    """
    if not isinstance(value, str):
        raise InputError(source, f"digest must be a string, got {type(value).__name__}")
    m = _DIGEST_RE.fullmatch(value.strip())
    if not m:
        raise InputError(source, f"{value!r} is not a digest (want 'sha256:<64 hex>')")
    algo, hexpart = m.group(1), m.group(2)
    want = _DIGEST_HEX_LEN.get(algo)
    if want is None:
        raise InputError(source, f"{value!r}: unsupported digest algorithm {algo!r}")
    if len(hexpart) != want:
        raise InputError(source, f"{value!r}: {algo} wants {want} hex characters, got {len(hexpart)}")
    return f"{algo}:{hexpart.lower()}"


def is_digest(value: str) -> bool:
    """True when ``value`` is a valid digest string."""
    try:
        parse_digest(value)
    except InputError:
        return False
    return True


@dataclass(frozen=True, order=True)
class ImageReference:
    """A normalised image reference. ``registry`` is canonical (Docker Hub aliases fold to docker.io)."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """Canonical fully qualified name without tag or digest: ``docker.io/checkmarx/kics``."""
        return f"{self.registry}/{self.repository}"

    @property
    def familiar_name(self) -> str:
        """The short form people write: ``checkmarx/kics``, ``alpine``, ``ghcr.io/x/y``."""
        if self.registry == DOCKER_HUB:
            repo = self.repository
            short = repo[len("library/"):] if repo.startswith("library/") else repo
            # ``library/foo/bar`` stays as it is: ``foo/bar`` is another image (Go's familiarizeName)
            if "/" in short and repo.startswith("library/"):
                short = repo
            # keep the host when the short form would read as a registry host ("0.0/x") or as
            # an image id (a bare 64-hex name is only a name with its host: "docker.io/<hex>")
            if _split_domain(short)[0] is not None or _IDENTIFIER_RE.fullmatch(short):
                return self.name
            return short
        return self.name

    @property
    def effective_tag(self) -> str:
        """The tag a pull would use: the tag, or ``latest`` when neither tag nor digest is given."""
        return self.tag or "latest"

    def with_digest(self, digest: str, keep_tag: bool = True) -> "ImageReference":
        """The same name pinned to ``digest`` (tag kept for readers unless ``keep_tag`` is False)."""
        return ImageReference(self.registry, self.repository, self.tag if keep_tag else None, parse_digest(digest))

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    def familiar(self) -> str:
        """``str`` but with the familiar name (how a rewrite should look in a file)."""
        out = self.familiar_name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def _split_domain(name: str) -> tuple[str | None, str]:
    i = name.find("/")
    if i == -1:
        return None, name
    first = name[:i]
    # Go's splitDockerDomain: '.', ':' or "localhost" make a domain; so does an uppercase
    # letter, since a path component can never hold one ("LOCALDOMAIN/debian").
    if "." in first or ":" in first or first == "localhost" or first.lower() != first:
        return first, name[i + 1:]
    return None, name


def parse_reference(value: str, source: str = "reference") -> ImageReference:
    """Parse and normalise an image reference; raises ``InputError`` naming ``source`` on anything invalid.

    Follows ``ParseNormalizedNamed`` of github.com/distribution/reference; every refusal names the
    part that is wrong (tag, digest, registry host, path component, path length, identifier).
    ``tests/unit/test_reference.py`` ports its tables and lists where we differ, with reasons.

    >>> str(parse_reference("checkmarx/kics"))
    'docker.io/checkmarx/kics'
    >>> str(parse_reference("index.docker.io/library/alpine:3.20"))
    'docker.io/library/alpine:3.20'
    """
    if not isinstance(value, str):
        raise InputError(source, f"reference must be a string, got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise InputError(source, "empty image reference")
    if any(c.isspace() for c in text):
        raise InputError(source, f"{value!r}: whitespace inside an image reference")
    if _IDENTIFIER_RE.fullmatch(text):
        raise InputError(source, f"{value!r}: a bare 64-hex string is an image id, not a repository name")
    text, tag, digest = _split_tag_digest(value, text, source)
    domain, remote = _split_domain(text)
    registry = _registry(value, domain, source)
    if not remote:
        raise InputError(source, f"{value!r}: missing repository name")
    parts = remote.split("/")
    for part in parts:
        if not _COMPONENT_RE.fullmatch(part):
            if part.lower() != part and _COMPONENT_RE.fullmatch(part.lower()):
                raise InputError(source, f"{value!r}: repository name must be lowercase (path component {part!r})")
            raise InputError(source, f"{value!r}: invalid path component {part!r}")
    if registry == DOCKER_HUB and len(parts) == 1:
        remote = f"library/{remote}"
    if len(remote) > NAME_TOTAL_MAX:
        raise InputError(source, f"{value!r}: repository path longer than {NAME_TOTAL_MAX} characters ({len(remote)})")
    return ImageReference(registry=registry, repository=remote, tag=tag, digest=digest)


def _split_tag_digest(value: str, text: str, source: str) -> tuple[str, str | None, str | None]:
    """``name[:tag][@digest]`` -> (name, tag, digest), each part validated."""
    digest = None
    if "@" in text:
        text, _, dig = text.rpartition("@")
        if "@" in text:
            raise InputError(source, f"{value!r}: more than one '@'")
        try:
            digest = parse_digest(dig, source)
        except InputError as e:
            raise InputError(source, f"{value!r}: invalid digest: {e.reason}") from None
    tag = None
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:
        text, tag = text[:colon], text[colon + 1:]
        if not _TAG_RE.fullmatch(tag):
            raise InputError(source, f"{value!r}: invalid tag {tag!r}")
    return text, tag, digest


def _registry(value: str, domain: str | None, source: str) -> str:
    """The canonical registry for a domain part (Docker Hub when there is none)."""
    if domain is None:
        return DOCKER_HUB
    if not _DOMAIN_RE.fullmatch(domain):
        raise InputError(source, f"{value!r}: invalid registry host {domain!r}")
    domain_l = domain.lower()
    if domain_l in DOCKER_HUB_ALIASES:
        return DOCKER_HUB
    # Hosts are case-insensitive, so fold them; a domain that is one only because it has an
    # uppercase letter keeps its case (lowercased it would read as a Docker Hub namespace).
    return domain_l if _split_domain(domain_l + "/x")[0] is not None else domain


def try_parse_reference(value: str) -> ImageReference | None:
    """``parse_reference`` that answers None instead of raising (for scanners)."""
    try:
        return parse_reference(value)
    except InputError:
        return None


@dataclass(frozen=True)
class PublicMirror:
    """A public mirror of Docker Hub: it serves Docker Hub's images under its own host, and nobody in the
    estate can purge it (only its operator can, or the estate stops pulling through it)."""

    host: str
    operator: str
    docs: str


# Only mirrors whose operator documents them as a copy of Docker Hub's namespaces, path for path.
# (``public.ecr.aws/docker/library/`` is not here: no stored AWS page confirmed it, see issue 20's report.)
PUBLIC_MIRRORS: dict[str, PublicMirror] = {
    "mirror.gcr.io": PublicMirror(
        "mirror.gcr.io", "Google (Artifact Registry's cache of Docker Hub)",
        "https://cloud.google.com/artifact-registry/docs/pull-cached-dockerhub-images"),
}


def public_mirror(registry: str | None) -> PublicMirror | None:
    """The public Docker Hub mirror ``registry`` is, if it is one."""
    return PUBLIC_MIRRORS.get((registry or "").lower())


def fold_public_mirror(ref: ImageReference) -> tuple[ImageReference, PublicMirror | None]:
    """A reference through a public Docker Hub mirror -> the same reference on Docker Hub, and the mirror.

    ``mirror.gcr.io/aquasec/trivy:0.69.6`` -> (``docker.io/aquasec/trivy:0.69.6``, mirror.gcr.io);
    ``mirror.gcr.io/alpine`` is Docker Hub's ``library/alpine``. Any other reference comes back as it is.
    """
    m = public_mirror(ref.registry)
    if m is None:
        return ref, None
    repo = ref.repository if "/" in ref.repository else f"library/{ref.repository}"
    return ImageReference(DOCKER_HUB, repo, ref.tag, ref.digest), m


def normalise_repository(value: str, source: str = "repository") -> str:
    """Canonical repository name (``docker.io/checkmarx/kics``) for any alias spelling; tag/digest refused."""
    ref = parse_reference(value, source)
    if ref.tag or ref.digest:
        raise InputError(source, f"{value!r}: a repository name carries no tag or digest")
    return ref.name
