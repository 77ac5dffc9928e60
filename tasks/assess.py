"""Stage 2, assess the window: which CI jobs ran the attacker's image, and what they could see.

The data's way through::

    Advisory (+ detection time, on-call overrides) -> exposure_window
    Inventory.ci_logs -> read_ci_sources -> JobLog per job (digestguard.cilog)
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

Jobs that never used an affected repository are not listed. Sources that
cannot be read become lines in ``ExposureReport.errors``, never a silent skip.
"""

from __future__ import annotations

import gzip
import importlib
import json
import zipfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from digestguard.advisory import Advisory
from digestguard.cilog import JobLog, PullEvent, parse_job_log
from digestguard.errors import DigestguardError, InputError
from digestguard.findings import ExposedJob, ExposedSecret, ExposureReport, JobVerdict, NetworkHit
from digestguard.inventory import CISource, Inventory
from digestguard.reference import try_parse_reference
from tasks.forges import forge_client
from tasks.scan.ci_secrets import JobOrigin, exposed_secrets, job_key

__all__ = [
    "CIRead",
    "ExposureWindow",
    "JobOrigin",
    "assess",
    "assess_exposure_task",
    "build_exposure_report",
    "classify_jobs",
    "exposed_secrets",
    "exposure_markdown",
    "exposure_window",
    "job_key",
    "read_ci_source",
    "read_ci_sources",
]

DEFAULT_LOOKBACK = timedelta(hours=6)
"""How far before the window start CI runs are listed: a job queued before the start may pull inside it."""
MAX_EVIDENCE = 6
SIDE_CAR = ".meta.json"


# --------------------------------------------------------------------------- the window


class ExposureWindow(NamedTuple):
    """The window the assessment uses. Unpacks as ``(start, end, source_text)``; ``end=None`` means still open."""

    start: datetime
    end: datetime | None
    source: str

    def contains(self, when: datetime) -> bool:
        when = _utc(when)
        return when >= self.start and (self.end is None or when <= self.end)


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def _fmt(t: datetime | None) -> str:
    return "open" if t is None else _utc(t).strftime("%Y-%m-%d %H:%M:%S UTC")


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
    windows = advisory.windows()
    adv_start = min(w.start for w in windows)
    ends = [w.end for w in windows]
    adv_end = max(e for e in ends if e is not None) if ends and all(e is not None for e in ends) else None
    if start_override is not None:
        start, start_src = _utc(start_override), "start: on-call override"
    else:
        start, start_src = _utc(adv_start), f"start: advisory {advisory.id} ({advisory.window.source})"
    if end_override is not None:
        end, end_src = _utc(end_override), "end: on-call override"
    elif adv_end is not None:
        end, end_src = _utc(adv_end), f"end: advisory {advisory.id}"
    elif detected_at is not None:
        end, end_src = _utc(detected_at), "end: detection time (the advisory has no end)"
    else:
        end, end_src = None, "end: open (the advisory has no end and no detection time was given)"
    if end is not None and end < start:
        raise InputError("exposure window", f"end {_fmt(end)} is before start {_fmt(start)}", field="end")
    return ExposureWindow(start, end, f"{start_src}; {end_src}")


def _as_window(window: ExposureWindow | tuple[Any, ...]) -> ExposureWindow:
    if isinstance(window, ExposureWindow):
        return window
    start, end = window[0], window[1]
    return ExposureWindow(_utc(start), _utc(end) if end else None, str(window[2]) if len(window) > 2 else "")


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


