"""What the watch reads: advisory packs, watched tags, registry clients, Docker Hub push facts, network logs.

Split from ``tasks/watch/cycle.py`` (the cycle) so each source's rules sit in one
place: how a reference's host maps to an inventory registry and its
credentials, how "when/who" is asked of Docker Hub, and how a growing log is
followed by byte offset without re-reading or splitting a line.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from digestguard import netlog
from digestguard._model import Model
from digestguard.advisory import PACKS_DIR, Advisory, load_advisory_file
from digestguard.credentials import resolve
from digestguard.errors import AuthError, DigestguardError, InputError, NotFound
from digestguard.inventory import Inventory, NetworkLogSource, Registry
from digestguard.reference import DOCKER_HUB, DOCKER_HUB_ALIASES, ImageReference, parse_digest, parse_reference
from digestguard.timeutil import parse_time, utc
from integrations.cosign import load_public_keys
from integrations.dockerhub import API_URL, DockerHub
from integrations.registry import RegistryClient
from tasks.scan.references import scan_tree
from tasks.sweep.engine import RawHit, compile_matcher, scan_chunk
from tasks.watch.events import NetworkHitEvent, redact_line
from tasks.watch.state import LogPosition

CHUNK = 1 << 20
"""Bytes of a network log read at a time (lines are never split between chunks)."""


# ================================================================= advisories


@dataclass(frozen=True)
class Pack:
    """An advisory and how ``incident_response`` can load it again (id for shipped packs, else the file path)."""

    advisory: Advisory
    source: str


def load_packs(directory: str | os.PathLike[str] | None = None) -> list[Pack]:
    """Every pack in ``directory`` (default: the shipped ``advisories/``), sorted by id."""
    d = Path(directory) if directory else PACKS_DIR
    if not d.is_dir():
        raise InputError(str(d), "advisories directory does not exist")
    shipped = d.resolve() == PACKS_DIR.resolve()
    packs = []
    for p in sorted(d.glob("*.y*ml")):
        adv = load_advisory_file(p)
        packs.append(Pack(adv, adv.id if shipped else str(p.resolve())))
    return sorted(packs, key=lambda x: x.advisory.id)


# ================================================================= targets and registries


@dataclass(frozen=True)
class Target:
    """One tag to watch: ``key`` is the canonical ``registry/repo:tag`` the state is keyed by."""

    key: str
    ref: ImageReference
    allow: frozenset[str] = frozenset()
    public_keys: tuple[bytes, ...] = ()
    origin: str = "inventory"


def _url_host(url: str) -> str:
    return (urlsplit(url if "://" in url else f"//{url}").netloc or url).lower()


def _canonical_tag_ref(ref: ImageReference) -> ImageReference:
    return ImageReference(ref.registry, ref.repository, ref.effective_tag, None)


def inventory_targets(inventory: Inventory, include_repositories: bool = False) -> tuple[list[Target], list[str]]:
    """The tags to watch: ``inventory.images`` and (optionally) every tagged, unpinned reference in its repositories.

    Returns ``(targets, notes)``. A bad ``images`` entry (unparsable reference,
    pinned reference, unreadable key) raises :class:`InputError` naming it: the
    watch must not quietly watch less than it was told to. Repository scan
    problems become notes (and a missing checkout a source-down, see
    :func:`watch_cycle`).
    """
    out: dict[str, Target] = {}
    notes: list[str] = []
    for i, img in enumerate(inventory.images):
        where = f"inventory images[{i}]"
        ref = parse_reference(img.reference, where)
        if ref.digest:
            raise InputError(where, f"{img.reference!r} is pinned to a digest: there is no tag to watch", "reference")
        keys: tuple[bytes, ...] = ()
        if img.cosign_public_key:
            kp = inventory.resolve_path(img.cosign_public_key)
            try:
                keys = (kp.read_bytes(),)
            except OSError as e:
                raise InputError(where, f"cannot read cosign public key {kp}: {e.strerror}", "cosign_public_key") from None
            load_public_keys(keys, f"{where} cosign_public_key")  # fail now, not at the first new digest
        allow = frozenset(parse_digest(d, f"{where} allow") for d in img.allow)
        t = _canonical_tag_ref(ref)
        out[str(t)] = Target(str(t), t, allow, keys)
    return list(out.values()), notes


def repository_targets(inventory: Inventory, actions: dict[str, list[str]] | None = None,
                       ) -> tuple[list[Target], dict[str, str]]:
    """Tagged, unpinned image references found in the inventory's repositories (``certain`` hits only).

    Returns ``(targets, failures)`` where failures maps ``repository NAME`` to
    the reason its checkout could not be scanned. ``actions``, when given, is filled with
    ``{owner/repo: ["REPOSITORY:path:line", ...]}`` of every GitHub Action the checkouts use.
    """
    out: dict[str, Target] = {}
    failures: dict[str, str] = {}
    for repo in inventory.repositories:
        try:
            res = scan_tree(inventory.resolve_path(repo.path), None)
        except DigestguardError as e:
            failures[f"repository {repo.name}"] = str(e)
            continue
        for fs in res.files:
            if actions is not None:
                for a in fs.actions:
                    actions.setdefault(a.repository, []).append(f"{repo.name}:{a.path}:{a.line}")
            # the scanner's one classification: images, and what resolvable indirect references pull
            refs = [f.target for f in fs.found if f.classification in ("image", "indirect") and f.target is not None]
            for h in fs.helm:
                if h.ref is not None and h.tag is not None and h.tag.text and not (h.digest and h.digest.text):
                    try:
                        refs.append(parse_reference(f"{h.ref.name}:{h.tag.text}"))
                    except InputError:
                        pass  # a templated tag ({{ .Values.x }}) names no tag we can ask about
            for ref in refs:
                if ref.tag and not ref.digest:
                    t = _canonical_tag_ref(ref)
                    out.setdefault(str(t), Target(str(t), t, origin=f"repository {repo.name}"))
    return list(out.values()), failures


def registry_entry_for(inventory: Inventory, host: str) -> Registry | None:
    """The inventory registry a reference's host belongs to: by the host of its ``url``.

    ``docker.io`` references go through a ``distribution`` entry with
    ``mirror_of: docker.io`` when the inventory lists one (a pull-through cache
    shows its own view of the tag: it refreshes on pull), else to Docker Hub
    with a ``dockerhub`` entry's credentials (that entry's ``url``, when set, is
    the registry; its ``api_url`` is the Hub API).
    """
    for r in inventory.registries:
        if r.url and _url_host(r.url) == host:
            return r
    if host == DOCKER_HUB:
        for r in inventory.registries:
            if r.kind == "distribution" and r.url and r.mirror_of and r.mirror_of.lower() in DOCKER_HUB_ALIASES:
                return r
        for r in inventory.registries:
            if r.kind == "dockerhub":
                return r
    return None


class RegistryPool(AbstractContextManager["RegistryPool"]):
    """One :class:`RegistryClient` per registry host, kept across cycles (keep-alive, cached tokens).

    Credentials come from the host's inventory entry (``env:``/``prefect-secret:``
    references resolved when the client is first made). ``client_options`` go to
    every client (tests lower ``max_retries``/``backoff``; the next cycle
    retries anyway, so the watch defaults to 3 tries).
    """

    def __init__(self, inventory: Inventory, *, concurrency: int = 64, **client_options: Any) -> None:
        self.inventory = inventory
        self.concurrency = concurrency
        self.options = {"max_retries": 2, "backoff": 0.2, "max_backoff": 2.0, "timeout": 10.0, **client_options}
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def client(self, host: str) -> Any:
        """The client for ``host``; raises :class:`InputError` when its credentials cannot be resolved."""
        with self._lock:
            c = self._clients.get(host)
            if c is None:
                entry = registry_entry_for(self.inventory, host)
                user = pw = base = None
                if entry is not None:
                    user = resolve(entry.username, f"registry {entry.name} username")
                    pw = resolve(entry.password, f"registry {entry.name} password")
                    if entry.url:
                        base = entry.url
                c = self._clients[host] = RegistryClient(host, username=user, password=pw, base_url=base,
                                                         pool_size=self.concurrency, **self.options)
            return c

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, {}
        for c in clients.values():
            c.close()

    def __exit__(self, *exc: object) -> None:
        self.close()


# ================================================================= push info (Docker Hub)


class PushInfo(Model):
    """When a tag was last pushed and by whom, as far as the registry says."""

    pushed_at: datetime | None = None
    pushed_by: str | None = None
    digest: str | None = None  # the digest the push-info source says the tag names (None: not said)


class PushInfoSource(Protocol):
    """Answers "when, and who?" for a moved tag. ``None`` when this source does not know the reference."""

    name: str

    def push_info(self, ref: ImageReference, digest: str) -> PushInfo | None: ...


class DockerHubPushInfo:
    """Docker Hub's API as a :class:`PushInfoSource` for ``docker.io`` references.

    *When*: the tag's ``tag_last_pushed`` (repository API, anonymous for public
    repositories). *Who*: the newest ``repo.tag.push`` audit-log event for the
    tag (organisation audit logs; only with credentials, and only for
    namespaces the credentials may read: a refusal leaves "who" unknown
    rather than failing the alert).
    """

    def __init__(self, hub: Any, *, audit: bool) -> None:
        self.hub = hub
        self.audit = audit
        self.name = f"docker hub api {hub.api_url}"

    def push_time(self, ref: ImageReference) -> PushInfo | None:
        """When the tag was last pushed and which digest Hub says it names (no audit log); None when Hub does not know it."""
        if ref.registry != DOCKER_HUB:
            return None
        try:
            tag = self.hub.get_tag(f"{DOCKER_HUB}/{ref.repository}", ref.effective_tag)
        except NotFound:
            return None
        return PushInfo(pushed_at=tag.tag_last_pushed, digest=tag.digest)

    def push_info(self, ref: ImageReference, digest: str) -> PushInfo | None:
        if ref.registry != DOCKER_HUB:
            return None
        name = ref.repository
        try:
            tag = self.hub.get_tag(f"{DOCKER_HUB}/{name}", ref.effective_tag)
        except NotFound:
            return None  # Hub does not know the tag (yet): "when" and "who" stay unknown, the alert still goes
        info = PushInfo(pushed_at=tag.tag_last_pushed, digest=tag.digest)
        if self.audit and not name.startswith("library/"):
            account = name.split("/", 1)[0]
            try:
                events = self.hub.audit_logs(account, action="repo.tag.push", name=name)
            except (AuthError, NotFound):
                return info
            mine = [e for e in events if e.data.get("tag") in (None, ref.effective_tag)]
            exact = [e for e in mine if e.data.get("digest") == digest]
            best = max(exact or mine, key=lambda e: e.timestamp or utc(datetime.min), default=None)
            if best is not None:
                info.pushed_by = best.actor or None
                info.pushed_at = info.pushed_at or best.timestamp
        return info

    def close(self) -> None:
        self.hub.close()


def dockerhub_push_info(inventory: Inventory) -> DockerHubPushInfo:
    """The Docker Hub push-info source for this inventory.

    The API base is the ``api_url`` of an inventory registry of kind ``dockerhub``
    (default ``https://hub.docker.com``); its ``token`` (organisation access
    token) or ``username``/``password`` (personal access token) unlock the
    audit log. Raises :class:`InputError` when a credential reference cannot be resolved.
    """
    entry = next((r for r in inventory.registries if r.kind == "dockerhub"), None)
    if entry is None:
        return DockerHubPushInfo(DockerHub(api_url=API_URL, max_retries=2), audit=False)
    where = f"registry {entry.name}"
    token = resolve(entry.token, f"{where} token")
    user = resolve(entry.username, f"{where} username")
    secret = resolve(entry.password, f"{where} password")
    hub = DockerHub(token=token, identifier=user if secret else None, secret=secret if user else None,
                    api_url=entry.api_url or API_URL, max_retries=2)
    return DockerHubPushInfo(hub, audit=bool(token or (user and secret)))


# ================================================================= network logs


@dataclass
class Indicators:
    """Every pack's network indicators compiled once per cycle, and which advisories name each value."""

    matcher: Any
    advisories: dict[str, list[str]]  # indicator value -> advisory ids


