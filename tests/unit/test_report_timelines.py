"""The report draws each affected tag's timeline beside the attack window (issue 19), and a report rebuilt
from the journal draws the same. Pure rendering over the real models; HTML parsed with the standard parser."""

from __future__ import annotations

from datetime import timedelta

from digestguard.journal import Journal
from digestguard.timeline import Observation
from tasks.report.from_journal import report_from_journal
from tasks.report.html import MAX_TAG_MARKS, MAX_TAG_ROWS, render_report_html
from tasks.watch.timeline import build_timeline
from tests.report_fixtures import MAL2, START, sample_report
from tests.unit.test_report import _parse

KEY = "docker.io/checkmarx/kics:latest"
GOOD = "sha256:" + "9" * 64
OVERWRITE = START + timedelta(minutes=20)


def _timeline(key: str = KEY, detail: str = "registry docker.io"):
    def watch(m: float, d: str) -> Observation:
        t = OVERWRITE + timedelta(minutes=m)
        return Observation(reference=key, digest=d, source="watch", detail=detail, first_at=t, last_at=t)

    obs = [watch(m, GOOD) for m in range(-60, 0, 5)] + [watch(m, MAL2) for m in (3, 8, 13)]
    obs.append(Observation(reference=key, digest=MAL2, source="dockerhub", detail="hub", first_at=OVERWRITE + timedelta(minutes=3),
                           last_at=OVERWRITE + timedelta(minutes=3), began_at=OVERWRITE))
    obs += [watch(m, GOOD) for m in (90, 95)]  # a hole from +13 to +90, then restored
    return build_timeline(key, obs)


def _report(timelines):
    from digestguard.advisory import load_advisory

    return sample_report().with_timelines(timelines, load_advisory("kics-2026-04"))


def test_each_interval_is_drawn_beside_the_window_coloured_by_what_it_served():
    tl = _timeline()
    doc = _parse(render_report_html(_report([tl])))
    rects = doc.select("rect", "tag-interval")
    assert [(r["class"].split()[1], r["data-digest"]) for r in rects] == [
        ("known", GOOD), ("malicious", MAL2), ("hole", ""), ("known", GOOD)]
    assert len(doc.select("g", "tag-timeline")) == 1
    window = doc.select("rect", "window")[0]
    band_x = float(window["x"])
    bad = doc.select("rect", "tag-interval", "malicious")[0]
    assert float(bad["x"]) > band_x  # the overwrite sits inside the window, 20 minutes after its start
    assert bad["data-start"] == OVERWRITE.isoformat()
    text = " ".join(doc.text)
    assert "docker hub tag_last_pushed (hub)" in text and "Tag timelines" in text and "tag: unknown" in text


def test_outside_text_is_escaped_and_the_drawing_is_bounded():
    hostile = _timeline(detail='<script>alert(1)</script>"')
    many = [_timeline(f"docker.io/checkmarx/kics:t{i}") for i in range(MAX_TAG_ROWS + 3)]
    html = render_report_html(_report([hostile, *many]))
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html
    doc = _parse(html)
    assert len(doc.select("g", "tag-timeline")) == MAX_TAG_ROWS
    assert "4 more tag timeline(s) not drawn" in " ".join(doc.text)
    # a tag that flapped hundreds of times keeps its newest intervals only
    flap = build_timeline(KEY, [Observation(reference=KEY, digest=(GOOD, MAL2)[i % 2], source="ci-log", detail="x",
                                            first_at=START + timedelta(seconds=30 * i), last_at=START + timedelta(seconds=30 * i))
                                for i in range(400)])
    doc = _parse(render_report_html(_report([flap])))
    assert 0 < len(doc.select("rect", "tag-interval")) <= MAX_TAG_MARKS


def test_the_report_rebuilt_from_the_journal_draws_the_same_timeline(tmp_path):
    inc = "kics-2026-04-20261127-1930-3f2a"
    report = _report([_timeline()]).model_copy(update={"incident": inc})
    j = Journal(tmp_path / "j.sqlite")
    j.event(inc, "flow", "started", {"mode": "dry-run"})
    j.event(inc, "assess", "tag-timelines", report.timelines_journal_detail())
    rebuilt = report_from_journal(j, inc)
    assert rebuilt.tag_timelines == report.tag_timelines and rebuilt.malicious_digests == report.malicious_digests

    def drawn(r):
        return [(a["class"], a["data-digest"], a["data-start"], a["data-end"])
                for a in _parse(render_report_html(r)).select("rect", "tag-interval")]

    assert drawn(rebuilt) == drawn(report) and len(drawn(rebuilt)) == 4
    j.close()
