"""One egress check: read what the network logs gained, attribute it, learn, and flag first connections to new places.

The data's way through::

    inventory.network_logs (files: offsets; CloudWatch: last event time)
        -> connections (time, source, host)          tasks/egress/connections.py
        -> runner group (host / CIDR), job, workflow  tasks/egress/attribution.py
        -> per (group, registrable domain): first/last time, count, first connection
        -> learned | allowed | suppressed | NEW -> NewDestinationEvent (+ draft advisory, dry-run command)
        -> the journal, in one transaction            tasks/egress/baseline.py

A group learns for ``learning_days`` from its first connection ever seen;
every destination it reaches in that time is normal. After that, the first
connection to a registrable domain the group never reached is an alert,
raised once. ``mode="learn"`` (``digestguard egress learn``) takes every
destination read as normal, whatever the learning period says (to seed a
baseline from history).

The order of files in one check does not matter: decisions are taken on the
earliest connection per (group, destination) over everything read, so the
alert names the FIRST connection even when a later file was read first.

Coverage: every network source is ``checked``, ``partial`` (read errors after
some lines) or ``unchecked`` (missing, unreadable); CI sources likewise (jobs
give the alert its context). ``verdict`` is ``found`` (a new destination),
``clean`` or ``incomplete`` (exit codes 1, 0, 3).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pydantic import Field

from digestguard._model import Model
from digestguard.cilog import JobLog
from digestguard.egress import EgressRule, RunnerGroup
from digestguard.errors import DigestguardError
from digestguard.findings import SourceCoverage, overall_verdict
from digestguard.inventory import Inventory, NetworkLogSource
from digestguard.journal import Holder, Journal, lease_wait_default
from digestguard.redact import redact_data
from tasks.egress.attribution import Attributor, JobIndex, Origin
from tasks.egress.baseline import KNOWN_STATES, BaselineStore, Changes, Snapshot
from tasks.egress.connections import FileRead, Position, read_messages, read_new
from tasks.watch.events import NewDestinationEvent

DAY = 86400.0


class EgressReport(Model):
    """What one check read, learnt and flagged."""

    mode: str = "check"
    started_at: datetime
    finished_at: datetime | None = None
    files: list[FileRead] = Field(default_factory=list)
    coverage: list[SourceCoverage] = Field(default_factory=list)
    events: list[NewDestinationEvent] = Field(default_factory=list)
    connections: int = 0
    attributed: int = 0
    unattributed: int = 0
    learned: int = 0
    allowed: int = 0
    suppressed: list[str] = Field(default_factory=list, description="'group destination: reason' muted this check")
    learning: dict[str, str] = Field(default_factory=dict, description="group -> learning until (ISO), groups still learning")
    notes: list[str] = Field(default_factory=list)

    @property
    def lines(self) -> int:
        return sum(f.lines for f in self.files)

    @property
    def malformed(self) -> int:
        return sum(f.malformed for f in self.files)

    @property
    def verdict(self) -> str:
        return overall_verdict(bool(self.events), self.coverage)

    def to_json_dict(self) -> dict[str, Any]:
        d = self.model_dump(mode="json")
        d.update(verdict=self.verdict, lines=self.lines, malformed=self.malformed)
        return d


@dataclass
class _First:
    """The earliest connection of one (group, destination) in this check."""

    t: float
    host: str
    client: str
    origin: Origin
    source: str
    line: int


_NONE = Origin("", None, "none")


class _Batch:
    """Per (group, destination): the first connection, last time, count (per line: one dict lookup and a compare)."""

    def __init__(self, attributor: Attributor, jobs: JobIndex) -> None:
        self.attributor = attributor
        self.jobs = jobs
        # (group, dest) -> [first t, last t, count, host, client, origin, source, line]
        self.pairs: dict[tuple[str, str], list[Any]] = {}
        self.workflows: dict[tuple[str, str, str], list[float]] = {}  # (group, wf, dest) -> [first, last, count]
        self.attributed = 0
        self.unattributed = 0
        self.source = ""
        self._origins: dict[str, Origin] = {}
        self._with_jobs = set(jobs.by_group)

    def observe(self, t: float, client: str, host: str, dest: str, line: int) -> None:
        origin = self._origins.get(client)
        if origin is None:
            origin = self.attributor.origin(client) or _NONE
            self._origins[client] = origin
        if origin is _NONE:
            self.unattributed += 1
            return
        self.attributed += 1
        key = (origin.group, dest)
        rec = self.pairs.get(key)
        if rec is None:
            self.pairs[key] = [t, t, 1, host, client, origin, self.source, line]
        else:
            if t < rec[0]:
                rec[0], rec[3], rec[4], rec[5], rec[6], rec[7] = t, host, client, origin, self.source, line
            elif t > rec[1]:
                rec[1] = t
            rec[2] += 1
        if origin.group in self._with_jobs:
            wf = self.jobs.workflow(origin, t)
            if wf:
                wk = (origin.group, wf, key[1])
                w = self.workflows.get(wk)
                if w is None:
                    self.workflows[wk] = [t, t, 1]
                else:
                    w[0], w[1], w[2] = min(w[0], t), max(w[1], t), w[2] + 1

    def firsts(self) -> dict[tuple[str, str], tuple[_First, float, int]]:
        return {k: (_First(r[0], r[3], r[4], r[5], r[6], r[7]), r[1], r[2]) for k, r in self.pairs.items()}

    def groups(self) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for (g, _), r in self.pairs.items():
            cur = out.get(g)
            if cur is None:
                out[g] = [r[0], r[1]]
            else:
                cur[0], cur[1] = min(cur[0], r[0]), max(cur[1], r[1])
        return out

    def dest_first(self) -> dict[str, tuple[float, str]]:
        out: dict[str, tuple[float, str]] = {}
        for (g, d), r in self.pairs.items():
            if d not in out or r[0] < out[d][0]:
                out[d] = (r[0], g)
        return out


# ================================================================= inputs


def _sources(inventory: Inventory) -> list[NetworkLogSource]:
    wanted = set(inventory.egress.sources)
    return [s for s in inventory.network_logs if not wanted or s.name in wanted]


def _files_of(inventory: Inventory, src: NetworkLogSource) -> list[Path]:
    p = inventory.resolve_path(src.path or "")
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
    if not p.exists():
        raise FileNotFoundError(f"{p}: network log does not exist")
    return [p]


def _read_sources(inventory: Inventory, snap: Snapshot, batch: _Batch, report: EgressReport,
                  offsets: dict[str, Position], cloudwatch_client: Any = None) -> None:
    for src in _sources(inventory):
        name = f"network log {src.name}"
        if src.kind == "cloudwatch":
            _read_cloudwatch(src, snap, batch, report, offsets, cloudwatch_client)
            continue
        try:
            files = _files_of(inventory, src)
        except OSError as e:
            report.coverage.append(SourceCoverage(source=name, kind="network-log", state="unchecked", reason=str(e)[:300]))
            continue
        errors: list[str] = []
        read_any = False
        for f in files:
            key = str(f)
            batch.source = key
            try:
                res = read_new(f, snap.offsets.get(key), batch.observe, src.format)
            except (OSError, DigestguardError) as e:
                errors.append(f"{key}: {getattr(e, 'strerror', None) or e}")
                continue
            read_any = True
            offsets[key] = res.position
            report.files.append(res)
            errors += [f"{key}: {e}" for e in res.errors]
            if res.restarted:
                report.notes.append(f"{key}: truncated or rotated; read again from the start")
        state = "checked" if not errors else ("partial" if read_any else "unchecked")
        report.coverage.append(SourceCoverage(source=name, kind="network-log", state=state,
                                              reason="; ".join(errors)[:300] or None))


def _read_cloudwatch(src: NetworkLogSource, snap: Snapshot, batch: _Batch, report: EgressReport,
                     offsets: dict[str, Position], client: Any) -> None:
    """A CloudWatch log group from just after the last event time read (kept as the 'offset', in ms)."""
    from integrations import cloudwatch  # deferred: boto3 only when a log group is configured

    name = f"network log {src.name}"
    key = f"cloudwatch://{src.log_group}"
    pos = snap.offsets.get(key) or Position()
    start = datetime.fromtimestamp(pos.offset / 1000 + 0.001, tz=timezone.utc) if pos.offset else None
    stats = FileRead(path=key, format="cloudwatch")
    last = [pos.offset]

    def events():
        for ev in cloudwatch.iter_log_events(src.log_group or "", start=start, endpoint_url=src.endpoint_url,
                                             region=src.region, client=client):
            ms = int(ev.timestamp.timestamp() * 1000)
            last[0] = max(last[0], ms)
            yield ms / 1000, ev.message

    batch.source = key
    try:
        read_messages(events(), batch.observe, stats)
    except DigestguardError as e:
        stats.errors.append(str(e)[:300])
    offsets[key] = Position(last[0], pos.lines + stats.lines, None)
    report.files.append(stats)
    state = "checked" if not stats.errors else ("partial" if stats.lines else "unchecked")
    report.coverage.append(SourceCoverage(source=name, kind="network-log", state=state,
                                          reason="; ".join(stats.errors)[:300] or None))


@dataclass
class _Span:
    start: datetime
    end: datetime | None


def read_jobs(inventory: Inventory, since: datetime | None, until: datetime | None) -> tuple[list[JobLog], list[SourceCoverage]]:
    """Every CI source's jobs (folders whole; GitHub/GitLab runs listed from ``since`` to ``until`` or now)."""
    if not inventory.ci_logs:
        return [], []
    from tasks.ci_logs import read_one_source  # deferred: forge clients only when CI sources exist

    jobs: list[JobLog] = []
    coverage: list[SourceCoverage] = []
    span = _Span(since or datetime.now(timezone.utc) - timedelta(days=1), until)
    for entry in inventory.ci_logs:
        res = read_one_source(entry, inventory, None, span)  # type: ignore[arg-type]  # a span is given: no advisory needed
        jobs += res.jobs
        coverage += list(res.coverage.values())
    return jobs, coverage


