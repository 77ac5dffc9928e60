"""The incident report: one record of the whole response, rendered three ways.

``IncidentReport`` gathers what every stage produced (findings, exposure, rotate /
purge / pin results, approvals, pull requests, what still needs a person). The
flow assembles it; this module only renders it:

* :meth:`IncidentReport.markdown` - the Markdown incident report artifact (and
  the text people paste into tickets);
* :func:`render_report_html` - a self-contained HTML page with an SVG timeline
  (attack window, CI jobs by verdict, network hits, response actions with their
  approvers) followed by the tables. No external assets, no scripts: it opens
  from a mail attachment or a Slack upload on an air-gapped laptop and a
  Content-Security-Policy forbids it to load anything;
* :func:`publish_artifacts` - Prefect artifacts (Markdown report, tables, links)
  under stable keys ``incident-<id>...`` so re-runs add versions to the same
  artifacts instead of scattering new ones; :class:`StageProgress` for long stages.

Nothing here holds or renders a secret value: rows carry ids, versions and
outcomes; action details pass through :func:`safe_detail`, which keeps only
id- and version-like keys.
"""

from __future__ import annotations

import html
import logging
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from digestguard.advisory import Advisory, Window
from digestguard.findings import ActionOutcome, DetectResult, ExposureReport, StageResult
from digestguard.journal import Journal
from digestguard.plan import Approval

__all__ = [
    "ActionMark",
    "ApprovalRecord",
    "IncidentReport",
    "PullRequestLink",
    "StageProgress",
    "artifact_key",
    "publish_artifacts",
    "publish_report",
    "render_report_html",
    "report_from_journal",
    "safe_detail",
    "write_report",
]

log = logging.getLogger(__name__)

ROW_LIMIT = 500  # rows per table in Markdown/HTML; the rest are counted, never silently dropped


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- model


class PullRequestLink(_Model):
    """A pin pull (merge) request the pin stage opened or updated."""

    repository: str
    url: str
    number: int | None = None
    title: str = ""
    state: str | None = Field(None, description="open, merged, closed, updated")
    changes: int | None = Field(None, description="references pinned in it")


class ApprovalRecord(_Model):
    """A decision on one stage's plan, flattened for tables and the timeline."""

    stage: str
    decision: Literal["approve", "reject", "timeout"]
    approvers: list[str] = Field(default_factory=list)
    at: datetime
    plan_hash: str = ""
    reason: str = ""

    @classmethod
    def from_approval(cls, stage: str, approval: Approval) -> "ApprovalRecord":
        return cls(stage=stage, decision=approval.decision, approvers=list(approval.approvers), at=approval.at,
                   plan_hash=approval.plan_hash, reason=approval.reason)


class ActionMark(_Model):
    """A response action placed in time (from the journal, which knows when it happened)."""

    stage: str
    target: str
    action: str
    outcome: str
    at: datetime | None = None
    approver: str | None = None
    error: str | None = None


_NOT_ACTIONS = {"notify", "approval", "flow"}  # journal stages that record the process, not response actions


