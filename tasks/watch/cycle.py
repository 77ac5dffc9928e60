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
* :class:`ActionTagMovedEvent` a tag of a GitHub Action the watched repositories use points elsewhere than
  when first seen (``include_repositories``; the GitHub API through the inventory's github repository)
* :class:`NewDestinationEvent`  a CI runner group reached a destination it never reached (egress baselines,
  ``tasks/egress/``, when the inventory names ``runners``; state in the journal)
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

import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from digestguard.errors import DigestguardError, InputError, NotFound, RateLimited, Unavailable
from digestguard.inventory import Inventory, NetworkLogSource
from digestguard.reference import DOCKER_HUB, public_mirror
from digestguard.timeline import Observation
from digestguard.timeutil import now
from integrations.cosign import RegistrySignatureSource, SignatureCheck, verify_signature
from integrations.registry import Resolution, resolve_many
from tasks.provenance import is_release_tag, tag_moves
from tasks.watch.alerts import Alert
from tasks.watch.events import (
    ActionTagMovedEvent,
    AllowedChange,
    CycleReport,
    DriftEvent,
    MaliciousEvent,
    SignatureEvent,
    SourceDownEvent,
    SourceRecoveredEvent,
)
from tasks.watch.sources import (
    Indicators,
    Pack,
    PushInfo,
    PushInfoSource,
    RegistryPool,
    Target,
    compile_indicators,
    dockerhub_push_info,
    follow_log,
    github_tags_source,
    inventory_targets,
    load_packs,
    log_files,
    repository_targets,
)
from tasks.watch.state import WatchState
from tasks.watch.timeline import push_observation, record as record_sightings

# ================================================================= what a step finds


@dataclass
class Found:
    """What one step of a cycle found: additions to the report, and which sources answered or failed.

    Every step returns one and :func:`watch_cycle` merges them (no step writes into the report).
    ``counts`` are :class:`CycleReport` counters (``resolved``, ``unchanged``, ``log_bytes`` ...).
    """

    events: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    allowed: list[AllowedChange] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # source -> error, this cycle
    ok: set[str] = field(default_factory=set)
    counts: Counter[str] = field(default_factory=Counter)

    def merge(self, other: Found) -> Found:
        self.events += other.events
        self.notes += other.notes
        self.allowed += other.allowed
        self.failed.update(other.failed)
        self.ok |= other.ok
        self.counts.update(other.counts)
        return self


@dataclass(frozen=True)
class _Cycle:
    """What every step of one cycle reads."""

    inventory: Inventory
    state: WatchState
    packs: Sequence[Pack]
    pool: RegistryPool
    push_info: PushInfoSource | None
    concurrency: int
    check_children: bool


class _Seen(NamedTuple):
    """A watched tag whose digest needs a look this cycle: new, moved, or not yet verified."""

    target: Target
    digest: str
    before: str | None


@dataclass
class _Detail:
    """What was learnt about one :class:`_Seen` (malicious match, push facts, signature verdict)."""

    malicious: tuple[Pack, str] | None = None
    children_error: str | None = None
    push: PushInfo | None = None
    push_answered: bool = False
    push_error: str | None = None
    signature: SignatureCheck | None = None
    signature_error: str | None = None


@dataclass
class _Lookups:
    """Read-only tables for examining the new digests of one cycle (the signature cache fills as it goes)."""

    clients: dict[str, Any]
    malicious: dict[str, tuple[Pack, str]]
    child_hit: dict[str, tuple[Pack, str] | None]
    child_err: dict[str, str]
    push_info: PushInfoSource | None
    first_push: bool = False  # also ask when a first-seen Docker Hub tag was pushed (the start of its timeline)
    sig_cache: dict[tuple[str, str, str], SignatureCheck] = field(default_factory=dict)


def _registry_source(host: str) -> str:
    return f"registry {host}"


def _error_text(e: BaseException) -> str:
    return str(e)[:300]


# ================================================================= the cycle


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
    github: Any | None = None,
    inventory_path: str | None = None,
) -> CycleReport:
    """One watch cycle: resolve every watched tag, compare, verify, follow logs, check egress; return the events.

    ``packs`` (default: loaded from ``advisories_dir`` or the shipped packs) give
    the malicious digests and network indicators. ``registries`` is reused
    across cycles by :func:`run_watch`; one is made (and closed) here when
    omitted. ``push_info`` answers who/when for moved tags (default: the
    Docker Hub API for ``docker.io`` references). ``github`` (a client with
    ``list_tags(owner, repo)``; default: the inventory's first github repository's
    API) lists the tags of the actions the repositories use, with ``include_repositories``.

    The state is updated before returning: a digest is remembered once its
    events are in the report, so the same change is never alerted twice.
    Raises :class:`InputError` for a bad inventory ``images`` entry; every
    other failure becomes a source-down event (once per outage) or a note.
    """
    started = now()
    if packs is None:
        packs = load_packs(advisories_dir)
    own_pool = registries is None
    pool = registries or RegistryPool(inventory, concurrency=concurrency)
    own_push = None
    found = Found()
    if push_info is None:
        own_push, found = _default_push_info(inventory)
        push_info = own_push
    own_github = None
    try:
        actions: dict[str, list[str]] = {}
        targets, found_targets = _targets(inventory, include_repositories, actions)
        cycle = _Cycle(inventory, state, packs, pool, push_info, concurrency, check_children)
        found.merge(found_targets).merge(_check_images(cycle, targets)).merge(_follow_logs(cycle))
        if actions:
            if github is None:
                github, found_gh = _default_github(inventory)
                own_github = github
                found.merge(found_gh)
            if github is not None:
                found.merge(_action_tags(state, github, actions))
        found.merge(_check_egress(inventory, inventory_path))
        found.events += _outage_events(state, found)
    finally:
        if own_pool:
            pool.close()
        if own_push is not None:
            own_push.close()
        if own_github is not None:
            own_github.close()
    return CycleReport(started_at=started, finished_at=now(), references=len(targets), events=found.events,
                       notes=found.notes, allowed=found.allowed, **found.counts)


