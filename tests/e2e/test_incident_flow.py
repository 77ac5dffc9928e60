"""The incident flow end to end, on the drill's sandbox: real registry, podman, OpenBao and moto, and local
servers speaking the GitHub, Slack and GCP Secret Manager protocols (no real ones can run here).

- a dry run plans every stage and changes nothing in any backend;
- an execute run pauses at the rotation gate, is approved from outside (the same call `digestguard approve`
  makes), pauses at the purge gate, is rejected there, and ends with rotation done and nothing purged;
- an answer bound to another plan's hash is refused and the gate asks again;
- the drill itself passes its scorecard.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from pathlib import Path

import boto3
import hvac
import pytest

from digestguard.advisory import load_advisory
from digestguard.journal import Journal
from flows.approval import answer_paused_run
from flows.drill.flow import REPO, build_sandbox, run_drill
from integrations.docker_engine import DockerEngine
from integrations.registry import RegistryClient


@pytest.fixture
def sandbox(tmp_path, prefect_harness):
    with contextlib.ExitStack() as stack:
        yield build_sandbox(load_advisory("kics-2026-04"), tmp_path, stack)


def _backend_state(sb) -> dict:
    """Everything a write would change: registry digests, engine images, Vault versions, IAM keys, GitHub, git."""
    with RegistryClient(sb.registry.host, base_url=sb.registry.base_url) as reg:
        present = sorted(d for d in {b.digest for b in sb.attacker.values()} if reg.exists(REPO, d))
    with DockerEngine(sb.podman.url) as eng:
        images = sorted(i.id for i in eng.list_images())
        containers = sorted(c.id for c in eng.list_containers())
    vault = hvac.Client(url=sb.openbao.addr, token=sb.openbao.token)
    kv = vault.secrets.kv.v2.read_secret_metadata(path="ci/kics-api-token-0")["data"]["current_version"]
    iam = boto3.client("iam", endpoint_url=sb.moto.endpoint_url, region_name="us-east-1")
    keys = sorted(k["AccessKeyId"] for k in iam.list_access_keys(UserName="ci-deployer")["AccessKeyMetadata"])
    sm = boto3.client("secretsmanager", endpoint_url=sb.moto.endpoint_url, region_name="us-east-1")
    sm_versions = sorted(sm.list_secret_version_ids(SecretId="ci/registry-password")["Versions"][0]["VersionStages"])
    branches = subprocess.run(["git", "--git-dir", str(sb.root / "git" / "infra.git"), "branch", "--list"],
                              capture_output=True, text=True, check=True).stdout
    workflow = (sb.root / "checkouts" / "infra" / ".github/workflows/scan.yml").read_bytes()
    return {"registry": present, "images": images, "containers": containers, "kv": kv, "iam": keys, "sm": sm_versions,
            "github_secrets": sorted(sb.github.secrets), "pulls": sum(len(p) for p in sb.github.pulls.values()),
            "branches": branches, "workflow": workflow}


def test_dry_run_changes_nothing(sandbox):
    from flows.incident_response import incident_response

    before = _backend_state(sandbox)
    _seed_tag_timeline(sandbox)
    summary = incident_response(advisory=str(sandbox.advisory_path), inventory=str(sandbox.inventory_path), mode="dry-run",
                                triggered_by="oncall")
    assert summary["detect_compromised"] and summary["assess"]["confirmed"] == 1
    assert summary["rotate"].get("planned", 0) >= 5 and summary["purge"].get("planned", 0) >= 10
    assert summary["pin"].get("planned", 0) == 3 and summary["pin"]["pull_requests"] == []
    assert _backend_state(sandbox) == before
    # what a dry run did write is only its own record
    j = Journal(sandbox.root / "journal.sqlite")
    assert {e.stage for e in j.entries(summary["incident"])} <= {"notify"}
    # issue 19: assess read the watch's tag timeline from the journal; the report draws it, and journals it
    (tl,) = [e["detail"] for e in j.events(summary["incident"]) if e["kind"] == "tag-timelines"]
    assert [t["reference"] for t in tl["timelines"]] == ["docker.io/checkmarx/kics:latest"]
    html = Path(summary["report"]).read_text()
    assert 'class="tag-interval malicious"' in html and 'class="tag-interval known"' in html


def _seed_tag_timeline(sb) -> None:
    """What a watch would have recorded for kics:latest: the clean image until the attack, then Docker Hub's push time."""
    from datetime import timedelta

    from digestguard.timeline import Observation
    from tasks.watch.timeline import record

    key, attack = "docker.io/checkmarx/kics:latest", sb.advisory.window.start

    def seen(minutes: int, digest: str, **kw) -> Observation:
        t = attack + timedelta(minutes=minutes)
        return Observation(reference=key, digest=digest, source=kw.pop("source", "watch"), detail="drill", first_at=t,
                           last_at=t, **kw)

    j = Journal(sb.root / "journal.sqlite")
    record(j, [seen(m, sb.clean["latest"].digest) for m in (-20, -15, -10, -5)]
           + [seen(m, sb.attacker["latest"].digest) for m in (4, 9)]
           + [seen(4, sb.attacker["latest"].digest, source="dockerhub", began_at=attack)])
    j.close()