class IncidentReport(_Model):
    """Everything the response did for one incident. The flow builds it; renderers only read it."""

    incident: str
    advisory_id: str
    advisory_title: str = ""
    window: Window
    detect: DetectResult | None = None
    exposure: ExposureReport | None = None
    rotate: StageResult | None = None
    purge: StageResult | None = None
    pin: StageResult | None = None
    pull_requests: list[PullRequestLink] = Field(default_factory=list)
    approvals: list[ApprovalRecord] = Field(default_factory=list)
    actions: list[ActionMark] = Field(default_factory=list, description="timed actions (journal); derived from stage results when empty")
    started_at: datetime
    finished_at: datetime | None = None
    needs_person: list[str] = Field(default_factory=list, description="explicit items; derived ones are added by all_needs_person()")
    flow_run_url: str | None = None

    # -- helpers for the flow -------------------------------------------------------------
    @classmethod
    def for_advisory(cls, incident: str, advisory: Advisory, *, started_at: datetime, **kw: Any) -> "IncidentReport":
        """A report for ``advisory`` with its id, title and window filled in."""
        return cls(incident=incident, advisory_id=advisory.id, advisory_title=advisory.title, window=advisory.window,
                   started_at=started_at, **kw)

    def with_journal(self, journal: Journal) -> "IncidentReport":
        """A copy whose timeline actions come from the journal (times and approvers as recorded)."""
        marks = []
        for e in journal.entries(self.incident):
            if e.stage in _NOT_ACTIONS:
                continue
            at = _parse_time(e.finished_at or e.started_at)
            marks.append(ActionMark(stage=e.stage, target=e.target, action=e.action, outcome=e.status, at=at,
                                    approver=e.approver, error=e.error))
        return self.model_copy(update={"actions": marks})

    # -- derived facts ----------------------------------------------------------------------
    def effective_window(self) -> Window:
        """The window the jobs were judged against: assess's (it may carry an operator's override), else the advisory's."""
        exp = self.exposure
        if exp is None:
            return self.window
        return Window(start=exp.window_start, end=exp.window_end, scope=self.window.scope,
                      source=exp.window_source or self.window.source)

    def stage_results(self) -> list[StageResult]:
        return [r for r in (self.rotate, self.purge, self.pin) if r is not None]

    def counts(self) -> dict[str, Any]:
        """The headline numbers every rendering shows."""
        det = self.detect.counts() if self.detect else {}
        exp = self.exposure
        jobs = Counter(j.verdict for j in exp.jobs) if exp else Counter()
        out: dict[str, Any] = {
            "compromised": det.get("compromised", 0), "suspect": det.get("suspect", 0),
            "clean": det.get("clean", 0), "unknown": det.get("unknown", 0),
            "jobs_confirmed": jobs.get("confirmed", 0), "jobs_probable": jobs.get("probable", 0), "jobs_clear": jobs.get("clear", 0),
            "secrets_exposed": len(exp.secrets) if exp else 0,
            "secrets_unmapped": sum(1 for s in exp.secrets if not s.mapped) if exp else 0,
            "network_hits": len(exp.network_hits) if exp else 0,
            "pull_requests": len(self.pull_requests),
        }
        for name in ("rotate", "purge", "pin"):
            r: StageResult | None = getattr(self, name)
            c = Counter(a.outcome for a in r.actions) if r else Counter()
            out[name] = {"done": c.get("done", 0) + c.get("already-done", 0), "failed": c.get("failed", 0),
                         "planned": c.get("planned", 0), "skipped": c.get("skipped", 0),
                         "needs_person": c.get("needs-person", 0), "total": sum(c.values()),
                         "verified": sum(1 for v in r.verification if v.outcome in ("done", "already-done")) if r else 0,
                         "dry_run": bool(r and r.dry_run), "ran": r is not None}
        return out

    def all_needs_person(self) -> list[str]:
        """The explicit list plus what the results say a person must still do, without duplicates."""
        items = list(self.needs_person)
        if self.detect:
            for f in self.detect.findings:
                if f.verdict == "unknown":
                    items.append(f"Check {f.kind} source {f.source} by hand: {f.error or 'it could not be read'}")
                elif f.verdict == "suspect":
                    items.append(f"Establish the digest of {f.reference or f.location} at {f.source}")
        if self.exposure:
            for s in self.exposure.secrets:
                if not s.mapped:
                    items.append(f"Rotate {s.name} by hand: exposed by {', '.join(s.exposed_by) or 'a CI job'} and not in the inventory")
            for err in self.exposure.errors:
                items.append(f"Assess by hand: {err}")
        for r in self.stage_results():
            for a in r.actions + r.verification:
                if a.outcome == "failed":
                    items.append(f"{r.stage}: {a.action} {a.target} failed: {a.error or 'see journal'}")
                elif a.outcome == "needs-person":
                    items.append(f"{r.stage}: {a.action} {a.target} needs a person" + (f" ({a.error})" if a.error else ""))
            if r.dry_run and r.actions:
                items.append(f"{r.stage}: ran as a dry run; {len(r.actions)} action(s) not applied")
        for a in self.approvals:
            if a.decision != "approve":
                items.append(f"{a.stage}: plan {a.plan_hash[7:19]} was {'rejected' if a.decision == 'reject' else 'not decided (timed out)'}"
                             + (f": {a.reason}" if a.reason else ""))
        return list(dict.fromkeys(items))

    def timeline_actions(self) -> list[ActionMark]:
        """Timed actions: the journal's when given, else the stage results placed at their approval (or the end)."""
        if self.actions:
            return list(self.actions)
        marks = []
        approved_at = {a.stage: a.at for a in self.approvals if a.decision == "approve"}
        for r in self.stage_results():
            at = approved_at.get(r.stage) or self.finished_at or self.started_at
            approver = ", ".join(r.approved_by) or None
            for a in r.actions:
                marks.append(ActionMark(stage=r.stage, target=a.target, action=a.action, outcome=a.outcome, at=at,
                                        approver=approver, error=a.error))
        return marks

    # -- tables (shared by Markdown, HTML and Prefect table artifacts) ---------------------
    def tables(self) -> dict[str, list[dict[str, Any]]]:
        """Every table of the report, as rows of plain strings and numbers."""
        t: dict[str, list[dict[str, Any]]] = {}
        t["findings"] = [
            {"verdict": f.verdict, "kind": f.kind, "source": f.source, "location": f.location, "reference": f.reference or "",
             "digest": f.digest or "", "matched": f.matched or "", "platform": f.platform or "", "error": f.error or ""}
            for f in (self.detect.findings if self.detect else [])
        ]
        exp = self.exposure
        t["exposed-jobs"] = [
            {"verdict": j.verdict, "job": j.job, "source": j.source, "started": _fmt(j.started_at), "reference": j.reference or "",
             "digest": j.digest or "", "reason": j.reason, "url": j.url or ""}
            for j in (exp.jobs if exp else [])
        ]
        t["exposed-secrets"] = [
            {"name": s.name, "inventory": s.inventory_name or "", "mapped": "yes" if s.mapped else "NO", "exposure": s.exposure,
             "exposed_by": ", ".join(s.exposed_by), "how": "; ".join(s.how)}
            for s in (exp.secrets if exp else [])
        ]
        t["network-hits"] = [
            {"indicator": h.indicator, "kind": h.kind, "at": _fmt(h.timestamp), "in_window": _yn(h.in_window),
             "where": f"{h.path}:{h.line}"}
            for h in (exp.network_hits if exp else [])
        ]
        for name, result in (("rotations", self.rotate), ("purges", self.purge), ("pins", self.pin)):
            rows = []
            if result is not None:
                for kind, items in (("action", result.actions), ("verify", result.verification)):
                    for a in items:
                        rows.append({"step": kind, "action": a.action, "target": a.target, "outcome": a.outcome,
                                     "detail": safe_detail(a.detail), "error": a.error or ""})
            t[name] = rows
        t["pull-requests"] = [
            {"repository": p.repository, "number": p.number if p.number is not None else "", "title": p.title,
             "state": p.state or "", "changes": p.changes if p.changes is not None else "", "url": p.url}
            for p in self.pull_requests
        ]
        t["approvals"] = [
            {"stage": a.stage, "decision": a.decision, "approvers": ", ".join(a.approvers), "at": _fmt(a.at),
             "plan": a.plan_hash[7:19] if a.plan_hash.startswith("sha256:") else a.plan_hash, "reason": a.reason}
            for a in self.approvals
        ]
        return t

    # -- Markdown -----------------------------------------------------------------------------
    def summary_lines(self) -> list[str]:
        """One line per stage: detected, exposed, rotated, purged, pinned (plain text, no markup)."""
        c = self.counts()
        lines = [
            f"Detected: {c['compromised']} compromised, {c['suspect']} suspect, {c['clean']} clean"
            + (f", {c['unknown']} source(s) failed" if c["unknown"] else ""),
            f"Exposed: {c['jobs_confirmed']} confirmed / {c['jobs_probable']} probable CI job(s), "
            f"{c['secrets_exposed']} secret(s) ({c['secrets_unmapped']} not in the inventory), {c['network_hits']} network hit(s)",
        ]
        for name, verb in (("rotate", "Rotated"), ("purge", "Purged"), ("pin", "Pinned")):
            s = c[name]
            if not s["ran"]:
                lines.append(f"{verb}: not run")
                continue
            extra = [f"{s['failed']} failed"] if s["failed"] else []
            if s["needs_person"]:
                extra.append(f"{s['needs_person']} need a person")
            if s["verified"]:
                extra.append(f"{s['verified']} verified")
            if s["dry_run"]:
                extra.append("dry run")
            line = f"{verb}: {s['done']} of {s['total']}" + (f" ({', '.join(extra)})" if extra else "")
            if name == "pin" and self.pull_requests:
                line += f" in {len(self.pull_requests)} pull request(s)"
            lines.append(line)
        return lines

    def markdown(self, limit: int = ROW_LIMIT) -> str:
        """The incident report as Markdown (Prefect artifact, tickets)."""
        w = self.effective_window()
        md = [f"# Incident `{self.incident}`: {_md(self.advisory_title or self.advisory_id)}", "",
              f"Advisory `{self.advisory_id}`. Attack window {_fmt(w.start)} to {_fmt(w.end) if w.end else 'no known end'}"
              + (f" ({_md(w.source)})" if w.source else "") + ".",
              f"Response started {_fmt(self.started_at)}" + (f", finished {_fmt(self.finished_at)}" if self.finished_at else ", still running") + ".",
              ""]
        if self.flow_run_url:
            md += [f"[Prefect flow run]({self.flow_run_url})", ""]
        md += ["## Summary", "", *[f"- {_md(x)}" for x in self.summary_lines()], ""]
        people = self.all_needs_person()
        md += ["## Still needs a person", ""]
        md += [f"- [ ] {_md(x)}" for x in people] if people else ["_Nothing: every item was handled._"]
        md.append("")
        if self.pull_requests:
            md += ["## Pull requests", ""]
            for p in self.pull_requests:
                label = f"{p.repository}#{p.number}" if p.number is not None else p.repository
                md.append(f"- [{_md(label)}]({p.url})" + (f" {_md(p.title)}" if p.title else "") + (f" ({p.state})" if p.state else ""))
            md.append("")
        titles = {"approvals": "Approvals", "findings": "Findings", "exposed-jobs": "Exposed CI jobs",
                  "exposed-secrets": "Exposed secrets", "network-hits": "Network hits", "rotations": "Rotations",
                  "purges": "Purges", "pins": "Pins"}
        tables = self.tables()
        for key, title in titles.items():
            rows = tables[key]
            md += [f"## {title} ({len(rows)})", ""]
            md += _md_table(rows, limit) if rows else ["_None._"]
            md.append("")
        return "\n".join(md).rstrip() + "\n"


