"""CI sources -> job logs: a folder of exported logs, GitHub Actions runs, GitLab pipelines.

The data's way through::

    Inventory.ci_logs entry -> read_one_source -> CIRead (JobLog per job, JobOrigin per job, errors, unparsable)

Detect reads job logs for the pulls they show (``read_ci_source``); assess reads them for
verdicts and secrets (``read_ci_sources``, with ``wants_definition`` saying which jobs'
definitions are worth an API call). Sources that cannot be read become error lines naming
the source and the item, never a silent skip; one failing job never hides another.

Folder layout: any file under the folder (dot-files and dot-folders left out) is a job log;
``.gz`` files are decompressed, a ``.zip`` (a GitHub run-log archive) gives one job per text
member. A log under ``<repository name>/`` belongs to that inventory repository; a
``<log>.meta.json`` sidecar may give ``repository``, ``workflow``, ``url`` and ``started_at``.
"""

from __future__ import annotations

import gzip
import json
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from digestguard.advisory import Advisory
from digestguard.cilog import JobLog, parse_job_log
from digestguard.errors import DigestguardError
from digestguard.findings import SourceCoverage
from digestguard.inventory import CISource, Inventory
from digestguard.timeutil import now, parse_time
from tasks.connect import forge_client
from tasks.scan.ci_secrets import JobOrigin, job_key
from tasks.scan.files import walk_files

__all__ = [
    "DEFAULT_LOOKBACK",
    "CIRead",
    "advisory_span",
    "github_client_for",
    "gitlab_client_for",
    "read_ci_source",
    "read_ci_sources",
    "read_one_source",
]

DEFAULT_LOOKBACK = timedelta(hours=6)
"""How far before the window start CI runs are listed: a job queued before the start may pull inside it."""
SIDE_CAR = ".meta.json"
MAX_LOG_BYTES = 64 * 1024 * 1024
"""The most one job log (a file, or a gzip/zip member once decompressed) may hold; beyond it the log is not read."""


class LogTooLarge(ValueError):
    """A log (or a compressed member) decompresses to more than :data:`MAX_LOG_BYTES`."""


def _gunzip_capped(path: Path, limit: int = MAX_LOG_BYTES) -> bytes:
    """``path`` decompressed, chunk by chunk, refusing to hold more than ``limit`` bytes (a gzip bomb)."""
    out: list[bytes] = []
    size = 0
    with gzip.open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            size += len(chunk)
            if size > limit:
                raise LogTooLarge(f"decompresses to more than {limit // (1024 * 1024)} MiB")
            out.append(chunk)
    return b"".join(out)
_SIDECAR_KEYS = frozenset({"repository", "workflow", "url", "started_at"})

Definitions = tuple[tuple[str, str], ...]
"""``(path, text)`` of CI definition files fetched from an API."""
WantsDefinition = Callable[[JobLog], bool]
"""Whether a job's definition is worth fetching (assess: the job is confirmed or probable)."""


class Span(Protocol):
    """A time range: ``tasks.assess.ExposureWindow`` is one. ``end=None`` means still open."""

    @property
    def start(self) -> datetime: ...

    @property
    def end(self) -> datetime | None: ...


@dataclass
class CIRead:
    """What reading CI sources produced: parsed jobs, their origins, errors, unparsable line counts per source."""

    jobs: list[JobLog] = field(default_factory=list)
    origins: dict[str, JobOrigin] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    unparsable: dict[str, int] = field(default_factory=dict)
    coverage: dict[str, SourceCoverage] = field(default_factory=dict)

    @classmethod
    def merged(cls, reads: Iterable[CIRead]) -> CIRead:
        """One ``CIRead`` holding all of ``reads``, in order (unparsable counts added up)."""
        out = cls()
        for r in reads:
            out.jobs += r.jobs
            out.origins.update(r.origins)
            out.errors += r.errors
            out.coverage.update(r.coverage)
            for k, v in r.unparsable.items():
                out.unparsable[k] = out.unparsable.get(k, 0) + v
        return out


