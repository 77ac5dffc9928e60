"""Stage 2, assess the window: which CI jobs ran the attacker's image, and what they could see.

The data's way through::

    Advisory (+ detection time, on-call overrides) -> exposure_window
    Inventory.ci_logs -> tasks.ci_logs.read_ci_sources -> JobLog per job (digestguard.cilog)
    JobLogs + window -> classify_jobs -> ExposedJob (confirmed / probable / clear)
    exposed jobs + their definitions + repository contents -> exposed_secrets
    Inventory.network_logs -> tasks.sweep.run.sweep_paths -> NetworkHit
    all of it -> build_exposure_report -> ExposureReport -> exposure_markdown

Verdicts (per job; the worst of its pulls of an affected image wins):

* ``confirmed``: the log shows a malicious digest (index or per-platform child),
  in a pull line or anywhere else in the log. Time does not matter: if it is
  outside the window, the reason says the window is too narrow;
* ``probable``: it used an affected tag, the log shows no digest, and it ran
  inside the window (or its time is unknown: we cannot rule it out);
* ``clear``: it ran a digest that is not malicious (known-good or otherwise), or
  used the tag outside the window, or used a tag the attacker never wrote.

A pull that logged no digest is looked up in the tag's timeline (``tasks/watch/timeline.py``: the watch's
sightings, Docker Hub push times and pulls in these same CI logs) at the pull's time: ``confirmed`` when the
tag served a malicious digest then, ``clear`` when it provably served another digest then (a covered
interval), and only when the timeline has a hole there does the window decide (``probable`` inside it).
The evidence names the timeline interval and its sources.

Jobs that never used an affected repository are not listed. Sources that
cannot be read become lines in ``ExposureReport.errors``, never a silent skip.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from digestguard import netlog
from digestguard.advisory import Advisory, Window
from digestguard.cilog import JobLog, PullEvent
from digestguard.errors import DigestguardError, InputError
from digestguard.findings import (
    ExposedJob,
    ExposedSecret,
    ExposureReport,
    JobVerdict,
    NetworkHit,
    SourceCoverage,
    coverage_summary,
)
from digestguard.inventory import Inventory
from digestguard.journal import Journal
from digestguard.markdown import md_cell, md_code, md_link, md_pre
from digestguard.reference import try_parse_reference
from digestguard.timeline import TagTimeline
from digestguard.timeutil import fmt_utc, utc
from tasks.ci_logs import advisory_span, read_ci_sources
from tasks.scan.ci_secrets import exposed_secrets
from tasks.sweep.run import sweep_paths
from tasks.watch.timeline import DEFAULT_MAX_GAP, ci_observations, stored_timeline, tag_key

__all__ = [
    "ExposureWindow",
    "assess",
    "assess_exposure_task",
    "build_exposure_report",
    "classify_jobs",
    "exposure_markdown",
    "exposure_window",
    "run_network_sweep",
    "tag_timelines",
]

MAX_EVIDENCE = 6


# --------------------------------------------------------------------------- the window


class ExposureWindow(NamedTuple):
    """The window the assessment uses. Unpacks as ``(start, end, source_text)``; ``end=None`` means still open."""

    start: datetime
    end: datetime | None
    source: str

    def contains(self, when: datetime) -> bool:
        when = utc(when)
        return when >= self.start and (self.end is None or when <= self.end)


def _fmt(t: datetime | None) -> str:
    """A window bound for people: the time in UTC, or ``open``."""
    return fmt_utc(t, empty="open")


def exposure_window(
    advisory: Advisory,
    detected_at: datetime | None = None,
    start_override: datetime | None = None,
    end_override: datetime | None = None,
) -> ExposureWindow:
    """The exposure window: the advisory's start, its end or else our detection time; overrides win.

    The start is the earliest start over the pack's window and its per-image windows (a
    wider window never hides a job). The end is the latest end when every window has one;
    otherwise the incident's own ``detected_at`` (until we knew, anything could have run);
    otherwise open (``None``). Naive datetimes are taken as UTC.

    >>> from digestguard.advisory import load_advisory
    >>> w = exposure_window(load_advisory("kics-2026-04"), detected_at=datetime(2026, 4, 22, 15, 0))
    >>> w.end.isoformat(), w.source.rsplit("; ", 1)[1]
    ('2026-04-22T15:00:00+00:00', 'end: detection time (the advisory has no end)')
    """
    adv_start, adv_end = advisory_span(advisory)
    if start_override is not None:
        start, start_src = utc(start_override), "start: on-call override"
    else:
        start, start_src = utc(adv_start), f"start: advisory {advisory.id} ({advisory.window.source})"
    if end_override is not None:
        end, end_src = utc(end_override), "end: on-call override"
    elif adv_end is not None:
        end, end_src = utc(adv_end), f"end: advisory {advisory.id}"
    elif detected_at is not None:
        end, end_src = utc(detected_at), "end: detection time (the advisory has no end)"
    else:
        end, end_src = None, "end: open (the advisory has no end and no detection time was given)"
    if end is not None and end < start:
        raise InputError("exposure window", f"end {_fmt(end)} is before start {_fmt(start)}", field="end")
    return ExposureWindow(start, end, f"{start_src}; {end_src}")


def _as_window(window: ExposureWindow | tuple[Any, ...]) -> ExposureWindow:
    if isinstance(window, ExposureWindow):
        return window
    start, end = window[0], window[1]
    return ExposureWindow(utc(start), utc(end) if end else None, str(window[2]) if len(window) > 2 else "")


# --------------------------------------------------------------------------- classification

_ORDER: dict[str, int] = {"clear": 0, "probable": 1, "confirmed": 2}


def _evidence(pulls: Sequence[PullEvent], extra: Sequence[tuple[int, str]] = ()) -> list[str]:
    lines: dict[int, str] = {}
    for p in pulls:
        for no, text in p.evidence:
            lines.setdefault(no, text)
    for no, text in extra:
        lines.setdefault(no, text)
    picked = sorted(lines.items())
    if len(picked) > MAX_EVIDENCE:  # keep the lines that name digests first
        with_digest = [x for x in picked if "sha256:" in x[1]]
        rest = [x for x in picked if "sha256:" not in x[1]]
        picked = sorted((with_digest + rest)[:MAX_EVIDENCE])
    return [f"{no}: {text}" for no, text in picked]


_DIGEST_SOURCE = {"log": "printed in the log", "reference": "pinned in the reference",
                  "inherited": "from the job's earlier pull"}


def _pull_verdict(p: PullEvent, img: Any, started_at: datetime | None, window: ExposureWindow,
                  mirror: str | None = None) -> tuple[JobVerdict, str]:
    """(verdict, reason) for one pull of an affected image that shows no malicious digest.

    Through a public Docker Hub mirror (``mirror``) the window's end does not clear a tag: the mirror kept
    serving the attacker's image after the origin was fixed (mirror.gcr.io and trivy 0.69.6)."""
    when = p.at or started_at
    tag = p.effective_tag
    if p.digest:
        kg = img.known_good_for(tag) if tag else None
        known = (kg and kg.digest == p.digest) or any(k.digest == p.digest for k in img.known_good)
        label = "known-good" if known else "non-malicious"
        return "clear", f"ran {label} digest {p.digest} ({_DIGEST_SOURCE.get(p.digest_source or '', '')})"
    if tag is not None and tag not in img.affected_tags:
        return "clear", f"tag {tag!r} was not written by the attacker (affected: {', '.join(img.affected_tags)})"
    if when is None:
        return "probable", f"used affected tag {tag!r} with no digest in the log and no time: cannot rule out the window"
    if window.contains(when):
        return "probable", f"used affected tag {tag!r} at {_fmt(when)}, inside the window, with no digest in the log"
    if mirror and when >= window.start:
        return "probable", (f"used affected tag {tag!r} at {_fmt(when)} through the public mirror {mirror}, which can "
                            "serve the attacker's image after the window closed, with no digest in the log")
    return "clear", f"used tag {tag!r} at {_fmt(when)}, outside the window {_fmt(window.start)} .. {_fmt(window.end)}"