# ================================================================= deciding


def _rule(rules: list[EgressRule], group: str, host: str, dest: str, at: datetime) -> EgressRule | None:
    return next((r for r in rules if r.applies(group, host, at) or r.applies(group, dest, at)), None)


DraftWriter = Callable[[NewDestinationEvent, Inventory], NewDestinationEvent]


def check_egress(
    inventory: Inventory,
    journal: Journal,
    *,
    mode: str = "check",
    jobs: list[JobLog] | None = None,
    draft: DraftWriter | None = None,
    inventory_path: str | None = None,
    cloudwatch_client: Any = None,
) -> EgressReport:
    """Read what the inventory's network logs gained since the last check; learn; flag new destinations.

    ``jobs`` overrides reading the inventory's CI sources (tests, the drill). ``draft`` turns each alert into a
    draft advisory and its dry-run command (default: :func:`tasks.egress.draft.write_draft`). Raises
    :class:`DigestguardError` only for a journal that cannot be used; a log that cannot be read is coverage.
    """
    if mode not in ("check", "learn"):
        raise ValueError(f"mode must be check or learn, not {mode!r}")
    report = EgressReport(mode=mode, started_at=datetime.now(timezone.utc))
    if not inventory.runners:
        report.notes.append("no runners in the inventory: nothing to attribute egress to")
        report.finished_at = datetime.now(timezone.utc)
        return report
    # one check at a time per journal: a second one (another watch, a CLI call) waits, then reads what the first
    # learnt, so a destination is never flagged twice
    with journal.lease(LEASE, Holder.here(), ttl=60, wait=lease_wait_default(300.0)):
        return _check_locked(inventory, journal, report, mode, jobs, draft, inventory_path, cloudwatch_client)