def _read(source: str, jobs: Sequence[tuple[JobLog, JobOrigin]], errors: Sequence[str]) -> CIRead:
    """A ``CIRead`` of one source's ``(log, origin)`` pairs (origins keyed by :func:`job_key`)."""
    unparsable = sum(log.unparsable for log, _ in jobs)
    cov = (SourceCoverage(source=source, kind="ci-log", state="partial",
                          reason=f"{len(errors)} item(s) not read, first: {errors[0]}") if errors
           else SourceCoverage(source=source, kind="ci-log", state="checked"))
    return CIRead(jobs=[log for log, _ in jobs], origins={job_key(source, log.job): o for log, o in jobs},
                  errors=list(errors), unparsable={source: unparsable} if unparsable else {}, coverage={source: cov})


def _unread(source: str, error: str) -> CIRead:
    """A ``CIRead`` for a source that could not be read at all: its error, and ``unchecked`` coverage."""
    return CIRead(errors=[error], coverage={source: SourceCoverage(source=source, kind="ci-log", state="unchecked",
                                                                     reason=error)})


def advisory_span(advisory: Advisory) -> tuple[datetime, datetime | None]:
    """The advisory's own window over the pack's and its images' windows: earliest start; latest end, or None.

    The end is None (open) unless every window has one: a wider window never hides a job.
    """
    windows = advisory.windows()
    ends = [w.end for w in windows]
    end = max(e for e in ends if e is not None) if ends and all(e is not None for e in ends) else None
    return min(w.start for w in windows), end


def _list_range(window: Span | None, advisory: Advisory, lookback: timedelta) -> tuple[datetime, datetime]:
    """From ``lookback`` before the window start (the advisory's without a window) to its end, or now when open."""
    start, end = (window.start, window.end) if window is not None else advisory_span(advisory)
    return start - lookback, end or now()


# --------------------------------------------------------------------------- a folder of exported logs


def _repo_for_folder_path(inventory: Inventory, rel: PurePosixPath) -> str | None:
    """A log under ``<repository name>/...`` belongs to that inventory repository (names may contain '/')."""
    parts = rel.parts[:-1]
    for r in inventory.repositories:
        n = len(PurePosixPath(r.name).parts)
        if n and tuple(parts[:n]) == PurePosixPath(r.name).parts:
            return r.name
    return None


def _read_sidecar(path: Path) -> dict[str, Any]:
    side = path.with_name(path.name + SIDE_CAR)
    if not side.is_file():
        return {}
    data = json.loads(side.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("a sidecar is a JSON object")
    unknown = set(data) - _SIDECAR_KEYS
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}")
    return data


def _folder_logs(path: Path) -> list[tuple[str, bytes]]:
    """(identity suffix, bytes) for one file: gzip is decompressed; a zip yields each text member.

    A GitHub run-log archive holds both ``N_job.txt`` (the whole job) and ``job/N_step.txt``
    (the same lines per step): the per-step copies are skipped when the whole-job file exists.
    """
    if path.suffix == ".gz":
        return [("", _gunzip_capped(path))]
    if path.suffix == ".zip":
        out: list[tuple[str, bytes]] = []
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if not n.endswith("/")]
            top = {PurePosixPath(n).stem.split("_", 1)[-1] for n in names if "/" not in n}
            for n in sorted(names):
                if "/" in n and n.split("/", 1)[0] in top:
                    continue
                if z.getinfo(n).file_size > MAX_LOG_BYTES:
                    raise LogTooLarge(f"member {n} is larger than {MAX_LOG_BYTES // (1024 * 1024)} MiB")
                out.append((f"!{n}", z.read(n)))
        return out
    if path.stat().st_size > MAX_LOG_BYTES:
        raise LogTooLarge(f"larger than {MAX_LOG_BYTES // (1024 * 1024)} MiB")
    return [("", path.read_bytes())]


