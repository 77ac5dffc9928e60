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
    Union[DriftEvent, MaliciousEvent, SignatureEvent, NetworkHitEvent, ActionTagMovedEvent, SourceDownEvent,
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
