"""The approval policy's pieces on their own: name normalisation, the approvers list, SSH signatures over an
answer (real ``ssh-keygen -Y sign/verify``), and when an earlier approval still counts."""

from __future__ import annotations

import subprocess

import pytest
from pydantic import ValidationError

from digestguard.inventory import ApprovalPolicy, Approver
from digestguard.plan import Approval
from flows.approval import _meets_policy, normalise_name
from flows.identity import sign_answer, verify_answer

H = "sha256:" + "a" * 64
RUN = "11111111-2222-3333-4444-555555555555"


def test_names_are_trimmed_collapsed_and_case_folded():
    assert normalise_name("  Alice \t") == normalise_name("ALICE") == "alice"
    assert normalise_name("Mary  Ann") == "mary ann" and normalise_name("   ") == normalise_name(None) == ""


def test_one_person_one_entry_and_no_odd_names():
    with pytest.raises(ValidationError, match="share one slack_user_id"):
        ApprovalPolicy(approvers=[Approver(name="a", slack_user_id="U1"), Approver(name="b", slack_user_id="U1")])
    with pytest.raises(ValidationError, match="share one name"):
        ApprovalPolicy(approvers=[Approver(name="Bob"), Approver(name=" bob ")])
    for bad in ("", "  ", 'bo"b', "a,b", "*"):
        with pytest.raises(ValidationError):
            Approver(name=bad)
    assert ApprovalPolicy(approvers=[Approver(name=" Carol ")]).approver("carol").name == "carol"


def test_an_ssh_signature_binds_run_plan_and_decision(tmp_path):
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    other = tmp_path / "o"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    pub = (tmp_path / "k.pub").read_text()
    sig = sign_answer(str(key), plan_hash=H, run_id=RUN, decision="approve")
    assert "BEGIN SSH SIGNATURE" in sig
    ok = dict(principal="bob", public_key=pub, plan_hash=H, run_id=RUN, decision="approve")
    assert verify_answer(sig, **ok)
    assert not verify_answer(sig, **{**ok, "decision": "reject"})
    assert not verify_answer(sig, **{**ok, "run_id": RUN.replace("1", "9")})
    assert not verify_answer(sig, **{**ok, "plan_hash": "sha256:" + "b" * 64})
    assert not verify_answer(sig, **{**ok, "public_key": (tmp_path / "o.pub").read_text()})
    assert not verify_answer(sig.replace("A", "B", 5), **ok) and not verify_answer("", **ok)


def test_an_earlier_approval_counts_only_if_it_meets_the_policy_now():
    asserted = Approval(decision="approve", approvers=["alice"], plan_hash=H,
                        identities=[{"name": "alice", "via": "prefect-ui", "verified": "no"}])
    verified = Approval(decision="approve", approvers=["alice", "bob"], plan_hash=H,
                        identities=[{"name": "alice", "via": "ssh", "verified": "yes"},
                                    {"name": "bob", "via": "slack", "verified": "yes"}])
    assert _meets_policy(asserted, ApprovalPolicy())
    assert not _meets_policy(asserted, ApprovalPolicy(require_verified=True))
    assert not _meets_policy(asserted, ApprovalPolicy(two_approvers=True))
    assert _meets_policy(verified, ApprovalPolicy(require_verified=True, two_approvers=True))
