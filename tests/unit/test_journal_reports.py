"""The incident's report is kept with the journal, on SQLite and on a real PostgreSQL (same tests on both), so a
report written by one worker is read on another machine: ``digestguard report`` finds it with no file on disk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from digestguard.journal import SCHEMA_VERSION, Journal
from digestguard.redact import register

ROOT = Path(__file__).resolve().parents[2]


def test_report_is_kept_replaced_and_redacted(journal_location):
    j = Journal(journal_location)
    assert j.schema_version() == SCHEMA_VERSION >= 3
    assert j.saved_report("inc-r") is None
    secret = "sk-live-" + "q7Zr2" * 6
    register(secret)
    j.save_report("inc-r", f"<html>first {secret}</html>")
    j.save_report("inc-r", "<html>second run</html>")  # a re-run replaces it
    other = Journal(journal_location)  # another process / machine opening the same journal
    assert other.saved_report("inc-r") == "<html>second run</html>"
    j.save_report("inc-s", f"<html>{secret}</html>")
    assert secret not in other.saved_report("inc-s") and other.saved_report("inc-s").startswith("<html>")
    assert other.saved_report("inc-r", name="other.html") is None


def test_report_command_reads_it_from_the_journal_alone(journal_location, tmp_path, monkeypatch):
    Journal(journal_location).save_report("inc-cli", "<!DOCTYPE html><html>kept</html>")
    out = tmp_path / "elsewhere" / "r.html"
    out.parent.mkdir()
    done = subprocess.run([sys.executable, "-m", "flows.cli", "report", "inc-cli", "--journal", journal_location,
                           "--out", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "kept in the journal" in done.stdout
    assert out.read_text() == "<!DOCTYPE html><html>kept</html>"
