"""Tag timelines: merge what every source says a tag served into ``[from, to) -> digest`` with explicit holes.

Sources (each an :class:`~digestguard.timeline.Observation`):

* the watch's own history: every cycle's "at T the tag served D", stored in the journal as runs
  (``Journal.record_tag_observations`` extends a run while sightings keep coming within ``max_gap``);
* the registry now (:func:`live_observations`, what ``digestguard timeline`` asks before printing);
* Docker Hub's ``tag_last_pushed``: "the current digest began at P" (the watch asks when a tag moved;
  ``digestguard timeline`` asks live). A push time after the moment it was read, or one contradicted by a
  sighting of another digest after it, is set aside with a note: a hole, never a guess;
* pulls seen in CI logs: a log line that names the tag and its digest at T (:func:`ci_observations`).

How they merge (:func:`build_timeline`): two consecutive sightings of the same digest at most ``max_gap``
apart cover the time between them; a sighting followed within ``max_gap`` by a push of another digest
covers the time up to the push; anything else is a hole: sightings too far apart (the tag may have been
overwritten and put back, as the kics tags were), a change without a push time (it happened somewhere in
between), or sources that disagree. The continuity rule assumes a tag is not overwritten and restored
within ``max_gap``: keep it near the watch's interval (default 15 minutes for a 5-minute schedule).

Example::

    with Journal(inv.journal_location()) as j:   # doctest: +SKIP
        tl = stored_timeline(j, "docker.io/checkmarx/kics:latest")
        print(tl.at(datetime(2026, 4, 22, 14, 3, tzinfo=timezone.utc)).describe())
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from digestguard.cilog import JobLog
from digestguard.errors import DigestguardError, NotFound
from digestguard.journal import Journal
from digestguard.reference import ImageReference, try_parse_reference
from digestguard.timeline import Interval, Observation, TagTimeline
from digestguard.timeutil import fmt_utc, now, utc

DEFAULT_MAX_GAP = timedelta(minutes=15)


def tag_key(ref: ImageReference) -> str:
    """The canonical ``registry/repository:tag`` a timeline is keyed by (the watch state's key)."""
    return str(ImageReference(ref.registry, ref.repository, ref.effective_tag, None))


# ================================================================= the builder (pure)


@dataclass(frozen=True)
class _Claim:
    """``[start, end)`` served ``digest``, on the evidence ``labels``."""

    start: datetime
    end: datetime
    digest: str
    labels: tuple[str, ...]
    start_label: str
    end_label: str


@dataclass(frozen=True)
class _Instant:
    at: datetime
    digest: str
    label: str
    began: bool  # the digest began exactly then (a push time)


def _short(digest: str | None) -> str:
    return (digest or "?")[:19]


def _sanitised(observations: Iterable[Observation], as_of: datetime | None,
               notes: list[str]) -> list[tuple[Observation, datetime, datetime, datetime | None]]:
    """``(obs, first, last, began)`` in UTC; malformed evidence is dropped or stripped of its push time, with a note."""
    out = []
    for o in observations:
        first, last = utc(o.first_at), utc(o.last_at)
        if last < first:
            notes.append(f"{o.label()}: last seen {fmt_utc(last)} before first seen {fmt_utc(first)}: set aside")
            continue
        if as_of is not None and first > as_of:
            notes.append(f"{o.label()}: seen at {fmt_utc(first)}, after the timeline's time {fmt_utc(as_of)}: set aside")
            continue
        began = utc(o.began_at) if o.began_at else None
        if began is not None and began > first:
            notes.append(f"{o.label()}: push time {fmt_utc(began)} is after it was read ({fmt_utc(first)}): "
                         "set aside (a hole, not a guess)")
            began = None
        out.append((o, first, last, began))
    return out


def build_timeline(reference: str, observations: Iterable[Observation], *,
                   max_gap: timedelta = DEFAULT_MAX_GAP, as_of: datetime | None = None) -> TagTimeline:
    """Merge ``observations`` of ``reference`` (others are ignored) into a :class:`TagTimeline`.

    ``as_of`` (e.g. now) adds the hole after the last evidence, and sets aside evidence dated after it.
    """
    notes: list[str] = []
    as_of = utc(as_of) if as_of else None
    obs = _sanitised((o for o in observations if o.reference == reference), as_of, notes)
    points = [_Instant(t, o.digest, o.label(), False) for o, first, last, _ in obs for t in {first, last}]

    claims: list[_Claim] = []
    instants = list(points)
    for o, first, last, began in obs:
        start = began or first
        if last <= start:
            if began is not None:
                instants.append(_Instant(began, o.digest, o.label(), True))
            continue
        against = [p for p in points if p.digest != o.digest and start < p.at <= last]
        if against:
            what = "push time" if began and began < first else "run of sightings"
            notes.append(f"{o.label()}: {what} {fmt_utc(start)} .. {fmt_utc(last)} of {_short(o.digest)} is contradicted by "
                         f"{against[0].label} seeing {_short(against[0].digest)} at {fmt_utc(against[0].at)}: set aside")
            continue
        claims.append(_Claim(start, last, o.digest, (o.label(),), o.label(), o.label()))
        if began is not None:
            instants.append(_Instant(began, o.digest, o.label(), True))

    claims += _continuity(instants, max_gap)
    return TagTimeline(reference=reference, intervals=_intervals(claims, instants, as_of),
                       max_gap_seconds=max_gap.total_seconds(), as_of=as_of, notes=notes)


def _continuity(instants: list[_Instant], max_gap: timedelta) -> list[_Claim]:
    """Claims between consecutive instants at most ``max_gap`` apart: same digest, or a push that ended the first.

    Instants at the same time that disagree are a conflict: no continuity from or to them.
    """
    by_time: dict[datetime, list[_Instant]] = {}
    for i in instants:
        by_time.setdefault(i.at, []).append(i)
    times = sorted(by_time)
    out: list[_Claim] = []
    for t1, t2 in itertools.pairwise(times):
        g1, g2 = by_time[t1], by_time[t2]
        d1, d2 = {i.digest for i in g1}, {i.digest for i in g2}
        if len(d1) != 1 or len(d2) != 1 or t2 - t1 > max_gap:
            continue
        a, b = g1[0], (next((i for i in g2 if i.began), g2[0]))
        labels = tuple(dict.fromkeys((a.label, b.label)))
        if a.digest == b.digest:
            out.append(_Claim(t1, t2, a.digest, labels, a.label, b.label))
        elif b.began:
            out.append(_Claim(t1, t2, a.digest, labels, a.label, b.label))
    return out


def _intervals(claims: list[_Claim], instants: list[_Instant], as_of: datetime | None) -> list[Interval]:
    """Elementary intervals between every boundary, judged by the claims covering them, then merged."""
    bounds = sorted({c.start for c in claims} | {c.end for c in claims} | {i.at for i in instants})
    if as_of is not None and bounds and as_of > bounds[-1]:
        bounds.append(as_of)
    at_time: dict[datetime, list[_Instant]] = {}
    for i in instants:
        at_time.setdefault(i.at, []).append(i)
    out: list[Interval] = []
    for x, y in itertools.pairwise(bounds):
        cover = [c for c in claims if c.start <= x and y <= c.end]
        digests = list(dict.fromkeys(c.digest for c in cover))
        if len(digests) == 1:
            iv = Interval(start=x, end=y, digest=digests[0], sources=list(dict.fromkeys(lb for c in cover for lb in c.labels)),
                          start_source=next((c.start_label for c in cover if c.start == x), cover[0].start_label),
                          end_source=next((c.end_label for c in cover if c.end == y), cover[0].end_label))
        else:
            iv = _hole(x, y, cover, digests, instants, at_time)
        if out and out[-1].end == iv.start and out[-1].digest == iv.digest and out[-1].reason == iv.reason:
            prev = out[-1]
            out[-1] = prev.model_copy(update={"end": iv.end, "end_source": iv.end_source,
                                              "sources": list(dict.fromkeys(prev.sources + iv.sources))})
        else:
            out.append(iv)
    return out


def _hole(x: datetime, y: datetime, cover: list[_Claim], digests: list[str], instants: list[_Instant],
          at_time: dict[datetime, list[_Instant]]) -> Interval:
    start_src = "; ".join(dict.fromkeys(i.label for i in at_time.get(x, []))) or "no evidence"
    end_src = "; ".join(dict.fromkeys(i.label for i in at_time.get(y, []))) or "no evidence"
    if digests:
        why = "sources disagree: " + ", ".join(f"{_short(c.digest)} ({'; '.join(c.labels)})" for c in cover)
        return Interval(start=x, end=y, sources=[lb for c in cover for lb in c.labels], start_source=start_src,
                        end_source=end_src, reason=why)
    before = [i for i in instants if i.at <= x]
    after = [i for i in instants if i.at >= y]
    d1 = before[-1].digest if before and len({i.digest for i in at_time[before[-1].at]}) == 1 else None
    after.sort(key=lambda i: i.at)
    d2 = after[0].digest if after and len({i.digest for i in at_time[after[0].at]}) == 1 else None
    if not after:
        why = "after the last evidence"
    elif d1 and d2 and d1 != d2:
        why = f"changed from {_short(d1)} to {_short(d2)} at an unknown time in here (no push time)"
    else:
        why = "no source covers this time (sightings further apart than the max gap)"
    return Interval(start=x, end=y, start_source=start_src, end_source=end_src, reason=why)


# ================================================================= where the evidence comes from


def watch_observations(resolved: Iterable[tuple[str, str]], at: datetime, detail: str = "") -> list[Observation]:
    """One watch cycle's sightings: ``[(tag key, digest)]`` resolved at ``at``."""
    return [Observation(reference=k, digest=d, source="watch", detail=detail, first_at=at, last_at=at)
            for k, d in resolved]


def push_observation(reference: str, digest: str, pushed_at: datetime | None, read_at: datetime,
                     detail: str) -> Observation | None:
    """Docker Hub's "``digest`` has been served since ``pushed_at``" read at ``read_at``; None without a push time."""
    if pushed_at is None:
        return None
    return Observation(reference=reference, digest=digest, source="dockerhub", detail=detail, first_at=read_at,
                       last_at=read_at, began_at=pushed_at)


def ci_observations(logs: Sequence[JobLog], references: Iterable[str] | None = None) -> list[Observation]:
    """Pulls in CI logs that name a tag and print its digest, with a time (the line's, else the job's start).

    Only digests the log itself printed count (a digest pinned in the reference says nothing of the tag).
    ``references`` limits the result to those tag keys.
    """
    wanted = set(references) if references is not None else None
    out: list[Observation] = []
    for log in logs:
        for p in log.pulls:
            when = p.at or log.started_at
            ref = try_parse_reference(p.name) if p.name else None
            if ref is None or not p.digest or p.digest_source != "log" or when is None or p.effective_tag is None:
                continue
            key = tag_key(ImageReference(ref.registry, ref.repository, p.effective_tag, None))
            if wanted is not None and key not in wanted:
                continue
            out.append(Observation(reference=key, digest=p.digest, source="ci-log", detail=f"{log.source} {log.job} line {p.line_no}",
                                   first_at=when, last_at=when))
    return out


def live_observations(keys: Sequence[str], clients: Any, push_info: Any | None = None
                      ) -> tuple[list[Observation], list[str]]:
    """What the registry serves for each tag now, and (Docker Hub) since when; failures become notes.

    ``clients``: ``{host: registry client}`` or a function of the host (``RegistryPool.client``);
    ``push_info``: a ``PushInfoSource``.
    """
    obs: list[Observation] = []
    notes: list[str] = []
    for key in keys:
        ref = try_parse_reference(key)
        if ref is None:
            notes.append(f"{key}: not an image reference")
            continue
        try:
            client = clients[ref.registry] if isinstance(clients, dict) else clients(ref.registry)
            digest = client.resolve(ref.repository, ref.effective_tag)
        except (DigestguardError, KeyError) as e:
            notes.append(f"{key}: registry not asked: {str(e)[:200]}")
            continue
        at = now()
        obs.append(Observation(reference=key, digest=digest, source="registry", detail=ref.registry, first_at=at, last_at=at))
        if push_info is None:
            continue
        try:
            info = push_info.push_info(ref, digest)
        except NotFound:
            info = None
        except DigestguardError as e:
            notes.append(f"{key}: push time not read from {push_info.name}: {str(e)[:200]}")
            continue
        if info is None:
            continue
        if info.pushed_at is None:
            notes.append(f"{key}: {push_info.name} gave no readable push time: left as a hole")
            continue
        p = push_observation(key, digest, info.pushed_at, at, push_info.name)
        if p is not None:
            obs.append(p)
    return obs, notes


def stored_timeline(journal: Journal, reference: str, *, extra: Iterable[Observation] = (),
                    since: datetime | None = None, until: datetime | None = None,
                    max_gap: timedelta = DEFAULT_MAX_GAP, as_of: datetime | None = None) -> TagTimeline:
    """The timeline of ``reference`` from the journal's sightings (overlapping ``[since, until]``) plus ``extra``."""
    margin = max_gap
    stored = journal.tag_observations(reference, since=since - margin if since else None,
                                      until=until + margin if until else None)
    return build_timeline(reference, [*stored, *extra], max_gap=max_gap, as_of=as_of)


def record(journal: Journal, observations: Sequence[Observation], max_gap: timedelta = DEFAULT_MAX_GAP) -> int:
    """Store sightings in the journal (runs extended); returns rows added or extended."""
    return journal.record_tag_observations(list(observations), max_gap.total_seconds()) if observations else 0


def current_timeline(inventory: Any, reference: str, *, live: bool = True, max_gap: timedelta = DEFAULT_MAX_GAP,
                     journal: Journal | None = None) -> tuple[TagTimeline, list[str]]:
    """What ``digestguard timeline`` prints: the journal's sightings of the tag, plus (``live``) what the registry
    serves now and Docker Hub's push time, which are stored too. Returns the timeline (as of now) and the notes
    of every source that could not answer. Raises :class:`InputError` for a reference that names no tag."""
    from digestguard.errors import InputError
    from digestguard.reference import parse_reference
    from tasks.watch.sources import RegistryPool, dockerhub_push_info

    ref = parse_reference(reference, "reference")
    if ref.digest:
        raise InputError("reference", f"{reference!r} is pinned to a digest: there is no tag to follow")
    key = tag_key(ref)
    own = journal is None
    j = journal or Journal(inventory.journal_location())
    notes: list[str] = []
    try:
        if live:
            hub = None
            try:
                hub = dockerhub_push_info(inventory) if ref.registry == "docker.io" else None
            except DigestguardError as e:
                notes.append(f"docker hub: not asked: {str(e)[:200]}")
            try:
                with RegistryPool(inventory, max_retries=1) as pool:
                    obs, live_notes = live_observations([key], pool.client, hub)
            finally:
                if hub is not None:
                    hub.close()
            notes += live_notes
            record(j, obs, max_gap)
        tl = stored_timeline(j, key, max_gap=max_gap, as_of=now())
    finally:
        if own:
            j.close()
    return tl, notes
