"""The incident report as Prefect artifacts: the Markdown report, one table per report table, links to pull requests,
and per-stage progress.

Keys are stable (``incident-<id>...``) so re-runs add versions to the same artifacts
instead of scattering new ones.

Artifacts are bounded whatever the estate's size: each becomes one event on the Prefect server, and servers
refuse events of a few megabytes. The Markdown report and each table hold at most ``ARTIFACT_ROWS`` rows and
cells of at most ``ARTIFACT_CELL`` characters, each artifact at most ``MAX_ARTIFACT_BYTES``; at most
``MAX_LINK_ARTIFACTS`` pull requests get a link artifact of their own. What is cut is counted and named in the
artifact ("… 212 more rows: the full table is in the report"), never silently dropped; the full report is the
HTML file (and the journal it is rebuilt from).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.context import FlowRunContext, TaskRunContext

from digestguard.markdown import link_allowed
from digestguard.redact import redact, redact_data
from tasks.report.html import write_report
from tasks.report.model import IncidentReport

__all__ = ["ARTIFACT_CELL", "ARTIFACT_ROWS", "MAX_ARTIFACT_BYTES", "MAX_LINK_ARTIFACTS", "Progress", "artifact_key",
           "bounded_rows", "publish_artifacts", "publish_report"]

_log = logging.getLogger("digestguard.report")
ARTIFACT_ROWS = 100
ARTIFACT_CELL = 300
MAX_ARTIFACT_BYTES = 200_000
MAX_LINK_ARTIFACTS = 20

_TABLE_ARTIFACTS = {
    "findings": "Where the advisory's images were seen, with verdicts",
    "exposed-jobs": "CI jobs that used an affected image, by verdict",
    "exposed-secrets": "Credentials exposed jobs could see",
    "network-hits": "Network indicator hits",
    "rotations": "Secret rotations (ids and versions only)",
    "purges": "Image purges and their verification",
    "pins": "Reference pins",
    "pull-requests": "Pin pull requests",
    "approvals": "Approval decisions",
}


def artifact_key(incident: str, *suffix: str) -> str:
    """``incident-<id>[-suffix...]`` lowercased, only ``[a-z0-9-]`` (what Prefect accepts as a key).

    >>> artifact_key("KICS_2026.04", "findings")
    'incident-kics-2026-04-findings'
    """
    raw = "-".join(["incident", incident, *suffix]).lower()
    key = re.sub(r"[^a-z0-9-]+", "-", raw)
    return re.sub(r"-{2,}", "-", key).strip("-")


def _cell(value: Any) -> Any:
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= ARTIFACT_CELL else text[: ARTIFACT_CELL - 30] + f"… (+{len(text) - ARTIFACT_CELL + 30} chars)"


def bounded_rows(rows: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """At most ``ARTIFACT_ROWS`` rows with cells cut to ``ARTIFACT_CELL`` characters; a last row counts what was left
    out and says where the full table is (``where``)."""
    out = [{k: _cell(v) for k, v in r.items()} for r in rows[:ARTIFACT_ROWS]]
    if len(rows) > ARTIFACT_ROWS and out:
        first = next(iter(out[0]))
        out.append({**{k: "" for k in out[0]}, first: f"… {len(rows) - ARTIFACT_ROWS} more row(s): {where}"})
    while out and len(json.dumps(out, default=str).encode()) > MAX_ARTIFACT_BYTES:  # wide rows: keep halving
        out = out[: max(1, len(out) // 2)] if len(out) > 1 else [{"note": f"rows too large for an artifact: {where}"}]
        if out[0].get("note"):
            break
    return out


def _bounded_text(text: str, where: str) -> str:
    data = text.encode()
    if len(data) <= MAX_ARTIFACT_BYTES:
        return text
    cut = data[: MAX_ARTIFACT_BYTES - 200].decode(errors="ignore")
    cut = cut[: cut.rfind("\n") + 1] or cut
    return cut + f"\n\n_… {len(data) - len(cut.encode())} more bytes: {where}._\n"


def publish_artifacts(report: IncidentReport, *, full_report: str | None = None) -> dict[str, str]:
    """Create the Markdown report, table and link artifacts; returns ``{key: artifact id}``.

    Every artifact is bounded (see the module's docstring); ``full_report`` names where the full report lives
    (the HTML file next to the journal) in what the artifacts leave out. Call from inside a flow or task run so
    the artifacts attach to it (outside one they are still created, unattached). Re-runs add versions to the same keys.
    """
    where = f"the full report is {full_report}" if full_report else "the full report is the HTML report"
    out: dict[str, str] = {}
    key = artifact_key(report.incident)
    out[key] = str(create_markdown_artifact(markdown=_bounded_text(redact(report.markdown(limit=ARTIFACT_ROWS)), where),
                                            key=key,
                                            description=f"Incident report for {report.incident} ({report.advisory_id})"))
    tables = report.tables()
    for name, description in _TABLE_ARTIFACTS.items():
        k = artifact_key(report.incident, name)
        rows = redact_data(bounded_rows(tables[name], where) or [{"note": "none"}])
        out[k] = str(create_table_artifact(table=rows, key=k, description=f"{description}: {len(tables[name])} row(s)"))
    allowed = [p for p in report.pull_requests if link_allowed(p.url, report.link_origins)]
    for p in allowed[:MAX_LINK_ARTIFACTS]:  # a URL the inventory does not name is no link: the report lists it as text
        k = artifact_key(report.incident, "pr", p.repository, str(p.number or ""))
        out[k] = str(create_link_artifact(link=p.url, link_text=redact(p.label()), key=k,
                                          description=redact(p.title or f"Pin pull request in {p.repository}")))
    return out


def publish_report(report: IncidentReport, html_path: str | Path | None = None, *, html: str | None = None) -> dict[str, Any]:
    """The HTML file (optionally) and the bounded artifacts pointing at it: what the flow's report step does."""
    result: dict[str, Any] = {}
    if html_path is not None:
        result["html"] = str(write_report(report, html_path, html=html))
    result["artifacts"] = publish_artifacts(report, full_report=result.get("html"))
    return result


class Progress:
    """Per-target progress of one stage as a Prefect progress artifact (``incident-<id>-<stage>-progress``).

    ``advance()`` after each target (thread-safe); the artifact is updated at most every ``every`` seconds and
    once at ``finish()``, so a stage over thousands of targets costs a handful of API calls. Progress is
    best-effort: an unreachable API is logged once and never fails the stage; outside a flow or task run there is
    no UI to show it in, and nothing is sent.
    """

    def __init__(self, incident: str, stage: str, total: int, *, what: str = "target(s)", every: float = 1.0) -> None:
        self.stage, self.total, self.what, self.every = stage, total, what, every
        self.done = self.failed = 0
        self._lock = threading.Lock()
        self._last = time.monotonic()
        self.artifact_id: Any = None
        self.updates = 0
        if FlowRunContext.get() is None and TaskRunContext.get() is None:
            return  # not in a run (the CLI's plan-only paths, tests): nothing to show, and no server to start
        try:
            self.artifact_id = create_progress_artifact(0.0, key=artifact_key(incident, stage, "progress"),
                                                        description=self._text())
        except Exception as e:  # noqa: BLE001 - progress is a view, never a reason to fail
            _log.warning("progress of %s not shown: %s", stage, redact(str(e))[:200])

    def _text(self) -> str:
        return f"{self.stage}: {self.done}/{self.total} {self.what}" + (f", {self.failed} failed" if self.failed else "")

    def _percent(self) -> float:
        return 100.0 if not self.total else round(100.0 * self.done / self.total, 1)

    def advance(self, *, failed: bool = False) -> None:
        with self._lock:
            self.done += 1
            self.failed += int(failed)
            due = time.monotonic() - self._last >= self.every
            if due:
                self._last = time.monotonic()
        if due:
            self._update()

    def finish(self) -> None:
        self._update()

    def _update(self) -> None:
        if self.artifact_id is None:
            return
        try:
            update_progress_artifact(self.artifact_id, self._percent(), description=self._text())
            self.updates += 1
        except Exception as e:  # noqa: BLE001
            _log.warning("progress of %s not updated: %s", self.stage, redact(str(e))[:200])
