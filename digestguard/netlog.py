"""Log lines, the domain part of the network sweep: formats, timestamps, line parsers, chunk readers.

Why this module exists: the network sweep must read whatever an organisation
keeps (Zeek ``dns.log``/``http.log`` as TSV or JSON, Route 53 Resolver query
logs, Squid ``access.log``, combined access logs, JSON lines, CloudWatch Logs
events, plain text such as CI job logs) without parsing every line: a 1 GB log
is scanned by a byte prefilter (``tasks/sweep/engine.py``) and only candidate
lines come here. What it holds:

* :func:`detect_format` / :func:`format_by_name`: the format from a file's first bytes, or as named;
* :func:`parse_line`: one line -> ``(timestamp | None, fields)`` or
  :class:`LineError` (bad encoding, truncated, wrong shape); :func:`fallback_timestamp`
  for a line that failed its format;
* timestamps as aware UTC: :func:`epoch_to_utc` (also used for CloudWatch event
  times), :func:`parse_iso`, :func:`parse_clf_time`, :func:`json_time`;
* the structural check: :func:`malformed_lines` (with :func:`shape_bad`, its Hyperscan form
  :func:`structure_patterns`, and :func:`line_is_bad`) counts malformed lines line by line, each
  judged on its own, with C-speed passes per chunk instead of a Python parse per line;
* readers: :func:`iter_chunks` (newline-aligned chunks, gzip read transparently,
  bounded memory), :func:`read_head`, :func:`is_gzip`, :func:`split_ranges`
  (byte ranges for worker processes), :func:`count_byte`.

The CloudWatch Logs client is ``integrations/cloudwatch.py``; which digest a CI
job ran is read by ``digestguard/cilog.py``. Nothing here knows about indicators
or advisories.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from digestguard.errors import InputError
from digestguard.timeutil import parse_time

ZEEK_TSV = "zeek-tsv"
ZEEK_JSON = "zeek-json"
ROUTE53 = "route53"
SQUID = "squid"
COMBINED = "combined"
JSONL = "jsonl"
TEXT = "text"
CLOUDWATCH = "cloudwatch"
FORMATS = (ZEEK_TSV, ZEEK_JSON, ROUTE53, SQUID, COMBINED, JSONL, TEXT)

GZIP_MAGIC = b"\x1f\x8b"
DEFAULT_CHUNK = 1 << 20
"""1 MiB: big enough that per-chunk Python overhead vanishes, small enough to stay in L2 cache."""
MAX_CARRY = 64 << 20
"""A 'line' longer than this is cut and scanned as it is (bounded memory on newline-free input)."""


class LineError(ValueError):
    """A line that does not parse in its file's format (the reason is kept for the report)."""


@dataclass(frozen=True)
class LogFormat:
    """A detected format; for Zeek TSV also the ``#fields`` header and separator."""

    name: str
    fields: tuple[str, ...] = ()
    separator: bytes = b"\t"
    header_lines: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


Parsed = tuple[datetime | None, dict[str, str]]


# ---------------------------------------------------------------- timestamps

_ISO_RE = re.compile(
    r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:?\d{2})?(?![\d:])", re.IGNORECASE
)
_MONTHS = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
_CLF_RE = re.compile(r"(\d{2})/([A-Za-z]{3})/(\d{4}):(\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})")


def epoch_to_utc(value: float | str) -> datetime:
    """Seconds (or milliseconds, when the number is too large to be seconds) since 1970 -> aware UTC."""
    v = float(value)
    if v != v or v in (float("inf"), float("-inf")):
        raise LineError(f"timestamp {value!r} is not a number")
    if abs(v) > 1e11:  # milliseconds (CloudWatch, many JSON loggers)
        v /= 1000.0
    try:
        return datetime.fromtimestamp(v, tz=timezone.utc)
    except (OverflowError, OSError, ValueError) as e:
        raise LineError(f"timestamp {value!r} out of range") from e


