"""The digest drift watch through the real parts.

Uses the real local registry (``registry`` session fixture, tests/support/registry.py) for
tags, overwrites and cosign ``.sig`` tags, and the local Slack Web API server
``flows.drill.servers.slack.SlackServer`` for alerts (every test that checks Slack says so).
Signatures are made with ``tests.support.cosign`` keys; advisory packs are written into a
temporary directory and loaded from there.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from digestguard.errors import InputError
from digestguard.inventory import load_inventory
from digestguard.journal import Journal
from flows.drill.servers.dockerhub import start_dockerhub
from flows.drill.servers.slack import SlackServer
from flows.watch import run, watch
from tasks.watch.alerts import slack_alerter
from tasks.watch.cycle import run_watch, watch_cycle
from tasks.watch.events import MaliciousEvent
from tasks.watch.sources import RegistryPool, load_packs
from tasks.watch.state import WatchState
from tests.support.cosign import new_key, public_pem, sign_image
from tests.support.registry import push_image, push_index, put_manifest

FAST = {"max_retries": 0, "backoff": 0.01, "timeout": 3.0}


# ---------------------------------------------------------------- helpers


@pytest.fixture()
def slack(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlackServer]:
    with SlackServer() as server:
        monkeypatch.setenv("DG_WATCH_SLACK", server.token)
        yield server


def write_inventory(tmp: Path, slack: SlackServer | None = None, **sections: Any) -> Path:
    data: dict[str, Any] = {k: v for k, v in sections.items()}
    if slack is not None:
        data["slack"] = {"channel": "#sec-incident", "token": "env:DG_WATCH_SLACK", "api_url": slack.api_url}
    p = tmp / "inventory.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def write_pack(directory: Path, pack_id: str, *, digests: list[str] = (), domains: list[str] = (),
               repository: str = "docker.io/acme/never-pulled") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    pack = {
        "id": pack_id,
        "title": f"test advisory {pack_id}",
        "images": [{"repository": repository,
                    "malicious": [{"digest": d, "source": "test"} for d in digests]
                    or [{"digest": "sha256:" + "0" * 64, "source": "test"}]}],
        "window": {"start": "2026-01-01T00:00:00Z", "source": "test"},
        "network": [{"kind": "domain", "value": d, "source": "test"} for d in domains],
    }
    p = directory / f"{pack_id}.yaml"
    p.write_text(yaml.safe_dump(pack))
    return p


def repoint(registry, repo: str, tag: str, pushed) -> None:
    """Point ``repo:tag`` at already pushed content (the overwrite, with a digest known in advance)."""
    put_manifest(registry.base_url, repo, tag, pushed.manifest, pushed.media_type)


def posted(slack: SlackServer) -> list[str]:
    return [c.params.get("text", "") for c in slack.calls_to("chat.postMessage", ok_only=True)]


class Gate:
    """A loopback TCP forwarder to the registry that can be switched off (connection refused) and on again."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._srv: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def up(self) -> None:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(64)
        self._srv = srv
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()

    def down(self) -> None:
        if self._srv:
            try:
                self._srv.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked in the other thread
            except OSError:
                pass
            self._srv.close()
            self._srv = None
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


# ---------------------------------------------------------------- drift and allow-list


def test_overwritten_tag_alerts_and_allow_listed_digest_does_not(registry, tmp_path: Path, slack: SlackServer):
    """Slack: the local SlackServer receives one drift alert with before/after digests; the allow-listed move is silent."""
    repo = "watch/drift"
    v1 = push_index(registry.base_url, repo, "v1")
    v2 = push_index(registry.base_url, repo, "v2")
    expected = push_index(registry.base_url, repo, "staging")  # the release everyone knows about
    inv_path = write_inventory(tmp_path, slack, images=[
        {"reference": registry.ref(repo, "v1")},
        {"reference": registry.ref(repo, "v2"), "allow": [expected.digest]},
    ])
    inv = load_inventory(inv_path)
    packs = load_packs(write_pack(tmp_path / "adv", "none").parent)
    alert, why = slack_alerter(inv)
    assert alert is not None, why

    with WatchState.for_inventory(inv) as state:
        first = run_watch(inv, state, alert=alert, packs=packs, **FAST)[0]
        assert first.first_seen == 2 and first.events == [] and posted(slack) == []

        attacker = push_index(registry.base_url, repo, "v1")  # overwrite v1 with fresh content
        repoint(registry, repo, "v2", expected)
        second = run_watch(inv, state, alert=alert, packs=packs, **FAST)[0]

    drift = second.by_kind("drift")
    assert [(e.reference, e.before, e.after) for e in drift] == [(registry.ref(repo, "v1"), v1.digest, attacker.digest)]
    assert drift[0].severity == "high"
    assert [(a.reference, a.before, a.after) for a in second.allowed] == [(registry.ref(repo, "v2"), v2.digest, expected.digest)]
    texts = posted(slack)
    assert len(texts) == 1 and v1.digest in texts[0] and attacker.digest in texts[0]
    assert state.path == tmp_path / ".digestguard" / "watch.sqlite"

    # a restart (a new state object on the same file) remembers: nothing new, nothing re-alerted
    with WatchState.for_inventory(inv) as again:
        third = run_watch(inv, again, alert=alert, packs=packs, **FAST)[0]
    assert third.events == [] and third.unchanged == 2 and len(posted(slack)) == 1


