"""The one local Prefect server the on-call's commands share, found through a small state file.

With no ``PREFECT_API_URL`` set, ``digestguard respond`` starts (or reuses) one ``prefect server start``
on loopback, with its UI, and records where it is in ``$PREFECT_HOME/digestguard-server.json``;
``approve``, ``confirm``, ``journal`` and ``report`` read that file instead of starting a temporary server of
their own (which took 21-46 s and fought the running one over the same SQLite database). The file also
remembers each incident's journal, so ``journal INCIDENT`` and ``report INCIDENT`` need no ``--inventory``.

No Prefect or httpx import here (standard library only): ``approve`` must answer in well under two seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

STATE_FILE = "digestguard-server.json"


def prefect_home() -> Path:
    """Prefect's home folder (``PREFECT_HOME``, default ``~/.prefect``), where the state file lives."""
    return Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()


def state_path() -> Path:
    return prefect_home() / STATE_FILE


def read_state() -> dict[str, Any]:
    """The state file's content ({} when there is none or it is unreadable)."""
    try:
        data = json.loads(state_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One writer of the state file (and one server start) at a time, across processes."""
    home = prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / (STATE_FILE + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_state(data: dict[str, Any]) -> None:
    path = state_path()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def healthy(url: str, timeout: float = 1.0) -> bool:
    """Whether a Prefect server answers ``url/api/health``."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/api/health", timeout=timeout) as r:  # noqa: S310 - loopback
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def api_url() -> str | None:
    """The Prefect API the commands talk to: ``PREFECT_API_URL`` if set, else the recorded local server if it answers."""
    env = os.environ.get("PREFECT_API_URL")
    if env:
        return env.rstrip("/")
    url = read_state().get("url")
    if url and healthy(url):
        return f"{url}/api"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_server(timeout: float = 180.0) -> str:
    """The local server's base URL (``http://127.0.0.1:PORT``): the recorded one if it answers, else a new one.

    The server is started detached (its own session, log in ``$PREFECT_HOME/digestguard-server.log``) so it
    outlives this command and later ``respond`` runs reuse it. Started at most once at a time (file lock).
    """
    with _locked():
        state = read_state()
        if state.get("url") and healthy(state["url"]):
            return state["url"]
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "true",
               "PREFECT_UI_API_URL": f"{url}/api", "PREFECT_API_URL": f"{url}/api"}
        log = open(prefect_home() / "digestguard-server.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while not healthy(url, timeout=2):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"the local Prefect server did not start (see {prefect_home() / 'digestguard-server.log'})")
            time.sleep(0.5)
        _write_state({**state, "url": url, "pid": proc.pid, "started_at": time.time()})
        return url


def _is_our_server(pid: int, url: str) -> bool:
    """Whether ``pid`` is still the ``prefect server start`` recorded for ``url`` (not a reused pid)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc here: trust the pid if it is alive
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    port = url.rsplit(":", 1)[-1].encode()
    return b"prefect" in b" ".join(cmd) and b"server" in cmd and port in cmd


def _gone(pid: int) -> bool:
    """Whether the server's process group has no live (non-zombie) member left."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap it when this process started it
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    for p in proc.iterdir():
        if not p.name.isdigit():
            continue
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pid) and fields[0] != "Z":
            return False
    return True


def server_status() -> dict[str, Any]:
    """``{"state": "running"|"not answering"|"not running", "url", "pid", "state_file"}`` of the recorded server."""
    state = read_state()
    url, pid = state.get("url"), state.get("pid")
    out: dict[str, Any] = {"state": "not running", "url": url, "pid": pid, "state_file": str(state_path())}
    if url and healthy(url):
        out["state"] = "running"
    elif url and isinstance(pid, int) and _is_our_server(pid, url):
        out["state"] = "not answering"  # starting, or hung: ``stop`` still ends it
    if out["state"] == "not running":
        out["url"] = out["pid"] = None
    return out


def stop_server(timeout: float = 20.0, home: Path | None = None) -> dict[str, Any]:
    """Stop the recorded local server (its whole process group: SIGTERM, then SIGKILL after ``timeout``).

    Idempotent: with no server recorded, or one already gone, it changes nothing but forgetting its url/pid.
    The state file keeps the incidents' journals. Returns ``{"stopped": bool, "url", "pid", "killed": bool}``.
    With ``home``, acts on that PREFECT_HOME instead of this process's.
    """
    if home is not None:
        old = os.environ.get("PREFECT_HOME")
        os.environ["PREFECT_HOME"] = str(home)
        try:
            return stop_server(timeout)
        finally:
            if old is None:
                os.environ.pop("PREFECT_HOME", None)
            else:
                os.environ["PREFECT_HOME"] = old
    if not state_path().exists():
        return {"stopped": False, "url": None, "pid": None, "killed": False}
    with _locked():
        state = read_state()
        url, pid = state.get("url"), state.get("pid")
        out = {"stopped": False, "url": url, "pid": pid, "killed": False}
        if url and isinstance(pid, int) and pid > 1 and _is_our_server(pid, url):
            _signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while not _gone(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not _gone(pid):
                _signal_group(pid, signal.SIGKILL)
                out["killed"] = True
                deadline = time.monotonic() + 5
                while not _gone(pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
            out["stopped"] = True
        if "url" in state or "pid" in state:
            _write_state({k: v for k, v in state.items() if k not in ("url", "pid", "started_at")})
        return out


def _signal_group(pid: int, sig: int) -> None:
    """Signal the server's process group (it was started in a session of its own), else the process."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def use_server(url: str) -> None:
    """Point this process's Prefect client (and the links it prints) at ``url``; call before Prefect is imported."""
    os.environ["PREFECT_API_URL"] = f"{url}/api"
    os.environ.setdefault("PREFECT_UI_URL", url)


def remember_incident(incident: str, journal: Path) -> None:
    """Record which journal an incident writes to (for ``journal``/``report`` without ``--inventory``)."""
    with _locked():
        state = read_state()
        state.setdefault("incidents", {})[incident] = str(journal)
        _write_state(state)


def journal_of(incident: str) -> Path | None:
    """The journal ``respond`` recorded for ``incident``, if any."""
    path = (read_state().get("incidents") or {}).get(incident)
    return Path(path) if path else None
