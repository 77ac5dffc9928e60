"""The incident report's model: one record of the whole response, and its Markdown rendering.

``IncidentReport`` gathers what every stage produced (findings, exposure, rotate /
purge / pin results, approvals, pull requests, what still needs a person). The
flow assembles it; :mod:`tasks.report.from_journal` rebuilds one from the journal;
:mod:`tasks.report.html` renders it as a self-contained page with an SVG timeline;
:mod:`tasks.report.artifacts` publishes it as Prefect artifacts.

This module holds the model, the facts derived from it (counts, what needs a person,
timed actions), its tables (shared by every rendering) and :meth:`IncidentReport.markdown`
(the Markdown report artifact, and the text people paste into tickets).

Nothing here holds or renders a secret value: rows carry ids, versions and
outcomes; action details pass through :func:`safe_detail`, which keeps only
id- and version-like keys.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from digestguard._model import Model
from digestguard.advisory import Advisory, Window
from digestguard.findings import ActionOutcome, DetectResult, ExposureReport, SourceCoverage, StageResult, coverage_summary
from digestguard.journal import Journal
from digestguard.markdown import md_cell, md_code, md_link, md_table
from digestguard.plan import Approval
from digestguard.timeline import TagTimeline
from digestguard.timeutil import fmt_utc, parse_time

__all__ = ["ROW_LIMIT", "TABLE_TITLES", "ActionMark", "ApprovalRecord", "IncidentReport", "PullRequestLink", "safe_detail"]

ROW_LIMIT = 500  # rows per table in Markdown/HTML; the rest are counted, never silently dropped
_MORE_ROWS = "more row(s): the Prefect table artifact has every row"
# The report's tables in the order every rendering shows them (the HTML page adds the pull request table).
TABLE_TITLES = {"approvals": "Approvals", "findings": "Findings", "exposed-jobs": "Exposed CI jobs",
                "exposed-secrets": "Exposed secrets", "network-hits": "Network hits", "rotations": "Rotations",
                "purges": "Purges", "pins": "Pins"}


class PullRequestLink(Model):
    """A pin pull (merge) request the pin stage opened or updated."""

    repository: str
    url: str
    number: int | None = None
    title: str = ""
    state: str | None = Field(None, description="open, merged, closed, updated")
    changes: int | None = Field(None, description="references pinned in it")

    def label(self) -> str:
        """``owner/repo#12``, or the repository alone when the number is not known."""
        return f"{self.repository}#{self.number}" if self.number is not None else self.repository


class ApprovalRecord(Model):
    """A decision on one stage's plan, flattened for tables and the timeline."""

    stage: str
    decision: Literal["approve", "reject", "timeout"]
    approvers: list[str] = Field(default_factory=list)
    at: datetime
    plan_hash: str = ""
    reason: str = ""
    identities: list[dict[str, str]] = Field(default_factory=list, description="name, via, verified per approver")

    @classmethod
    def from_approval(cls, stage: str, approval: Approval) -> "ApprovalRecord":
        return cls(stage=stage, decision="timeout" if approval.expired else approval.decision,
                   approvers=list(approval.approvers), at=approval.at, plan_hash=approval.plan_hash,
                   reason=approval.reason, identities=list(approval.identities))

    def who(self) -> str:
        """Each approver with how they were verified: ``bob (ssh, verified), carol (prefect-ui, asserted)``."""
        return approvers_text(self.approvers, self.identities)


def approvers_text(approvers: list[str], identities: list[dict[str, str]]) -> str:
    """Approver names with how each was verified (names alone where no identity was recorded)."""
    if not identities:
        return ", ".join(approvers)
    return ", ".join(f"{i.get('name')} ({i.get('via')}, {'verified' if i.get('verified') == 'yes' else 'asserted'})"
                     for i in identities)


class ActionMark(Model):
    """A response action placed in time (from the journal, which knows when it happened)."""

    stage: str
    target: str
    action: str
    outcome: str
    at: datetime | None = None
    approver: str | None = None
    error: str | None = None


_NOT_ACTIONS = {"notify", "approval", "flow"}  # journal stages that record the process, not response actions


