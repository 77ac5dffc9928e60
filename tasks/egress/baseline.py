"""The baseline's memory, in the journal (SQLite or PostgreSQL; tables of journal migration 3).

* ``egress_groups``: when each runner group was first seen (its learning period starts then);
* ``egress_known``: every destination per scope (``group:NAME``, ``workflow:NAME/WORKFLOW``) with its state:
  ``learned`` (seen while learning, or by ``egress learn``), ``allowed`` (an allow rule), ``alerted`` (flagged once,
  known from then on) or ``suppressed`` (muted by a rule; judged again when the rule lapses);
* ``egress_destinations``: where each destination was first seen in the estate (young);
* ``egress_offsets``: where each followed log was read up to;
* ``egress_alerts``: every alert raised, once per (group, destination).

A check loads it once, works in memory, and writes everything it learnt and
the new offsets in ONE transaction: a crash half-way leaves the previous
state and offsets, so the next run reads the same lines again and decides the
same way (no alert lost, none doubled: an alert row is keyed by group and destination).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from digestguard.journal import Journal
from tasks.egress.connections import Position

KNOWN_STATES = ("learned", "allowed", "alerted")


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="milliseconds")


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@dataclass
class Snapshot:
    """The stored baseline, in memory (epoch seconds for times)."""

    groups: dict[str, float] = field(default_factory=dict)
    known: dict[tuple[str, str], str] = field(default_factory=dict)  # (scope, destination) -> state
    destinations: dict[str, tuple[float, str]] = field(default_factory=dict)  # destination -> (first seen, group)
    offsets: dict[str, Position] = field(default_factory=dict)
    alerts: set[tuple[str, str]] = field(default_factory=set)
    last_check: float | None = None  # when a check last saved (the latest offset update)
    _knowing: dict[str, set[str]] | None = field(default=None, repr=False)

    def groups_knowing(self, destination: str) -> set[str]:
        """The groups that reach ``destination`` normally (indexed on first use)."""
        if self._knowing is None:
            self._knowing = {}
            for (s, d), st in self.known.items():
                if s.startswith("group:") and st in KNOWN_STATES:
                    self._knowing.setdefault(d, set()).add(s[6:])
        return self._knowing.get(destination, set())


@dataclass
class Changes:
    """What one check adds: ``known`` rows are upserted (state, first/last seen, hits added)."""

    groups: dict[str, tuple[float, float]] = field(default_factory=dict)  # group -> (first, last)
    known: dict[tuple[str, str], tuple[str, float, float, int]] = field(default_factory=dict)
    destinations: dict[str, tuple[float, str]] = field(default_factory=dict)
    offsets: dict[str, Position] = field(default_factory=dict)
    alerts: list[tuple[str, str, float, dict[str, Any]]] = field(default_factory=list)


class BaselineStore:
    """Reads and writes the egress tables of one :class:`Journal`."""

    LOCK = "digestguard:egress-baseline"

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def load(self) -> Snapshot:
        j = self.journal
        snap = Snapshot()
        snap.groups = {g: epoch(f) for g, f in j.query("SELECT group_name, first_seen FROM egress_groups")}
        snap.known = {(s, d): st for s, d, st in j.query("SELECT scope, destination, state FROM egress_known")}
        snap.destinations = {d: (epoch(f), g) for d, f, g in
                             j.query("SELECT destination, first_seen, first_group FROM egress_destinations")}
        snap.offsets = {p: Position(int(o), int(n), int(i) if i is not None else None) for p, o, n, i in
                        j.query("SELECT path, byte_offset, lines, inode FROM egress_offsets")}
        snap.alerts = {(g, d) for g, d in j.query("SELECT group_name, destination FROM egress_alerts")}
        (last,) = j.query("SELECT MAX(updated_at) FROM egress_offsets")[0]
        snap.last_check = epoch(last) if last else None
        return snap

    def save(self, ch: Changes) -> None:
        """Everything in one transaction (see the module docstring)."""
        j = self.journal
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        with j.transaction(self.LOCK):
            for g, (first, last) in ch.groups.items():
                j.query("INSERT INTO egress_groups (group_name, first_seen, last_seen) VALUES (?,?,?) "
                        "ON CONFLICT(group_name) DO UPDATE SET last_seen=excluded.last_seen", (g, iso(first), iso(last)))
            for (scope, dest), (state, first, last, hits) in ch.known.items():
                j.query("INSERT INTO egress_known (scope, destination, first_seen, last_seen, hits, state) "
                        "VALUES (?,?,?,?,?,?) ON CONFLICT(scope, destination) DO UPDATE SET "
                        "last_seen=CASE WHEN excluded.last_seen > egress_known.last_seen THEN excluded.last_seen "
                        "ELSE egress_known.last_seen END, hits=egress_known.hits + excluded.hits, state=excluded.state",
                        (scope, dest, iso(first), iso(last), hits, state))
            for dest, (first, group) in ch.destinations.items():
                j.query("INSERT INTO egress_destinations (destination, first_seen, first_group) VALUES (?,?,?) "
                        "ON CONFLICT(destination) DO NOTHING", (dest, iso(first), group))
            for path, pos in ch.offsets.items():
                j.query("INSERT INTO egress_offsets (path, byte_offset, lines, inode, updated_at) VALUES (?,?,?,?,?) "
                        "ON CONFLICT(path) DO UPDATE SET byte_offset=excluded.byte_offset, lines=excluded.lines, "
                        "inode=excluded.inode, updated_at=excluded.updated_at", (path, pos.offset, pos.lines, pos.inode, now))
            for group, dest, at, detail in ch.alerts:
                j.query("INSERT INTO egress_alerts (group_name, destination, at, detail, raised_at) VALUES (?,?,?,?,?) "
                        "ON CONFLICT(group_name, destination) DO NOTHING",
                        (group, dest, iso(at), json.dumps(detail, sort_keys=True, default=str), now))

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert raised, oldest first (``digestguard egress alerts``)."""
        rows = self.journal.query("SELECT group_name, destination, at, detail FROM egress_alerts ORDER BY at")
        return [{"group": g, "destination": d, "at": a, **json.loads(detail)} for g, d, a, detail in rows]
