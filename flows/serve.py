"""``digestguard serve``: a local Prefect server with its UI, serving the playbook's flows.

For teams without a Prefect server of their own. Teams with one use
``prefect deploy`` with ``deployments/prefect.yaml`` instead (see the README).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
from prefect import serve

from flows.drill.flow import drill_flow
from flows.incident_response import incident_response
from flows.watch import watch


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


def serve_all(port: int = 4200) -> None:
    """Start the server, point this process at it, and serve the deployments until interrupted."""
    proc = start_server(port)
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
    os.environ.setdefault("PREFECT_UI_URL", f"http://127.0.0.1:{port}")
    try:


        print(f"Prefect UI: http://127.0.0.1:{port}  (Ctrl-C stops the server)")
        serve(
            incident_response.to_deployment(name="incident-response", parameters={"mode": "dry-run"}),
            watch.to_deployment(name="watch", interval=300),
            drill_flow.to_deployment(name="drill"),
        )
    finally:
        proc.terminate()
        proc.wait(15)
