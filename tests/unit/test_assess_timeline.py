"""Assess upgrades a digest-less pull with the tag's timeline (issue 19): the shipped kics pack, real-format
GitHub Actions job logs, a real SQLite journal holding the watch's sightings and Docker Hub's push time.

The timeline shows the overwrite of ``checkmarx/kics:latest`` at a known minute: a pull one minute after is
confirmed, one minute before (a covered interval) is clear, and a pull inside a hole stays probable.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

from digestguard.advisory import load_advisory
from digestguard.cilog import parse_job_log
from digestguard.inventory import load_inventory
from digestguard.journal import Journal
from digestguard.timeline import Observation
from tasks.assess import assess, classify_jobs, exposure_window, tag_timelines
from tasks.watch.timeline import record
from tests.unit.test_assess import DETECTED, LATEST, START, gh_log

KEY = "docker.io/checkmarx/kics:latest"
GOOD = "sha256:" + "9" * 64  # the legitimate image the tag served before
OVERWRITE = START + timedelta(minutes=10)  # the minute the tag was overwritten


@pytest.fixture(scope="module")
def kics():
    return load_advisory("kics-2026-04")


def at(minutes: float) -> datetime:
    return OVERWRITE + timedelta(minutes=minutes)


def sightings() -> list[Observation]:
    """Watch cycles every 5 minutes; Docker Hub read at +4 says LATEST was pushed at the overwrite minute;
    the watch was down from +20 to +120 (a hole), then saw the restored good image."""
    def watch(m: float, d: str) -> Observation:
        return Observation(reference=KEY, digest=d, source="watch", detail="registry docker.io", first_at=at(m), last_at=at(m))

    obs = [watch(m, GOOD) for m in range(-30, 0, 5)]
    obs += [watch(m, LATEST) for m in (4, 9, 14, 19)]
    obs.append(Observation(reference=KEY, digest=LATEST, source="dockerhub", detail="docker hub api https://hub.docker.com",
                           first_at=at(4), last_at=at(4), began_at=OVERWRITE))
    obs += [watch(m, GOOD) for m in (120, 125)]
    return obs


@pytest.fixture()
def journal(tmp_path: Path):
    j = Journal(tmp_path / "journal.sqlite")
    record(j, sightings())
    yield j
    j.close()


def _jobs(kics, journal, logs: dict[str, str]):
    w = exposure_window(kics, detected_at=DETECTED)
    parsed = [parse_job_log(text, name, source="ci") for name, text in logs.items()]
    return {j.job: j for j in classify_jobs(parsed, kics, w, tag_timelines(journal, kics, w, parsed))}


def test_a_minute_after_the_overwrite_is_confirmed_a_minute_before_clear_a_hole_probable(kics, journal):
    jobs = _jobs(kics, journal, {
        "after": gh_log(at(1), "checkmarx/kics:latest", None),
        "before": gh_log(at(-1), "checkmarx/kics:latest", None),
        "hole": gh_log(at(60), "checkmarx/kics:latest", None),
        "restored": gh_log(at(122), "checkmarx/kics:latest", None),
    })
    assert {n: j.verdict for n, j in jobs.items()} == {"after": "confirmed", "before": "clear", "hole": "probable",
                                                      "restored": "clear"}
    assert jobs["after"].digest == LATEST and "malicious digest" in jobs["after"].reason
    assert "docker hub tag_last_pushed" in jobs["after"].reason  # the boundary's source is named
    assert jobs["before"].digest == GOOD and "non-malicious digest" in jobs["before"].reason
    assert "watch (registry docker.io)" in jobs["before"].reason
    assert "hole" in jobs["hole"].reason
    for j in jobs.values():
        assert any(e.startswith(f"timeline {KEY} at ") for e in j.evidence)


def test_without_a_timeline_the_window_alone_decides(kics, tmp_path):
    empty = Journal(tmp_path / "empty.sqlite")
    jobs = _jobs(kics, empty, {"after": gh_log(at(1), "checkmarx/kics:latest", None)})
    assert jobs["after"].verdict == "probable" and not any(e.startswith("timeline") for e in jobs["after"].evidence)


def test_a_logged_digest_still_wins_and_a_ci_pull_fills_a_hole(kics, journal):
    jobs = _jobs(kics, journal, {
        "logged-good": gh_log(at(1), "checkmarx/kics:latest", GOOD),  # the log's own digest beats the timeline
        # another job printed the digest at +60 and +61, inside the watch's outage: a digest-less pull between is decided
        "printer-1": gh_log(at(60), "checkmarx/kics:latest", LATEST),
        "printer-2": gh_log(at(62), "checkmarx/kics:latest", LATEST),
        "between": gh_log(at(61), "checkmarx/kics:latest", None),
    })
    assert jobs["logged-good"].verdict == "clear"
    assert jobs["between"].verdict == "confirmed" and "ci-log" in jobs["between"].reason


def test_assess_reads_the_journal_and_the_report_carries_the_timeline(kics, journal, tmp_path):
    logs = tmp_path / "ci-logs"
    logs.mkdir()
    (logs / "after.log").write_text(gh_log(at(1), "checkmarx/kics:latest", None))
    (logs / "before.log").write_text(gh_log(at(-1), "checkmarx/kics:latest", None))
    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump(
        {"ci_logs": [{"name": "exported", "kind": "folder", "path": "./ci-logs"}]}))
    inv = load_inventory(tmp_path / "inventory.yaml")
    rep = assess(kics, inv, detected_at=DETECTED, journal=journal, network_hits=[])
    assert {j.job: j.verdict for j in rep.jobs} == {"after.log": "confirmed", "before.log": "clear"}
    (tl,) = rep.tag_timelines
    assert tl.reference == KEY and tl.at(at(1)).digest == LATEST and tl.at(at(-1)).digest == GOOD
    assert tl.at(at(60)).digest is None
    again = assess(kics, inv, detected_at=DETECTED, network_hits=[])  # no journal: the old rule
    assert {j.job: j.verdict for j in again.jobs} == {"after.log": "probable", "before.log": "probable"}
    assert again.tag_timelines == []
