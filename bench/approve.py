"""How long `digestguard approve` takes to answer a paused gate (goal: under 2 s on a 2-core machine).

`.venv/bin/python bench/approve.py [--answers 5]`

Starts the local Prefect server the way `digestguard respond` does (``flows.local_server.ensure_server``,
under a temporary PREFECT_HOME), runs a flow with N approval gates in its own process, and answers each gate
with the `digestguard approve` command as a new process (no PREFECT_API_URL: it finds the server through the
state file). Times each command from process start to exit. Prints JSON; exits 1 if any answer took 2 s or more.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GATES = textwrap.dedent('''
    import sys
    from prefect import flow
    from digestguard.inventory import ApprovalPolicy
    from digestguard.journal import Journal
    from digestguard.plan import Plan, PlanItem
    from flows.approval import request_approval

    @flow(name="bench-gates")
    def gates(jpath: str, n: int) -> None:
        for i in range(n):
            plan = Plan(stage="purge", incident=f"bench-{i}", advisory="kics-2026-04",
                        items=[PlanItem(target=f"r/x@sha256:{i:064d}", action="delete-manifest", kind="registry")])
            request_approval(plan, Journal(jpath), ApprovalPolicy())

    gates(sys.argv[1], int(sys.argv[2]))
''')


def _paused(api: str, after: str | None, timeout: float = 120) -> tuple[str, str]:
    deadline = time.monotonic() + timeout
    body = json.dumps({"flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}}).encode()
    while time.monotonic() < deadline:
        req = urllib.request.Request(f"{api}/flow_runs/filter", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            for run in json.loads(r.read()):
                key = run["state"]["state_details"].get("pause_key")
                if key != after:
                    return run["id"], key
        time.sleep(0.2)
    raise SystemExit("no paused gate")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--answers", type=int, default=5)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="dg-bench-approve-"))
    env = {**os.environ, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    os.environ.update(PREFECT_HOME=str(home))
    os.environ.pop("PREFECT_API_URL", None)
    sys.path.insert(0, str(ROOT))
    from flows.local_server import ensure_server, read_state

    t0 = time.monotonic()
    url = ensure_server()
    start_s = time.monotonic() - t0
    script = home / "gates.py"
    script.write_text(GATES)
    flow = subprocess.Popen([sys.executable, str(script), str(home / "j.db"), str(args.answers)], cwd=ROOT,
                            env={**env, "PREFECT_API_URL": f"{url}/api"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    times, key = [], None
    try:
        for _ in range(args.answers):
            run_id, key = _paused(f"{url}/api", key)
            t = time.monotonic()
            r = subprocess.run([sys.executable, "-m", "flows.cli", "approve", run_id, "--approver", "bench"], cwd=ROOT, env=env,
                               capture_output=True, text=True)
            times.append(round(time.monotonic() - t, 3))
            if r.returncode != 0:
                raise SystemExit(r.stderr)
        flow.wait(120)
    finally:
        flow.kill()
        pid = read_state().get("pid")
        if pid:
            os.killpg(pid, signal.SIGTERM)
    out = {"server_start_s": round(start_s, 1), "approve_s": times, "median_s": statistics.median(times), "max_s": max(times),
           "goal_s": 2.0, "ok": max(times) < 2.0, "load_average": os.getloadavg()}
    print(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
