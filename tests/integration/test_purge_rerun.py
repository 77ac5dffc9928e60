"""A purge that crashed after its last deletion is verified by the re-run (issue 15, point 6b).

Real parts: Debian's docker-registry with deletion enabled (``tests.support.registry``). The first run deletes
every malicious manifest and dies before verifying (a crash: the process gone between the last DELETE and the
first check). The re-run's detect no longer finds the digests, so its plan is empty; it must verify what the
journal says was deleted (against the registry itself), and say so, instead of an empty "ok".
"""

from __future__ import annotations

import pytest

import tasks.purge as purge
from digestguard.journal import Journal
from digestguard.plan import Approval
from tasks.connect import Connections
from tasks.detect import detect
from tests.integration.test_detect_purge import REPO, estate  # noqa: F401 - the fixture, reused


class Crash(BaseException):
    """The process dying: not an error any stage would catch."""


def _crash_before_verifying(monkeypatch, adv, inv, journal):
    res = detect(adv, inv)
    plan = purge.plan_purge("inc-1", adv, res, inv)
    assert plan.items
    monkeypatch.setattr(purge, "verify_purge", lambda *a, **k: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        purge.apply_purge(plan, Approval(decision="approve", approvers=["alice"], plan_hash=plan.hash), inv, journal)
    monkeypatch.undo()
    return plan


def test_rerun_after_the_last_deletion_verifies(estate, monkeypatch, tmp_path):  # noqa: F811
    adv, inv, bad_latest, bad_v2120, _clean_old, clean_alpine = estate
    journal = Journal(tmp_path / "journal.sqlite")
    first = _crash_before_verifying(monkeypatch, adv, inv, journal)

    again = purge.plan_purge("inc-1", adv, detect(adv, inv), inv)
    assert again.items == []  # nothing left to delete: the old code said ok here and never looked
    with Connections(inv) as conn:
        result = purge.reverify_purge("inc-1", adv.id, inv, journal, conn, known_good={f"mirror/{REPO}": clean_alpine.digest})
    assert result is not None and result.ok
    absent = {v.target for v in result.verification if v.action == "verify-absent" and v.outcome == "done"}
    assert absent == {i.target for i in first.items}  # every earlier deletion checked against the registry
    assert any(v.action == "verify-known-good" and v.outcome == "done" for v in result.verification)
    assert {a.outcome for a in result.actions} == {"already-done"} and len(result.actions) == len(first.items)
    assert "earlier run" in " ".join(result.notes)
    journal.close()


def test_a_run_with_nothing_deleted_before_has_nothing_to_verify(tmp_path):
    journal = Journal(tmp_path / "journal.sqlite")
    assert purge.earlier_purged_items(journal, "inc-none") == []
    journal.close()
