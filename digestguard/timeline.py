"""Tag timelines: which digest a tag served over time, and where nobody knows.

Pure data (the builder that merges evidence into a timeline is ``tasks/watch/timeline.py``; the rows
live in the journal, ``Journal.record_tag_observations``).

* :class:`Observation`  one piece of evidence: "from ``first_at`` to ``last_at`` the tag served ``digest``",
  optionally "and that digest began at ``began_at``" (Docker Hub's ``tag_last_pushed``). A single sighting
  (one watch cycle, one CI log line) has ``first_at == last_at``.
* :class:`Interval`     ``[start, end) -> digest`` with the evidence of each boundary; ``digest=None`` is a
  hole: no source covers that time, or the sources disagree there.
* :class:`TagTimeline`  a tag's intervals, in order, without gaps between them; ``at(t)`` answers for a minute.

A hole is never filled by a guess: before the first evidence, after the last, between two sightings further
apart than the builder's ``max_gap``, and wherever two sources contradict each other, the timeline says unknown.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from digestguard._model import Model
from digestguard.timeutil import fmt_utc, utc

SourceKind = Literal["watch", "registry", "dockerhub", "ci-log"]
SOURCE_KINDS: tuple[str, ...] = ("watch", "registry", "dockerhub", "ci-log")
MAX_INTERVALS = 200
"""A timeline shown or journaled keeps at most this many intervals (the newest)."""


class Observation(Model):
    """Evidence that ``reference`` served ``digest`` from ``first_at`` to ``last_at`` (both included)."""

    reference: str = Field(description="canonical registry/repository:tag")
    digest: str
    source: SourceKind
    detail: str = Field("", description="which one: the registry host, the CI source and job, the Hub API")
    first_at: datetime
    last_at: datetime
    began_at: datetime | None = Field(None, description="the digest began to be served then (Docker Hub tag_last_pushed)")

    def label(self) -> str:
        """The evidence as people read it: ``watch (registry 127.0.0.1:5000)``."""
        name = "docker hub tag_last_pushed" if self.source == "dockerhub" else self.source
        return f"{name} ({self.detail})" if self.detail else name


class Interval(Model):
    """``[start, end)`` during which the tag served ``digest``; ``digest=None``: unknown (``reason`` says why)."""

    start: datetime
    end: datetime
    digest: str | None = None
    sources: list[str] = Field(default_factory=list, description="the evidence covering this interval")
    start_source: str = Field("", description="the evidence for the start boundary")
    end_source: str = Field("", description="the evidence for the end boundary")
    reason: str = ""

    @property
    def known(self) -> bool:
        return self.digest is not None

    def contains(self, when: datetime) -> bool:
        when = utc(when)
        return self.start <= when < self.end

    def describe(self) -> str:
        span = f"{fmt_utc(self.start)} .. {fmt_utc(self.end)}"
        if self.digest is None:
            return f"{span}: unknown ({self.reason or 'no source covers this time'})"
        return f"{span}: {self.digest} [{'; '.join(self.sources)}]"


class TagTimeline(Model):
    """The digests ``reference`` served, as contiguous intervals in time order (holes included)."""

    reference: str
    intervals: list[Interval] = Field(default_factory=list)
    max_gap_seconds: float = Field(description="sightings further apart than this leave a hole between them")
    as_of: datetime | None = Field(None, description="the timeline was built then; after its last evidence it is a hole")
    notes: list[str] = Field(default_factory=list, description="evidence set aside (malformed, contradicted)")

    @property
    def start(self) -> datetime | None:
        return self.intervals[0].start if self.intervals else None

    @property
    def end(self) -> datetime | None:
        return self.intervals[-1].end if self.intervals else None

    def at(self, when: datetime) -> Interval:
        """The interval covering ``when``; a hole (``digest=None``) when no evidence covers it.

        A known interval followed by a hole (or by nothing) includes its end: that instant is a sighting.
        """
        when = utc(when)
        for n, iv in enumerate(self.intervals):
            if iv.contains(when):
                if not iv.known and n and when == iv.start and self.intervals[n - 1].known:
                    return self.intervals[n - 1]
                return iv
        if self.intervals and self.intervals[-1].known and when == self.intervals[-1].end:
            return self.intervals[-1]
        if not self.intervals:
            return Interval(start=when, end=when, reason="the watch has no record of this tag")
        if when < self.intervals[0].start:
            return Interval(start=when, end=self.intervals[0].start, end_source=self.intervals[0].start_source,
                            reason="before the first evidence about this tag")
        return Interval(start=self.intervals[-1].end, end=when, start_source=self.intervals[-1].end_source,
                        reason="after the last evidence about this tag")

    def digests(self) -> list[str]:
        """Every digest the tag is known to have served, in order of first appearance."""
        return list(dict.fromkeys(iv.digest for iv in self.intervals if iv.digest))

    def clip(self, start: datetime | None, end: datetime | None, limit: int = MAX_INTERVALS) -> "TagTimeline":
        """The part overlapping ``[start, end]`` (either may be open), at most ``limit`` intervals (the newest)."""
        out = [iv for iv in self.intervals if (end is None or iv.start <= end) and (start is None or iv.end >= start)]
        dropped = len(out) - limit
        notes = list(self.notes)
        if dropped > 0:
            out = out[-limit:]
            notes.append(f"{dropped} older interval(s) not shown")
        return self.model_copy(update={"intervals": out, "notes": notes})
