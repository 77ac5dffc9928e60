"""PostgreSQL as an issuer: set a role's password, test a login, read the server's connection log.

A role's password is the credential; the server is its issuer. ``try_login`` is the
proof-of-death probe (an old password must be refused at login, SQLSTATE 28P01);
``set_role_password`` is the rotation (``ALTER ROLE ... PASSWORD`` with a SCRAM-SHA-256
verifier computed here, so the plain password never appears in a server log even with
``log_statement=all``); ``connection_log`` reads the ``log_connections`` lines
("connection authorized: user=...") of one role, the trail that answers "was it used?".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import psycopg
from psycopg import sql

from digestguard.errors import AuthError, InputError, NotFound, Unavailable
from integrations._secret_values import SecretLike, reveal

__all__ = ["ConnectionLine", "connection_log", "scram_verifier", "set_role_password", "try_login"]

_REFUSED_STATES = {"28P01", "28000"}  # invalid_password, invalid_authorization_specification
_ROLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$")


@dataclass(frozen=True)
class Server:
    """Where the issuer listens (no credential here)."""

    host: str
    port: int = 5432
    dbname: str = "postgres"

    def conninfo(self, user: str, password: str, timeout: float) -> str:
        return psycopg.conninfo.make_conninfo(host=self.host, port=self.port, dbname=self.dbname, user=user,
                                              password=password, connect_timeout=max(1, int(timeout)))


def _check_role(role: str) -> str:
    if not _ROLE.match(role or ""):
        raise InputError("postgres role", f"not a plain role name: {role!r}")
    return role


def _source(server: Server, role: str) -> str:
    return f"postgres {server.host}:{server.port} role {role}"


def try_login(server: Server, role: str, password: SecretLike, *,
              timeout: float = 5) -> tuple[Literal["accepted", "refused"], str]:
    """Log in as ``role`` once: ``accepted`` or ``refused`` (with the SQLSTATE); no answer raises ``Unavailable``."""
    _check_role(role)
    try:
        with psycopg.connect(server.conninfo(role, reveal(password, source="postgres password"), timeout), autocommit=True) as c:
            c.execute("SELECT 1")
    except psycopg.OperationalError as e:
        state = getattr(e, "sqlstate", None)
        text = str(e)
        if state in _REFUSED_STATES or "password authentication failed" in text or "no pg_hba.conf entry" in text:
            return "refused", state or "28P01"
        raise Unavailable(_source(server, role), f"no login answer: {type(e).__name__}") from None
    return "accepted", "SELECT 1"


def scram_verifier(password: str, *, iterations: int = 4096, salt: bytes | None = None) -> str:
    """The ``SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`` PostgreSQL stores for ``password`` (RFC 5802/7677)."""
    salt = salt or secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored)}:{b64(server_key)}"


def set_role_password(server: Server, admin_user: str, admin_password: SecretLike, role: str, new_password: SecretLike,
                      *, timeout: float = 10) -> None:
    """``ALTER ROLE role PASSWORD '<scram verifier>'`` as the admin: the old password stops working at once."""
    _check_role(role)
    verifier = scram_verifier(reveal(new_password, source="new postgres password"))
    try:
        with psycopg.connect(server.conninfo(admin_user, reveal(admin_password, source="postgres admin password"), timeout),
                             autocommit=True) as c:
            exists = c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            if not exists:
                raise NotFound(_source(server, role), "no such role", 404)
            c.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(verifier)))
    except psycopg.OperationalError as e:
        if getattr(e, "sqlstate", None) in _REFUSED_STATES or "password authentication failed" in str(e):
            raise AuthError(_source(server, admin_user), "the admin login was refused", 401) from None
        raise Unavailable(_source(server, role), f"no answer: {type(e).__name__}") from None
    except psycopg.Error as e:
        why = getattr(e, "sqlstate", None) or type(e).__name__
        raise AuthError(_source(server, role), f"ALTER ROLE refused: {why}") from None


@dataclass(frozen=True)
class ConnectionLine:
    """One "connection authorized" line of the server log (no secret in it: PostgreSQL never logs passwords there)."""

    at: datetime
    user: str
    database: str
    line: str


_LINE = re.compile(r"^(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?)(?: (?P<tz>[A-Z]{2,5}|[+-]\d\d(?::?\d\d)?))?\b.*?"
                   r"connection authorized: user=(?P<user>\S+)(?: database=(?P<db>\S+))?")


def _parse_ts(ts: str, tz: str | None) -> datetime | None:
    try:
        at = datetime.fromisoformat(ts)
    except ValueError:
        return None
    if tz in (None, "UTC", "GMT", "Z"):
        return at.replace(tzinfo=timezone.utc)
    if tz and tz[0] in "+-":
        offset = tz if ":" in tz or len(tz) == 3 else f"{tz[:3]}:{tz[3:]}"
        return datetime.fromisoformat(f"{ts}{offset}").astimezone(timezone.utc)
    return None  # a named zone other than UTC: the caller cannot place it in time, so it is skipped, not guessed


def connection_log(path: str | Path, role: str) -> Iterator[ConnectionLine]:
    """Every ``connection authorized`` line of ``role`` in a log written with ``log_connections=on`` (``%m`` prefix, UTC)."""
    _check_role(role)
    p = Path(path)
    if not p.is_file():
        raise NotFound(f"postgres log {p}", "no such file", 404)
    with p.open(encoding="utf-8", errors="replace") as f:
        for raw in f:
            m = _LINE.search(raw)
            if not m or m.group("user") != role:
                continue
            at = _parse_ts(m.group("ts"), m.group("tz"))
            if at is not None:
                yield ConnectionLine(at=at, user=role, database=m.group("db") or "", line=raw.rstrip("\n")[:300])