def _default_push_info(inventory: Inventory) -> tuple[PushInfoSource | None, Found]:
    """The Docker Hub push-info source, or none and its failure (a bad credential reference is a source down)."""
    try:
        return dockerhub_push_info(inventory), Found()
    except DigestguardError as e:
        return None, Found(failed={"push info docker hub": _error_text(e)})


def _default_github(inventory: Inventory) -> tuple[Any | None, Found]:
    """The GitHub client for action tags, or none and why (a note, or a source down for a bad credential)."""
    try:
        client, why = github_tags_source(inventory)
    except DigestguardError as e:
        return None, Found(failed={"github action tags": _error_text(e)})
    return client, Found(notes=[why] if why else [])


def _action_tags(state: WatchState, github: Any, actions: dict[str, list[str]]) -> Found:
    """Tags of each used action repository against the state's first sightings: a move is an event, once
    (the state keeps the first commit, so the move is reported on the cycle that sees it and not again)."""
    found = Found()
    reported = state.reported_action_moves()
    for repository in sorted(actions):
        owner, _, name = repository.partition("/")
        src = f"github {repository} tags"
        try:
            tags = github.list_tags(owner, name)
        except DigestguardError as e:
            found.failed[src] = _error_text(e)
            continue
        found.ok.add(src)
        found.counts["action_tags"] += len(tags)
        for tag, before, after in tag_moves(repository, tags, state):
            if (repository, tag, after) in reported:
                continue
            found.events.append(ActionTagMovedEvent(
                repository=repository, tag=tag, before=before, after=after, used_in=sorted(actions[repository]),
                severity="critical" if is_release_tag(tag) else "warning"))
            state.remember_action_move(repository, tag, after)
    return found


