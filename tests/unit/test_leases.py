"""One actor per incident, one per credential: the journal's leases on SQLite and on a real PostgreSQL.

Each test tries to break a lease from outside: a second holder, a waiter, racing processes,
a holder SIGKILLed while holding, a holder that outlives its ttl by renewing.
"""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from digestguard.errors import InputError
from digestguard.journal import Holder, Journal, LeaseHeld, lease_wait_default
from flows.incident_lease import hold_incident, incident_id_for


def test_a_second_holder_is_refused_with_one_line_naming_the_first(journal_location):
    j = Journal(journal_location)
    first = Holder.here("0f3c1e2a-1111-4c4c-9d9d-aaaaaaaaaaaa")
    lease = hold_incident(j, "inc-1", first.flow_run, wait=0)
    t0 = time.monotonic()
    with pytest.raises(LeaseHeld) as e:
        hold_incident(Journal(journal_location), "inc-1", "9b9b9b9b-2222-4c4c-9d9d-bbbbbbbbbbbb", wait=1.0)
    waited = time.monotonic() - t0
    msg = str(e.value)
    assert 0.9 <= waited < 5, waited  # bounded: waited about as long as asked, then refused
    assert "\n" not in msg and msg.startswith("incident:inc-1 is held by flow run 0f3c1e2a-1111-4c4c-9d9d-aaaaaaaaaaaa")
    assert f"on host {socket.gethostname()} (pid {os.getpid()}) since 20" in msg and "waited 1 s" in msg
    info = j.lease_holder("incident:inc-1")
    assert info.flow_run == first.flow_run and info.since in msg
    lease.release()
    assert j.lease_holder("incident:inc-1") is None
    hold_incident(Journal(journal_location), "inc-1", "9b9b9b9b-2222-4c4c-9d9d-bbbbbbbbbbbb", wait=0).release()


def test_a_waiter_gets_the_lease_when_the_holder_lets_go(journal_location):
    import threading

    j = Journal(journal_location)
    lease = j.lease("credential:secret:a", Holder.here(), ttl=5)
    threading.Timer(0.8, lease.release).start()
    t0 = time.monotonic()
    with Journal(journal_location).lease("credential:secret:a", Holder.here(), wait=10, poll=0.1):
        assert 0.7 <= time.monotonic() - t0 < 5


def test_the_same_flow_run_takes_its_lease_over_at_once(journal_location):
    """A Prefect retry of the same flow run, on another machine after a crash, is the same actor."""
    run = "5e5e5e5e-3333-4c4c-9d9d-cccccccccccc"
    j = Journal(journal_location)
    crashed = j.lease("incident:inc-2", Holder(owner=f"flow-run:{run}", flow_run=run, host="worker-a", pid=1), ttl=60)
    since = j.lease_holder("incident:inc-2").since
    crashed._stop.set()  # its process "died": no more renewals, no release
    with Journal(journal_location).lease("incident:inc-2", Holder.here(run), wait=0):
        info = j.lease_holder("incident:inc-2")
        assert info.host == socket.gethostname() and info.since == since  # held continuously by the same run


def test_renewal_keeps_a_lease_past_its_ttl(journal_location):
    j = Journal(journal_location)
    with j.lease("incident:inc-3", Holder.here(), ttl=0.6):
        time.sleep(2.0)
        with pytest.raises(LeaseHeld):
            Journal(journal_location).lease("incident:inc-3", Holder.here(), wait=0)


_HOLD = textwrap.dedent("""
    import os, sys, time
    from digestguard.journal import Holder, Journal, LeaseHeld
    location, name, go, ttl, stop = sys.argv[1:6]
    j = Journal(location)
    print("ready", flush=True)
    while go != "-" and not os.path.exists(go):
        time.sleep(0.005)
    try:
        lease = j.lease(name, Holder.here(), ttl=float(ttl), wait=0)
    except LeaseHeld:
        print("held", flush=True)
        sys.exit(0)
    print("won", flush=True)
    while not os.path.exists(stop):
        time.sleep(0.05)
    lease.release()
""")


def test_racing_processes_exactly_one_wins(journal_location, tmp_path):
    """Six processes, each connected and waiting, try the same lease at one signal; the winner holds until all answered."""
    go, stop = tmp_path / "go", tmp_path / "stop"
    procs = [subprocess.Popen([sys.executable, "-c", _HOLD, journal_location, "incident:race", str(go), "60", str(stop)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    try:
        assert [p.stdout.readline().strip() for p in procs] == ["ready"] * 6
        go.touch()
        answers = sorted(p.stdout.readline().strip() for p in procs)
    finally:
        stop.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, [e for _, e in outs]
    assert answers == ["held"] * 5 + ["won"]


def test_a_holder_killed_on_this_host_frees_the_incident_at_once(journal_location, tmp_path):
    """The re-run after a crash on the same machine (``respond --incident ID`` again) need not wait out the ttl."""
    p = subprocess.Popen([sys.executable, "-c", _HOLD, journal_location, "incident:killed", "-", "60", str(tmp_path / "never")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready" and p.stdout.readline().strip() == "won"
    j = Journal(journal_location)
    with pytest.raises(LeaseHeld):  # alive: refused
        j.lease("incident:killed", Holder.here(), wait=0)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=10)
    assert j.lease_holder("incident:killed").pid == p.pid  # its lease has not lapsed
    t0 = time.monotonic()
    with j.lease("incident:killed", Holder.here(), wait=0):
        assert j.lease_holder("incident:killed").pid == os.getpid() and time.monotonic() - t0 < 2


def test_a_holder_lost_on_another_machine_frees_the_incident_after_its_ttl(journal_location):
    j = Journal(journal_location)
    elsewhere = Holder(owner="process:worker-b:4242:abc", flow_run=None, host="worker-b", pid=4242, scope="worker-b/pidns:1")
    gone = j.lease("incident:far", elsewhere, ttl=1.5)
    gone._stop.set()  # worker-b died: no renewals, no release
    with pytest.raises(LeaseHeld, match="held by a process outside any flow run on host worker-b"):
        Journal(journal_location).lease("incident:far", Holder.here(), wait=0)
    t0 = time.monotonic()
    with Journal(journal_location).lease("incident:far", Holder.here(), wait=10, poll=0.1):
        assert 0.5 < time.monotonic() - t0 < 5


def test_lease_wait_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("DIGESTGUARD_LEASE_WAIT", "2.5")
    assert lease_wait_default() == 2.5
    monkeypatch.setenv("DIGESTGUARD_LEASE_WAIT", "soon")
    with pytest.raises(InputError, match="DIGESTGUARD_LEASE_WAIT"):
        lease_wait_default()


def test_the_default_incident_id_follows_the_flow_run():
    run = "3F2A9C01-D4E5-4c4c-9d9d-cccccccccccc"
    assert incident_id_for("kics-2026-04", run) == incident_id_for("kics-2026-04", run.lower()) == "kics-2026-04-run-3f2a9c01d4e5"
    assert incident_id_for("kics-2026-04", "ffffffff-0000-4c4c-9d9d-cccccccccccc") != incident_id_for("kics-2026-04", run)
    a, b = incident_id_for("kics-2026-04", None), incident_id_for("kics-2026-04", None)
    assert a != b and a.startswith("kics-2026-04-20")
