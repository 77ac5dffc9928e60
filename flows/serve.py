"""``digestguard serve``: a local Prefect server with its UI, serving the playbook's flows.

For teams without a Prefect server of their own. Teams with one use
``prefect deploy`` with ``deployments/prefect.yaml`` instead (see the README).

Prefect and the flows are imported inside the functions on purpose: Prefect reads
``PREFECT_API_URL`` when it loads, and this process learns the URL only once the
server it starts answers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx


def start_server(port: int, timeout: float = 120.0) -> subprocess.Popen:
    """``prefect server start`` on loopback; returns once /api/health answers."""
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "true",
           "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api"}
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}/api/health"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"prefect server did not answer {url} within {timeout:.0f} s")


SERVE_TAG = "digestguard-serve"  # marks the deployments `digestguard serve` made; it touches no others


class NotOurs(RuntimeError):
    """A deployment of the same name exists and `digestguard serve` did not create it."""


def build_deployments(inventory: str | None = None) -> list:
    """The three served deployments, each tagged ``SERVE_TAG``. ``watch`` is scheduled only with an inventory."""
    from flows.drill.flow import drill_flow
    from flows.incident_response import incident_response
    from flows.watch import watch

    tags = [SERVE_TAG]
    if inventory:
        watch_dep = watch.to_deployment(name="watch", interval=300, tags=tags,
                                        parameters={"inventory": str(Path(inventory).expanduser().resolve())})
    else:  # no inventory: no schedule (a run every 5 minutes would fail); runnable from the UI's form
        watch_dep = watch.to_deployment(name="watch", tags=tags)
    return [
        incident_response.to_deployment(name="incident-response", parameters={"mode": "dry-run"}, tags=tags),
        watch_dep,
        drill_flow.to_deployment(name="drill", tags=tags),
    ]


def check_not_overwriting(deployments: list) -> None:
    """Refuse, in one line, when a deployment of the same flow and name exists without ``SERVE_TAG``."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for d in deployments:
            full = f"{d.flow_name}/{d.name}"
            try:
                existing = client.read_deployment_by_name(full)
            except ObjectNotFound:
                continue
            if SERVE_TAG not in (existing.tags or []):
                pool = f" (work pool {existing.work_pool_name!r})" if existing.work_pool_name else ""
                raise NotOurs(f"deployment {full}{pool} already exists on this server and was not created by "
                              f"`digestguard serve` (no {SERVE_TAG!r} tag): refusing to overwrite it; run its pool's "
                              "workers instead, or serve against a server of your own")


def serve_all(port: int = 4200, inventory: str | None = None) -> None:
    """Start the server, point this process at it, and serve the deployments until interrupted."""
    proc = start_server(port)
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
    os.environ.setdefault("PREFECT_UI_URL", f"http://127.0.0.1:{port}")
    try:
        from prefect import serve

        deployments = build_deployments(inventory)
        check_not_overwriting(deployments)
        print(f"Prefect UI: http://127.0.0.1:{port}  (Ctrl-C stops the server)")
        if not inventory:
            print("watch: not scheduled (no --inventory); run it from the UI with an inventory")
        serve(*deployments)
    finally:
        proc.terminate()
        proc.wait(15)