def _classify_one(log: JobLog, advisory: Advisory, window: ExposureWindow) -> ExposedJob | None:
    malicious = advisory.malicious_index()
    affected: list[tuple[PullEvent, Any]] = []
    for p in log.pulls:
        ref = try_parse_reference(p.name) if p.name else None
        img = advisory.image_for(ref) if ref else None
        if img is not None or (p.digest and p.digest in malicious):
            affected.append((p, img))
    mentions = [m for m in log.digests if m.digest in malicious]
    if not affected and not mentions:
        return None

    def base(verdict: JobVerdict, reason: str, pulls: Sequence[PullEvent], ref: str | None, digest: str | None,
             extra: Sequence[tuple[int, str]] = ()) -> ExposedJob:
        return ExposedJob(source=log.source, job=log.job, started_at=log.started_at, reference=ref, digest=digest,
                          verdict=verdict, reason=reason, evidence=_evidence(pulls, extra), workflow=log.workflow, url=log.url)

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
            reason += f"; at {_fmt(when)}, OUTSIDE the window {_fmt(window.start)} .. {_fmt(window.end)}: the window is too narrow"
        extra = [(m.line_no, m.line) for m in mentions]
        return base("confirmed", reason, bad, bad[0].reference if bad else img.repository, digest, extra)

    worst: tuple[int, str, PullEvent] | None = None
    for p, img in affected:
        when = p.at or log.started_at
        tag = p.effective_tag
        if p.digest:
            kg = img.known_good_for(tag) if tag else None
            label = "known-good" if (kg and kg.digest == p.digest) or any(k.digest == p.digest for k in img.known_good) else "non-malicious"
            how = {"log": "printed in the log", "reference": "pinned in the reference",
                   "inherited": "from the job's earlier pull"}.get(p.digest_source or "", "")
            verdict, reason = "clear", f"ran {label} digest {p.digest} ({how})"
        elif tag is not None and tag not in img.affected_tags:
            verdict, reason = "clear", f"tag {tag!r} was not written by the attacker (affected: {', '.join(img.affected_tags)})"
        elif when is None:
            verdict, reason = "probable", f"used affected tag {tag!r} with no digest in the log and no time: cannot rule out the window"
        elif window.contains(when):
            verdict, reason = "probable", f"used affected tag {tag!r} at {_fmt(when)}, inside the window, with no digest in the log"
        else:
            verdict, reason = "clear", f"used tag {tag!r} at {_fmt(when)}, outside the window {_fmt(window.start)} .. {_fmt(window.end)}"
        rank = _ORDER[verdict]
        if worst is None or rank > worst[0]:
            worst = (rank, reason, p)
    assert worst is not None
    verdict_s: JobVerdict = "probable" if worst[0] == 1 else "clear"
    chosen = [p for p, _ in affected if p.name == worst[2].name and (p.tag == worst[2].tag)]
    return base(verdict_s, worst[1], chosen or [worst[2]], worst[2].reference, worst[2].digest)


def classify_jobs(
    job_logs: Sequence[JobLog], advisory: Advisory, window: ExposureWindow | tuple[Any, ...]
) -> list[ExposedJob]:
    """Every job that used an affected repository (or shows a malicious digest), with its verdict and evidence.

    Ordered confirmed, probable, clear, then by start time and job identity.
    """
    w = _as_window(window)
    out = [j for log in job_logs if (j := _classify_one(log, advisory, w)) is not None]
    far = datetime.max.replace(tzinfo=timezone.utc)
    out.sort(key=lambda j: (-_ORDER[j.verdict], j.started_at or far, j.source, j.job))
    return out


# --------------------------------------------------------------------------- reading CI sources


@dataclass
class CIRead:
    """What reading the CI sources produced: parsed jobs, their origins, errors, unparsable counts per source."""

    jobs: list[JobLog] = field(default_factory=list)
    origins: dict[str, JobOrigin] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    unparsable: dict[str, int] = field(default_factory=dict)

    def extend(self, other: CIRead) -> None:
        self.jobs.extend(other.jobs)
        self.origins.update(other.origins)
        self.errors.extend(other.errors)
        for k, v in other.unparsable.items():
            self.unparsable[k] = self.unparsable.get(k, 0) + v


def _repo_for_folder_path(inventory: Inventory, rel: PurePosixPath) -> str | None:
    """A log under ``<repository name>/...`` belongs to that inventory repository (names may contain '/')."""
    parts = rel.parts[:-1]
    for r in inventory.repositories:
        n = len(PurePosixPath(r.name).parts)
        if n and tuple(parts[:n]) == PurePosixPath(r.name).parts:
            return r.name
    return None


