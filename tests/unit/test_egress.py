"""Egress baselines over the log formats the sweep reads (Zeek dns/conn TSV, Squid native, Route 53 Resolver JSON):
attribution by host and by range, jobs from CI log times, learning, the first new destination with its context,
registrable-domain grouping, allow-lists and suppressions, state that survives a restart (a new process, a reopened
journal on SQLite and on PostgreSQL), malformed lines counted, an unreadable source making the answer incomplete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from digestguard.cilog import parse_job_log
from digestguard.egress import destination_key
from digestguard.errors import InputError
from digestguard.inventory import load_inventory
from digestguard.journal import Journal
from tasks.egress.check import check_egress
from tests.egress_logs import DAY, T0, daily, github_job, route53, squid, write_inventory, zeek_conn, zeek_dns

ROOT = Path(__file__).parents[2]
NORMAL = ["pypi.org", "files.pythonhosted.org", "registry-1.docker.io", "github.com"]
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64
CHECKOUT_SHA = "11bd71901bbe5b1630ceea73d27597364c9af683"

RUNNERS = [
    {"name": "build", "hosts": [{"name": "runner-a-1", "address": "10.0.0.11"}]},
    {"name": "ephemeral", "cidrs": ["10.9.0.0/24"], "runner_names": ["eph-*"]},
]


def _inventory(tmp: Path, *, logs: str = "logs", ci: bool = True, **egress):
    sections = {"network_logs": [{"name": "net", "path": logs}], "runners": RUNNERS,
                "egress": {"learning_days": 7, **egress}}
    if ci:
        (tmp / "ci").mkdir(exist_ok=True)
        sections["ci_logs"] = [{"name": "ci", "kind": "folder", "path": "ci"}]
    return load_inventory(write_inventory(tmp, **sections))


def _check(inv, tmp: Path, **kw):
    j = Journal(tmp / "journal.sqlite")
    try:
        return check_egress(inv, j, **kw)
    finally:
        j.close()


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------- attribution, learning, context


def test_host_and_cidr_attribution_learning_then_first_new_destination(tmp_path: Path):
    """Zeek conn.log by address: the host's group and the range's group learn apart; an outsider is not attributed."""
    rows = daily(range(8), "10.0.0.11", ["203.0.113.10", "203.0.113.11"]) + \
        daily(range(8), "10.9.0.7", ["203.0.113.20"]) + daily(range(8), "192.168.5.5", ["203.0.113.99"])
    rows += [(T0 + 9 * DAY, "10.0.0.11", "198.51.100.7"),  # new for build, after its week of learning
             (T0 + 9 * DAY + 5, "10.9.0.8", "203.0.113.10")]  # known to build, but new for ephemeral
    rows.sort()
    _write(tmp_path / "logs" / "conn.log", zeek_conn(rows))
    rep = _check(_inventory(tmp_path, ci=False), tmp_path)
    got = {(e.group, e.destination, e.attributed_by, e.runner_host) for e in rep.events}
    assert got == {("build", "198.51.100.7", "host", "runner-a-1"), ("ephemeral", "203.0.113.10", "cidr", None)}
    by = {e.group: e for e in rep.events}
    assert by["build"].young and by["build"].rare and by["build"].groups_seen == 1
    assert not by["ephemeral"].young and not by["ephemeral"].rare and by["ephemeral"].groups_seen == 2
    assert rep.unattributed == 8 and rep.attributed == len(rows) - 8
    assert by["build"].first_at == datetime.fromtimestamp(T0 + 9 * DAY, tz=timezone.utc)
    assert rep.verdict == "found"


def test_job_images_and_actions_just_before_the_connection(tmp_path: Path):
    """Squid CONNECT lines; two jobs on the same host: the call belongs to the one running then, with what it pulled
    before (not what it pulled after) and the actions it downloaded."""
    inv = _inventory(tmp_path)
    call = T0 + 9 * DAY + 300
    _write(tmp_path / "ci" / "acme" / "early.log", github_job(T0 + 9 * DAY - 4000, "runner-a-1",
                                                               images=[("alpine:3.20", DIGEST_B)]))
    _write(tmp_path / "ci" / "acme" / "scan.log", github_job(call - 100, "runner-a-1",
                                                              images=[("checkmarx/kics:latest", DIGEST_A)],
                                                              actions=[("actions/checkout@v4", CHECKOUT_SHA)],
                                                              pull_after=[("busybox:1", DIGEST_B)]))
    rows = daily(range(8), "10.0.0.11", NORMAL) + [(call, "10.0.0.11", "audit.checkmarx.cx")]
    _write(tmp_path / "logs" / "proxy.log", squid(rows))
    rep = _check(inv, tmp_path, inventory_path=str(tmp_path / "inventory.yaml"))
    (ev,) = rep.events
    assert (ev.destination, ev.host, ev.job) == ("checkmarx.cx", "audit.checkmarx.cx", "acme/scan.log")
    assert ev.images == [f"checkmarx/kics:latest@{DIGEST_A}"]
    assert ev.actions == [f"actions/checkout@v4 ({CHECKOUT_SHA})"]
    assert ev.line == len(rows) and ev.source.endswith("proxy.log")
    assert ev.dry_run_command and ev.draft_advisory and Path(ev.draft_advisory).is_file()
    j = Journal(tmp_path / "journal.sqlite")  # the job's own baseline (a workflow, or the job name without one)
    rows = j.query("SELECT destination FROM egress_known WHERE scope = ?", ("workflow:build/acme/scan.log",))
    j.close()
    assert {r[0] for r in rows} == {"checkmarx.cx"}


def test_range_job_named_only_when_one_job_ran(tmp_path: Path):
    """Ephemeral runners in a range (Route 53 logs): one job of the group running -> named; two -> none, counted."""
    inv = _inventory(tmp_path)
    t1, t2 = T0 + 9 * DAY, T0 + 10 * DAY
    _write(tmp_path / "ci" / "one.log", github_job(t1 - 60, "eph-1", images=[("node:22", DIGEST_A)]))
    _write(tmp_path / "ci" / "two-a.log", github_job(t2 - 60, "eph-2"))
    _write(tmp_path / "ci" / "two-b.log", github_job(t2 - 30, "eph-3"))
    rows = daily(range(8), "10.9.0.40", NORMAL) + [(t1, "10.9.0.41", "new-one.example.org"),
                                                   (t2, "10.9.0.42", "new-two.example.net")]
    _write(tmp_path / "logs" / "resolver.log", route53(rows))
    rep = _check(inv, tmp_path)
    by = {e.destination: e for e in rep.events}
    assert by["example.org"].job == "one.log" and by["example.org"].candidate_jobs == 1
    assert by["example.net"].job is None and by["example.net"].candidate_jobs == 2
    assert "no job could be attributed" in (by["example.net"].draft_error or "")


def test_first_connection_named_whatever_the_file_order(tmp_path: Path):
    """The later file sorts first: the alert still names the earliest connection (and learning uses the earliest time)."""
    inv = _inventory(tmp_path, ci=False)
    _write(tmp_path / "logs" / "a-later.log", zeek_dns([(T0 + 12 * DAY, "10.0.0.11", "cdn.newthing.io")]))
    _write(tmp_path / "logs" / "b-earlier.log", zeek_dns(daily(range(8), "10.0.0.11", NORMAL)
                                                           + [(T0 + 10 * DAY, "10.0.0.11", "api.newthing.io")]))
    rep = _check(inv, tmp_path)
    (ev,) = rep.events
    assert ev.host == "api.newthing.io" and ev.source.endswith("b-earlier.log")


def test_still_learning_raises_nothing_and_says_until_when(tmp_path: Path):
    inv = _inventory(tmp_path, ci=False, learning_days=30)
    _write(tmp_path / "logs" / "dns.log", zeek_dns(daily(range(10), "10.0.0.11", NORMAL)
                                                   + [(T0 + 9 * DAY, "10.0.0.11", "other.example.com")]))
    rep = _check(inv, tmp_path)
    assert rep.events == [] and rep.learned == 5 and rep.verdict == "clean"


# ---------------------------------------------------------------- registrable domains, allow, suppress


def test_cdn_subdomains_group_under_their_registrable_domain(tmp_path: Path):
    """A new CloudFront or Fastly subdomain every day is one destination; a new registrable domain still alerts."""
    inv = _inventory(tmp_path, ci=False)
    rows = [(T0 + d * DAY + 60 * i, "10.0.0.11", f"d{d:03d}{i}x.cloudfront.net") for d in range(20) for i in range(5)]
    rows += [(T0 + d * DAY + 3000, "10.0.0.11", f"img{d}.assets.example.co.uk") for d in range(20)]
    rows += [(T0 + 15 * DAY, "10.0.0.11", "x.evil-cdn.co.uk")]
    _write(tmp_path / "logs" / "dns.log", zeek_dns(sorted(rows)))
    rep = _check(inv, tmp_path)
    assert [e.destination for e in rep.events] == ["evil-cdn.co.uk"]
    assert destination_key("a.b.example.co.uk") == "example.co.uk"
    assert destination_key("203.0.113.5") == "203.0.113.5" and destination_key("metadata") == "metadata"


def test_allow_list_and_suppressions_with_reasons(tmp_path: Path):
    """Allowed: never an alert, in any group the rule names. Suppressed: muted while the rule lasts, then alerts."""
    inv = _inventory(tmp_path, ci=False,
                     allow=[{"destination": "telemetry.vendor.com", "reason": "SEC-12 vendor telemetry"}],
                     suppress=[{"destination": "*.slow-mirror.org", "reason": "SEC-40 mirror move", "groups": ["build"],
                                "until": "2026-05-30T00:00:00Z"},
                               {"destination": "old-rule.net", "reason": "lapsed", "until": "2026-04-02T00:00:00Z"}])
    rows = daily(range(8), "10.0.0.11", NORMAL) + [
        (T0 + 9 * DAY, "10.0.0.11", "eu.telemetry.vendor.com"),
        (T0 + 9 * DAY + 1, "10.0.0.11", "a.slow-mirror.org"),
        (T0 + 9 * DAY + 2, "10.0.0.11", "old-rule.net"),
    ]
    _write(tmp_path / "logs" / "dns.log", zeek_dns(rows))
    rep = _check(inv, tmp_path)
    assert [e.destination for e in rep.events] == ["old-rule.net"]
    assert rep.allowed == 1 and rep.suppressed == ["build slow-mirror.org: SEC-40 mirror move"]


# ---------------------------------------------------------------- malformed and unreadable


def test_malformed_lines_are_counted_not_fatal(tmp_path: Path):
    inv = _inventory(tmp_path, ci=False)
    good = route53(daily(range(8), "10.0.0.11", NORMAL) + [(T0 + 9 * DAY, "10.0.0.11", "late.example.org")])
    lines = good.splitlines()
    broken = lines[:5] + ['{"query_timestamp": "2026-04-0', "\x00\xff\xfe binary", '{"query_name": "x."}'] + lines[5:]
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "r53.log").write_bytes("\n".join(broken).encode("utf-8", "surrogateescape") + b"\n")
    (tmp_path / "logs" / "squid.log").write_text(squid(daily(range(2), "10.0.0.11", NORMAL)) + "1775.1 short line\n")
    rep = _check(inv, tmp_path)
    stats = {Path(f.path).name: f for f in rep.files}
    assert stats["r53.log"].malformed == 3 and stats["squid.log"].malformed == 1
    assert [e.destination for e in rep.events] == ["example.org"] and rep.verdict == "found"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ}
    env.pop("DIGESTGUARD_JOURNAL", None)
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def test_unreachable_source_is_incomplete_exit_3_and_bad_inventory_exit_2(tmp_path: Path):
    write_inventory(tmp_path, network_logs=[{"name": "net", "path": "no-such-dir"}], runners=RUNNERS)
    r = _cli("egress", "check", "-i", "inventory.yaml", cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    assert "INCOMPLETE" in r.stderr and "no-such-dir" in r.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    write_inventory(bad, runners=[{"name": "b", "hosts": [{"name": "r", "address": "10.0.0.999"}],
                                   "cidrs": ["10.0.0.0/33"]}],
                    egress={"suppress": [{"destination": "x.org", "reason": ""}]})
    r = _cli("egress", "check", "-i", "inventory.yaml", cwd=bad)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("inventory.yaml: ")]
    assert any("runners.0.hosts.0.address" in ln and "10.0.0.999" in ln for ln in lines), r.stderr
    assert any("runners.0.cidrs" in ln for ln in lines) and any("egress.suppress.0.reason" in ln for ln in lines)
    with pytest.raises(InputError, match="is already a host of group"):
        load_inventory(write_inventory(bad, runners=[{"name": "a", "hosts": [{"name": "r", "address": "10.0.0.1"}]},
                                                     {"name": "b", "hosts": [{"name": "s", "address": "10.0.0.1"}]}]))


# ---------------------------------------------------------------- state across restarts


def test_state_survives_a_new_process_and_reads_only_what_was_appended(tmp_path: Path):
    """Three `digestguard egress check` processes over a growing Zeek dns.log: 1 (new), 0 (nothing new), 1 (another)."""
    write_inventory(tmp_path, network_logs=[{"name": "net", "path": "logs"}], runners=RUNNERS,
                    egress={"learning_days": 7})
    log = _write(tmp_path / "logs" / "dns.log", zeek_dns(daily(range(8), "10.0.0.11", NORMAL)
                                                         + [(T0 + 9 * DAY, "10.0.0.11", "first.new-one.com")]))
    r1 = _cli("egress", "check", "-i", "inventory.yaml", "--json", cwd=tmp_path)
    assert r1.returncode == 1, r1.stderr
    first = json.loads(r1.stdout)
    assert [e["destination"] for e in first["events"]] == ["new-one.com"]
    with log.open("a") as f:  # the same destination again, and known ones; then a line still being written
        f.write(zeek_dns([(T0 + 10 * DAY, "10.0.0.11", "again.new-one.com"),
                          (T0 + 10 * DAY + 1, "10.0.0.11", "pypi.org")]).split("#types", 1)[1].split("\n", 1)[1])
        f.write(f"{T0 + 10 * DAY + 2:.6f}\tCpartial\t10.0.0.11")
    r2 = _cli("egress", "check", "-i", "inventory.yaml", "--json", cwd=tmp_path)
    assert r2.returncode == 0, r2.stdout + r2.stderr
    second = json.loads(r2.stdout)
    assert second["events"] == [] and second["lines"] == 2
    with log.open("a") as f:
        f.write("\t5353\t10.0.0.2\t53\tudp\t1\tdrop.second-new.net\tA\tNOERROR\t-\n")
    r3 = _cli("egress", "check", "-i", "inventory.yaml", "--json", cwd=tmp_path)
    assert r3.returncode == 1
    assert [e["destination"] for e in json.loads(r3.stdout)["events"]] == ["second-new.net"]
    alerts = json.loads(_cli("egress", "alerts", "-i", "inventory.yaml", cwd=tmp_path).stdout)
    assert [a["destination"] for a in alerts] == ["new-one.com", "second-new.net"]


def test_reopened_journal_keeps_baseline_on_both_backends(tmp_path: Path, journal_location: str):
    """SQLite and PostgreSQL: a second journal object (a restart) knows what was learnt and alerted; a rotated log
    (new inode) is read again from the start without alerting twice."""
    inv = _inventory(tmp_path, ci=False)
    log = _write(tmp_path / "logs" / "dns.log", zeek_dns(daily(range(8), "10.0.0.11", NORMAL)
                                                         + [(T0 + 9 * DAY, "10.0.0.11", "x.fresh.dev")]))
    j = Journal(journal_location)
    assert [e.destination for e in check_egress(inv, j).events] == ["fresh.dev"]
    j.close()
    rotated = log.with_suffix(".new")
    rotated.write_text(log.read_text())
    os.replace(rotated, log)  # a new inode, the same lines
    j2 = Journal(journal_location)
    rep = check_egress(inv, j2)
    assert rep.events == [] and rep.notes and "rotated" in rep.notes[0]
    (known,) = j2.query("SELECT state FROM egress_known WHERE scope='group:build' AND destination='fresh.dev'")
    assert known[0] == "alerted"
    j2.close()


def test_cilog_reads_runner_machine_end_and_actions():
    log = parse_job_log(github_job(T0, "runner-a-1", actions=[("actions/checkout@v4", CHECKOUT_SHA)], seconds=90), "j")
    assert (log.runner, log.machine) == ("runner-a-1", "runner-a-1")
    assert log.ended_at == datetime.fromtimestamp(T0 + 90, tz=timezone.utc)
    assert log.actions[0].action == "actions/checkout@v4" and log.actions[0].sha == CHECKOUT_SHA


def test_two_checks_at_the_same_time_flag_a_destination_once(tmp_path: Path):
    """Two journals (two processes' worth) check the same logs at once: the lease makes the second wait and then
    find the destination already flagged."""
    import threading

    inv = _inventory(tmp_path, ci=False)
    _write(tmp_path / "logs" / "dns.log", zeek_dns(daily(range(8), "10.0.0.11", NORMAL)
                                                   + [(T0 + 9 * DAY, "10.0.0.11", "x.once-only.com")]))
    events: list[list] = []

    def one() -> None:
        j = Journal(tmp_path / "journal.sqlite")
        try:
            events.append(check_egress(inv, j).events)
        finally:
            j.close()

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(len(e) for e in events) == [0, 1]


def test_cross_group_problems_one_line_each(tmp_path: Path):
    p = write_inventory(tmp_path, network_logs=[{"name": "zeek", "path": "logs"}],
                        runners=[{"name": "a", "hosts": [{"name": "r1", "address": "10.0.0.1"}]},
                                 {"name": "b", "hosts": [{"name": "R1", "address": "10.0.0.2"}]}, {"name": "c"}],
                        egress={"sources": ["nope"], "suppress": [{"destination": "x.org", "reason": "r",
                                                                   "groups": ["ghost"]}]})
    with pytest.raises(InputError) as e:
        load_inventory(p)
    lines = str(e.value).splitlines()[1:]
    assert lines == [
        f"{p}: runners.1.hosts.0.name: 'R1' is already a host of group 'a'",
        f"{p}: runners.2: group 'c' needs hosts or cidrs (nothing could be attributed to it)",
        f"{p}: egress.suppress.0.groups: 'ghost' is not a runner group",
        f"{p}: egress.sources.0: 'nope' is not a network_logs name",
    ]


def test_gzip_log_reread_only_new_lines_judged(tmp_path: Path):
    """A rotated-and-compressed Zeek log that grows (rewritten whole): lines already read are not judged again."""
    import gzip

    inv = _inventory(tmp_path, ci=False)
    rows = daily(range(8), "10.0.0.11", NORMAL) + [(T0 + 9 * DAY, "10.0.0.11", "gz.first-new.com")]
    (tmp_path / "logs").mkdir()
    gz = tmp_path / "logs" / "dns.log.gz"
    gz.write_bytes(gzip.compress(zeek_dns(rows).encode()))
    assert [e.destination for e in _check(inv, tmp_path).events] == ["first-new.com"]
    assert _check(inv, tmp_path).files[0].lines == 0  # unchanged: not even decompressed again
    gz.write_bytes(gzip.compress(zeek_dns(rows + [(T0 + 10 * DAY, "10.0.0.11", "gz.second-new.com")]).encode()))
    rep = _check(inv, tmp_path)
    assert [e.destination for e in rep.events] == ["second-new.com"] and rep.files[0].lines == 1