def _targets(inventory: Inventory, include_repositories: bool, actions: dict[str, list[str]] | None = None,
             ) -> tuple[list[Target], Found]:
    """The inventory's watched tags, plus (optionally) those found in its repositories (and the actions they use)."""
    targets, notes = inventory_targets(inventory)
    found = Found(notes=notes)
    if include_repositories:
        known = {t.key for t in targets}
        more, failures = repository_targets(inventory, actions)
        found.failed.update(failures)
        found.ok.update(f"repository {r.name}" for r in inventory.repositories if f"repository {r.name}" not in failures)
        targets += [t for t in more if t.key not in known]
    return targets, found


# ----------------------------------------------------------------- images


def _check_images(cycle: _Cycle, targets: list[Target]) -> Found:
    """Resolve every target, then judge what is new or moved: malicious, drift, allowed, signature verdicts.

    Remembers the new digests and verdicts in the state once they are judged.
    """
    if not targets:
        return Found()
    clients, found = _clients(cycle.pool, sorted({t.ref.registry for t in targets}))
    live = [t for t in targets if t.ref.registry in clients]
    results = resolve_many([t.ref for t in live], concurrency=cycle.concurrency, clients=clients)
    seen_at = now()
    resolved, found_resolved = _by_host(live, results)
    found.merge(found_resolved).counts["resolved"] += len(resolved)

    sigs = cycle.state.signatures()
    new, changed, found_compared = _compare(resolved, cycle.state.digests(), sigs)
    found.merge(found_compared)
    malicious, children_matter = _malicious_digests(cycle.packs)
    child_hit, child_err = {}, {}
    if cycle.check_children and children_matter:
        child_hit, child_err = _child_matches(clients, new, malicious)
    first_push = cycle.push_info is not None and hasattr(cycle.push_info, "push_time") and \
        any(r.kind == "dockerhub" for r in cycle.inventory.registries)
    look = _Lookups(clients, malicious, child_hit, child_err, cycle.push_info, first_push)
    details = _examine_all(look, new)

    verdicts: list[tuple[str, str, str, str]] = []
    for seen, detail in zip(new, details, strict=True):
        judged, verdict = _judge(seen, detail, sigs)
        found.merge(judged)
        if verdict:
            verdicts.append(verdict)
    found.merge(_push_health(cycle.push_info, details))
    if changed:
        cycle.state.record_digests(changed)
    if verdicts:
        cycle.state.record_signatures(verdicts)
    return found.merge(_record_timeline(cycle, resolved, seen_at, new, details))


def _record_timeline(cycle: _Cycle, resolved: list[tuple[Target, str]], seen_at: datetime, new: list[_Seen],
                     details: list[_Detail]) -> Found:
    """This cycle's sightings (and Docker Hub push times of moved tags) into the tag timelines in the journal.

    A push time Hub gives for another digest than the one resolved (a mirror that lags) is not used.
    The journal being unreachable is a source down: the cycle's alerts still go out.
    """
    if not resolved:
        return Found()
    obs = [Observation(reference=t.key, digest=d, source="watch", detail=_registry_source(t.ref.registry),
                       first_at=seen_at, last_at=seen_at) for t, d in resolved]
    found = Found()
    for seen, d in zip(new, details, strict=True):
        push = d.push
        if push is None or push.pushed_at is None or cycle.push_info is None:
            continue
        if push.digest and push.digest != seen.digest:
            found.notes.append(f"{seen.target.key}: {cycle.push_info.name} names {push.digest[:19]}, the registry "
                               f"{seen.digest[:19]}: its push time is not used for the timeline")
            continue
        p = push_observation(seen.target.key, seen.digest, push.pushed_at, seen_at, cycle.push_info.name)
        if p is not None:
            obs.append(p)
    src = "timeline journal"
    try:
        record_sightings(cycle.state.journal(), obs)
    except DigestguardError as e:
        found.failed[src] = _error_text(e)
        return found
    except Exception as e:  # noqa: BLE001 - sqlite3/psycopg errors below the journal: the watch goes on
        found.failed[src] = f"{type(e).__name__}: {_error_text(e)}"
        return found
    found.ok.add(src)
    return found