class _TimelineSays(NamedTuple):
    verdict: JobVerdict
    reason: str
    digest: str | None
    evidence: str


def _timeline_verdict(p: PullEvent, img: Any, when: datetime | None, window: ExposureWindow,
                      timelines: Mapping[str, TagTimeline], malicious: Mapping[str, Any]) -> _TimelineSays | None:
    """What the tag's timeline says of a digest-less pull of an affected tag at ``when`` (None: no timeline)."""
    tag = p.effective_tag
    ref = try_parse_reference(p.name) if p.name else None
    if ref is None or tag is None or when is None or img is None or tag not in img.affected_tags:
        return None
    key = tag_key(ref.__class__(ref.registry, ref.repository, tag, None))
    tl = timelines.get(key)
    if tl is None:
        return None
    iv = tl.at(when)
    evidence = f"timeline {key} at {_fmt(when)}: {iv.describe()}"[:400]
    if iv.digest is None:
        where = "inside" if window.contains(when) else "outside"
        verdict: JobVerdict = "probable" if where == "inside" else "clear"
        return _TimelineSays(verdict, f"used affected tag {tag!r} at {_fmt(when)} with no digest in the log; the tag "
                                      f"timeline has a hole then ({iv.reason or 'unknown'}), {where} the window", None, evidence)
    sources = "; ".join(iv.sources) or "timeline"
    if iv.digest in malicious:
        reason = (f"pulled {tag!r} at {_fmt(when)} with no digest in the log; the tag timeline shows it served "
                  f"malicious digest {iv.digest} then ({sources})")
        if not window.contains(when):
            reason += f"; OUTSIDE the window {_fmt(window.start)} .. {_fmt(window.end)}: the window is too narrow"
        return _TimelineSays("confirmed", reason, iv.digest, evidence)
    kg = img.known_good_for(tag)
    label = "known-good" if (kg and kg.digest == iv.digest) or any(k.digest == iv.digest for k in img.known_good) \
        else "non-malicious"
    return _TimelineSays("clear", f"pulled {tag!r} at {_fmt(when)} with no digest in the log; the tag timeline shows it "
                                  f"served {label} digest {iv.digest} then ({sources})", iv.digest, evidence)


