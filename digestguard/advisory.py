"""Advisory packs: the facts of one incident, as data.

A pack is YAML under ``advisories/``; this module is its schema (pydantic,
``extra="forbid"`` so a misspelt key is an error, not a silently ignored fact)
and its loader. Indicators may be written defanged (``audit.checkmarx[.]cx``,
``hxxps://``) the way IOC lists publish them; they are normalised on load so
every stage matches the real value.

The shipped packs live at the repository root in a checkout and are
force-included as ``digestguard/advisories/`` in the wheel (pyproject.toml);
``PACKS_DIR`` is whichever of the two this installation has. Finding no pack
there is an error: a lint without them would pass malicious digests silently.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError, field_validator, model_validator

from digestguard._model import Model
from digestguard.credentials import refuse_literal_credentials
from digestguard.errors import InputError
from digestguard.reference import (
    DOCKER_HUB,
    DOCKER_HUB_ALIASES,
    PUBLIC_MIRRORS,
    ImageReference,
    fold_public_mirror,
    normalise_repository,
    parse_digest,
    public_mirror,
)
from digestguard.safe_yaml import load_yaml_file

_PACKAGE = Path(__file__).resolve().parent
# Where the shipped packs are: inside the package in an installed wheel (force-include), at the root of a checkout
# (the directory holding pyproject.toml). Outside a checkout the package's parent is site-packages, whose
# ``advisories/`` could belong to anyone, so that place counts only when pyproject.toml sits beside it.
PACKS_LOCATIONS = (_PACKAGE / "advisories", _PACKAGE.parent / "advisories")
PACK_GLOB = "*.y*ml"


def _shipped_packs_dir() -> Path:
    wheel, checkout = PACKS_LOCATIONS
    if not wheel.is_dir() and (checkout.parent / "pyproject.toml").is_file():
        return checkout
    return wheel


PACKS_DIR = _shipped_packs_dir()


_DEFANGED = (("[.]", "."), ("(.)", "."), ("{.}", "."), ("[dot]", "."), ("(dot)", "."), ("[:]", ":"), ("[://]", "://"),
             ("[/]", "/"))


def refang(value: str) -> str:
    """Undo the usual defanging: ``[.]``, ``(.)``, ``{.}``, ``[dot]``, ``hxxp``, ``[:]``, ``[://]``."""
    out = value.strip()
    for a, b in _DEFANGED:
        out = out.replace(a, b)
    out = re.sub(r"^hxxp(s?)://", r"http\1://", out, flags=re.IGNORECASE)
    out = re.sub(r"^fxp://", "ftp://", out, flags=re.IGNORECASE)
    return out


def _digest(v: str) -> str:
    return parse_digest(v)


Digest = Annotated[str, AfterValidator(_digest)]


class Reference(Model):
    """A pointer to where a fact was published."""

    kind: Literal["ghsa", "cve", "go", "url", "cwe", "other"]
    value: str


class MaliciousDigest(Model):
    """A digest the attacker pushed. ``kind=index`` for manifest lists/OCI indexes, ``manifest`` for a platform child."""

    digest: Digest
    kind: Literal["index", "manifest"] = "index"
    tags: list[str] = Field(default_factory=list, description="tags that pointed at it during the attack")
    platform: str | None = Field(None, description="os/arch for a per-platform child, e.g. linux/amd64")
    parent: Digest | None = Field(None, description="the index this child belongs to")
    confirmed: bool = Field(True, description="False when sources disagree and the digest is unconfirmed")
    source: str


class KnownGood(Model):
    """A digest believed clean for a tag. ``digest`` may be None: known-good exists but was never published.

    ``replaces``: tags the attacker wrote that have no clean image of their own (``0.69.4``-``0.69.6``,
    ``latest``); a reference to one is pinned to this entry's tag and digest, so the tag itself changes.
    ``method`` says how a digest was established (signature identity, transparency-log times) besides its
    ``source``; every shipped pack records one (tests/unit/test_mirrors.py), so the on-call can re-check it.
    """

    tag: str | None = None
    digest: Digest | None = None
    version: str | None = None
    repository: str | None = Field(None, description="the name the digest was verified at (canonical)")
    replaces: list[str] = Field(default_factory=list, description="attacker-written tags pinned to this one")
    source: str
    method: str | None = Field(None, description="how the digest was established (shipped packs always say)")
    note: str | None = None

    @field_validator("repository")
    @classmethod
    def _canonical(cls, v: str | None) -> str | None:
        return normalise_repository(v, "known_good.repository") if v else v

    @model_validator(mode="after")
    def _established(self) -> "KnownGood":
        if self.replaces and not (self.tag and self.digest):
            raise ValueError("'replaces' needs the tag and digest the replaced tags are pinned to")
        return self


class Window(Model):
    """When the attack was live (UTC). ``end`` is None while no official end is known."""

    start: datetime
    end: datetime | None = None
    scope: str | None = Field(None, description="what this window covers, e.g. 'trivy 0.69.4 images'")
    source: str

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            v = v.replace(tzinfo=timezone.utc)
        return v

    @model_validator(mode="after")
    def _ordered(self) -> "Window":
        if self.end is not None and self.end < self.start:
            raise ValueError(f"end {self.end.isoformat()} is before start {self.start.isoformat()}")
        return self

    def contains(self, when: datetime, end_override: datetime | None = None) -> bool:
        """True when ``when`` falls at or after start and (if an end is known) at or before end."""
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        end = end_override or self.end
        return when >= self.start and (end is None or when <= end)


class AffectedImage(Model):
    """One image repository the attacker pushed to."""

    repository: str = Field(description="any alias; normalised to the canonical name")
    aliases: list[str] = Field(default_factory=list, description="other names for the same repository (mirrors)")
    tags_overwritten: list[str] = Field(default_factory=list)
    tags_created: list[str] = Field(default_factory=list)
    malicious: list[MaliciousDigest] = Field(min_length=1)
    known_good: list[KnownGood] = Field(default_factory=list)
    windows: list[Window] = Field(default_factory=list, description="per-image windows when they differ from the pack's")

    @field_validator("repository")
    @classmethod
    def _canonical(cls, v: str) -> str:
        return normalise_repository(v, "repository")

    @field_validator("aliases")
    @classmethod
    def _canonical_aliases(cls, v: list[str]) -> list[str]:
        return [normalise_repository(a, "aliases") for a in v]

    @property
    def affected_tags(self) -> list[str]:
        """Every tag the attacker wrote, overwritten first, without duplicates."""
        seen: dict[str, None] = {}
        for t in [*self.tags_overwritten, *self.tags_created, *(t for m in self.malicious for t in m.tags)]:
            seen.setdefault(t, None)
        return list(seen)

    @property
    def names(self) -> list[str]:
        """Canonical names this image is known by (repository first)."""
        return [self.repository, *[a for a in self.aliases if a != self.repository]]

    def spellings(self) -> list[str]:
        """Every way people write the name: canonical, familiar, each Docker Hub host alias and each public mirror."""
        out: list[str] = []
        for name in self.names:
            reg, _, repo = name.partition("/")
            if reg == DOCKER_HUB:
                short = repo[len("library/"):] if repo.startswith("library/") else repo
                out.append(short)
                if short != repo:
                    out.append(repo)
                out.extend(f"{host}/{repo}" for host in sorted(DOCKER_HUB_ALIASES))
                out.extend(f"{host}/{p}" for host in sorted(PUBLIC_MIRRORS) for p in dict.fromkeys((repo, short)))
            else:
                out.append(name)
        return list(dict.fromkeys(out))

    def matches(self, ref: ImageReference) -> bool:
        """True when ``ref`` names this repository under any alias or through a public Docker Hub mirror."""
        return ref.name in self.names or fold_public_mirror(ref)[0].name in self.names

    def known_good_for(self, tag: str) -> KnownGood | None:
        """The known-good entry with a digest for ``tag``: its own, or the one that ``replaces`` it (whose ``tag``
        then differs from ``tag``: the pin changes the tag too). None when unknown."""
        own = next((kg for kg in self.known_good if kg.tag == tag and kg.digest), None)
        return own or next((kg for kg in self.known_good if tag in kg.replaces and kg.digest), None)


class Indicator(Model):
    """A network indicator of compromise, stored refanged."""

    kind: Literal["domain", "ip", "url", "url_path", "user_agent"]
    value: str
    source: str
    note: str | None = None

    @model_validator(mode="after")
    def _normalise(self) -> "Indicator":
        v = refang(self.value)
        if self.kind == "domain":
            v = v.lower().rstrip(".")
            if not re.fullmatch(r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)+[a-z0-9-]{2,63}", v):
                raise ValueError(f"{self.value!r} is not a domain name")
        elif self.kind == "ip":
            v = str(ipaddress.ip_address(v))
        elif self.kind == "url":
            if not re.match(r"^[a-z][a-z0-9+.-]*://", v, re.IGNORECASE):
                raise ValueError(f"{self.value!r} is not a URL (scheme://...)")
        elif self.kind == "url_path" and not v.startswith("/"):
            raise ValueError(f"{self.value!r}: a URL path starts with '/'")
        self.value = v
        return self


class FileIndicator(Model):
    """A file the payload left behind, to check a re-pulled image or a host for leftovers."""

    path: str | None = None
    name: str | None = None
    sha256: str | None = None
    source: str
    note: str | None = None


class SafeCommit(Model):
    ref: str
    commit: str
    source: str


class ActionRefs(Model):
    """A GitHub Action whose tags were force-pushed: the same attack on Git refs."""

    repository: str = Field(pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
    tags: list[str] = Field(default_factory=list, description="tags that were force-pushed ('*' for all)")
    malicious_commits: list[Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")]] = Field(default_factory=list)
    safe: list[SafeCommit] = Field(default_factory=list)
    window: Window | None = None
    source: str


@dataclass(frozen=True)
class ImageMatch:
    """A reference that is one of an advisory's images, and what it was reached through.

    ``via``: the host between the estate and the image's own registry: a public Docker Hub mirror
    (``public=True``: only its operator can purge it) or an inventory pull-through cache; None when the
    reference names the image (or one of its publisher aliases) directly.
    """

    image: AffectedImage
    via: str | None = None
    public: bool = False
    operator: str | None = None

    @property
    def mirror(self) -> str | None:
        """The public mirror's host, when the reference went through one."""
        return self.via if self.public else None


class Advisory(Model):
    """One incident's indicators. See ``advisories/*.yaml`` and ``digestguard advisories show``."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    title: str
    summary: str = ""
    references: list[Reference] = Field(default_factory=list)
    images: list[AffectedImage] = Field(min_length=1)
    window: Window
    network: list[Indicator] = Field(default_factory=list)
    files: list[FileIndicator] = Field(default_factory=list)
    actions: list[ActionRefs] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    def malicious_index(self) -> dict[str, tuple[AffectedImage, MaliciousDigest]]:
        """Every malicious digest (index and child) -> its image and record."""
        return {m.digest: (img, m) for img in self.images for m in img.malicious}

    def is_malicious(self, digest: str | None) -> bool:
        return bool(digest) and digest in self.malicious_index()

    def match(self, ref: ImageReference | None, caches: Iterable[str] = ()) -> ImageMatch | None:
        """THE one answer to "is this reference one of the advisory's images?", and through what.

        In order: the image's own names and pack aliases; a public Docker Hub mirror folded into the Docker
        Hub name (``mirror.gcr.io/aquasec/trivy`` is ``docker.io/aquasec/trivy``); an inventory pull-through
        cache (``caches``: hosts; ``127.0.0.1:5000/mirror/checkmarx/kics`` ends with ``checkmarx/kics``).
        """
        if ref is None:
            return None
        pm = public_mirror(ref.registry)
        for img in self.images:
            if ref.name in img.names:  # a pack alias may itself be a public mirror's spelling
                return ImageMatch(img, pm.host if pm else None, pm is not None, pm.operator if pm else None)
        folded, pm = fold_public_mirror(ref)
        if pm is not None:
            for img in self.images:
                if folded.name in img.names:
                    return ImageMatch(img, pm.host, True, pm.operator)
        hosts = {h.lower() for h in caches}
        if ref.registry.lower() in hosts:
            for img in self.images:
                paths = {n.split("/", 1)[1] for n in img.names}
                if any(ref.repository == p or ref.repository.endswith("/" + p) for p in paths):
                    return ImageMatch(img, ref.registry, False, None)
        return None

    def image_for(self, ref: ImageReference | None, caches: Iterable[str] = ()) -> AffectedImage | None:
        """The affected image ``ref`` names, if any (see :meth:`match`)."""
        m = self.match(ref, caches)
        return m.image if m else None

    def windows(self) -> list[Window]:
        """Every window: the pack's, then per-image ones."""
        return [self.window, *(w for img in self.images for w in img.windows)]

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def _format_validation(path: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{path}: {loc}: {msg}")
    return "\n".join(lines)


def parse_advisory(data: Any, source: str) -> Advisory:
    """Validate already-loaded data; ``InputError`` lists every bad field with the file name."""
    if not isinstance(data, dict):
        raise InputError(source, "an advisory pack is a mapping at the top level")
    try:
        return Advisory.model_validate(data)
    except ValidationError as e:
        raise InputError(source, "invalid advisory pack\n" + _format_validation(source, e)) from None
    except InputError as e:
        raise InputError(source, e.reason, e.field) from None


def load_advisory_file(path: str | Path) -> Advisory:
    """Load and validate one pack file (YAML or JSON)."""
    p = Path(path)
    data = load_yaml_file(p, "advisory pack")
    refuse_literal_credentials(data, str(p))
    return parse_advisory(data, str(p))


def list_packs(directory: Path | None = None) -> list[Advisory]:
    """Every pack shipped in ``advisories/`` (or ``directory``), sorted by id.

    ``InputError`` naming the place looked in when it holds no pack: an empty list would let ``lint`` pass
    every malicious digest without a word (an installation that lost its packs must say so).
    """
    d = directory or PACKS_DIR
    files = sorted(d.glob(PACK_GLOB)) if d.is_dir() else []
    if not files:
        looked = str(d) if directory else " or ".join(str(p) for p in PACKS_LOCATIONS)
        raise InputError(looked, f"no advisory packs found ({PACK_GLOB}); is this installation complete?")
    return sorted((load_advisory_file(p) for p in files), key=lambda a: a.id)


def load_advisory(id_or_path: str, directory: Path | None = None) -> Advisory:
    """A shipped pack by id, or a pack file by path."""
    p = Path(id_or_path)
    if p.suffix in (".yaml", ".yml", ".json") and p.exists():
        return load_advisory_file(p)
    packs = list_packs(directory)
    for adv in packs:
        if adv.id == id_or_path:
            return adv
    raise InputError(id_or_path, f"no such advisory (known: {', '.join(a.id for a in packs)})")


def json_schema() -> dict[str, Any]:
    """The pack schema as JSON Schema (for editors and other tools)."""
    return Advisory.model_json_schema()
