"""Assess: the window, job verdicts before/inside/after it, and the secrets exposed jobs could see.

Real parts throughout: the shipped kics advisory pack, real-format job logs on disk,
a real inventory file, and the real detect-secrets scanner over a real checkout.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from digestguard.advisory import load_advisory, parse_advisory
from digestguard.cilog import parse_job_log
from digestguard.errors import InputError
from digestguard.findings import ExposedJob
from digestguard.inventory import load_inventory
from tasks.assess import (
    ExposureWindow,
    assess,
    build_exposure_report,
    classify_jobs,
    exposure_markdown,
    exposure_window,
)
from tasks.ci_logs import read_ci_sources
from tasks.scan.ci_secrets import JobOrigin, definition_files, exposed_secrets, job_key

DATA = Path(__file__).resolve().parent.parent / "data" / "cilogs"
UTC = timezone.utc
LATEST = "sha256:a0d9366f6f0166dcbf92fcdc98e1a03d2e6210e8d7e8573f74d50849130651a0"
CLEAN = "sha256:" + "c" * 64
START = datetime(2026, 4, 22, 12, 35, tzinfo=UTC)
DETECTED = datetime(2026, 4, 22, 15, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def kics():
    return load_advisory("kics-2026-04")


def gh_log(at: datetime, image: str, digest: str | None) -> str:
    """A minimal GitHub Actions job log (runner timestamps) pulling ``image``, printing ``digest`` if given."""
    lines = ["Current runner version: '2.333.1'", f"##[group]Run docker pull {image}", f"docker pull {image}", "##[endgroup]"]
    tag = image.rsplit(":", 1)[1]
    lines.append(f"{tag}: Pulling from {image.rsplit(':', 1)[0]}")
    if digest:
        lines.append(f"Digest: {digest}")
    lines.append(f"Status: Downloaded newer image for {image}")
    out, t = [], at
    for line in lines:
        out.append(t.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z " + line)
        t += timedelta(milliseconds=250)
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- window


def test_window_runs_to_detection_when_the_advisory_has_no_end(kics):
    w = exposure_window(kics, detected_at=DETECTED)
    start, end, source = w
    assert (start, end) == (START, DETECTED)
    assert "detection time" in source and "kics-2026-04" in source


def test_window_open_without_end_or_detection_and_overrides_win(kics):
    assert exposure_window(kics).end is None
    s, e = datetime(2026, 4, 22, 14, 17, 59), datetime(2026, 4, 22, 15, 41, 31)  # naive = UTC
    w = exposure_window(kics, DETECTED, start_override=s, end_override=e)
    assert (w.start, w.end) == (s.replace(tzinfo=UTC), e.replace(tzinfo=UTC))
    assert w.source == "start: on-call override; end: on-call override"
    with pytest.raises(InputError, match="before start"):
        exposure_window(kics, end_override=datetime(2026, 4, 1, tzinfo=UTC))


def test_window_uses_the_advisorys_end_and_the_widest_per_image_window(kics):
    data = kics.model_dump(mode="json")
    data["window"]["end"] = "2026-04-22T16:00:00Z"
    data["images"][0]["windows"] = [{"start": "2026-04-22T11:00:00Z", "end": "2026-04-22T17:00:00Z", "source": "test"}]
    adv = parse_advisory(data, "test")
    w = exposure_window(adv, detected_at=DETECTED)
    assert (w.start, w.end) == (datetime(2026, 4, 22, 11, tzinfo=UTC), datetime(2026, 4, 22, 17, tzinfo=UTC))
    assert w.source.endswith("end: advisory kics-2026-04")


# --------------------------------------------------------------------------- verdicts


def test_verdicts_before_inside_and_after_the_window(kics):
    w = exposure_window(kics, detected_at=DETECTED)
    logs = {
        "before-tag": gh_log(START - timedelta(hours=2), "checkmarx/kics:latest", None),
        "inside-tag": gh_log(START + timedelta(hours=1), "checkmarx/kics:latest", None),
        "after-tag": gh_log(DETECTED + timedelta(hours=1), "checkmarx/kics:latest", None),
        "inside-clean-digest": gh_log(START + timedelta(hours=1), "checkmarx/kics:latest", CLEAN),
        "inside-malicious": gh_log(START + timedelta(minutes=30), "checkmarx/kics:latest", LATEST),
        "after-malicious": gh_log(DETECTED + timedelta(hours=2), "checkmarx/kics:latest", LATEST),
        "inside-untouched-tag": gh_log(START + timedelta(hours=1), "checkmarx/kics:v1.7.13", None),
        "other-image": gh_log(START + timedelta(hours=1), "library/alpine:3.20", None),
    }
    parsed = [parse_job_log(text, name, source="ci") for name, text in logs.items()]
    jobs = {j.job: j for j in classify_jobs(parsed, kics, w)}
    assert "other-image" not in jobs  # never used an affected repository
    verdicts = {name: j.verdict for name, j in jobs.items()}
    assert verdicts == {
        "before-tag": "clear",
        "inside-tag": "probable",
        "after-tag": "clear",
        "inside-clean-digest": "clear",
        "inside-malicious": "confirmed",
        "after-malicious": "confirmed",
        "inside-untouched-tag": "clear",
    }
    assert "outside the window" in jobs["before-tag"].reason
    assert "the window is too narrow" in jobs["after-malicious"].reason
    assert jobs["inside-malicious"].digest == LATEST
    assert any(e.endswith(f"Digest: {LATEST}") for e in jobs["inside-malicious"].evidence)
    assert all(e.split(":", 1)[0].isdigit() for e in jobs["inside-tag"].evidence)
    assert "non-malicious" in jobs["inside-clean-digest"].reason
    # confirmed first, then probable, then clear
    order = [j.verdict for j in classify_jobs(parsed, kics, w)]
    assert order == sorted(order, key=["confirmed", "probable", "clear"].index)


def test_a_plain_tuple_window_and_real_format_logs(kics):
    logs = [parse_job_log(p.read_bytes(), p.name, source="data") for p in sorted(DATA.rglob("*.log"))]
    jobs = {j.job: j for j in classify_jobs(logs, kics, (START, DETECTED))}
    assert jobs["kics-action.log"].verdict == "confirmed"
    assert jobs["kics-executor.log"].verdict == "confirmed"
    assert "linux/amd64" in jobs["kics-executor.log"].reason  # a per-platform child
    assert jobs["kics-podman-plain.log"].verdict == "probable"  # no digest, no time
    assert jobs["kics-run-clean.log"].verdict == "clear"
    assert jobs["corrupt.log"].verdict == "confirmed"


def test_malicious_digest_outside_a_pull_line_still_confirms(kics):
    text = "2026-04-22T13:00:00.0000000Z RepoDigests: [checkmarx/kics@" + LATEST + "]\n"
    (job,) = classify_jobs([parse_job_log(text, "inspect", source="s")], kics, (START, DETECTED))
    assert job.verdict == "confirmed" and "not in a recognised pull line" in job.reason


# --------------------------------------------------------------------------- secrets

WORKFLOW = """\
name: scan
on: push
env:
  NODE_ENV: production
