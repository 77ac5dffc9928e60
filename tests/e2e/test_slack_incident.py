"""Approval by verified identities through a whole incident run, on the drill's sandbox (real registry, podman,
OpenBao and moto; local servers speaking the GitHub, Slack and GCP Secret Manager protocols, since none of those can
run here). Slack's buttons arrive over Socket Mode: the Slack stand-in (``flows/drill/servers/slack.py``) speaks
``apps.connections.open`` and the websocket envelopes to slack-sdk's unmodified ``SocketModeClient``, which the
running flow uses and which acknowledges each envelope. Terminal answers are ``digestguard approve --sign`` and
``digestguard confirm`` run as processes, signed with real ``ssh-keygen -Y sign`` keys.

Policy: two verified approvers per destructive stage, not the person who started the run. At each gate a Slack user
not in the list clicks first and is refused; then bob clicks Approve in Slack and carol signs in the terminal.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import hvac
import pytest
import yaml
from google.auth.credentials import AnonymousCredentials

from digestguard.advisory import load_advisory
from digestguard.journal import Journal
from flows.drill.flow import REPO, build_sandbox
from integrations import gcp_secrets
from integrations.docker_engine import DockerEngine
from integrations.registry import RegistryClient
from integrations.slack import APPROVE_ACTION
from tests.e2e.test_incident_flow import _run_in_thread

ROOT = Path(__file__).parents[2]


def _keypair(tmp_path: Path, name: str) -> tuple[str, str]:
    key = tmp_path / f"{name}_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
    return str(key), (tmp_path / f"{name}_ed25519.pub").read_text().strip()


@pytest.fixture(scope="module")
def estate(tmp_path_factory, prefect_harness):
    """The sandbox (one for this module: it takes ~25 s to build), its inventory given Slack buttons (an app-level
    token) and a two-person verified policy. The refusal test runs first, on the untouched estate."""
    tmp_path = tmp_path_factory.mktemp("slack-estate")
    carol_key, carol_pub = _keypair(tmp_path, "carol")
    with contextlib.ExitStack() as stack, pytest.MonkeyPatch.context() as mp:
        sb = build_sandbox(load_advisory("kics-2026-04"), tmp_path / "sb", stack)
        mp.setenv("DG_TEST_SLACK_APP_TOKEN", sb.slack.app_token)
        inv = yaml.safe_load(sb.inventory_path.read_text())
        inv["slack"]["app_token"] = "env:DG_TEST_SLACK_APP_TOKEN"
        inv["approvals"] = {"require_verified": True, "two_approvers": True, "distinct_from_trigger": True,
                            "timeout_seconds": 600,
                            "approvers": [{"name": "bob", "slack_user_id": "U0BOB"}, {"name": "carol", "ssh_key": carol_pub}]}
        sb.inventory_path.write_text(yaml.safe_dump(inv, sort_keys=False))
        yield sb, carol_key, prefect_harness


def _until(what: str, check, timeout: float = 180, poll: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def _events(jpath: Path, incident: str, kind: str, stage: str | None = None) -> list[dict]:
    if not jpath.exists():
        return []
    return [e for e in Journal(jpath).events(incident) if e["kind"] == kind and (stage is None or e["detail"].get("stage") == stage)]


def _paused_key(run_id: str) -> str | None:
    from prefect import get_client

    with get_client(sync_client=True) as c:
        st = c.read_flow_run(run_id).state
    return st.state_details.pause_key if st.is_paused() else None


def _approval_button_value(sb, stage: str) -> str:
    """The value of the Approve button on the stage's approval request, as Slack shows it in the channel."""
    for m in reversed(list(sb.slack.messages.values())):
        for b in m.blocks or []:
            if b.get("block_id") == "digestguard_gate":
                value = b["elements"][0]["value"]
                if json.loads(value)["stage"] == stage:
                    return value
    raise AssertionError(f"no approval buttons for {stage}")


def _cli(api: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp_path / "cli-home")}
    r = subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def _gate(sb, jpath: Path, incident: str, stage: str, api: str, carol_key: str, tmp_path: Path) -> None:
    """At one gate: mallory's click is refused; bob approves in Slack; carol approves signed in the terminal."""
    asked = _until(f"{stage} gate", lambda: _events(jpath, incident, "asked", stage))
    run_id = asked[-1]["detail"]["flow_run_id"]
    key = _until(f"{stage} paused", lambda: _paused_key(run_id))
    value = _approval_button_value(sb, stage)
    refused_before = len(_events(jpath, incident, "refused"))
    sb.slack.click("U0MALLORY", APPROVE_ACTION, value)
    _until("mallory refused", lambda: len(_events(jpath, incident, "refused")) > refused_before)
    assert "U0MALLORY is not a listed approver" in _events(jpath, incident, "refused")[-1]["detail"]["why"]
    assert _paused_key(run_id) == key  # the click was refused inside the flow: the same pause keeps waiting
    sb.slack.click("U0BOB", APPROVE_ACTION, value)
    _until("bob counted, carol asked", lambda: (k := _paused_key(run_id)) and k != key and k)
    _cli(api, tmp_path, "approve", run_id, "--approver", "carol", "--sign", carol_key, "--reason", f"{stage}: checked")


