"""Tag timelines from outside: evidence in, intervals and holes out (``tasks/watch/timeline.build_timeline``),
and the journal's runs of sightings on SQLite and a real PostgreSQL (``journal_location`` runs each on both)."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

from digestguard.journal import Journal
from digestguard.timeline import Observation
from tasks.watch.timeline import DEFAULT_MAX_GAP, build_timeline, record, stored_timeline

REF = "docker.io/checkmarx/kics:latest"
GOOD = "sha256:" + "a" * 64
BAD = "sha256:" + "b" * 64
OTHER = "sha256:" + "c" * 64
T0 = datetime(2026, 4, 22, 12, 0, tzinfo=timezone.utc)


def m(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def seen(minute: float, digest: str, source: str = "watch", detail: str = "registry-1.docker.io", **kw) -> Observation:
    return Observation(reference=REF, digest=digest, source=source, detail=detail, first_at=m(minute), last_at=m(minute), **kw)


def pushed(read_minute: float, digest: str, push_minute: float) -> Observation:
    return Observation(reference=REF, digest=digest, source="dockerhub", detail="hub", first_at=m(read_minute),
                       last_at=m(read_minute), began_at=m(push_minute))


def test_watch_cycles_and_a_push_time_place_the_overwrite_at_its_minute():
    obs = [seen(0, GOOD), seen(5, GOOD), seen(10, GOOD), seen(40 + 3, BAD), pushed(43, BAD, 35)]
    # cycles every 5 min until 10, the watch was down until 43: the push time says BAD began at 35
    tl = build_timeline(REF, obs, max_gap=timedelta(minutes=30))
    assert [(iv.start, iv.end, iv.digest) for iv in tl.intervals] == [(m(0), m(35), GOOD), (m(35), m(43), BAD)]
    assert tl.intervals[1].start_source == "docker hub tag_last_pushed (hub)"
    assert tl.at(m(34)).digest == GOOD and tl.at(m(36)).digest == BAD and tl.at(m(43)).digest == BAD
    assert not tl.at(m(44)).known and not tl.at(m(-1)).known


def test_far_apart_sightings_are_a_hole_even_when_they_agree():
    """The kics tags were overwritten and put back: the same digest an hour apart proves nothing in between."""
    tl = build_timeline(REF, [seen(0, GOOD), seen(5, GOOD), seen(65, GOOD), seen(70, GOOD)])
    assert [(iv.start, iv.end, iv.digest) for iv in tl.intervals] == [(m(0), m(5), GOOD), (m(5), m(65), None),
                                                                     (m(65), m(70), GOOD)]
    assert "further apart" in tl.intervals[1].reason
    assert tl.at(m(30)).digest is None


def test_a_change_without_push_time_is_a_hole_between_the_sightings():
    tl = build_timeline(REF, [seen(0, GOOD), seen(5, BAD), seen(10, BAD)])
    assert [(iv.start, iv.end, iv.digest) for iv in tl.intervals] == [(m(0), m(5), None), (m(5), m(10), BAD)]
    assert "changed from" in tl.intervals[0].reason


def test_a_push_time_after_its_reading_or_contradicted_is_set_aside():
    future = build_timeline(REF, [seen(0, GOOD), seen(5, BAD), pushed(5, BAD, 90)])
    assert future.at(m(2)).digest is None and any("after it was read" in n for n in future.notes)
    # Hub says BAD since minute 1, but the watch saw GOOD at minute 3: Hub's claim is not used
    contradicted = build_timeline(REF, [seen(0, GOOD), seen(3, GOOD), seen(6, BAD), pushed(6, BAD, 1)])
    assert contradicted.at(m(2)).digest == GOOD and contradicted.at(m(4)).digest is None
    assert any("contradicted" in n for n in contradicted.notes)


def test_ci_pulls_fill_a_hole_and_disagreeing_sources_make_one():
    ci = seen(20, GOOD, source="ci-log", detail="gh acme/app run 1 line 9")
    tl = build_timeline(REF, [seen(0, GOOD), seen(10, GOOD), ci, seen(30, GOOD)], max_gap=timedelta(minutes=10))
    assert [(iv.start, iv.end, iv.digest) for iv in tl.intervals] == [(m(0), m(30), GOOD)]
    assert "ci-log (gh acme/app run 1 line 9)" in tl.intervals[0].sources
    run = Observation(reference=REF, digest=GOOD, source="watch", detail="r", first_at=m(0), last_at=m(30))
    clash = build_timeline(REF, [run, seen(12, OTHER, source="ci-log", detail="gl")], max_gap=timedelta(minutes=10))
    assert clash.at(m(12)).digest is None  # a run of GOOD with OTHER seen inside it: not trusted
    assert any("contradicted" in n for n in clash.notes)


def test_as_of_makes_the_end_explicit_and_no_evidence_is_unknown():
    tl = build_timeline(REF, [seen(0, GOOD), seen(5, GOOD)], as_of=m(60))
    assert tl.intervals[-1].digest is None and tl.intervals[-1].end == m(60)
    assert tl.at(m(5)).digest == GOOD and tl.at(m(6)).digest is None
    empty = build_timeline(REF, [], as_of=m(60))
    assert empty.intervals == [] and not empty.at(m(1)).known


# ---------------------------------------------------------------- the journal's runs


def test_runs_extend_while_sightings_keep_coming(journal_location):
    j = Journal(journal_location)
    assert record(j, [seen(t, GOOD) for t in (0, 5, 10)]) == 3  # one insert, two extensions
    record(j, [seen(5, GOOD)])  # already covered: nothing
    record(j, [seen(40, GOOD), seen(45, BAD)])  # a gap: a new run; another digest: a new run
    rows = j.tag_observations(REF)
    assert [(r.digest, r.first_at, r.last_at) for r in rows] == [(GOOD, m(0), m(10)), (GOOD, m(40), m(40)),
                                                                (BAD, m(45), m(45))]
    j.close()
    again = Journal(journal_location)  # reopened: the same timeline
    tl = stored_timeline(again, REF)
    assert [(iv.start, iv.end, iv.digest) for iv in tl.intervals] == [(m(0), m(10), GOOD), (m(10), m(40), None),
                                                                     (m(40), m(45), None)]
    assert again.tag_references() == [REF]


def test_two_watchers_at_once_keep_one_consistent_history(journal_location):
    journals = [Journal(journal_location) for _ in range(4)]
    errors: list[BaseException] = []

    def watcher(n: int) -> None:
        try:
            for t in range(0, 60):  # both see every minute; watcher n writes in its own order
                minute = t if n % 2 == 0 else 59 - t
                record(journals[n], [seen(minute, GOOD if minute < 30 else BAD)], DEFAULT_MAX_GAP)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=watcher, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    tl = stored_timeline(journals[0], REF)
    assert tl.at(m(29)).digest == GOOD and tl.at(m(30)).digest == BAD and tl.at(m(59)).digest == BAD
    assert tl.at(m(29.5)).digest is None  # the change happened somewhere in that minute
    assert all(iv.digest in (GOOD, BAD, None) for iv in tl.intervals)
    assert not tl.notes