def _repo_for_remote(inventory: Inventory, full: str) -> str | None:
    """The inventory repository for ``owner/name`` (or a GitLab project path): exact name, then the last part."""
    short = full.rstrip("/").rsplit("/", 1)[-1]
    for r in inventory.repositories:
        if r.name == full:
            return r.name
    for r in inventory.repositories:
        if r.name == short:
            return r.name
    return None


def _read_sidecar(path: Path) -> dict[str, Any]:
    side = path.with_name(path.name + SIDE_CAR)
    if not side.is_file():
        return {}
    data = json.loads(side.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("a sidecar is a JSON object")
    unknown = set(data) - {"repository", "workflow", "url", "started_at"}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}")
    return data


def _folder_logs(path: Path) -> list[tuple[str, bytes]]:
    """(identity suffix, bytes) for one file: gzip is decompressed; a zip yields each text member.

    A GitHub run-log archive holds both ``N_job.txt`` (the whole job) and ``job/N_step.txt``
    (the same lines per step): the per-step copies are skipped when the whole-job file exists.
    """
    if path.suffix == ".gz":
        return [("", gzip.decompress(path.read_bytes()))]
    if path.suffix == ".zip":
        out: list[tuple[str, bytes]] = []
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if not n.endswith("/")]
            top = {PurePosixPath(n).stem.split("_", 1)[-1] for n in names if "/" not in n}
            for n in sorted(names):
                if "/" in n and n.split("/", 1)[0] in top:
                    continue
                out.append((f"!{n}", z.read(n)))
        return out
    return [("", path.read_bytes())]


def _read_folder(entry: CISource, inventory: Inventory) -> CIRead:
    res = CIRead()
    root = inventory.resolve_path(entry.path or "")
    if not root.is_dir():
        res.errors.append(f"{entry.name}: CI log folder {root} does not exist or is not a folder")
        return res
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = PurePosixPath(path.relative_to(root).as_posix())
        if any(part.startswith(".") for part in rel.parts) or path.name.endswith(SIDE_CAR):
            continue
        try:
            meta = _read_sidecar(path)
        except (OSError, ValueError) as exc:
            res.errors.append(f"{entry.name}: {rel}{SIDE_CAR}: unreadable sidecar ({exc}); the job's origin is unknown")
            meta = {}
        try:
            members = _folder_logs(path)
        except (OSError, EOFError, zipfile.BadZipFile, gzip.BadGzipFile) as exc:
            res.errors.append(f"{entry.name}: {rel}: cannot read ({type(exc).__name__})")
            continue
        repo = meta.get("repository") or _repo_for_folder_path(inventory, rel)
        started = None
        if meta.get("started_at"):
            try:
                started = _utc(datetime.fromisoformat(str(meta["started_at"]).replace("Z", "+00:00")))
            except ValueError:
                res.errors.append(f"{entry.name}: {rel}{SIDE_CAR}: started_at is not an ISO time")
        for suffix, data in members:
            job = f"{rel}{suffix}"
            log = parse_job_log(data, job, source=entry.name, started_at=started, workflow=meta.get("workflow"),
                                url=meta.get("url"), repository=repo)
            res.jobs.append(log)
            res.origins[job_key(entry.name, job)] = JobOrigin(repository=repo, workflow=meta.get("workflow"))
            if log.unparsable:
                res.unparsable[entry.name] = res.unparsable.get(entry.name, 0) + log.unparsable
    return res


def _exposed(log: JobLog, advisory: Advisory, window: ExposureWindow | None) -> bool:
    """True when the job is confirmed/probable: only then is its definition fetched (saves API calls)."""
    if window is None:
        return False  # reading for detect: no secrets are listed, so no definitions are needed
    job = _classify_one(log, advisory, window)
    return job is not None and job.verdict != "clear"


def _list_range(window: ExposureWindow | None, advisory: Advisory, lookback: timedelta) -> tuple[datetime, datetime]:
    w = window or exposure_window(advisory)
    end = w.end or datetime.now(timezone.utc)
    return w.start - lookback, end


