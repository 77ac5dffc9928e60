"""The on-call's entry points as processes: `digestguard respond` (a dry run on the embedded Prefect server, against
the drill's sandbox: real registry, podman, OpenBao, moto; local GitHub/Slack/GCP protocol servers) and
`digestguard serve` (a local Prefect server with its UI, serving the three deployments)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from digestguard.advisory import load_advisory
from flows.drill.flow import build_sandbox
from flows.drill.services import free_port

ROOT = Path(__file__).parents[2]


def _stop_local_server(home: Path) -> None:
    state = home / "digestguard-server.json"
    if state.exists():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(json.loads(state.read_text())["pid"], signal.SIGTERM)


def test_respond_dry_run_prints_the_summary(tmp_path):
    """Without PREFECT_API_URL, respond starts one local server with its UI, prints the run's UI link, and
    `journal` then finds the incident's journal with no --inventory."""
    home = tmp_path / "prefect"
    with contextlib.ExitStack() as stack:
        stack.callback(_stop_local_server, home)
        sb = build_sandbox(load_advisory("kics-2026-04"), tmp_path / "sb", stack)
        env = {**os.environ, "PREFECT_HOME": str(home)}
        env.pop("PREFECT_API_URL", None)
        r = subprocess.run([sys.executable, "-m", "flows.cli", "respond", "-a", str(sb.advisory_path), "-i", str(sb.inventory_path),
                            "--incident", "respond-dry-1", "--json"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
        assert r.returncode == 1, r.stderr[-3000:]  # exit 1: the drill's estate has compromised images (issue 15)
        url = json.loads((home / "digestguard-server.json").read_text())["url"]
        line = re.search(r"^flow run ([0-9a-f-]{36}): (\S+)$", r.stderr, re.M)
        assert line and line.group(2) == f"{url}/runs/flow-run/{line.group(1)}", r.stderr[-2000:]
        page = httpx.get(line.group(2), headers={"Accept": "text/html"}, follow_redirects=True)  # as a browser asks
        assert page.status_code == 200 and "<html" in page.text.lower()  # the UI (the old embedded default had none)
        j = subprocess.run([sys.executable, "-m", "flows.cli", "journal", "respond-dry-1", "--json"], capture_output=True,
                           text=True, env=env, cwd=ROOT, timeout=60)
        assert j.returncode == 0 and json.loads(j.stdout)["incident"] == "respond-dry-1", j.stderr
        summary = json.loads(r.stdout)
        assert summary["incident"] == "respond-dry-1" and summary["mode"] == "dry-run" and summary["ok"]
        assert summary["verdict"] == "found" and "coverage_note" not in summary
        assert summary["rotate"]["planned"] == len(sb.planted["secrets"]) == 9 and summary["pin"]["pull_requests"] == []
        assert Path(summary["report"]).is_file()


def test_serve_starts_the_ui_and_serves_three_deployments(tmp_path):
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--port", str(port)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        names: set[str] = set()
        while time.monotonic() < deadline and len(names) < 3:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            try:
                r = httpx.post(f"{base}/api/deployments/filter", json={}, timeout=5)
                names = {d["name"] for d in r.json()} if r.status_code == 200 else set()
            except httpx.HTTPError:
                pass
            time.sleep(1)
        assert names >= {"incident-response", "watch", "drill"}
        assert httpx.get(base, timeout=10).status_code == 200  # the UI
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
