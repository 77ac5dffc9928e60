"""The drill's ``contain`` stage asks the issuers themselves, so it cannot be passed by a playbook that only says so.

Real servers where they exist here (moto with IAM authentication on, PostgreSQL, OpenBao with a file audit
device); the Docker Hub, GitLab and CloudTrail stand-ins in ``flows/drill/servers/`` speak the vendors'
wire protocols. No Prefect: the sandbox is built and scored without running the playbook.
"""

from __future__ import annotations

import contextlib

from digestguard.advisory import load_advisory
from flows.drill import flow as drill
from flows.drill.flow import ISSUED, USED_AFTER_EXPOSURE, build_sandbox


def test_untouched_sandbox_fails_contain_and_a_playbook_claim_does_not_change_that(tmp_path):
    with contextlib.ExitStack() as stack:
        sb = build_sandbox(load_advisory("kics-2026-04"), tmp_path, stack)
        # the playbook's summary claims everything is dead and used: the issuers disagree
        claims = {"contain": {n: {"old_refused": True, "new_works": True, "used_after_exposure": "yes"} for n in ISSUED}}
        st = drill._score_contain(sb, claims)
        assert not st.ok
        assert set(st.actual) == {*ISSUED, "VENDOR_API_KEY"}
        for name in st.actual:  # every exposed credential still works at its issuer; no copy was replaced
            assert st.actual[name]["old_refused"] is False, name
            assert st.actual[name]["new_works"] is True, name  # the store still holds the (live) old value
            assert st.actual[name]["copies_in_step"] is False, name
        # the planted uses are really in the providers' trails (what the playbook must find)
        assert sb.cloudtrail.events and sb.cloudtrail.events[0]["AccessKeyId"] == sb.planted["old_iam_key"]
        audit = (sb.root / "bao-audit.log").read_text()
        assert "secret/data/ci/kics-api-token-0" in audit
        assert set(USED_AFTER_EXPOSURE) <= set(ISSUED)
        # nothing was rotated: the rotate stage says so per secret, and an issuer that cannot be asked is said too
        rot = drill._score_rotation(sb, {})
        assert not rot.ok and set(rot.actual.values()) == {drill.NOT_REPLACED}

        def unreachable(_sb):
            raise ConnectionError("issuers down")

        sb.issuer_checks = None
        stack.enter_context(_patched(drill, "_issuer_checks", unreachable))
        rot = drill._score_rotation(sb, {})
        assert not rot.ok and {rot.actual[n] for n in ISSUED} == {drill.ISSUER_NOT_ASKED}


@contextlib.contextmanager
def _patched(module, name, value):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def test_contain_is_not_ok_when_the_planted_use_is_not_reported(tmp_path, monkeypatch):
    """Every credential proven dead, but the playbook answered ``no``/nothing for a planted use: not ok."""
    sb = drill.Sandbox(root=tmp_path, advisory=None, advisory_path=tmp_path, inventory_path=tmp_path)  # type: ignore[arg-type]
    sb.issuer_checks = {n: ("refused", "accepted", True) for n in (*ISSUED, "VENDOR_API_KEY")}
    all_yes = {"contain": {n: {"used_after_exposure": "yes"} for n in USED_AFTER_EXPOSURE}}
    assert drill._score_contain(sb, all_yes).ok
    one_no = {"contain": {**all_yes["contain"], "VAULT_TOKEN": {"used_after_exposure": "no"}}}
    assert not drill._score_contain(sb, one_no).ok
    assert drill._score_contain(sb, {}).actual["AWS_ACCESS_KEY_ID"]["used_after_exposure"] == "not-yet-known"
    assert not drill._score_contain(sb, {}).ok
    sb.issuer_checks = {**sb.issuer_checks, "GITLAB_TOKEN": ("accepted", "accepted", True)}
    assert not drill._score_contain(sb, all_yes).ok
    sb.issuer_checks = {**sb.issuer_checks, "GITLAB_TOKEN": ("unknown (Unavailable)", "accepted", True)}
    assert not drill._score_contain(sb, all_yes).ok
