"""A worker killed mid-rotate, on a team's set-up: a real Prefect server on a real PostgreSQL, two process
workers (separate PREFECT_HOMEs, as two machines), the shared journal on the same PostgreSQL, the
deployment made by the README's `prefect deploy` command and the zombie-run automation of
`deployments/zombie-automation.yaml` (installed through the Prefect client with a shorter `within`: 35 s, just over
one 30 s heartbeat, instead of the shipped 90 s, so the dead run turns Crashed in seconds, not minutes). The estate is the drill's sandbox (real registry, podman, OpenBao,
moto; local servers speaking GitHub's, Slack's and GCP Secret Manager's protocols).

The run is approved at the rotation gate; worker A (and its flow-run process) is SIGKILLed as soon as
the journal shows rotation under way. The automation marks the run Crashed when its heartbeats stop;
`prefect flow-run retry` schedules it again and worker B runs it: same flow run, same incident id,
the approval of the unchanged plan honoured (not asked again), every credential rotated exactly once.

It starts long-lived processes of its own (a Prefect server, two workers and their flow-run processes), so it is
marked ``isolated``: the main run deselects it and ``.ci/run`` runs it in a pytest invocation of its own, where
nothing else shares its PostgreSQL. Every process it starts is ended by pid (its process group and descendants).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import httpx
import hvac
import pytest
import yaml
from google.auth.credentials import AnonymousCredentials

from digestguard.advisory import load_advisory
from digestguard.journal import JOURNAL_ENV, Journal
from flows.approval import answer_paused_run
from flows.drill.flow import _gcp_rotated, build_sandbox
from flows.incident_lease import incident_id_for
from integrations import gcp_secrets
from tests.support.journal import fresh_pg_database
from tests.support.vault import free_port

ROOT = Path(__file__).resolve().parents[2]
ZOMBIE_WITHIN_S = 35  # the shipped automation says 90 (three heartbeats); one 30 s heartbeat plus slack is enough here
SERVER_ENV = {  # the services zombie detection needs are on (a session harness may have switched them off)
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "true", "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED": "true",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED": "true", "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false", "PREFECT_SERVER_SERVICES_FOREMAN_ENABLED": "true",
}


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``, its process group (it was started in a session of its own) and every descendant, by pid."""
    pids = [proc.pid, *_descendants(proc.pid)]
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def _install_zombie_automation(api: str) -> None:
    """The shipped zombie-run automation, under a test name and with ``within`` shortened, through the client."""
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.automations import AutomationCore
    from prefect.settings import PREFECT_API_URL, temporary_settings

    data = yaml.safe_load((ROOT / "deployments" / "zombie-automation.yaml").read_text())
    data["name"] = f"{data['name']}-test"
    data["trigger"]["within"] = ZOMBIE_WITHIN_S
    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as c:
        c.create_automation(AutomationCore.model_validate(data))


@pytest.fixture
def team(postgres, monkeypatch, tmp_path):
    """A Prefect server on PostgreSQL, its pool, the README's deployment, the zombie automation; the shared journal URL."""
    import psycopg

    db = f"prefect_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, **SERVER_ENV, "PREFECT_HOME": str(tmp_path / "server-home"),
           "PREFECT_API_DATABASE_CONNECTION_URL":
               f"postgresql+asyncpg://{postgres.superuser}:{postgres.password}@127.0.0.1:{postgres.port}/{db}"}
    env.pop("PREFECT_API_URL", None)
    log = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 150
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "prefect server on PostgreSQL did not start"
            time.sleep(0.2)
        _install_zombie_automation(api)
        cli_env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp_path / "cli-home")}
        for cmd in (["work-pool", "create", "digestguard", "--type", "process"],
                    ["--no-prompt", "deploy", "--name", "incident-response", "--prefect-file", "deployments/prefect.yaml"]):
            done = subprocess.run([sys.executable, "-m", "prefect", *cmd], cwd=ROOT, env=cli_env, capture_output=True,
                                  text=True, timeout=300)
            assert done.returncode == 0, (cmd, done.stdout[-2000:], done.stderr[-2000:])
        yield api, fresh_pg_database(postgres, monkeypatch)
    finally:
        _kill_tree(server)
        log.close()


