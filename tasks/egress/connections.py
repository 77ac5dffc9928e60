"""Outbound connections out of the network logs the sweep reads: ``(time, source address, destination host)``.

Which field is the source and which the destination, per format:

* Zeek TSV/JSON ``dns.log``: ``id.orig_h`` asked for ``query``; ``http.log``: ``host``;
  ``ssl.log``: ``server_name``; ``conn.log`` (and any other Zeek log): ``id.resp_h``;
* Route 53 Resolver query logs: ``srcaddr`` asked for ``query_name``;
* Squid native ``access.log``: ``client`` fetched ``url`` (``CONNECT host:443`` or ``http://host/...``);
* JSON lines: the first of ``src``/``src_ip``/``source_ip``/``client``/``client_ip``/``srcaddr``/``id.orig_h``
  and of ``query``/``query_name``/``server_name``/``dest_host``/``destination``/``host``/``url``/``dst``/
  ``dest_ip``/``id.resp_h``;
* combined access logs and plain text name no outbound destination: read, counted, never attributed.

Why not :func:`digestguard.netlog.parse_line` for every line: a month of runner
egress is tens of millions of lines, and only three fields matter; Zeek TSV and
Squid are split once on bytes and only those fields are decoded. A line that
does not have its format's shape is counted as malformed, never raised.

Following: :func:`read_new` reads only complete lines appended since the last
stored position (byte offset, line count, inode); a file that shrank or has a
new inode was rotated and is read again from the start; a gzip file is re-read
when its size changes and only lines past the stored count are used.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from pydantic import Field

from digestguard import netlog
from digestguard.egress import clean_host, destination_key
from digestguard.netlog import LogFormat

Observe = Callable[[float, str, str, str, int], None]
"""``(epoch seconds, source address or name, destination host, its registrable domain, line number)`` per connection."""
_MISSING = object()
_CACHE_MAX = 200_000

_SRC_KEYS = ("src", "src_ip", "source_ip", "client", "client_ip", "srcaddr", "id.orig_h", "id_orig_h")
_DST_KEYS = ("query", "query_name", "server_name", "dest_host", "destination", "host", "url", "dst", "dest_ip",
             "id.resp_h", "id_resp_h")
_ZEEK_DEST = {"dns": "query", "http": "host", "ssl": "server_name", "conn": "id.resp_h"}


@dataclass
class Position:
    """Where reading a file stopped: byte offset, complete lines before it, the file's inode."""

    offset: int = 0
    lines: int = 0
    inode: int | None = None


@dataclass
class FileRead:
    """What one read of one file gave: lines, malformed lines, connections, lines naming no destination.

    A plain dataclass (the reader counts into it once per line); the egress report lists it as it is, without
    ``position``, which goes to the journal's offsets instead.
    """

    path: str
    format: str = "-"
    lines: int = 0
    malformed: int = 0
    connections: int = 0
    without_destination: int = 0
    bytes: int = 0
    restarted: bool = False
    errors: list[str] = field(default_factory=list)
    position: Annotated[Position, Field(exclude=True)] = field(default_factory=Position)


def _zeek_columns(fmt: LogFormat) -> tuple[int, int, int] | None:
    """(ts, source, destination) column indexes of a Zeek TSV header, or None when it has no usable destination."""
    cols = {name: i for i, name in enumerate(fmt.fields)}
    path = (fmt.extra or {}).get("path") or ""
    dest = _ZEEK_DEST.get(path)
    if dest is None or dest not in cols:
        dest = next((d for d in ("query", "server_name", "host", "id.resp_h") if d in cols), None)
    if dest is None or "ts" not in cols or "id.orig_h" not in cols:
        return None
    return cols["ts"], cols["id.orig_h"], cols[dest]


def _first(obj: dict, keys: tuple[str, ...]) -> str | None:
    for k in keys:
        v = obj.get(k)
        if isinstance(v, str) and v and v != "-":
            return v
    return None


