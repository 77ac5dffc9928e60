"""No false all-clear: with every source unreachable, every stage command says so and exits 3 (issue 15, point 1).

Nothing here needs a service: every source points at a closed loopback port or a missing path, which is the
point. The commands run as an on-call runs them (a subprocess of the CLI).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import yaml

NOT_CLEAN = ("No CI job used an affected image", "Nothing to do", '"ok": true')


def dg(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env=env)


def dg_all(*calls, env=None):
    """Several CLI runs at once: each waits out its own retries against the closed port, so they overlap."""
    procs = [subprocess.Popen([sys.executable, "-m", "flows.cli", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for args in calls]
    done = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=300)
        finally:
            p.kill()
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unreachable_inventory(tmp_path) -> str:
    port = _closed_port()
    inv = {
        "registries": [{"name": "mirror", "url": f"http://127.0.0.1:{port}"}],
        "ci_logs": [{"name": "exported", "kind": "folder", "path": "./no-such-folder"},
                    {"name": "gha", "kind": "github", "repo": "acme/infra", "api_url": f"http://127.0.0.1:{port}",
                     "token": "env:DG_TEST_GH_TOKEN"}],
        "network_logs": [{"name": "dns", "path": "./no-such.log"}],
    }
    p = tmp_path / "inventory.yaml"
    p.write_text(yaml.safe_dump(inv))
    return str(p)


def _env():
    # the embedded Prefect server of `respond` gets the drill's quiet, patient settings on this shared machine
    from flows.drill.services import quiet_prefect_server

    quiet_prefect_server()
    return {**os.environ, "DG_TEST_GH_TOKEN": "not-a-real-token"}


def test_detect_with_every_source_unreachable_exits_3_and_names_them(tmp_path):
    inv = _unreachable_inventory(tmp_path)
    r, text = dg_all(("detect", "-a", "kics-2026-04", "-i", inv, "--json"), ("detect", "-a", "kics-2026-04", "-i", inv),
                     env=_env())
    assert r.returncode == 3, (r.stdout, r.stderr)
    out = json.loads(r.stdout)
    assert out["verdict"] == "incomplete"
    states = {c["source"]: c["state"] for c in out["coverage"]}
    assert states == {"mirror": "unchecked", "exported": "unchecked", "gha": "unchecked"}
    assert all(c["reason"] for c in out["coverage"])
    assert r.stderr.startswith("INCOMPLETE: 3 of 3 sources not checked")
    assert text.returncode == 3
    assert "verdict: incomplete (0 of 3 sources checked)" in text.stdout
    assert not any(s in text.stdout for s in NOT_CLEAN)


def test_assess_with_every_source_unreachable_never_says_no_job(tmp_path):
    inv = _unreachable_inventory(tmp_path)
    r, j = dg_all(("assess", "-a", "kics-2026-04", "-i", inv), ("assess", "-a", "kics-2026-04", "-i", inv, "--json"),
                  env=_env())
    assert r.returncode == 3, (r.stdout, r.stderr)
    first = r.stdout.splitlines()[0]
    assert first.startswith("**INCOMPLETE: 3 of 3 sources not checked"), first
    assert "No CI job used an affected image." not in r.stdout
    assert j.returncode == 3
    out = json.loads(j.stdout)
    assert out["verdict"] == "incomplete"
    assert {c["source"]: c["state"] for c in out["coverage"]} == {"exported": "unchecked", "gha": "unchecked",
                                                                 "dns": "unchecked"}


def test_plans_from_unchecked_sources_are_not_nothing_to_do(tmp_path):
    inv = _unreachable_inventory(tmp_path)
    stages = ("rotate", "purge")
    runs = dg_all(*[(stage, "-a", "kics-2026-04", "-i", inv, "--dry-run", *json_flag)
                    for stage in stages for json_flag in ((), ("--json",))], env=_env())
    for stage, r, jr in zip(stages, runs[::2], runs[1::2], strict=True):
        assert r.returncode == 3, (stage, r.stdout, r.stderr)
        assert r.stdout.startswith("INCOMPLETE: "), r.stdout
        j = json.loads(jr.stdout)
        assert j["verdict"] == "incomplete" and all(c["state"] == "unchecked" for c in j["coverage"])


def test_sweep_of_an_unreadable_source_is_incomplete_and_lint_of_clean_tree_is_clean(tmp_path):
    gz = tmp_path / "dns.log.gz"
    gz.write_bytes(b"\x1f\x8b\x08\x00garbage")  # a truncated gzip: nothing readable
    r = dg("sweep", "-a", "kics-2026-04", str(gz), "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert out["verdict"] == "incomplete" and out["coverage"][0]["state"] == "unchecked"
    ok = tmp_path / "ok.log"
    ok.write_text("nothing to see\n")
    clean = dg("sweep", "-a", "kics-2026-04", str(ok), "--json")
    assert clean.returncode == 0 and json.loads(clean.stdout)["verdict"] == "clean"
    tree = tmp_path / "repo"
    tree.mkdir()
    (tree / "Dockerfile").write_text("FROM alpine@sha256:" + "a" * 64 + "\n")
    (tree / "compose.yaml").write_bytes(b"services:\n  a:\n    image: \xff\xfe checkmarx/kics:latest\n")
    lint = dg("lint", str(tree), "--json")
    data = json.loads(lint.stdout)
    assert lint.returncode == 3, (lint.stdout, lint.stderr)
    assert data["verdict"] == "incomplete" and "compose.yaml" in data["coverage"][0]["reason"]


def test_respond_dry_run_with_every_source_unreachable_is_not_ok(tmp_path):
    inv = _unreachable_inventory(tmp_path)
    r = dg("respond", "-a", "kics-2026-04", "-i", inv, "--json", "--report", str(tmp_path / "r.html"), env=_env())
    assert r.returncode == 3, (r.stdout[-2000:], r.stderr[-2000:])
    out = json.loads(r.stdout[r.stdout.index("{"):])
    assert out["ok"] is False and out["verdict"] == "incomplete"
    assert list(out)[0] == "coverage_note" and out["coverage_note"].startswith("4 of 4 sources not checked")
    html = (tmp_path / "r.html").read_text()
    assert html.index("INCOMPLETE: 4 of 4 sources not checked") < html.index('id="summary"')


def test_respond_execute_with_incomplete_coverage_ends_failed_and_exits_3(tmp_path):
    inv = _unreachable_inventory(tmp_path)
    r = dg("respond", "-a", "kics-2026-04", "-i", inv, "--execute", "--json", "--report", str(tmp_path / "r.html"),
           env=_env())
    assert r.returncode == 3, (r.stdout[-2000:], r.stderr[-2000:])
    out = json.loads(r.stdout[r.stdout.index("{"):])
    assert out["ok"] is False and out["verdict"] == "incomplete" and out["mode"] == "execute"
    assert "Finished in state Failed('incident " in r.stderr and ": incomplete: 4 of 4 sources not checked" in r.stderr
    assert "INCOMPLETE: 4 of 4 sources not checked" in r.stderr


def test_an_unexpected_exception_is_one_line_naming_the_command_traceback_only_with_debug(tmp_path):
    garbage = tmp_path / "journal.sqlite"
    garbage.write_bytes(bytes(range(256)) * 12)  # not a database
    r = dg("journal", "X", "--journal", str(garbage))
    assert r.returncode == 3
    assert r.stderr.strip().splitlines() == [
        "error: unexpected DatabaseError while running `digestguard journal`: file is not a database; "
        "the answer is incomplete (run again with --debug for the traceback)"]
    d = dg("journal", "X", "--journal", str(garbage), "--debug")
    assert d.returncode == 3 and "Traceback (most recent call last)" in d.stderr
