"""The watch's memory: a small SQLite file (see ``tasks/watch/cycle.py``)."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from digestguard.errors import InputError
from digestguard.inventory import Inventory
from digestguard.journal import Journal
from digestguard.timeutil import now, parse_time
from tasks.watch.events import WATCH_EVENT

DEFAULT_STATE = ".digestguard/watch.sqlite"


def _stamp(when: datetime | None = None) -> str:
    """A time as the state stores it (ISO 8601 with offset); now when omitted."""
    return (when or now()).isoformat()


@dataclass(frozen=True)
class Outage:
    """A source marked down, since when (``None`` if the stored time is unreadable), with its first error."""

    source: str
    since: datetime | None
    error: str


@dataclass(frozen=True)
class LogPosition:
    """Where the last cycle stopped reading a log: byte ``offset``, ``lines`` before it, the file's inode."""

    offset: int
    lines: int
    inode: int | None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS digests(reference TEXT PRIMARY KEY, digest TEXT NOT NULL, first_seen TEXT, changed_at TEXT);
CREATE TABLE IF NOT EXISTS signatures(reference TEXT PRIMARY KEY, digest TEXT NOT NULL, status TEXT NOT NULL,
    reason TEXT, checked_at TEXT);
CREATE TABLE IF NOT EXISTS log_positions(path TEXT PRIMARY KEY, offset INTEGER NOT NULL, lines INTEGER NOT NULL,
    inode INTEGER, updated_at TEXT);
CREATE TABLE IF NOT EXISTS outages(source TEXT PRIMARY KEY, since TEXT NOT NULL, error TEXT);
CREATE TABLE IF NOT EXISTS action_tags(repository TEXT NOT NULL, tag TEXT NOT NULL, commit_sha TEXT NOT NULL,
    first_seen TEXT NOT NULL, PRIMARY KEY(repository, tag));
CREATE TABLE IF NOT EXISTS action_moves(repository TEXT NOT NULL, tag TEXT NOT NULL, commit_sha TEXT NOT NULL,
    reported_at TEXT NOT NULL, PRIMARY KEY(repository, tag, commit_sha));
CREATE TABLE IF NOT EXISTS pending_alerts(id INTEGER PRIMARY KEY AUTOINCREMENT, event TEXT NOT NULL, queued_at TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0);
"""


class WatchState(AbstractContextManager["WatchState"]):
    """The watch's memory (SQLite): last digest per tag, signature verdicts, log offsets, outages, undelivered alerts.

    Why SQLite: it survives restarts and crashes mid-cycle (each batch is one
    transaction), and a scheduled deployment run on another worker can share
    the file. Nothing secret is stored: digests, paths, offsets, error texts.
    Each cycle's sightings (the tag timelines, ``tasks/watch/timeline.py``) go to the journal instead
    (:meth:`journal`: the inventory's, so SQLite or PostgreSQL; default ``journal.sqlite`` beside this file),
    where assess and the report read them.
    """

    def __init__(self, path: str | os.PathLike[str], journal: str | None = None) -> None:
        self.path = Path(path)
        self.journal_location = journal or str(self.path.parent / "journal.sqlite")
        self._journal: Journal | None = None
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
        return cls(inventory.resolve_path(os.fspath(path)) if path else inventory.resolve_path(DEFAULT_STATE),
                   journal=inventory.journal_location())

    def journal(self) -> Journal:
        """The journal the tag timelines live in (the inventory's; opened on first use, closed with the state)."""
        with self._lock:
            if self._journal is None:
                self._journal = Journal(self.journal_location)
            return self._journal

    def close(self) -> None:
        self._db.close()
        if self._journal is not None:
            self._journal.close()

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
        at = _stamp(when)
        self._write(
            "INSERT INTO digests(reference, digest, first_seen, changed_at) VALUES(?, ?, ?, ?) "
            "ON CONFLICT(reference) DO UPDATE SET digest=excluded.digest, changed_at=excluded.changed_at",
            [(r, d, at, at) for r, d in changes.items()],
        )

    def digest_first_seen(self, digest: str) -> datetime | None:
        """When the watch first saw a reference at ``digest`` (it was pushed at or before then); None if never."""
        row = self._db.execute("SELECT min(changed_at) FROM digests WHERE digest = ?", (digest.lower(),)).fetchone()
        return parse_time(row[0]) if row and row[0] else None

    # -- action tags (the commit each tag pointed at when first seen: a later move is a force-push)

    def action_tags(self, repository: str) -> dict[str, str]:
        """``{tag: commit SHA}`` as first seen for ``owner/repo`` (lowercase)."""
        rows = self._db.execute("SELECT tag, commit_sha FROM action_tags WHERE repository = ?", (repository.lower(),))
        return dict(rows)

    def remember_action_tags(self, repository: str, tags: Mapping[str, str], when: datetime | None = None) -> None:
        """Record tags not seen before; a tag already known keeps its first commit (so a move stays visible)."""
        at = _stamp(when)
        self._write("INSERT OR IGNORE INTO action_tags(repository, tag, commit_sha, first_seen) VALUES(?, ?, ?, ?)",
                    [(repository.lower(), t, sha.lower(), at) for t, sha in tags.items()])

    def reported_action_moves(self) -> set[tuple[str, str, str]]:
        """``{(repository, tag, commit)}`` moves the watch already alerted (a tag moving again is new)."""
        return {tuple(r) for r in self._db.execute("SELECT repository, tag, commit_sha FROM action_moves")}  # type: ignore[misc]

    def remember_action_move(self, repository: str, tag: str, commit: str) -> None:
        self._write("INSERT OR IGNORE INTO action_moves(repository, tag, commit_sha, reported_at) VALUES(?, ?, ?, ?)",
                    [(repository.lower(), tag, commit.lower(), _stamp())])

    # -- signatures
    def signatures(self) -> dict[str, tuple[str, str]]:
        """``{reference: (digest, status)}`` of the last verdicts."""
        return {r: (d, s) for r, d, s in self._db.execute("SELECT reference, digest, status FROM signatures")}

    def record_signatures(self, verdicts: Iterable[tuple[str, str, str, str]]) -> None:
        """Rows of ``(reference, digest, status, reason)``."""
        at = _stamp()
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
            [(path, pos.offset, pos.lines, pos.inode, _stamp())],
        )

    # -- outages
    def outages(self) -> dict[str, Outage]:
        return {s: Outage(s, parse_time(since), err or "")
                for s, since, err in self._db.execute("SELECT source, since, error FROM outages")}

    def mark_down(self, source: str, error: str) -> None:
        self._write("INSERT OR IGNORE INTO outages(source, since, error) VALUES(?, ?, ?)", [(source, _stamp(), error[:500])])

    def mark_up(self, source: str) -> None:
        self._write("DELETE FROM outages WHERE source=?", [(source,)])

    # -- undelivered alerts
    def queue_alerts(self, events: Sequence[Any]) -> None:
        at = _stamp()
        self._write("INSERT INTO pending_alerts(event, queued_at) VALUES(?, ?)",
                    [(e.model_dump_json(), at) for e in events])

    def pending_alerts(self) -> list[tuple[int, Any]]:
        """``[(id, event)]`` oldest first."""
        rows = self._db.execute("SELECT id, event FROM pending_alerts ORDER BY id").fetchall()
        return [(i, WATCH_EVENT.validate_json(e)) for i, e in rows]

    def drop_alerts(self, ids: Iterable[int]) -> None:
        self._write("DELETE FROM pending_alerts WHERE id=?", [(i,) for i in ids])

    def count_pending(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM pending_alerts").fetchone()[0])