_STATUS_TO_OUTCOME = {"done": "done", "failed": "failed", "skipped": "skipped", "planned": "planned", "started": "needs-person"}


def report_from_journal(journal: Journal, incident: str, advisory: Advisory | None = None) -> IncidentReport:
    """Rebuild what the journal knows of an incident (the CLI's ``report`` when the run's own file is gone).

    The journal holds actions, approvals and pull requests, not findings or exposure, so those
    tables come out empty and the report says so. An action left ``started`` (an interrupted
    run) is reported as needing a person. ``advisory`` defaults to the shipped pack whose id
    prefixes the incident id.
    """
    from digestguard.advisory import load_advisory
    from digestguard.errors import InputError

    entries = journal.entries(incident)
    events = journal.events(incident)
    if not entries and not events:
        raise InputError(incident, "the journal has no record of this incident")
    if advisory is None:
        parts = incident.split("-")
        for n in range(len(parts) - 1, 0, -1):
            try:
                advisory = load_advisory("-".join(parts[:n]))
                break
            except InputError:
                continue
    started = [_parse_time(e["at"]) for e in events if e["stage"] == "flow" and e["kind"] == "started"]
    finished = [_parse_time(e["at"]) for e in events if e["stage"] == "flow" and e["kind"] in ("finished", "failed")]
    times = [t for t in (_parse_time(x.started_at or x.finished_at) for x in entries) if t] + \
        [t for t in (_parse_time(e["at"]) for e in events) if t]
    started_at = next((t for t in started if t), None) or min(times)
    finished_at = next((t for t in reversed(finished) if t), None)

    results: dict[str, StageResult] = {}
    approvals: list[ApprovalRecord] = []
    prs: list[PullRequestLink] = []
    for e in entries:
        if e.stage == "approval":
            decision = e.detail.get("decision") or ("approve" if e.status == "done" else "reject")
            approvals.append(ApprovalRecord(stage=e.target, decision=decision if decision in ("approve", "reject") else "reject",
                                            approvers=list(e.detail.get("approvers") or ([e.approver] if e.approver else [])),
                                            at=_parse_time(e.finished_at or e.started_at) or started_at, plan_hash=e.action,
                                            reason=str(e.detail.get("reason") or "")))
            continue
        if e.stage not in ("rotate", "purge", "pin"):
            continue
        r = results.setdefault(e.stage, StageResult(stage=e.stage))
        error = e.error or ("started but never finished (interrupted run?)" if e.status == "started" else None)
        r.actions.append(ActionOutcome(stage=e.stage, target=e.target, action=e.action, detail=e.detail, error=error,
                                       outcome=_STATUS_TO_OUTCOME.get(e.status, "needs-person")))  # type: ignore[arg-type]
        if e.approver and e.approver not in r.approved_by:
            r.approved_by.append(e.approver)
        if e.stage == "pin" and e.action == "pull-request" and e.status == "done" and (e.detail.get("url") or e.detail.get("branch")):
            number = e.detail.get("number")
            prs.append(PullRequestLink(repository=e.target, url=str(e.detail.get("url") or e.detail.get("branch")),
                                       number=int(number) if isinstance(number, int) else None, state="open"))
    window = advisory.window if advisory else Window(start=started_at, source="unknown: rebuilt from the journal without the advisory")
    report = IncidentReport(
        incident=incident, advisory_id=advisory.id if advisory else "unknown", advisory_title=advisory.title if advisory else "",
        window=window, rotate=results.get("rotate"), purge=results.get("purge"), pin=results.get("pin"),
        pull_requests=prs, approvals=approvals, started_at=started_at, finished_at=finished_at,
        needs_person=["This report was rebuilt from the journal: findings and exposure are not in it (see the run's report artifact)"],
    )
    return report.with_journal(journal)