def parse_iso(text: str, *, assume_utc: bool = True) -> datetime | None:
    """An ISO 8601 timestamp -> aware UTC; None when ``text`` has none.

    A timestamp without a zone is taken as UTC only when ``assume_utc`` (formats
    that define UTC, e.g. Route 53); free text gets None instead of a guess,
    because a wrong zone would silently move a hit in or out of the window.
    """
    m = _ISO_RE.search(text)
    if not m:
        return None
    date, clock, frac, zone = m.groups()
    if zone is None and not assume_utc:
        return None
    return parse_time(f"{date}T{clock}{frac or ''}{zone or 'Z'}")


def parse_clf_time(text: str) -> datetime | None:
    """``22/Apr/2026:14:20:00 +0000`` (Apache/Squid combined) -> aware UTC."""
    m = _CLF_RE.search(text)
    if not m:
        return None
    d, mon, y, hh, mm, ss, sign, oh, om = m.groups()
    month = _MONTHS.get(mon.lower())
    if month is None:
        return None
    try:
        naive = datetime(int(y), month, int(d), int(hh), int(mm), int(ss))
    except ValueError:
        return None
    offset = (int(oh) * 60 + int(om)) * (1 if sign == "+" else -1)
    return (naive - timedelta(minutes=offset)).replace(tzinfo=timezone.utc)