def _classify_one(log: JobLog, advisory: Advisory, window: ExposureWindow,
                  timelines: Mapping[str, TagTimeline] | None = None) -> ExposedJob | None:
    malicious = advisory.malicious_index()
    affected: list[tuple[PullEvent, Any]] = []
    mirrors: dict[int, str | None] = {}
    for p in log.pulls:
        ref = try_parse_reference(p.name) if p.name else None
        hit = advisory.match(ref)
        img = hit.image if hit else None
        if img is not None or (p.digest and p.digest in malicious):
            affected.append((p, img))
            mirrors[id(p)] = hit.mirror if hit else None
    mentions = [m for m in log.digests if m.digest in malicious]
    if not affected and not mentions:
        return None

    def base(verdict: JobVerdict, reason: str, pulls: Sequence[PullEvent], ref: str | None, digest: str | None,
             extra: Sequence[tuple[int, str]] = ()) -> ExposedJob:
        return ExposedJob(source=log.source, job=log.job, started_at=log.started_at, reference=ref, digest=digest,
                          verdict=verdict, reason=reason, evidence=_evidence(pulls, extra), workflow=log.workflow, url=log.url,
                          mirror=next((mirrors.get(id(p)) for p in pulls if mirrors.get(id(p))), None))

    # confirmed: a malicious digest in a pull, else anywhere in the log
    bad = [p for p, _ in affected if p.digest and p.digest in malicious]
    if bad or mentions:
        digest = bad[0].digest if bad else mentions[0].digest
        img, rec = malicious[digest]  # type: ignore[index]
        when = (bad[0].at if bad else mentions[0].at) or log.started_at
        what = f"malicious {rec.kind} digest {digest}" + (f" ({rec.platform})" if rec.platform else "")
        if bad:
            reason = f"pulled {bad[0].reference or img.repository}: {what}"
        else:
            reason = f"{what} appears in the log at line {mentions[0].line_no} (not in a recognised pull line)"
        if when is not None and not window.contains(when):
            reason += (f"; at {_fmt(when)}, OUTSIDE the window {_fmt(window.start)} .. {_fmt(window.end)}:"
                       " the window is too narrow")
        extra = [(m.line_no, m.line) for m in mentions]
        return base("confirmed", reason, bad, bad[0].reference if bad else img.repository, digest, extra)

    worst: tuple[int, str, PullEvent, _TimelineSays | None] | None = None
    for p, img in affected:
        said = None if p.digest else _timeline_verdict(p, img, p.at or log.started_at, window, timelines or {}, malicious)
        verdict, reason = (said.verdict, said.reason) if said else _pull_verdict(p, img, log.started_at, window, mirrors.get(id(p)))
        rank = _ORDER[verdict]
        if worst is None or rank > worst[0]:
            worst = (rank, reason, p, said)
    assert worst is not None
    verdict_s: JobVerdict = ("clear", "probable", "confirmed")[worst[0]]  # type: ignore[assignment]
    chosen = [p for p, _ in affected if p.name == worst[2].name and (p.tag == worst[2].tag)]
    said = worst[3]
    job = base(verdict_s, worst[1], chosen or [worst[2]], worst[2].reference, worst[2].digest or (said.digest if said else None))
    if said is not None:
        job.evidence.append(said.evidence)
    return job