def _run_in_thread(**kw):
    from flows.incident_response import incident_response

    box: dict = {}

    def go():
        try:
            box["state"] = incident_response(return_state=True, **kw)
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t, box


def _wait_for_gate(journal_path: Path, incident: str, stage: str, n: int = 1, timeout: float = 120) -> str:
    """Poll the journal for the n-th approval request of ``stage``; returns the flow run id once paused."""
    from prefect import get_client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if journal_path.exists():
            asked = [e for e in Journal(journal_path).events(incident) if e["kind"] == "asked" and e["detail"].get("stage") == stage]
            if len(asked) >= n:
                run_id = asked[-1]["detail"]["flow_run_id"]
                with get_client(sync_client=True) as c:
                    if c.read_flow_run(run_id).state.is_paused():
                        return run_id
        time.sleep(0.5)
    raise AssertionError(f"no paused {stage} gate within {timeout} s")


def _wait_for_pause_text(run_id: str, timeout: float = 120) -> str:
    """The description of the form a paused run shows next (waits for a new pause)."""
    from prefect import get_client
    from prefect.input.actions import read_flow_run_input
    from prefect.input.run_input import keyset_from_paused_state

    deadline = time.monotonic() + timeout
    time.sleep(1.5)
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as c:
            run = c.read_flow_run(run_id)
        if run.state.is_paused():
            text = read_flow_run_input(keyset_from_paused_state(run.state)["description"], flow_run_id=run.id)
            if text:
                return str(text)
        time.sleep(0.5)
    raise AssertionError("the run did not pause again")


