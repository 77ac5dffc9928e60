"""Digest drift watch: notice the next tag overwrite before anyone pulls it.

The 2026 incidents were tags re-pointed at attacker content. A tag's digest is
cheap to ask for (one HEAD), so the watch asks for every watched tag each
cycle and compares the answer with the last digest it saw, which lives in a
small SQLite file (:class:`WatchState`) so a restart neither forgets nor
re-alerts. Per cycle, :func:`watch_cycle` turns what changed into typed events:

* :class:`DriftEvent`       a tag moved to a digest nobody listed as expected (``allow``)
* :class:`MaliciousEvent`   a tag now names a digest an advisory pack lists (the caller starts a dry-run incident)
* :class:`SignatureEvent`   a new digest is unsigned, or its cosign signature does not verify against the pinned key
* :class:`NetworkHitEvent`  a network log grew a line naming an advisory indicator (only new bytes are read)
* :class:`SourceDownEvent` / :class:`SourceRecoveredEvent`  once per outage of a registry, image, log or API

Nothing here posts or starts anything: :func:`run_watch` loops cycles and
hands events to an ``alert`` function and malicious matches to a
``start_incident`` function, both given by the caller (the Prefect flow in
``flows/watch.py`` passes Slack and the ``incident_response`` subflow; tests
pass recorders). An alert that cannot be delivered is queued in the state and
retried next cycle: a finding is never dropped because Slack was down.

Example::

    inv = load_inventory("inventory.yaml")
    with WatchState.for_inventory(inv) as state, RegistryPool(inv) as pool:
        report = watch_cycle(inv, state, registries=pool)
        for ev in report.events:
            print(ev.severity, ev.summary())
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, Union
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from digestguard.advisory import PACKS_DIR, Advisory, load_advisory_file
from digestguard.credentials import resolve
from digestguard.errors import DigestguardError, InputError, NotFound, RateLimited, Unavailable
from digestguard.inventory import Inventory, NetworkLogSource, Registry
from digestguard.reference import DOCKER_HUB, DOCKER_HUB_ALIASES, ImageReference, parse_digest, parse_reference

DEFAULT_STATE = ".digestguard/watch.sqlite"
CHUNK = 1 << 20
"""Bytes of a network log read at a time (lines are never split between chunks)."""

Severity = Literal["info", "warning", "high", "critical"]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(d: datetime | None) -> str | None:
    return d.isoformat() if d else None


# ================================================================= events


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at: datetime = Field(default_factory=_now)

    def summary(self) -> str:  # pragma: no cover - every event overrides it
        raise NotImplementedError


class DriftEvent(_Event):
    """A tag now names a digest that is neither the last one seen nor on the image's allow-list."""

    kind: Literal["drift"] = "drift"
    severity: Severity = "high"
    reference: str
    before: str
    after: str
    pushed_at: datetime | None = None
    pushed_by: str | None = None
    push_info_error: str | None = None

    def summary(self) -> str:
        who = f" by {self.pushed_by}" if self.pushed_by else ""
        when = f" at {self.pushed_at.isoformat()}" if self.pushed_at else ""
        return f"tag moved: {self.reference} {self.before} -> {self.after} (pushed{when}{who})" if (who or when) \
            else f"tag moved: {self.reference} {self.before} -> {self.after}"


class MaliciousEvent(_Event):
    """A tag names a digest an advisory lists as malicious (the index itself, or one of its children)."""

    kind: Literal["malicious"] = "malicious"
    severity: Severity = "critical"
    reference: str
    digest: str
    matched: str = Field(description="the advisory's digest that matched (the index or a platform child)")
    before: str | None = None
    advisory: str
    advisory_title: str = ""
    advisory_source: str = Field("", description="pack id or pack file path, as incident_response takes it")
    pushed_at: datetime | None = None
    pushed_by: str | None = None
    incident: str | None = None
    incident_error: str | None = None

    def summary(self) -> str:
        via = "" if self.matched == self.digest else f" (platform child {self.matched})"
        inc = f"; dry-run incident {self.incident} started" if self.incident else ""
        err = f"; incident NOT started: {self.incident_error}" if self.incident_error else ""
        return f"MALICIOUS digest: {self.reference} -> {self.digest}{via} matches advisory {self.advisory}{inc}{err}"


class SignatureEvent(_Event):
    """A new digest of an image with a pinned cosign key is unsigned or its signature does not verify."""

    kind: Literal["signature"] = "signature"
    severity: Severity = "high"
    reference: str
    digest: str
    status: Literal["unsigned", "invalid"]
    reason: str

    def summary(self) -> str:
        return f"signature {self.status}: {self.reference}@{self.digest}: {self.reason}"


class NetworkHitEvent(_Event):
    """A new line in a followed network log names an advisory indicator."""

    kind: Literal["network-hit"] = "network-hit"
    severity: Severity = "critical"
    source: str
    path: str
    line: int
    indicator: str
    indicator_kind: str
    advisories: list[str] = Field(default_factory=list)
    timestamp: datetime | None = None
    text: str | None = None

    def summary(self) -> str:
        return f"network indicator {self.indicator} ({', '.join(self.advisories)}) in {self.path}:{self.line}"