def _folder_files(root: Path) -> list[str]:
    """Relative paths of the log files under ``root``: no dot-folders, dot-files or sidecars; sorted by path parts."""
    rels = [rel for rel, entry in walk_files(root, lambda name: name.startswith("."))
            if (entry.is_symlink() or entry.is_file()) and not entry.name.startswith(".")
            and not entry.name.endswith(SIDE_CAR)]
    return sorted(rels, key=lambda r: r.split("/"))


def _sidecar(source: str, path: Path, rel: PurePosixPath) -> tuple[dict[str, Any], list[str]]:
    """The log's sidecar (empty when missing or unreadable) and the error line an unreadable one gives."""
    try:
        return _read_sidecar(path), []
    except (OSError, ValueError) as exc:
        return {}, [f"{source}: {rel}{SIDE_CAR}: unreadable sidecar ({exc}); the job's origin is unknown"]


def _read_folder(entry: CISource, inventory: Inventory) -> CIRead:
    root = inventory.resolve_path(entry.path or "")
    if not root.is_dir():
        return _unread(entry.name, f"{entry.name}: CI log folder {root} does not exist or is not a folder")
    jobs: list[tuple[JobLog, JobOrigin]] = []
    errors: list[str] = []
    for name in _folder_files(root):
        rel, path = PurePosixPath(name), root / name
        if path.is_symlink():  # never followed: it could point anywhere outside the folder
            errors.append(f"{entry.name}: {rel}: a symlink, not followed (copy the log into the folder)")
            continue
        meta, sidecar_errors = _sidecar(entry.name, path, rel)
        errors += sidecar_errors
        try:
            members = _folder_logs(path)
        except LogTooLarge as exc:
            errors.append(f"{entry.name}: {rel}: not read: {exc}")
            continue
        except (OSError, EOFError, zipfile.BadZipFile, gzip.BadGzipFile, ValueError) as exc:
            errors.append(f"{entry.name}: {rel}: cannot read ({type(exc).__name__})")
            continue
        repo = meta.get("repository") or _repo_for_folder_path(inventory, rel)
        started = parse_time(str(meta["started_at"])) if meta.get("started_at") else None
        if meta.get("started_at") and started is None:
            errors.append(f"{entry.name}: {rel}{SIDE_CAR}: started_at is not an ISO time")
        for suffix, data in members:
            log = parse_job_log(data, f"{rel}{suffix}", source=entry.name, started_at=started,
                                workflow=meta.get("workflow"), url=meta.get("url"), repository=repo)
            jobs.append((log, JobOrigin(repository=repo, workflow=meta.get("workflow"))))
    return _read(entry.name, jobs, errors)


# --------------------------------------------------------------------------- GitHub Actions and GitLab CI


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


class DefinitionUnreadable(Exception):
    """A run's CI definition could not be fetched (the message names it; no secret in it)."""


class _Runs(Protocol):
    """What differs between GitHub Actions and GitLab CI when reading runs (pipelines), jobs and definitions."""

    listing: str  # "workflow runs of acme/api" / "pipelines of group/project"
    log_verb: str  # "download the log" / "read the trace"

    def runs(self, start: datetime, end: datetime) -> list[Any]: ...
    def run_label(self, run: Any) -> str: ...
    def jobs(self, run: Any) -> list[Any]: ...
    def log(self, job: Any) -> str: ...
    def describe(self, run: Any, job: Any) -> tuple[str, str | None, str | None]:
        """(job identity, workflow file, web URL)."""
    def definition_key(self, run: Any) -> tuple[str, str] | None: ...
    def definition(self, run: Any) -> Definitions: ...


