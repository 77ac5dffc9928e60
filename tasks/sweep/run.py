"""Assess window: sweep network and CI logs for an advisory's network indicators.

``sweep_paths(paths, indicators, window)`` is the whole stage as a pure
function (files in, :class:`SweepResult` out; no printing, no Prefect): assess runs it inside
its own Prefect task, and the CLI (``digestguard sweep``) prints ``SweepResult.to_json_dict()``.
It does not import Prefect, so a sweep from the command line starts in well under a second.

Inputs: plain or gzip files and directories (every file below them, each
format detected from its content), and ``cloudwatch://LOG-GROUP[?stream=P]``
addresses. A line that does not parse is counted per file and still matched
on its raw text: a hit is never dropped because the line around it is broken.

Speed: see ``tasks/sweep/engine.py`` (anchored prefilter, only candidate lines
parsed) and ``bench/sweep.py``. Big plain files are split into byte ranges
scanned by ``workers`` processes; memory stays bounded (1 MiB chunks).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from digestguard import netlog
from digestguard._model import Model
from digestguard.advisory import Indicator, Window
from digestguard.errors import InputError, IntegrationError
from digestguard.findings import NetworkHit, SourceCoverage, overall_verdict
from digestguard.timeutil import parse_time
from tasks.sweep import engine


def _cloudwatch():
    """``integrations.cloudwatch``, imported only when a ``cloudwatch://`` source is swept: boto3 (with httpx via the
    REST base) is 0.7 s of a fresh sweep's 1 s of imports, and a file sweep never needs it."""
    from integrations import cloudwatch

    return cloudwatch


PARALLEL_MIN_BYTES = 64 << 20
"""Below this much input, worker processes cost more than they save."""


class SweepFileStats(Model):
    """What was read from one input: lines, malformed lines, and anything that went wrong."""

    path: str
    format: str
    lines: int = 0
    unparsable: int = 0
    bytes: int = 0
    hits: int = 0
    errors: list[str] = Field(default_factory=list)


class SweepResult(Model):
    """Every hit (in file and line order) and per-input statistics."""

    indicators: list[str] = Field(default_factory=list, description="'kind:value' of every indicator swept for")
    window_start: datetime | None = None
    window_end: datetime | None = None
    hits: list[NetworkHit] = Field(default_factory=list)
    files: list[SweepFileStats] = Field(default_factory=list)

    @property
    def lines(self) -> int:
        return sum(f.lines for f in self.files)

    @property
    def unparsable(self) -> int:
        return sum(f.unparsable for f in self.files)

    def hits_in_window(self) -> list[NetworkHit]:
        return [h for h in self.hits if h.in_window]

    def unparsable_by_path(self) -> dict[str, int]:
        """``{path: malformed lines}`` for inputs that had any (``ExposureReport.unparsable``)."""
        return {f.path: f.unparsable for f in self.files if f.unparsable}

    def errors(self) -> list[str]:
        """Every read failure, prefixed with its input (truncated gzip, API errors)."""
        return [f"{f.path}: {e}" for f in self.files for e in f.errors]

    def coverage(self, source: str | None = None) -> list[SourceCoverage]:
        """Per input: ``checked``; ``partial`` when it had read errors after some lines; ``unchecked`` when
        nothing could be read (or there was nothing to sweep for). ``source`` names them all as one source."""
        out = []
        for f in self.files:
            name = source or f.path
            if not f.errors:
                out.append(SourceCoverage(source=name, kind="network-log", state="checked"))
            else:
                state = "partial" if f.lines else "unchecked"
                out.append(SourceCoverage(source=name, kind="network-log", state=state, reason="; ".join(f.errors)[:300]))
        return out

    def to_json_dict(self) -> dict[str, Any]:
        """The ``--json`` object: ``hits``, ``files`` and totals (timestamps ISO 8601 UTC)."""
        return {
            "indicators": self.indicators,
            "window": {
                "start": self.window_start.isoformat() if self.window_start else None,
                "end": self.window_end.isoformat() if self.window_end else None,
            },
            "hits": [h.model_dump(mode="json") for h in self.hits],
            "files": [f.model_dump(mode="json") for f in self.files],
            "coverage": [c.model_dump(mode="json") for c in self.coverage()],
            "verdict": overall_verdict(bool(self.hits_in_window() or any(h.in_window is None for h in self.hits)),
                                       self.coverage()),
            "totals": {
                "files": len(self.files),
                "lines": self.lines,
                "unparsable": self.unparsable,
                "hits": len(self.hits),
                "hits_in_window": len(self.hits_in_window()),
            },
        }