# --------------------------------------------------------------------------- small helpers

_SAFE_KEY = re.compile(r"(^|_)(ids?|versions?|arn|path|name|mount|digests?|count|status|strategy|backend|kind|stage|consumers?|"
                       r"url|number|repo|repository|branch|key_id|ref|refs|tags?|target|at|created|deleted)$", re.IGNORECASE)
_UNSAFE_KEY = re.compile(r"secret_access|password|passwd|token|value|private|plaintext|credential", re.IGNORECASE)


def safe_detail(detail: Mapping[str, Any], max_len: int = 160) -> str:
    """``k=v; ...`` from an action's detail, keeping only id/version-like keys (never a value-like one)."""
    parts = []
    for k in sorted(detail):
        if _UNSAFE_KEY.search(k) or not _SAFE_KEY.search(k):
            continue
        v = detail[k]
        if isinstance(v, (list, tuple)):
            if not all(isinstance(x, (str, int, float, bool)) for x in v):
                continue
            v = ",".join(str(x) for x in v)
        elif not isinstance(v, (str, int, float, bool)) or v is None:
            continue
        parts.append(f"{k}={v}")
    text = "; ".join(parts)
    return text if len(text) <= max_len else text[: max_len - 1] + "…"


def _utc(d: datetime) -> datetime:
    return d.replace(tzinfo=timezone.utc) if d.tzinfo is None else d.astimezone(timezone.utc)


def _fmt(d: datetime | None) -> str:
    return _utc(d).strftime("%Y-%m-%d %H:%M:%S UTC") if d else ""


def _yn(v: bool | None) -> str:
    return "" if v is None else ("yes" if v else "no")


def _parse_time(s: str | None) -> datetime | None:
    if not s:
        return None
    try:
        return _utc(datetime.fromisoformat(s.replace("Z", "+00:00")))
    except ValueError:
        return None


def _md(text: Any) -> str:
    """Text safe inside a Markdown table cell or list item: no pipes, no newlines, no raw HTML."""
    s = str(text).replace("\r", " ").replace("\n", " ").replace("|", "\\|")
    return s.replace("<", "&lt;").replace(">", "&gt;")


def _md_table(rows: Sequence[Mapping[str, Any]], limit: int) -> list[str]:
    cols = list(rows[0].keys())
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows[:limit]:
        out.append("| " + " | ".join(_md(r.get(c, "")) for c in cols) + " |")
    if len(rows) > limit:
        out.append(f"| … {len(rows) - limit} more row(s): the Prefect table artifact has every row |" + " |" * (len(cols) - 1))
    return out


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


# --------------------------------------------------------------------------- HTML + SVG