def _worker(name: str, api: str, journal: str, tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp_path / f"home-{name}"),
           "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1",
           "DIGESTGUARD_HOME": str(ROOT), JOURNAL_ENV: journal}
    log = open(tmp_path / f"worker-{name}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "digestguard", "--name", name],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _state(run_id: str):
    from prefect import get_client

    with get_client(sync_client=True) as c:
        return c.read_flow_run(run_id).state


def _until(what: str, check, timeout: float, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(poll)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def _asked(journal: str, incident: str, stage: str) -> list[dict]:
    return [e for e in Journal(journal).events(incident) if e["kind"] == "asked" and e["detail"].get("stage") == stage]


def _paused_at(journal: str, incident: str, stage: str, n: int, run_id: str) -> bool:
    return len(_asked(journal, incident, stage)) >= n and _state(run_id).is_paused()


@pytest.mark.isolated  # its own server and workers: run alone (.ci/run), never beside the main suite
def test_a_worker_killed_mid_rotate_is_resumed_by_another_from_the_shared_journal(team, tmp_path):
    from prefect.deployments import run_deployment
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api, journal = team
    t0 = time.monotonic()
    phases: list[str] = []

    def phase(name: str) -> None:
        phases.append(f"{name} {time.monotonic() - t0:.0f}s")

    with contextlib.ExitStack() as stack, temporary_settings(updates={PREFECT_API_URL: api}):
        sb = build_sandbox(load_advisory("kics-2026-04"), tmp_path / "sandbox", stack)
        vault = hvac.Client(url=sb.openbao.addr, token=sb.openbao.token)
        iam = boto3.client("iam", endpoint_url=sb.moto.endpoint_url, region_name="us-east-1")
        kv_before = vault.secrets.kv.v2.read_secret_metadata(path="ci/kics-api-token-0")["data"]["current_version"]
        keys_before = {k["AccessKeyId"] for k in iam.list_access_keys(UserName="ci-deployer")["AccessKeyMetadata"]}
        gsm = gcp_secrets.secret_manager_client(credentials=AnonymousCredentials(), api_endpoint=sb.gcp.url, transport="rest")
        sonar = "projects/drill/secrets/sonar-token"
        gcp_before = len(gcp_secrets.list_versions(gsm, sonar))
        worker_a = _worker("a", api, journal, tmp_path)
        stack.callback(lambda: worker_a.poll() is None and _kill_tree(worker_a))

        run = run_deployment("incident_response/incident-response", timeout=0, parameters={
            "advisory": str(sb.advisory_path), "inventory": str(sb.inventory_path), "mode": "execute",
            "triggered_by": "oncall"})
        run_id = str(run.id)
        incident = incident_id_for(load_advisory(sb.advisory_path).id, run_id)  # no incident id given: from the flow run
        _until("rotate gate", lambda: _paused_at(journal, incident, "rotate", 1, run_id), 240)
        phase("rotate-gate")
        answer_paused_run(run_id, approver="alice", reason="confirmed exposure")
        def step_done() -> bool:
            return any(e.status == "done" for e in Journal(journal).entries(incident, "rotate"))

        _until("a first rotation step done", step_done, 120, poll=0.05)
        _kill_tree(worker_a)
        phase("killed")
        at_kill = {(e.target, e.action): e.status for e in Journal(journal).entries(incident, "rotate")}
        worker_b = _worker("b", api, journal, tmp_path)
        stack.callback(lambda: worker_b.poll() is None and _kill_tree(worker_b))

        crashed = _until("zombie automation marks the run Crashed", lambda: (s := _state(run_id)).is_crashed() and s, 180)
        assert "heartbeats stopped" in (crashed.message or "")
        phase("crashed")
        done = subprocess.run([sys.executable, "-m", "prefect", "flow-run", "retry", run_id], env={
            **os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp_path / "cli-home")},
            capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr

        _until("the retried run asks for the manual rotation", lambda: _state(run_id).is_paused(), 240)
        phase("manual")
        resume_flow_run(run_id, run_input={"rotated": True, "who": "carol", "note": "vendor portal"})
        _until("purge gate", lambda: _paused_at(journal, incident, "purge", 1, run_id), 240)
        answer_paused_run(run_id, approver="bob", reason="purge now")
        final = _until("the retried run ends", lambda: (s := _state(run_id)).is_final() and s, 240)
        phase("final")

        assert final.is_completed(), final.message
        assert len(_asked(journal, incident, "rotate")) == 1  # the approval of the unchanged plan was honoured
        starts = [e for e in Journal(journal).events(incident) if (e["stage"], e["kind"]) == ("flow", "started")]
        assert [e["detail"]["flow_run_id"] for e in starts] == [run_id, run_id] and starts[1]["detail"]["run_count"] >= 2
        rotated = [e for e in Journal(journal).entries(incident, "rotate") if e.action == "rotate"]
        assert rotated and all(e.status == "done" for e in rotated), [(e.target, e.status) for e in rotated]
        done_at_kill = {t for (t, a), st in at_kill.items() if a == "rotate" and st == "done"}
        assert {e.target for e in rotated} - done_at_kill, at_kill  # the kill landed mid-rotate: worker B finished some
        assert any(st == "done" for st in at_kill.values()), at_kill  # ... after worker A had finished some steps
        assert vault.secrets.kv.v2.read_secret_metadata(path="ci/kics-api-token-0")["data"]["current_version"] == kv_before + 1
        keys_after = {k["AccessKeyId"] for k in iam.list_access_keys(UserName="ci-deployer")["AccessKeyMetadata"]}
        assert len(keys_after) == 1 and keys_after.isdisjoint(keys_before)  # one new key, the exposed one gone
        assert len(gcp_secrets.list_versions(gsm, sonar)) == gcp_before + 1 and _gcp_rotated(sb)  # one version; GitHub has it
        print("journal at the kill:", at_kill)
        print("phases (since the server was up):", ", ".join(phases))
