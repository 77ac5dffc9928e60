"""CI job-log parsing on logs in the formats GitHub Actions and GitLab runners write (tests/data/cilogs)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from digestguard.cilog import parse_job_log

DATA = Path(__file__).resolve().parent.parent / "data" / "cilogs"
LATEST = "sha256:a0d9366f6f0166dcbf92fcdc98e1a03d2e6210e8d7e8573f74d50849130651a0"
ALPINE_INDEX = "sha256:2588a44890263a8185bd5d9fadb6bc9220b60245dbcbc4da35e1b62a6f8c230d"
ALPINE_AMD64 = "sha256:d186161ae8e33cd7702dd2a6c0337deb14e2b178542d232129c0da64b1af06e4"
GITLAB_IMAGE_ID = "sha256:f61098245d584f6b0b12f87e34986ff7618ff620d3a0165b2d28a9d885597888"


def _log(rel: str):
    return parse_job_log((DATA / rel).read_bytes(), rel, source="test")


def test_github_container_action_pull_and_run():
    log = _log("github/kics-action.log")
    # GitHub writes 7 fraction digits (100 ns); Python keeps microseconds
    assert log.started_at == datetime(2026, 4, 22, 14, 20, 1, tzinfo=timezone.utc)
    assert log.unparsable == 0 and log.lines_read == 38
    pull, run = log.pulls
    assert (pull.kind, pull.name, pull.tag, pull.digest, pull.digest_source) == (
        "pull", "docker.io/checkmarx/kics", "latest", LATEST, "log")
    assert pull.line == "Pull down action image 'checkmarx/kics:latest'" and pull.line_no == 17
    lines = dict(pull.evidence)
    assert lines[26] == f"Digest: {LATEST}"
    assert lines[27] == "Status: Downloaded newer image for checkmarx/kics:latest"
    # the action's own `docker run` of the tag it pulled uses that digest
    assert (run.kind, run.digest, run.digest_source, run.line_no) == ("run", LATEST, "inherited", 36)
    assert pull.at is not None and pull.at.tzinfo is not None and pull.at > log.started_at


def test_github_run_step_implicit_pull_keeps_the_tag_and_digest():
    log = _log("github/kics-run-clean.log")
    assert len(log.pulls) == 1
    ev = log.pulls[0]
    assert (ev.kind, ev.reference, ev.tag) == ("run", "checkmarx/kics:v2.1.20", "v2.1.20")
    assert ev.digest == "sha256:3f1b7c2e9d0a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9001122334"
    # group title, the echoed command, "Unable to find image", pull output: one event
    assert [n for n, _ in ev.evidence] == [3, 4, 7, 8, 11, 12]
    assert "\x1b" not in ev.evidence[1][1]  # ANSI colour removed


def test_gitlab_timestamped_trace_uses_the_repo_digest_not_the_image_id():
    log = _log("gitlab/kics-executor.log")
    assert log.started_at == datetime(2026, 4, 22, 14, 30, tzinfo=timezone.utc)
    assert log.unparsable == 0
    (ev,) = log.pulls
    assert (ev.kind, ev.tag, ev.digest) == ("executor", "alpine", ALPINE_AMD64)
    assert ev.digest != GITLAB_IMAGE_ID
    assert ev.at == datetime(2026, 4, 22, 14, 30, 0, 388000, tzinfo=timezone.utc)
    # every digest on any line is kept, the image id included (for a full-text match)
    assert {d.digest for d in log.digests} == {GITLAB_IMAGE_ID, ALPINE_AMD64}


def test_gitlab_plain_trace_with_podman_has_no_digest_and_no_time():
    log = _log("gitlab/kics-podman-plain.log")
    assert log.started_at is None
    assert [(p.kind, p.reference, p.digest) for p in log.pulls] == [
        ("pull", "docker.io/checkmarx/kics:debian", None),
        ("run", "docker.io/checkmarx/kics:debian", None),
    ]
    # podman's "Copying blob sha256:..." are layer digests: never mistaken for the image digest
    assert all(p.digest is None for p in log.pulls)


def test_started_at_falls_back_to_the_callers_time_only_without_timestamps():
    api_time = datetime(2026, 4, 22, 13, 0, tzinfo=timezone.utc)
    plain = parse_job_log((DATA / "gitlab/kics-podman-plain.log").read_text(), "j", started_at=api_time)
    assert plain.started_at == api_time
    stamped = parse_job_log((DATA / "gitlab/kics-executor.log").read_text(), "j", started_at=api_time)
    assert stamped.started_at == datetime(2026, 4, 22, 14, 30, tzinfo=timezone.utc)


def test_corrupt_lines_are_counted_and_the_rest_is_read():
    log = _log("github/corrupt.log")
    # bad UTF-8, NUL junk, gzip junk, a truncated timestamp, a truncated digest
    assert log.unparsable == 5
    assert log.unparsable_lines == [2, 3, 4, 5, 7]
    assert log.lines_read == 12
    good = [p for p in log.pulls if p.digest]
    assert [(p.tag, p.digest) for p in good] == [("alpine", ALPINE_INDEX)]


def test_pure_junk_and_empty_input_never_raise():
    assert parse_job_log(b"", "empty").pulls == []
    junk = bytes(range(256)) * 50
    log = parse_job_log(junk, "junk")
    assert log.pulls == [] and log.unparsable >= 1
    assert parse_job_log("Digest: not-a-digest\n", "x").unparsable == 1


def test_gitlab_continuation_lines_join_the_previous_line():
    text = (
        "2026-04-22T14:30:00.000001Z 00O Using docker image sha256:" + "1" * 64 + " for checkmarx/kics:latest with di\n"
        "2026-04-22T14:30:00.000002Z 00O+gest checkmarx/kics@" + LATEST + " ...\n"
    )
    (ev,) = parse_job_log(text, "j").pulls
    assert ev.digest == LATEST and ev.line_no == 1


def test_buildkit_from_and_pinned_docker_pull():
    text = "\n".join([
        "#4 [1/2] FROM docker.io/checkmarx/kics:latest@" + LATEST,
        "$ docker pull --platform linux/amd64 checkmarx/kics@" + ALPINE_INDEX,
        ALPINE_INDEX + ": Pulling from checkmarx/kics",
        "Digest: " + ALPINE_INDEX,
        "Status: Downloaded newer image for checkmarx/kics@" + ALPINE_INDEX,
    ])
    build, pull = parse_job_log(text, "j").pulls
    assert (build.kind, build.tag, build.digest, build.digest_source) == ("build", "latest", LATEST, "reference")
    assert (pull.kind, pull.digest, pull.tag) == ("pull", ALPINE_INDEX, None)
    assert [n for n, _ in pull.evidence] == [2, 3, 4, 5]


def test_jenkins_timestamper_prefix():
    log = parse_job_log("[2026-04-22T14:00:00.123Z] + docker pull checkmarx/kics:v2.1.21\n", "jenkins")
    assert log.started_at == datetime(2026, 4, 22, 14, 0, 0, 123000, tzinfo=timezone.utc)
    assert log.pulls[0].tag == "v2.1.21"
