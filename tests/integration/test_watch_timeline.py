"""Tag timelines through the real parts (issue 19): watch cycles against the real local registry
(Debian ``docker-registry``, ``registry`` fixture) with a tag overwritten between cycles, Docker Hub's
``tag_last_pushed`` from the stand-in ``flows.drill.servers.dockerhub`` (Docker Hub's documented v2 JSON, read by our
unmodified client; the real registry stands in for registry-1.docker.io as an inventory mirror,
``mirror_of: docker.io``), the journal on SQLite and on a real PostgreSQL, and ``digestguard timeline`` run as
a separate process (a restart: a new process on the reopened journal)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from digestguard.inventory import load_inventory
from digestguard.journal import JOURNAL_ENV, Journal
from digestguard.timeutil import iso_z, now
from flows.drill.servers.dockerhub import start_dockerhub
from tasks.watch.cycle import run_watch
from tasks.watch.sources import load_packs
from tasks.watch.state import WatchState
from tasks.watch.timeline import stored_timeline
from tests.integration.test_watch import FAST, write_pack
from tests.support.registry import push_index

REPO = "acme/scanner"
KEY = f"docker.io/{REPO}:v2"


@pytest.fixture()
def hub():
    server = start_dockerhub()
    yield server
    server.stop()


def _inventory(tmp: Path, registry, hub):
    data = {"images": [{"reference": f"{REPO}:v2"}], "registries": [
        {"name": "hub-mirror", "kind": "distribution", "url": registry.base_url, "mirror_of": "docker.io"},
        {"name": "hub", "kind": "dockerhub", "api_url": hub.url}]}
    (tmp / "inventory.yaml").write_text(yaml.safe_dump(data))
    return tmp / "inventory.yaml"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def _cycle(inv, tmp: Path) -> None:
    packs = load_packs(write_pack(tmp / "adv", "none").parent)
    with WatchState.for_inventory(inv) as state:
        (rep,) = run_watch(inv, state, packs=packs, **FAST)
    assert not rep.by_kind("source-down"), rep.events


def test_an_overwrite_between_cycles_is_recorded_at_its_push_minute(registry, hub, tmp_path, journal_location, monkeypatch):
    """Runs on SQLite and on PostgreSQL (the journal named by ``DIGESTGUARD_JOURNAL``)."""
    monkeypatch.setenv(JOURNAL_ENV, journal_location)
    inv = load_inventory(_inventory(tmp_path, registry, hub))
    before = push_index(registry.base_url, REPO, "v2")
    _cycle(inv, tmp_path)
    first = now()
    _cycle(inv, tmp_path)  # a second sighting of the same digest: the run grows
    overwrite = now()
    after = push_index(registry.base_url, REPO, "v2")
    hub.add_tag(REPO, "v2", after.digest, overwrite.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    _cycle(inv, tmp_path)
    done = now()

    j = Journal(journal_location)
    tl = stored_timeline(j, KEY)
    j.close()
    assert [iv.digest for iv in tl.intervals] == [before.digest, after.digest]
    old, new = tl.intervals
    assert old.start < first and old.end == new.start
    assert abs((new.start - overwrite).total_seconds()) < 0.01  # the push minute (to the millisecond), from Docker Hub
    assert new.start_source.startswith("docker hub tag_last_pushed")
    assert tl.at(first + (overwrite - first) / 2).digest == before.digest  # between the last old sighting and the push
    assert tl.at(overwrite + timedelta(milliseconds=5)).digest == after.digest
    assert not tl.at(done + timedelta(minutes=30)).known  # after the last sighting: unknown, not assumed
    assert not tl.notes


def test_a_restart_keeps_the_timeline_and_the_cli_prints_it(registry, hub, tmp_path):
    inv_path = _inventory(tmp_path, registry, hub)
    inv = load_inventory(inv_path)
    pushed = push_index(registry.base_url, REPO, "v2")
    _cycle(inv, tmp_path)
    _cycle(inv, tmp_path)

    out = _cli("timeline", f"{REPO}:v2", "-i", str(inv_path), "--json", "--no-live", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["reference"] == KEY and data["complete"] is True
    assert [iv["digest"] for iv in data["intervals"]] == [pushed.digest, None]  # then the hole up to now
    assert data["intervals"][0]["sources"] == ["watch (registry docker.io)"]

    hub.add_tag(REPO, "v2", pushed.digest, "2020-01-01T00:00:00Z")  # far older than the first sighting: consistent
    live = _cli("timeline", f"{REPO}:v2", "-i", str(inv_path), cwd=tmp_path)  # asks the registry and Hub now, stores it
    assert live.returncode == 0, live.stderr
    assert pushed.digest in live.stdout and "docker hub tag_last_pushed" in live.stdout and "2020-01-01 00:00:00 UTC" in live.stdout
    j = Journal(load_inventory(inv_path).journal_location())
    assert {o.source for o in j.tag_observations(KEY)} == {"watch", "registry", "dockerhub"}
    j.close()

    bad = _cli("timeline", "acme/scanner@sha256:" + "0" * 64, "-i", str(inv_path), cwd=tmp_path)
    assert bad.returncode == 2 and "pinned to a digest" in bad.stderr


@pytest.mark.parametrize("pushed", ["not-a-time", "", None, "future"])
def test_a_malformed_or_absent_push_time_leaves_a_hole_never_a_guess(registry, hub, tmp_path, pushed):
    inv = load_inventory(_inventory(tmp_path, registry, hub))
    before = push_index(registry.base_url, REPO, "v2")
    _cycle(inv, tmp_path)
    middle = now()
    after = push_index(registry.base_url, REPO, "v2")
    if pushed == "future":
        hub.add_tag(REPO, "v2", after.digest, iso_z(now() + timedelta(days=3)))
    elif pushed is not None:
        hub.add_tag(REPO, "v2", after.digest, pushed)
    # None: Docker Hub does not know the tag at all (404)
    _cycle(inv, tmp_path)

    j = Journal(inv.journal_location())
    tl = stored_timeline(j, KEY)
    j.close()
    assert [iv.digest for iv in tl.intervals] == [None]  # before -> after, somewhere in between: unknown
    assert "changed from" in tl.intervals[0].reason
    assert not tl.at(middle).known
    assert before.digest != after.digest
    if pushed == "future":
        assert any("after it was read" in n for n in tl.notes)


_WATCHER = """
import sys
from digestguard.inventory import load_inventory
from tasks.watch.cycle import run_watch
from tasks.watch.sources import load_packs
from tasks.watch.state import WatchState
inv = load_inventory(sys.argv[1])
with WatchState.for_inventory(inv) as state:
    reps = run_watch(inv, state, cycles=6, interval=0.05, packs=load_packs(sys.argv[2]), max_retries=0, timeout=3.0)