VERDICT_COLOURS = {"confirmed": "#c62828", "probable": "#ef8f00", "clear": "#2e7d32"}
OUTCOME_COLOURS = {"done": "#1565c0", "already-done": "#1565c0", "skipped": "#78909c", "planned": "#9e9e9e",
                   "started": "#9e9e9e", "failed": "#b71c1c", "needs-person": "#6a1b9a"}

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:24px;color:#1f2328;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
.meta{color:#57606a;margin:0 0 12px}.cards{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.card{border:1px solid #d0d7de;border-radius:6px;padding:8px 12px;min-width:150px;background:#f6f8fa}
.card b{display:block;font-size:20px}.todo li{margin:2px 0}.todo{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:8px 8px 8px 28px}
table{border-collapse:collapse;width:100%;margin:6px 0 12px;font-size:12.5px}
th,td{border:1px solid #d0d7de;padding:3px 6px;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{background:#f6f8fa}tr.confirmed td:first-child,tr.compromised td:first-child,tr.failed td:first-child{color:#c62828;font-weight:600}
tr.probable td:first-child,tr.suspect td:first-child{color:#9a6700;font-weight:600}
.more{color:#57606a;font-style:italic}svg{max-width:100%;height:auto;border:1px solid #d0d7de;border-radius:6px;background:#fff}
svg text{font:11px system-ui,Helvetica,Arial,sans-serif;fill:#1f2328}svg .lane-label{font-weight:600}
svg .axis line{stroke:#d0d7de}svg .axis text{fill:#57606a}svg .note{fill:#57606a;font-style:italic}
"""

_NICE_STEPS = [60, 300, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800, 2592000]


def render_report_html(report: IncidentReport, *, limit: int = ROW_LIMIT) -> str:
    """A self-contained HTML page: header, summary, what needs a person, the SVG timeline, then the tables."""
    c = report.counts()
    w = report.effective_window()
    title = f"Incident {report.incident}: {report.advisory_title or report.advisory_id}"
    cards = [("Compromised", c["compromised"]), ("Suspect", c["suspect"]),
             ("Exposed jobs", f"{c['jobs_confirmed']} + {c['jobs_probable']}"), ("Secrets exposed", c["secrets_exposed"]),
             ("Rotated", f"{c['rotate']['done']}/{c['rotate']['total']}"), ("Purged", f"{c['purge']['done']}/{c['purge']['total']}"),
             ("Pinned", f"{c['pin']['done']}/{c['pin']['total']}"), ("Pull requests", c["pull_requests"])]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # Nothing may load from elsewhere: no scripts at all, styles only inline, images only data:.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f'<h1 id="title">{_e(title)}</h1>',
        f'<p class="meta">Advisory <code>{_e(report.advisory_id)}</code> · attack window {_e(_fmt(w.start))} to '
        f"{_e(_fmt(w.end)) if w.end else 'no known end'}{(' (' + _e(w.source) + ')') if w.source else ''} · "
        f"response started {_e(_fmt(report.started_at))}"
        + (f", finished {_e(_fmt(report.finished_at))}" if report.finished_at else ", still running")
        + (f' · <a href="{_e(report.flow_run_url)}">Prefect flow run</a>' if report.flow_run_url else "") + "</p>",
        '<div class="cards" id="counts">' + "".join(f'<div class="card"><b>{_e(v)}</b>{_e(k)}</div>' for k, v in cards) + "</div>",
        '<h2>Summary</h2><ul id="summary">' + "".join(f"<li>{_e(x)}</li>" for x in report.summary_lines()) + "</ul>",
    ]
    people = report.all_needs_person()
    parts.append('<h2>Still needs a person</h2>')
    parts.append('<ul class="todo" id="needs-person">' + "".join(f"<li>{_e(x)}</li>" for x in people) + "</ul>" if people
                 else '<p id="needs-person">Nothing: every item was handled.</p>')
    parts.append("<h2>Timeline</h2>")
    parts.append(render_timeline_svg(report))
    if report.pull_requests:
        parts.append('<h2>Pull requests</h2><ul id="pull-requests">')
        for p in report.pull_requests:
            label = f"{p.repository}#{p.number}" if p.number is not None else p.repository
            parts.append(f'<li><a href="{_e(_safe_href(p.url))}">{_e(label)}</a> {_e(p.title)}'
                         + (f" ({_e(p.state)})" if p.state else "") + "</li>")
        parts.append("</ul>")
    titles = {"approvals": "Approvals", "findings": "Findings", "exposed-jobs": "Exposed CI jobs",
              "exposed-secrets": "Exposed secrets", "network-hits": "Network hits", "rotations": "Rotations",
              "purges": "Purges", "pins": "Pins", "pull-requests": "Pull request table"}
    tables = report.tables()
    for key, heading in titles.items():
        rows = tables[key]
        parts.append(f"<h2>{_e(heading)} ({len(rows)})</h2>")
        parts.append(_html_table(key, rows, limit))
    parts.append(f'<p class="meta">Generated by digestguard at {_e(_fmt(datetime.now(timezone.utc)))}.</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _safe_href(url: str) -> str:
    """Only http(s) links are clickable; anything else (``javascript:``) becomes inert."""
    return url if re.match(r"^https?://", url or "", re.IGNORECASE) else "#"


def _html_table(key: str, rows: Sequence[Mapping[str, Any]], limit: int) -> str:
    if not rows:
        return f'<p class="none" id="table-{_e(key)}">None.</p>'
    cols = list(rows[0].keys())
    out = [f'<table class="{_e(key)}" id="table-{_e(key)}"><thead><tr>' + "".join(f"<th>{_e(c)}</th>" for c in cols) + "</tr></thead><tbody>"]
    for r in rows[:limit]:
        cls = str(r.get("verdict") or r.get("outcome") or "")
        cells = []
        for col in cols:
            v = r.get(col, "")
            if col == "url" and v:
                cells.append(f'<td><a href="{_e(_safe_href(str(v)))}">{_e(v)}</a></td>')
            else:
                cells.append(f"<td>{_e(v)}</td>")
        out.append(f'<tr class="{_e(cls)}">' + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    if len(rows) > limit:
        out.append(f'<p class="more">… and {len(rows) - limit} more row(s) not shown here: the Prefect table artifact '
                   f'<code>incident-…-{_e(key)}</code> has every row.</p>')
    return "".join(out)


def render_timeline_svg(report: IncidentReport) -> str:
    """The incident on one time axis: window band, CI jobs (by verdict), network hits, response actions.

    Stable hooks: ``svg#timeline``, ``rect.window``, ``.job.confirmed|probable|clear``, ``.hit``,
    ``.action`` (with the outcome as a second class), ``.approval``; every mark has a ``<title>``.
    Marks without a time are not drawn but counted in a note, so none disappears silently.
    """
    w = report.effective_window()
    jobs = report.exposure.jobs if report.exposure else []
    hits = report.exposure.network_hits if report.exposure else []
    actions = report.timeline_actions()
    approvals = report.approvals

    times = [_utc(w.start), _utc(report.started_at)]
    times += [_utc(t) for t in (w.end, report.finished_at) if t]
    times += [_utc(j.started_at) for j in jobs if j.started_at]
    times += [_utc(h.timestamp) for h in hits if h.timestamp]
    times += [_utc(a.at) for a in actions if a.at]
    times += [_utc(a.at) for a in approvals]
    t0, t1 = min(times), max(times)
    if (t1 - t0).total_seconds() < 600:
        t1 = t0 + timedelta(minutes=10)
    pad = (t1 - t0) * 0.04
    t0, t1 = t0 - pad, t1 + pad
    span = (t1 - t0).total_seconds()

    W, left, right, top = 1300, 150, 30, 46
    lanes = [("jobs", "CI jobs", 110), ("hits", "Network hits", 70), ("actions", "Response", 130)]
    y = top
    lane_y: dict[str, tuple[float, float]] = {}
    for key, _, h in lanes:
        lane_y[key] = (y, y + h)
        y += h
    axis_y = y
    H = axis_y + 70

    def x(t: datetime) -> float:
        return round(left + (W - left - right) * (_utc(t) - t0).total_seconds() / span, 2)

    out = [f'<svg id="timeline" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
           f'aria-labelledby="timeline-title"><title id="timeline-title">Timeline of incident {_e(report.incident)}</title>']
    # lanes
    for i, (key, label, _) in enumerate(lanes):
        y0, y1 = lane_y[key]
        out.append(f'<rect class="lane lane-{key}" x="{left}" y="{y0}" width="{W - left - right}" height="{y1 - y0}" '
                   f'fill="{"#f6f8fa" if i % 2 == 0 else "#ffffff"}"/>')
        out.append(f'<text class="lane-label" x="10" y="{(y0 + y1) / 2 + 4}">{_e(label)}</text>')
    # attack window
    wx0 = x(w.start)
    wx1 = x(w.end) if w.end else W - right
    cls = "window" + ("" if w.end else " open-ended")
    out.append(f'<rect id="attack-window" class="{cls}" x="{wx0}" y="{top}" width="{max(wx1 - wx0, 2)}" height="{axis_y - top}" '
               f'fill="#d1242f" fill-opacity="0.13" stroke="#d1242f" stroke-opacity="0.6"'
               + ('' if w.end else ' stroke-dasharray="6 4"') + f'><title>Attack window {_e(_fmt(w.start))} to '
               f'{_e(_fmt(w.end)) if w.end else "no known end"} ({_e(w.source)})</title></rect>')
    out.append(f'<text class="window-label" x="{wx0 + 4}" y="{top - 8}" fill="#d1242f">attack window'
               + ("" if w.end else " (no known end)") + "</text>")
    # run start / end
    for cls_, t, label in (("run-start", report.started_at, "response started"), ("run-end", report.finished_at, "response finished")):
        if t:
            out.append(f'<line class="{cls_}" x1="{x(t)}" x2="{x(t)}" y1="{top - 20}" y2="{axis_y}" stroke="#57606a" '
                       f'stroke-dasharray="2 3"><title>{_e(label)} {_e(_fmt(t))}</title></line>')
            out.append(_label(f"{cls_}-label", x(t), top - 24, label, W - right, fill="#57606a"))
    # CI jobs
    y0, y1 = lane_y["jobs"]
    rows = 5
    undated_jobs = 0
    for i, j in enumerate(jobs):
        if not j.started_at:
            undated_jobs += 1
            continue
        cy = y0 + 14 + (i % rows) * ((y1 - y0 - 28) / (rows - 1))
        out.append(f'<circle id="job-{i}" class="job {j.verdict}" cx="{x(j.started_at)}" cy="{round(cy, 2)}" r="6" '
                   f'fill="{VERDICT_COLOURS[j.verdict]}" stroke="#fff" data-job="{_e(j.job)}" data-verdict="{j.verdict}">'
                   f"<title>{_e(j.job)} ({_e(j.source)}) {j.verdict}: {_e(j.reason)} at {_e(_fmt(j.started_at))}</title></circle>")
    # network hits
    y0, y1 = lane_y["hits"]
    undated_hits = 0
    for i, h in enumerate(hits):
        if not h.timestamp:
            undated_hits += 1
            continue
        cx, cy = x(h.timestamp), y0 + 14 + (i % 3) * ((y1 - y0 - 28) / 2)
        cls = "hit " + ("in-window" if h.in_window else "out-of-window" if h.in_window is False else "window-unknown")
        pts = f"{cx},{cy - 7} {cx + 7},{cy} {cx},{cy + 7} {cx - 7},{cy}"
        out.append(f'<polygon id="hit-{i}" class="{cls}" points="{pts}" fill="#8250df" stroke="#fff">'
                   f"<title>{_e(h.kind)} {_e(h.indicator)} at {_e(_fmt(h.timestamp))} ({_e(h.path)}:{h.line})</title></polygon>")
    # approvals and actions
    y0, y1 = lane_y["actions"]
    for i, a in enumerate(approvals):
        ax = x(a.at)
        colour = "#1a7f37" if a.decision == "approve" else "#cf222e"
        who = ", ".join(a.approvers) or "nobody"
        out.append(f'<line id="approval-{i}" class="approval {a.decision}" x1="{ax}" x2="{ax}" y1="{y0}" y2="{y1}" stroke="{colour}" '
                   f'stroke-width="2"><title>{_e(a.stage)} plan {a.decision} by {_e(who)} at {_e(_fmt(a.at))}</title></line>')
        out.append(_label("approval-label", ax, y0 + 12 + (i % 3) * 12, f"{a.stage}: {a.decision} by {who}", W - right, fill=colour))
    stage_rows = {"rotate": 0, "purge": 1, "pin": 2}
    for name, row in stage_rows.items():
        out.append(f'<text class="row-label" x="{left - 8}" y="{y0 + 57 + row * 20}" text-anchor="end" fill="#57606a">{name}</text>')
    undated_actions = 0
    used: dict[tuple[int, float], int] = {}  # (row, x) -> marks already there, to set same-time actions side by side
    for i, a in enumerate(actions):
        if not a.at:
            undated_actions += 1
            continue
        row = stage_rows.get(a.stage, 3)
        ry = y0 + 48 + row * 20
        base = x(a.at)
        slot = used.get((row, base), 0)
        used[(row, base)] = slot + 1
        ax = min(base + slot * 12, W - right - 5)
        colour = OUTCOME_COLOURS.get(a.outcome, "#57606a")
        approver = f", approved by {a.approver}" if a.approver else ""
        out.append(f'<rect id="action-{i}" class="action {_e(a.outcome)} stage-{_e(a.stage)}" x="{ax - 5}" y="{ry}" width="10" '
                   f'height="10" fill="{colour}" data-approver="{_e(a.approver or "")}"><title>{_e(a.stage)}: {_e(a.action)} '
                   f"{_e(a.target)} {_e(a.outcome)}{_e(approver)} at {_e(_fmt(a.at))}</title></rect>")
    # axis
    out.append(f'<g class="axis"><line x1="{left}" x2="{W - right}" y1="{axis_y}" y2="{axis_y}"/>')
    step = next((s for s in _NICE_STEPS if span / s <= 10), _NICE_STEPS[-1])
    first = datetime.fromtimestamp((int(t0.timestamp()) // step + 1) * step, timezone.utc)
    t = first
    while t <= t1:
        tx = x(t)
        fmt = "%H:%M" if step < 86400 else "%Y-%m-%d"
        label = t.strftime(fmt) if (step >= 86400 or t.hour or t.minute) else t.strftime("%m-%d %H:%M")
        out.append(f'<line x1="{tx}" x2="{tx}" y1="{top}" y2="{axis_y + 5}" stroke-dasharray="1 4"/>'
                   f'<text x="{tx}" y="{axis_y + 18}" text-anchor="middle">{_e(label)}</text>')
        t += timedelta(seconds=step)
    out.append(f'<text x="{left}" y="{axis_y + 34}">{_e(_fmt(t0))}</text>'
               f'<text x="{W - right}" y="{axis_y + 34}" text-anchor="end">{_e(_fmt(t1))}</text></g>')
    # legend and notes
    lx = left
    ly = H - 14
    legend = [("confirmed job", VERDICT_COLOURS["confirmed"]), ("probable job", VERDICT_COLOURS["probable"]),
              ("clear job", VERDICT_COLOURS["clear"]), ("network hit", "#8250df"), ("action done", OUTCOME_COLOURS["done"]),
              ("action failed", OUTCOME_COLOURS["failed"])]
    out.append('<g class="legend">')
    for label, colour in legend:
        out.append(f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="{colour}"/><text x="{lx + 14}" y="{ly}">{_e(label)}</text>')
        lx += 24 + 7 * len(label)
    out.append("</g>")
    notes = []
    if undated_jobs:
        notes.append(f"{undated_jobs} CI job(s) without a start time (see the table)")
    if undated_hits:
        notes.append(f"{undated_hits} network hit(s) without a timestamp")
    if undated_actions:
        notes.append(f"{undated_actions} action(s) without a time")
    if notes:
        out.append(f'<text class="note" x="{W - right}" y="{H - 14}" text-anchor="end">{_e("; ".join(notes))}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _label(cls: str, x: float, y: float, text: str, right_edge: float, *, fill: str) -> str:
    """A text label beside a vertical line, flipped to the line's left when it would run off the right edge."""
    if x + 7 * len(text) > right_edge:
        return f'<text class="{cls}" x="{x - 3}" y="{y}" text-anchor="end" fill="{fill}">{_e(text)}</text>'
    return f'<text class="{cls}" x="{x + 3}" y="{y}" fill="{fill}">{_e(text)}</text>'


def write_report(report: IncidentReport, path: str | Path) -> Path:
    """Write the HTML report (atomically: a reader never sees half a file)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(render_report_html(report), encoding="utf-8")
    tmp.replace(p)
    return p


# --------------------------------------------------------------------------- Prefect artifacts


def artifact_key(incident: str, *suffix: str) -> str:
    """``incident-<id>[-suffix...]`` lowercased, only ``[a-z0-9-]`` (what Prefect accepts as a key).

    >>> artifact_key("KICS_2026.04", "findings")
    'incident-kics-2026-04-findings'
    """
    raw = "-".join(["incident", incident, *suffix]).lower()
    key = re.sub(r"[^a-z0-9-]+", "-", raw)
    return re.sub(r"-{2,}", "-", key).strip("-")


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


def publish_artifacts(report: IncidentReport) -> dict[str, str]:
    """Create the Markdown report, table and link artifacts; returns ``{key: artifact id}``.

    Call from inside a flow or task run so the artifacts attach to it (outside one they
    are still created, unattached). Re-runs add versions to the same keys.
    """
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    out: dict[str, str] = {}
    key = artifact_key(report.incident)
    out[key] = str(create_markdown_artifact(markdown=report.markdown(), key=key,
                                            description=f"Incident report for {report.incident} ({report.advisory_id})"))
    tables = report.tables()
    for name, description in _TABLE_ARTIFACTS.items():
        k = artifact_key(report.incident, name)
        rows = tables[name] or [{"note": "none"}]
        out[k] = str(create_table_artifact(table=rows, key=k, description=f"{description}: {len(tables[name])} row(s)"))
    for p in report.pull_requests:
        label = f"{p.repository}#{p.number}" if p.number is not None else p.repository
        k = artifact_key(report.incident, "pr", p.repository, str(p.number or ""))
        out[k] = str(create_link_artifact(link=p.url, link_text=label, key=k,
                                          description=p.title or f"Pin pull request in {p.repository}"))
    return out


def publish_report(report: IncidentReport, html_path: str | Path | None = None) -> dict[str, Any]:
    """Artifacts plus (optionally) the HTML file: what the flow's report step does."""
    result: dict[str, Any] = {"artifacts": publish_artifacts(report)}
    if html_path is not None:
        result["html"] = str(write_report(report, html_path))
    return result


class StageProgress:
    """A progress artifact for a long stage, updated at most every ``min_interval`` seconds.

    Each update is an API call, so a stage with thousands of items does not pay one per item.
    Progress reporting is never allowed to break the stage: failures are logged and ignored.

    Example::

        progress = StageProgress("inc-1", "purge", total=len(plan.items))
        for item in plan.items:
            ...
            progress.advance()
        progress.finish()
    """

    def __init__(self, incident: str, stage: str, total: int, *, min_interval: float = 1.0) -> None:
        self.key = artifact_key(incident, stage, "progress")
        self.total = max(total, 0)
        self.done = 0
        self.min_interval = min_interval
        self._last = 0.0
        self._sent = -1.0
        self.artifact_id: Any = None
        try:
            from prefect.artifacts import create_progress_artifact

            self.artifact_id = create_progress_artifact(progress=0.0, key=self.key, description=f"{stage}: 0 of {self.total}")
            self._last = time.monotonic()
            self._sent = 0.0
        except Exception as e:  # noqa: BLE001 - progress must never stop a stage
            log.warning("progress artifact %s not created: %s", self.key, type(e).__name__)

    @property
    def percent(self) -> float:
        return 100.0 if self.total == 0 else round(100.0 * min(self.done, self.total) / self.total, 1)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if time.monotonic() - self._last >= self.min_interval:
            self._push()

    def finish(self) -> None:
        self.done = max(self.done, self.total)
        self._push(force=True)

    def _push(self, force: bool = False) -> None:
        if self.artifact_id is None or (not force and self.percent == self._sent):
            return
        try:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(artifact_id=self.artifact_id, progress=self.percent)
            self._sent = self.percent
            self._last = time.monotonic()
        except Exception as e:  # noqa: BLE001
            log.warning("progress artifact %s not updated: %s", self.key, type(e).__name__)


def _report_tasks() -> Any:
    """Prefect tasks wrapping the publishers (built lazily so importing this module stays cheap)."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    return task(name="publish-incident-report", cache_policy=NO_CACHE, persist_result=False)(publish_report)


def __getattr__(name: str) -> Any:
    if name == "publish_report_task":
        value = _report_tasks()
        globals()[name] = value
        return value
    raise AttributeError(name)
