"""The journal's two homes, for tests that must hold on both: a SQLite file and a real PostgreSQL database.

``journal_location`` is parametrized: every test asking for it runs once on
SQLite (a file in the test's tmp dir) and once on PostgreSQL (a fresh database
on the session's real server from ``tests/support/vault.py``, reached by a URL
whose password is a reference, ``env:DG_TEST_JOURNAL_PASSWORD``, as a team's
inventory would write it).
"""

from __future__ import annotations

import uuid

import pytest

PASSWORD_ENV = "DG_TEST_JOURNAL_PASSWORD"


def fresh_pg_database(postgres, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new empty database on the session's server; its URL names the password by reference."""
    import psycopg

    name = f"dgj_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    monkeypatch.setenv(PASSWORD_ENV, postgres.password)
    return f"postgresql://{postgres.superuser}:env:{PASSWORD_ENV}@{postgres.host}:{postgres.port}/{name}?sslmode=disable"


@pytest.fixture(params=["sqlite", "postgresql"])
def journal_location(request: pytest.FixtureRequest, tmp_path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Where a test's journal lives: a SQLite path, then a PostgreSQL URL (same test, both backends)."""
    if request.param == "sqlite":
        return str(tmp_path / "journal.sqlite")
    return fresh_pg_database(request.getfixturevalue("postgres"), monkeypatch)