def _clients(pool: RegistryPool, hosts: list[str]) -> tuple[dict[str, Any], Found]:
    """A registry client per host; a host whose client cannot be made (credentials) is down."""
    clients: dict[str, Any] = {}
    found = Found()
    for h in hosts:
        try:
            clients[h] = pool.client(h)
        except DigestguardError as e:
            found.failed[_registry_source(h)] = _error_text(e)
    return clients, found


def _by_host(live: list[Target], results: list[Resolution]) -> tuple[list[tuple[Target, str]], Found]:
    """``[(target, digest)]`` that resolved, and each host's and image's health.

    A host where nothing resolved and something was unreachable is down as a whole (one alert, not one per tag).
    """
    per_host: dict[str, list[tuple[Target, Resolution]]] = {}
    for t, r in zip(live, results, strict=True):
        per_host.setdefault(t.ref.registry, []).append((t, r))
    resolved: list[tuple[Target, str]] = []
    found = Found()
    for host, rows in per_host.items():
        unreachable = [r.error for _, r in rows if isinstance(r.error, (Unavailable, RateLimited))]
        if unreachable and not any(r.ok for _, r in rows):
            found.failed[_registry_source(host)] = _error_text(unreachable[0])
            continue
        found.ok.add(_registry_source(host))
        for t, r in rows:
            src = f"image {t.key}"
            if r.ok:
                found.ok.add(src)
                resolved.append((t, r.digest))
            elif isinstance(r.error, NotFound):
                found.failed[src] = f"tag not found: {_error_text(r.error)}"
            else:
                found.failed[src] = _error_text(r.error)
    return resolved, found


def _compare(resolved: list[tuple[Target, str]], seen: dict[str, str],
             sigs: dict[str, tuple[str, str]]) -> tuple[list[_Seen], dict[str, str], Found]:
    """``(to examine, {reference: new digest}, counts)``: moved and first-seen tags, and unchanged ones whose
    signature has not verified yet (re-checked until it does; alerts only when the verdict changes)."""
    new: list[_Seen] = []
    changed: dict[str, str] = {}
    found = Found()
    for t, digest in resolved:
        before = seen.get(t.key)
        if before == digest:
            found.counts["unchanged"] += 1
            sig = sigs.get(t.key)
            if t.public_keys and (sig is None or sig[0] != digest or sig[1] != "signed-valid"):
                new.append(_Seen(t, digest, before))
            continue
        changed[t.key] = digest
        new.append(_Seen(t, digest, before))
        if before is None:
            found.counts["first_seen"] += 1
    return new, changed, found


def _malicious_digests(packs: Sequence[Pack]) -> tuple[dict[str, tuple[Pack, str]], bool]:
    """``({digest: (pack, digest)}, any listed digest is a platform manifest)`` over every pack."""
    malicious: dict[str, tuple[Pack, str]] = {}
    children_matter = False
    for p in packs:
        for img in p.advisory.images:
            for m in img.malicious:
                malicious.setdefault(m.digest, (p, m.digest))
                children_matter = children_matter or m.kind == "manifest"
    return malicious, children_matter


def _child_matches(clients: dict[str, Any], new: list[_Seen], malicious: dict[str, tuple[Pack, str]]
                   ) -> tuple[dict[str, tuple[Pack, str] | None], dict[str, str]]:
    """``({index digest: match among its children}, {index digest: read error})``.

    Children of an index are the same wherever its digest is tagged: each new digest's index is read once.
    """
    todo = {s.digest: s.target for s in new if s.before != s.digest and s.digest not in malicious}

    def children(item: tuple[str, Target]) -> tuple[str, tuple[Pack, str] | None, str | None]:
        digest, t = item
        try:
            for child in clients[t.ref.registry].get_index_children(t.ref.repository, digest):
                if child.digest in malicious:
                    return digest, malicious[child.digest], None
        except DigestguardError as e:
            return digest, None, _error_text(e)
        return digest, None, None

    hits: dict[str, tuple[Pack, str] | None] = {}
    errors: dict[str, str] = {}
    for digest, hit, err in _parallel(children, list(todo.items())):
        hits[digest] = hit
        if err:
            errors[digest] = err
    return hits, errors