# ---------------------------------------------------------------- malicious digest -> dry-run incident


def test_malicious_digest_starts_one_dry_run_incident(registry, tmp_path: Path, slack: SlackServer):
    """Slack: the local SlackServer receives the critical alert naming the advisory and the started incident."""
    repo = "watch/malicious"
    push_index(registry.base_url, repo, "latest")
    evil = push_index(registry.base_url, repo, "evil-staging")
    pack_dir = tmp_path / "advisories"
    pack_path = write_pack(pack_dir, "test-evil-2026", digests=[evil.digest], repository=registry.ref(repo))
    inv = load_inventory(write_inventory(tmp_path, slack, images=[{"reference": registry.ref(repo, "latest")},
                                                                  {"reference": registry.ref(repo, "stable")}]))
    push_index(registry.base_url, repo, "stable")
    alert, _ = slack_alerter(inv)
    started: list[MaliciousEvent] = []

    def starter(ev: MaliciousEvent) -> str:
        started.append(ev)
        return f"inc-{ev.advisory}-1"

    with WatchState.for_inventory(inv) as state:
        run_watch(inv, state, alert=alert, start_incident=starter, advisories_dir=str(pack_dir), **FAST)
        repoint(registry, repo, "latest", evil)
        repoint(registry, repo, "stable", evil)
        rep = run_watch(inv, state, alert=alert, start_incident=starter, advisories_dir=str(pack_dir), **FAST)[0]
        again = run_watch(inv, state, alert=alert, start_incident=starter, advisories_dir=str(pack_dir), **FAST)[0]

    mal = rep.by_kind("malicious")
    assert {e.reference for e in mal} == {registry.ref(repo, "latest"), registry.ref(repo, "stable")}
    assert all(e.digest == evil.digest and e.advisory == "test-evil-2026" and e.incident == "inc-test-evil-2026-1" for e in mal)
    assert rep.by_kind("drift") == []  # the malicious alert says it all
    assert len(started) == 1 and started[0].advisory_source == str(pack_path.resolve())  # one incident per advisory
    assert rep.incidents == ["inc-test-evil-2026-1"]
    assert again.events == [] and len(started) == 1
    crit = [t for t in posted(slack) if "MALICIOUS" in t]
    assert len(crit) == 2 and all("inc-test-evil-2026-1" in t for t in crit)


def test_failed_incident_start_still_alerts(registry, tmp_path: Path):
    repo = "watch/malicious-nostart"
    evil = push_image(registry.base_url, repo, "evil")
    pack_dir = tmp_path / "adv"
    write_pack(pack_dir, "test-nostart", digests=[evil.digest])
    inv = load_inventory(write_inventory(tmp_path, images=[{"reference": registry.ref(repo, "evil")}]))
    got: list[list[Any]] = []

    def broken(ev: MaliciousEvent) -> str:
        raise RuntimeError("prefect is down")

    with WatchState.for_inventory(inv) as state:
        rep = run_watch(inv, state, alert=got.append, start_incident=broken, advisories_dir=str(pack_dir), **FAST)[0]
    (ev,) = rep.by_kind("malicious")  # first sight of a malicious digest alerts too
    assert ev.incident is None and "prefect is down" in ev.incident_error
    assert got == [rep.events]


# ---------------------------------------------------------------- signatures