LEASE = "egress:baseline"


def _check_locked(inventory: Inventory, journal: Journal, report: EgressReport, mode: str, jobs: list[JobLog] | None,
                  draft: DraftWriter | None, inventory_path: str | None, cloudwatch_client: Any) -> EgressReport:
    store = BaselineStore(journal)
    snap = store.load()
    ci_cov: list[SourceCoverage] = []
    if jobs is None:
        jobs, ci_cov = read_jobs(inventory, _earliest(snap), None)
    index = JobIndex(jobs, inventory.runners)
    batch = _Batch(Attributor(inventory.runners), index)
    offsets: dict[str, Position] = {}
    _read_sources(inventory, snap, batch, report, offsets, cloudwatch_client)
    report.coverage += ci_cov
    report.connections = batch.attributed + batch.unattributed
    report.attributed, report.unattributed = batch.attributed, batch.unattributed
    changes = _decide(inventory, snap, batch, index, report, mode)
    changes.offsets = offsets
    if draft is None:
        from tasks.egress.draft import write_draft

        def draft(ev: NewDestinationEvent, inv: Inventory) -> NewDestinationEvent:
            return write_draft(ev, inv, inventory_path)
    for i, ev in enumerate(report.events):
        try:
            report.events[i] = draft(ev, inventory)
        except (OSError, DigestguardError) as e:
            ev.draft_error = f"draft advisory not written: {str(e)[:200]}"
    changes.alerts = [(e.group, e.destination, e.first_at.timestamp(), redact_data(e.model_dump(mode="json")))
                      for e in report.events]
    store.save(changes)
    report.finished_at = datetime.now(timezone.utc)
    return report


def _earliest(snap: Snapshot) -> datetime | None:
    """From when GitHub/GitLab runs are listed: 6 h before the last check (a job may have started before its
    connections reached the log), or a day back on the first check. Folder sources are read whole."""
    if snap.last_check is None:
        return datetime.now(timezone.utc) - timedelta(days=1)
    return datetime.fromtimestamp(snap.last_check, tz=timezone.utc) - timedelta(hours=6)


