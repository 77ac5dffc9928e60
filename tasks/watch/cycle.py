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

import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from digestguard.errors import DigestguardError, InputError, NotFound, RateLimited, Unavailable
from digestguard.inventory import Inventory
from tasks.watch.alerts import Alert, alert_messages, slack_alerter
from tasks.watch.events import (
    AllowedChange,
    CycleReport,
    DriftEvent,
    MaliciousEvent,
    NetworkHitEvent,
    SignatureEvent,
    SourceDownEvent,
    SourceRecoveredEvent,
    WatchEvent,
    utc_now,
)
from tasks.watch.sources import (
    DockerHubPushInfo,
    Pack,
    PushInfo,
    PushInfoSource,
    RegistryPool,
    Target,
    compile_indicators,
    dockerhub_push_info,
    follow_log,
    inventory_targets,
    load_packs,
    log_files,
    registry_entry_for,
    repository_targets,
)
from tasks.watch.state import DEFAULT_STATE, LogPosition, Outage, WatchState

__all__ = [
    "DEFAULT_STATE", "Alert", "AllowedChange", "CycleReport", "DockerHubPushInfo", "DriftEvent", "LogPosition",
    "MaliciousEvent", "NetworkHitEvent", "Outage", "Pack", "PushInfo", "PushInfoSource", "RegistryPool",
    "SignatureEvent", "SourceDownEvent", "SourceRecoveredEvent", "StartIncident", "Target", "WatchEvent",
    "WatchState", "alert_messages", "dockerhub_push_info", "follow_log", "inventory_targets", "load_packs",
    "registry_entry_for", "repository_targets", "run_watch", "slack_alerter", "watch_cycle",
]


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
    report = CycleReport(started_at=utc_now())
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
    report.finished_at = utc_now()
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
    ind = compile_indicators(packs)
    if ind is None:
        report.notes.append("no advisory has network indicators: network logs not followed")
        return
    for src in files:
        name = f"network log {src.name}"
        try:
            paths = log_files(inventory, src)
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
    pool = registries or RegistryPool(inventory, **{k: cycle_options.pop(k) for k in list(cycle_options)
                                                    if k in ("max_retries", "backoff", "max_backoff", "timeout")})
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
