"""The rotate stage's three answers per credential: old dead? new works? used after exposure?

Real issuers (moto with IAM auth, OpenBao with a file audit device); CloudTrail is the JSON 1.1
stand-in in ``flows/drill/servers/cloudtrail.py`` (moto has no LookupEvents).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import hvac
import pytest

from digestguard.advisory import load_advisory
from digestguard.findings import ExposedSecret, ExposureReport, StageResult
from digestguard.inventory import parse_inventory
from digestguard.journal import Journal
from digestguard.plan import Approval
from flows.drill.servers.cloudtrail import start_cloudtrail_server
from flows.drill.services import start_openbao
from integrations import vault
from tasks.rotate.stage import apply_rotation, plan_rotation
from tests.report_fixtures import sample_report


def _apply(tmp_path: Path, inv_data: dict, name: str, clients: dict, window_start: datetime, incident: str):
    inv = parse_inventory(inv_data, "inv", tmp_path)
    exposure = ExposureReport(advisory="a", window_start=window_start,
                              secrets=[ExposedSecret(name=name, mapped=True, inventory_name=name, exposure="confirmed",
                                                     exposed_by=["gh:acme/api/9"])])
    plan = plan_rotation(incident, load_advisory("kics-2026-04"), exposure, inv)
    approval = Approval(decision="approve", approvers=["alice"], plan_hash=plan.hash)
    return apply_rotation(plan, approval, inv, Journal(tmp_path / "j.sqlite"), clients=clients, probe_wait=5)


def _contain(result: StageResult):
    (c,) = [v for v in result.verification if v.action == "contain"]
    return c


def test_iam_key_used_after_exposure_is_yes_and_tops_the_needs_person_list(tmp_path, moto_iam_auth):
    iam, sm = moto_iam_auth.client("iam"), moto_iam_auth.client("secretsmanager")
    iam.create_user(UserName="ci-used")
    key = iam.create_access_key(UserName="ci-used")["AccessKey"]
    sm.create_secret(Name="ci/ci-used", SecretString=json.dumps(
        {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}))
    trail = start_cloudtrail_server()
    try:
        now = datetime.now(timezone.utc)
        trail.add_event("ListBuckets", now - timedelta(minutes=3), key["AccessKeyId"], ip="198.51.100.23")
        trail.add_event("ListBuckets", now - timedelta(hours=3), key["AccessKeyId"])  # before the exposure window
        ct = boto3.client("cloudtrail", endpoint_url=trail.url, region_name="us-east-1",
                          aws_access_key_id="AKIADUMMY", aws_secret_access_key="dummy")
        inv = {"backends": {"aws_endpoint_url": moto_iam_auth.endpoint_url, "aws_region": "us-east-1"},
               "secrets": [{"name": "ci-used", "issuer": {"kind": "aws-iam-access-key", "ref": {"user": "ci-used"}},
                            "stores": [{"kind": "aws-secretsmanager", "name": "ci/ci-used", "primary": True}]}]}
        result = _apply(tmp_path, inv, "ci-used", {"iam": iam, "secretsmanager": sm, "cloudtrail": ct},
                        now - timedelta(hours=1), "inc-used")
    finally:
        trail.stop()
    c = _contain(result)
    assert c.outcome == "done" and c.detail["old_refused"] and c.detail["new_works"]
    assert c.detail["used_after_exposure"] == "yes" and len(c.detail["used_evidence"]) == 1
    assert "ListBuckets" in c.detail["used_evidence"][0] and "198.51.100.23" in c.detail["used_evidence"][0]
    (person,) = [a for a in result.actions if a.action == "used-after-exposure"]
    assert person.outcome == "needs-person" and person.error.startswith("investigate what ci-used did between ")
    report = sample_report().model_copy(update={"rotate": result, "needs_person": ["an item listed before"]})
    first = report.all_needs_person()[0]
    assert "used-after-exposure secret:ci-used" in first and "investigate what ci-used did" in first
    # the report (and the Slack summary built from summary_lines) shows the three answers and the time to death
    assert any(x.startswith("Contained: 1 of 1 old credential(s) refused by their issuer (slowest ") and
               x.endswith("s after approval); 1 used after exposure") for x in report.summary_lines())
    md = report.markdown()
    assert "## Containment" in md and "secret:ci-used: rotated; old refused: yes (" in md
    assert "new works: yes; copies in step: yes; used after exposure: yes" in md and "198.51.100.23" in md
    assert key["SecretAccessKey"] not in md


def test_a_cloudtrail_lookup_cut_short_resumes_from_its_journaled_page_token(tmp_path, moto_iam_auth):
    """CloudTrail fails after two pages (503): the verdict is not-yet-known, the page token and the hits read so
    far are journaled; the next run asks CloudTrail from that token on, never the first pages again, and finds
    every use."""
    from botocore.config import Config

    iam, sm = moto_iam_auth.client("iam"), moto_iam_auth.client("secretsmanager")
    iam.create_user(UserName="ci-pages")
    key = iam.create_access_key(UserName="ci-pages")["AccessKey"]
    sm.create_secret(Name="ci/ci-pages", SecretString=json.dumps(
        {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}))
    trail = start_cloudtrail_server(page_size=2)
    try:
        now = datetime.now(timezone.utc)
        ids = {trail.add_event("GetObject", now - timedelta(minutes=10 + i), key["AccessKeyId"])["EventId"] for i in range(7)}
        ct = boto3.client("cloudtrail", endpoint_url=trail.url, region_name="us-east-1", aws_access_key_id="AKIADUMMY",
                          aws_secret_access_key="dummy", config=Config(retries={"total_max_attempts": 1}))
        inv = {"backends": {"aws_endpoint_url": moto_iam_auth.endpoint_url, "aws_region": "us-east-1"},
               "secrets": [{"name": "ci-pages", "issuer": {"kind": "aws-iam-access-key", "ref": {"user": "ci-pages"}},
                            "stores": [{"kind": "aws-secretsmanager", "name": "ci/ci-pages", "primary": True}]}]}
        clients = {"iam": iam, "secretsmanager": sm, "cloudtrail": ct}
        trail.fail_after = 2
        first = _apply(tmp_path, inv, "ci-pages", clients, now - timedelta(hours=1), "inc-pages")
        assert _contain(first).detail["used_after_exposure"] == "not-yet-known"
        row = Journal(tmp_path / "j.sqlite").get("inc-pages", "rotate", "secret:ci-pages", "used-after-exposure")
        (pages,) = row.detail["cloudtrail_pages"].values()
        assert pages["token"] == "page-4" and len(pages["hits"]) == 4
        served = len(trail.requests)
        trail.fail_after = None
        second = _apply(tmp_path, inv, "ci-pages", clients, now - timedelta(hours=1), "inc-pages")
    finally:
        trail.stop()
    asked = [body for _, body in trail.requests[served:]]
    assert asked and asked[0].get("NextToken") == "page-4"  # resumed at the journaled token, first pages not read again
    c = _contain(second)
    assert c.detail["used_after_exposure"] == "yes"
    assert sorted(e.rsplit("[event ", 1)[1].rstrip("]") for e in c.detail["used_evidence"]) == sorted(ids)
    done = Journal(tmp_path / "j.sqlite").get("inc-pages", "rotate", "secret:ci-pages", "used-after-exposure")
    assert done.status == "done" and not done.detail["cloudtrail_pages"]


@pytest.fixture()
def audited(tmp_path):
    d = tempfile.mkdtemp(prefix="dg-audit-")
    log = str(Path(d) / "audit.log")
    server = start_openbao(audit_log=log)
    yield server, log
    server.stop()
    shutil.rmtree(d, ignore_errors=True)


def test_vault_token_used_after_exposure_found_in_the_audit_log(tmp_path, audited):
    server, log = audited
    root = hvac.Client(url=server.addr, token=server.token)
    start = datetime.now(timezone.utc) - timedelta(minutes=1)
    made = root.auth.token.create(policies=["default"], ttl="1h")["auth"]
    hvac.Client(url=server.addr, token=made["client_token"]).auth.token.renew_self()  # the attacker's use
    bao = vault.connect(server.addr, server.token)
    bao.secrets.kv.v2.create_or_update_secret(path="ci/tok", secret={"value": made["client_token"]})
    inv = {"backends": {"vault_url": server.addr},
           "secrets": [{"name": "tok", "issuer": {
               "kind": "vault-token", "ref": {"accessor": made["accessor"], "audit_log": log, "audit_device": "file"}},
                        "stores": [{"kind": "vault-kv", "path": "ci/tok", "primary": True}]}]}
    result = _apply(tmp_path, inv, "tok", {"vault": bao}, start, "inc-tok")
    c = _contain(result)
    assert c.outcome == "done" and c.detail["containment"] == "rotated", c
    assert c.detail["used_after_exposure"] == "yes", c.detail
    assert any("auth/token/renew-self" in line for line in c.detail["used_evidence"])
    assert not any("lookup-self" in line for line in c.detail["used_evidence"])  # our own probes are left out
    assert made["client_token"] not in result.model_dump_json()


def test_without_a_trail_the_answer_is_not_yet_known(tmp_path, openbao):
    bao = vault.connect(openbao.addr, openbao.token)
    root = hvac.Client(url=openbao.addr, token=openbao.token)
    made = root.auth.token.create(policies=["default"], ttl="1h")["auth"]
    bao.secrets.kv.v2.create_or_update_secret(path="ci/tok2", secret={"value": made["client_token"]})
    inv = {"backends": {"vault_url": openbao.addr},
           "secrets": [{"name": "tok2", "issuer": {"kind": "vault-token", "ref": {"accessor": made["accessor"]}},
                        "stores": [{"kind": "vault-kv", "path": "ci/tok2", "primary": True}]}]}
    result = _apply(tmp_path, inv, "tok2", {"vault": bao}, datetime.now(timezone.utc) - timedelta(hours=1), "inc-tok2")
    c = _contain(result)
    assert c.outcome == "done" and c.detail["used_after_exposure"] == "not-yet-known"
    assert c.detail["used_evidence"] == ["no audit_log in the issuer's ref"]
    assert not [a for a in result.actions if a.action == "used-after-exposure"]