def test_signatures_valid_unsigned_and_wrong_key(registry, tmp_path: Path):
    repo = "watch/signed"
    key, other = new_key(), new_key()
    (tmp_path / "cosign.pub").write_bytes(public_pem(key))
    good = push_index(registry.base_url, repo, "good")
    push_index(registry.base_url, repo, "bare")
    forged = push_index(registry.base_url, repo, "forged")
    sign_image(registry.base_url, repo, good.digest, key)
    sign_image(registry.base_url, repo, forged.digest, other)
    inv = load_inventory(write_inventory(tmp_path, images=[
        {"reference": registry.ref(repo, t), "cosign_public_key": "cosign.pub"} for t in ("good", "bare", "forged")]))
    packs = load_packs(write_pack(tmp_path / "adv", "none").parent)

    with WatchState.for_inventory(inv) as state, RegistryPool(inv, **FAST) as pool:
        rep = watch_cycle(inv, state, packs=packs, registries=pool)
        sig = {e.reference.rsplit(":", 1)[1]: e for e in rep.by_kind("signature")}
        assert set(sig) == {"bare", "forged"}
        assert sig["bare"].status == "unsigned" and sig["bare"].severity == "high"
        assert sig["forged"].status == "invalid" and "does not verify" in sig["forged"].reason
        assert rep.signatures_checked == 3

        # the same verdicts are not repeated; a new unsigned digest on the good tag alerts
        assert watch_cycle(inv, state, packs=packs, registries=pool).by_kind("signature") == []
        moved = push_index(registry.base_url, repo, "good")
        rep3 = watch_cycle(inv, state, packs=packs, registries=pool)
        assert [(e.reference, e.digest, e.status) for e in rep3.by_kind("signature")] == [
            (registry.ref(repo, "good"), moved.digest, "unsigned")]
        assert len(rep3.by_kind("drift")) == 1

        # signing it afterwards is noticed quietly (re-checked until valid, no new alert)
        sign_image(registry.base_url, repo, moved.digest, key)
        rep4 = watch_cycle(inv, state, packs=packs, registries=pool)
        assert rep4.events == [] and state.signatures()[registry.ref(repo, "good")] == (moved.digest, "signed-valid")


def test_missing_public_key_is_an_input_error(registry, tmp_path: Path):
    inv = load_inventory(write_inventory(tmp_path, images=[
        {"reference": registry.ref("watch/x", "v1"), "cosign_public_key": "missing.pub"}]))
    with WatchState.for_inventory(inv) as state, pytest.raises(InputError, match="cosign_public_key"):
        watch_cycle(inv, state, packs=[])


# ---------------------------------------------------------------- network logs


def test_network_log_only_new_hits_and_truncation(tmp_path: Path, slack: SlackServer):
    """Slack: the local SlackServer receives one grouped network-hit message per cycle with hits."""
    log = tmp_path / "logs" / "dns.log"
    log.parent.mkdir()
    log.write_text("2026-04-22T12:00:00Z query example.org\n2026-04-22T12:36:00Z query audit.evil-test.cx\n")
    pack_dir = tmp_path / "adv"
    write_pack(pack_dir, "test-net", domains=["audit.evil-test[.]cx"])
    inv = load_inventory(write_inventory(tmp_path, slack, network_logs=[{"name": "dns", "path": "logs/dns.log"}]))
    alert, _ = slack_alerter(inv)
    packs = load_packs(pack_dir)

    with WatchState.for_inventory(inv) as state:
        def cycle():
            return run_watch(inv, state, alert=alert, packs=packs)[0]

        r1 = cycle()
        assert [(e.line, e.indicator, e.advisories) for e in r1.by_kind("network-hit")] == [(2, "audit.evil-test.cx", ["test-net"])]

        with log.open("a") as f:
            f.write("2026-04-22T13:00:00Z query example.com\n2026-04-22T13:01:00Z query x.AUDIT.evil-test.cx\n")
            f.write("2026-04-22T13:02:00Z query audit.evil-te")  # a line still being written
        r2 = cycle()
        assert [e.line for e in r2.by_kind("network-hit")] == [4]

        with log.open("a") as f:
            f.write("st.cx\n")
        r3 = cycle()
        assert [e.line for e in r3.by_kind("network-hit")] == [5]

        assert cycle().events == []  # nothing new, nothing re-read

        log.write_text("2026-04-23T00:00:00Z query audit.evil-test.cx?token=s3cr3t\n")  # truncated / rotated
        r5 = cycle()
        assert [e.line for e in r5.by_kind("network-hit")] == [1]
        assert "s3cr3t" not in r5.model_dump_json()  # blanked in the report (flow result, JSON) too
        assert any("rotated" in n for n in r5.notes)

    msgs = [c.params for c in slack.calls_to("chat.postMessage", ok_only=True)]
    assert len(msgs) == 4
    assert "s3cr3t" not in slack.all_text()  # query values are blanked before a line reaches a channel


# ---------------------------------------------------------------- outages