def github_client_for(entry: CISource, inventory: Inventory) -> Any:
    """A GitHub client for a CI source: its api_url/token, else the inventory's backends."""
    return forge_client("github", inventory.backends, source=entry.name, token=entry.token, api_url=entry.api_url)


def gitlab_client_for(entry: CISource, inventory: Inventory) -> Any:
    """A GitLab client for a CI source: its api_url/token, else the inventory's backends."""
    return forge_client("gitlab", inventory.backends, source=entry.name, token=entry.token, api_url=entry.api_url)


def _fan_out(fn: Callable[[Any], Any], items: Sequence[Any], workers: int = 4) -> list[Any]:
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(fn, items))


def _read_github(entry: CISource, inventory: Inventory, advisory: Advisory, client: Any,
                 window: ExposureWindow | None, lookback: timedelta) -> CIRead:
    res = CIRead()
    owner, _, repo = (entry.repo or "").partition("/")
    if not owner or not repo:
        res.errors.append(f"{entry.name}: repo {entry.repo!r} is not owner/name")
        return res
    start, end = _list_range(window, advisory, lookback)
    inv_repo = _repo_for_remote(inventory, entry.repo or "")
    try:
        runs = client.list_workflow_runs(owner, repo, start, end)
    except DigestguardError as exc:
        res.errors.append(f"{entry.name}: cannot list workflow runs of {entry.repo}: {exc}")
        return res
    pairs: list[tuple[Any, Any]] = []
    for run in runs:
        try:
            pairs.extend((run, job) for job in client.list_jobs(owner, repo, run.id))
        except DigestguardError as exc:
            res.errors.append(f"{entry.name}: run {run.id}: cannot list jobs: {exc}")

    def fetch(pair: tuple[Any, Any]) -> tuple[Any, Any, str | None, str | None]:
        run, job = pair
        try:
            return run, job, client.download_job_log(owner, repo, job.id), None
        except DigestguardError as exc:
            return run, job, None, str(exc)

    definitions: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}
    for run, job, text, err in _fan_out(fetch, pairs):
        ident = f"{entry.repo} run {run.id} attempt {job.run_attempt} job {job.id} ({run.name} / {job.name})"
        if err is not None:
            res.errors.append(f"{entry.name}: {ident}: cannot download the log: {err}")
            continue
        log = parse_job_log(text, ident, source=entry.name, started_at=job.started_at, workflow=run.path or None,
                            url=job.html_url or run.html_url or None, repository=inv_repo)
        res.jobs.append(log)
        if log.unparsable:
            res.unparsable[entry.name] = res.unparsable.get(entry.name, 0) + log.unparsable
        fetched: tuple[tuple[str, str], ...] = ()
        if run.path and inv_repo is None and _exposed(log, advisory, window):
            key = (run.path, run.head_sha)
            if key not in definitions:
                try:
                    wf = client.get_workflow_file(owner, repo, run.path, ref=run.head_sha or None)
                    definitions[key] = ((wf.path, wf.text),)
                except DigestguardError as exc:
                    definitions[key] = ()
                    res.errors.append(f"{entry.name}: cannot read workflow {run.path}@{run.head_sha[:12]}: {exc}")
            fetched = definitions[key]
        res.origins[job_key(entry.name, ident)] = JobOrigin(repository=inv_repo, workflow=run.path or None, definitions=fetched)
    return res