def compile_indicators(packs: Sequence[Pack]) -> Indicators | None:
    """The sweep engine's matcher over all packs' indicators (None when no pack has any)."""
    pairs: dict[tuple[str, str], list[str]] = {}
    for p in packs:
        for ind in p.advisory.network:
            pairs.setdefault((ind.kind, ind.value), []).append(p.advisory.id)
    if not pairs:
        return None
    by_value: dict[str, list[str]] = {}
    for (_, v), ids in pairs.items():
        by_value.setdefault(v, [])
        by_value[v] += [i for i in ids if i not in by_value[v]]
    return Indicators(compile_matcher(list(pairs)), by_value)


def log_files(inventory: Inventory, src: NetworkLogSource) -> list[Path]:
    """The files a file-kind source names (a folder: every file below it); InputError when the path is missing."""
    p = inventory.resolve_path(src.path or "")
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file())
    if not p.exists():
        raise InputError(str(p), "network log does not exist")
    return [p]


def follow_log(path: Path, pos: LogPosition | None, indicators: Indicators, log_format: str | None,
               source: str) -> tuple[list[NetworkHitEvent], LogPosition, int, bool]:
    """Sweep only what was appended to ``path`` since ``pos``.

    Returns ``(hits, new position, bytes read, restarted)``. A file smaller than
    the stored offset, or with another inode, was truncated or rotated: it is
    read again from the start. Only complete lines are read; a last line still
    being written waits for the next cycle. Line numbers count from the start
    of the file. Gzip files cannot be followed by offset: they are re-read when
    their size changes and only lines past the last count are reported.
    """
    st = path.stat()
    head = netlog.read_head(path)
    fmt = netlog.format_by_name(log_format, head) if log_format else netlog.detect_format(head)
    restarted = pos is not None and (st.st_size < pos.offset or (pos.inode is not None and pos.inode != st.st_ino))
    since = None if restarted else pos
    if netlog.is_gzip(path):
        if since is not None and st.st_size == since.offset:
            return [], since, 0, False
        raw, new_pos = _reread_gzip(path, st, since, indicators, fmt)
        nbytes = st.st_size
    else:
        raw, new_pos, nbytes = _read_appended(path, st, since, indicators, fmt)
    hits = [NetworkHitEvent(source=source, path=str(path), line=line, indicator=ind, indicator_kind=kind,
                            advisories=indicators.advisories.get(ind, []), timestamp=parse_time(ts_iso),
                            text=redact_line(text))
            for line, ind, kind, ts_iso, _field, text in raw]
    return hits, new_pos, nbytes, restarted