def classify_jobs(
    job_logs: Sequence[JobLog], advisory: Advisory, window: ExposureWindow | tuple[Any, ...],
    timelines: Mapping[str, TagTimeline] | None = None,
) -> list[ExposedJob]:
    """Every job that used an affected repository (or shows a malicious digest), with its verdict and evidence.

    ``timelines`` (by tag key, ``registry/repository:tag``) decide digest-less pulls where they cover the
    pull's time. Ordered confirmed, probable, clear, then by start time and job identity.
    """
    w = _as_window(window)
    out = [j for log in job_logs if (j := _classify_one(log, advisory, w, timelines)) is not None]
    far = datetime.max.replace(tzinfo=timezone.utc)
    out.sort(key=lambda j: (-_ORDER[j.verdict], j.started_at or far, j.source, j.job))
    return out


def _exposed(log: JobLog, advisory: Advisory, window: ExposureWindow,
             timelines: Mapping[str, TagTimeline] | None = None) -> bool:
    """True when the job is confirmed/probable with or without the stored timelines: only then is its definition
    fetched (saves API calls; the timelines gain the CI logs' own pulls later, so both readings count)."""
    for tls in (None, timelines) if timelines else (None,):
        job = _classify_one(log, advisory, window, tls)
        if job is not None and job.verdict != "clear":
            return True
    return False


# --------------------------------------------------------------------------- tag timelines


def affected_tag_keys(advisory: Advisory) -> list[str]:
    """``registry/repository:tag`` of every tag the advisory says the attacker wrote."""
    out: list[str] = []
    for img in advisory.images:
        ref = try_parse_reference(img.repository)
        if ref is None:
            continue
        out += [tag_key(ref.__class__(ref.registry, ref.repository, t, None)) for t in img.affected_tags]
    return list(dict.fromkeys(out))