class _GitHubRuns:
    def __init__(self, client: Any, repo: str) -> None:
        self.client, self.repo = client, repo
        self.owner, _, self.name = repo.partition("/")
        self.listing, self.log_verb = f"workflow runs of {repo}", "download the log"

    def runs(self, start: datetime, end: datetime) -> list[Any]:
        return self.client.list_workflow_runs(self.owner, self.name, start, end)

    def run_label(self, run: Any) -> str:
        return f"run {run.id}"

    def jobs(self, run: Any) -> list[Any]:
        return self.client.list_jobs(self.owner, self.name, run.id)

    def log(self, job: Any) -> str:
        return self.client.download_job_log(self.owner, self.name, job.id)

    def describe(self, run: Any, job: Any) -> tuple[str, str | None, str | None]:
        ident = f"{self.repo} run {run.id} attempt {job.run_attempt} job {job.id} ({run.name} / {job.name})"
        return ident, run.path or None, job.html_url or run.html_url or None

    def definition_key(self, run: Any) -> tuple[str, str] | None:
        return (run.path, run.head_sha) if run.path else None

    def definition(self, run: Any) -> Definitions:
        try:
            wf = self.client.get_workflow_file(self.owner, self.name, run.path, ref=run.head_sha or None)
        except DigestguardError as exc:
            raise DefinitionUnreadable(f"cannot read workflow {run.path}@{run.head_sha[:12]}: {exc}") from exc
        return ((wf.path, wf.text),)


class _GitLabRuns:
    def __init__(self, client: Any, project: str) -> None:
        self.client, self.project = client, project
        self.listing, self.log_verb = f"pipelines of {project}", "read the trace"

    def runs(self, start: datetime, end: datetime) -> list[Any]:
        return self.client.list_pipelines(self.project, start, end)

    def run_label(self, run: Any) -> str:
        return f"pipeline {run.id}"

    def jobs(self, run: Any) -> list[Any]:
        return self.client.list_jobs(self.project, run.id)

    def log(self, job: Any) -> str:
        return self.client.job_trace(self.project, job.id)

    def describe(self, run: Any, job: Any) -> tuple[str, str | None, str | None]:
        ident = f"{self.project} pipeline {run.id} job {job.id} ({job.name})"
        return ident, ".gitlab-ci.yml", job.web_url or run.web_url or None

    def definition_key(self, run: Any) -> tuple[str, str] | None:
        return (".gitlab-ci.yml", run.sha)

    def definition(self, run: Any) -> Definitions:
        try:
            text = self.client.get_file(self.project, ".gitlab-ci.yml", ref=run.sha or None)
        except DigestguardError as exc:
            raise DefinitionUnreadable(f"cannot read .gitlab-ci.yml@{run.sha[:12]}: {exc}") from exc
        return ((".gitlab-ci.yml", text),)


def _run_jobs(source: str, forge: _Runs, runs: Sequence[Any]) -> tuple[list[tuple[Any, Any]], list[str]]:
    """Every (run, job) pair, and an error line per run whose jobs cannot be listed."""
    pairs: list[tuple[Any, Any]] = []
    errors: list[str] = []
    for run in runs:
        try:
            pairs.extend((run, job) for job in forge.jobs(run))
        except DigestguardError as exc:
            errors.append(f"{source}: {forge.run_label(run)}: cannot list jobs: {exc}")
    return pairs, errors