def test_source_down_alerts_once_then_recovers_once(registry, tmp_path: Path, slack: SlackServer):
    """Slack: the local SlackServer receives exactly one down and one recovered message per failing source."""
    gate = Gate(int(registry.host.rsplit(":", 1)[1]))
    gate.up()
    repo = "watch/outage"
    push_index(registry.base_url, repo, "v1")
    gated_ref = f"127.0.0.1:{gate.port}/{repo}:v1"
    log = tmp_path / "net.log"
    inv = load_inventory(write_inventory(tmp_path, slack, images=[{"reference": gated_ref}],
                                         network_logs=[{"name": "proxy", "path": "net.log"}]))
    pack_dir = tmp_path / "adv"
    write_pack(pack_dir, "test-out", domains=["bad.example-test.org"])
    alert, _ = slack_alerter(inv)
    packs = load_packs(pack_dir)
    try:
        with WatchState.for_inventory(inv) as state:
            def cycle():
                with RegistryPool(inv, **FAST) as pool:
                    return run_watch(inv, state, alert=alert, packs=packs, registries=pool)[0]

            r1 = cycle()  # registry up, log missing
            assert [(e.kind, e.source) for e in r1.events] == [("source-down", "network log proxy")]
            gate.down()
            r2 = cycle()
            assert [(e.kind, e.source) for e in r2.events] == [("source-down", f"registry 127.0.0.1:{gate.port}")]
            assert "refused" in r2.events[0].error.lower() or "connect" in r2.events[0].error.lower()
            assert cycle().events == []  # still down: said once
            gate.up()
            log.write_text("hello\n")
            r4 = cycle()
            assert sorted((e.kind, e.source) for e in r4.events) == [
                ("source-recovered", "network log proxy"), ("source-recovered", f"registry 127.0.0.1:{gate.port}")]
            assert cycle().events == []
    finally:
        gate.down()
    texts = posted(slack)
    assert sum("source down" in t for t in texts) == 2 and sum("source recovered" in t for t in texts) == 2


def test_undelivered_alerts_are_queued_and_sent_next_cycle(registry, tmp_path: Path, slack: SlackServer):
    """Slack: the local SlackServer is stopped during the cycle that finds the drift, then started again."""
    repo = "watch/queued"
    push_image(registry.base_url, repo, "v1")
    inv = load_inventory(write_inventory(tmp_path, slack, images=[{"reference": registry.ref(repo, "v1")}]))
    alert, _ = slack_alerter(inv, connection_retries=0)
    packs = load_packs(write_pack(tmp_path / "adv", "none").parent)
    with WatchState.for_inventory(inv) as state:
        run_watch(inv, state, alert=alert, packs=packs, **FAST)
        moved = push_image(registry.base_url, repo, "v1")
        slack.stop()
        r2 = run_watch(inv, state, alert=alert, packs=packs, **FAST)[0]
        assert len(r2.by_kind("drift")) == 1 and r2.alerts_sent == 0 and r2.alerts_pending == 1
        slack.start()
        r3 = run_watch(inv, state, alert=alert, packs=packs, **FAST)[0]
        assert r3.events == [] and r3.alerts_sent == 1 and r3.alerts_pending == 0
    texts = posted(slack)
    assert len(texts) == 1 and moved.digest in texts[0]


# ---------------------------------------------------------------- repositories


def test_include_repositories_watches_tagged_references_in_checkouts(registry, tmp_path: Path):
    repo = "watch/fromrepo"
    push_image(registry.base_url, repo, "1.0")
    push_image(registry.base_url, repo, "2.0")
    pinned = push_image(registry.base_url, repo, "3.0")
    checkout = tmp_path / "app"
    (checkout / ".github" / "workflows").mkdir(parents=True)
    (checkout / "Dockerfile").write_text(f"FROM {registry.ref(repo, '1.0')}\n")
    (checkout / ".github" / "workflows" / "ci.yml").write_text(
        "jobs:\n  scan:\n    runs-on: ubuntu-latest\n"
        f"    container: {registry.ref(repo, '2.0')}\n"
        f"    steps:\n      - run: docker run {registry.ref(repo, '3.0', pinned.digest)}\n")
    inv = load_inventory(write_inventory(tmp_path, repositories=[{"name": "app", "kind": "local", "path": "app"}]))
    with WatchState.for_inventory(inv) as state:
        rep = watch_cycle(inv, state, packs=[], include_repositories=True)
        assert rep.references == 2 and rep.first_seen == 2
        moved = push_image(registry.base_url, repo, "2.0")
        rep2 = watch_cycle(inv, state, packs=[], include_repositories=True)
    assert [(e.reference, e.after) for e in rep2.by_kind("drift")] == [(registry.ref(repo, "2.0"), moved.digest)]
    # without the flag, the repositories are not looked at
    with WatchState(tmp_path / "other.sqlite") as other:
        assert watch_cycle(inv, other, packs=[]).references == 0