def tag_timelines(journal: Journal, advisory: Advisory, window: ExposureWindow, job_logs: Sequence[JobLog] = (),
                  max_gap: timedelta = DEFAULT_MAX_GAP) -> dict[str, TagTimeline]:
    """The timeline of every affected tag: the journal's sightings plus the pulls these CI logs show with a digest.

    Tags nobody has any evidence about are left out (a pull of one stays with the window's verdict).
    """
    keys = affected_tag_keys(advisory)
    ci = ci_observations(job_logs, keys)
    since = window.start - timedelta(days=1)
    out: dict[str, TagTimeline] = {}
    for key in keys:
        tl = stored_timeline(journal, key, extra=[o for o in ci if o.reference == key], since=since, max_gap=max_gap)
        if tl.intervals:
            out[key] = tl
    return out


def _shown(timelines: Mapping[str, TagTimeline], window: ExposureWindow) -> list[TagTimeline]:
    """The timelines as the report keeps them: a day either side of the window, bounded in size."""
    end = window.end + timedelta(days=1) if window.end else None
    return [tl.clip(window.start - timedelta(days=1), end) for _, tl in sorted(timelines.items())]


# --------------------------------------------------------------------------- network sweep


def _sweep_address(inventory: Inventory, n: Any) -> str:
    if n.kind == "cloudwatch":
        query = "&".join(f"{k}={v}" for k, v in (("region", n.region), ("endpoint", n.endpoint_url)) if v)
        return f"cloudwatch://{n.log_group}" + (f"?{query}" if query else "")
    return str(inventory.resolve_path(n.path))


def run_network_sweep(
    inventory: Inventory, advisory: Advisory, window: ExposureWindow,
) -> tuple[list[NetworkHit], list[str], dict[str, int], list[SourceCoverage]]:
    """Sweep the inventory's network logs with ``tasks.sweep.run.sweep_paths``.

    Returns (hits, errors/notes, unparsable lines per log, coverage per source). One call per source, so a missing
    file fails only its own source; a source's own ``format`` is passed when the sweep knows it.
    A failing source is a line in the report, never silence.
    """
    if not inventory.network_logs:
        return [], [], {}, []
    w = Window(start=window.start, end=window.end, source=window.source or "assess")
    hits: list[NetworkHit] = []
    errors: list[str] = []
    unparsable: dict[str, int] = {}
    coverage: list[SourceCoverage] = []
    for n in inventory.network_logs:
        address = _sweep_address(inventory, n)
        fmt = n.format if n.format in netlog.FORMATS else None
        try:
            result = sweep_paths([address], advisory.network, w, log_format=fmt)
        except (DigestguardError, OSError, ValueError) as exc:
            errors.append(f"network logs {n.name}: not swept: {exc}")
            coverage.append(SourceCoverage(source=n.name or address, kind="network-log", state="unchecked",
                                           reason=f"not swept: {exc}"))
            continue
        coverage.append(_merge_coverage(n.name or address, result.coverage(n.name or address)))
        hits.extend(result.hits)
        for f in result.files:
            if f.unparsable:
                unparsable[f.path] = unparsable.get(f.path, 0) + f.unparsable
            errors.extend(f"network logs {f.path}: {e}" for e in f.errors)
    return hits, errors, unparsable, coverage


def _merge_coverage(source: str, parts: Sequence[SourceCoverage]) -> SourceCoverage:
    """One source's coverage from its inputs': checked when all were, unchecked when none was, else partial."""
    states = {c.state for c in parts}
    reason = "; ".join(c.reason for c in parts if c.reason) or None
    if states <= {"checked"}:
        return SourceCoverage(source=source, kind="network-log", state="checked")
    state = "unchecked" if states == {"unchecked"} else "partial"
    return SourceCoverage(source=source, kind="network-log", state=state, reason=reason)


# --------------------------------------------------------------------------- the report


