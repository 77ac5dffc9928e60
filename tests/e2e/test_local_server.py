"""One local Prefect server, found by every command; answering gates from a terminal in seconds.

A real ``prefect server start`` (with its UI) is started by ``flows.local_server.ensure_server`` under a
temporary PREFECT_HOME, exactly as ``digestguard respond`` does without PREFECT_API_URL. A gate flow runs in
its own process against it; ``digestguard approve`` and ``digestguard confirm`` run as processes with no
PREFECT_API_URL and find the server through the state file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).parents[2]

GATE_SCRIPT = textwrap.dedent('''
    import json, sys
    from prefect import flow
    from digestguard.inventory import ApprovalPolicy
    from digestguard.journal import Journal
    from digestguard.plan import Plan, PlanItem
    from flows.approval import confirm_manual_rotation, request_approval

    @flow(name="cli-gate")
    def cli_gate(jpath: str) -> dict:
        plan = Plan(stage="purge", incident="cli-1", advisory="kics-2026-04",
                    items=[PlanItem(target="vendor:VENDOR_API_KEY", action="rotate-manual", kind="manual", reason="by hand")])
        a = request_approval(plan, Journal(jpath), ApprovalPolicy())
        ok = confirm_manual_rotation(plan.items[0]) if a.approved else None
        return {"decision": a.decision, "approvers": a.approvers, "confirmed": ok}

    print(json.dumps(cli_gate(sys.argv[1])))
''')


@pytest.fixture(scope="module")
def local_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home-local")
    old = {k: os.environ.get(k) for k in ("PREFECT_HOME", "PREFECT_API_URL")}
    os.environ["PREFECT_HOME"] = str(home)
    os.environ.pop("PREFECT_API_URL", None)
    from flows.local_server import ensure_server, read_state

    try:
        url = ensure_server()
        yield url, home
    finally:
        pid = read_state().get("pid")
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if pid:
            os.killpg(pid, signal.SIGTERM)


def _env(home: Path) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    return env


def _cli(home: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, env=_env(home), cwd=ROOT,
                       timeout=60)
    return r, time.monotonic() - t0


def _wait_paused(api: str, name: str, after: str | None = None, timeout: float = 90) -> tuple[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}}).json()
        for r in runs:
            if r["state"]["state_details"].get("pause_key") != after:
                return r["id"], r["state"]["state_details"]["pause_key"]
        time.sleep(0.3)
    raise AssertionError(f"no paused {name}")


def test_the_server_is_started_once_and_reused(local_server):
    from flows.local_server import ensure_server, read_state

    url, home = local_server
    t0 = time.monotonic()
    assert ensure_server() == url and time.monotonic() - t0 < 2
    state = json.loads((home / "digestguard-server.json").read_text())
    assert state["url"] == url == read_state()["url"] and url.startswith("http://127.0.0.1:")
    assert httpx.get(url + "/").status_code == 200  # the UI is served (the old embedded default had none)


def test_approve_and_confirm_from_the_terminal(local_server, tmp_path):
    url, home = local_server
    api = f"{url}/api"
    script = tmp_path / "gate.py"
    script.write_text(GATE_SCRIPT)
    flow = subprocess.Popen([sys.executable, str(script), str(tmp_path / "j.db")], env={**_env(home), "PREFECT_API_URL": api},
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run_id, key = _wait_paused(api, "gate")
        r, _ = _cli(home, "approve", run_id, "--approver", "  ")
        assert r.returncode == 2 and "blank approver is refused" in r.stderr
        r, _ = _cli(home, "confirm", run_id, "--who", "carol")
        assert r.returncode == 2 and "not waiting for a manual rotation" in r.stderr
        r, took = _cli(home, "approve", run_id, "--approver", "Alice", "--reason", "confirmed")
        assert r.returncode == 0, r.stderr
        assert took < 2.0, f"approve took {took:.2f} s"
        run_id, key = _wait_paused(api, "manual rotation", after=key)
        r, _ = _cli(home, "approve", run_id, "--approver", "alice")
        assert r.returncode == 2 and "use `digestguard confirm`" in r.stderr
        r, took = _cli(home, "confirm", run_id, "--who", "carol")
        assert r.returncode == 0 and "vendor:VENDOR_API_KEY" in r.stdout, r.stderr
        assert took < 2.0
        out, err = flow.communicate(timeout=90)
    finally:
        flow.kill()
    assert json.loads(out.strip().splitlines()[-1]) == {"decision": "approve", "approvers": ["alice"], "confirmed": True}


def test_without_a_server_approve_says_how_to_get_one(tmp_path):
    r = subprocess.run([sys.executable, "-m", "flows.cli", "approve", "00000000-0000-0000-0000-000000000001", "--approver", "a"],
                       capture_output=True, text=True, env=_env(tmp_path), cwd=ROOT, timeout=60)
    assert r.returncode == 2 and "no Prefect server found" in r.stderr


MANUAL_SCRIPT = textwrap.dedent('''
    import json, sys
    from datetime import datetime, timezone
    from prefect import flow
    from digestguard.advisory import load_advisory
    from digestguard.findings import ExposedSecret, ExposureReport
    from digestguard.inventory import load_inventory
    from digestguard.journal import Journal
    from digestguard.plan import Approval
    from flows.approval import confirm_manual_rotation
    from tasks.rotate.stage import apply_rotation, plan_rotation

    @flow(name="manual-gate")
    def manual_gate(inventory: str, jpath: str) -> dict:
        inv = load_inventory(inventory)
        exposure = ExposureReport(advisory="a", window_start=datetime(2026, 4, 22, tzinfo=timezone.utc),
                                  secrets=[ExposedSecret(name="VENDOR_API_KEY", mapped=True, inventory_name="VENDOR_API_KEY",
                                                         exposure="confirmed", exposed_by=["gh:acme/infra/1"])])
        plan = plan_rotation("inc-m", load_advisory("kics-2026-04"), exposure, inv)
        approval = Approval(decision="approve", approvers=["alice"], plan_hash=plan.hash)
        j = Journal(jpath)
        first = apply_rotation(plan, approval, inv, j, probe_wait=3)
        ok = confirm_manual_rotation(plan.items[0])
        second = apply_rotation(plan, approval, inv, j, confirm_manual=lambda i: ok, probe_wait=3)
        contain = [v.detail for v in second.verification if v.action == "contain"]
        return {"first": [a.outcome for a in first.actions], "second": [a.outcome for a in second.actions],
                "contain": contain[0] if contain else None}

    print(json.dumps(manual_gate(sys.argv[1], sys.argv[2]), default=str))
''')


def test_confirm_value_from_stdin_stores_propagates_and_proves_it(local_server, tmp_path):
    """A person rotates a token at the vendor (the GitLab stand-in, flows/drill/servers/gitlab.py, speaking
    GitLab's /personal_access_tokens/self) and pastes the new value into ``digestguard confirm --value-from-stdin``.
    Real OpenBao holds the primary store and a copy. The value must reach both stores, the probe must show the old
    token refused and the new one accepted, and the value must appear in no output, journal or Prefect database."""
    import hvac
    import yaml

    from flows.drill.servers.gitlab import GitLabServer
    from flows.drill.services import start_openbao

    url, home = local_server
    api = f"{url}/api"
    bao = start_openbao()
    gl = GitLabServer().start()
    try:
        old = gl.add_access_token("user:vendor", "vendor-api")
        client = hvac.Client(url=bao.addr, token=bao.token)
        client.secrets.kv.v2.create_or_update_secret(path="ci/vendor", secret={"value": old["token"]})
        client.secrets.kv.v2.create_or_update_secret(path="ci/vendor-copy", secret={"value": old["token"]})
        inv = tmp_path / "inventory.yaml"
        inv.write_text(yaml.safe_dump({
            "backends": {"vault_url": bao.addr, "vault_token": "env:DG_TEST_BAO"},
            "secrets": [{"name": "VENDOR_API_KEY",
                         "issuer": {"kind": "manual", "where": "GitLab > vendor > Access tokens",
                                    "probe": {"url": f"{gl.url}/personal_access_tokens/self", "send": "header",
                                              "header": "PRIVATE-TOKEN"}},
                         "stores": [{"kind": "vault-kv", "path": "ci/vendor", "primary": True},
                                    {"kind": "vault-kv", "path": "ci/vendor-copy"}]}]}))
        env = {**_env(home), "PREFECT_API_URL": api, "DG_TEST_BAO": bao.token}
        script = tmp_path / "manual.py"
        script.write_text(MANUAL_SCRIPT)
        flow = subprocess.Popen([sys.executable, str(script), str(inv), str(tmp_path / "j.db")], env=env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            run_id, _ = _wait_paused(api, "manual rotation")
            # blank stdin: refused, nothing stored, the run still waits
            r = subprocess.run([sys.executable, "-m", "flows.cli", "confirm", run_id, "--who", "carol", "--value-from-stdin"],
                               input="\n", capture_output=True, text=True, env={**env, "PREFECT_API_URL": ""}, cwd=ROOT, timeout=60)
            assert r.returncode == 2 and "no value given" in r.stderr, r.stderr
            # the person's work at the vendor: revoke the exposed token, issue a new one
            gl.access_tokens[old["id"]]["active"] = False
            new = gl.add_access_token("user:vendor", "vendor-api")["token"]
            r = subprocess.run([sys.executable, "-m", "flows.cli", "confirm", run_id, "--who", "carol", "--value-from-stdin"],
                               input=new + "\n", capture_output=True, text=True, env={**env, "PREFECT_API_URL": ""}, cwd=ROOT,
                               timeout=60)
            assert r.returncode == 0, r.stderr
            assert "secret:VENDOR_API_KEY" in r.stdout and "ci/vendor" in r.stdout
            out, err = flow.communicate(timeout=120)
        finally:
            flow.kill()
        result = json.loads(out.strip().splitlines()[-1])
        assert result["first"] == ["needs-person"] and result["second"] == ["done"], (result, err[-2000:])
        c = result["contain"]
        assert c["old_refused"] and c["new_works"] and c["containment"] == "rotated", c
        for path in ("ci/vendor", "ci/vendor-copy"):  # the value reached the primary store and the copy
            assert client.secrets.kv.v2.read_secret_version(path=path, raise_on_deleted_version=True)["data"]["data"]["value"] == new
        # never echoed, never in argv, logs, results, the journal or the Prefect database
        texts = [r.stdout, r.stderr, out, err, (tmp_path / "j.db").read_bytes().decode("latin-1")]
        texts += [p.read_bytes().decode("latin-1") for p in home.rglob("*.db")]
        assert not [i for i, t in enumerate(texts) if new in t]
    finally:
        gl.stop()
        bao.stop()


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _decoy(home: Path, mark: str | None) -> subprocess.Popen:
    """A detached process whose command line reads like a local server's, recorded in ``home``'s state file
    (what a `respond` subprocess leaves behind), with or without this test session's mark."""
    home.mkdir(parents=True, exist_ok=True)
    port = 1024 + os.getpid() % 20000
    env = {k: v for k, v in os.environ.items() if k != "DIGESTGUARD_TEST_SESSION"}
    env["PREFECT_HOME"] = str(home)
    if mark:
        env["DIGESTGUARD_TEST_SESSION"] = mark
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "prefect", "server", "start",
                             "--port", str(port)], env=env, start_new_session=True)
    (home / "digestguard-server.json").write_text(json.dumps({"url": f"http://127.0.0.1:{port}", "pid": proc.pid,
                                                              "incidents": {"inc-1": "/x/journal.sqlite"}}))
    return proc