jobs:
  kics:
    runs-on: ubuntu-latest
    env:
      AWS_ACCESS_KEY_ID: ${{ secrets.AWS_KEY_ID }}
    steps:
      - uses: actions/checkout@v4
      - uses: docker/login-action@v3
        with:
          username: acme
          password: ${{ secrets.DOCKERHUB_TOKEN }}
      - run: curl -H "Authorization: ${{ secrets['SONAR_TOKEN'] }}" https://sonar.example
      - uses: docker://checkmarx/kics:latest
"""

GITLAB_CI = """\
variables:
  FF_TIMESTAMPS: "true"
  KICS_IMAGE: checkmarx/kics:alpine
kics:
  image: $KICS_IMAGE
  secrets:
    DATABASE_PASSWORD:
      vault: production/db/password@ops
  script:
    - echo "$REGISTRY_TOKEN" | docker login -u ci --password-stdin registry.example
    - kics scan -p . --report-formats json -o $CI_PROJECT_DIR/out
    - echo $HOME ${BUILD_DIR}
  after_script: !reference [.cleanup, script]
"""

JENKINSFILE = """\
pipeline {
  agent any
  environment {
    NEXUS = credentials('nexus-deploy')
  }
  stages {
    stage('scan') {
      steps {
        withCredentials([usernamePassword(credentialsId: 'dockerhub-ci', usernameVariable: 'DH_USER', passwordVariable: 'DH_PASS')]) {
          sh 'docker run checkmarx/kics:latest scan -p .'
        }
      }
    }
  }
}
"""


def _fake_aws_key() -> str:
    return "AKIA" + "Q3VZ7XK2MN4PL8RT"  # shape of an AWS access key id; not a real key


@pytest.fixture
def estate(tmp_path: Path):
    """An inventory folder: three repositories (GitHub, GitLab, Jenkins) and a folder of job logs by repository."""
    api = tmp_path / "checkouts" / "api"
    (api / ".github" / "workflows").mkdir(parents=True)
    (api / ".github" / "workflows" / "scan.yml").write_text(WORKFLOW)
    (api / ".github" / "workflows" / "release.yml").write_text(
        "jobs:\n  r:\n    steps:\n      - run: echo ${{ secrets.RELEASE_ONLY }}\n")
    (api / "config").mkdir()
    (api / "config" / "settings.env").write_text(f"REGION=eu-west-1\nAWS_ACCESS_KEY_ID={_fake_aws_key()}\n")
    infra = tmp_path / "checkouts" / "infra"
    infra.mkdir(parents=True)
    (infra / ".gitlab-ci.yml").write_text(GITLAB_CI)
    legacy = tmp_path / "checkouts" / "legacy"
    legacy.mkdir(parents=True)
    (legacy / "Jenkinsfile").write_text(JENKINSFILE)

    logs = tmp_path / "ci-logs"
    for repo in ("api", "infra", "legacy", "unknown"):
        (logs / repo).mkdir(parents=True)
    inside = START + timedelta(hours=1)
    (logs / "api" / "scan-101.log").write_text(gh_log(inside, "checkmarx/kics:latest", LATEST))
    (logs / "api" / "scan-101.log.meta.json").write_text('{"workflow": ".github/workflows/scan.yml", "url": "https://ci.example/101"}')
    shutil.copy(DATA / "gitlab" / "kics-podman-plain.log", logs / "infra" / "kics-7.log")
    (logs / "legacy" / "build-3.log").write_text(gh_log(inside, "checkmarx/kics:latest", None))
    (logs / "unknown" / "x.log").write_text(gh_log(inside, "checkmarx/kics:latest", None))
    (logs / "api" / "old.log").write_text(gh_log(START - timedelta(days=1), "checkmarx/kics:latest", None))

    inv = {
        "ci_logs": [{"name": "exported", "kind": "folder", "path": "./ci-logs"}],
        "repositories": [
            {"name": "api", "kind": "github", "path": "./checkouts/api"},
            {"name": "infra", "kind": "gitlab", "path": "./checkouts/infra"},
            {"name": "legacy", "kind": "local", "path": "./checkouts/legacy"},
        ],
        "secrets": [
            {"name": "dockerhub-token", "backend": "manual", "aliases": ["DOCKERHUB_TOKEN", "dockerhub-ci"]},
            {"name": "aws-deploy", "backend": "aws-iam-access-key", "ref": {"user": "ci"}, "aliases": ["AWS_ACCESS_KEY_ID"]},
            {"name": "nexus-deploy", "backend": "manual"},
            {"name": "registry-token", "backend": "vault-kv", "ref": {"path": "ci/registry"}, "aliases": ["REGISTRY_TOKEN"]},
        ],
    }
    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump(inv))
    return load_inventory(tmp_path / "inventory.yaml")


def test_folder_source_maps_jobs_to_repositories(estate, kics):
    w = exposure_window(kics, detected_at=DETECTED)
    read = read_ci_sources(estate, kics, w)
    assert sorted(j.job for j in read.jobs) == ["api/old.log", "api/scan-101.log", "infra/kics-7.log", "legacy/build-3.log",
                                                "unknown/x.log"]
    assert read.origins[job_key("exported", "api/scan-101.log")] == JobOrigin(repository="api",
                                                                              workflow=".github/workflows/scan.yml")
    assert read.origins[job_key("exported", "infra/kics-7.log")].repository == "infra"
    assert read.origins[job_key("exported", "unknown/x.log")].repository is None
    jobs = {j.job: j for j in classify_jobs(read.jobs, kics, w)}
    assert jobs["api/scan-101.log"].url == "https://ci.example/101"
    assert jobs["api/scan-101.log"].workflow == ".github/workflows/scan.yml"
    assert jobs["api/old.log"].verdict == "clear"


def test_secrets_from_workflow_gitlab_jenkins_and_repository_contents(estate, kics):
    w = exposure_window(kics, detected_at=DETECTED)
    read = read_ci_sources(estate, kics, w)
    jobs = classify_jobs(read.jobs, kics, w)
    secrets, errors = exposed_secrets(jobs, estate, read.origins)
    by = {s.name: s for s in secrets}

    # GitHub workflow: secrets.X mapped by alias (directly or via the env/with key that receives it)
    assert by["dockerhub-token"].mapped and by["dockerhub-token"].inventory_name == "dockerhub-token"
    assert by["aws-deploy"].mapped  # secrets.AWS_KEY_ID received as AWS_ACCESS_KEY_ID (an alias)
    assert by["aws-deploy"].exposure == "confirmed"
    assert not by["SONAR_TOKEN"].mapped and by["SONAR_TOKEN"].exposed_by == ["exported:api/scan-101.log"]
    assert "RELEASE_ONLY" not in by  # the job ran scan.yml, not release.yml
    assert "NODE_ENV" not in by  # a plain env entry is not a secret
    # a CI file line that only names where a secret comes from is not a literal secret
    assert not any(name.startswith("Secret Keyword at Jenkinsfile") for name in by)

    # repository contents via detect-secrets: file, line and type, never the value
    how_aws = " ".join(by["aws-deploy"].how)
    assert "config/settings.env:2" in how_aws and "AWS Access Key" in how_aws
    # GitLab CI: an external secret, a CI/CD variable by alias; no predefined or shell variables
    assert not by["DATABASE_PASSWORD"].mapped
    assert by["registry-token"].mapped and by["registry-token"].exposure == "probable"
    for noise in ("CI_PROJECT_DIR", "HOME", "BUILD_DIR", "KICS_IMAGE", "FF_TIMESTAMPS"):
        assert noise not in by
    # Jenkinsfile: credentials('id') and a withCredentials binding
    assert by["nexus-deploy"].mapped and "credentials('nexus-deploy') as NEXUS" in " ".join(by["nexus-deploy"].how)
    assert "exported:legacy/build-3.log" in by["dockerhub-token"].exposed_by
    # the old (clear) job exposed nothing; the job of no known repository is an error, not silence
    assert all("exported:api/old.log" not in s.exposed_by for s in secrets)
    assert any("unknown/x.log" in e and "no repository" in e for e in errors)
    # unmapped first, so nobody forgets them
    assert [s.mapped for s in secrets] == sorted(s.mapped for s in secrets)

    dumped = " ".join(s.model_dump_json() for s in secrets) + " ".join(errors)
    assert _fake_aws_key() not in dumped


def test_content_secret_without_a_key_name_is_reported_by_location(tmp_path, kics):
    repo = tmp_path / "r"
    repo.mkdir()
    key_body = "MIIEowIBAAKCAQEA" + "x" * 40
    (repo / "id_rsa").write_text(f"-----BEGIN RSA PRIVATE KEY-----\n{key_body}\n-----END RSA PRIVATE KEY-----\n")
    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump({"repositories": [{"name": "r", "kind": "local", "path": "./r"}]}))
    inv = load_inventory(tmp_path / "inventory.yaml")
    job = ExposedJob(source="s", job="j", verdict="probable", reason="test")
    secrets, errors = exposed_secrets([job], inv, {job_key("s", "j"): JobOrigin(repository="r")})
    (s,) = secrets
    assert s.name == "Private Key at id_rsa:1" and s.mapped is False
    assert key_body not in s.model_dump_json()


def test_fetched_definitions_are_used_without_a_checkout(kics, tmp_path):
    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump(
        {"secrets": [{"name": "dockerhub-token", "backend": "manual", "aliases": ["DOCKERHUB_TOKEN"]}]}))
    inv = load_inventory(tmp_path / "inventory.yaml")
    job = ExposedJob(source="gh", job="acme/api run 1 job 2", verdict="confirmed", reason="t",
                     workflow=".github/workflows/scan.yml")
    origin = JobOrigin(workflow=".github/workflows/scan.yml", definitions=((".github/workflows/scan.yml", WORKFLOW),))
    secrets, errors = exposed_secrets([job], inv, {job_key("gh", job.job): origin})
    assert {s.name for s in secrets} == {"dockerhub-token", "AWS_KEY_ID", "SONAR_TOKEN"}
    assert errors == []


# --------------------------------------------------------------------------- report


def test_assess_end_to_end_report_and_markdown(estate, kics):
    report = assess(kics, estate, detected_at=DETECTED)
    assert report.window_start == START and report.window_end == DETECTED
    assert [j.job for j in report.jobs_by("confirmed")] == ["api/scan-101.log"]
    assert {j.job for j in report.jobs_by("probable")} == {"infra/kics-7.log", "legacy/build-3.log", "unknown/x.log"}
    assert report.network_hits == []
    md = exposure_markdown(report)
    assert "**Jobs:** 1 confirmed, 3 probable, 1 clear" in md
    assert "**NO: add it or rotate by hand**" in md and "`SONAR_TOKEN`" in md
    assert "unknown/x.log" in md  # its missing origin is in the errors section
    assert _fake_aws_key() not in md and _fake_aws_key() not in report.model_dump_json()


def test_unreadable_sources_become_errors(kics, tmp_path):
    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump({
        "ci_logs": [
            {"name": "gone", "kind": "folder", "path": "./nope"},
            {"name": "gh", "kind": "github", "repo": "acme/api"},
        ],
        "network_logs": [{"path": "./dns.log"}],
    }))
    inv = load_inventory(tmp_path / "inventory.yaml")
    (tmp_path / "bad").mkdir()
    report = assess(kics, inv, detected_at=DETECTED)
    text = "\n".join(report.errors)
    assert "gone: CI log folder" in text
    assert "gh: cannot connect to github" in text and "token" in text
    assert "network" in text  # either swept or said why not


def test_build_report_with_given_hits_and_unparsable(kics):
    w = ExposureWindow(START, DETECTED, "test")
    report = build_exposure_report(kics, w, [], network_hits=[], unparsable={"ci": 3}, errors=["x"])
    assert report.unparsable == {"ci": 3} and report.errors == ["x"]
    md = exposure_markdown(report)
    assert "No CI job used an affected image." in md and "- ci: 3" in md


def test_network_sweep_hits_join_the_report(kics, tmp_path):
    """The real sweep (tasks.sweep.run) over a JSON-lines DNS log next to the inventory."""
    (tmp_path / "dns.jsonl").write_text(
        '{"ts": "2026-04-22T14:21:03Z", "query": "audit.checkmarx.cx", "client": "10.0.3.7"}\n'
        '{"ts": "2026-04-22T14:22:00Z", "query": "github.com", "client": "10.0.3.7"}\n'
    )
    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump({
        "network_logs": [{"name": "dns", "path": "./dns.jsonl"}, {"name": "gone", "path": "./missing.log"}],
    }))
    inv = load_inventory(tmp_path / "inventory.yaml")
    report = assess(kics, inv, detected_at=DETECTED)
    (hit,) = report.network_hits
    assert hit.indicator == "audit.checkmarx.cx" and hit.in_window is True and hit.line == 1
    assert any(e.startswith("network logs gone: not swept") for e in report.errors)
    assert "audit.checkmarx.cx" in exposure_markdown(report)


def test_definition_files_walk_skips_dependency_folders_in_top_down_order(tmp_path):
    for rel in ("Jenkinsfile", "z.gitlab-ci.yml", ".github/workflows/b.yml", ".github/workflows/a.yaml",
                "node_modules/pkg/.gitlab-ci.yml", ".venv/x/Jenkinsfile", ".git/hooks/Jenkinsfile", "src/app.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x\n")
    assert definition_files(tmp_path) == ["Jenkinsfile", "z.gitlab-ci.yml", ".github/workflows/a.yaml", ".github/workflows/b.yml"]


def test_ci_log_folder_leaves_out_dot_folders_dot_files_and_sidecars(tmp_path, kics):
    logs = tmp_path / "logs"
    for rel in ("api/b.log", "api/a.log", "api/a.log.meta.json", ".cache/x.log", "api/.hidden.log"):
        (logs / rel).parent.mkdir(parents=True, exist_ok=True)
        (logs / rel).write_text("{}" if rel.endswith(".json") else "hello\n")
    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump({"ci_logs": [{"name": "f", "kind": "folder", "path": "./logs"}]}))
    read = read_ci_sources(load_inventory(tmp_path / "inventory.yaml"), kics)
    assert read.errors == [] and [j.job for j in read.jobs] == ["api/a.log", "api/b.log"]