class SourceDownEvent(_Event):
    """A source (registry, image, log, API) failed; said once per outage."""

    kind: Literal["source-down"] = "source-down"
    severity: Severity = "warning"
    source: str
    error: str

    def summary(self) -> str:
        return f"source down: {self.source}: {self.error}"


class SourceRecoveredEvent(_Event):
    """A source that was down answers again; said once."""

    kind: Literal["source-recovered"] = "source-recovered"
    severity: Severity = "info"
    source: str
    down_since: datetime | None = None

    def summary(self) -> str:
        since = f" (down since {self.down_since.isoformat()})" if self.down_since else ""
        return f"source recovered: {self.source}{since}"


WatchEvent = Annotated[
    Union[DriftEvent, MaliciousEvent, SignatureEvent, NetworkHitEvent, SourceDownEvent, SourceRecoveredEvent],
    Field(discriminator="kind"),
]
_EVENT = TypeAdapter(WatchEvent)


class AllowedChange(BaseModel):
    """A tag moved to a digest the inventory lists as expected: recorded, not alerted."""

    reference: str
    before: str
    after: str


class CycleReport(BaseModel):
    """What one cycle saw and concluded. ``events`` are what deserve a person's attention."""

    model_config = ConfigDict(extra="forbid")

    started_at: datetime
    finished_at: datetime | None = None
    references: int = 0
    resolved: int = 0
    unchanged: int = 0
    first_seen: int = 0
    allowed: list[AllowedChange] = Field(default_factory=list)
    signatures_checked: int = 0
    log_files: int = 0
    log_bytes: int = 0
    events: list[WatchEvent] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list, description="things worth knowing that are not alerts")
    incidents: list[str] = Field(default_factory=list)
    alerts_sent: int = 0
    alerts_pending: int = 0

    def by_kind(self, kind: str) -> list[Any]:
        return [e for e in self.events if e.kind == kind]

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# ================================================================= state


@dataclass(frozen=True)
class Outage:
    source: str
    since: datetime
    error: str


@dataclass(frozen=True)
class LogPosition:
    """Where the last cycle stopped reading a log: byte ``offset``, ``lines`` before it, the file's inode."""

    offset: int
    lines: int
    inode: int | None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS digests(reference TEXT PRIMARY KEY, digest TEXT NOT NULL, first_seen TEXT, changed_at TEXT);