def _read_gitlab(entry: CISource, inventory: Inventory, advisory: Advisory, client: Any,
                 window: ExposureWindow | None, lookback: timedelta) -> CIRead:
    res = CIRead()
    project = entry.repo or ""
    start, end = _list_range(window, advisory, lookback)
    inv_repo = _repo_for_remote(inventory, project)
    try:
        pipelines = client.list_pipelines(project, start, end)
    except DigestguardError as exc:
        res.errors.append(f"{entry.name}: cannot list pipelines of {project}: {exc}")
        return res
    pairs: list[tuple[Any, Any]] = []
    for pl in pipelines:
        try:
            pairs.extend((pl, job) for job in client.list_jobs(project, pl.id))
        except DigestguardError as exc:
            res.errors.append(f"{entry.name}: pipeline {pl.id}: cannot list jobs: {exc}")

    def fetch(pair: tuple[Any, Any]) -> tuple[Any, Any, str | None, str | None]:
        pl, job = pair
        try:
            return pl, job, client.job_trace(project, job.id), None
        except DigestguardError as exc:
            return pl, job, None, str(exc)

    definitions: dict[str, tuple[tuple[str, str], ...]] = {}
    for pl, job, text, err in _fan_out(fetch, pairs):
        ident = f"{project} pipeline {pl.id} job {job.id} ({job.name})"
        if err is not None:
            res.errors.append(f"{entry.name}: {ident}: cannot read the trace: {err}")
            continue
        log = parse_job_log(text, ident, source=entry.name, started_at=job.started_at, workflow=".gitlab-ci.yml",
                            url=job.web_url or pl.web_url or None, repository=inv_repo)
        res.jobs.append(log)
        if log.unparsable:
            res.unparsable[entry.name] = res.unparsable.get(entry.name, 0) + log.unparsable
        fetched: tuple[tuple[str, str], ...] = ()
        if inv_repo is None and _exposed(log, advisory, window):
            if pl.sha not in definitions:
                try:
                    definitions[pl.sha] = ((".gitlab-ci.yml", client.get_file(project, ".gitlab-ci.yml", ref=pl.sha or None)),)
                except DigestguardError as exc:
                    definitions[pl.sha] = ()
                    res.errors.append(f"{entry.name}: cannot read .gitlab-ci.yml@{pl.sha[:12]}: {exc}")
            fetched = definitions[pl.sha]
        res.origins[job_key(entry.name, ident)] = JobOrigin(repository=inv_repo, workflow=".gitlab-ci.yml", definitions=fetched)
    return res


def read_ci_source(
    entry: CISource,
    inventory: Inventory,
    advisory: Advisory,
    window: ExposureWindow | None = None,
    *,
    client: Any = None,
    lookback: timedelta = DEFAULT_LOOKBACK,
) -> tuple[list[JobLog], list[str]]:
    """One CI source's parsed job logs and its error lines (the form ``tasks.detect`` uses)."""
    res = read_one_source(entry, inventory, advisory, window, client=client, lookback=lookback)
    return res.jobs, res.errors


def read_one_source(
    entry: CISource,
    inventory: Inventory,
    advisory: Advisory,
    window: ExposureWindow | None = None,
    *,
    client: Any = None,
    lookback: timedelta = DEFAULT_LOOKBACK,
) -> CIRead:
    """Read one CI source. ``client`` overrides the GitHub/GitLab client built from the inventory.

    GitHub/GitLab runs are listed from ``window.start - lookback`` to the window's end (or now;
    without a window the advisory's is used). Failures become error lines naming the source.
    """
    if entry.kind == "folder":
        return _read_folder(entry, inventory)
    own = client is None
    try:
        if own:
            client = github_client_for(entry, inventory) if entry.kind == "github" else gitlab_client_for(entry, inventory)
    except (DigestguardError, ImportError) as exc:
        return CIRead(errors=[f"{entry.name}: cannot connect to {entry.kind}: {exc}"])
    try:
        if entry.kind == "github":
            return _read_github(entry, inventory, advisory, client, window, lookback)
        return _read_gitlab(entry, inventory, advisory, client, window, lookback)
    except DigestguardError as exc:
        return CIRead(errors=[f"{entry.name}: {exc}"])
    finally:
        if own and client is not None:
            client.close()


def read_ci_sources(
    inventory: Inventory,
    advisory: Advisory,
    window: ExposureWindow | None = None,
    *,
    clients: Mapping[str, Any] | None = None,
    lookback: timedelta = DEFAULT_LOOKBACK,
) -> CIRead:
    """Every ``ci_logs`` source of the inventory. ``clients`` maps a source name to a ready client (tests, reuse)."""
    total = CIRead()
    for entry in inventory.ci_logs:
        total.extend(read_one_source(entry, inventory, advisory, window, client=(clients or {}).get(entry.name), lookback=lookback))
    return total


# --------------------------------------------------------------------------- network sweep


