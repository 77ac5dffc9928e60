"""The action journal: the memory of every side effect the playbook takes.

One row per (incident, stage, target, action). A stage asks ``is_done`` before
acting and records ``started`` / ``done`` / ``failed`` around the act, so a
crashed or retried run resumes without doing anything twice and without
missing anything. Rows hold ids, versions and outcomes, never secret values
(``record`` refuses detail keys that look like they carry one).

Where it lives (``Journal(location)``):

- a path: SQLite in WAL mode, for one machine (the flow, ``digestguard approve``
  and the CLI may read while one writes);
- ``postgresql://user@host:port/db``: PostgreSQL, for a team whose workers run
  on several machines. The URL never holds a password: write it by reference
  (``postgresql://user:env:NAME@host/db`` or ``...:prefect-secret:BLOCK@...``,
  resolved at connect time like every inventory credential) or let libpq find
  it (``PGPASSWORD``, ``PGPASSFILE``, ``~/.pgpass``).

Both backends run the same statements with the same meaning; the schema is
versioned (``schema_version``), each migration applied once, under a lock, so
two processes starting at the same moment do not race.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

from digestguard.credentials import is_reference, resolve
from digestguard.errors import DigestguardError, InputError, Unavailable
from digestguard.redact import redact, redact_data
from digestguard.timeline import Observation

JOURNAL_ENV = "DIGESTGUARD_JOURNAL"  # where the journal lives, for every command, flow and the drill (wins over the inventory)
STATUSES = ("started", "done", "failed", "skipped", "planned")
_FORBIDDEN_KEYS = {"value", "secret", "password", "secret_access_key", "token", "plaintext", "private_key"}



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


_COLUMNS = "incident, stage, target, action, status, detail, approver, error, attempts, started_at, finished_at"

_ACTIONS = """CREATE TABLE IF NOT EXISTS actions (
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
)"""
_EVENTS = """CREATE TABLE IF NOT EXISTS events (
    id       {id},
    incident TEXT NOT NULL,
    stage    TEXT NOT NULL,
    kind     TEXT NOT NULL,
    detail   TEXT NOT NULL DEFAULT '{{}}',
    at       TEXT NOT NULL
)"""

# One actor per name ("incident:<id>", "credential:<target>"): who holds it, from where, since when, until when.
_LEASES = """CREATE TABLE IF NOT EXISTS leases (
    name     TEXT PRIMARY KEY,
    owner    TEXT NOT NULL,
    flow_run TEXT,
    host     TEXT NOT NULL,
    pid      INTEGER NOT NULL,
    scope    TEXT NOT NULL,
    since    TEXT NOT NULL,
    expires  TEXT NOT NULL
)"""

# What each watched tag served over time (digestguard/timeline.py): one row per run of sightings of one digest
# by one source; a watch run is extended while sightings keep coming within the builder's max gap.
_TAG_OBSERVATIONS = """CREATE TABLE IF NOT EXISTS tag_observations (
    reference TEXT NOT NULL,
    source    TEXT NOT NULL,
    detail    TEXT NOT NULL,
    digest    TEXT NOT NULL,
    first_at  TEXT NOT NULL,
    last_at   TEXT NOT NULL,
    began_at  TEXT,
    PRIMARY KEY (reference, source, detail, digest, first_at)
)"""
_TAG_OBSERVATIONS_INDEX = "CREATE INDEX IF NOT EXISTS tag_observations_at ON tag_observations (reference, first_at)"


# Egress baselines (tasks/egress/): per runner group when it started learning, every destination each scope
# (a group, or a group's workflow) has reached, where each followed log was read up to, and every alert raised.
_EGRESS = [
    """CREATE TABLE IF NOT EXISTS egress_groups (
    group_name TEXT PRIMARY KEY,
    first_seen TEXT NOT NULL,
    last_seen  TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS egress_known (
    scope       TEXT NOT NULL,
    destination TEXT NOT NULL,
    first_seen  TEXT NOT NULL,
    last_seen   TEXT NOT NULL,
    hits        BIGINT NOT NULL DEFAULT 0,
    state       TEXT NOT NULL,
    PRIMARY KEY (scope, destination)
)""",
    """CREATE TABLE IF NOT EXISTS egress_destinations (
    destination TEXT PRIMARY KEY,
    first_seen  TEXT NOT NULL,
    first_group TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS egress_offsets (
    path       TEXT PRIMARY KEY,
    byte_offset BIGINT NOT NULL,
    lines      BIGINT NOT NULL,
    inode      BIGINT,
    updated_at TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS egress_alerts (
    group_name  TEXT NOT NULL,
    destination TEXT NOT NULL,
    at          TEXT NOT NULL,
    detail      TEXT NOT NULL,
    raised_at   TEXT NOT NULL,
    PRIMARY KEY (group_name, destination)
)""",
]


# The incident's rendered report (self-contained HTML), kept with the journal: whichever worker ran the response,
# and wherever its disk went, ``digestguard report`` finds it where the team's state lives.
_REPORTS = """CREATE TABLE IF NOT EXISTS reports (
    incident TEXT NOT NULL,
    name     TEXT NOT NULL,
    content  TEXT NOT NULL,
    at       TEXT NOT NULL,
    PRIMARY KEY (incident, name)
)"""


def _pg(ddl: str) -> str:
    """The PostgreSQL spelling of a portable DDL: byte-order text comparison, as SQLite's default BINARY collation."""
    return ddl.replace(" TEXT", ' TEXT COLLATE "C"')


# (version, what it does, {backend: statements}). Append only: a shipped migration is never edited.
MIGRATIONS: list[tuple[int, str, dict[str, list[str]]]] = [
    (1, "actions and events", {
        "sqlite": [_ACTIONS, _EVENTS.format(id="INTEGER PRIMARY KEY AUTOINCREMENT")],
        "postgresql": [_pg(_ACTIONS), _pg(_EVENTS.format(id="BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"))],
    }),
    (2, "leases", {"sqlite": [_LEASES], "postgresql": [_pg(_LEASES)]}),
    (3, "tag timelines", {"sqlite": [_TAG_OBSERVATIONS, _TAG_OBSERVATIONS_INDEX],
                          "postgresql": [_pg(_TAG_OBSERVATIONS), _TAG_OBSERVATIONS_INDEX]}),
    (4, "egress baselines", {"sqlite": _EGRESS, "postgresql": [_pg(t) for t in _EGRESS]}),
    (5, "reports", {"sqlite": [_REPORTS], "postgresql": [_pg(_REPORTS)]}),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def is_postgres_url(location: str | Path | None) -> bool:
    """True for ``postgresql://...`` / ``postgres://...`` (a journal on PostgreSQL), False for a SQLite path."""
    return str(location or "").startswith(("postgresql://", "postgres://"))


def check_location(location: str, source: str = "journal") -> str:
    """Refuse a PostgreSQL URL that carries a literal password (it would sit in a shared file or environment)."""
    if is_postgres_url(location):
        password = _pg_params(location, source).get("password")
        if password is not None and not is_reference(password):
            raise InputError(source, "a journal URL holds no password: write it by reference (postgresql://user:env:NAME@host/db "
                                     "or user:prefect-secret:BLOCK@...), or let libpq find it (PGPASSWORD, PGPASSFILE)")
    return location


def _pg_params(url: str, source: str) -> dict[str, str]:
    from psycopg.conninfo import conninfo_to_dict  # lazily: psycopg is the optional 'postgres' extra

    try:
        return {k: str(v) for k, v in conninfo_to_dict(url).items()}
    except Exception as e:  # noqa: BLE001 - libpq's parse error; its text never echoes a password
        raise InputError(source, f"not a PostgreSQL URL libpq understands ({type(e).__name__})") from None


class _SQLite:
    """One SQLite file. A write transaction is ``BEGIN IMMEDIATE``: the database's one write lock, across processes."""

    kind = "sqlite"

    def __init__(self, path: str) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.location = path
        self.db = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level=None)
        # Switching a fresh file to WAL needs an exclusive lock; when two connections open it at the same
        # moment SQLite answers one of them "database is locked" at once, without its busy timeout (it would
        # deadlock otherwise). Ask again for a while: the other connection finishes within milliseconds.
        deadline = time.monotonic() + 30
        while True:
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        self.db.execute("PRAGMA synchronous=NORMAL")

    def execute(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
        return self.db.execute(sql, args).fetchall()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def lock(self, key: str) -> None:
        """Serialise writers of ``key``: BEGIN IMMEDIATE already holds the whole file's write lock."""

    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def close(self) -> None:
        self.db.close()


class _Postgres:
    """One PostgreSQL connection (autocommit; explicit transactions); ``lock`` is a transaction-scoped advisory lock."""

    kind = "postgresql"

    def __init__(self, url: str) -> None:
        import psycopg  # lazily: psycopg is the optional 'postgres' extra

        self._psycopg = psycopg
        check_location(url)
        params = _pg_params(url, "journal")
        ref = params.pop("password", None)
        self.location = f"postgresql://{params.get('user', '')}@{params.get('host', '')}:{params.get('port', '5432')}/" \
                        f"{params.get('dbname', '')}"
        if ref:
            params["password"] = resolve(ref, f"journal {self.location}") or ""
        params.setdefault("connect_timeout", "10")
        params.setdefault("application_name", "digestguard")
        self._params = params
        self.db = self._connect()

    def _connect(self) -> Any:
        try:
            return self._psycopg.connect(**self._params, autocommit=True)
        except self._psycopg.OperationalError as e:
            raise Unavailable(f"journal {self.location}", _first_line(e)) from None

    def execute(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
        if self.db.closed or self.db.broken:
            if self.db.info.transaction_status != self._psycopg.pq.TransactionStatus.IDLE:
                raise Unavailable(f"journal {self.location}", "connection lost inside a transaction")
            self.db = self._connect()
        try:
            cur = self.db.execute(sql.replace("?", "%s"), args)
            return cur.fetchall() if cur.description else []
        except self._psycopg.OperationalError as e:
            raise Unavailable(f"journal {self.location}", _first_line(e)) from None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self.db.closed or self.db.broken:
            self.db = self._connect()
        with self.db.transaction():
            yield

    def lock(self, key: str) -> None:
        self.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (key,))

    def now(self) -> datetime:
        """The database server's clock: every worker compares lease expiries against the same one."""
        return self.execute("SELECT clock_timestamp()")[0][0].astimezone(timezone.utc)

    def close(self) -> None:
        self.db.close()


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _migrate(db: _SQLite | _Postgres) -> int:
    """Bring the schema to ``SCHEMA_VERSION``: each missing migration once, in order, under one lock."""
    with db.transaction():
        db.lock("digestguard:journal-schema")
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, what TEXT NOT NULL, "
                   "applied_at TEXT NOT NULL)")
        have = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")[0][0]
        if have > SCHEMA_VERSION:
            raise InputError(f"journal {db.location}", f"schema version {have} is newer than this digestguard knows "
                                                       f"({SCHEMA_VERSION}): upgrade digestguard on this machine")
        for version, what, statements in MIGRATIONS:
            if version > have:
                for sql in statements[db.kind]:
                    db.execute(sql)
                db.execute("INSERT INTO schema_version (version, what, applied_at) VALUES (?,?,?)", (version, what, _now()))
    return SCHEMA_VERSION


class Journal:
    """The journal at ``location`` (a SQLite path or a PostgreSQL URL). Thread-safe; safe to share between processes."""

    def __init__(self, location: str | Path) -> None:
        text = str(location)
        self.location = text
        self.path: Path | None = None if is_postgres_url(text) else Path(text)
        self._db: _SQLite | _Postgres = _Postgres(text) if is_postgres_url(text) else _SQLite(text)
        self._lock = threading.RLock()
        with self._lock:
            _migrate(self._db)

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._db.kind

    def describe(self) -> str:
        """Where this journal lives, fit for a message (never a password)."""
        return self._db.location

    def schema_version(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")[0][0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- tables other modules own (egress baselines): plain statements, one transaction ---------
    def query(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement (``?`` placeholders on both backends) and return its rows."""
        with self._lock:
            return self._db.execute(sql, args)

    @contextmanager
    def transaction(self, lock_key: str) -> Iterator[None]:
        """One write transaction holding ``lock_key`` (so two processes writing the same rows take turns)."""
        with self._lock, self._db.transaction():
            self._db.lock(lock_key)
            yield

    # -- queries -------------------------------------------------------------------------
    def get(self, incident: str, stage: str, target: str, action: str) -> Entry | None:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM actions WHERE incident=? AND stage=? AND target=? AND action=?",
                                    (incident, stage, target, action))
        return self._entry(rows[0]) if rows else None

    def is_done(self, incident: str, stage: str, target: str, action: str) -> bool:
        """The question every side effect asks first."""
        e = self.get(incident, stage, target, action)
        return e is not None and e.status in ("done", "skipped")

    def entries(self, incident: str, stage: str | None = None) -> list[Entry]:
        q = f"SELECT {_COLUMNS} FROM actions WHERE incident=?"
        args: list[Any] = [incident]
        if stage:
            q += " AND stage=?"
            args.append(stage)
        q += " ORDER BY COALESCE(started_at, finished_at), stage, target, action"
        with self._lock:
            rows = self._db.execute(q, args)
        return [self._entry(r) for r in rows]

    def incidents(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT incident FROM actions UNION SELECT DISTINCT incident FROM events")
        return sorted(r[0] for r in rows)

    def events(self, incident: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT stage, kind, detail, at FROM events WHERE incident=? ORDER BY id", (incident,))
        return [{"stage": s, "kind": k, "detail": json.loads(d), "at": a} for s, k, d, a in rows]

    # -- writes --------------------------------------------------------------------------
    def record(self, incident: str, stage: str, target: str, action: str, status: str, *,
               detail: dict[str, Any] | None = None, approver: str | None = None, error: str | None = None) -> Entry:
        """Upsert one action's state. ``detail`` merges into what was there (ids from earlier steps stay).

        The read-merge-write is one transaction holding the row's lock, so two processes recording
        the same action never lose each other's detail.
        """
        if status not in STATUSES:
            raise InputError("journal", f"unknown status {status!r}")
        with self._lock, self._db.transaction():
            self._db.lock(f"digestguard:action:{incident}\x1f{stage}\x1f{target}\x1f{action}")
            old = self.get(incident, stage, target, action)
            merged = {**(old.detail if old else {}), **(detail or {})}
            payload = _check_detail(redact_data(merged))
            error = redact(error)
            now = _now()
            started = old.started_at if old and old.started_at else (now if status in ("started", "planned") else None)
            finished = now if status in ("done", "failed", "skipped") else None
            attempts = (old.attempts if old else 0) + (1 if status == "started" else 0)
            self._db.execute(
                f"INSERT INTO actions ({_COLUMNS}) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(incident, stage, target, action) DO UPDATE SET "
                "status=excluded.status, detail=excluded.detail, approver=COALESCE(excluded.approver, actions.approver), "
                "error=excluded.error, attempts=excluded.attempts, started_at=excluded.started_at, "
                "finished_at=excluded.finished_at",
                (incident, stage, target, action, status, payload, approver, error, attempts, started or now, finished),
            )
            return self.get(incident, stage, target, action)  # type: ignore[return-value]

    def event(self, incident: str, stage: str, kind: str, detail: dict[str, Any] | None = None) -> None:
        """A point in the incident's story that is not an idempotent action (stage started, approval asked...)."""
        payload = _check_detail(redact_data(detail or {}))
        with self._lock:
            self._db.execute("INSERT INTO events (incident, stage, kind, detail, at) VALUES (?,?,?,?,?)",
                             (incident, stage, kind, payload, _now()))

    def save_report(self, incident: str, content: str, name: str = "report.html") -> None:
        """Keep the incident's rendered report with the journal (the last one written wins). ``content`` goes through
        the redactor like every journal row: no value a run handled is stored."""
        with self._lock, self._db.transaction():
            self._db.execute("INSERT INTO reports (incident, name, content, at) VALUES (?,?,?,?) ON CONFLICT(incident, name) "
                             "DO UPDATE SET content=excluded.content, at=excluded.at", (incident, name, redact(content), _now()))

    def saved_report(self, incident: str, name: str = "report.html") -> str | None:
        """The report :meth:`save_report` kept for ``incident`` (None when no run wrote one)."""
        with self._lock:
            rows = self._db.execute("SELECT content FROM reports WHERE incident=? AND name=?", (incident, name))
        return rows[0][0] if rows else None

    @contextmanager
    def step(self, incident: str, stage: str, target: str, action: str, *,
             approver: str | None = None, detail: dict[str, Any] | None = None) -> Iterator["StepRecorder"]:
        """Record started before, done after, failed (with the error's text) when the block raises.

        ``detail`` (ids only) is written with the ``started`` row, so a crash inside the block leaves it.
        The caller checks ``is_done`` first; ``step`` does not skip by itself so that
        the caller can report "already done" in its own output.
        """
        self.record(incident, stage, target, action, "started", approver=approver, detail=detail)
        rec = StepRecorder()
        rec.detail.update(detail or {})
        try:
            yield rec
        except BaseException as e:
            self.record(incident, stage, target, action, "failed", detail=rec.detail, error=f"{type(e).__name__}: {e}"[:500])
            raise
        self.record(incident, stage, target, action, rec.status, detail=rec.detail, approver=approver)

    # -- leases: one actor per incident, one per credential ----------------------------------
    def lease(self, name: str, holder: "Holder", *, ttl: float = 60.0, wait: float = 0.0, poll: float = 0.5) -> "Lease":
        """Take the lease ``name`` for ``holder``, waiting up to ``wait`` seconds; ``LeaseHeld`` names whoever keeps it.

        A lease lives ``ttl`` seconds and is renewed every ``ttl / 3`` by a background thread while
        held, so a crashed holder frees it within ``ttl``. The same owner (a Prefect retry of the same
        flow run, on any machine) takes it over at once. Use as a context manager or call ``release``.
        """
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            held = self._take(name, holder, ttl)
            if held is None:
                return Lease(self, name, holder, ttl)
            left = deadline - time.monotonic()
            if left <= 0:
                raise LeaseHeld(name, held, wait)
            time.sleep(min(poll, left))

    def lease_holder(self, name: str) -> "LeaseInfo | None":
        """Who holds ``name`` now (None when free or expired)."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_LEASE_COLUMNS} FROM leases WHERE name=?", (name,))
            now = self._db.now()
        info = LeaseInfo(*rows[0]) if rows else None
        return info if info and info.expires_at > now else None

    def _take(self, name: str, holder: "Holder", ttl: float) -> "LeaseInfo | None":
        """One attempt: None when ``holder`` now has the lease, else the live holder that keeps it."""
        with self._lock, self._db.transaction():
            self._db.lock(f"digestguard:lease:{name}")
            now = self._db.now()
            rows = self._db.execute(f"SELECT {_LEASE_COLUMNS} FROM leases WHERE name=?", (name,))
            current = LeaseInfo(*rows[0]) if rows else None
            if current and current.owner != holder.owner and current.expires_at > now and not current.dead_here():
                return current
            since = current.since if current and current.owner == holder.owner and current.expires_at > now else _iso(now)
            self._db.execute(
                f"INSERT INTO leases ({_LEASE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET owner=excluded.owner, flow_run=excluded.flow_run, host=excluded.host, "
                "pid=excluded.pid, scope=excluded.scope, since=excluded.since, expires=excluded.expires",
                (name, holder.owner, holder.flow_run, holder.host, holder.pid, holder.scope, since,
                 _iso(now + timedelta(seconds=ttl))))
        return None

    def _renew(self, name: str, holder: "Holder", ttl: float) -> bool:
        """Push the expiry on; False when the lease is no longer ``holder``'s (it expired and someone took it)."""
        with self._lock, self._db.transaction():
            self._db.lock(f"digestguard:lease:{name}")
            now = self._db.now()
            rows = self._db.execute("SELECT owner FROM leases WHERE name=?", (name,))
            if not rows or rows[0][0] != holder.owner:
                return False
            self._db.execute("UPDATE leases SET expires=? WHERE name=? AND owner=?",
                             (_iso(now + timedelta(seconds=ttl)), name, holder.owner))
        return True

    def _release(self, name: str, holder: "Holder") -> None:
        with self._lock:
            self._db.execute("DELETE FROM leases WHERE name=? AND owner=?", (name, holder.owner))

    # -- tag timelines: what each watched tag served, as runs of sightings ---------------------
    def record_tag_observations(self, observations: list[Observation] | tuple[Observation, ...],
                                max_gap_seconds: float) -> int:
        """Store sightings; returns how many rows were added or extended (the rest were already known).

        A sighting of the digest a source's previous row for the tag shows, within ``max_gap_seconds`` of its
        end and with no other digest seen in between (by any source), extends that row; anything else is a new
        row. One transaction under one lock per batch, so two watchers at the same moment neither lose a
        sighting nor split a run twice.
        """
        ordered = sorted(observations, key=lambda o: (o.reference, o.first_at))
        changed = 0
        with self._lock, self._db.transaction():
            # one lock for the batch (a lock per tag would fill PostgreSQL's lock table for thousands of tags)
            self._db.lock("digestguard:tag-timelines")
            for o in ordered:
                changed += self._record_tag_observation(o, max_gap_seconds)
        return changed

    def _record_tag_observation(self, o: Observation, max_gap_seconds: float) -> int:
        first, last = _iso(o.first_at), _iso(max(o.first_at, o.last_at))
        began = _iso(o.began_at) if o.began_at else None
        rows = self._db.execute(
            "SELECT digest, first_at, last_at, began_at FROM tag_observations WHERE reference=? AND source=? AND detail=? "
            "AND first_at<=? ORDER BY first_at DESC LIMIT 1", (o.reference, o.source, o.detail, first))
        if rows and rows[0][0] == o.digest and (began is None or rows[0][3] == began):
            _, p_first, p_last, _ = rows[0]
            if last <= p_last:
                return 0
            gap = (datetime.fromisoformat(first) - datetime.fromisoformat(p_last)).total_seconds()
            between = self._db.execute(
                "SELECT 1 FROM tag_observations WHERE reference=? AND digest<>? AND ((first_at>? AND first_at<?) "
                "OR (last_at>? AND last_at<?) OR (first_at<=? AND last_at>=?)) LIMIT 1",
                (o.reference, o.digest, p_last, first, p_last, first, p_last, first))
            if gap <= max_gap_seconds and not between:
                self._db.execute("UPDATE tag_observations SET last_at=? WHERE reference=? AND source=? AND detail=? "
                                 "AND digest=? AND first_at=?", (last, o.reference, o.source, o.detail, o.digest, p_first))
                return 1
        before = self._db.execute("SELECT count(*) FROM tag_observations WHERE reference=?", (o.reference,))[0][0]
        self._db.execute(
            "INSERT INTO tag_observations (reference, source, detail, digest, first_at, last_at, began_at) "
            "VALUES (?,?,?,?,?,?,?) ON CONFLICT (reference, source, detail, digest, first_at) DO NOTHING",
            (o.reference, o.source, o.detail, o.digest, first, last, began))
        after = self._db.execute("SELECT count(*) FROM tag_observations WHERE reference=?", (o.reference,))[0][0]
        return int(after - before)

    def tag_observations(self, reference: str, since: datetime | None = None,
                         until: datetime | None = None) -> list[Observation]:
        """The stored sightings of ``reference`` overlapping ``[since, until]``, oldest first."""
        q = "SELECT source, detail, digest, first_at, last_at, began_at FROM tag_observations WHERE reference=?"
        args: list[Any] = [reference]
        if since is not None:
            q += " AND last_at>=?"
            args.append(_iso(since))
        if until is not None:
            q += " AND (first_at<=? OR began_at<=?)"
            args += [_iso(until), _iso(until)]
        with self._lock:
            rows = self._db.execute(q + " ORDER BY first_at, source, detail, digest", args)
        return [Observation(reference=reference, source=s, detail=d, digest=g, first_at=datetime.fromisoformat(f),
                            last_at=datetime.fromisoformat(la), began_at=datetime.fromisoformat(b) if b else None)
                for s, d, g, f, la, b in rows]

    def tag_references(self) -> list[str]:
        """Every tag the journal holds sightings of."""
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT DISTINCT reference FROM tag_observations ORDER BY reference")]

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


# --------------------------------------------------------------------------- leases


_LEASE_COLUMNS = "name, owner, flow_run, host, pid, scope, since, expires"


def _process_scope() -> str:
    """Where a pid means something: this host's name and this pid namespace (containers on one host differ)."""
    try:
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        ns = 0
    return f"{socket.gethostname()}/pidns:{ns}"


def _pid_alive(pid: int) -> bool:
    """True unless ``pid`` is certainly gone from this scope (no such process, or a zombie awaiting its parent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return True


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def lease_wait_default(fallback: float = 30.0) -> float:
    """How long a second actor waits for a held lease before refusing: ``DIGESTGUARD_LEASE_WAIT`` seconds, else 30."""
    raw = os.environ.get("DIGESTGUARD_LEASE_WAIT", "").strip()
    try:
        return max(0.0, float(raw)) if raw else fallback
    except ValueError:
        raise InputError("DIGESTGUARD_LEASE_WAIT", f"not a number of seconds: {raw[:40]!r}") from None


@dataclass(frozen=True)
class Holder:
    """Who takes a lease: a flow run (stable across Prefect retries, on any machine) or else this one process."""

    owner: str
    flow_run: str | None
    host: str
    pid: int
    scope: str = field(default_factory=_process_scope)

    @classmethod
    def here(cls, flow_run: str | None = None) -> "Holder":
        """This process, as the flow run ``flow_run`` when it runs one."""
        host, pid = socket.gethostname(), os.getpid()
        owner = f"flow-run:{flow_run}" if flow_run else f"process:{host}:{pid}:{uuid.uuid4().hex[:12]}"
        return cls(owner=owner, flow_run=flow_run, host=host, pid=pid)


@dataclass(frozen=True)
class LeaseInfo:
    name: str
    owner: str
    flow_run: str | None
    host: str
    pid: int
    scope: str
    since: str
    expires: str

    @property
    def expires_at(self) -> datetime:
        return datetime.fromisoformat(self.expires)

    def dead_here(self) -> bool:
        """The holder ran in this host's pid namespace and its process is gone: its lease need not lapse first."""
        return self.scope == _process_scope() and self.pid != os.getpid() and not _pid_alive(self.pid)

    def who(self) -> str:
        run = f"flow run {self.flow_run}" if self.flow_run else "a process outside any flow run"
        return f"{run} on host {self.host} (pid {self.pid}) since {self.since}"


class LeaseHeld(DigestguardError):
    """Another actor holds the lease: the one line names it (flow run, host, since) and when the lease lapses."""

    def __init__(self, name: str, holder: LeaseInfo, waited: float) -> None:
        self.name, self.holder, self.waited = name, holder, waited
        super().__init__(f"{name} is held by {holder.who()}, until {holder.expires} unless renewed "
                         f"(waited {waited:g} s): let that run finish or cancel it, then run again")


class LeaseLost(DigestguardError):
    """The lease expired while held (the holder stalled past its ttl) and another actor took it."""


class Lease:
    """A held lease: renewed in the background until ``release`` (or the end of a ``with`` block).

    Renewal also stops when the thread that took the lease has ended, so a lease whose release
    was skipped by a crash inside the holder's own clean-up still lapses after ``ttl``.
    """

    def __init__(self, journal: Journal, name: str, holder: Holder, ttl: float) -> None:
        self.journal, self.name, self.holder, self.ttl = journal, name, holder, ttl
        self.lost = False
        self._stop = threading.Event()
        self._owner_thread = threading.current_thread()
        self._thread = threading.Thread(target=self._keep, name=f"lease {name}", daemon=True)
        self._thread.start()

    def _keep(self) -> None:
        interval = max(0.05, self.ttl / 3)
        while not self._stop.wait(interval):
            if not self._owner_thread.is_alive():
                return
            try:
                if not self.journal._renew(self.name, self.holder, self.ttl):
                    self.lost = True
                    return
            except DigestguardError:  # the journal is unreachable for a moment: the next tick tries again
                continue
            except Exception:  # noqa: BLE001 - the journal was closed under us: nothing left to renew
                return

    def check(self) -> None:
        """Raise ``LeaseLost`` when another actor has taken the lease since."""
        if self.lost:
            raise LeaseLost(f"{self.name}: the lease lapsed while held and another actor took it")

    def release(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=5)
        if not self.lost:
            self.journal._release(self.name, self.holder)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
