"""The stage commands as an on-call runs them (a subprocess), against the real local registry: detect, sweep, pin,
lint, and the rotate/purge plans. Each `--json` output keeps the keys the issues promise."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import yaml

from tests.support.registry import push_index

REPO = "clitest/kics"


def dg(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def _pack(tmp_path, bad):
    data = {"id": "cli-pack", "title": "t", "window": {"start": "2026-04-22T12:35:00Z", "source": "t"},
            "images": [{"repository": REPO, "tags_overwritten": ["latest"],
                        "malicious": [{"digest": bad.digest, "kind": "index", "tags": ["latest"], "source": "t"}] + [
                            {"digest": d, "kind": "manifest", "platform": p, "parent": bad.digest, "source": "t"}
                            for p, d in bad.children.items()]}],
            "network": [{"kind": "domain", "value": "audit.checkmarx[.]cx", "source": "seed"}]}
    p = tmp_path / "pack.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_detect_json_and_purge_plan(registry, tmp_path):
    push_index(registry.base_url, REPO, "v1")
    bad = push_index(registry.base_url, REPO, "latest")
    pack = _pack(tmp_path, bad)
    inv = tmp_path / "inventory.yaml"
    inv.write_text(yaml.safe_dump({"registries": [{"name": "mirror", "url": registry.base_url}]}))
    r = dg("detect", "--advisory", str(pack), "--inventory", str(inv), "--json")
    assert r.returncode == 1, r.stderr  # something compromised
    out = json.loads(r.stdout)
    f = next(f for f in out["findings"] if f["location"] == f"mirror/{REPO}:latest")
    assert {k: f[k] for k in ("source", "reference", "digest", "verdict")} == {
        "source": "mirror", "reference": f"{REPO}:latest", "digest": bad.digest, "verdict": "compromised"}
    plan = json.loads(dg("purge", "--advisory", str(pack), "--inventory", str(inv), "--dry-run", "--json").stdout)
    assert {i["params"]["digest"] for i in plan["items"]} == {bad.digest, *bad.children.values()}
    refused = dg("purge", "--advisory", str(pack), "--inventory", str(inv))
    assert refused.returncode == 2 and "approval" in refused.stderr


def test_sweep_json(tmp_path, registry):
    bad = push_index(registry.base_url, REPO, "sweep")
    log = tmp_path / "dns.log"
    log.write_text(textwrap.dedent("""\
        {"ts": 1776862800.0, "query": "x.audit.checkmarx.cx", "id.orig_h": "10.0.0.5"}
        {"ts": 1776862801.0, "query": "audit.checkmarx.cx.example.net", "id.orig_h": "10.0.0.5"}
        {"ts": 1776862802.0, "query": "notaudit.checkmarx.cx", "id.orig_h": "10.0.0.5"}
        """))
    r = dg("sweep", "--advisory", str(_pack(tmp_path, bad)), str(log), "--json")
    assert r.returncode == 1, r.stderr
    [hit] = json.loads(r.stdout)["hits"]
    assert {k: hit[k] for k in ("line", "indicator", "kind", "in_window")} == {
        "line": 1, "indicator": "audit.checkmarx.cx", "kind": "domain", "in_window": True}
    assert hit["path"].endswith("dns.log") and hit["timestamp"].startswith("2026-04-22T13:00:00")


def test_pin_dry_run_json_then_rewrite_and_lint(tmp_path):
    repo = tmp_path / "repo"
    (repo / ".github/workflows").mkdir(parents=True)
    wf = repo / ".github/workflows/scan.yml"
    wf.write_text("jobs:\n  scan:\n    container: checkmarx/kics:latest  # scanner\n    steps: [{run: kics scan}]\n")
    good = "sha256:" + "a" * 64
    lint = dg("lint", str(repo), "--json")
    assert lint.returncode == 1
    [off] = json.loads(lint.stdout)["offenders"]
    assert (off["path"], off["line"], off["reference"]) == (".github/workflows/scan.yml", 3, "checkmarx/kics:latest")
    r = dg("pin", "--advisory", "kics-2026-04", "--repo", str(repo), "--to", f"latest={good}", "--dry-run", "--json")
    out = json.loads(r.stdout)
    assert out["changes"] == [{"path": ".github/workflows/scan.yml", "line": 3, "before": "checkmarx/kics:latest",
                               "after": f"checkmarx/kics:latest@{good}"}]
    assert "skipped" in out and wf.read_text().count("@sha256") == 0  # dry run: untouched
    assert dg("pin", "--advisory", "kics-2026-04", "--repo", str(repo), "--to", f"latest={good}").returncode == 0
    assert wf.read_text() == f"jobs:\n  scan:\n    container: checkmarx/kics:latest@{good}  # scanner\n    steps: [{{run: kics scan}}]\n"
    assert dg("lint", str(repo), "--json").returncode == 0