def _examine_all(look: _Lookups, new: list[_Seen]) -> list[_Detail]:
    """A :class:`_Detail` per item, in order; those needing a request (push facts, signatures) in parallel."""
    heavy = [i for i, s in enumerate(new) if s.target.public_keys or (s.before is not None and look.push_info is not None)
             or _asks_first_push(look, s)]
    details: dict[int, _Detail] = dict(zip(heavy, _parallel(lambda i: _examine(look, new[i]), heavy), strict=True))
    return [details[i] if i in details else _examine(look, s) for i, s in enumerate(new)]


def _asks_first_push(look: _Lookups, seen: _Seen) -> bool:
    """A first-seen Docker Hub tag, with a ``dockerhub`` inventory entry: its push time starts its timeline."""
    return look.first_push and seen.before is None and seen.target.ref.registry == DOCKER_HUB


def _examine(look: _Lookups, seen: _Seen) -> _Detail:
    """Malicious match and push facts for a moved tag (push time only for a first-seen Hub tag); the signature
    verdict when the image pins a key."""
    t, digest, before = seen
    d = _Detail()
    if _asks_first_push(look, seen):
        try:
            d.push = look.push_info.push_time(t.ref)  # type: ignore[union-attr]
            d.push_answered = True
        except DigestguardError as e:
            d.push_error = _error_text(e)
    if before != digest:
        d.malicious = look.malicious.get(digest) or look.child_hit.get(digest)
        d.children_error = look.child_err.get(digest)
        if before is not None and (d.malicious or digest not in t.allow) and look.push_info is not None:
            try:
                d.push = look.push_info.push_info(t.ref, digest)
                d.push_answered = True
            except DigestguardError as e:
                d.push_error = _error_text(e)
    if t.public_keys:
        key = (t.ref.registry, t.ref.repository, digest)
        try:
            if key not in look.sig_cache:
                source = RegistrySignatureSource(look.clients[t.ref.registry])
                look.sig_cache[key] = verify_signature(source, t.ref.repository, digest, list(t.public_keys))
            d.signature = look.sig_cache[key]
        except DigestguardError as e:
            d.signature_error = _error_text(e)
    return d


def _judge(seen: _Seen, d: _Detail, sigs: dict[str, tuple[str, str]]
           ) -> tuple[Found, tuple[str, str, str, str] | None]:
    """The events for one examined tag, and its signature verdict row for the state (``None``: no verdict)."""
    t, digest, before = seen
    found = Found()
    if d.children_error:
        found.notes.append(f"{t.key}: could not read the index to check its children: {d.children_error}")
    push = d.push
    if before != digest and d.malicious is not None:
        pack, matched = d.malicious
        found.events.append(MaliciousEvent(
            reference=t.key, digest=digest, matched=matched, before=before, advisory=pack.advisory.id,
            advisory_title=pack.advisory.title, advisory_source=pack.source,
            pushed_at=push.pushed_at if push else None, pushed_by=push.pushed_by if push else None,
            mirror=pm.host if (pm := public_mirror(t.ref.registry)) else None))
    elif before != digest and before is not None and digest in t.allow:
        found.allowed.append(AllowedChange(reference=t.key, before=before, after=digest))
    elif before != digest and before is not None:
        found.events.append(DriftEvent(
            reference=t.key, before=before, after=digest, pushed_at=push.pushed_at if push else None,
            pushed_by=push.pushed_by if push else None, push_info_error=d.push_error))
    if not t.public_keys:
        return found, None
    sig_src = f"signature {t.key}"
    check = d.signature
    if check is None:
        found.failed[sig_src] = d.signature_error or "signature not checked"
        return found, None
    found.counts["signatures_checked"] += 1
    found.ok.add(sig_src)
    status = check.status.value
    if status != "signed-valid" and sigs.get(t.key) != (digest, status):
        found.events.append(SignatureEvent(reference=t.key, digest=digest, status=status, reason=check.reason))
    return found, (t.key, digest, status, check.reason)


