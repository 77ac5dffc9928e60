"""The journal on SQLite and on a real PostgreSQL (``journal_location`` runs each test on both):
versioned migrations applied once even when processes start together, concurrent writers that
lose nothing, a location that never carries a password, and every way of naming where it lives.
"""

import json
import socket
import sqlite3
import subprocess
import sys
import threading

import pytest

from digestguard.errors import InputError, Unavailable
from digestguard.inventory import parse_inventory
from digestguard.journal import JOURNAL_ENV, MIGRATIONS, SCHEMA_VERSION, Journal, is_postgres_url
from tests.support.journal import PASSWORD_ENV


def _versions(location: str) -> list[int]:
    j = Journal(location)
    rows = j._db.execute("SELECT version FROM schema_version ORDER BY version")
    j.close()
    return [r[0] for r in rows]


def test_each_migration_is_applied_once(journal_location):
    assert _versions(journal_location) == [m[0] for m in MIGRATIONS]
    j = Journal(journal_location)
    j.record("inc", "rotate", "t", "a", "done", detail={"version": 1})
    j.close()
    assert _versions(journal_location) == [m[0] for m in MIGRATIONS]  # a second open changes nothing
    assert Journal(journal_location).get("inc", "rotate", "t", "a").detail == {"version": 1}


def test_processes_starting_together_migrate_once(journal_location):
    code = ("import sys; from digestguard.journal import Journal; j = Journal(sys.argv[1]); "
            "j.record('inc', 'rotate', sys.argv[2], 'a', 'done'); print(j.schema_version())")
    procs = [subprocess.Popen([sys.executable, "-c", code, journal_location, f"t{i}"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [e for _, e in outs]
    assert {o.strip() for o, _ in outs} == {str(SCHEMA_VERSION)}
    assert _versions(journal_location) == [m[0] for m in MIGRATIONS]
    assert {e.target for e in Journal(journal_location).entries("inc")} == {"t0", "t1", "t2", "t3"}


def test_a_newer_schema_is_refused_not_clobbered(journal_location):
    j = Journal(journal_location)
    j._db.execute("INSERT INTO schema_version (version, what, applied_at) VALUES (?,?,?)", (SCHEMA_VERSION + 5, "future", "x"))
    j.close()
    with pytest.raises(InputError, match=f"schema version {SCHEMA_VERSION + 5} is newer"):
        Journal(journal_location)


def test_concurrent_writers_of_one_action_lose_no_detail(journal_location):
    """Eight threads, each with its own connection, merge keys into the same row: every key survives."""
    journals = [Journal(journal_location) for _ in range(8)]
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for k in range(10):
                journals[n].record("inc", "rotate", "vault:kv/ci", "write-version", "started", detail={f"w{n}_{k}": k})
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    e = Journal(journal_location).get("inc", "rotate", "vault:kv/ci", "write-version")
    assert set(e.detail) == {f"w{n}_{k}" for n in range(8) for k in range(10)} and e.attempts == 80


def test_text_orders_the_same_on_both(journal_location):
    j = Journal(journal_location)
    for target in ["b", "B", "a", "_x", "Z", "é"]:
        j.record("inc", "purge", target, "delete", "planned")
    rows = j._db.execute("SELECT target FROM actions ORDER BY target")
    assert [r[0] for r in rows] == sorted(["b", "B", "a", "_x", "Z", "é"])  # byte order, as SQLite's BINARY


def test_an_old_sqlite_journal_without_versions_is_adopted(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0][2]["sqlite"][0] + ";" + MIGRATIONS[0][2]["sqlite"][1] + ";")
    db.execute("INSERT INTO actions (incident, stage, target, action, status) VALUES ('inc', 'rotate', 't', 'a', 'done')")
    db.commit()
    db.close()
    j = Journal(path)
    assert j.is_done("inc", "rotate", "t", "a") and j.schema_version() == SCHEMA_VERSION


# --------------------------------------------------------------------------- where the journal lives, and its password


def test_a_literal_password_is_refused_everywhere(monkeypatch, tmp_path):
    url = "postgresql://dg:hunter2secret@127.0.0.1:1/dg"
    with pytest.raises(InputError, match="holds no password") as e:
        Journal(url)
    assert "hunter2secret" not in str(e.value)
    with pytest.raises(ValueError, match="holds no password") as e:
        parse_inventory({"journal": url}, "inv.yaml", tmp_path)
    assert "hunter2secret" not in str(e.value)
    monkeypatch.setenv(JOURNAL_ENV, "postgresql://dg@127.0.0.1:1/dg?password=hunter2secret")
    with pytest.raises(InputError, match="holds no password") as e:
        parse_inventory({}, "inv.yaml", tmp_path).journal_location()
    assert "hunter2secret" not in str(e.value)


def test_a_password_reference_that_is_unset_names_the_reference(monkeypatch):
    monkeypatch.delenv("DG_NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(InputError, match="DG_NOT_SET_ANYWHERE is not set"):
        Journal("postgresql://dg:env:DG_NOT_SET_ANYWHERE@127.0.0.1:1/dg")


def test_libpq_pgpassword_and_pgpassfile_are_honoured(postgres, monkeypatch, tmp_path):
    from tests.support.journal import fresh_pg_database

    url = fresh_pg_database(postgres, monkeypatch).replace(f":env:{PASSWORD_ENV}", "")
    monkeypatch.setenv("PGPASSWORD", postgres.password)
    Journal(url).record("inc", "purge", "t", "a", "done")
    monkeypatch.delenv("PGPASSWORD")
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"{postgres.host}:{postgres.port}:*:{postgres.superuser}:{postgres.password}\n")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    assert Journal(url).is_done("inc", "purge", "t", "a")
    passfile.write_text(f"{postgres.host}:{postgres.port}:*:{postgres.superuser}:wrong\n")
    with pytest.raises(Unavailable, match="password authentication failed") as e:
        Journal(url)
    assert postgres.password not in str(e.value)


def test_an_unreachable_database_is_unavailable_not_a_hang():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(Unavailable, match=f"journal postgresql://dg@127.0.0.1:{port}/dg"):
        Journal(f"postgresql://dg@127.0.0.1:{port}/dg?connect_timeout=3")


def test_where_the_journal_lives(monkeypatch, tmp_path):
    monkeypatch.delenv(JOURNAL_ENV, raising=False)
    inv = parse_inventory({}, "inv.yaml", tmp_path)
    assert inv.journal_location() == str((tmp_path / ".digestguard/journal.sqlite").resolve())
    inv = parse_inventory({"journal": "state/j.db"}, "inv.yaml", tmp_path)
    assert inv.journal_location() == str((tmp_path / "state/j.db").resolve()) and inv.journal_path() == tmp_path / "state/j.db"
    url = "postgresql://dg:env:PW@db.example:5432/dg"
    inv = parse_inventory({"journal": url}, "inv.yaml", tmp_path)
    assert inv.journal_location() == url and is_postgres_url(inv.journal_location())
    with pytest.raises(InputError, match="on PostgreSQL"):
        inv.journal_path()
    monkeypatch.setenv(JOURNAL_ENV, "postgresql://team@shared:5432/dg")  # the environment wins over the file
    assert inv.journal_location() == "postgresql://team@shared:5432/dg"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(JOURNAL_ENV, "here.sqlite")
    assert inv.journal_location() == str(tmp_path / "here.sqlite")


def test_the_cli_reads_the_journal_named_by_the_environment(journal_location, monkeypatch, tmp_path):
    Journal(journal_location).record("inc-7", "purge", "mirror/kics@sha256:ab", "delete-manifest", "done", approver="alice")
    monkeypatch.setenv(JOURNAL_ENV, journal_location)
    monkeypatch.chdir(tmp_path)
    r = subprocess.run([sys.executable, "-m", "flows.cli", "journal", "inc-7", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["actions"][0]["target"] == "mirror/kics@sha256:ab" and out["actions"][0]["approver"] == "alice"
    r = subprocess.run([sys.executable, "-m", "flows.cli", "report", "inc-7", "--out", str(tmp_path / "r.html")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "delete-manifest" in (tmp_path / "r.html").read_text()


def test_two_journals_opening_a_fresh_sqlite_file_at_once_both_work(tmp_path):
    """Two workers opening a new journal file at the same moment: switching it to WAL needs an exclusive lock,
    and SQLite answers one of them "database is locked" at once (no busy wait, it would deadlock). That made one
    of two concurrent runs die before it started (tests/integration/test_rotate_concurrent.py's None result)."""
    import threading

    from digestguard.journal import Journal

    failures: list[str] = []
    for i in range(60):
        path = tmp_path / f"j{i}.sqlite"
        barrier = threading.Barrier(3)

        def open_it(path=path, barrier=barrier) -> None:
            barrier.wait()
            try:
                Journal(path).record("inc", "rotate", "secret:x", f"a{threading.get_ident()}", "done")
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                failures.append(f"{type(e).__name__}: {e}")

        threads = [threading.Thread(target=open_it) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(Journal(path).entries("inc")) == 3, i
    assert failures == []