def _read_runs(source: str, forge: _Runs, span: tuple[datetime, datetime], repository: str | None,
               wants_definition: WantsDefinition | None) -> CIRead:
    """Runs in ``span`` -> jobs -> logs (fetched in parallel); definitions of wanted jobs with no checkout, once per commit."""
    try:
        runs = forge.runs(*span)
    except DigestguardError as exc:
        return _unread(source, f"{source}: cannot list {forge.listing}: {exc}")
    pairs, errors = _run_jobs(source, forge, runs)

    def fetch(pair: tuple[Any, Any]) -> tuple[Any, Any, str | None, str | None]:
        run, job = pair
        try:
            return run, job, forge.log(job), None
        except DigestguardError as exc:
            return run, job, None, str(exc)

    definitions: dict[tuple[str, str], Definitions] = {}
    jobs: list[tuple[JobLog, JobOrigin]] = []
    for run, job, text, err in _fan_out(fetch, pairs):
        ident, workflow, url = forge.describe(run, job)
        if err is not None:
            errors.append(f"{source}: {ident}: cannot {forge.log_verb}: {err}")
            continue
        log = parse_job_log(text or "", ident, source=source, started_at=job.started_at, workflow=workflow, url=url,
                            repository=repository)
        fetched: Definitions = ()
        key = forge.definition_key(run)
        if key is not None and repository is None and wants_definition is not None and wants_definition(log):
            if key not in definitions:
                try:
                    definitions[key] = forge.definition(run)
                except DefinitionUnreadable as exc:
                    definitions[key] = ()
                    errors.append(f"{source}: {exc}")
            fetched = definitions[key]
        jobs.append((log, JobOrigin(repository=repository, workflow=workflow, definitions=fetched)))
    return _read(source, jobs, errors)


def _forge_runs(entry: CISource, client: Any) -> _Runs:
    return _GitHubRuns(client, entry.repo or "") if entry.kind == "github" else _GitLabRuns(client, entry.repo or "")


# --------------------------------------------------------------------------- entry points


def read_one_source(
    entry: CISource,
    inventory: Inventory,
    advisory: Advisory,
    window: Span | None = None,
    *,
    client: Any = None,
    lookback: timedelta = DEFAULT_LOOKBACK,
    wants_definition: WantsDefinition | None = None,
) -> CIRead:
    """Read one CI source. ``client`` overrides the GitHub/GitLab client built from the inventory.

    GitHub/GitLab runs are listed from ``window.start - lookback`` to the window's end (or now;
    without a window the advisory's is used). A job's definition is fetched from the API only
    when it has no inventory checkout and ``wants_definition(log)`` says so. Failures become
    error lines naming the source.
    """
    if entry.kind == "folder":
        return _read_folder(entry, inventory)
    own = client is None
    try:
        if own:
            client = github_client_for(entry, inventory) if entry.kind == "github" else gitlab_client_for(entry, inventory)
    except (DigestguardError, ImportError) as exc:
        return _unread(entry.name, f"{entry.name}: cannot connect to {entry.kind}: {exc}")
    try:
        if entry.kind == "github" and not all((entry.repo or "").partition("/")[::2]):
            return _unread(entry.name, f"{entry.name}: repo {entry.repo!r} is not owner/name")
        return _read_runs(entry.name, _forge_runs(entry, client), _list_range(window, advisory, lookback),
                          _repo_for_remote(inventory, entry.repo or ""), wants_definition)
    except DigestguardError as exc:
        return _unread(entry.name, f"{entry.name}: {exc}")
    finally:
        if own and client is not None:
            client.close()


def read_ci_source(entry: CISource, inventory: Inventory, advisory: Advisory) -> tuple[list[JobLog], list[str]]:
    """One CI source's parsed job logs and its error lines, over the advisory's window (the form ``tasks.detect`` uses)."""
    res = read_one_source(entry, inventory, advisory)
    return res.jobs, res.errors


def read_ci_sources(
    inventory: Inventory,
    advisory: Advisory,
    window: Span | None = None,
    *,
    clients: Mapping[str, Any] | None = None,
    lookback: timedelta = DEFAULT_LOOKBACK,
    wants_definition: WantsDefinition | None = None,
) -> CIRead:
    """Every ``ci_logs`` source of the inventory. ``clients`` maps a source name to a ready client (tests, reuse)."""
    return CIRead.merged(
        read_one_source(entry, inventory, advisory, window, client=(clients or {}).get(entry.name), lookback=lookback,
                        wants_definition=wants_definition)
        for entry in inventory.ci_logs
    )
