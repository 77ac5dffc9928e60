"""A realistic incident report (kics-2026-04 shaped) shared by the report, notify and browser tests.

Built from the real domain models, with hostile text in places (``<script>``,
quotes, pipes) so every renderer's escaping is exercised.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from digestguard.advisory import Window
from digestguard.findings import (
    ActionOutcome,
    DetectResult,
    ExposedJob,
    ExposedSecret,
    ExposureReport,
    Finding,
    NetworkHit,
    StageResult,
)
from tasks.report.model import ApprovalRecord, IncidentReport, PullRequestLink

START = datetime(2026, 4, 22, 12, 35, tzinfo=timezone.utc)
END = datetime(2026, 4, 22, 15, 41, 31, tzinfo=timezone.utc)
MAL = "sha256:2588a44890263a8185bd5d9fadb6bc9220b60245dbcbc4da35e1b62a6f8c230d"
MAL2 = "sha256:a0d9366f6f0166dcbf92fcdc98e1a03d2e6210e8d7e8573f74d50849130651a0"
CLEAN = "sha256:" + "1" * 64


def sample_report(*, incident: str = "INC-2026-0422 kics", open_window: bool = False) -> IncidentReport:
    """The kics-2026-04 incident as one report literal (over 60 lines because it is data: kept whole so a
    reader sees every finding, job, hit, action and approval the renderer tests count)."""
    t = START
    detect = DetectResult(advisory="kics-2026-04", findings=[
        Finding(source="mirror", kind="registry", location="registry.local/checkmarx/kics:v2.1.20",
                reference="checkmarx/kics:v2.1.20", digest=MAL, matched=MAL, match_kind="index", verdict="compromised"),
        Finding(source="build-host", kind="engine-image", location="build-host/checkmarx/kics:latest", digest=MAL2, matched=MAL2,
                verdict="compromised"),
        Finding(source="mirror", kind="registry", location="registry.local/checkmarx/kics:v2.1.19", digest=CLEAN,
                verdict="clean"),
        Finding(source="gar-eu", kind="gar", location="europe-docker.pkg.dev/p/r/kics:latest", verdict="unknown",
                error="Unavailable: 503 from artifactregistry"),
        Finding(source="repo-api", kind="config", location="ci/scan.yml:12", reference="checkmarx/kics:alpine",
                verdict="suspect"),
    ])
    jobs = [
        ExposedJob(source="gha", job="acme/api run 7 job 71", started_at=t + timedelta(minutes=40), digest=MAL,
                   verdict="confirmed", reason="pulled a malicious digest", evidence=["Digest: " + MAL],
                   url="https://github.example/acme/api/actions/runs/7"),
        ExposedJob(source="gha", job="acme/web run 9 job 90", started_at=t + timedelta(minutes=95), verdict="probable",
                   reason="used checkmarx/kics:latest inside the window, digest not logged"),
        ExposedJob(source="logs", job="ci/<script>alert(1)</script>.log", started_at=t - timedelta(hours=2), verdict="clear",
                   reason='ran before the window "quoted" | piped'),
        ExposedJob(source="logs", job="ci/undated.log", verdict="probable", reason="no timestamp in the log"),
    ]
    exposure = ExposureReport(
        advisory="kics-2026-04", window_start=START, window_end=None if open_window else END, window_source="seed",
        jobs=jobs,
        secrets=[ExposedSecret(name="DOCKERHUB_TOKEN", inventory_name="dockerhub-ci", mapped=True, exposed_by=[jobs[0].job],
                               how=["workflow secrets.DOCKERHUB_TOKEN"], exposure="confirmed"),
                 ExposedSecret(name="LEGACY_DEPLOY_KEY", mapped=False, exposed_by=[jobs[1].job], how=["gitlab variable"])],
        network_hits=[NetworkHit(path="/var/log/zeek/dns.log", line=42, indicator="audit.checkmarx.cx", kind="domain",
                                 timestamp=t + timedelta(minutes=41), in_window=True, text="query audit.checkmarx.cx"),
                      NetworkHit(path="/var/log/squid/access.log", line=7, indicator="94.154.172.43", kind="ip",
                                 timestamp=t + timedelta(hours=4), in_window=False)],
    )
    approved_at = t + timedelta(hours=5)
    rotate = StageResult(stage="rotate", plan_hash="sha256:" + "a" * 64, approved_by=["alice"], actions=[
        ActionOutcome(stage="rotate", target="vault:secret/ci/dockerhub", action="rotate-kv", outcome="done",
                      detail={"old_version": 3, "new_version": 4, "path": "ci/dockerhub"}),
        ActionOutcome(stage="rotate", target="aws-iam:ci-bot", action="rotate-access-key", outcome="failed",
                      detail={"access_key_id": "AKIAEXAMPLEOLD000001"}, error="Refused: LimitExceeded"),
    ])
    purge = StageResult(stage="purge", plan_hash="sha256:" + "b" * 64, approved_by=["alice", "bob"], actions=[
        ActionOutcome(stage="purge", target=f"registry.local/checkmarx/kics@{MAL}", action="delete-manifest", outcome="done",
                      detail={"digest": MAL}),
        ActionOutcome(stage="purge", target="build-host/checkmarx/kics:latest", action="remove-image", outcome="already-done"),
    ], verification=[ActionOutcome(stage="purge", target=f"registry.local/checkmarx/kics@{MAL}", action="verify-gone",
                                   outcome="done")])
    pin = StageResult(stage="pin", actions=[
        ActionOutcome(stage="pin", target="acme/api:ci/scan.yml:12", action="pin-reference", outcome="done",
                      detail={"digest": CLEAN, "branch": "digestguard/pin-kics"}),
    ])
    return IncidentReport(link_origins=["https://github.example"],
        incident=incident, advisory_id="kics-2026-04", advisory_title="Malicious checkmarx/kics images on Docker Hub",
        window=Window(start=START, end=None if open_window else END, source="seed"),
        detect=detect, exposure=exposure, rotate=rotate, purge=purge, pin=pin,
        pull_requests=[PullRequestLink(repository="acme/api", url="https://github.example/acme/api/pull/12", number=12,
                                       title="Pin checkmarx/kics to digests", state="open", changes=1)],
        approvals=[ApprovalRecord(stage="rotate", decision="approve", approvers=["alice"], at=approved_at,
                                  plan_hash=rotate.plan_hash or ""),
                   ApprovalRecord(stage="purge", decision="approve", approvers=["alice", "bob"],
                                  at=approved_at + timedelta(minutes=20), plan_hash=purge.plan_hash or "")],
        started_at=t + timedelta(hours=4, minutes=30), finished_at=t + timedelta(hours=6),
        needs_person=["Tell the vendor's security contact"],
        flow_run_url="http://127.0.0.1:4200/runs/flow-run/00000000-0000-0000-0000-000000000001",
    )