def test_stop_never_kills_a_reused_pid(tmp_path):
    """A state file whose pid now belongs to some other process (the server died, the pid was reused): `server stop`
    forgets the record and leaves that process alone; `status` says not running (exit 3)."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        tmp_path.mkdir(exist_ok=True)
        (tmp_path / "digestguard-server.json").write_text(json.dumps({"url": "http://127.0.0.1:9", "pid": other.pid}))
        r, _ = _cli(tmp_path, "server", "status")
        assert r.returncode == 3 and "not running" in r.stdout, r.stdout + r.stderr
        r, _ = _cli(tmp_path, "server", "stop")
        assert r.returncode == 0 and "nothing to stop" in r.stdout, r.stdout + r.stderr
        assert other.poll() is None
        assert "pid" not in json.loads((tmp_path / "digestguard-server.json").read_text())
    finally:
        other.kill()
        other.wait(5)


def test_server_status_and_stop_end_the_real_server_idempotently(local_server):
    """Last in this module: it stops the module's server. `status` names url and pid (exit 0); `stop` ends the whole
    process group and the port is closed; a second `stop` is a no-op (exit 0); `status` then says not running (exit 3);
    `approve` then says there is no server instead of hanging."""
    url, home = local_server
    pid = json.loads((home / "digestguard-server.json").read_text())["pid"]
    r, _ = _cli(home, "server", "status")
    assert r.returncode == 0 and f"running: {url} (pid {pid})" in r.stdout, r.stdout + r.stderr
    r, _ = _cli(home, "server", "status", "--json")
    assert json.loads(r.stdout)["state"] == "running" and json.loads(r.stdout)["pid"] == pid
    r, took = _cli(home, "server", "stop")
    assert r.returncode == 0 and f"stopped the local Prefect server {url} (pid {pid})" in r.stdout, r.stdout + r.stderr
    assert "killed" not in r.stdout  # it stopped on SIGTERM
    assert not _pid_alive(pid)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/api/health", timeout=2)
    assert not any(f.name.isdigit() and _pid_alive(int(f.name))
                   and (f / "stat").read_text().rsplit(")", 1)[1].split()[2] == str(pid)
                   for f in Path("/proc").iterdir() if f.name.isdigit() and (f / "stat").exists())
    r, _ = _cli(home, "server", "stop")
    assert r.returncode == 0 and "nothing to stop" in r.stdout
    r, _ = _cli(home, "server", "status")
    assert r.returncode == 3 and "not running" in r.stdout
    r, _ = _cli(home, "approve", "00000000-0000-0000-0000-000000000001", "--approver", "alice")
    assert r.returncode == 2 and "no Prefect server found" in r.stderr


def test_session_cleanup_stops_only_this_sessions_left_behind_servers(tmp_path):
    """Last (it stops every left-behind server of this session, the module's too). The conftest clean-up stops a detached server this session started and leaves one of another session alone."""
    from tests.conftest import stop_left_behind_local_servers

    ours = _decoy(tmp_path / "ours", os.environ["DIGESTGUARD_TEST_SESSION"])
    theirs = _decoy(tmp_path / "theirs", "another-session")
    try:
        time.sleep(0.3)  # exec done: /proc shows the command line
        stopped = stop_left_behind_local_servers()
        assert tmp_path / "ours" in stopped and tmp_path / "theirs" not in stopped
        assert not _pid_alive(ours.pid)  # (stop_server reaped it: this process is its parent here)
        assert theirs.poll() is None and _pid_alive(theirs.pid)
        state = json.loads((tmp_path / "ours" / "digestguard-server.json").read_text())
        assert state == {"incidents": {"inc-1": "/x/journal.sqlite"}}  # the incidents' journals are kept
    finally:
        for p in (ours, theirs):
            p.kill()
            p.wait(5)