print(sum(len(r.events) for r in reps))
"""


def test_two_watchers_at_the_same_time_keep_one_history(registry, hub, tmp_path):
    """Two watcher processes on one inventory (one journal, one state file) at the same moment, as two
    overlapping scheduled runs would be."""
    inv_path = _inventory(tmp_path, registry, hub)
    packs = write_pack(tmp_path / "adv", "none").parent
    pushed = push_index(registry.base_url, REPO, "v2")
    cmd = [sys.executable, "-c", _WATCHER, str(inv_path), str(packs)]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    j = Journal(load_inventory(inv_path).journal_location())
    rows = j.tag_observations(KEY)
    tl = stored_timeline(j, KEY)
    j.close()
    assert {r.digest for r in rows} == {pushed.digest} and len(rows) <= 2  # one run (two when both began it at once)
    assert [iv.digest for iv in tl.intervals] == [pushed.digest] and not tl.notes
    assert tl.intervals[0].end - tl.intervals[0].start > timedelta(0)


def test_digestguard_assess_judges_a_digest_less_pull_by_what_the_watch_saw(registry, hub, tmp_path):
    """From outside: the watch records the overwrite, then `digestguard assess` (a separate process) reads the
    journal and judges two digest-less pulls in a CI log folder: after the push confirmed, before it clear."""
    from tests.unit.test_assess import gh_log

    inv_path = _inventory(tmp_path, registry, hub)
    inv = load_inventory(inv_path)
    start = now() - timedelta(minutes=1)
    push_index(registry.base_url, REPO, "v2")
    _cycle(inv, tmp_path)
    _cycle(inv, tmp_path)
    last_old = now()
    time.sleep(2.5)  # a job log's lines span 1.5 s: keep each pull well inside its interval
    overwrite = now()
    after = push_index(registry.base_url, REPO, "v2")
    hub.add_tag(REPO, "v2", after.digest, overwrite.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    time.sleep(2.5)
    _cycle(inv, tmp_path)
    _cycle(inv, tmp_path)

    logs = tmp_path / "ci-logs"
    logs.mkdir()
    (logs / "before.log").write_text(gh_log(last_old + timedelta(milliseconds=200), f"{REPO}:v2", None))
    (logs / "after.log").write_text(gh_log(overwrite + timedelta(milliseconds=200), f"{REPO}:v2", None))
    data = yaml.safe_load(inv_path.read_text())
    data["ci_logs"] = [{"name": "exported", "kind": "folder", "path": "./ci-logs"}]
    inv_path.write_text(yaml.safe_dump(data))
    pack = tmp_path / "pack.yaml"
    pack.write_text(yaml.safe_dump({
        "id": "scanner-test", "title": "scanner:v2 overwritten",
        "images": [{"repository": f"docker.io/{REPO}", "tags_overwritten": ["v2"],
                    "malicious": [{"digest": after.digest, "source": "test"}]}],
        "window": {"start": iso_z(start), "source": "test"}}))

    out = _cli("assess", "-a", str(pack), "-i", str(inv_path), "--json", cwd=tmp_path)
    assert out.returncode == 1, out.stderr  # found
    rep = json.loads(out.stdout)
    jobs = {j["job"]: j for j in rep["jobs"]}
    assert {n: j["verdict"] for n, j in jobs.items()} == {"after.log": "confirmed", "before.log": "clear"}
    assert jobs["after.log"]["digest"] == after.digest and "docker hub tag_last_pushed" in jobs["after.log"]["reason"]
    assert any(e.startswith(f"timeline {KEY}") for e in jobs["before.log"]["evidence"])
    assert [tl["reference"] for tl in rep["tag_timelines"]] == [KEY]


def test_an_unreachable_journal_is_a_source_down_and_the_watch_goes_on(registry, hub, tmp_path, monkeypatch):
    from tests.support.registry import free_port

    monkeypatch.setenv(JOURNAL_ENV, f"postgresql://watch@127.0.0.1:{free_port()}/nowhere?connect_timeout=2")
    inv = load_inventory(_inventory(tmp_path, registry, hub))
    push_index(registry.base_url, REPO, "v2")
    packs = load_packs(write_pack(tmp_path / "adv", "none").parent)
    with WatchState.for_inventory(inv) as state:
        first, second = run_watch(inv, state, cycles=2, packs=packs, **FAST)
        assert state.digests() == {KEY: state.digests()[KEY]}  # the drift memory was kept
    (down,) = first.by_kind("source-down")
    assert down.source == "timeline journal" and ("nowhere" in down.error or "127.0.0.1" in down.error)
    assert first.resolved == 1 and second.by_kind("source-down") == []  # said once per outage


def test_a_first_seen_hub_tag_starts_its_timeline_at_its_push_time(registry, hub, tmp_path):
    """Docker Hub says when the digest the watch first sees was pushed: the timeline reaches back to it."""
    inv = load_inventory(_inventory(tmp_path, registry, hub))
    pushed = push_index(registry.base_url, REPO, "v2")
    at = now() - timedelta(hours=1)
    hub.add_tag(REPO, "v2", pushed.digest, at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    _cycle(inv, tmp_path)
    j = Journal(inv.journal_location())
    tl = stored_timeline(j, KEY)
    j.close()
    (iv,) = tl.intervals
    assert iv.digest == pushed.digest and abs((iv.start - at).total_seconds()) < 0.01
    assert iv.start_source.startswith("docker hub tag_last_pushed")
    assert tl.at(at + timedelta(minutes=30)).digest == pushed.digest and not tl.at(at - timedelta(minutes=1)).known
    assert any("tags/v2" in path for _, path, _ in hub.calls)
    assert not any("auditlogs" in path for _, path, _ in hub.calls)  # only the tag's push time, no audit log