# ---------------------------------------------------------------- the Prefect flow


def test_flow_starts_dry_run_incident_response(prefect_harness, registry, tmp_path: Path, slack: SlackServer):
    """Slack: the local SlackServer receives the watch's critical alert and the dry-run incident's own messages."""
    repo = "watch/flow"
    push_index(registry.base_url, repo, "latest")
    evil = push_index(registry.base_url, repo, "evil-staging")
    pack_dir = tmp_path / "advisories"
    write_pack(pack_dir, "test-flow-2026", digests=[evil.digest], repository=registry.ref(repo))
    inv_path = write_inventory(tmp_path, slack, images=[{"reference": registry.ref(repo, "latest")}])

    baseline = run(str(inv_path), advisories_dir=str(pack_dir))  # plain path (the CLI's): first sight, no events
    assert baseline[0].first_seen == 1 and baseline[0].events == []
    repoint(registry, repo, "latest", evil)
    out = watch(inventory=str(inv_path), cycles=1, advisories_dir=str(pack_dir))

    assert [e["kind"] for e in out["events"]] == ["malicious"]
    (incident,) = out["incidents"]
    assert incident.startswith("test-flow-2026-") and out["events"][0]["incident"] == incident
    texts = posted(slack)
    assert any("MALICIOUS" in t and incident in t for t in texts)
    assert any(incident in t and "MALICIOUS" not in t for t in texts)  # the incident flow's own notice

    started = [e for e in Journal(load_inventory(inv_path).journal_path()).events(incident) if (e["stage"], e["kind"]) == ("flow", "started")]
    assert started and started[0]["detail"]["mode"] == "dry-run"
    assert started[0]["detail"]["triggered_by"] == f"watch: {registry.ref(repo, 'latest')} -> {evil.digest}"


# ---------------------------------------------------------------- Docker Hub: when and who


def test_drift_on_docker_hub_names_push_time_and_pusher(registry, tmp_path: Path, slack: SlackServer,
                                                        monkeypatch: pytest.MonkeyPatch):
    """Docker Hub APIs through flows.drill.servers.dockerhub (tag_last_pushed, audit logs); the real registry stands in
    for registry-1.docker.io as an inventory mirror (``mirror_of: docker.io``); Slack through the local SlackServer."""
    hub = start_dockerhub()
    hub.tokens.add("org-access-token-for-tests")
    monkeypatch.setenv("DG_HUB_TOKEN", "org-access-token-for-tests")
    try:
        before = push_index(registry.base_url, "acme/scanner", "v2")
        inv = load_inventory(write_inventory(tmp_path, slack, images=[{"reference": "acme/scanner:v2"}], registries=[
            {"name": "hub-mirror", "kind": "distribution", "url": registry.base_url, "mirror_of": "docker.io"},
            {"name": "hub", "kind": "dockerhub", "api_url": hub.url, "token": "env:DG_HUB_TOKEN"},
        ]))
        alert, _ = slack_alerter(inv)
        packs = load_packs(write_pack(tmp_path / "adv", "none").parent)
        with WatchState.for_inventory(inv) as state:
            assert run_watch(inv, state, alert=alert, packs=packs, **FAST)[0].first_seen == 1
            after = push_index(registry.base_url, "acme/scanner", "v2")
            hub.add_tag("acme/scanner", "v2", after.digest, "2026-04-22T12:35:10.000000Z")
            hub.add_event("acme", "repo.tag.push", "acme/scanner", "alice", "2026-03-03T09:00:00Z", tag="v2", digest=before.digest)
            hub.add_event("acme", "repo.tag.push", "acme/scanner", "mallory", "2026-04-22T12:35:10Z", tag="v2", digest=after.digest)
            rep = run_watch(inv, state, alert=alert, packs=packs, **FAST)[0]
    finally:
        hub.stop()
    (ev,) = rep.by_kind("drift")
    assert ev.reference == "docker.io/acme/scanner:v2" and (ev.before, ev.after) == (before.digest, after.digest)
    assert ev.pushed_at.isoformat() == "2026-04-22T12:35:10+00:00" and ev.pushed_by == "mallory"
    assert any(path.startswith("/v2/auditlogs/acme") and authed for _, path, authed in hub.calls)
    (text,) = posted(slack)
    assert "mallory" in text and "2026-04-22T12:35:10" in text
    assert "org-access-token-for-tests" not in slack.all_text()
