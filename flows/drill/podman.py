"""A real Docker-compatible engine: podman's API service, all state in a temp dir, for the whole session.

Why podman: there is no Docker engine on these machines, and podman speaks the
Docker Engine API the ``docker`` SDK uses (``version="1.41"``), so
``integrations/docker_engine.py`` is exercised through the real SDK and a real
image store. Containers can be created and listed but not started here (crun
cannot set rlimits in this sandbox), which is all the purge path needs.

Set-up (see shared/notes/local-services.md): storage.conf with the vfs driver,
containers.conf with cgroupfs and a file events logger, registries.conf marking
the session's local registry insecure, every path (graphroot, runroot, tmp,
network config, cache) under a temp dir so nothing touches /var/lib/containers.

``podman_engine`` returns a :class:`PodmanService`: ``url`` is the
``unix:///.../podman.sock`` to hand to ``DockerClient(base_url=...)``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker


@dataclass
class PodmanService:
    url: str
    socket: Path
    root: Path
    env: dict[str, str] = field(repr=False)
    process: subprocess.Popen = field(repr=False)

    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run the podman CLI against the same storage (for set-up the API cannot do)."""
        return subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, check=check, timeout=120)


def _write_config(root: Path, insecure_registries: list[str]) -> dict[str, str]:
    storage = root / "storage"
    run = root / "run"
    for d in (storage, run, root / "tmp", root / "networks", root / "volumes", root / "libpod", root / "runtime"):
        d.mkdir(parents=True, exist_ok=True)
    (root / "storage.conf").write_text(
        "[storage]\n"
        'driver = "vfs"\n'
        f'graphroot = "{storage}"\n'
        f'runroot = "{run}"\n'
    )
    (root / "containers.conf").write_text(
        "[containers]\n"
        'netns = "host"\n'
        "[network]\n"
        f'network_config_dir = "{root / "networks"}"\n'
        "[engine]\n"
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        f'events_logfile_path = "{root / "events.log"}"\n'
        f'tmp_dir = "{root / "libpod"}"\n'
        f'static_dir = "{storage / "libpod"}"\n'
        f'volume_path = "{root / "volumes"}"\n'
        f'image_copy_tmp_dir = "{root / "tmp"}"\n'
    )
    regs = "".join(f'[[registry]]\nlocation = "{r}"\ninsecure = true\n' for r in insecure_registries)
    (root / "registries.conf").write_text('unqualified-search-registries = []\n' + regs)
    env = dict(os.environ)
    env.update({
        "CONTAINERS_STORAGE_CONF": str(root / "storage.conf"),
        "CONTAINERS_CONF": str(root / "containers.conf"),
        "CONTAINERS_REGISTRIES_CONF": str(root / "registries.conf"),
        "XDG_RUNTIME_DIR": str(root / "runtime"),
        "TMPDIR": str(root / "tmp"),
    })
    return env


# Paths podman 4.3 writes whatever its configuration says (blob-info cache, netavark run dir).
_HOST_PATHS = ("/var/lib/containers", "/run/containers")


def _isolated(cmd: list[str], root: Path) -> list[str]:
    """Wrap ``cmd`` in a private mount namespace with temp dirs bound over :data:`_HOST_PATHS`.

    Why: podman 4.3 writes its blob-info cache to /var/lib/containers/cache and
    netavark state to /run/containers/networks regardless of storage.conf. With
    ``unshare`` (root) those writes land in ``root`` instead; without it (the
    probe fails) the command runs as is and those two small paths are touched.
    """
    if shutil.which("unshare") is None:
        return cmd
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode != 0:
        return cmd
    script = []
    for i, host in enumerate(_HOST_PATHS):
        local = root / f"host{i}"
        local.mkdir(exist_ok=True)
        script.append(f"mkdir -p {shlex.quote(host)} && mount --bind {shlex.quote(str(local))} {shlex.quote(host)}")
    script.append("exec " + " ".join(shlex.quote(c) for c in cmd))
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", " && ".join(script)]


def start_podman(root: Path, insecure_registries: list[str], timeout: float = 30.0) -> PodmanService:
    """Start ``podman system service`` on a unix socket under ``root``; RuntimeError naming the package if absent."""
    if shutil.which("podman") is None:
        raise RuntimeError("`podman` not found: install the Debian package `podman` (apt-get install -y podman)")
    env = _write_config(root, insecure_registries)
    sock = root / "podman.sock"
    log = open(root / "podman.log", "ab")
    cmd = ["podman", "--log-level=error", "system", "service", "--time=0", f"unix://{sock}"]
    proc = subprocess.Popen(_isolated(cmd, root), env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    deadline = time.monotonic() + timeout

    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"podman system service exited with {proc.returncode}: {(root / 'podman.log').read_text()[-2000:]}")
        if sock.exists():
            try:
                client = docker.DockerClient(base_url=f"unix://{sock}", version="1.41", timeout=5)
                if client.ping():
                    client.close()
                    return PodmanService(f"unix://{sock}", sock, root, env, proc)
            except Exception:
                pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"podman system service did not answer /_ping in {timeout}s")


def stop_podman(svc: PodmanService) -> None:
    if svc.process.poll() is None:
        svc.process.terminate()
        try:
            svc.process.wait(10)
        except subprocess.TimeoutExpired:
            svc.process.kill()
            svc.process.wait(5)


