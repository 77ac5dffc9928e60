"""The watch cycle reports moved action tags (issue 17): each tag's first-seen commit is kept in the
watch state (SQLite), and a tag of an action the watched repositories use that points elsewhere later
is an event - critical for a release tag (``v1.2.3``), a warning for a floating one (``v1``).

GitHub is ``flows.drill.servers.github.GitHubServer`` (a local server speaking the GitHub REST API's
documented wire protocol, since no GitHub runs here), reached through the unmodified
``integrations.github.GitHubClient`` the watch builds from the inventory's github repository entry.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from digestguard.inventory import load_inventory
from flows.drill.servers.github import DEFAULT_TOKEN, GitHubServer
from tasks.watch.alerts import alert_messages
from tasks.watch.cycle import watch_cycle
from tasks.watch.events import WATCH_EVENT
from tasks.watch.state import WatchState

ROOT_C, V1, V1B, NEXT = "1" * 40, "a" * 40, "b" * 40, "c" * 40
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.fixture()
def github():
    with GitHubServer() as srv:
        srv.add_repo("acme", "setup-tool")
        srv.add_commit("acme", "setup-tool", ROOT_C, date=T0, branches=("main",))
        srv.add_commit("acme", "setup-tool", V1, date=T0, parents=(ROOT_C,), tags=("v1.0.0", "v1"))
        srv.add_commit("acme", "setup-tool", V1B, date=T0, parents=(ROOT_C,))  # the attacker's, on a fork
        srv.add_commit("acme", "setup-tool", NEXT, date=T0, parents=(V1,))
        yield srv


def _inventory(tmp_path: Path, api_url: str) -> Path:
    wf = tmp_path / "app/.github/workflows/ci.yml"
    wf.parent.mkdir(parents=True)
    wf.write_text(f"jobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - uses: acme/setup-tool@{V1} # v1.0.0\n"
                  "      - uses: acme/setup-tool@v1\n")
    p = tmp_path / "inventory.yaml"
    p.write_text(yaml.safe_dump({"repositories": [
        {"name": "app", "kind": "github", "path": "app", "api_url": api_url, "token": "env:DG_TEST_GH"}]}))
    return p


def test_a_moved_action_tag_is_reported_once_and_a_floating_one_as_a_warning(tmp_path: Path, github, monkeypatch):
    monkeypatch.setenv("DG_TEST_GH", DEFAULT_TOKEN)
    inv = load_inventory(_inventory(tmp_path, github.url))
    with WatchState.for_inventory(inv) as state:
        first = watch_cycle(inv, state, packs=[], include_repositories=True)
        assert first.by_kind("action-tag-moved") == [] and first.action_tags == 2
        assert state.action_tags("acme/setup-tool") == {"v1.0.0": V1, "v1": V1}

        github.move_tag("acme", "setup-tool", "v1.0.0", V1B)  # force-pushed release tag
        github.move_tag("acme", "setup-tool", "v1", NEXT)     # a floating tag follows a release
        second = watch_cycle(inv, state, packs=[], include_repositories=True)
        moved = {e.tag: e for e in second.by_kind("action-tag-moved")}
        assert set(moved) == {"v1.0.0", "v1"}
        assert (moved["v1.0.0"].severity, moved["v1.0.0"].before, moved["v1.0.0"].after) == ("critical", V1, V1B)
        assert moved["v1"].severity == "warning"
        assert moved["v1.0.0"].used_in == ["app:.github/workflows/ci.yml:5", "app:.github/workflows/ci.yml:6"]
        # what Slack gets, and the event survives the pending-alert queue exactly
        text, _ = next(m for m in alert_messages([moved["v1.0.0"]]))
        assert "acme/setup-tool@v1.0.0" in text and text.startswith("[critical]")
        assert WATCH_EVENT.validate_json(moved["v1.0.0"].model_dump_json()) == moved["v1.0.0"]

        # the next cycle does not repeat it; the first-seen commit stays
        third = watch_cycle(inv, state, packs=[], include_repositories=True)
        assert third.by_kind("action-tag-moved") == []
        assert state.action_tags("acme/setup-tool")["v1.0.0"] == V1
        # a second move of the same tag is new
        github.move_tag("acme", "setup-tool", "v1.0.0", NEXT)
        fourth = watch_cycle(inv, state, packs=[], include_repositories=True)
        assert [(e.tag, e.after) for e in fourth.by_kind("action-tag-moved")] == [("v1.0.0", NEXT)]


def test_github_down_is_a_source_down_event_not_silence(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("DG_TEST_GH", DEFAULT_TOKEN)
    inv = load_inventory(_inventory(tmp_path, "http://127.0.0.1:9"))
    with WatchState.for_inventory(inv) as state:
        rep = watch_cycle(inv, state, packs=[], include_repositories=True)
    down = rep.by_kind("source-down")
    assert [e.source for e in down] == ["github acme/setup-tool tags"]


def test_without_a_github_repository_entry_the_report_says_action_tags_are_not_watched(tmp_path: Path, github):
    inv_path = _inventory(tmp_path, github.url)
    data = yaml.safe_load(inv_path.read_text())
    data["repositories"][0]["kind"] = "local"
    inv_path.write_text(yaml.safe_dump(data))
    with WatchState(tmp_path / "s.sqlite") as state:
        rep = watch_cycle(load_inventory(inv_path), state, packs=[], include_repositories=True)
    assert any("action tags not watched" in n for n in rep.notes)