class IncidentReport(Model):
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
    actions: list[ActionMark] = Field(default_factory=list,
                                      description="timed actions (journal); derived from stage results when empty")
    started_at: datetime
    finished_at: datetime | None = None
    needs_person: list[str] = Field(default_factory=list,
                                    description="explicit items; derived ones are added by all_needs_person()")
    flow_run_url: str | None = None
    tag_timelines: list[TagTimeline] = Field(default_factory=list,
                                             description="what each affected tag served around the window (assess)")
    malicious_digests: list[str] = Field(default_factory=list, description="the advisory's, to colour the timelines")
    link_origins: list[str] = Field(default_factory=list,
                                    description="origins links may point to (the inventory's); any other URL is inert text")

    # -- helpers for the flow -------------------------------------------------------------
    @classmethod
    def for_advisory(cls, incident: str, advisory: Advisory, *, started_at: datetime, **kw: Any) -> "IncidentReport":
        """A report for ``advisory`` with its id, title and window filled in."""
        return cls(incident=incident, advisory_id=advisory.id, advisory_title=advisory.title, window=advisory.window,
                   started_at=started_at, **kw)

    def with_timelines(self, timelines: list[TagTimeline], advisory: Advisory | None) -> "IncidentReport":
        """A copy carrying the tag timelines assess used, and the advisory's malicious digests to colour them."""
        bad = sorted(advisory.malicious_index()) if advisory is not None and timelines else []
        return self.model_copy(update={"tag_timelines": list(timelines), "malicious_digests": bad})

    def timelines_journal_detail(self) -> dict[str, Any]:
        """What the journal keeps of the timelines, so a report rebuilt from it draws the same ones."""
        return {"timelines": [t.model_dump(mode="json") for t in self.tag_timelines], "malicious": self.malicious_digests}

    def with_journal(self, journal: Journal) -> "IncidentReport":
        """A copy whose timeline actions come from the journal (times and approvers as recorded)."""
        marks = []
        for e in journal.entries(self.incident):
            if e.stage in _NOT_ACTIONS:
                continue
            at = parse_time(e.finished_at or e.started_at)
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
            "jobs_confirmed": jobs.get("confirmed", 0), "jobs_probable": jobs.get("probable", 0),
            "jobs_clear": jobs.get("clear", 0),
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
                    by = ", ".join(s.exposed_by) or "a CI job"
                    items.append(f"Rotate {s.name} by hand: exposed by {by} and not in the inventory")
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
                what = "rejected" if a.decision == "reject" else "not decided (timed out)"
                items.append(f"{a.stage}: plan {a.plan_hash[7:19]} was {what}"
                             + (f": {a.reason}" if a.reason else ""))
        # a credential used after its exposure is the most urgent thing a person must look at: first
        return sorted(dict.fromkeys(items), key=lambda x: 0 if "used-after-exposure" in x else 1)

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
             "digest": f.digest or "", "matched": f.matched or "", "platform": f.platform or "",
             "mirror": f.mirror or "", "error": f.error or ""}
            for f in (self.detect.findings if self.detect else [])
        ]
        exp = self.exposure
        t["exposed-jobs"] = [
            {"verdict": j.verdict, "job": j.job, "source": j.source, "started": fmt_utc(j.started_at),
             "reference": j.reference or "", "mirror": j.mirror or "",
             "digest": j.digest or "", "reason": j.reason, "url": j.url or ""}
            for j in (exp.jobs if exp else [])
        ]
        t["exposed-secrets"] = [
            {"name": s.name, "inventory": s.inventory_name or "", "mapped": "yes" if s.mapped else "NO", "exposure": s.exposure,
             "exposed_by": ", ".join(s.exposed_by), "how": "; ".join(s.how)}
            for s in (exp.secrets if exp else [])
        ]
        t["network-hits"] = [
            {"indicator": h.indicator, "kind": h.kind, "at": fmt_utc(h.timestamp), "in_window": _yn(h.in_window),
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
            {"stage": a.stage, "decision": a.decision, "approvers": a.who(), "at": fmt_utc(a.at),
             "plan": a.plan_hash[7:19] if a.plan_hash.startswith("sha256:") else a.plan_hash, "reason": a.reason}
            for a in self.approvals
        ]
        return t

    # -- Markdown -----------------------------------------------------------------------------
    def coverage(self) -> list[SourceCoverage]:
        """Every source detect and assess looked at, once each (a CI source read by both keeps its worse state)."""
        rank = {"checked": 0, "partial": 1, "unchecked": 2}
        out: dict[tuple[str, str], SourceCoverage] = {}
        for c in [*(self.detect.coverage if self.detect else []), *(self.exposure.coverage if self.exposure else [])]:
            seen = out.get((c.source, c.kind))
            if seen is None or rank[c.state] > rank[seen.state]:
                out[(c.source, c.kind)] = c
        return list(out.values())

    def coverage_note(self) -> str | None:
        """``"N of M sources not checked: ..."`` when any source was not fully checked, else None."""
        return coverage_summary(self.coverage())

    def summary_lines(self) -> list[str]:
        """One line per stage: detected, exposed, rotated, purged, pinned (plain text, no markup).

        When a source was not fully checked, the first line says so ("N of M sources not checked").
        """
        c = self.counts()
        note = self.coverage_note()
        lines = [f"INCOMPLETE: {note}"] if note else []
        lines += [
            f"Detected: {c['compromised']} compromised, {c['suspect']} suspect, {c['clean']} clean"
            + (f", {c['unknown']} source(s) failed" if c["unknown"] else ""),
            f"Exposed: {c['jobs_confirmed']} confirmed / {c['jobs_probable']} probable CI job(s), "
            f"{c['secrets_exposed']} secret(s) ({c['secrets_unmapped']} not in the inventory), "
            f"{c['network_hits']} network hit(s)",
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
        contained = self.containment_line()
        if contained:
            lines.append(contained)
        return lines

    def containment(self) -> list[ActionOutcome]:
        """The rotate stage's proof per credential (``contain`` verifications)."""
        return [v for v in (self.rotate.verification if self.rotate else []) if v.action == "contain"]

    def containment_line(self) -> str | None:
        """One summary line: how many old credentials their issuers refuse, how fast, and how many were used."""
        rows = self.containment()
        if not rows:
            return None
        dead = [r for r in rows if r.detail.get("old_refused") and r.detail.get("new_works")]
        secs = [float(r.detail["seconds_to_old_refused"]) for r in dead if r.detail.get("seconds_to_old_refused") is not None]
        used = sum(1 for r in rows if r.detail.get("used_after_exposure") == "yes")
        line = f"Contained: {len(dead)} of {len(rows)} old credential(s) refused by their issuer"
        if secs:
            line += f" (slowest {max(secs):.1f} s after approval)"
        if used:
            line += f"; {used} used after exposure"
        return line

    def containment_rows(self) -> list[str]:
        """Per credential: the three answers (old dead? new works, copies in step? used after exposure?) and the evidence."""
        out = []
        for r in self.containment():
            d = r.detail
            secs = d.get("seconds_to_old_refused")
            out.append(f"{r.target}: {d.get('containment')}; old refused: {'yes' if d.get('old_refused') else 'no'}"
                       + (f" ({float(secs):.1f} s after approval)" if secs is not None else "")
                       + f"; new works: {'yes' if d.get('new_works') else 'no'}"
                       + (f"; copies in step: {'yes' if d['copies_in_step'] else 'no'}" if "copies_in_step" in d else "")
                       + f"; used after exposure: {d.get('used_after_exposure', 'not-yet-known')}")
            out += [f"  {line}" for line in (d.get("used_evidence") or [])[:5]]
        return out

    def markdown(self, limit: int = ROW_LIMIT) -> str:
        """The incident report as Markdown (Prefect artifact, tickets)."""
        w = self.effective_window()
        md = [f"# Incident `{md_code(self.incident)}`: {md_cell(self.advisory_title or self.advisory_id)}", "",
              f"Advisory `{md_code(self.advisory_id)}`. Attack window {fmt_utc(w.start)} to {fmt_utc(w.end, 'no known end')}"
              + (f" ({md_cell(w.source)})" if w.source else "") + ".",
              f"Response started {fmt_utc(self.started_at)}"
              + (f", finished {fmt_utc(self.finished_at)}" if self.finished_at else ", still running") + ".",
              ""]
        if self.flow_run_url:
            md += [f"[Prefect flow run]({self.flow_run_url})", ""]
        md += ["## Summary", "", *[f"- {md_cell(x)}" for x in self.summary_lines()], ""]
        people = self.all_needs_person()
        md += ["## Still needs a person", ""]
        md += [f"- [ ] {md_cell(x)}" for x in people] if people else ["_Nothing: every item was handled._"]
        md.append("")
        contained = self.containment_rows()
        if contained:
            md += ["## Containment", ""]
            md += [(f"  - {md_cell(x.strip())}" if x.startswith("  ") else f"- {md_cell(x)}") for x in contained]
            md.append("")
        if self.pull_requests:
            md += ["## Pull requests", ""]
            for p in self.pull_requests:
                md.append(f"- {md_link(p.url, p.label(), self.link_origins)}" + (f" {md_cell(p.title)}" if p.title else "")
                          + (f" ({md_cell(p.state)})" if p.state else ""))
            md.append("")
        tables = self.tables()
        for key, title in TABLE_TITLES.items():
            rows = tables[key]
            md += [f"## {title} ({len(rows)})", ""]
            md += md_table(rows, limit, more=_MORE_ROWS) if rows else ["_None._"]
            md.append("")
        return "\n".join(md).rstrip() + "\n"



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


def _yn(v: bool | None) -> str:
    return "" if v is None else ("yes" if v else "no")