def _decide(inventory: Inventory, snap: Snapshot, batch: _Batch, index: JobIndex, report: EgressReport,
            mode: str) -> Changes:
    settings = inventory.egress
    groups: dict[str, RunnerGroup] = {g.name: g for g in inventory.runners}
    ch = Changes()
    first_seen: dict[str, float] = {}
    pairs = batch.firsts()
    for g, (lo, hi) in batch.groups().items():
        first_seen[g] = min(lo, snap.groups.get(g, lo))
        ch.groups[g] = (first_seen[g], hi)
    for g in groups:
        if g in snap.groups:
            first_seen.setdefault(g, snap.groups[g])
    for dest, (t, g) in batch.dest_first().items():
        if dest not in snap.destinations or t < snap.destinations[dest][0]:
            ch.destinations[dest] = (t, g)
    batch_groups: dict[str, set[str]] = {}
    for (g, dest) in pairs:
        batch_groups.setdefault(dest, set()).add(g)
    now = datetime.now(timezone.utc).timestamp()
    for g, start in first_seen.items():
        learn = (groups[g].learning_days or settings.learning_days) * DAY if g in groups else settings.learning_days * DAY
        if start + learn > now and mode == "check":
            report.learning[g] = datetime.fromtimestamp(start + learn, tz=timezone.utc).isoformat()

    for (g, dest), (first, last, count) in sorted(pairs.items(), key=lambda kv: kv[1][0].t):
        scope = f"group:{g}"
        state = snap.known.get((scope, dest))
        if state in KNOWN_STATES:
            ch.known[(scope, dest)] = (state, first.t, last, count)
            continue
        group = groups[g]
        learn_end = first_seen[g] + (group.learning_days or settings.learning_days) * DAY
        at = datetime.fromtimestamp(first.t, tz=timezone.utc)
        allow = _rule(group.allow + settings.allow, g, first.host, dest, at)
        if allow is not None:
            report.allowed += 1
            ch.known[(scope, dest)] = ("allowed", first.t, last, count)
            continue
        if mode == "learn" or first.t < learn_end:
            report.learned += 1
            ch.known[(scope, dest)] = ("learned", first.t, last, count)
            continue
        muted = _rule(settings.suppress, g, first.host, dest, at)
        if muted is not None:
            report.suppressed.append(f"{g} {dest}: {muted.reason}")
            ch.known[(scope, dest)] = ("suppressed", first.t, last, count)
            continue
        ch.known[(scope, dest)] = ("alerted", first.t, last, count)
        if (g, dest) in snap.alerts:
            continue  # raised by an earlier check that crashed before its state was saved... never twice
        report.events.append(_event(first, g, dest, snap, batch_groups, ch, index, settings.young_days,
                                    settings.rare_groups))
    for (g, wf, dest), (lo, hi, count) in batch.workflows.items():
        scope = f"workflow:{g}/{wf}"
        state = snap.known.get((scope, dest), "learned")
        ch.known[(scope, dest)] = (state if state in KNOWN_STATES else "learned", lo, hi, int(count))
    return ch


def _event(first: _First, group: str, dest: str, snap: Snapshot, batch_groups: dict[str, set[str]], ch: Changes,
           index: JobIndex, young_days: float, rare_groups: int) -> NewDestinationEvent:
    at = datetime.fromtimestamp(first.t, tz=timezone.utc)
    estate_first = min(t for t in (snap.destinations.get(dest, (first.t, ""))[0], ch.destinations.get(dest, (first.t, ""))[0],
                                   first.t))
    knowing = snap.groups_knowing(dest) | batch_groups.get(dest, set())
    attribution = index.attribute(first.origin, first.t, at)
    job = attribution.job
    return NewDestinationEvent(
        group=group, destination=dest, host=first.host, first_at=at, source=first.source, line=first.line,
        client=first.client, runner_host=first.origin.host, attributed_by=first.origin.by,
        job=job.job if job else None, workflow=job.workflow if job else None, repository=job.repository if job else None,
        job_url=job.url if job else None, images=job.images if job else [], actions=job.actions if job else [],
        candidate_jobs=attribution.candidates,
        young=(first.t - estate_first) <= young_days * DAY,
        rare=len(knowing) <= rare_groups,
        estate_first_seen=datetime.fromtimestamp(estate_first, tz=timezone.utc), groups_seen=len(knowing),
    )


def journal_for(inventory: Inventory, location: str | os.PathLike[str] | None = None) -> Journal:
    """The journal the baseline lives in: ``location``, else the inventory's (``DIGESTGUARD_JOURNAL`` wins)."""
    return Journal(os.fspath(location) if location else inventory.journal_location())
