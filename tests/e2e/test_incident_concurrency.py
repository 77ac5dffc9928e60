"""Two runs of the same incident at once, end to end on the drill's sandbox (real registry, podman, OpenBao,
moto; local servers speaking GitHub's, Slack's and GCP Secret Manager's protocols), with the journal named by
``DIGESTGUARD_JOURNAL`` on SQLite and on a real PostgreSQL.

Run A pauses at the rotation gate holding the incident; run B of the same incident waits its bounded time
and ends Failed with one line naming A's flow run, host and since when, having written nothing. A then
goes on and rotates every credential once.
"""

from __future__ import annotations

import time

from digestguard.journal import JOURNAL_ENV, Journal
from flows.approval import answer_paused_run
from tests.e2e.test_incident_flow import _backend_state, _run_in_thread, _wait_for_pause_text, sandbox  # noqa: F401


def _wait_paused(location: str, incident: str, stage: str, timeout: float = 180) -> str:
    from prefect import get_client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        asked = [e for e in Journal(location).events(incident) if e["kind"] == "asked" and e["detail"].get("stage") == stage]
        if asked:
            run_id = asked[-1]["detail"]["flow_run_id"]
            with get_client(sync_client=True) as c:
                if c.read_flow_run(run_id).state.is_paused():
                    return run_id
        time.sleep(0.5)
    raise AssertionError(f"no paused {stage} gate within {timeout} s")


def test_a_second_run_of_the_incident_is_refused_naming_the_first(sandbox, journal_location, monkeypatch):  # noqa: F811
    monkeypatch.setenv(JOURNAL_ENV, journal_location)
    monkeypatch.setenv("DIGESTGUARD_LEASE_WAIT", "1")
    incident = "e2e-concurrent-1"
    before = _backend_state(sandbox)
    kw = dict(advisory=str(sandbox.advisory_path), inventory=str(sandbox.inventory_path), mode="execute",
              incident_id=incident, triggered_by="oncall")
    ta, box_a = _run_in_thread(**kw)
    run_a = _wait_paused(journal_location, incident, "rotate")

    tb, box_b = _run_in_thread(**kw)
    tb.join(120)
    assert not tb.is_alive() and "error" not in box_b, box_b.get("error")
    state_b = box_b["state"]
    assert state_b.is_failed()
    line = state_b.message
    assert f"incident:{incident} is held by flow run {run_a} on host " in line and " since 20" in line, line
    started = [e for e in Journal(journal_location).events(incident) if (e["stage"], e["kind"]) == ("flow", "started")]
    assert len(started) == 1 and started[0]["detail"]["flow_run_id"] == run_a  # B wrote nothing

    answer_paused_run(run_a, approver="alice", reason="confirmed exposure")
    from prefect.flow_runs import resume_flow_run

    assert "Manual rotation" in _wait_for_pause_text(run_a)
    resume_flow_run(run_a, run_input={"rotated": True, "who": "carol", "note": "vendor portal"})
    answer_paused_run(_wait_paused(journal_location, incident, "purge"), approver="bob", reject=True, reason="later")
    ta.join(180)
    assert not ta.is_alive() and "error" not in box_a, box_a.get("error")
    summary = box_a["state"].result(raise_on_failure=False)
    assert summary["rotate"].get("done", 0) >= 4, summary
    after = _backend_state(sandbox)
    assert after["kv"] == before["kv"] + 1  # rotated once
    rotated = [e for e in Journal(journal_location).entries(incident, "rotate") if e.action == "rotate"]
    assert rotated and all(e.status == "done" and e.attempts <= 1 for e in rotated)
    assert Journal(journal_location).lease_holder(f"incident:{incident}") is None  # A let go at its end
