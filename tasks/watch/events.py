"""The watch's typed events and cycle report (see ``tasks/watch/cycle.py``).

Plain pydantic models so a cycle's findings can be printed, returned from the
flow as JSON, and queued in the state file when Slack cannot take them, then
read back exactly (``WATCH_EVENT.validate_json``).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal, Union

from pydantic import Field, TypeAdapter

from digestguard._model import Model
from digestguard.timeutil import now

Severity = Literal["info", "warning", "high", "critical"]


_QUERY_VALUE = re.compile(r"([?&][^=&\s\"']+=)[^&\s\"']+")


def redact_line(text: str | None, limit: int = 240) -> str | None:
    """A log line fit for a report or a channel: query-string values blanked (tokens ride in URLs), length bounded."""
    if text is None:
        return None
    return _QUERY_VALUE.sub(r"\1…", text)[:limit]


# ================================================================= events


class _Event(Model):
    at: datetime = Field(default_factory=now)

    def summary(self) -> str:  # pragma: no cover - every event overrides it
        raise NotImplementedError


class DriftEvent(_Event):
    """A tag now names a digest that is neither the last one seen nor on the image's allow-list."""

    kind: Literal["drift"] = "drift"
    severity: Severity = "high"
    reference: str
    before: str
    after: str
    pushed_at: datetime | None = None
    pushed_by: str | None = None
    push_info_error: str | None = None

    def summary(self) -> str:
        who = f" by {self.pushed_by}" if self.pushed_by else ""
        when = f" at {self.pushed_at.isoformat()}" if self.pushed_at else ""
        return f"tag moved: {self.reference} {self.before} -> {self.after} (pushed{when}{who})" if (who or when) \
            else f"tag moved: {self.reference} {self.before} -> {self.after}"


class MaliciousEvent(_Event):
    """A tag names a digest an advisory lists as malicious (the index itself, or one of its children)."""

    kind: Literal["malicious"] = "malicious"
    severity: Severity = "critical"
    reference: str
    digest: str
    matched: str = Field(description="the advisory's digest that matched (the index or a platform child)")
    before: str | None = None
    advisory: str
    advisory_title: str = ""
    advisory_source: str = Field("", description="pack id or pack file path, as incident_response takes it")
    pushed_at: datetime | None = None
    pushed_by: str | None = None
    incident: str | None = None
    incident_error: str | None = None
    mirror: str | None = Field(None, description="the public Docker Hub mirror the tag was read through")

    def summary(self) -> str:
        via = "" if self.matched == self.digest else f" (platform child {self.matched})"
        via += f" through the public mirror {self.mirror}" if self.mirror else ""
        inc = f"; dry-run incident {self.incident} started" if self.incident else ""
        err = f"; incident NOT started: {self.incident_error}" if self.incident_error else ""
        return f"MALICIOUS digest: {self.reference} -> {self.digest}{via} matches advisory {self.advisory}{inc}{err}"


class SignatureEvent(_Event):
    """A new digest of an image with a pinned cosign key is unsigned or its signature does not verify."""

    kind: Literal["signature"] = "signature"
    severity: Severity = "high"
    reference: str
    digest: str
    status: Literal["unsigned", "invalid"]
    reason: str

    def summary(self) -> str:
        return f"signature {self.status}: {self.reference}@{self.digest}: {self.reason}"


class NetworkHitEvent(_Event):
    """A new line in a followed network log names an advisory indicator."""

    kind: Literal["network-hit"] = "network-hit"
    severity: Severity = "critical"
    source: str
    path: str
    line: int
    indicator: str
    indicator_kind: str
    advisories: list[str] = Field(default_factory=list)
    timestamp: datetime | None = None
    text: str | None = None

    def summary(self) -> str:
        return f"network indicator {self.indicator} ({', '.join(self.advisories)}) in {self.path}:{self.line}"


