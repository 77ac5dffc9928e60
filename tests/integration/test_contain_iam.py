"""Proof of death for IAM access keys against moto in server mode with IAM authentication on.

moto (a real AWS API server here) checks every request's signature against its IAM users once
``INITIAL_NO_AUTH_ACTION_COUNT`` is used up, so a deleted key really gets ``InvalidClientTokenId``
from STS ``GetCallerIdentity``: the probe the rotate stage uses to count a key as dead.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from digestguard.advisory import load_advisory
from digestguard.findings import ExposedSecret, ExposureReport
from digestguard.inventory import parse_inventory
from digestguard.journal import Journal
from digestguard.plan import Approval
from integrations import aws_sts
from tasks.rotate.stage import apply_rotation, plan_rotation


def _run(tmp_path: Path, auth, user: str, strategy: str, *, approved_at: datetime | None = None, probe_wait: float = 10):
    inv = parse_inventory({
        "backends": {"aws_endpoint_url": auth.endpoint_url, "aws_region": "us-east-1"},
        "secrets": [{"name": user, "strategy": strategy, "issuer": {"kind": "aws-iam-access-key", "ref": {"user": user}},
                     "stores": [{"kind": "aws-secretsmanager", "name": f"ci/{user}", "primary": True}]}]}, "inv", tmp_path)
    exposure = ExposureReport(advisory="a", window_start=datetime(2026, 4, 22, tzinfo=timezone.utc),
                              secrets=[ExposedSecret(name=user, mapped=True, inventory_name=user, exposure="confirmed",
                                                     exposed_by=["gh:acme/api/7"])])
    plan = plan_rotation("inc-iam", load_advisory("kics-2026-04"), exposure, inv)
    approval = Approval(decision="approve", approvers=["alice"], plan_hash=plan.hash,
                        at=approved_at or datetime.now(timezone.utc))
    journal = Journal(tmp_path / "j.sqlite")
    clients = {"iam": auth.client("iam"), "secretsmanager": auth.client("secretsmanager")}
    return apply_rotation(plan, approval, inv, journal, clients=clients, probe_wait=probe_wait), journal, plan


def _exposed_user(auth, user: str) -> dict:
    iam, sm = auth.client("iam"), auth.client("secretsmanager")
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    pair = {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}
    sm.create_secret(Name=f"ci/{user}", SecretString=json.dumps(pair))
    return pair


def test_the_probe_itself_tells_a_live_key_from_a_deleted_one(moto_iam_auth):
    pair = _exposed_user(moto_iam_auth, "probe-user")
    verdict, arn = aws_sts.caller_identity(pair["access_key_id"], pair["secret_access_key"],
                                           endpoint_url=moto_iam_auth.endpoint_url)
    assert (verdict, arn.endswith(":user/probe-user")) == ("accepted", True)
    wrong = aws_sts.caller_identity(pair["access_key_id"], "not-the-secret", endpoint_url=moto_iam_auth.endpoint_url)
    assert wrong[0] == "refused"
    iam = moto_iam_auth.client("iam")
    iam.update_access_key(UserName="probe-user", AccessKeyId=pair["access_key_id"], Status="Inactive")
    iam.delete_access_key(UserName="probe-user", AccessKeyId=pair["access_key_id"])
    assert aws_sts.caller_identity(pair["access_key_id"], pair["secret_access_key"],
                                   endpoint_url=moto_iam_auth.endpoint_url) == ("refused", "InvalidClientTokenId")


@pytest.mark.parametrize("strategy", ["revoke-first", "overlap"])
def test_iam_rotation_is_rotated_only_once_sts_refuses_the_old_key_and_accepts_the_new(tmp_path, moto_iam_auth, strategy):
    user = f"ci-{strategy}"
    old = _exposed_user(moto_iam_auth, user)
    approved = datetime.now(timezone.utc) - timedelta(seconds=2)
    result, journal, plan = _run(tmp_path, moto_iam_auth, user, strategy, approved_at=approved)
    assert [a.outcome for a in result.actions] == ["done"], result
    (proof,) = [v for v in result.verification if v.action == "contain"]
    assert proof.outcome == "done" and proof.detail["containment"] == "rotated", proof
    assert proof.detail["old_refused"] and proof.detail["new_works"]
    assert "InvalidClientTokenId" in proof.detail["old_evidence"] and ":user/" + user in proof.detail["new_evidence"]
    # the time from approval to "old refused" is journaled per credential (2 s of it before the run started)
    row = journal.get("inc-iam", "rotate", f"secret:{user}", "old-refused")
    assert row.status == "done" and 2.0 <= row.detail["seconds_since_approval"] < 60
    assert proof.detail["seconds_to_old_refused"] == row.detail["seconds_since_approval"]
    # checked against the issuer itself, outside the product: the old key is refused, the stored new one works
    assert aws_sts.caller_identity(old["access_key_id"], old["secret_access_key"],
                                   endpoint_url=moto_iam_auth.endpoint_url)[0] == "refused"
    new = json.loads(moto_iam_auth.client("secretsmanager").get_secret_value(
        SecretId=f"ci/{user}", VersionStage="AWSCURRENT")["SecretString"])
    assert new["access_key_id"] != old["access_key_id"]
    assert aws_sts.caller_identity(new["access_key_id"], new["secret_access_key"],
                                   endpoint_url=moto_iam_auth.endpoint_url)[0] == "accepted"
    # no value anywhere in the journal or the result
    dumped = json.dumps([e.detail for e in journal.entries("inc-iam")]) + result.model_dump_json()
    assert old["secret_access_key"] not in dumped and new["secret_access_key"] not in dumped
    # a second run changes nothing and keeps the proof
    again, _, _ = _run(tmp_path, moto_iam_auth, user, strategy)
    assert [a.outcome for a in again.actions] == ["already-done"]
    assert [v.detail["containment"] for v in again.verification if v.action == "contain"] == ["rotated"]


def test_an_issuer_that_never_refuses_is_reported_as_old_key_still_alive(tmp_path, moto_server):
    """The session moto server has IAM auth off: every key is accepted, so the old one is NOT proven dead."""
    import boto3

    class NoAuth:
        endpoint_url = moto_server

        @staticmethod
        def client(service):
            return boto3.client(service, endpoint_url=moto_server, region_name="us-east-1")

    _exposed_user(NoAuth, "ci-noauth")
    result, journal, _ = _run(tmp_path, NoAuth, "ci-noauth", "revoke-first", probe_wait=0.5)
    (proof,) = [v for v in result.verification if v.action == "contain"]
    assert proof.outcome == "failed" and proof.detail["containment"] == "old credential still accepted by its issuer"
    assert not proof.detail["old_refused"] and not result.ok
    assert journal.get("inc-iam", "rotate", "secret:ci-noauth", "old-refused").status == "failed"
