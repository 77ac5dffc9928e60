"""Shared test set-up: each real service starts once per test session.

Fixture modules live in ``tests/support/`` (one per service family) and are
loaded here so any test can ask for them by name.
"""

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator

import pytest

# The session moto server has IAM authentication off (it accepts any key), so an exposed IAM key's
# probe never turns "refused" there: re-probing it for the production 30 s would only slow the suite.
# Tests of proof of death use issuers that really refuse (tests/support/aws.py: moto_iam_auth).
os.environ.setdefault("DIGESTGUARD_PROBE_WAIT_SECONDS", "1")

# Marks every process this test session starts (children inherit the environment): the clean-up below stops
# only local Prefect servers that carry this session's mark, never another session's or a person's own.
SESSION_MARK = "DIGESTGUARD_TEST_SESSION"
os.environ[SESSION_MARK] = uuid.uuid4().hex

# The session's own PREFECT_HOME (unless one is set): a `respond` subprocess of a test records its local server
# there, never in the ~/.prefect that a person, or another test session on this machine, shares and reuses.
_OWN_PREFECT_HOME = None if os.environ.get("PREFECT_HOME") else tempfile.mkdtemp(prefix="digestguard-tests-prefect-")
if _OWN_PREFECT_HOME:
    os.environ["PREFECT_HOME"] = _OWN_PREFECT_HOME

pytest.register_assert_rewrite("tests.support")

# Every fixture module in tests/support (one per service family) is a plugin.
pytest_plugins = sorted(
    f"tests.support.{p.stem}"
    for p in (pathlib.Path(__file__).parent / "support").glob("*.py")
    if p.stem != "__init__"
)


def _left_behind_local_servers() -> list[pathlib.Path]:
    """PREFECT_HOMEs of the local Prefect servers (``flows.local_server.ensure_server``) this session started
    that still run: a ``prefect server start`` process carrying this session's mark and recorded, by pid, in
    its home's ``digestguard-server.json``. ``respond`` starts them detached on purpose, so nothing else ends them."""
    from flows.local_server import STATE_FILE

    homes = []
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if b"prefect" not in b" ".join(argv) or b"server" not in argv or b"start" not in argv:
                continue
            env = dict(e.decode(errors="replace").split("=", 1)
                       for e in (proc / "environ").read_bytes().split(b"\0") if b"=" in e)
        except OSError:
            continue
        if env.get(SESSION_MARK) != os.environ[SESSION_MARK]:
            continue
        home = pathlib.Path(env.get("PREFECT_HOME") or pathlib.Path(env.get("HOME", "/")) / ".prefect").expanduser()
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if json.loads((home / STATE_FILE).read_text()).get("pid") == int(proc.name):
                homes.append(home)
    return homes


def stop_left_behind_local_servers() -> list[pathlib.Path]:
    """Stop (cleanly, through ``flows.local_server.stop_server``) every local server this session left running."""
    from flows.local_server import stop_server

    homes = _left_behind_local_servers()
    for home in homes:
        stop_server(home=home)
    return homes


@pytest.fixture(scope="module", autouse=True)
def _no_local_server_outlives_its_module() -> Iterator[None]:
    """After each test module (and so at the session's end too), stop the local Prefect servers its ``respond``
    subprocesses left behind: a leaked server keeps its SQLite database, ports and CPU busy for every later test."""
    yield
    if pathlib.Path("/proc").is_dir():
        stop_left_behind_local_servers()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Remove the session's own PREFECT_HOME once every server in it has been stopped."""
    if _OWN_PREFECT_HOME:
        if pathlib.Path("/proc").is_dir():
            stop_left_behind_local_servers()
        shutil.rmtree(_OWN_PREFECT_HOME, ignore_errors=True)