def test_gates_approve_rotation_reject_purge_and_bind_the_hash(sandbox):
    incident = "e2e-gates-1"
    jpath = sandbox.root / "journal.sqlite"
    t, box = _run_in_thread(advisory=str(sandbox.advisory_path), inventory=str(sandbox.inventory_path), mode="execute",
                            incident_id=incident, triggered_by="oncall")
    run_id = _wait_for_gate(jpath, incident, "rotate")
    # an answer for a plan that is not the one shown is refused; the gate asks again
    from prefect.flow_runs import resume_flow_run

    resume_flow_run(run_id, run_input={"decision": "approve", "approver": "alice", "reason": "",
                                       "plan_hash": "sha256:" + "0" * 64})
    deadline = time.monotonic() + 60
    while not any(e["kind"] == "refused" for e in Journal(jpath).events(incident)):
        assert time.monotonic() < deadline, "the mismatched answer was not refused"
        time.sleep(0.3)
    run_id = _wait_for_gate(jpath, incident, "rotate")
    answer_paused_run(run_id, approver="alice", reason="confirmed exposure")
    # the manual checklist item (VENDOR_API_KEY) waits for a person at flow level
    assert "Manual rotation" in _wait_for_pause_text(run_id)
    # what the runbook asks of the person: re-issue at the vendor, put the new value in the primary store, confirm
    for tok in sandbox.gitlab.access_tokens.values():
        if tok["token"] == sandbox.old_creds["VENDOR_API_KEY"]["value"]:
            tok["active"] = False
    new_vendor_key = sandbox.gitlab.add_access_token("user:vendor-bot", "vendor-api")["token"]
    hvac.Client(url=sandbox.openbao.addr, token=sandbox.openbao.token).secrets.kv.v2.create_or_update_secret(
        path="ci/vendor-api-key", secret={"value": new_vendor_key})
    resume_flow_run(run_id, run_input={"rotated": True, "who": "carol", "note": "rotated on the vendor portal"})
    run_id = _wait_for_gate(jpath, incident, "purge")
    answer_paused_run(run_id, approver="bob", reject=True, reason="purge after the freeze")
    t.join(180)
    assert not t.is_alive() and "error" not in box, box.get("error")
    summary = box["state"].result(raise_on_failure=False)
    assert summary["rotate"].get("done", 0) >= 4
    assert summary["purge"] == {"skipped": summary["purge"]["skipped"]}  # nothing purged
    j = Journal(jpath)
    appr = {e.target: e for e in j.entries(incident, "approval")}
    print({k: (v.status, v.approver, v.action) for k, v in appr.items()})
    assert appr["rotate"].status == "done" and appr["rotate"].approver == "alice"
    assert appr["purge"].status == "failed" and appr["purge"].approver == "bob"
    with RegistryClient(sandbox.registry.host, base_url=sandbox.registry.base_url) as reg:
        assert reg.exists(REPO, sandbox.attacker["latest"].digest)  # rejected: still there
    text = sandbox.slack.all_text()
    assert "reject" in text.lower() and "alice" in text
    for name in ("KICS_API_TOKEN", "REGISTRY_PASSWORD"):
        assert sandbox.github.decrypt_secret("repo:acme/infra", name) not in text
    assert sandbox.github.decrypt_secret("repo:acme/infra", "VENDOR_API_KEY") == new_vendor_key  # propagated
    assert new_vendor_key not in text

    # a re-run of the same incident honours the approval given for the unchanged rotation plan and asks again for purge
    t, box = _run_in_thread(advisory=str(sandbox.advisory_path), inventory=str(sandbox.inventory_path), mode="execute",
                            incident_id=incident, triggered_by="oncall")
    run_id = _wait_for_gate(jpath, incident, "purge", n=2)
    answer_paused_run(run_id, approver="bob", reason="freeze over")
    t.join(180)
    summary = box["state"].result(raise_on_failure=False)
    assert summary["ok"] and summary["purge"].get("done", 0) >= 10
    assert len([e for e in Journal(jpath).events(incident) if e["kind"] == "asked" and e["detail"]["stage"] == "rotate"]) == 1


def test_drill_passes_its_scorecard(prefect_harness):
    card = run_drill("kics-2026-04", auto_approve=True)
    assert card["ok"], [s for s in card["stages"] if not s["ok"]]
    assert {s["name"] for s in card["stages"]} == {"detect", "assess", "rotate", "contain", "purge", "pin", "notify", "egress"}
    contain = next(s for s in card["stages"] if s["name"] == "contain")
    assert contain["actual"]["AWS_ACCESS_KEY_ID"]["used_after_exposure"] == "yes"
    assert contain["actual"]["VAULT_TOKEN"]["used_after_exposure"] == "yes"
    # the rotate stage claims no more than it checked: stores alone never make a secret "rotated"
    from flows.drill.flow import ISSUER_ACCEPTS, PERSON_ROTATED, STORE_ONLY

    said = next(s for s in card["stages"] if s["name"] == "rotate")["actual"]
    assert {k for k, v in said.items() if v == STORE_ONLY} == {"KICS_API_TOKEN", "REGISTRY_PASSWORD", "SONAR_TOKEN"}
    assert said["VENDOR_API_KEY"] == PERSON_ROTATED and said["AWS_ACCESS_KEY_ID"] == ISSUER_ACCEPTS
    assert not any("rotated" == v for v in said.values())


def test_drill_on_a_postgresql_journal_scores_from_that_journal(prefect_harness, postgres, monkeypatch):
    """``DIGESTGUARD_JOURNAL`` names a real PostgreSQL database: the run journals there, and the scorecard reads
    that journal too (its rows searched for secret values, the report rebuilt from it), not a SQLite file beside
    the inventory that does not exist."""
    from digestguard.journal import JOURNAL_ENV
    from tests.support.journal import fresh_pg_database

    url = fresh_pg_database(postgres, monkeypatch)
    monkeypatch.setenv(JOURNAL_ENV, url)
    card = run_drill("kics-2026-04", auto_approve=True)
    assert card["ok"], [s for s in card["stages"] if not s["ok"]]
    notify = next(s for s in card["stages"] if s["name"] == "notify")
    assert notify["actual"]["report rebuilt from the journal differs in"] == []
    j = Journal(url)
    try:
        assert card["incident"] in j.incidents() and j.entries(card["incident"], "rotate")
    finally:
        j.close()