def _sweep_address(inventory: Inventory, n: Any) -> str:
    if n.kind == "cloudwatch":
        query = "&".join(f"{k}={v}" for k, v in (("region", n.region), ("endpoint", n.endpoint_url)) if v)
        return f"cloudwatch://{n.log_group}" + (f"?{query}" if query else "")
    return str(inventory.resolve_path(n.path))


def run_network_sweep(inventory: Inventory, advisory: Advisory, window: ExposureWindow) -> tuple[list[NetworkHit], list[str], dict[str, int]]:
    """Sweep the inventory's network logs with ``tasks.sweep.run.sweep_paths`` (when that module exists).

    Returns (hits, errors/notes, unparsable lines per log). One call per source, so a missing
    file fails only its own source; a source's own ``format`` is passed when the sweep knows it.
    A missing sweep module or a failing source is a line in the report, never silence.
    """
    if not inventory.network_logs:
        return [], [], {}
    try:
        sweep = importlib.import_module("tasks.sweep.run")
        fn = sweep.sweep_paths
    except (ImportError, AttributeError):
        return [], ["network sweep not available (tasks.sweep.run.sweep_paths missing): network logs were NOT swept"], {}
    from digestguard.advisory import Window
    from digestguard import netlog

    w = Window(start=window.start, end=window.end, source=window.source or "assess")
    hits: list[NetworkHit] = []
    errors: list[str] = []
    unparsable: dict[str, int] = {}
    for n in inventory.network_logs:
        address = _sweep_address(inventory, n)
        fmt = n.format if n.format in netlog.FORMATS else None
        try:
            result = fn([address], advisory.network, w, log_format=fmt)
        except (DigestguardError, OSError, ValueError) as exc:
            errors.append(f"network logs {n.name}: not swept: {exc}")
            continue
        hits.extend(result.hits)
        for f in result.files:
            if f.unparsable:
                unparsable[f.path] = unparsable.get(f.path, 0) + f.unparsable
            errors.extend(f"network logs {f.path}: {e}" for e in f.errors)
    return hits, errors, unparsable


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
) -> ExposureReport:
    """Combine everything into one ``ExposureReport``.

    ``network_hits`` given: used as is. Not given and an ``inventory`` is: the sweep is run
    (see :func:`run_network_sweep`). Neither: no hits, and the report says the sweep did not run.
    """
    w = _as_window(window)
    errs = list(errors)
    unp = dict(unparsable or {})
    if network_hits is None:
        if inventory is not None:
            hits, notes, sweep_unp = run_network_sweep(inventory, advisory, w)
            errs.extend(notes)
            for k, v in sweep_unp.items():
                unp[k] = unp.get(k, 0) + v
        else:
            hits = []
            errs.append("network sweep not run (no inventory given)")
    else:
        hits = list(network_hits)
    return ExposureReport(
        advisory=advisory.id, window_start=w.start, window_end=w.end, window_source=w.source,
        jobs=list(jobs), secrets=list(secrets), network_hits=hits, unparsable=unp, errors=errs,
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
) -> ExposureReport:
    """The whole stage: window, CI logs, verdicts, secrets, network sweep -> ``ExposureReport``."""
    window = exposure_window(advisory, detected_at, start_override, end_override)
    read = read_ci_sources(inventory, advisory, window, clients=clients)
    jobs = classify_jobs(read.jobs, advisory, window)
    secrets, secret_errors = exposed_secrets(jobs, inventory, read.origins, scan_contents=scan_contents)
    return build_exposure_report(advisory, window, jobs, secrets, network_hits=network_hits, inventory=inventory,
                                 unparsable=read.unparsable, errors=read.errors + secret_errors)


# --------------------------------------------------------------------------- Markdown


