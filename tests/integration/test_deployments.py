"""Deployments that work as written, against the session's real Prefect server (``prefect_harness``).

- the README's deploy command, run from where the README says, creates the three deployments;
- the pull step, run through Prefect's own step runner, fails fast on an incomplete worker environment;
- ``watch`` is not scheduled until it has an inventory (prefect.yaml and ``digestguard serve``);
- ``digestguard serve`` refuses to overwrite a deployment it did not create;
- the drill deployment's flow ends Failed when a stage missed and leaves its scorecard as an artifact.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
NAMES = {"incident_response/incident-response", "watch/watch", "drill/drill"}


def _client():
    from prefect import get_client

    return get_client(sync_client=True)


def _drop(names: set[str]) -> None:
    from prefect.exceptions import ObjectNotFound

    with _client() as c:
        for n in names:
            try:
                c.delete_deployment(c.read_deployment_by_name(n).id)
            except ObjectNotFound:
                pass


def _ensure_pool() -> None:
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with _client() as c:
        try:
            c.create_work_pool(WorkPoolCreate(name="digestguard", type="process"))
        except ObjectAlreadyExists:
            pass


def test_the_readme_deploy_command_works_from_the_repository_root(prefect_harness):
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"From the repository root: `(prefect [^`]*deploy[^`]*)`", readme)
    assert m, "the README names the deploy command and where to run it"
    command = m.group(1)
    assert command == "prefect deploy --all --prefect-file deployments/prefect.yaml"
    _ensure_pool()
    _drop(NAMES)
    env = {**os.environ, "PREFECT_API_URL": prefect_harness}
    done = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", *command.split()[1:]], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with _client() as c:
        deps = {n: c.read_deployment_by_name(n) for n in NAMES}
        watch_schedules = c.read_deployment_schedules(deps["watch/watch"].id)
    assert deps["incident_response/incident-response"].entrypoint == "flows/incident_response.py:incident_response"
    assert deps["drill/drill"].entrypoint == "flows/drill/flow.py:drill_flow"
    for d in deps.values():
        assert d.work_pool_name == "digestguard"
        assert d.pull_steps == [{"flows.deploy_steps.enter_digestguard_home": {"require": []}}]
        assert d.job_variables == {"env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}}  # heartbeats for zombie detection
    assert "inventory" not in (deps["watch/watch"].parameters or {})
    assert [s.active for s in watch_schedules] == [False]  # no inventory yet: not scheduled
    _triggered_by_is_required(deps["incident_response/incident-response"])


def _triggered_by_is_required(dep) -> None:
    """The deployment's form (its parameter schema, as the server holds it) requires ``triggered_by``; the API
    refuses a run without it, or with it blank, naming the field; a run that names who starts it is accepted."""
    from prefect.exceptions import PrefectHTTPStatusError

    schema = dep.parameter_openapi_schema
    assert "triggered_by" in schema["required"] and {"advisory", "inventory"} <= set(schema["required"])
    assert "triggered_by" not in (dep.parameters or {})  # no default the form would pre-fill
    assert dep.enforce_parameter_schema
    base = {"advisory": "kics-2026-04", "inventory": "inventory.yaml", "mode": "execute"}
    with _client() as c:
        for bad in ({}, {"triggered_by": ""}):
            with pytest.raises(PrefectHTTPStatusError) as e:
                c.create_flow_run_from_deployment(dep.id, parameters={**base, **bad})
            assert e.value.response.status_code == 409 and "triggered_by" in e.value.response.text, e.value.response.text
        run = c.create_flow_run_from_deployment(dep.id, parameters={**base, "triggered_by": "carol"})
        assert run.parameters["triggered_by"] == "carol"
        c.delete_flow_run(run.id)


def test_the_zombie_automation_installs_as_the_readme_says(prefect_harness):
    readme = (ROOT / "README.md").read_text()
    command = "prefect automation create --from-file deployments/zombie-automation.yaml"
    assert f"`{command}`" in readme
    env = {**os.environ, "PREFECT_API_URL": prefect_harness}
    done = subprocess.run([sys.executable, "-m", "prefect", *command.split()[1:]], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Failed" not in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    with _client() as c:
        [auto] = c.read_automations_by_name("digestguard-crash-zombie-flow-runs")
    assert auto.trigger.posture == "Proactive" and auto.trigger.within.total_seconds() == 90
    assert auto.trigger.after == {"prefect.flow-run.heartbeat"} and "prefect.flow-run.heartbeat" in auto.trigger.expect
    assert [(a.type, a.state.value) for a in auto.actions] == [("change-flow-run-state", "CRASHED")]


def test_every_entrypoint_imports_from_the_repository_root():
    spec = yaml.safe_load((ROOT / "deployments/prefect.yaml").read_text())
    for d in spec["deployments"]:
        path, func = d["entrypoint"].split(":")
        code = f"import runpy; ns = runpy.run_path({path!r}); assert callable(ns[{func!r}])"
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (d["name"], done.stderr[-2000:])


def _pull(monkeypatch, tmp_path, home: str | None, require: list[str] | None = None):
    from prefect.deployments.steps.core import run_steps

    steps = yaml.safe_load((ROOT / "deployments/prefect.yaml").read_text())["pull"]
    if require is not None:
        steps = [{"flows.deploy_steps.enter_digestguard_home": {"require": require}}]
    if home is None:
        monkeypatch.delenv("DIGESTGUARD_HOME", raising=False)
    else:
        monkeypatch.setenv("DIGESTGUARD_HOME", home)
    monkeypatch.chdir(tmp_path)
    return asyncio.run(run_steps(steps, print_function=lambda *a: None))


def test_the_pull_step_fails_fast_on_an_incomplete_worker(monkeypatch, tmp_path):
    from prefect.deployments.steps.core import StepExecutionError

    with pytest.raises(StepExecutionError) as e:
        _pull(monkeypatch, tmp_path, None)
    assert "DIGESTGUARD_HOME is not set on this worker" in str(e.value.__cause__)
    with pytest.raises(StepExecutionError) as e:
        _pull(monkeypatch, tmp_path, str(tmp_path))
    assert "is not a digestguard checkout: flows/incident_response.py" in str(e.value.__cause__)
    monkeypatch.delenv("DG_TEST_NEEDED", raising=False)
    with pytest.raises(StepExecutionError) as e:
        _pull(monkeypatch, tmp_path, str(ROOT), require=["DG_TEST_NEEDED"])
    assert "needs DG_TEST_NEEDED set on the worker" in str(e.value.__cause__)
    out = _pull(monkeypatch, tmp_path, str(ROOT))
    assert out["directory"] == str(ROOT) and Path.cwd() == ROOT


def test_watch_is_served_unscheduled_without_an_inventory(tmp_path):
    from flows.serve import SERVE_TAG, build_deployments

    plain = {d.name: d for d in build_deployments(None)}
    assert plain["watch"].schedules in (None, []) and "inventory" not in (plain["watch"].parameters or {})
    inv = tmp_path / "inventory.yaml"
    inv.write_text("{}\n")
    sched = {d.name: d for d in build_deployments(str(inv))}
    assert [s.schedule.interval.total_seconds() for s in sched["watch"].schedules] == [300]
    assert sched["watch"].parameters == {"inventory": str(inv.resolve())}
    assert all(SERVE_TAG in d.tags for d in sched.values())


def test_serve_refuses_to_overwrite_a_deployment_it_did_not_create(prefect_harness):
    from flows.serve import NotOurs, build_deployments, check_not_overwriting

    _ensure_pool()
    _drop(NAMES)
    with _client() as c:
        flow_id = c.create_flow_from_name("incident_response")
        c.create_deployment(flow_id=flow_id, name="incident-response", work_pool_name="digestguard",
                            entrypoint="flows/incident_response.py:incident_response", tags=["team"])
    ours = build_deployments(None)
    with pytest.raises(NotOurs) as e:
        check_not_overwriting(ours)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("deployment incident_response/incident-response (work pool 'digestguard') "
                                               "already exists on this server and was not created by `digestguard serve`")
    with _client() as c:
        assert c.read_deployment_by_name("incident_response/incident-response").tags == ["team"]  # untouched
    _drop(NAMES)
    for d in ours:
        d.apply()
    check_not_overwriting(build_deployments(None))  # its own deployments: served again freely
    with _client() as c:
        _triggered_by_is_required(c.read_deployment_by_name("incident_response/incident-response"))
    _drop(NAMES)


def test_the_serve_command_prints_the_refusal_and_exits_2(monkeypatch):
    from typer.testing import CliRunner

    import flows.serve
    from flows.cli import app

    def refuse(**kw):
        raise flows.serve.NotOurs("deployment watch/watch already exists ... refusing to overwrite it")

    monkeypatch.setattr(flows.serve, "serve_all", refuse)
    r = CliRunner().invoke(app, ["serve", "--port", "1"])
    assert r.exit_code == 2 and "digestguard serve: deployment watch/watch already exists" in r.output


def _card(ok: bool) -> dict:
    return {"advisory": "kics-2026-04", "incident": "kics-2026-04-run-abc", "ok": ok, "scale": 1,
            "stages": [{"name": "detect", "expected": {"compromised": 3}, "actual": {"compromised": 3}, "ok": True},
                       {"name": "rotate", "expected": {"rotated": 5}, "actual": {"rotated": 4 if not ok else 5}, "ok": ok}],
            "timings": {"setup_s": 1.0, "playbook_s": 2.0, "total_s": 3.0}}


@pytest.mark.parametrize("ok", [False, True])
def test_the_drill_flow_fails_when_a_stage_missed_and_publishes_its_scorecard(prefect_harness, monkeypatch, ok):
    """``run_drill`` (the sandbox, ~25 s, exercised by tests/e2e) is replaced by a scorecard: this tests the flow's ending."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    import flows.drill.flow as drill

    monkeypatch.setattr(drill, "run_drill", lambda *a, **k: _card(ok))
    state = drill.drill_flow(return_state=True)
    assert state.is_completed() is ok and state.is_failed() is (not ok)
    if not ok:
        assert state.message == "drill kics-2026-04: rotate did not meet expectations"
    with _client() as c:
        arts = c.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    assert [a.key for a in arts] == [drill.SCORECARD_KEY]
    text = arts[0].data
    assert ("SOME STAGES FAILED" in text and "| rotate | **FAIL** |" in text) if not ok else "all stages met" in text