class LineReader:
    """Turns lines of one format into connections (``feed``), counting malformed ones and those naming no destination."""

    def __init__(self, fmt: LogFormat, stats: FileRead, observe: Observe) -> None:
        self.fmt, self.stats, self.observe = fmt, stats, observe
        self.zeek = _zeek_columns(fmt) if fmt.name == netlog.ZEEK_TSV else None
        self.sep = fmt.separator
        self.width = len(fmt.fields)
        self.json_dest = ("query",) if fmt.name == netlog.ZEEK_JSON else ()
        self._hosts: dict[bytes, tuple[str, str] | None] = {}  # raw destination -> (host, registrable) or None
        self._srcs: dict[bytes, str] = {}

    def feed_lines(self, lines: list[bytes], line_no: int) -> int:
        """Every line of a chunk (numbered from ``line_no + 1``); Zeek TSV in one tight loop. Returns the last number."""
        if self.fmt.name != netlog.ZEEK_TSV or self.zeek is None:
            for line in lines:
                line_no += 1
                self.feed(line, line_no)
            return line_no
        sep, width, observe, stats = self.sep, self.width, self.observe, self.stats
        ts_i, src_i, dst_i = self.zeek
        hosts, srcs = self._hosts, self._srcs
        for line in lines:
            line_no += 1
            if not line or line[0] == 35:  # blank, or a '#' header/close line
                continue
            if line[-1] == 13:  # CRLF
                line = line[:-1]
            parts = line.split(sep)
            if len(parts) != width:
                if line.strip():
                    stats.malformed += 1
                continue
            try:
                ts = float(parts[ts_i])
            except ValueError:
                stats.malformed += 1
                continue
            raw = parts[dst_i]
            hd = hosts.get(raw, _MISSING)
            if hd is _MISSING:
                hd = self._host(raw)
                if hd is _MISSING:
                    stats.malformed += 1
                    continue
            if hd is None:
                stats.without_destination += 1
                continue
            rs = parts[src_i]
            src = srcs.get(rs)
            if src is None:
                try:
                    src = rs.decode("ascii")
                except UnicodeDecodeError:
                    stats.malformed += 1
                    continue
                if len(srcs) < _CACHE_MAX:
                    srcs[rs] = src
            stats.connections += 1
            observe(ts, src, hd[0], hd[1], line_no)  # type: ignore[index]
        return line_no

    def _host(self, raw: bytes) -> object:
        """(host, registrable domain) of a raw Zeek field, None for an unset one, _MISSING when not UTF-8."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return _MISSING
        h = None if text in ("-", "(empty)") else clean_host(text)
        hd = (h, destination_key(h)) if h else None
        if len(self._hosts) < _CACHE_MAX:
            self._hosts[raw] = hd
        return hd

    def feed(self, line: bytes, line_no: int) -> None:
        name = self.fmt.name
        if not line.strip():
            return
        if name == netlog.ZEEK_TSV:
            self._zeek_tsv(line, line_no)
        elif name == netlog.SQUID:
            self._squid(line, line_no)
        elif name in (netlog.ZEEK_JSON, netlog.ROUTE53, netlog.JSONL):
            self._json(line, line_no)
        else:  # combined access logs and text: no outbound destination to attribute
            self.stats.without_destination += 1

    def _bad(self) -> None:
        self.stats.malformed += 1

    def _emit(self, ts: float, src: str | None, host: str | None, line_no: int) -> None:
        h = clean_host(host)
        if not src or not h:
            self.stats.without_destination += 1
            return
        self.stats.connections += 1
        self.observe(ts, src, h, destination_key(h), line_no)

    def _zeek_tsv(self, line: bytes, line_no: int) -> None:
        if line.startswith(b"#"):
            return
        if self.zeek is None:
            self.stats.without_destination += 1
            return
        parts = line.rstrip(b"\r").split(self.sep)
        if len(parts) != self.width:
            return self._bad()
        ts_i, src_i, dst_i = self.zeek
        try:
            ts = float(parts[ts_i])
            src = parts[src_i].decode("ascii")
            dst = parts[dst_i].decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return self._bad()
        self._emit(ts, src, None if dst in ("-", "(empty)") else dst, line_no)

    def _squid(self, line: bytes, line_no: int) -> None:
        parts = line.split()
        if len(parts) < 10:
            return self._bad()
        try:
            ts = float(parts[0])
            src = parts[2].decode("ascii")
            url = parts[6].decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return self._bad()
        self._emit(ts, src, url, line_no)

    def _json(self, line: bytes, line_no: int) -> None:
        try:
            obj = json.loads(line)
        except ValueError:
            return self._bad()
        if not isinstance(obj, dict):
            return self._bad()
        ts_value = None
        for k in ("query_timestamp", "ts", "@timestamp", "timestamp", "time", "eventTime"):
            if k in obj:
                ts_value = obj[k]
                break
        try:
            when = netlog.json_time(ts_value)
        except netlog.LineError:
            when = None
        if when is None:
            return self._bad()
        src = _first(obj, _SRC_KEYS)
        dst = _first(obj, _DST_KEYS)
        if dst is None and isinstance(obj.get("id"), dict):  # Zeek JSON with nested id
            src = src or _first(obj["id"], ("orig_h",))
            dst = _first(obj["id"], ("resp_h",))
        self._emit(when.timestamp(), src, dst, line_no)


def read_new(path: str | os.PathLike[str], pos: Position | None, observe: Observe,
             log_format: str | None = None) -> FileRead:
    """Read the complete lines of ``path`` after ``pos`` (see the module docstring); never raises for bad content.

    Raises :class:`OSError` / :class:`digestguard.errors.InputError` when the file cannot be read at all.
    """
    p = Path(path)
    st = p.stat()
    stats = FileRead(path=str(p))
    head = netlog.read_head(p)
    fmt = netlog.format_by_name(log_format, head) if log_format else netlog.detect_format(head)
    stats.format = fmt.name
    restarted = pos is not None and (st.st_size < pos.offset or (pos.inode is not None and pos.inode != st.st_ino))
    since = Position() if pos is None or restarted else pos
    stats.restarted = restarted
    reader = LineReader(fmt, stats, observe)
    if netlog.is_gzip(p):
        if pos is not None and not restarted and st.st_size == since.offset:
            stats.position = since
            return stats
        total = 0
        for chunk, truncated in netlog.iter_chunks(p):
            lines = _lines(chunk)
            skip = max(0, min(len(lines), since.lines - total))
            stats.lines += len(lines) - skip
            reader.feed_lines(lines[skip:], total + skip)
            total += len(lines)
            if truncated:
                stats.errors.append("gzip stream cut short: read up to the cut")
        stats.bytes = st.st_size
        stats.position = Position(st.st_size, total, st.st_ino)
        return stats
    offset, lines = since.offset, since.lines
    for chunk, _ in netlog.iter_chunks(p, start=offset, end=st.st_size):
        complete = chunk if chunk.endswith(b"\n") else chunk[: chunk.rfind(b"\n") + 1]
        chunk_lines = _lines(complete)
        stats.lines += len(chunk_lines)
        lines = reader.feed_lines(chunk_lines, lines)
        offset += len(complete)
        if len(complete) < len(chunk):
            break  # a last line still being written: the next read takes it whole
    stats.bytes = offset - since.offset
    stats.position = Position(offset, lines, st.st_ino)
    return stats


def _lines(chunk: bytes) -> list[bytes]:
    if not chunk:
        return []
    body = chunk[:-1] if chunk.endswith(b"\n") else chunk
    return body.split(b"\n")


def read_messages(messages: Iterator[tuple[float, str]], observe: Observe, stats: FileRead) -> None:
    """CloudWatch events ``(epoch seconds, message)``: each message is one log line (Route 53 JSON, JSON lines, Squid)."""
    readers: dict[str, LineReader] = {}
    for n, (_ts, msg) in enumerate(messages, start=1):
        raw = msg.encode("utf-8", "replace").rstrip(b"\n")
        fmt = netlog.detect_format(raw + b"\n")
        reader = readers.get(fmt.name) or readers.setdefault(fmt.name, LineReader(fmt, stats, observe))
        stats.lines += 1
        reader.feed(raw, n)