def build_exposure_report(
    advisory: Advisory,
    window: ExposureWindow | tuple[Any, ...],
    jobs: Sequence[ExposedJob],
    secrets: Sequence[ExposedSecret] = (),
    *,
    network_hits: Sequence[NetworkHit] | None = None,
    inventory: Inventory | None = None,
    unparsable: Mapping[str, int] | None = None,
    errors: Sequence[str] = (),
    coverage: Sequence[SourceCoverage] = (),
    timelines: Mapping[str, TagTimeline] | None = None,
) -> ExposureReport:
    """Combine everything into one ``ExposureReport``.

    ``network_hits`` given: used as is. Not given and an ``inventory`` is: the sweep is run
    (see :func:`run_network_sweep`). Neither: no hits, and the report says the sweep did not run.
    """
    w = _as_window(window)
    errs = list(errors)
    unp = dict(unparsable or {})
    cov = list(coverage)
    if network_hits is None:
        if inventory is not None:
            hits, notes, sweep_unp, sweep_cov = run_network_sweep(inventory, advisory, w)
            errs.extend(notes)
            cov.extend(sweep_cov)
            for k, v in sweep_unp.items():
                unp[k] = unp.get(k, 0) + v
        else:
            hits = []
            errs.append("network sweep not run (no inventory given)")
    else:
        hits = list(network_hits)
    return ExposureReport(
        advisory=advisory.id, window_start=w.start, window_end=w.end, window_source=w.source,
        jobs=list(jobs), secrets=list(secrets), network_hits=hits, unparsable=unp, errors=errs, coverage=cov,
        tag_timelines=_shown(timelines or {}, w),
        link_origins=inventory.link_origins() if inventory is not None else [],
    )


def assess(
    advisory: Advisory,
    inventory: Inventory,
    *,
    detected_at: datetime | None = None,
    start_override: datetime | None = None,
    end_override: datetime | None = None,
    clients: Mapping[str, Any] | None = None,
    network_hits: Sequence[NetworkHit] | None = None,
    scan_contents: bool = True,
    journal: Journal | None = None,
) -> ExposureReport:
    """The whole stage: window, CI logs, verdicts, secrets, network sweep -> ``ExposureReport``.

    ``journal``: where the watch keeps its tag timelines (digest-less pulls are judged by them); without
    one, such pulls are judged by the window alone.
    """
    window = exposure_window(advisory, detected_at, start_override, end_override)
    stored = tag_timelines(journal, advisory, window) if journal is not None else {}
    read = read_ci_sources(inventory, advisory, window, clients=clients,
                           wants_definition=lambda log: _exposed(log, advisory, window, stored))
    timelines = tag_timelines(journal, advisory, window, read.jobs) if journal is not None else {}
    jobs = classify_jobs(read.jobs, advisory, window, timelines)
    secrets, secret_errors = exposed_secrets(jobs, inventory, read.origins, scan_contents=scan_contents)
    return build_exposure_report(advisory, window, jobs, secrets, network_hits=network_hits, inventory=inventory,
                                 unparsable=read.unparsable, errors=read.errors + secret_errors,
                                 coverage=[read.coverage[e.name] for e in inventory.ci_logs if e.name in read.coverage],
                                 timelines=timelines)


# --------------------------------------------------------------------------- Markdown