def _md(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")


def exposure_markdown(report: ExposureReport) -> str:
    """The report as Markdown for Slack/artifacts and the approval form (no secret values: there are none)."""
    counts = {v: len(report.jobs_by(v)) for v in ("confirmed", "probable", "clear")}  # type: ignore[arg-type]
    unmapped = [s for s in report.secrets if not s.mapped]
    out = [
        f"## Exposure: {report.advisory}",
        "",
        f"**Window:** {_fmt(report.window_start)} .. {_fmt(report.window_end)}  ",
        f"_{_md(report.window_source)}_",
        "",
        f"**Jobs:** {counts['confirmed']} confirmed, {counts['probable']} probable, {counts['clear']} clear · "
        f"**Secrets:** {len(report.secrets)} ({len(unmapped)} not in the inventory) · "
        f"**Network hits:** {len(report.network_hits)}",
        "",
    ]
    if report.jobs:
        out += ["### CI jobs", "", "| verdict | source | job | started | reference | digest | reason |", "|---|---|---|---|---|---|---|"]
        for j in report.jobs:
            job = f"[{_md(j.job)}]({j.url})" if j.url else _md(j.job)
            digest = f"`{j.digest[:19]}…`" if j.digest else "—"
            out.append(f"| **{j.verdict}** | {_md(j.source)} | {job} | {_fmt(j.started_at) if j.started_at else '—'} | "
                       f"{_md(j.reference) or '—'} | {digest} | {_md(j.reason)} |")
        out.append("")
        shown = [j for j in report.jobs if j.verdict != "clear" and j.evidence]
        if shown:
            out += ["<details><summary>Evidence</summary>", ""]
            for j in shown:
                out.append(f"**{_md(j.job)}** ({j.verdict})")
                out.append("```")
                out += [e.replace("```", "'''") for e in j.evidence]
                out.append("```")
            out += ["</details>", ""]
    else:
        out += ["No CI job used an affected image.", ""]
    if report.secrets:
        out += ["### Secrets the exposed jobs could see", "", "| secret | in inventory | exposure | jobs | how |", "|---|---|---|---|---|"]
        for s in report.secrets:
            mapped = _md(s.inventory_name) if s.mapped else "**NO: add it or rotate by hand**"
            how = "; ".join(s.how[:4]) + (f" (+{len(s.how) - 4} more)" if len(s.how) > 4 else "")
            out.append(f"| `{_md(s.name)}` | {mapped} | {s.exposure} | {len(s.exposed_by)} | {_md(how)} |")
        out.append("")
    if report.network_hits:
        out += ["### Network indicator hits", "", "| time | in window | indicator | where | line |", "|---|---|---|---|---|"]
        for h in report.network_hits:
            inw = {True: "yes", False: "no", None: "?"}[h.in_window]
            out.append(f"| {_fmt(h.timestamp) if h.timestamp else '—'} | {inw} | `{_md(h.indicator)}` ({h.kind}) | "
                       f"{_md(h.path)}:{h.line} | {_md(h.text)} |")
        out.append("")
    if report.unparsable:
        out += ["### Unparsable lines", ""] + [f"- {_md(k)}: {v}" for k, v in sorted(report.unparsable.items())] + [""]
    if report.errors:
        out += ["### Errors and notes", ""] + [f"- {_md(e)}" for e in report.errors] + [""]
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
) -> ExposureReport:
    """The assess stage as one coarse Prefect task (it fans out inside). Logs counts, never values."""
    report = assess(advisory, inventory, detected_at=detected_at, start_override=start_override,
                    end_override=end_override, scan_contents=scan_contents)
    logger = get_run_logger()
    logger.info("assess %s: window %s .. %s; jobs confirmed=%d probable=%d clear=%d; secrets=%d (unmapped %d); hits=%d; errors=%d",
                report.advisory, _fmt(report.window_start), _fmt(report.window_end), len(report.jobs_by("confirmed")),
                len(report.jobs_by("probable")), len(report.jobs_by("clear")), len(report.secrets),
                sum(1 for s in report.secrets if not s.mapped), len(report.network_hits), len(report.errors))
    return report


@task(name="read-ci-logs", cache_policy=NO_CACHE, persist_result=False)
def read_ci_sources_task(inventory: Inventory, advisory: Advisory, window: ExposureWindow | None = None) -> CIRead:
    """Read every CI source (for flows that want the reading and the classification as separate steps)."""
    return read_ci_sources(inventory, advisory, window)