# ---------------------------------------------------------------- inputs

def expand_paths(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Files and ``cloudwatch://`` addresses; directories become the files below them (sorted).

    A path that does not exist is bad input and raises :class:`InputError` naming it,
    before anything is read.
    """
    out: list[str] = []
    for p in paths:
        s = os.fspath(p)
        if s.startswith("cloudwatch://"):
            _cloudwatch().parse_cloudwatch_uri(s)
            out.append(s)
            continue
        path = Path(s)
        if path.is_dir():
            out.extend(str(f) for f in sorted(path.rglob("*")) if f.is_file())
        elif path.is_file():
            out.append(s)
        elif path.exists():
            raise InputError(s, "not a regular file or directory")
        else:
            raise InputError(s, "no such file or directory")
    return out


def _indicator_pairs(indicators: Iterable[Indicator | tuple[str, str]]) -> list[tuple[str, str]]:
    pairs = []
    for ind in indicators:
        if isinstance(ind, Indicator):
            pairs.append((ind.kind, ind.value))
        else:
            kind, value = ind
            # validate and refang the way an advisory pack would
            try:
                pairs.append((kind, Indicator(kind=kind, value=value, source="sweep input").value))
            except ValidationError as e:
                reason = "; ".join(err["msg"] for err in e.errors())
                raise InputError(f"{kind}:{value}", reason, "indicator") from None
    return pairs


def _in_window(window: Window | None, ts: datetime | None) -> bool | None:
    if ts is None or window is None:
        return None
    return window.contains(ts)


# ---------------------------------------------------------------- the sweep

def sweep_paths(
    paths: Sequence[str | os.PathLike[str]],
    indicators: Iterable[Indicator | tuple[str, str]],
    window: Window | None,
    *,
    log_format: str | None = None,
    workers: int | None = None,
    chunk_size: int = netlog.DEFAULT_CHUNK,
    cloudwatch_endpoint: str | None = None,
) -> SweepResult:
    """Sweep ``paths`` for ``indicators``; flag each hit against ``window``.

    ``indicators`` are ``Advisory.network`` entries (or ``(kind, value)`` pairs,
    defanged or not). ``log_format`` forces one format for every file (default:
    detect per file). ``workers`` defaults to the CPU count (capped at 4).
    Raises :class:`InputError` for missing paths or bad indicators; a broken
    line or a truncated gzip is reported in the file's stats, never raised.
    Example::

        adv = load_advisory("kics-2026-04")
        res = sweep_paths(["/var/log/zeek"], adv.network, adv.window)
        for h in res.hits_in_window(): ...
    """
    pairs = _indicator_pairs(indicators)
    matcher = engine.compile_matcher(pairs)
    files = expand_paths(paths)
    result = SweepResult(
        indicators=[f"{k}:{v}" for k, v in pairs],
        window_start=window.start if window else None,
        window_end=window.end if window else None,
    )
    if not pairs:
        result.files = [SweepFileStats(path=p, format="-", errors=["no network indicators to sweep for"]) for p in files]
        return result
    plan = _plan(files, matcher, log_format, workers or min(os.cpu_count() or 1, 4), chunk_size)
    raw = _scan_units(plan)
    for i, p in enumerate(files):
        if p.startswith("cloudwatch://"):
            units = [_sweep_cloudwatch(p, matcher, cloudwatch_endpoint)]
        else:
            units = raw.get(i, [])
        hits, stats = _collect(p, plan.stats[i], units, window)
        result.hits += hits
        result.files.append(stats)
    return result


@dataclass
class _Plan:
    """The units to scan: ``(file index, scan_unit args)``, big plain files split into byte ranges."""

    units: list[tuple[int, tuple]]
    stats: list[SweepFileStats]  # one per file, format filled in
    total_bytes: int
    workers: int


def _plan(files: list[str], matcher: engine.Matcher, log_format: str | None, workers: int, chunk_size: int) -> _Plan:
    """Detect each file's format and cut the work into units (CloudWatch addresses are read apart)."""
    plan = _Plan([], [], 0, workers)
    for i, p in enumerate(files):
        if p.startswith("cloudwatch://"):
            plan.stats.append(SweepFileStats(path=p, format=netlog.CLOUDWATCH))
            continue
        head = netlog.read_head(p)
        fmt = netlog.format_by_name(log_format, head) if log_format else netlog.detect_format(head)
        plan.stats.append(SweepFileStats(path=p, format=fmt.name))
        size = Path(p).stat().st_size
        plan.total_bytes += size
        if workers > 1 and not netlog.is_gzip(p) and size >= PARALLEL_MIN_BYTES:
            for a, b in netlog.split_ranges(p, workers, min_part=PARALLEL_MIN_BYTES // 2):
                plan.units.append((i, (matcher, fmt, p, a, b, chunk_size)))
        else:
            plan.units.append((i, (matcher, fmt, p, 0, None, chunk_size)))
    return plan


def _scan_units(plan: _Plan) -> dict[int, list[engine.UnitResult]]:
    """``{file index: unit results in order}``; a process pool when there is enough to share out."""
    raw: dict[int, list[engine.UnitResult]] = {}
    if plan.workers > 1 and len(plan.units) > 1 and plan.total_bytes >= PARALLEL_MIN_BYTES:
        # fork: workers run only this pure engine code (no logging, no I/O but reads), and
        # start in milliseconds without re-importing Prefect
        netlog.count_byte(bytes(8192), b"\n")  # import numpy once here, not once per worker
        engine.backend()  # likewise hyperscan
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(min(plan.workers, len(plan.units))) as pool:
            args = [a for _, a in plan.units]
            for (i, _), unit in zip(plan.units, pool.imap(engine.scan_unit_args, args), strict=True):
                raw.setdefault(i, []).append(unit)
    else:
        for i, args in plan.units:
            raw.setdefault(i, []).append(engine.scan_unit(*args))
    return raw


def _collect(path: str, planned: SweepFileStats, units: list[engine.UnitResult],
             window: Window | None) -> tuple[list[NetworkHit], SweepFileStats]:
    """One input's hits (line numbers counted across its units) and its statistics."""
    hits: list[NetworkHit] = []
    stats = planned.model_copy(deep=True)
    base = 0
    for u in units:
        for line, ind, kind, ts_iso, _field, text in u.hits or ():
            ts = parse_time(ts_iso)
            hits.append(NetworkHit(
                path=path, line=base + line, indicator=ind, kind=kind,  # type: ignore[arg-type]
                timestamp=ts, in_window=_in_window(window, ts), text=text,
            ))
        base += u.lines
        stats.lines += u.lines
        stats.unparsable += u.unparsable
        stats.bytes += u.bytes_read
        stats.errors.extend(u.errors or ())
    stats.hits += len(hits)
    return hits, stats


def _sweep_cloudwatch(uri: str, matcher: engine.Matcher, endpoint: str | None) -> engine.UnitResult:
    """Read one log group through the API; an API failure lands in the unit's errors, named, not raised."""
    cloudwatch = _cloudwatch()
    parts = cloudwatch.parse_cloudwatch_uri(uri)
    events = cloudwatch.iter_log_events(
        parts["log_group"],
        stream_prefix=parts.get("stream"),
        endpoint_url=parts.get("endpoint") or endpoint,
        region=parts.get("region"),
    )
    try:
        return engine.scan_events(matcher, ((e.stream, e.timestamp, e.message) for e in events))
    except IntegrationError as e:
        return engine.UnitResult(hits=[], errors=[str(e)])
