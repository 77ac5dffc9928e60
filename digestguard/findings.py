"""What the stages find and do, as data that flows down the playbook.

detect -> ``Finding``; assess -> ``ExposureReport`` (``ExposedJob``,
``ExposedSecret``, ``NetworkHit``); rotate -> ``RotationResult``; purge ->
``PurgeResult``; pin -> ``PinResult``. All are plain pydantic models so they
render to JSON for the CLI, to tables for Prefect artifacts and to the report
without any stage knowing about the others. None of them holds a secret value.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Verdict = Literal["compromised", "suspect", "clean", "unknown"]
JobVerdict = Literal["confirmed", "probable", "clear"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Finding(_Model):
    """One place an affected image was seen, with a verdict.

    ``compromised``: the digest is malicious (index or child). ``suspect``: an affected
    tag whose digest could not be established. ``clean``: affected repository, digest
    known and not malicious. ``unknown``: the source itself failed (``error`` says how).
    """

    source: str = Field(description="the inventory entry's name")
    kind: Literal["registry", "ecr", "gar", "engine-image", "engine-container", "pod", "ci-log", "config"]
    location: str = Field(description="registry/repo:tag, host/image, file:line, namespace/pod")
    reference: str | None = Field(None, description="the reference as seen")
    digest: str | None = None
    matched: str | None = Field(None, description="the advisory digest it matched (the index for a child match)")
    match_kind: Literal["index", "manifest"] | None = None
    platform: str | None = None
    verdict: Verdict
    error: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)
    seen_at: datetime | None = None


class DetectResult(_Model):
    advisory: str
    findings: list[Finding] = Field(default_factory=list)

    def by_verdict(self, verdict: Verdict) -> list[Finding]:
        return [f for f in self.findings if f.verdict == verdict]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.findings:
            out[f.verdict] = out.get(f.verdict, 0) + 1
        return out


class ExposedJob(_Model):
    """A CI job that used an affected repository, with the verdict and the lines that prove it."""

    source: str
    job: str = Field(description="job identity: a log file path, or owner/repo run/job ids")
    started_at: datetime | None = None
    reference: str | None = None
    digest: str | None = None
    verdict: JobVerdict
    reason: str
    evidence: list[str] = Field(default_factory=list)
    workflow: str | None = Field(None, description="the workflow/pipeline definition file, when known")
    url: str | None = None


class ExposedSecret(_Model):
    """A credential an exposed job could see. ``mapped=False`` means it is not in the inventory: do not forget it."""

    name: str
    inventory_name: str | None = None
    mapped: bool
    exposed_by: list[str] = Field(default_factory=list, description="job identities")
    how: list[str] = Field(default_factory=list, description="'workflow secrets.X', 'gitlab variable', 'found in repository file F:L'")
    exposure: JobVerdict = "probable"


class NetworkHit(_Model):
    path: str
    line: int
    indicator: str
    kind: Literal["domain", "ip", "url", "user_agent"]
    timestamp: datetime | None = None
    in_window: bool | None = None
    text: str | None = Field(None, description="the matching line, trimmed")


class ExposureReport(_Model):
    advisory: str
    window_start: datetime
    window_end: datetime | None = None
    window_source: str = ""
    jobs: list[ExposedJob] = Field(default_factory=list)
    secrets: list[ExposedSecret] = Field(default_factory=list)
    network_hits: list[NetworkHit] = Field(default_factory=list)
    unparsable: dict[str, int] = Field(default_factory=dict, description="lines that could not be parsed, per source")
    errors: list[str] = Field(default_factory=list)

    def jobs_by(self, verdict: JobVerdict) -> list[ExposedJob]:
        return [j for j in self.jobs if j.verdict == verdict]


class ActionOutcome(_Model):
    """One side effect's outcome, as a stage reports it (mirrors the journal row)."""

    stage: str
    target: str
    action: str
    outcome: Literal["done", "already-done", "failed", "skipped", "planned", "needs-person"]
    detail: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


class StageResult(_Model):
    """What a destructive or writing stage did: every action, plus verification where it applies."""

    stage: str
    dry_run: bool = False
    plan_hash: str | None = None
    approved_by: list[str] = Field(default_factory=list)
    actions: list[ActionOutcome] = Field(default_factory=list)
    verification: list[ActionOutcome] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(a.outcome not in ("failed",) for a in self.actions + self.verification)

    def count(self, outcome: str) -> int:
        return sum(1 for a in self.actions if a.outcome == outcome)
