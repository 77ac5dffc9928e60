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

from digestguard.timeline import TagTimeline

Verdict = Literal["compromised", "suspect", "clean", "unknown"]
JobVerdict = Literal["confirmed", "probable", "clear"]
CoverageState = Literal["checked", "partial", "unchecked"]
OverallVerdict = Literal["found", "incomplete", "clean"]

EXIT_CLEAN, EXIT_FOUND, EXIT_USAGE, EXIT_INCOMPLETE = 0, 1, 2, 3
"""The exit codes of ``detect``, ``assess``, ``sweep``, ``lint`` and ``respond``."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceCoverage(_Model):
    """How far one source was looked at: ``checked`` (all of it), ``partial`` (some items failed or a bound
    was hit; ``reason`` says which) or ``unchecked`` (nothing could be read; ``reason`` says why)."""

    source: str
    kind: str
    state: CoverageState
    reason: str | None = None


def coverage_summary(coverage: list[SourceCoverage]) -> str | None:
    """``"2 of 5 sources not checked: reg (Unavailable: ...); ci (partial: ...)"``, or None when all were checked.

    ``partial`` sources count as not checked: part of them was not looked at.
    """
    missing = [c for c in coverage if c.state != "checked"]
    if not missing:
        return None
    parts = [f"{c.source} ({c.state}: {(c.reason or 'no reason given')[:160]})" for c in missing]
    return f"{len(missing)} of {len(coverage)} sources not checked: " + "; ".join(parts)


def overall_verdict(found: bool, coverage: list[SourceCoverage]) -> OverallVerdict:
    """``found`` when anything was found; else ``clean`` only when every source was checked, else ``incomplete``."""
    if found:
        return "found"
    return "clean" if all(c.state == "checked" for c in coverage) else "incomplete"


def exit_code(verdict: OverallVerdict) -> int:
    """0 complete and clean, 1 found, 3 incomplete (2 is bad input, raised before any verdict)."""
    return {"clean": EXIT_CLEAN, "found": EXIT_FOUND, "incomplete": EXIT_INCOMPLETE}[verdict]


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
    mirror: str | None = Field(None, description="the public Docker Hub mirror the reference went through "
                                                 "(e.g. mirror.gcr.io): only its operator can purge it")


class DetectResult(_Model):
    advisory: str
    findings: list[Finding] = Field(default_factory=list)
    coverage: list[SourceCoverage] = Field(default_factory=list, description="per source: checked, partial, unchecked")

    @property
    def verdict(self) -> OverallVerdict:
        """``found`` (compromised or suspect), ``clean`` (every source checked) or ``incomplete``."""
        return overall_verdict(bool(self.by_verdict("compromised") or self.by_verdict("suspect")), self.coverage)

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
    mirror: str | None = Field(None, description="the public Docker Hub mirror the job pulled through")


class ExposedSecret(_Model):
    """A credential an exposed job could see. ``mapped=False`` means it is not in the inventory: do not forget it."""

    name: str
    inventory_name: str | None = None
    mapped: bool
    exposed_by: list[str] = Field(default_factory=list, description="job identities")
    how: list[str] = Field(default_factory=list,
                           description="'workflow secrets.X', 'gitlab variable', 'found in repository file F:L'")
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
    coverage: list[SourceCoverage] = Field(default_factory=list, description="per CI / network source")
    tag_timelines: list[TagTimeline] = Field(default_factory=list, description="what each affected tag served, around the window")
    link_origins: list[str] = Field(default_factory=list, description="origins a job URL may link to (the inventory's)")

    def jobs_by(self, verdict: JobVerdict) -> list[ExposedJob]:
        return [j for j in self.jobs if j.verdict == verdict]

    @property
    def verdict(self) -> OverallVerdict:
        """``found`` (a confirmed/probable job, an exposed secret or a hit in the window), else clean/incomplete."""
        found = bool(self.jobs_by("confirmed") or self.jobs_by("probable") or self.secrets
                     or any(h.in_window is not False for h in self.network_hits))
        return overall_verdict(found, self.coverage)


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
