"""The action journal: the memory of every side effect the playbook takes.

One row per (incident, stage, target, action). A stage asks ``is_done`` before
acting and records ``started`` / ``done`` / ``failed`` around the act, so a
crashed or retried run resumes without doing anything twice and without
missing anything. Rows hold ids, versions and outcomes, never secret values
(``record`` refuses detail keys that look like they carry one).

SQLite in WAL mode: several processes (the flow, ``digestguard approve``, the
CLI) may read while one writes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from digestguard.errors import InputError
from digestguard.redact import redact, redact_data

STATUSES = ("started", "done", "failed", "skipped", "planned")
_FORBIDDEN_KEYS = {"value", "secret", "password", "secret_access_key", "token", "plaintext", "private_key"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS actions (
    incident    TEXT NOT NULL,
    stage       TEXT NOT NULL,
    target      TEXT NOT NULL,
    action      TEXT NOT NULL,
    status      TEXT NOT NULL,
    detail      TEXT NOT NULL DEFAULT '{}',
    approver    TEXT,
    error       TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    started_at  TEXT,
    finished_at TEXT,
    PRIMARY KEY (incident, stage, target, action)
);
CREATE TABLE IF NOT EXISTS events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    incident TEXT NOT NULL,
    stage    TEXT NOT NULL,
    kind     TEXT NOT NULL,
    detail   TEXT NOT NULL DEFAULT '{}',
    at       TEXT NOT NULL
);
"""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _check_detail(detail: dict[str, Any]) -> str:
    bad = sorted(k for k in detail if k.lower() in _FORBIDDEN_KEYS)
    if bad:
        raise InputError("journal", f"detail keys {bad} may carry secret values; record ids and versions only")
    return json.dumps(detail, sort_keys=True, default=str)


@dataclass
class Entry:
    """One journaled action."""

    incident: str
    stage: str
    target: str
    action: str
    status: str
    detail: dict[str, Any] = field(default_factory=dict)
    approver: str | None = None
    error: str | None = None
    attempts: int = 0
    started_at: str | None = None
    finished_at: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Journal:
    """A SQLite-backed journal. Thread-safe; cheap to open; safe to share a file between processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- queries -------------------------------------------------------------------------
    def get(self, incident: str, stage: str, target: str, action: str) -> Entry | None:
        with self._lock:
            row = self._db.execute(
                "SELECT incident, stage, target, action, status, detail, approver, error, attempts, started_at, finished_at "
                "FROM actions WHERE incident=? AND stage=? AND target=? AND action=?",
                (incident, stage, target, action),
            ).fetchone()
        return self._entry(row) if row else None

    def is_done(self, incident: str, stage: str, target: str, action: str) -> bool:
        """The question every side effect asks first."""
        e = self.get(incident, stage, target, action)
        return e is not None and e.status in ("done", "skipped")

    def entries(self, incident: str, stage: str | None = None) -> list[Entry]:
        q = ("SELECT incident, stage, target, action, status, detail, approver, error, attempts, started_at, finished_at "
             "FROM actions WHERE incident=?")
        args: list[Any] = [incident]
        if stage:
            q += " AND stage=?"
            args.append(stage)
        q += " ORDER BY COALESCE(started_at, finished_at), stage, target, action"
        with self._lock:
            rows = self._db.execute(q, args).fetchall()
        return [self._entry(r) for r in rows]

    def incidents(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT incident FROM actions UNION SELECT DISTINCT incident FROM events").fetchall()
        return sorted(r[0] for r in rows)

    def events(self, incident: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT stage, kind, detail, at FROM events WHERE incident=? ORDER BY id", (incident,)).fetchall()
        return [{"stage": s, "kind": k, "detail": json.loads(d), "at": a} for s, k, d, a in rows]

    # -- writes --------------------------------------------------------------------------
    def record(self, incident: str, stage: str, target: str, action: str, status: str, *,
               detail: dict[str, Any] | None = None, approver: str | None = None, error: str | None = None) -> Entry:
        """Upsert one action's state. ``detail`` merges into what was there (ids from earlier steps stay)."""
        if status not in STATUSES:
            raise InputError("journal", f"unknown status {status!r}")
        with self._lock:
            old = self.get(incident, stage, target, action)
            merged = {**(old.detail if old else {}), **(detail or {})}
            payload = _check_detail(redact_data(merged))
            error = redact(error)
            now = _now()
            started = old.started_at if old and old.started_at else (now if status in ("started", "planned") else None)
            finished = now if status in ("done", "failed", "skipped") else None
            attempts = (old.attempts if old else 0) + (1 if status == "started" else 0)
            self._db.execute(
                "INSERT INTO actions (incident, stage, target, action, status, detail, approver, error, attempts, started_at, finished_at) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(incident, stage, target, action) DO UPDATE SET "
                "status=excluded.status, detail=excluded.detail, approver=COALESCE(excluded.approver, actions.approver), "
                "error=excluded.error, attempts=excluded.attempts, started_at=excluded.started_at, finished_at=excluded.finished_at",
                (incident, stage, target, action, status, payload, approver, error, attempts, started or now, finished),
            )
        return self.get(incident, stage, target, action)  # type: ignore[return-value]

    def event(self, incident: str, stage: str, kind: str, detail: dict[str, Any] | None = None) -> None:
        """A point in the incident's story that is not an idempotent action (stage started, approval asked...)."""
        payload = _check_detail(redact_data(detail or {}))
        with self._lock:
            self._db.execute("INSERT INTO events (incident, stage, kind, detail, at) VALUES (?,?,?,?,?)", (incident, stage, kind, payload, _now()))

    @contextmanager
    def step(self, incident: str, stage: str, target: str, action: str, *, approver: str | None = None) -> Iterator["StepRecorder"]:
        """Record started before, done after, failed (with the error's text) when the block raises.

        The caller checks ``is_done`` first; ``step`` does not skip by itself so that
        the caller can report "already done" in its own output.
        """
        self.record(incident, stage, target, action, "started", approver=approver)
        rec = StepRecorder()
        try:
            yield rec
        except BaseException as e:
            self.record(incident, stage, target, action, "failed", detail=rec.detail, error=f"{type(e).__name__}: {e}"[:500])
            raise
        self.record(incident, stage, target, action, rec.status, detail=rec.detail, approver=approver)

    @staticmethod
    def _entry(row: tuple[Any, ...]) -> Entry:
        return Entry(row[0], row[1], row[2], row[3], row[4], json.loads(row[5] or "{}"), row[6], row[7], row[8], row[9], row[10])


class StepRecorder:
    """What a step adds to its journal row while it runs (ids, versions) and how it ended."""

    def __init__(self) -> None:
        self.detail: dict[str, Any] = {}
        self.status = "done"

    def note(self, **detail: Any) -> None:
        self.detail.update(detail)

    def skipped(self, **detail: Any) -> None:
        self.status = "skipped"
        self.detail.update(detail)