CREATE TABLE IF NOT EXISTS signatures(reference TEXT PRIMARY KEY, digest TEXT NOT NULL, status TEXT NOT NULL, reason TEXT, checked_at TEXT);
CREATE TABLE IF NOT EXISTS log_positions(path TEXT PRIMARY KEY, offset INTEGER NOT NULL, lines INTEGER NOT NULL, inode INTEGER, updated_at TEXT);
CREATE TABLE IF NOT EXISTS outages(source TEXT PRIMARY KEY, since TEXT NOT NULL, error TEXT);
CREATE TABLE IF NOT EXISTS pending_alerts(id INTEGER PRIMARY KEY AUTOINCREMENT, event TEXT NOT NULL, queued_at TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0);
"""


class WatchState:
    """The watch's memory (SQLite): last digest per tag, signature verdicts, log offsets, outages, undelivered alerts.

    Why SQLite: it survives restarts and crashes mid-cycle (each batch is one
    transaction), and a scheduled deployment run on another worker can share
    the file. Nothing secret is stored: digests, paths, offsets, error texts.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise InputError(str(path), f"cannot open the watch state: {e}") from None
        self._lock = threading.Lock()

    @classmethod
    def for_inventory(cls, inventory: Inventory, path: str | os.PathLike[str] | None = None) -> "WatchState":
        """The state file named by ``path`` or ``.digestguard/watch.sqlite`` next to the inventory."""
        return cls(inventory.resolve_path(os.fspath(path)) if path else inventory.resolve_path(DEFAULT_STATE))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "WatchState":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, sql: str, rows: Iterable[tuple[Any, ...]]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(sql, rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # -- digests
    def digests(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT reference, digest FROM digests"))

    def record_digests(self, changes: Mapping[str, str], when: datetime | None = None) -> None:
        """Remember ``{reference: digest}`` (one transaction)."""
        at = _iso(when or _now())
        self._write(
            "INSERT INTO digests(reference, digest, first_seen, changed_at) VALUES(?, ?, ?, ?) "
            "ON CONFLICT(reference) DO UPDATE SET digest=excluded.digest, changed_at=excluded.changed_at",
            [(r, d, at, at) for r, d in changes.items()],
        )

    # -- signatures
    def signatures(self) -> dict[str, tuple[str, str]]:
        """``{reference: (digest, status)}`` of the last verdicts."""
        return {r: (d, s) for r, d, s in self._db.execute("SELECT reference, digest, status FROM signatures")}

    def record_signatures(self, verdicts: Iterable[tuple[str, str, str, str]]) -> None:
        """Rows of ``(reference, digest, status, reason)``."""
        at = _iso(_now())
        self._write(
            "INSERT INTO signatures(reference, digest, status, reason, checked_at) VALUES(?, ?, ?, ?, ?) "
            "ON CONFLICT(reference) DO UPDATE SET digest=excluded.digest, status=excluded.status, reason=excluded.reason, "
            "checked_at=excluded.checked_at",
            [(*v, at) for v in verdicts],
        )

    # -- network logs
    def log_position(self, path: str) -> LogPosition | None:
        row = self._db.execute("SELECT offset, lines, inode FROM log_positions WHERE path=?", (path,)).fetchone()
        return LogPosition(*row) if row else None

    def record_log_position(self, path: str, pos: LogPosition) -> None:
        self._write(
            "INSERT INTO log_positions(path, offset, lines, inode, updated_at) VALUES(?, ?, ?, ?, ?) "
            "ON CONFLICT(path) DO UPDATE SET offset=excluded.offset, lines=excluded.lines, inode=excluded.inode, "
            "updated_at=excluded.updated_at",
            [(path, pos.offset, pos.lines, pos.inode, _iso(_now()))],
        )

    # -- outages
    def outages(self) -> dict[str, Outage]:
        return {s: Outage(s, datetime.fromisoformat(since), err or "")
                for s, since, err in self._db.execute("SELECT source, since, error FROM outages")}

    def mark_down(self, source: str, error: str) -> None:
        self._write("INSERT OR IGNORE INTO outages(source, since, error) VALUES(?, ?, ?)", [(source, _iso(_now()), error[:500])])

    def mark_up(self, source: str) -> None:
        self._write("DELETE FROM outages WHERE source=?", [(source,)])

    # -- undelivered alerts
    def queue_alerts(self, events: Sequence[Any]) -> None:
        at = _iso(_now())
        self._write("INSERT INTO pending_alerts(event, queued_at) VALUES(?, ?)",
                    [(e.model_dump_json(), at) for e in events])

    def pending_alerts(self) -> list[tuple[int, Any]]:
        """``[(id, event)]`` oldest first."""
        rows = self._db.execute("SELECT id, event FROM pending_alerts ORDER BY id").fetchall()
        return [(i, _EVENT.validate_json(e)) for i, e in rows]

    def drop_alerts(self, ids: Iterable[int]) -> None:
        self._write("DELETE FROM pending_alerts WHERE id=?", [(i,) for i in ids])

    def count_pending(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM pending_alerts").fetchone()[0])


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
            from integrations.cosign import load_public_keys

            load_public_keys(keys, f"{where} cosign_public_key")  # fail now, not at the first new digest
        allow = frozenset(parse_digest(d, f"{where} allow") for d in img.allow)
        t = _canonical_tag_ref(ref)
        out[str(t)] = Target(str(t), t, allow, keys)
    return list(out.values()), notes


def repository_targets(inventory: Inventory) -> tuple[list[Target], dict[str, str]]:
    """Tagged, unpinned image references found in the inventory's repositories (``certain`` hits only).

    Returns ``(targets, failures)`` where failures maps ``repository NAME`` to
    the reason its checkout could not be scanned.
    """
    from tasks.references import scan_tree

    out: dict[str, Target] = {}
    failures: dict[str, str] = {}
    for repo in inventory.repositories:
        try:
            res = scan_tree(inventory.resolve_path(repo.path), None)
        except DigestguardError as e:
            failures[f"repository {repo.name}"] = str(e)
            continue
        for fs in res.files:
            refs = [f.ref for f in fs.found if f.certain and f.ref is not None]
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
    with a ``dockerhub`` entry's credentials (that entry's ``url``, when set,
    is the Hub *API*, not the registry).
    """
    for r in inventory.registries:
        if r.kind != "dockerhub" and r.url and _url_host(r.url) == host:
            return r
    if host == DOCKER_HUB:
        for r in inventory.registries:
            if r.kind == "distribution" and r.url and r.mirror_of and r.mirror_of.lower() in DOCKER_HUB_ALIASES:
                return r
        for r in inventory.registries:
            if r.kind == "dockerhub":
                return r
    for r in inventory.registries:
        if r.kind == "dockerhub" and r.url and _url_host(r.url) == host:
            return r
    return None


class RegistryPool:
    """One :class:`RegistryClient` per registry host, kept across cycles (keep-alive, cached tokens).

    Credentials come from the host's inventory entry (``env:``/``prefect-secret:``
    references resolved when the client is first made). ``client_options`` go to
    every client (tests lower ``max_attempts``/``backoff``; the next cycle
    retries anyway, so the watch defaults to 3 tries).
    """

    def __init__(self, inventory: Inventory, *, concurrency: int = 64, **client_options: Any) -> None:
        self.inventory = inventory
        self.concurrency = concurrency
        self.options = {"max_attempts": 3, "backoff": 0.2, "max_backoff": 2.0, "timeout": 10.0, **client_options}
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def client(self, host: str) -> Any:
        """The client for ``host``; raises :class:`InputError` when its credentials cannot be resolved."""
        from integrations.registry import RegistryClient

        with self._lock:
            c = self._clients.get(host)
            if c is None:
                entry = registry_entry_for(self.inventory, host)
                user = pw = base = None
                if entry is not None:
                    user = resolve(entry.username, f"registry {entry.name} username")
                    pw = resolve(entry.password, f"registry {entry.name} password")
                    if entry.kind != "dockerhub" and entry.url:
                        base = entry.url
                c = self._clients[host] = RegistryClient(host, username=user, password=pw, base_url=base,
                                                         pool_size=self.concurrency, **self.options)
            return c

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, {}
        for c in clients.values():
            c.close()

    def __enter__(self) -> "RegistryPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ================================================================= push info (Docker Hub)


class PushInfo(BaseModel):
    """When a tag was last pushed and by whom, as far as the registry says."""

    pushed_at: datetime | None = None
    pushed_by: str | None = None


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

    def push_info(self, ref: ImageReference, digest: str) -> PushInfo | None:
        from digestguard.errors import AuthError

        if ref.registry != DOCKER_HUB:
            return None
        name = ref.repository
        try:
            tag = self.hub.get_tag(f"{DOCKER_HUB}/{name}", ref.effective_tag)
        except NotFound:
            return None  # Hub does not know the tag (yet): "when" and "who" stay unknown, the alert still goes
        info = PushInfo(pushed_at=tag.tag_last_pushed)
        if self.audit and not name.startswith("library/"):
            account = name.split("/", 1)[0]
            try:
                events = self.hub.audit_logs(account, action="repo.tag.push", name=name)
            except (AuthError, NotFound):
                return info
            mine = [e for e in events if e.data.get("tag") in (None, ref.effective_tag)]
            exact = [e for e in mine if e.data.get("digest") == digest]
            best = max(exact or mine, key=lambda e: e.timestamp or datetime.min.replace(tzinfo=timezone.utc), default=None)
            if best is not None:
                info.pushed_by = best.actor or None
                info.pushed_at = info.pushed_at or best.timestamp
        return info

    def close(self) -> None:
        self.hub.close()


def dockerhub_push_info(inventory: Inventory) -> DockerHubPushInfo | None:
    """The Docker Hub push-info source for this inventory (None when ``integrations.dockerhub`` is absent).

    The API base is the ``url`` of an inventory registry of kind ``dockerhub``
    (default ``https://hub.docker.com``); its ``token`` (organisation access
    token) or ``username``/``password`` (personal access token) unlock the
    audit log. Raises :class:`InputError` when a credential reference cannot be resolved.
    """
    try:
        from integrations.dockerhub import API_URL, DockerHub
    except ImportError:
        return None
    entry = next((r for r in inventory.registries if r.kind == "dockerhub"), None)
    if entry is None:
        return DockerHubPushInfo(DockerHub(api_url=API_URL, max_retries=2), audit=False)
    where = f"registry {entry.name}"
    token = resolve(entry.token, f"{where} token")
    user = resolve(entry.username, f"{where} username")
    secret = resolve(entry.password, f"{where} password")
    hub = DockerHub(token=token, identifier=user if secret else None, secret=secret if user else None,
                    api_url=entry.url or API_URL, max_retries=2)
    return DockerHubPushInfo(hub, audit=bool(token or (user and secret)))


# ================================================================= network logs


@dataclass
class _Indicators:
    matcher: Any
    advisories: dict[str, list[str]]  # indicator value -> advisory ids


def _indicators(packs: Sequence[Pack]) -> _Indicators | None:
    from tasks.sweep_engine import compile_matcher

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
    return _Indicators(compile_matcher(list(pairs)), by_value)


def _log_files(inventory: Inventory, src: NetworkLogSource) -> list[Path]:
    p = inventory.resolve_path(src.path or "")
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file())
    if not p.exists():
        raise InputError(str(p), "network log does not exist")
    return [p]


def follow_log(path: Path, pos: LogPosition | None, indicators: _Indicators, log_format: str | None,
               source: str) -> tuple[list[NetworkHitEvent], LogPosition, int, bool]:
    """Sweep only what was appended to ``path`` since ``pos``.

    Returns ``(hits, new position, bytes read, restarted)``. A file smaller than
    the stored offset, or with another inode, was truncated or rotated: it is
    read again from the start. Only complete lines are read; a last line still
    being written waits for the next cycle. Line numbers count from the start
    of the file. Gzip files cannot be followed by offset: they are re-read when
    their size changes and only lines past the last count are reported.
    """
    from integrations import netlogs
    from tasks.sweep_engine import scan_chunk

    st = path.stat()
    head = netlogs.read_head(path)
    fmt = netlogs.format_by_name(log_format, head) if log_format else netlogs.detect_format(head)
    restarted = pos is not None and (st.st_size < pos.offset or (pos.inode is not None and pos.inode != st.st_ino))
    start = 0 if (pos is None or restarted) else pos.offset
    lines_before = 0 if (pos is None or restarted) else pos.lines
    raw: list[tuple] = []
    if netlogs.is_gzip(path):
        if pos is not None and not restarted and st.st_size == pos.offset:
            return [], pos, 0, False
        total = 0
        for chunk, _trunc in netlogs.iter_chunks(path):
            if chunk:
                n, _ = scan_chunk(indicators.matcher, fmt, chunk, total, raw)
                total += n
        raw = [h for h in raw if h[0] > lines_before]
        new_pos = LogPosition(st.st_size, total, st.st_ino)
        nbytes = st.st_size
    else:
        lines = lines_before
        offset = start
        nbytes = 0
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
                nbytes += len(chunk)
        new_pos = LogPosition(offset, lines, st.st_ino)
    hits = []
    for line, ind, kind, ts_iso, _field, text in raw:
        hits.append(NetworkHitEvent(
            source=source, path=str(path), line=line, indicator=ind, indicator_kind=kind,
            advisories=indicators.advisories.get(ind, []), timestamp=datetime.fromisoformat(ts_iso) if ts_iso else None,
            text=text))
    return hits, new_pos, nbytes, restarted


# ================================================================= the cycle


def _registry_source(host: str) -> str:
    return f"registry {host}"


def _error_text(e: BaseException) -> str:
    return str(e)[:300]


def watch_cycle(
    inventory: Inventory,
    state: WatchState,
    *,
    packs: Sequence[Pack] | None = None,
    advisories_dir: str | os.PathLike[str] | None = None,
    include_repositories: bool = False,
    registries: RegistryPool | None = None,
    push_info: PushInfoSource | None = None,
    concurrency: int = 64,
    check_children: bool = True,
) -> CycleReport:
    """One watch cycle: resolve every watched tag, compare, verify, follow logs; return the events.

    ``packs`` (default: loaded from ``advisories_dir`` or the shipped packs) give
    the malicious digests and network indicators. ``registries`` is reused
    across cycles by :func:`run_watch`; one is made (and closed) here when
    omitted. ``push_info`` answers who/when for moved tags (default: the
    Docker Hub API for ``docker.io`` references, when available).

    The state is updated before returning: a digest is remembered once its
    events are in the report, so the same change is never alerted twice.
    Raises :class:`InputError` for a bad inventory ``images`` entry; every
    other failure becomes a source-down event (once per outage) or a note.
    """
    report = CycleReport(started_at=_now())
    if packs is None:
        packs = load_packs(advisories_dir)
    own_pool = registries is None
    pool = registries or RegistryPool(inventory, concurrency=concurrency)
    failed: dict[str, str] = {}  # source -> error, this cycle
    ok: set[str] = set()
    own_push = None
    if push_info is None:
        try:
            push_info = own_push = dockerhub_push_info(inventory)
        except DigestguardError as e:
            failed["push info docker hub"] = _error_text(e)
    try:
        targets, notes = inventory_targets(inventory)
        report.notes += notes
        if include_repositories:
            known = {t.key for t in targets}
            found, failures = repository_targets(inventory)
            failed.update(failures)
            ok.update(f"repository {r.name}" for r in inventory.repositories if f"repository {r.name}" not in failures)
            targets += [t for t in found if t.key not in known]
        report.references = len(targets)
        _check_images(inventory, state, targets, packs, pool, push_info, report, failed, ok, concurrency, check_children)
        _follow_logs(inventory, state, packs, report, failed, ok)
        _outage_events(state, report, failed, ok)
    finally:
        if own_pool:
            pool.close()
        if own_push is not None:
            own_push.close()
    report.finished_at = _now()
    return report


def _check_images(inventory: Inventory, state: WatchState, targets: list[Target], packs: Sequence[Pack],
                  pool: RegistryPool, push_info: PushInfoSource | None, report: CycleReport,
                  failed: dict[str, str], ok: set[str], concurrency: int, check_children: bool) -> None:
    from integrations.registry import resolve_many

    if not targets:
        return
    hosts = sorted({t.ref.registry for t in targets})
    clients: dict[str, Any] = {}
    for h in hosts:
        try:
            clients[h] = pool.client(h)
        except DigestguardError as e:
            failed[_registry_source(h)] = _error_text(e)
    live = [t for t in targets if t.ref.registry in clients]
    results = resolve_many([t.ref for t in live], concurrency=concurrency, clients=clients)

    # A host where nothing resolved and something was unreachable is down as a whole (one alert, not one per tag).
    per_host: dict[str, list[tuple[Target, Any]]] = {}
    for t, r in zip(live, results):
        per_host.setdefault(t.ref.registry, []).append((t, r))
    resolved: list[tuple[Target, str]] = []
    for host, rows in per_host.items():
        if not any(r.ok for _, r in rows) and any(isinstance(r.error, (Unavailable, RateLimited)) for _, r in rows):
            first = next(r.error for _, r in rows if isinstance(r.error, (Unavailable, RateLimited)))
            failed[_registry_source(host)] = _error_text(first)
            continue
        ok.add(_registry_source(host))
        for t, r in rows:
            src = f"image {t.key}"
            if r.ok:
                ok.add(src)
                resolved.append((t, r.digest))
            else:
                failed[src] = _error_text(r.error) if not isinstance(r.error, NotFound) else f"tag not found: {_error_text(r.error)}"
    report.resolved = len(resolved)

    malicious: dict[str, tuple[Pack, str]] = {}
    children_matter = False
    for p in packs:
        for img in p.advisory.images:
            for m in img.malicious:
                malicious.setdefault(m.digest, (p, m.digest))
                children_matter = children_matter or m.kind == "manifest"

    seen = state.digests()
    sigs = state.signatures()
    changed: dict[str, str] = {}
    new: list[tuple[Target, str, str | None]] = []  # target, digest, before
    for t, digest in resolved:
        before = seen.get(t.key)
        if before == digest:
            report.unchanged += 1
            sig = sigs.get(t.key)
            if t.public_keys and (sig is None or sig[0] != digest or sig[1] != "signed-valid"):
                new.append((t, digest, before))  # re-check until it verifies; alerts only when the verdict changes
            continue
        changed[t.key] = digest
        new.append((t, digest, before))
        if before is None:
            report.first_seen += 1

    # Children of an index are the same wherever its digest is tagged: read each new digest's index once.
    child_hit: dict[str, tuple[Pack, str] | None] = {}
    child_err: dict[str, str] = {}
    if check_children and children_matter:
        todo = {digest: t for t, digest, before in new if before != digest and digest not in malicious}

        def children(item: tuple[str, Target]) -> tuple[str, tuple[Pack, str] | None, str | None]:
            digest, t = item
            try:
                for child in clients[t.ref.registry].get_index_children(t.ref.repository, digest):
                    if child.digest in malicious:
                        return digest, malicious[child.digest], None
            except DigestguardError as e:
                return digest, None, _error_text(e)
            return digest, None, None

        for digest, hit, err in _parallel(children, list(todo.items())):
            child_hit[digest] = hit
            if err:
                child_err[digest] = err

    sig_cache: dict[tuple[str, str, str], Any] = {}

    def examine(item: tuple[Target, str, str | None]) -> dict[str, Any]:
        t, digest, before = item
        out: dict[str, Any] = {}
        client = clients[t.ref.registry]
        if before != digest:
            hit = malicious.get(digest) or child_hit.get(digest)
            if digest in child_err:
                out["children_error"] = child_err[digest]
            out["malicious"] = hit
            if before is not None and (hit or digest not in t.allow) and push_info is not None:
                try:
                    out["push"] = push_info.push_info(t.ref, digest)
                except DigestguardError as e:
                    out["push_error"] = _error_text(e)
        if t.public_keys:
            from integrations.cosign import RegistrySignatureSource, verify_signature

            key = (t.ref.registry, t.ref.repository, digest)
            try:
                if key not in sig_cache:
                    sig_cache[key] = verify_signature(RegistrySignatureSource(client), t.ref.repository, digest,
                                                      list(t.public_keys))
                out["signature"] = sig_cache[key]
            except DigestguardError as e:
                out["signature_error"] = _error_text(e)
        return out

    needs_work = [x for x in new if x[0].public_keys or (x[2] is not None and push_info is not None)]
    done = dict(zip((id(x) for x in needs_work), _parallel(examine, needs_work)))
    details = [done[id(x)] if id(x) in done else examine(x) for x in new]

    verdicts: list[tuple[str, str, str, str]] = []
    push_failed: str | None = None
    for (t, digest, before), d in zip(new, details):
        push: PushInfo | None = d.get("push")
        if d.get("push_error"):
            push_failed = d["push_error"]
        if d.get("children_error"):
            report.notes.append(f"{t.key}: could not read the index to check its children: {d['children_error']}")
        hit = d.get("malicious")
        if before != digest:
            if hit is not None:
                pack, matched = hit
                report.events.append(MaliciousEvent(
                    reference=t.key, digest=digest, matched=matched, before=before, advisory=pack.advisory.id,
                    advisory_title=pack.advisory.title, advisory_source=pack.source,
                    pushed_at=push.pushed_at if push else None, pushed_by=push.pushed_by if push else None))
            elif before is not None and digest in t.allow:
                report.allowed.append(AllowedChange(reference=t.key, before=before, after=digest))
            elif before is not None:
                report.events.append(DriftEvent(
                    reference=t.key, before=before, after=digest, pushed_at=push.pushed_at if push else None,
                    pushed_by=push.pushed_by if push else None, push_info_error=d.get("push_error")))
        if t.public_keys:
            sig_src = f"signature {t.key}"
            if "signature" in d:
                check = d["signature"]
                report.signatures_checked += 1
                ok.add(sig_src)
                status = check.status.value
                prev = sigs.get(t.key)
                if status != "signed-valid" and prev != (digest, status):
                    report.events.append(SignatureEvent(reference=t.key, digest=digest, status=status, reason=check.reason))
                verdicts.append((t.key, digest, status, check.reason))
            else:
                failed[sig_src] = d.get("signature_error", "signature not checked")
    if push_info is not None:
        src = f"push info {push_info.name}"
        if push_failed:
            failed[src] = push_failed
        elif any("push" in d for d in details):
            ok.add(src)
    if changed:
        state.record_digests(changed)
    if verdicts:
        state.record_signatures(verdicts)


def _parallel(fn: Callable[[Any], Any], items: list[Any], workers: int = 16) -> list[Any]:
    """``map`` over a bounded thread pool (registry reads are I/O), in input order."""
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="watch") as ex:
        return list(ex.map(fn, items))


def _follow_logs(inventory: Inventory, state: WatchState, packs: Sequence[Pack], report: CycleReport,
                 failed: dict[str, str], ok: set[str]) -> None:
    files = [s for s in inventory.network_logs if s.kind == "file"]
    skipped = [s for s in inventory.network_logs if s.kind != "file"]
    for s in skipped:
        report.notes.append(f"network log {s.name}: kind {s.kind} is not followed by the watch (use `digestguard sweep`)")
    if not files:
        return
    ind = _indicators(packs)
    if ind is None:
        report.notes.append("no advisory has network indicators: network logs not followed")
        return
    for src in files:
        name = f"network log {src.name}"
        try:
            paths = _log_files(inventory, src)
            for p in paths:
                key = str(p)
                hits, pos, nbytes, restarted = follow_log(p, state.log_position(key), ind, src.format, src.name or key)
                report.events.extend(hits)
                report.log_files += 1
                report.log_bytes += nbytes
                if restarted:
                    report.notes.append(f"{key}: truncated or rotated; read again from the start")
                state.record_log_position(key, pos)
        except (OSError, DigestguardError) as e:
            failed[name] = _error_text(e) if isinstance(e, DigestguardError) else f"{getattr(e, 'filename', '')}: {e.strerror or e}"
            continue
        ok.add(name)


def _outage_events(state: WatchState, report: CycleReport, failed: Mapping[str, str], ok: set[str]) -> None:
    """Down once per outage, recovered once: the outage flag per source lives in the state."""
    known = state.outages()
    for source, err in sorted(failed.items()):
        if source not in known:
            report.events.append(SourceDownEvent(source=source, error=err))
            state.mark_down(source, err)
    for source in sorted(ok):
        if source in known and source not in failed:
            report.events.append(SourceRecoveredEvent(source=source, down_since=known[source].since))
            state.mark_up(source)


# ================================================================= the loop and alerts


Alert = Callable[[Sequence[Any]], None]
"""Deliver a batch of events (raise a DigestguardError when it could not; they are queued and retried)."""

StartIncident = Callable[[MaliciousEvent], str]
"""Start a dry-run incident for a malicious match; return its incident id."""


def run_watch(
    inventory: Inventory,
    state: WatchState,
    *,
    cycles: int = 1,
    interval: float = 0.0,
    alert: Alert | None = None,
    start_incident: StartIncident | None = None,
    cycle: Callable[..., CycleReport] | None = None,
    on_report: Callable[[CycleReport], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    registries: RegistryPool | None = None,
    **cycle_options: Any,
) -> list[CycleReport]:
    """Run ``cycles`` cycles (0: until interrupted), ``interval`` seconds apart.

    ``cycle_options`` go to :func:`watch_cycle` (``packs``, ``advisories_dir``,
    ``include_repositories`` ...); without ``packs`` each cycle reads the packs
    again, so a pack added while a long watch runs is used from the next cycle.
    Registry client options (``max_attempts``, ``backoff``, ``max_backoff``,
    ``timeout``) go to the :class:`RegistryPool` made here when none is given.

    Per cycle: :func:`watch_cycle` (or ``cycle``, e.g. its Prefect task), then
    one dry-run incident per advisory matched this cycle via ``start_incident``
    (its id or error lands on the events), then ``alert`` with the cycle's
    events plus any still undelivered from earlier cycles. Returns the reports.
    """
    if cycles < 0:
        raise InputError("cycles", "must be 0 (run until interrupted) or more")
    if interval < 0:
        raise InputError("interval", "must not be negative")
    run = cycle or watch_cycle
    own_pool = registries is None
    pool = registries or RegistryPool(inventory, **{k: cycle_options.pop(k) for k in list(cycle_options)
                                                    if k in ("max_attempts", "backoff", "max_backoff", "timeout")})
    reports: list[CycleReport] = []
    try:
        n = 0
        while cycles == 0 or n < cycles:
            if n:
                sleep(interval)
            n += 1
            rep = run(inventory, state, registries=pool, **cycle_options)
            _start_incidents(rep, start_incident)
            _deliver(rep, state, alert)
            reports.append(rep)
            if on_report:
                on_report(rep)
    finally:
        if own_pool:
            pool.close()
    return reports


def _start_incidents(rep: CycleReport, start_incident: StartIncident | None) -> None:
    started: dict[str, tuple[str | None, str | None]] = {}
    for ev in rep.by_kind("malicious"):
        if ev.advisory not in started:
            if start_incident is None:
                started[ev.advisory] = (None, "no incident starter configured")
            else:
                try:
                    started[ev.advisory] = (start_incident(ev), None)
                except Exception as e:  # the alert must still go out, naming what failed
                    started[ev.advisory] = (None, f"{type(e).__name__}: {str(e)[:300]}")
        ev.incident, ev.incident_error = started[ev.advisory]
    rep.incidents = [i for i, _ in started.values() if i]


def _deliver(rep: CycleReport, state: WatchState, alert: Alert | None) -> None:
    if alert is None:  # no channel configured: the events are in the report (printed, logged), nothing to queue for
        rep.alerts_pending = state.count_pending()
        return
    pending = state.pending_alerts()
    if pending:
        try:
            alert([e for _, e in pending])
            state.drop_alerts([i for i, _ in pending])
            rep.alerts_sent += len(pending)
        except DigestguardError as e:
            rep.notes.append(f"alerts still undelivered: {_error_text(e)}")
    if rep.events:
        try:
            alert(rep.events)
            rep.alerts_sent += len(rep.events)
        except DigestguardError as e:
            state.queue_alerts(rep.events)
            rep.notes.append(f"alert delivery failed, {len(rep.events)} event(s) queued for the next cycle: {_error_text(e)}")
    rep.alerts_pending = state.count_pending()


# ---------------------------------------------------------------- Slack


_QUERY_VALUE = re.compile(r"([?&][^=&\s\"']+=)[^&\s\"']+")
_ICON = {"critical": ":rotating_light:", "high": ":warning:", "warning": ":large_orange_diamond:", "info": ":white_check_mark:"}
MAX_HITS_PER_MESSAGE = 20


def _safe_line(text: str | None) -> str:
    """A log line fit for a channel: query-string values blanked (tokens ride in URLs), length bounded."""
    return _QUERY_VALUE.sub(r"\1…", text or "")[:240]


def alert_messages(events: Sequence[Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """``[(text, blocks)]``: one message per image/source event, network hits grouped per file."""
    out: list[tuple[str, list[dict[str, Any]]]] = []
    hits: dict[str, list[NetworkHitEvent]] = {}
    for ev in events:
        if isinstance(ev, NetworkHitEvent):
            hits.setdefault(ev.path, []).append(ev)
            continue
        title = f"{_ICON[ev.severity]} *[{ev.severity.upper()}] watch: {ev.kind}*"
        lines = [_event_detail(ev)]
        text = f"[{ev.severity}] {ev.summary()}"
        out.append((text, [{"type": "section", "text": {"type": "mrkdwn", "text": title + "\n" + "\n".join(lines)}}]))
    for path, hs in hits.items():
        advs = sorted({a for h in hs for a in h.advisories})
        text = f"[critical] {len(hs)} network indicator hit(s) ({', '.join(advs)}) in {path}"
        body = "\n".join(f"line {h.line}: `{h.indicator}` ({h.indicator_kind}) {h.timestamp.isoformat() if h.timestamp else ''}\n"
                         f">{_safe_line(h.text)}" for h in hs[:MAX_HITS_PER_MESSAGE])
        more = f"\n…and {len(hs) - MAX_HITS_PER_MESSAGE} more" if len(hs) > MAX_HITS_PER_MESSAGE else ""
        out.append((text, [{"type": "section", "text": {"type": "mrkdwn", "text":
                    f"{_ICON['critical']} *[CRITICAL] watch: network-hit* in `{path}` ({', '.join(advs)})\n{body}{more}"[:2900]}}]))
    return out


def _event_detail(ev: Any) -> str:
    if isinstance(ev, DriftEvent):
        who = ev.pushed_by or ("unknown" if not ev.push_info_error else f"unknown ({ev.push_info_error})")
        return (f"`{ev.reference}` moved to a digest nobody listed as expected\n"
                f"before: `{ev.before}`\nafter:  `{ev.after}`\n"
                f"pushed: {ev.pushed_at.isoformat() if ev.pushed_at else 'unknown'} by {who}")
    if isinstance(ev, MaliciousEvent):
        inc = f"dry-run incident `{ev.incident}` started" if ev.incident else f"incident NOT started: {ev.incident_error}"
        via = "" if ev.matched == ev.digest else f" (platform child `{ev.matched}`)"
        return (f"`{ev.reference}` now names `{ev.digest}`{via}, listed as malicious by *{ev.advisory}* {ev.advisory_title}\n"
                f"before: `{ev.before or 'first seen'}`\n"
                f"pushed: {ev.pushed_at.isoformat() if ev.pushed_at else 'unknown'} by {ev.pushed_by or 'unknown'}\n{inc}\n"
                "Do not pull it; pin the previous digest.")
    if isinstance(ev, SignatureEvent):
        return f"`{ev.reference}@{ev.digest}` is *{ev.status}*: {ev.reason}"
    if isinstance(ev, SourceDownEvent):
        return f"`{ev.source}` cannot be checked: {ev.error}\n(said once; a recovery notice follows)"
    if isinstance(ev, SourceRecoveredEvent):
        return f"`{ev.source}` answers again" + (f" (down since {ev.down_since.isoformat()})" if ev.down_since else "")
    return ev.summary()


def slack_alerter(inventory: Inventory, **client_options: Any) -> tuple[Alert | None, str | None]:
    """``(alert, None)`` posting to ``inventory.slack``; ``(None, reason)`` when Slack is not configured or its token
    cannot be resolved (the watch still runs and keeps the alerts queued in its state)."""
    if inventory.slack is None:
        return None, "no slack section in the inventory"
    from integrations.slack import SlackClient

    cfg = inventory.slack
    try:
        client = SlackClient(resolve(cfg.token, "inventory slack.token") or "", base_url=cfg.api_url, **client_options)
    except DigestguardError as e:
        return None, str(e)

    def alert(events: Sequence[Any]) -> None:
        for text, blocks in alert_messages(events):
            client.post(cfg.channel, text, blocks=blocks)

    return alert, None
