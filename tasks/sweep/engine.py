"""The network sweep's matching engine: prefilter big chunks, confirm candidate lines.

Why a separate module from ``tasks/sweep/run.py``: worker processes import this
one, and it must stay light (no Prefect, no pydantic, no boto3) so that a
worker starts in milliseconds. Everything here is pure: bytes in, plain tuples
out.

How it is fast: a 1 GB log is read in 1 MiB chunks; each chunk is searched
in one caseless pass by Hyperscan (where the wheel exists: Linux x86-64) or,
as a fallback, lowercased once and searched with ``bytes.find``, for a handful of
*anchors* (the longest run of ``[a-z0-9._-]`` of each indicator, merged when
one contains another: ``/v1/telemetry`` and ``KICS-Telemetry/2.0`` share
``telemetry``). Those characters are never escaped by JSON, Zeek or Squid, so
an anchor is found however the line was written. Only lines holding an anchor
are parsed with their format's parser, and the indicator is confirmed on each
parsed field with its boundary rule (labels for domains, whole addresses for
IPs, path segments for URL paths). Malformed lines are counted line by line,
each judged on its own (:func:`digestguard.netlog.malformed_lines`).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from digestguard import netlog
from digestguard.netlog import LineError, LogFormat

LABEL = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")
DIGITS = frozenset("0123456789")
HEX = frozenset("0123456789abcdef")
URL_CONT = LABEL | frozenset("~%")
TOKEN_DELIMS = " \t\"'<>()[]{},;=|"
TEXT_LIMIT = 240
"""Characters of the matching line kept in a hit (enough to read, not a log dump)."""


@dataclass(frozen=True)
class Needle:
    """One indicator ready to match: ``pattern`` is lowercased (scheme stripped for URLs)."""

    kind: str  # domain | ip | url | url_path | user_agent
    indicator: str  # the value as the advisory states it (refanged)
    pattern: str

    @property
    def hit_kind(self) -> str:
        return "url" if self.kind == "url_path" else self.kind

    @property
    def probe(self) -> str:
        """What must appear in a candidate's lowercased raw text (a URL's host: logs may split host and path)."""
        return self.pattern.split("/", 1)[0] if self.kind == "url" else self.pattern

    def hs_patterns(self) -> list[bytes]:
        """Hyperscan literals for the probe: as written and with JSON's ``\\/`` escape.

        Two plain literals scan about twice as fast as one ``\\\\?/`` expression.
        """
        probe = self.probe.encode("utf-8")
        variants = dict.fromkeys([probe, probe.replace(b"/", b"\\/")])
        return [re.escape(v) for v in variants]


@dataclass(frozen=True)
class Matcher:
    """Compiled needles; ``anchors`` feed the pure-Python prefilter, ``hs_patterns`` Hyperscan."""

    needles: tuple[Needle, ...]
    anchors: tuple[bytes, ...]
    lower: bool
    hs_patterns: tuple[bytes, ...] = ()


RawHit = tuple[int, str, str, str | None, str | None, str]
"""(line number within the scanned unit, indicator, kind, ISO timestamp or None, field, text)."""


@dataclass
class UnitResult:
    """What one scanned unit (a file, a byte range of one, a log group) yields."""

    lines: int = 0
    unparsable: int = 0
    hits: list[RawHit] | None = None
    errors: list[str] | None = None
    bytes_read: int = 0


# ---------------------------------------------------------------- compiling

def needle_for(kind: str, value: str) -> Needle:
    """Normalise one (already refanged) indicator into a :class:`Needle`."""
    v = value.strip()
    if kind == "domain":
        pat = v.lower().rstrip(".")
    elif kind == "ip":
        pat = str(ipaddress.ip_address(v)).lower()
    elif kind == "url":
        pat = re.sub(r"^[a-z][a-z0-9+.-]*://", "", v, flags=re.IGNORECASE).lower()
        host, sep, rest = pat.partition("/")
        pat = host.rstrip(".") + sep + rest
    elif kind in ("url_path", "user_agent"):
        pat = v.lower()
    else:
        raise ValueError(f"unknown indicator kind {kind!r}")
    if not pat:
        raise ValueError(f"empty {kind} indicator")
    return Needle(kind, v, pat)


def _anchor(n: Needle) -> list[bytes]:
    if n.kind == "ip":
        return [n.pattern.encode()]
    runs = re.findall(r"[a-z0-9._-]+", n.pattern)
    best = max(runs, key=len, default="")
    if len(best) >= 4:
        return [best.encode("utf-8")]
    full = n.pattern.encode("utf-8")
    return list(dict.fromkeys([full, full.replace(b"/", b"\\/")]))


def compile_matcher(indicators: Iterable[tuple[str, str]]) -> Matcher:
    """``[(kind, value), ...]`` -> a :class:`Matcher`.

    Pure-Python anchors are merged (each one costs a pass over the data, so
    ``telemetry`` serves both ``/v1/telemetry`` and ``KICS-Telemetry/2.0`` at the
    price of more candidate lines); Hyperscan takes every probe in one pass, so
    its patterns stay specific.
    """
    needles = tuple(dict.fromkeys(needle_for(k, v) for k, v in indicators))
    cands = sorted({a for n in needles for a in _anchor(n)}, key=len)
    anchors: list[bytes] = []
    for a in cands:  # shortest first: a longer anchor containing a kept one adds nothing
        if not any(k in a for k in anchors):
            anchors.append(a)
    lower = any(re.search(rb"[a-z]", a) for a in anchors)
    hs_patterns = tuple(dict.fromkeys(p for n in needles for p in n.hs_patterns()))
    return Matcher(needles, tuple(anchors), lower, hs_patterns)


# ---------------------------------------------------------------- prefilter backends

_HS_CACHE: dict[tuple[bytes, ...], object] = {}


def backend() -> str:
    """``hyperscan`` when importable and not disabled (``DIGESTGUARD_SWEEP_ENGINE=python``), else ``python``."""
    if os.environ.get("DIGESTGUARD_SWEEP_ENGINE", "").lower() == "python":
        return "python"
    try:
        import hyperscan  # noqa: F401  (optional: its wheel exists for Linux x86-64 only; probed here, not at import)
    except ImportError:
        return "python"
    return "hyperscan"


def _hs_scanner(patterns: tuple[bytes, ...], structure: tuple[bytes, ...]):
    """A compiled database + scratch, once per process (neither can be pickled).

    Ids below ``len(patterns)`` are caseless indicator probes; the others are
    multiline structure patterns flagging possibly malformed lines.
    """
    key = (patterns, structure)
    got = _HS_CACHE.get(key)
    if got is None:
        import hyperscan as hs  # optional (see backend()): only reached when backend() found it

        exprs = [*patterns, *structure]
        db = hs.Database(mode=hs.HS_MODE_BLOCK)
        db.compile(
            expressions=exprs,
            ids=list(range(len(exprs))),
            elements=len(exprs),
            flags=[hs.HS_FLAG_CASELESS] * len(patterns) + [hs.HS_FLAG_MULTILINE] * len(structure),
        )
        got = (db, hs.Scratch(db))
        _HS_CACHE[key] = got
    return got


def scan_offsets(
    matcher: Matcher, fmt: LogFormat, chunk: bytes, use: str | None = None, end: int | None = None
) -> tuple[set[int], set[int] | None]:
    """``(candidate line starts, suspicious line starts)`` of ``chunk[:end]`` (read in place).

    Candidates hold an indicator probe (case-insensitively). Suspicious lines
    may be malformed and must be confirmed by the parser; ``None`` means the
    backend did not look (:func:`digestguard.netlog.malformed_lines` then looks itself).
    """
    starts: set[int] = set()
    if (use or backend()) == "hyperscan":
        patterns = netlog.structure_patterns(fmt)
        structure = tuple(patterns or ())
        db, scratch = _hs_scanner(matcher.hs_patterns, structure)
        limit = len(matcher.hs_patterns)
        ends: list[int] = []
        sus_ends: list[int] = []

        def on_match(id_: int, _frm: int, to: int, _flags: int, _ctx: object) -> None:
            (ends if id_ < limit else sus_ends).append(to)

        # The whole block is scanned (the pinned wheel takes bytes, not a memoryview), and a match ending past
        # ``end`` dropped: it lies in the cut line that the next block reads again. ``chunk[end - 1]`` is a
        # newline, so a line-bounded match ending at or before ``end`` is the same in ``chunk[:end]``.
        db.scan(chunk, match_event_handler=on_match, scratch=scratch)
        stop = len(chunk) if end is None else end
        starts = {chunk.rfind(b"\n", 0, to) + 1 for to in ends if to <= stop}
        if patterns is None:
            return starts, None
        return starts, {chunk.rfind(b"\n", 0, to) + 1 for to in sus_ends if to <= stop}
    if end is not None and end < len(chunk):
        chunk = chunk[:end]
    low = chunk.lower() if matcher.lower else chunk
    for a in matcher.anchors:
        i = low.find(a)
        while i >= 0:
            starts.add(chunk.rfind(b"\n", 0, i) + 1)
            e = chunk.find(b"\n", i)
            if e < 0:
                break
            i = low.find(a, e + 1)
    return starts, None


def candidate_line_starts(matcher: Matcher, chunk: bytes, use: str | None = None) -> set[int]:
    """Offsets of the lines of ``chunk`` holding at least one indicator probe."""
    return scan_offsets(matcher, LogFormat(netlog.TEXT), chunk, use)[0]


# ---------------------------------------------------------------- confirming

def _domain_ok(text: str, p: int, q: int) -> bool:
    if p > 0 and text[p - 1] in LABEL:
        return False
    if q < len(text):
        c = text[q]
        if c in LABEL:
            return False
        if c == "." and q + 1 < len(text) and text[q + 1] in LABEL:
            return False
    return True


def _ip_ok(text: str, p: int, q: int, v6: bool) -> bool:
    chars = HEX | {":"} if v6 else DIGITS
    if p > 0:
        b = text[p - 1]
        if b in chars or (not v6 and b == "." and p > 1 and text[p - 2] in DIGITS):
            return False
    if q < len(text):
        a = text[q]
        if a in chars or (a == "." and q + 1 < len(text) and text[q + 1] in DIGITS):
            return False
    return True


def _tail_ok(text: str, q: int, pattern: str) -> bool:
    """After a URL / path / user agent: the token must not go on (``/v1/telemetryX``)."""
    if pattern[-1] in "/?=&#" or q >= len(text):
        return True
    c = text[q]
    if c in URL_CONT:
        return False
    return not (c == "." and q + 1 < len(text) and text[q + 1] in LABEL)


def _path_head_ok(text: str, p: int) -> bool:
    """A URL path must start its token, or follow ``[scheme://]host[:port]`` directly."""
    s = p
    while s > 0 and text[s - 1] not in TOKEN_DELIMS:
        s -= 1
    head = text[s:p]
    if not head:
        return True
    head = head.split("://", 1)[1] if "://" in head else head
    return bool(head) and "/" not in head and "?" not in head


def confirm(needle: Needle, text: str) -> str | None:
    """The matched substring when ``needle`` really occurs in lowercased ``text``, else None."""
    pat = needle.pattern
    start = 0
    while True:
        p = text.find(pat, start)
        if p < 0:
            return None
        q = p + len(pat)
        start = p + 1
        k = needle.kind
        if k == "domain":
            ok = _domain_ok(text, p, q)
        elif k == "ip":
            ok = _ip_ok(text, p, q, ":" in pat)
        elif k == "url":
            ok = (p == 0 or (text[p - 1] not in LABEL and text[p - 1] != ".")) and _tail_ok(text, q, pat)
        elif k == "url_path":
            ok = _path_head_ok(text, p) and _tail_ok(text, q, pat)
        else:  # user_agent
            ok = (p == 0 or not text[p - 1].isalnum()) and _tail_ok(text, q, pat)
        if ok:
            return text[p:q]


def confirm_fields(matcher: Matcher, fields: dict[str, str]) -> list[tuple[Needle, str]]:
    """Each needle that confirms in some field, with the field's name (first field wins)."""
    out: list[tuple[Needle, str]] = []
    lowered = [(k, v.lower()) for k, v in fields.items()]
    for n in matcher.needles:
        for name, value in lowered:
            if confirm(n, value) is not None:
                out.append((n, name))
                break
    return out


# ---------------------------------------------------------------- scanning

def _trim(line: bytes) -> str:
    text = line.decode("utf-8", "replace").rstrip("\r\n")
    return text if len(text) <= TEXT_LIMIT else text[: TEXT_LIMIT - 1] + "…"


def examine_line(
    matcher: Matcher, fmt: LogFormat, line: bytes, default_ts: datetime | None = None
) -> tuple[list[tuple[Needle, str, datetime | None]], bool]:
    """Confirm indicators on one candidate line: ``([(needle, field, ts)], unparsable)``.

    A line that fails its format is still matched on its raw text (JSON ``\\/``
    unescaped) with a best-effort timestamp: a hit is never dropped because the
    line around it is broken.
    """
    raw = {"raw": line.decode("utf-8", "replace").replace("\\/", "/")}
    low = raw["raw"].lower()
    present = Matcher(tuple(n for n in matcher.needles if n.probe in low), (), False)
    if not present.needles:  # the anchor was part of something else (``KICS-Telemetry-Client``)
        return [], False
    try:
        ts, fields = netlog.parse_line(fmt, line)
        bad = False
    except LineError:
        bad = True
        ts = netlog.fallback_timestamp(line)
        fields = raw
    ts = ts or default_ts
    found = confirm_fields(present, fields)
    if not bad and len(found) < len(present.needles):
        # safety net: the same boundary rules on the raw text, for anything a parser did not surface
        seen = {n for n, _ in found}
        found += [(n, f) for n, f in confirm_fields(present, raw) if n not in seen]
    return [(n, f, ts) for n, f in found], bad


def scan_chunk(
    matcher: Matcher, fmt: LogFormat, chunk: bytes, line_base: int, hits: list[RawHit], end: int | None = None
) -> tuple[int, int]:
    """Scan one newline-aligned chunk, ``chunk[:end]`` (in place); append hits; return ``(lines, unparsable)``.

    ``line_base`` is the number of lines before this chunk in its unit.
    """
    end = len(chunk) if end is None else end
    complete = chunk.endswith(b"\n", 0, end)
    nlines = netlog.count_byte(chunk, b"\n", 0, end) + (0 if complete or not end else 1)
    starts, suspicious = scan_offsets(matcher, fmt, chunk, end=end)
    bad_set = netlog.malformed_lines(fmt, chunk, nlines, end, flagged=suspicious)
    counted_line = line_base
    counted_pos = 0
    for s in sorted(starts):
        counted_line += netlog.count_byte(chunk, b"\n", counted_pos, s)
        counted_pos = s
        e = chunk.find(b"\n", s, end)
        line = chunk[s:end] if e < 0 else chunk[s:e]
        found, bad = examine_line(matcher, fmt, line.rstrip(b"\r"))
        if bad and s not in bad_set and not (fmt.name == netlog.ZEEK_TSV and line.startswith(b"#")):
            bad_set.add(s)
        text = _trim(line) if found else ""
        for n, field, ts in found:
            hits.append((counted_line + 1, n.indicator, n.hit_kind, ts.isoformat() if ts else None, field, text))
    return nlines, len(bad_set)


def scan_unit(
    matcher: Matcher,
    fmt: LogFormat,
    path: str,
    start: int = 0,
    end: int | None = None,
    chunk_size: int = netlog.DEFAULT_CHUNK,
) -> UnitResult:
    """Scan a whole file (or one byte range of a plain file). Never raises for bad content."""
    res = UnitResult(hits=[], errors=[])
    try:
        for block, used, truncated in netlog.iter_blocks(path, start, end, chunk_size):
            res.bytes_read += used
            if used:
                n, bad = scan_chunk(matcher, fmt, block, res.lines, res.hits, used)
                res.lines += n
                res.unparsable += bad
            if truncated:
                res.errors.append("compressed stream is truncated or corrupt: the rest of the file was not read")
    except OSError as e:
        res.errors.append(f"read failed: {e.strerror or e}")
    return res


def scan_unit_args(args: tuple) -> UnitResult:
    """Pool entry point (a single picklable argument)."""
    return scan_unit(*args)


def scan_events(matcher: Matcher, events: Iterator[tuple[str, datetime, str]]) -> UnitResult:
    """Scan log events ``(stream, time, message)`` (CloudWatch): each message is one line.

    The format is detected per stream from its first message (one log group may
    hold Route 53 JSON in one stream and plain text in another); a message's own
    time beats the event's. Events arrive over an API, so every message is
    checked for shape (there is no bulk to save); the prefilter still decides
    which ones are matched.
    """
    res = UnitResult(hits=[], errors=[])
    formats: dict[str, LogFormat] = {}
    for stream, when, msg in events:
        line = msg.replace("\n", " ").encode("utf-8", "replace")
        fmt = formats.get(stream)
        if fmt is None:
            fmt = netlog.detect_format(line + b"\n")
            if fmt.name == netlog.ZEEK_TSV:  # headers never travel inside single events
                fmt = LogFormat(netlog.TEXT)
            formats[stream] = fmt
        res.lines += 1
        res.bytes_read += len(line) + 1
        if netlog.line_is_bad(fmt, line):
            res.unparsable += 1
        low = line.lower() if matcher.lower else line
        if not any(a in low for a in matcher.anchors):
            continue
        found, _ = examine_line(matcher, fmt, line, default_ts=when)
        for n, field, ts in found:
            res.hits.append((res.lines, n.indicator, n.hit_kind, ts.isoformat() if ts else None, field, _trim(line)))
    return res