def json_time(value: Any) -> datetime | None:
    """A JSON timestamp value (epoch number/string or ISO string) -> aware UTC, else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return epoch_to_utc(value)
    if isinstance(value, str):
        s = value.strip()
        if re.fullmatch(r"\d{9,13}(\.\d+)?", s):
            return epoch_to_utc(s)
        return parse_iso(s, assume_utc=True)
    return None


# ---------------------------------------------------------------- parsers

def decode_line(line: bytes) -> str:
    """UTF-8 or :class:`LineError` (bad encoding is a parse failure, counted, never a crash)."""
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LineError(f"not UTF-8 at byte {e.start}") from None


def flatten(value: Any, prefix: str = "", out: dict[str, str] | None = None) -> dict[str, str]:
    """Nested JSON -> ``{"a.b.0.c": "text"}`` so every scalar can be matched and named."""
    out = {} if out is None else out
    if isinstance(value, dict):
        for k, v in value.items():
            flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            flatten(v, f"{prefix}.{i}" if prefix else str(i), out)
    elif value is not None:
        out[prefix or "value"] = value if isinstance(value, str) else json.dumps(value)
    return out


_TS_KEYS = ("query_timestamp", "ts", "@timestamp", "timestamp", "time", "eventTime", "datetime", "date", "Timestamp")


def _json_object(text: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise LineError(f"not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise LineError("JSON line is not an object")
    return obj


def _parse_json(text: str, ts_keys: tuple[str, ...] = _TS_KEYS) -> Parsed:
    obj = _json_object(text)
    ts = None
    for k in ts_keys:
        if k in obj:
            ts = json_time(obj[k])
            if ts is not None:
                break
    fields = flatten(obj)
    _add_url(fields, fields.get("host"), fields.get("uri"))
    return ts, fields


def _add_url(fields: dict[str, str], host: str | None, uri: str | None) -> None:
    """Zeek http.log splits host and uri: join them so URL indicators can match."""
    if host and host != "-" and uri and uri != "-":
        fields["url"] = host + uri if uri.startswith("/") else uri


def _parse_zeek_tsv(text: str, fmt: LogFormat) -> Parsed:
    if text.startswith("#"):
        return None, {}
    sep = fmt.separator.decode("latin-1")
    values = text.split(sep)
    if len(values) != len(fmt.fields):
        raise LineError(f"{len(values)} fields, the #fields header names {len(fmt.fields)}")
    fields = {k: v for k, v in zip(fmt.fields, values, strict=True) if v not in ("-", "(empty)")}
    ts = None
    if "ts" in fields:
        try:
            ts = epoch_to_utc(fields["ts"])
        except ValueError as e:
            raise LineError(f"ts {fields['ts']!r} is not a Zeek time") from e
    _add_url(fields, fields.get("host"), fields.get("uri"))
    return ts, fields


_SQUID_RE = re.compile(
    r"^\s*(?P<ts>\d{9,11}\.\d{1,6})\s+(?P<elapsed>-?\d+)\s+(?P<client>\S+)\s+(?P<code>[A-Z_]+(?:/\d{3})?|NONE\S*)\s+"
    r"(?P<bytes>\d+|-)\s+(?P<method>\S+)\s+(?P<url>\S+)\s+(?P<user>\S+)\s+(?P<hier>\S+)\s+(?P<type>\S+)(?:\s+(?P<rest>.*))?$"
)
_COMBINED_RE = re.compile(
    r'^(?P<client>\S+) (?P<ident>\S+) (?P<user>\S+) \[(?P<time>[^\]]+)\] "(?P<request>(?:[^"\\]|\\.)*)" '
    r'(?P<status>\d{3}|-) (?P<bytes>\d+|-)(?: "(?P<referrer>(?:[^"\\]|\\.)*)" "(?P<user_agent>(?:[^"\\]|\\.)*)")?(?P<rest>.*)$'
)


def _parse_squid(text: str) -> Parsed:
    m = _SQUID_RE.match(text)
    if not m:
        raise LineError("not a Squid native access.log line")
    fields = {k: v for k, v in m.groupdict().items() if v not in (None, "", "-")}
    return epoch_to_utc(m["ts"]), fields


def _parse_combined(text: str) -> Parsed:
    m = _COMBINED_RE.match(text)
    if not m:
        raise LineError("not a combined/common access log line")
    ts = parse_clf_time(m["time"])
    if ts is None:
        raise LineError(f"bad time [{m['time']}]")
    fields = {k: v for k, v in m.groupdict().items() if v not in (None, "", "-")}
    parts = m["request"].split(" ")
    if len(parts) >= 2:
        fields["method"], fields["url"] = parts[0], parts[1]
    return ts, fields


def parse_line(fmt: LogFormat, line: bytes) -> Parsed:
    """One line (without its newline) -> ``(timestamp or None, fields)``; raises :class:`LineError`.

    ``fields`` holds every value worth matching, by name (JSON is flattened, Zeek
    TSV is keyed by the ``#fields`` header; ``url`` is synthesised from
    ``host`` + ``uri`` where a format splits them).
    """
    text = decode_line(line).rstrip("\r")
    if fmt.name == TEXT:
        return parse_iso(text, assume_utc=False), {"line": text}
    if not text.strip():
        return None, {}
    if fmt.name == ZEEK_TSV:
        return _parse_zeek_tsv(text, fmt)
    if fmt.name == ZEEK_JSON:
        return _parse_json(text, ("ts", "_write_ts"))
    if fmt.name == ROUTE53:
        return _parse_json(text, ("query_timestamp",))
    if fmt.name == JSONL:
        return _parse_json(text)
    if fmt.name == SQUID:
        return _parse_squid(text)
    if fmt.name == COMBINED:
        return _parse_combined(text)
    raise InputError(fmt.name, "unknown log format", "format")


def fallback_timestamp(line: bytes) -> datetime | None:
    """Best effort for a line that failed its format: a JSON time key, a CLF time or a zoned ISO time."""
    text = line.decode("utf-8", "replace")
    s = text.lstrip()
    if s.startswith("{"):
        try:
            obj = json.loads(s)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            for k in _TS_KEYS:
                if k in obj:
                    try:
                        ts = json_time(obj[k])
                    except LineError:
                        ts = None
                    if ts is not None:
                        return ts
    m = re.match(r"^\s*(\d{9,10}\.\d{1,6})\s", text)  # Zeek TSV / Squid native
    if m:
        try:
            return epoch_to_utc(m[1])
        except LineError:
            pass
    return parse_clf_time(text) or parse_iso(text, assume_utc=False)


# ---------------------------------------------------------------- detection

def _zeek_header(head: bytes) -> LogFormat | None:
    sep = b"\t"
    fields: tuple[str, ...] = ()
    n = 0
    path = None
    for raw in head.split(b"\n"):
        if not raw.startswith(b"#"):
            break
        n += 1
        if raw.startswith(b"#separator "):
            spec = raw[len(b"#separator "):].strip()
            try:
                sep = spec.decode("ascii").encode("latin-1").decode("unicode_escape").encode("latin-1")
            except (UnicodeError, ValueError):
                sep = b"\t"
        elif raw.startswith(b"#fields"):
            fields = tuple(f.decode("utf-8", "replace") for f in raw.rstrip(b"\r").split(sep)[1:])
        elif raw.startswith(b"#path"):
            path = raw.rstrip(b"\r").split(sep)[-1].decode("utf-8", "replace")
    if not fields:
        return None
    return LogFormat(ZEEK_TSV, fields=fields, separator=sep or b"\t", header_lines=n, extra={"path": path})


def detect_format(head: bytes) -> LogFormat:
    """Choose the format from a file's first bytes (64 KiB is plenty).

    Zeek TSV is recognised by its ``#fields`` header. Otherwise up to 50
    non-empty sample lines are tried with each line format and the one that
    parses the most wins; JSON objects are told apart by their keys (Route 53
    ``query_name``/``query_timestamp``, Zeek ``ts``+``uid``). A tie or a poor
    fit falls back to JSON lines or plain text, which accept anything.
    """
    if head.startswith(b"#separator") or head.startswith(b"#fields") or head.startswith(b"#set_separator"):
        z = _zeek_header(head)
        if z:
            return z
    lines = [ln.rstrip(b"\r") for ln in head.split(b"\n")[:-1] or [head] if ln.strip()][:50]
    if not lines:
        return LogFormat(TEXT)
    json_keys: list[set[str]] = []
    scores = {SQUID: 0, COMBINED: 0}
    for ln in lines:
        s = ln.lstrip()
        if s.startswith(b"{"):
            try:
                obj = json.loads(s)
            except ValueError:
                continue
            if isinstance(obj, dict):
                json_keys.append(set(obj))
            continue
        try:
            text = ln.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if _SQUID_RE.match(text):
            scores[SQUID] += 1
        elif _COMBINED_RE.match(text):
            scores[COMBINED] += 1
    if len(json_keys) * 2 >= len(lines):
        route53 = sum(1 for k in json_keys if {"query_name", "query_timestamp"} <= k)
        zeek = sum(1 for k in json_keys if {"ts", "uid"} <= k or ("ts" in k and "_path" in k))
        if route53 * 2 > len(json_keys):
            return LogFormat(ROUTE53)
        if zeek * 2 > len(json_keys):
            return LogFormat(ZEEK_JSON)
        return LogFormat(JSONL)
    best = max(scores, key=lambda k: scores[k])
    if scores[best] * 2 > len(lines):
        return LogFormat(best)
    return LogFormat(TEXT)


def format_by_name(name: str, head: bytes = b"") -> LogFormat:
    """A format the caller named (``zeek-tsv`` reads its header from ``head``)."""
    if name not in FORMATS:
        raise InputError(name, f"unknown log format (known: {', '.join(FORMATS)})", "format")
    if name == ZEEK_TSV:
        z = _zeek_header(head)
        if z is None:
            raise InputError(name, "a Zeek TSV log needs its #fields header", "format")
        return z
    return LogFormat(name)


# ---------------------------------------------------------------- structural check

SQUID_FIELDS = 10
"""Fields of a Squid native access.log line (time elapsed client code/status bytes method URL user hierarchy type)."""


def _zeek_comment_tabs(fmt: LogFormat, chunk: bytes, stop: int) -> tuple[int, int]:
    """(comment lines, separators inside them) of ``chunk[:stop]``: header blocks carry separators too."""
    n = tabs = 0
    head = chunk.startswith(b"#")
    pos = 0 if head else chunk.find(b"\n#", 0, stop)
    while pos >= 0:
        start = pos if pos == 0 and head else pos + 1
        end = chunk.find(b"\n", start, stop)
        end = stop if end < 0 else end
        n += 1
        tabs += chunk.count(fmt.separator, start, end)
        pos = chunk.find(b"\n#", end, stop)
    return n, tabs


_COUNT_OUT: list = []
_NUMPY: list = []


def _numpy():
    """numpy, imported on first use (0.3 s: not worth paying for a small file), or None."""
    if not _NUMPY:
        try:
            import numpy  # deferred: 0.3 s of start-up that a small file or a CLI call should not pay
        except ImportError:  # pragma: no cover - numpy is a dependency; keep working without it
            numpy = None
        _NUMPY.append(numpy)
    return _NUMPY[0]


def count_byte(chunk: bytes, sep: bytes, start: int = 0, end: int | None = None) -> int:
    """``chunk.count(sep, start, end)``, three times faster for one byte with numpy's SIMD compare.

    The comparison writes into a reused buffer: allocating (and page-faulting) a
    fresh 1 MiB array per call costs as much as the compare itself.
    """
    end = len(chunk) if end is None else end
    n = end - start
    _np = _numpy() if n >= 4096 and len(sep) == 1 else None
    if _np is None:
        return chunk.count(sep, start, end)
    if not _COUNT_OUT or _COUNT_OUT[0].size < n:
        _COUNT_OUT[:] = [_np.empty(max(n, DEFAULT_CHUNK), dtype=bool)]
    out = _COUNT_OUT[0][:n]
    _np.equal(_np.frombuffer(chunk, dtype=_np.uint8, count=n, offset=start), sep[0], out=out)
    return int(_np.count_nonzero(out))


def shape_bad(fmt: LogFormat, line: bytes) -> bool:
    """``line`` (without its newline) is not shaped as ``fmt``'s lines are: the line-local check behind every count.

    Zeek TSV: a data line whose separator count is not the ``#fields`` header's; JSON: a line that does not open
    with ``{`` or close with ``}``; Squid: a line that does not start with its epoch (or a space), or has fewer
    than its ten fields; combined: fewer than two quotes. Blank lines pass. :func:`structure_patterns` is the same check as Hyperscan expressions.
    """
    if fmt.name == ZEEK_TSV:
        return bool(line.strip()) and not line.startswith(b"#") and line.count(fmt.separator) != len(fmt.fields) - 1
    if fmt.name in (ZEEK_JSON, ROUTE53, JSONL):
        tail = line.rstrip(b" \t\r")
        return (line[:1] not in (b"", b"{")) or (tail[-1:] not in (b"", b"}"))
    if fmt.name == SQUID:
        if line[:1] not in (b"", b" ") and not line[:1].isdigit():
            return True
        return len([f for f in line.replace(b"\t", b" ").split(b" ") if f]) < SQUID_FIELDS
    if fmt.name == COMBINED:
        return line.count(b'"') < 2
    return False


def _shapes_clean(fmt: LogFormat, chunk: bytes, nlines: int, stop: int) -> bool:
    """A C-speed proof that no line of the newline-terminated ``chunk[:stop]`` fails :func:`shape_bad` (``False``:
    no proof, look at each line). Zeek TSV's separator sum is exact unless two lines' errors cancel out."""
    if fmt.name == ZEEK_TSV:
        # comment lines (headers, #close) carry separators of their own: looked for only when the sum is off
        per_line = len(fmt.fields) - 1
        tabs = count_byte(chunk, fmt.separator, 0, stop)
        if tabs == nlines * per_line:
            return True
        comments, comment_tabs = _zeek_comment_tabs(fmt, chunk, stop)
        return comments > 0 and tabs - comment_tabs == (nlines - comments) * per_line
    if fmt.name in (ZEEK_JSON, ROUTE53, JSONL):
        return (
            chunk.count(b"}\n", 0, stop) + chunk.count(b"}\r\n", 0, stop) == nlines
            and chunk.count(b"\n{", 0, stop) + chunk.startswith(b"{") == nlines
        )
    return fmt.name not in (SQUID, COMBINED)  # no cheap proof for these two; the other formats have no shape


def structure_patterns(fmt: LogFormat) -> list[bytes] | None:
    """:func:`shape_bad` as Hyperscan (multiline) expressions: each match ends on a line of the wrong shape.

    ``None``: no pattern (Zeek TSV: bounded repeats slow Hyperscan ten-fold; the separator sum is cheaper).
    Lookarounds are not available in Hyperscan, hence the spelled-out classes.
    """
    if fmt.name == ZEEK_TSV:
        return None
    if fmt.name in (ZEEK_JSON, ROUTE53, JSONL):
        return [b"^[^{\\n]", b"[^}\\n\\r \\t][ \\t\\r]*$"]
    if fmt.name == SQUID:  # another kind of line; fewer than ten fields (cut): 4x the scan time, still 1.5 s/GB
        return [b"^[^0-9 \\n]", b"^[ \\t]*[^ \\t\\n]+([ \\t]+[^ \\t\\n]+){0,%d}[ \\t]*$" % (SQUID_FIELDS - 2)]
    if fmt.name == COMBINED:
        return [b'^[^"\\n]*$', b'^[^"\\n]*"[^"\\n]*$']
    return []


def malformed_lines(
    fmt: LogFormat, chunk: bytes, nlines: int, end: int | None = None, flagged: Iterable[int] | None = None
) -> set[int]:
    """Offsets of the malformed lines of ``chunk[:end]``, each judged on its own (so a file counts the same
    however it is cut into blocks or shared among workers).

    A line is malformed when :func:`line_is_bad` says so and it either has the wrong shape (:func:`shape_bad`),
    is not UTF-8, or is a cut last line without its newline. ``flagged``: the wrong-shape line starts a Hyperscan
    pass already found (else they are looked for here, with a C-speed proof first). A line of the right shape
    whose content is wrong elsewhere (a bad Zeek time) is counted when it holds an indicator and is parsed
    (``tasks/sweep/engine.py``), not here: finding it would take a parse of every line.
    """
    stop = len(chunk) if end is None else end
    if stop <= 0:
        return set()
    complete = chunk.endswith(b"\n", 0, stop)
    out: set[int] = set()
    if flagged is None:
        if complete and _shapes_clean(fmt, chunk, nlines, stop):
            flagged = ()
        else:
            flagged = [s for s, line in iter_lines(chunk, stop) if shape_bad(fmt, line)]
    for s in flagged:
        e = chunk.find(b"\n", s, stop)
        if line_is_bad(fmt, chunk[s: stop if e < 0 else e]):
            out.add(s)
    if not chunk.isascii():
        out.update(_undecodable_lines(chunk, stop))
    if not complete:
        last = chunk.rfind(b"\n", 0, stop) + 1
        if line_is_bad(fmt, chunk[last:stop]):
            out.add(last)
    return out


def _undecodable_lines(chunk: bytes, stop: int) -> set[int]:
    """Starts of the lines of ``chunk[:stop]`` that are not UTF-8 (one decode of the rest after each)."""
    out: set[int] = set()
    view = memoryview(chunk)
    pos = 0
    while pos < stop:
        try:
            str(view[pos:stop], "utf-8")
            break
        except UnicodeDecodeError as e:
            at = pos + e.start
            line = chunk.rfind(b"\n", 0, at) + 1
            out.add(line)
            nxt = chunk.find(b"\n", at, stop)
            pos = stop if nxt < 0 else nxt + 1
    return out


def iter_lines(chunk: bytes, end: int | None = None) -> Iterator[tuple[int, bytes]]:
    """``(offset, line)`` for each line of ``chunk[:end]``, without its newline."""
    pos = 0
    end = len(chunk) if end is None else end
    while pos < end:
        nl = chunk.find(b"\n", pos, end)
        if nl < 0:
            nl = end
        yield pos, chunk[pos:nl]
        pos = nl + 1


def line_is_bad(fmt: LogFormat, line: bytes) -> bool:
    """True when ``line`` does not parse in ``fmt`` (blank lines and Zeek comments are fine)."""
    if not line.strip() or (fmt.name == ZEEK_TSV and line.startswith(b"#")):
        return False
    try:
        parse_line(fmt, line)
    except LineError:
        return True
    return False


# ---------------------------------------------------------------- readers

def is_gzip(path: str | Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def read_head(path: str | Path, size: int = 65536) -> bytes:
    """The first ``size`` bytes of the (decompressed) file, for detection and headers."""
    try:
        if is_gzip(path):
            with gzip.open(path, "rb") as g:
                try:
                    return g.read(size)
                except (EOFError, OSError, zlib.error):
                    return b""
        with open(path, "rb") as f:
            return f.read(size)
    except OSError as e:
        raise InputError(str(path), f"cannot read: {e.strerror}") from None


def iter_chunks(
    path: str | Path, start: int = 0, end: int | None = None, chunk_size: int = DEFAULT_CHUNK
) -> Iterator[tuple[bytes, bool]]:
    """Newline-terminated chunks of ``path`` (gzip transparently), as ``(chunk, truncated)``.

    For a plain file, ``start``/``end`` select a byte range; the caller aligns
    them to line starts. Each chunk ends just after a ``\\n`` except possibly the
    last one (a final line without newline). A gzip member cut short yields what
    was decompressed and then ``truncated=True`` on a last (possibly empty) chunk,
    so the caller can report it instead of crashing. Memory stays around
    ``2 * chunk_size`` unless a single line is longer (cut at :data:`MAX_CARRY`).
    The same reading as :func:`iter_blocks`, each block cut to its whole lines (a copy).
    """
    for block, used, truncated in iter_blocks(path, start, end, chunk_size):
        yield (block if used == len(block) else block[:used]), truncated


def iter_blocks(
    path: str | Path, start: int = 0, end: int | None = None, chunk_size: int = DEFAULT_CHUNK
) -> Iterator[tuple[bytes, int, bool]]:
    """:func:`iter_chunks` without the copy: ``(block, used, truncated)``, where ``block[:used]`` is the chunk.

    Why: cutting each 1 MiB block after its last newline copies it (a sixth of a
    1 GB sweep's CPU time, measured); a scanner that takes ``start``/``end``
    arguments (``bytes.count``, ``bytes.find``, Hyperscan, whose matches past ``used`` are dropped)
    reads ``block`` in place. The bytes after ``used`` (the start of a line cut
    by the block's end) are read again at the head of the next block.
    """
    if not is_gzip(path):
        yield from _iter_plain(path, start, end, chunk_size)
        return
    truncated = False
    with open(path, "rb") as raw:
        src = gzip.GzipFile(fileobj=raw, mode="rb")
        carry = b""
        while True:
            try:
                block = src.read(chunk_size)
            except (EOFError, OSError, zlib.error):
                block, truncated = b"", True
            if not block:
                if carry or truncated:
                    yield carry, len(carry), truncated
                return
            data = carry + block if carry else block
            cut = data.rfind(b"\n")
            if cut < 0:
                if len(data) >= MAX_CARRY:
                    yield data + b"\n", len(data) + 1, False
                    carry = b""
                else:
                    carry = data
                continue
            carry = data[cut + 1:]
            yield data, cut + 1, False


def _iter_plain(path: str | Path, start: int, end: int | None, chunk_size: int) -> Iterator[tuple[bytes, int, bool]]:
    """Plain files by ``os.pread``: one kernel copy per block, used up to its last newline.

    Measured here: twice the speed of slicing an mmap (no page faults) and of
    buffered reads plus carry-over concatenation; memory stays at one block.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        stop = size if end is None else min(end, size)
        pos = start
        while pos < stop:
            block = os.pread(fd, min(chunk_size, stop - pos), pos)
            if not block:
                return  # the file shrank under us
            cut = -1
            if pos + len(block) < stop:
                cut = block.rfind(b"\n")
                while cut < 0 and len(block) < MAX_CARRY and pos + len(block) < stop:
                    more = os.pread(fd, min(chunk_size, stop - pos - len(block)), pos + len(block))
                    if not more:
                        break
                    found = more.find(b"\n")
                    block += more
                    if found >= 0:
                        cut = len(block) - len(more) + found
            used = cut + 1 if 0 <= cut < len(block) - 1 else len(block)
            yield block, used, False
            pos += used
    finally:
        os.close(fd)


def split_ranges(path: str | Path, parts: int, min_part: int = 32 << 20) -> list[tuple[int, int]]:
    """Byte ranges of a plain file, each starting at a line start, for parallel scanning."""
    size = Path(path).stat().st_size
    parts = max(1, min(parts, size // min_part or 1))
    cuts = [0]
    with open(path, "rb") as f:
        for i in range(1, parts):
            f.seek(size * i // parts)
            f.readline()
            pos = f.tell()
            if cuts[-1] < pos < size:
                cuts.append(pos)
    cuts.append(size)
    return [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]
