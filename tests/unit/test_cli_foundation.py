"""The console script's foundation commands, run as a user would (a subprocess)."""

import json
import subprocess
import sys

from digestguard.journal import Journal


def dg(*args, check=True):
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, check=check)


def test_advisories_list_shows_both_packs():
    out = dg("advisories", "list").stdout
    assert "kics-2026-04" in out and "trivy-2026-03" in out
    data = json.loads(dg("advisories", "list", "--json").stdout)
    assert {a["id"] for a in data["advisories"]} >= {"kics-2026-04", "trivy-2026-03"}


def test_advisories_show_and_validate(tmp_path):
    shown = json.loads(dg("advisories", "show", "kics-2026-04", "--json").stdout)
    assert shown["window"]["start"].startswith("2026-04-22T12:35")
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: x\ntitle: t\nwindow: {start: '2026-01-02T00:00:00Z', end: '2026-01-01T00:00:00Z', source: s}\nimages: []\n")
    r = dg("advisories", "validate", str(bad), check=False)
    assert r.returncode == 2 and str(bad) in r.stderr and "images" in r.stderr and "before start" in r.stderr


def test_help_on_every_command():
    for cmd in ([], ["advisories"], ["advisories", "show"], ["journal"]):
        r = dg(*cmd, "--help")
        assert "Usage" in r.stdout


def test_journal_command_prints_rows(tmp_path):
    path = tmp_path / "j.sqlite"
    Journal(path).record("inc-7", "purge", "mirror/kics@sha256:ab", "delete-manifest", "done", approver="alice")
    out = json.loads(dg("journal", "inc-7", "--journal", str(path), "--json").stdout)
    assert out["actions"][0]["target"] == "mirror/kics@sha256:ab" and out["actions"][0]["approver"] == "alice"
    assert "delete-manifest" in dg("journal", "inc-7", "--journal", str(path)).stdout


def test_report_command_rebuilds_the_html_from_the_journal(tmp_path):
    path = tmp_path / "j.sqlite"
    j = Journal(path)
    j.record("inc-9", "purge", "mirror/kics@sha256:ab", "delete-manifest", "done", approver="alice")
    j.record("inc-9", "rotate", "secret:KICS_API_TOKEN", "rotate", "done", detail={"version": 2}, approver="alice")
    out = tmp_path / "report.html"
    r = dg("report", "inc-9", "--journal", str(path), "--out", str(out))
    assert r.returncode == 0, r.stderr
    html = out.read_text()
    assert "<svg" in html and "inc-9" in html and "delete-manifest" in html
    assert "src=\"http" not in html and "<link" not in html  # self-contained: no external assets
