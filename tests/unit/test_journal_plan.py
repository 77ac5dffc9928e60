"""The journal remembers side effects across processes; plans bind approvals to their hash."""

import subprocess
import sys

import pytest

from digestguard.errors import InputError, PlanNotApproved
from digestguard.journal import Journal
from digestguard.plan import Approval, Plan, PlanItem, require_approved


def test_step_records_started_done_and_failure(journal_location):
    j = Journal(journal_location)
    assert not j.is_done("inc-1", "purge", "mirror/kics@sha256:x", "delete-manifest")
    with j.step("inc-1", "purge", "mirror/kics@sha256:x", "delete-manifest", approver="alice") as rec:
        rec.note(status_code=202)
    assert j.is_done("inc-1", "purge", "mirror/kics@sha256:x", "delete-manifest")
    with pytest.raises(RuntimeError):
        with j.step("inc-1", "rotate", "vault:kv/ci", "write-version"):
            raise RuntimeError("vault sealed")
    e = j.get("inc-1", "rotate", "vault:kv/ci", "write-version")
    assert e.status == "failed" and "vault sealed" in e.error and e.attempts == 1
    rows = j.entries("inc-1")
    assert {(r.stage, r.status) for r in rows} == {("purge", "done"), ("rotate", "failed")}
    assert rows[0].approver == "alice"


def test_journal_survives_a_new_process(journal_location):
    path = journal_location
    code = (f"from digestguard.journal import Journal; "
            f"Journal({str(path)!r}).record('inc', 'rotate', 't', 'a', 'done', detail={{'version': 3}})")
    subprocess.run([sys.executable, "-c", code], check=True)
    j = Journal(path)
    assert j.is_done("inc", "rotate", "t", "a") and j.get("inc", "rotate", "t", "a").detail == {"version": 3}


def test_journal_refuses_secret_shaped_detail(journal_location):
    j = Journal(journal_location)
    with pytest.raises(InputError, match="secret"):
        j.record("inc", "rotate", "t", "a", "done", detail={"password": "x"})


def _plan(items=2):
    return Plan(stage="purge", incident="inc-1", advisory="kics-2026-04",
                items=[PlanItem(target=f"mirror/kics@sha256:{i}", action="delete-manifest", kind="registry")
                       for i in range(items)])


def test_plan_hash_is_stable_and_binds_the_approval():
    p = _plan()
    assert p.hash == _plan().hash and p.hash.startswith("sha256:")
    p.notes.append("free text does not change the hash")
    assert p.hash == _plan().hash
    ok = Approval(decision="approve", approvers=["alice"], plan_hash=p.hash)
    assert require_approved(p, ok) is ok
    with pytest.raises(PlanNotApproved, match="changed since it was approved"):
        require_approved(_plan(3), ok)
    with pytest.raises(PlanNotApproved, match="rejected"):
        require_approved(p, Approval(decision="reject", approvers=["bob"], plan_hash=p.hash))
    with pytest.raises(PlanNotApproved, match="no approval"):
        require_approved(p, None)
    md = p.markdown()
    assert p.hash in md and "delete-manifest" in md


def test_plan_opens_with_a_per_system_summary_and_cuts_nothing_in_the_table():
    long_reason = "confirmed exposure by 2 job(s); revoke-first; " + "x" * 300
    items = [PlanItem(target=f"mirror/checkmarx/kics@sha256:{n:064d}", action="delete-manifest", kind="registry",
                      reason="malicious child", params={"registry": "mirror", "repository": "checkmarx/kics"}) for n in range(3)]
    items.append(PlanItem(target="secret:AWS_ACCESS_KEY_ID", action="rotate", kind="aws-iam", reason=long_reason,
                          params={"backend": "aws-iam", "ref": {"account": "123456789012", "user": "ci-deployer"},
                                  "consumers": [{"kind": "github-actions-secret", "id": "gha:acme/infra:AWS_ACCESS_KEY_ID"}]}))
    md = Plan(stage="rotate", incident="i", advisory="a", items=items).markdown()
    summary = md[md.index("**By system**"):md.index("| # |")]
    assert "- registry mirror: 3 delete-manifest" in summary and "- aws-iam 123456789012: 1 rotate" in summary
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert max(len(r) for r in rows) < 90 and all("x" * 20 not in r for r in rows)  # narrow: reasons sit below
    full = f"mirror/checkmarx/kics@sha256:{2:064d}"
    assert long_reason in md and f"`{full}`\n   - where: registry mirror, repository checkmarx/kics" in md  # in full, below
    assert "`mirror/checkmarx/kics@sha256:000000000000…`" in rows[-2] and full not in "\n".join(rows)
    assert "- where: aws-iam: account 123456789012, user ci-deployer" in md
    assert "- copies held by: gha:acme/infra:AWS_ACCESS_KEY_ID" in md