def exposure_markdown(report: ExposureReport) -> str:
    """The report as Markdown for Slack/artifacts and the approval form (no secret values: there are none)."""
    counts = {v: len(report.jobs_by(v)) for v in ("confirmed", "probable", "clear")}  # type: ignore[arg-type]
    unmapped = [s for s in report.secrets if not s.mapped]
    missing = coverage_summary(report.coverage)
    out = [f"**INCOMPLETE: {md_cell(missing)}.** Nothing found in the rest does not mean clear.", ""] if missing else []
    out += [
        f"## Exposure: {md_cell(report.advisory)}",
        "",
        f"**Window:** {_fmt(report.window_start)} .. {_fmt(report.window_end)}  ",
        f"_{md_cell(report.window_source)}_",
        "",
        f"**Jobs:** {counts['confirmed']} confirmed, {counts['probable']} probable, {counts['clear']} clear · "
        f"**Secrets:** {len(report.secrets)} ({len(unmapped)} not in the inventory) · "
        f"**Network hits:** {len(report.network_hits)}",
        "",
    ]
    if report.jobs:
        out += ["### CI jobs", "", "| verdict | source | job | started | reference | digest | reason |",
                "|---|---|---|---|---|---|---|"]
        for j in report.jobs:
            job = md_link(j.url, j.job, report.link_origins) if j.url else md_cell(j.job)
            digest = f"`{j.digest[:19]}…`" if j.digest else "—"
            out.append(f"| **{j.verdict}** | {md_cell(j.source)} | {job} | {_fmt(j.started_at) if j.started_at else '—'} | "
                       f"{md_cell(j.reference) or '—'} | {digest} | {md_cell(j.reason)} |")
        out.append("")
        shown = [j for j in report.jobs if j.verdict != "clear" and j.evidence]
        if shown:
            out += ["<details><summary>Evidence</summary>", ""]
            for j in shown:
                out.append(f"**{md_cell(j.job)}** ({j.verdict})")
                out.append("```")
                out += [md_pre(e) for e in j.evidence]
                out.append("```")
            out += ["</details>", ""]
    elif missing:
        out += ["No CI job read so far used an affected image (not every source was checked).", ""]
    else:
        out += ["No CI job used an affected image.", ""]
    if report.secrets:
        out += ["### Secrets the exposed jobs could see", "", "| secret | in inventory | exposure | jobs | how |",
                "|---|---|---|---|---|"]
        for s in report.secrets:
            mapped = md_cell(s.inventory_name) if s.mapped else "**NO: add it or rotate by hand**"
            how = "; ".join(s.how[:4]) + (f" (+{len(s.how) - 4} more)" if len(s.how) > 4 else "")
            out.append(f"| `{md_code(s.name)}` | {mapped} | {s.exposure} | {len(s.exposed_by)} | {md_cell(how)} |")
        out.append("")
    if report.network_hits:
        out += ["### Network indicator hits", "", "| time | in window | indicator | where | line |", "|---|---|---|---|---|"]
        for h in report.network_hits:
            inw = {True: "yes", False: "no", None: "?"}[h.in_window]
            out.append(f"| {_fmt(h.timestamp) if h.timestamp else '—'} | {inw} | `{md_code(h.indicator)}` ({md_cell(h.kind)}) | "
                       f"{md_cell(h.path)}:{h.line} | {md_cell(h.text)} |")
        out.append("")
    if report.unparsable:
        out += ["### Unparsable lines", ""] + [f"- {md_cell(k)}: {v}" for k, v in sorted(report.unparsable.items())] + [""]
    if report.errors:
        out += ["### Errors and notes", ""] + [f"- {md_cell(e)}" for e in report.errors] + [""]
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------- Prefect tasks


@task(name="assess-window", cache_policy=NO_CACHE, persist_result=False)
def assess_exposure_task(
    advisory: Advisory,
    inventory: Inventory,
    detected_at: datetime | None = None,
    start_override: datetime | None = None,
    end_override: datetime | None = None,
    scan_contents: bool = True,
    journal: Journal | None = None,
) -> ExposureReport:
    """The assess stage as one coarse Prefect task (it fans out inside). Logs counts, never values."""
    report = assess(advisory, inventory, detected_at=detected_at, start_override=start_override,
                    end_override=end_override, scan_contents=scan_contents, journal=journal)
    logger = get_run_logger()
    logger.info("assess %s: window %s .. %s; jobs confirmed=%d probable=%d clear=%d; secrets=%d (unmapped %d); "
                "hits=%d; errors=%d",
                report.advisory, _fmt(report.window_start), _fmt(report.window_end), len(report.jobs_by("confirmed")),
                len(report.jobs_by("probable")), len(report.jobs_by("clear")), len(report.secrets),
                sum(1 for s in report.secrets if not s.mapped), len(report.network_hits), len(report.errors))
    return report