class ActionTagMovedEvent(_Event):
    """A tag of a GitHub Action the watched repositories use points at another commit than when first seen.

    A full version tag (``v1.2.3``) that moves is a force-push (the trivy-action attack moved 75 of
    them): critical. A floating tag (``v4``) moves with every release: a warning, so it is seen.
    """

    kind: Literal["action-tag-moved"] = "action-tag-moved"
    severity: Severity = "critical"
    repository: str
    tag: str
    before: str
    after: str
    used_in: list[str] = Field(default_factory=list, description="repository:path:line of the uses that name it")

    def summary(self) -> str:
        where = f" (used in {', '.join(self.used_in[:3])}{'…' if len(self.used_in) > 3 else ''})" if self.used_in else ""
        return f"action tag moved: {self.repository}@{self.tag} {self.before[:12]} -> {self.after[:12]}{where}"


class NewDestinationEvent(_Event):
    """A CI runner group reached a destination it never reached before (after its learning period; tasks/egress/)."""

    kind: Literal["new-destination"] = "new-destination"
    severity: Severity = "high"
    group: str = Field(description="the runner group")
    destination: str = Field(description="registrable domain (or address) never seen for this group")
    host: str = Field(description="the host name or address of the first connection, as logged")
    first_at: datetime
    source: str = Field(description="the log file (or log group) and line of the first connection")
    line: int = 0
    client: str = Field(description="the connection's source address or name")
    runner_host: str | None = None
    attributed_by: str = "host"
    job: str | None = None
    workflow: str | None = None
    repository: str | None = None
    job_url: str | None = None
    images: list[str] = Field(default_factory=list, description="images the job pulled before the connection")
    actions: list[str] = Field(default_factory=list, description="actions the job downloaded before the connection")
    candidate_jobs: int = Field(0, description="jobs of the group running at that moment (job named only when 1)")
    young: bool = Field(False, description="first seen anywhere in the estate's logs within egress.young_days")
    rare: bool = Field(False, description="reached by at most egress.rare_groups groups")
    estate_first_seen: datetime | None = None
    groups_seen: int = 1
    draft_advisory: str | None = Field(None, description="draft advisory file built from this alert")
    dry_run_command: str | None = Field(None, description="the one command that shows what would be purged and rotated")
    draft_error: str | None = None

    def summary(self) -> str:
        job = f" by job {self.job}" + (f" ({self.workflow})" if self.workflow else "") if self.job else ""
        tags = ", ".join(t for t, on in (("young", self.young), ("rare", self.rare)) if on)
        return (f"new egress destination for runner group {self.group}: {self.destination} ({self.host}) at "
                f"{self.first_at.isoformat()}{job}" + (f" [{tags}]" if tags else ""))


class SourceDownEvent(_Event):
    """A source (registry, image, log, API) failed; said once per outage."""

    kind: Literal["source-down"] = "source-down"
    severity: Severity = "warning"
    source: str
    error: str

    def summary(self) -> str:
        return f"source down: {self.source}: {self.error}"


class SourceRecoveredEvent(_Event):
    """A source that was down answers again; said once."""

    kind: Literal["source-recovered"] = "source-recovered"
    severity: Severity = "info"
    source: str
    down_since: datetime | None = None

    def summary(self) -> str:
        since = f" (down since {self.down_since.isoformat()})" if self.down_since else ""
        return f"source recovered: {self.source}{since}"


WatchEvent = Annotated[
    Union[DriftEvent, MaliciousEvent, SignatureEvent, NetworkHitEvent, ActionTagMovedEvent, NewDestinationEvent, SourceDownEvent,
          SourceRecoveredEvent],
    Field(discriminator="kind"),
]
WATCH_EVENT: TypeAdapter[Any] = TypeAdapter(WatchEvent)


class AllowedChange(Model):
    """A tag moved to a digest the inventory lists as expected: recorded, not alerted."""

    reference: str
    before: str
    after: str


class CycleReport(Model):
    """What one cycle saw and concluded. ``events`` are what deserve a person's attention."""

    started_at: datetime
    finished_at: datetime | None = None
    references: int = 0
    resolved: int = 0
    unchanged: int = 0
    first_seen: int = 0
    action_tags: int = 0
    allowed: list[AllowedChange] = Field(default_factory=list)
    signatures_checked: int = 0
    log_files: int = 0
    log_bytes: int = 0
    events: list[WatchEvent] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list, description="things worth knowing that are not alerts")
    incidents: list[str] = Field(default_factory=list)
    alerts_sent: int = 0
    alerts_pending: int = 0

    def by_kind(self, kind: str) -> list[Any]:
        return [e for e in self.events if e.kind == kind]

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