def _push_health(push_info: PushInfoSource | None, details: list[_Detail]) -> Found:
    """The push-info source is down when any question failed (the last error is kept), up when one was answered."""
    if push_info is None:
        return Found()
    src = f"push info {push_info.name}"
    errors = [d.push_error for d in details if d.push_error]
    if errors:
        return Found(failed={src: errors[-1]})
    return Found(ok={src}) if any(d.push_answered for d in details) else Found()


def _parallel(fn: Callable[[Any], Any], items: list[Any], workers: int = 16) -> list[Any]:
    """``map`` over a bounded thread pool (registry reads are I/O), in input order."""
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="watch") as ex:
        return list(ex.map(fn, items))


# ----------------------------------------------------------------- network logs and outages


def _follow_logs(cycle: _Cycle) -> Found:
    """New lines of every file-kind network log, swept for every pack's indicators."""
    logs = cycle.inventory.network_logs
    found = Found(notes=[f"network log {s.name}: kind {s.kind} is not followed by the watch (use `digestguard sweep`)"
                         for s in logs if s.kind != "file"])
    files = [s for s in logs if s.kind == "file"]
    if not files:
        return found
    indicators = compile_indicators(cycle.packs)
    if indicators is None:
        found.notes.append("no advisory has network indicators: network logs not followed")
        return found
    for src in files:
        found.merge(_follow_source(cycle, src, indicators))
    return found


def _follow_source(cycle: _Cycle, src: NetworkLogSource, indicators: Indicators) -> Found:
    """One source's files from where the last cycle stopped; a read failure is the source down (hits so far kept)."""
    name = f"network log {src.name}"
    found = Found()
    try:
        for p in log_files(cycle.inventory, src):
            key = str(p)
            hits, pos, nbytes, restarted = follow_log(p, cycle.state.log_position(key), indicators, src.format,
                                                      src.name or key)
            found.events.extend(hits)
            found.counts.update(log_files=1, log_bytes=nbytes)
            if restarted:
                found.notes.append(f"{key}: truncated or rotated; read again from the start")
            cycle.state.record_log_position(key, pos)
    except DigestguardError as e:
        found.failed[name] = _error_text(e)
        return found
    except OSError as e:
        found.failed[name] = f"{getattr(e, 'filename', '')}: {e.strerror or e}"
        return found
    found.ok.add(name)
    return found


def _check_egress(inventory: Inventory, inventory_path: str | None) -> Found:
    """The egress baseline (``tasks/egress/``): new destinations of CI runner groups, state in the journal.

    A network or CI source it could not read is a source down (once per outage), like every other source.
    """
    if not inventory.runners:
        return Found()
    from tasks.egress.check import check_egress, journal_for  # deferred: only inventories with runners pay for it

    name = "egress baseline journal"
    try:
        journal = journal_for(inventory)
    except DigestguardError as e:
        return Found(failed={name: _error_text(e)})
    try:
        rep = check_egress(inventory, journal, inventory_path=inventory_path)
    except DigestguardError as e:
        return Found(failed={name: _error_text(e)})
    finally:
        journal.close()
    found = Found(events=list(rep.events), ok={name}, notes=list(rep.notes))
    for c in rep.coverage:
        src = f"egress {c.source}"
        if c.state == "checked":
            found.ok.add(src)
        else:
            found.failed[src] = f"{c.state}: {c.reason or 'not read'}"
    found.notes += [f"egress: runner group {g} learning until {u}" for g, u in sorted(rep.learning.items())]
    found.notes.append(f"egress: {rep.lines} line(s), {rep.malformed} malformed, {rep.attributed} connection(s) from "
                       f"runners, {rep.learned} destination(s) learnt, {len(rep.suppressed)} suppressed, "
                       f"{len(rep.events)} new")
    return found


