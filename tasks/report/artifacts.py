"""The incident report as Prefect artifacts: the Markdown report, one table per report table, a link per pull request.

Keys are stable (``incident-<id>...``) so re-runs add versions to the same artifacts
instead of scattering new ones.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from digestguard.markdown import link_allowed
from digestguard.redact import redact, redact_data
from tasks.report.html import write_report
from tasks.report.model import IncidentReport

__all__ = ["artifact_key", "publish_artifacts", "publish_report"]

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


def publish_artifacts(report: IncidentReport) -> dict[str, str]:
    """Create the Markdown report, table and link artifacts; returns ``{key: artifact id}``.

    Call from inside a flow or task run so the artifacts attach to it (outside one they
    are still created, unattached). Re-runs add versions to the same keys.
    """
    out: dict[str, str] = {}
    key = artifact_key(report.incident)
    out[key] = str(create_markdown_artifact(markdown=redact(report.markdown()), key=key,
                                            description=f"Incident report for {report.incident} ({report.advisory_id})"))
    tables = report.tables()
    for name, description in _TABLE_ARTIFACTS.items():
        k = artifact_key(report.incident, name)
        rows = redact_data(tables[name] or [{"note": "none"}])
        out[k] = str(create_table_artifact(table=rows, key=k, description=f"{description}: {len(tables[name])} row(s)"))
    for p in report.pull_requests:
        if not link_allowed(p.url, report.link_origins):
            continue  # a URL the inventory does not name is no link: the report lists it as inert text
        k = artifact_key(report.incident, "pr", p.repository, str(p.number or ""))
        out[k] = str(create_link_artifact(link=p.url, link_text=redact(p.label()), key=k,
                                          description=redact(p.title or f"Pin pull request in {p.repository}")))
    return out


def publish_report(report: IncidentReport, html_path: str | Path | None = None) -> dict[str, Any]:
    """Artifacts plus (optionally) the HTML file: what the flow's report step does."""
    result: dict[str, Any] = {"artifacts": publish_artifacts(report)}
    if html_path is not None:
        result["html"] = str(write_report(report, html_path))
    return result