def test_a_run_that_does_not_say_who_started_it_is_refused_at_its_gates(estate):
    """``triggered_by`` null (what a caller that cannot say sends; the deployment form requires it): with
    distinct_from_trigger, each gate refuses at once with a clear reason, nothing destructive runs, the run ends."""
    sb, _key, _api = estate
    incident, jpath = "slack-e2e-no-trigger", sb.root / "journal.sqlite"
    with RegistryClient(sb.registry.host, base_url=sb.registry.base_url) as reg:
        present = {b.digest for b in sb.attacker.values() if reg.exists(REPO, b.digest)}
    t, box = _run_in_thread(advisory=str(sb.advisory_path), inventory=str(sb.inventory_path), mode="execute",
                            incident_id=incident, triggered_by=None)
    t.join(300)
    assert not t.is_alive() and "error" not in box, box.get("error")
    summary = box["state"].result(raise_on_failure=False)
    assert isinstance(summary, dict), summary
    assert set(summary["rotate"]) == {"skipped"} and set(summary["purge"]) == {"skipped"}
    j = Journal(jpath)
    for stage in ("rotate", "purge"):
        (row,) = [e for e in j.entries(incident, "approval") if e.target == stage]
        assert row.status == "failed"
    whys = [e["detail"]["why"] for e in _events(jpath, incident, "refused")]
    assert len(whys) == 2 and all(w == "no triggered_by" for w in whys), whys
    assert not [e for e in j.entries(incident) if e.stage in ("rotate", "purge") and e.status == "done"]
    with RegistryClient(sb.registry.host, base_url=sb.registry.base_url) as reg:
        assert {d for d in present if reg.exists(REPO, d)} == present
    text = sb.slack.all_text()
    assert "this run does not say who started it: start it again with triggered_by set" in text


def test_slack_and_signed_terminal_approvals_through_a_whole_incident(estate, tmp_path):
    sb, carol_key, api = estate
    incident, jpath = "slack-e2e-1", sb.root / "journal.sqlite"
    vault = hvac.Client(url=sb.openbao.addr, token=sb.openbao.token)
    iam = boto3.client("iam", endpoint_url=sb.moto.endpoint_url, region_name="us-east-1")
    kv_before = vault.secrets.kv.v2.read_secret_metadata(path="ci/kics-api-token-0")["data"]["current_version"]
    keys_before = {k["AccessKeyId"] for k in iam.list_access_keys(UserName="ci-deployer")["AccessKeyMetadata"]}
    gsm = gcp_secrets.secret_manager_client(credentials=AnonymousCredentials(), api_endpoint=sb.gcp.url, transport="rest")
    gcp_before = len(gcp_secrets.list_versions(gsm, "projects/drill/secrets/sonar-token"))
    with DockerEngine(sb.podman.url) as eng:
        images_before = {i.id for i in eng.list_images()}

    t, box = _run_in_thread(advisory=str(sb.advisory_path), inventory=str(sb.inventory_path), mode="execute",
                            incident_id=incident, triggered_by="oncall")
    _gate(sb, jpath, incident, "rotate", api, carol_key, tmp_path)
    run_id = _events(jpath, incident, "asked", "rotate")[-1]["detail"]["flow_run_id"]
    _until("manual rotation pause", lambda: _paused_key(run_id) and not _events(jpath, incident, "asked", "purge")
           and any(e.status == "done" for e in Journal(jpath).entries(incident, "rotate")))
    _cli(api, tmp_path, "confirm", run_id, "--who", "carol", "--note", "vendor portal")
    _gate(sb, jpath, incident, "purge", api, carol_key, tmp_path)
    t.join(240)
    assert not t.is_alive() and "error" not in box, box.get("error")
    state = box["state"]
    summary = state.result(raise_on_failure=False)
    assert isinstance(summary, dict), summary
    assert summary["rotate"].get("failed", 0) == 0 and summary["rotate"].get("done", 0) >= 4, summary["rotate"]
    assert summary["purge"].get("done", 0) >= 10 and summary["purge"].get("failed", 0) == 0, summary["purge"]

    # the destructive steps ran exactly once
    assert vault.secrets.kv.v2.read_secret_metadata(path="ci/kics-api-token-0")["data"]["current_version"] == kv_before + 1
    keys_after = {k["AccessKeyId"] for k in iam.list_access_keys(UserName="ci-deployer")["AccessKeyMetadata"]}
    assert len(keys_after) == 1 and keys_after.isdisjoint(keys_before)
    assert len(gcp_secrets.list_versions(gsm, "projects/drill/secrets/sonar-token")) == gcp_before + 1
    with RegistryClient(sb.registry.host, base_url=sb.registry.base_url) as reg:
        assert not any(reg.exists(REPO, b.digest) for b in sb.attacker.values())
    with DockerEngine(sb.podman.url) as eng:
        assert {i.id for i in eng.list_images()} < images_before
    j = Journal(jpath)
    done = [(e.target, e.action) for e in j.entries(incident) if e.stage in ("rotate", "purge") and e.status == "done"]
    assert len(done) == len(set(done))
    assert len(_events(jpath, incident, "asked", "rotate")) == 1 and len(_events(jpath, incident, "asked", "purge")) == 1

    # each approver recorded with how they were verified: journal, report, Slack
    want = [{"name": "bob", "via": "slack", "verified": "yes"}, {"name": "carol", "via": "ssh", "verified": "yes"}]
    for stage in ("rotate", "purge"):
        (row,) = [e for e in j.entries(incident, "approval") if e.target == stage]
        assert row.status == "done" and row.approver == "bob,carol" and row.detail["identities"] == want, row.detail
    refusals = _events(jpath, incident, "refused")
    assert len(refusals) == 2 and all("U0MALLORY is not a listed approver" in r["detail"]["why"] for r in refusals)
    html = Path(summary["report"]).read_text()
    assert html.count("bob (slack, verified), carol (ssh, verified)") >= 2
    text = sb.slack.all_text()
    assert text.count("Approved* by bob (slack, verified), carol (ssh, verified)") >= 2
    assert sb.slack.calls_to("apps.connections.open") and all(c.authorized for c in sb.slack.calls_to("apps.connections.open"))