def _outage_events(state: WatchState, found: Found) -> list[Any]:
    """Down once per outage, recovered once: the outage flag per source lives in the state."""
    known = state.outages()
    events: list[Any] = []
    for source, err in sorted(found.failed.items()):
        if source not in known:
            events.append(SourceDownEvent(source=source, error=err))
            state.mark_down(source, err)
    for source in sorted(found.ok):
        if source in known and source not in found.failed:
            events.append(SourceRecoveredEvent(source=source, down_since=known[source].since))
            state.mark_up(source)
    return events


# ================================================================= the loop and alerts


StartIncident = Callable[[MaliciousEvent], str]
"""Start a dry-run incident for a malicious match; return its incident id."""

_POOL_OPTIONS = ("max_retries", "backoff", "max_backoff", "timeout")


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
    Registry client options (``max_retries``, ``backoff``, ``max_backoff``,
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
    pool_options = {k: cycle_options.pop(k) for k in list(cycle_options) if k in _POOL_OPTIONS}
    pool = registries or RegistryPool(inventory, **pool_options)
    reports: list[CycleReport] = []
    try:
        n = 0
        while cycles == 0 or n < cycles:
            if n:
                sleep(interval)
            n += 1
            rep = run(inventory, state, registries=pool, **cycle_options)
            rep = _deliver(_start_incidents(rep, start_incident), state, alert)
            reports.append(rep)
            if on_report:
                on_report(rep)
    finally:
        if own_pool:
            pool.close()
    return reports


def _start_incidents(rep: CycleReport, start_incident: StartIncident | None) -> CycleReport:
    """The report with one dry-run incident started per advisory matched (its id or error on each match)."""
    started: dict[str, tuple[str | None, str | None]] = {}
    for ev in rep.by_kind("malicious"):
        if ev.advisory not in started:
            started[ev.advisory] = _start_one(ev, start_incident)
    for ev in rep.by_kind("malicious"):
        ev.incident, ev.incident_error = started[ev.advisory]
    return rep.model_copy(update={"incidents": [i for i, _ in started.values() if i]})


def _start_one(ev: MaliciousEvent, start_incident: StartIncident | None) -> tuple[str | None, str | None]:
    """``(incident id, None)`` or ``(None, why not)``."""
    if start_incident is None:
        return None, "no incident starter configured"
    try:
        return start_incident(ev), None
    except Exception as e:  # the alert must still go out, naming what failed
        return None, f"{type(e).__name__}: {str(e)[:300]}"


def _deliver(rep: CycleReport, state: WatchState, alert: Alert | None) -> CycleReport:
    """The report after its alerts (and those still queued) went out; what could not go is queued in the state."""
    if alert is None:  # no channel configured: the events are in the report (printed, logged), nothing to queue for
        return rep.model_copy(update={"alerts_pending": state.count_pending()})
    sent = 0
    notes: list[str] = []
    pending = state.pending_alerts()
    if pending:
        try:
            alert([e for _, e in pending])
            state.drop_alerts([i for i, _ in pending])
            sent += len(pending)
        except DigestguardError as e:
            notes.append(f"alerts still undelivered: {_error_text(e)}")
    if rep.events:
        try:
            alert(rep.events)
            sent += len(rep.events)
        except DigestguardError as e:
            state.queue_alerts(rep.events)
            notes.append(f"alert delivery failed, {len(rep.events)} event(s) queued for the next cycle: {_error_text(e)}")
    return rep.model_copy(update={"alerts_sent": rep.alerts_sent + sent, "notes": rep.notes + notes,
                                  "alerts_pending": state.count_pending()})