def _reread_gzip(path: Path, st: os.stat_result, since: LogPosition | None, indicators: Indicators,
                 fmt: netlog.LogFormat) -> tuple[list[RawHit], LogPosition]:
    """A gzip log read whole; only hits on lines past ``since.lines`` are kept."""
    raw: list[RawHit] = []
    total = 0
    for chunk, _trunc in netlog.iter_chunks(path):
        if chunk:
            n, _ = scan_chunk(indicators.matcher, fmt, chunk, total, raw)
            total += n
    lines_before = since.lines if since else 0
    return [h for h in raw if h[0] > lines_before], LogPosition(st.st_size, total, st.st_ino)


def _read_appended(path: Path, st: os.stat_result, since: LogPosition | None, indicators: Indicators,
                   fmt: netlog.LogFormat) -> tuple[list[RawHit], LogPosition, int]:
    """The complete lines of a plain log after ``since`` (a cut last line waits): hits, new position, bytes read."""
    raw: list[RawHit] = []
    start = since.offset if since else 0
    lines = since.lines if since else 0
    offset = start
    with open(path, "rb") as f:
        f.seek(start)
        carry = b""
        remaining = st.st_size - start
        while remaining > 0:
            block = f.read(min(CHUNK, remaining))
            if not block:
                break
            remaining -= len(block)
            data = carry + block
            cut = data.rfind(b"\n")
            if cut < 0:
                carry = data
                continue
            chunk, carry = data[: cut + 1], data[cut + 1:]
            n, _ = scan_chunk(indicators.matcher, fmt, chunk, lines, raw)
            lines += n
            offset += len(chunk)
    return raw, LogPosition(offset, lines, st.st_ino), offset - start


def github_tags_source(inventory: Inventory) -> tuple[Any | None, str | None]:
    """``(client, None)``: an ``integrations.github.GitHubClient`` for the first ``github`` repository of the
    inventory (its ``api_url`` and ``token``), for watching action tags; ``(None, why)`` when there is none."""
    from integrations.github import DEFAULT_API_URL, GitHubClient

    entry = next((r for r in inventory.repositories if r.kind == "github"), None)
    if entry is None:
        return None, "action tags not watched: no github repository in the inventory"
    token = resolve(entry.token, f"repository {entry.name} token") or ""
    return GitHubClient(token, api_url=entry.api_url or DEFAULT_API_URL, max_retries=2), None
