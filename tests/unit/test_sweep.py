"""The network sweep over real files: every format, gzip, broken lines, boundaries, windows.

Both prefilter backends (Hyperscan and the pure-Python ``bytes.find`` one) run
the same cases, so the fallback stays correct on machines without the wheel.
"""

from __future__ import annotations

import gzip
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from digestguard import netlog
from digestguard.advisory import Indicator, Window
from digestguard.errors import InputError
from tasks.sweep import engine as sweep_engine, run as sweep_mod
from tasks.sweep.run import sweep_paths

UTC = timezone.utc
IN = datetime(2026, 4, 22, 14, 20, tzinfo=UTC)  # inside the kics window (starts 12:35, open end)
BEFORE = datetime(2026, 4, 22, 10, 0, tzinfo=UTC)
WINDOW = Window(start=datetime(2026, 4, 22, 12, 35, tzinfo=UTC), source="seed")
KICS = [
    Indicator(kind="domain", value="audit.checkmarx[.]cx", source="seed"),
    Indicator(kind="url_path", value="/v1/telemetry", source="third party"),
    Indicator(kind="user_agent", value="KICS-Telemetry/2.0", source="seed"),
    Indicator(kind="ip", value="94.154.172.43", source="third party"),
]
ZEEK_DNS_FIELDS = (
    "ts uid id.orig_h id.orig_p id.resp_h id.resp_p proto trans_id rtt query qclass qclass_name qtype qtype_name "
    "rcode rcode_name AA TC RD RA Z answers TTLs rejected"
).split()
ZEEK_HTTP_FIELDS = (
    "ts uid id.orig_h id.orig_p id.resp_h id.resp_p trans_depth method host uri referrer version user_agent "
    "request_body_len response_body_len status_code status_msg"
).split()


@pytest.fixture(params=["hyperscan", "python"])
def engine(request, monkeypatch):
    """Run each test with both prefilter backends."""
    if request.param == "hyperscan":
        pytest.importorskip("hyperscan")
        monkeypatch.delenv("DIGESTGUARD_SWEEP_ENGINE", raising=False)
    else:
        monkeypatch.setenv("DIGESTGUARD_SWEEP_ENGINE", "python")
    assert sweep_engine.backend() == request.param
    return request.param


def zeek_tsv(path_name: str, fields: list[str], rows: list[list[str]]) -> str:
    head = [
        "#separator \\x09", "#set_separator\t,", "#empty_field\t(empty)", "#unset_field\t-",
        f"#path\t{path_name}", "#open\t2026-04-22-14-00-00", "#fields\t" + "\t".join(fields),
        "#types\t" + "\t".join("string" for _ in fields),
    ]
    return "\n".join(head + ["\t".join(r) for r in rows] + ["#close\t2026-04-22-15-00-00"]) + "\n"


def dns_row(ts: datetime, query: str, answers: str = "-") -> list[str]:
    return [f"{ts.timestamp():.6f}", "CAbc123", "10.0.0.5", "53211", "10.0.0.2", "53", "udp", "4711", "0.001",
            query, "1", "C_INTERNET", "1", "A", "0", "NOERROR", "F", "F", "T", "T", "0", answers, "300.0", "F"]


def http_row(ts: datetime, host: str, uri: str, ua: str, resp: str = "10.9.9.9") -> list[str]:
    return [f"{ts.timestamp():.6f}", "CHttp1", "10.0.0.5", "40000", resp, "80", "1", "POST", host, uri, "-",
            "1.1", ua, "123", "0", "200", "OK"]


def hits_by_line(res) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for h in res.hits:
        out.setdefault(h.line, set()).add(f"{h.kind}:{h.indicator}")
    return out


# ---------------------------------------------------------------- formats

def test_zeek_dns_tsv_label_boundaries_and_whole_ips(tmp_path: Path, engine: str) -> None:
    rows = [
        dns_row(IN, "x.audit.checkmarx.cx"),                  # line 9: subdomain -> hit
        dns_row(IN, "audit.checkmarx.cx.example.net"),        # 10: suffix of another name -> no
        dns_row(IN, "notaudit.checkmarx.cx"),                 # 11: label glued -> no
        dns_row(IN, "www.example.com", "194.154.172.43,94.154.172.431"),  # 12: not whole IPs -> no
        dns_row(BEFORE, "AUDIT.CheckMarx.CX", "94.154.172.43"),  # 13: case-insensitive, before window
    ]
    p = tmp_path / "dns.log"
    p.write_text(zeek_tsv("dns", ZEEK_DNS_FIELDS, rows))
    res = sweep_paths([p], KICS, WINDOW)
    assert hits_by_line(res) == {9: {"domain:audit.checkmarx.cx"}, 13: {"domain:audit.checkmarx.cx", "ip:94.154.172.43"}}
    first = res.hits[0]
    assert (first.path, first.timestamp, first.in_window) == (str(p), IN, True)
    assert all(h.in_window is False for h in res.hits if h.line == 13)
    (stats,) = res.files
    assert (stats.format, stats.lines, stats.unparsable, stats.hits) == ("zeek-tsv", 14, 0, 3)


def test_zeek_http_tsv_url_path_user_agent_and_joined_url(tmp_path: Path, engine: str) -> None:
    rows = [
        http_row(IN, "audit.checkmarx.cx", "/v1/telemetry", "KICS-Telemetry/2.0", resp="94.154.172.43"),
        http_row(IN, "example.com", "/api/v1/telemetry", "KICS-Telemetry/2.01"),  # neither path nor UA version match
        http_row(IN, "example.com", "/v1/telemetry?id=7", "Mozilla/5.0 kics-telemetry/2.0 (linux)"),
    ]
    p = tmp_path / "http.log"
    p.write_text(zeek_tsv("http", ZEEK_HTTP_FIELDS, rows))
    url = Indicator(kind="url", value="hxxps://audit[.]checkmarx[.]cx/v1/telemetry", source="t")
    res = sweep_paths([p], [*KICS, url], WINDOW)
    assert hits_by_line(res) == {
        9: {"domain:audit.checkmarx.cx", "url:/v1/telemetry", "user_agent:KICS-Telemetry/2.0", "ip:94.154.172.43",
            "url:https://audit.checkmarx.cx/v1/telemetry"},
        11: {"url:/v1/telemetry", "user_agent:KICS-Telemetry/2.0"},
    }
    assert {h.kind for h in res.hits} == {"domain", "url", "user_agent", "ip"}  # url_path reported as url


def test_zeek_json_epoch_and_iso_timestamps(tmp_path: Path, engine: str) -> None:
    lines = [
        {"ts": IN.timestamp(), "uid": "C1", "id.orig_h": "10.0.0.5", "query": "audit.checkmarx.cx", "answers": ["94.154.172.43"]},
        {"ts": "2026-04-22T10:00:00.000000Z", "uid": "C2", "query": "a.audit.checkmarx.cx"},
        {"ts": IN.timestamp(), "uid": "C3", "query": "example.org"},
    ]
    p = tmp_path / "dns.json"
    p.write_text("".join(json.dumps(x) + "\n" for x in lines))
    res = sweep_paths([p], KICS, WINDOW)
    assert res.files[0].format == "zeek-json"
    assert hits_by_line(res) == {1: {"domain:audit.checkmarx.cx", "ip:94.154.172.43"}, 2: {"domain:audit.checkmarx.cx"}}
    assert [(h.line, h.timestamp, h.in_window) for h in res.hits if h.kind == "domain"] == [(1, IN, True), (2, BEFORE, False)]


def test_route53_resolver_trailing_dot_and_answers(tmp_path: Path, engine: str) -> None:
    def q(name: str, ts: str, rdata: str = "203.0.113.9") -> str:
        return json.dumps({
            "version": "1.100000", "account_id": "111122223333", "region": "us-east-1", "vpc_id": "vpc-0abc",
            "query_timestamp": ts, "query_name": name, "query_type": "A", "query_class": "IN", "rcode": "NOERROR",
            "answers": [{"Rdata": rdata, "Type": "A", "Class": "IN"}], "srcaddr": "10.0.0.5", "srcport": "53211",
            "transport": "UDP", "srcids": {"instance": "i-0abc"},
        })
    p = tmp_path / "resolver.log"
    p.write_text("\n".join([
        q("Audit.Checkmarx.CX.", "2026-04-22T14:20:00Z", "94.154.172.43"),
        q("audit.checkmarx.cx.example.net.", "2026-04-22T14:21:00Z"),
        q("github.com.", "2026-04-22T14:22:00Z"),
    ]) + "\n")
    res = sweep_paths([p], KICS, WINDOW)
    assert res.files[0].format == "route53"
    assert hits_by_line(res) == {1: {"domain:audit.checkmarx.cx", "ip:94.154.172.43"}}
    assert res.hits[0].timestamp == IN and res.hits[0].in_window is True


def test_squid_native_and_combined(tmp_path: Path, engine: str) -> None:
    native = tmp_path / "access.log"
    native.write_text(
        f"{IN.timestamp():.3f}    245 10.0.0.5 TCP_MISS/200 1532 POST http://audit.checkmarx.cx/v1/telemetry - HIER_DIRECT/94.154.172.43 application/json\n"
        f"{IN.timestamp():.3f}     12 10.0.0.6 TCP_TUNNEL/200 4000 CONNECT audit.checkmarx.cx:443 - HIER_DIRECT/94.154.172.43 -\n"
        f"{IN.timestamp():.3f}     12 10.0.0.7 TCP_MISS/200 99 GET http://example.com/v1/telemetry.json - HIER_DIRECT/10.1.1.1 text/html\n"
    )
    combined = tmp_path / "access-combined.log"
    combined.write_text(
        '10.0.0.5 - - [22/Apr/2026:16:20:00 +0200] "POST http://audit.checkmarx.cx/v1/telemetry HTTP/1.1" 200 1532 "-" "KICS-Telemetry/2.0" TCP_MISS:HIER_DIRECT\n'
        '10.0.0.6 - - [22/Apr/2026:16:21:00 +0200] "GET http://example.com/ HTTP/1.1" 200 10 "-" "curl/8.5" TCP_MISS:HIER_DIRECT\n'
    )
    res = sweep_paths([native, combined], KICS, WINDOW)
    assert [f.format for f in res.files] == ["squid", "combined"]
    by = {(h.path, h.line, h.kind, h.indicator) for h in res.hits}
    assert by == {
        (str(native), 1, "domain", "audit.checkmarx.cx"), (str(native), 1, "url", "/v1/telemetry"),
        (str(native), 1, "ip", "94.154.172.43"),
        (str(native), 2, "domain", "audit.checkmarx.cx"), (str(native), 2, "ip", "94.154.172.43"),
        (str(combined), 1, "domain", "audit.checkmarx.cx"), (str(combined), 1, "url", "/v1/telemetry"),
        (str(combined), 1, "user_agent", "KICS-Telemetry/2.0"),
    }
    assert {h.timestamp for h in res.hits} == {IN}  # +0200 converted to UTC


def test_plain_text_ci_log_and_json_lines_fallback(tmp_path: Path, engine: str) -> None:
    ci = tmp_path / "job.log"
    ci.write_text(
        "2026-04-22T14:20:00.1234567Z ##[group]Run kics scan\n"
        "2026-04-22T14:20:01.0000000Z POST https://audit.checkmarx.cx/v1/telemetry 200\n"
        "2026-04-22 14:20:02 curl -A KICS-Telemetry/2.0 http://94.154.172.43/\n"  # no zone: no timestamp guessed
    )
    jl = tmp_path / "app.jsonl"
    jl.write_text(json.dumps({"@timestamp": "2026-04-22T14:20:00Z", "msg": "sent"}) + "\n"
                  + '{"time": 1776867600000, "url": "https:\\/\\/example.com\\/v1\\/telemetry"}\n')
    res = sweep_paths([ci, jl], KICS, WINDOW)
    assert [f.format for f in res.files] == ["text", "jsonl"]
    got = {(Path(h.path).name, h.line, h.kind, h.timestamp, h.in_window) for h in res.hits}
    stamp = datetime(2026, 4, 22, 14, 20, 1, tzinfo=UTC)
    assert got == {
        ("job.log", 2, "domain", stamp, True), ("job.log", 2, "url", stamp, True),
        ("job.log", 3, "user_agent", None, None), ("job.log", 3, "ip", None, None),
        ("app.jsonl", 2, "url", IN, True),  # JSON-escaped slashes, epoch milliseconds
    }


def test_gzip_is_transparent_and_truncation_is_reported(tmp_path: Path, engine: str) -> None:
    rows = [dns_row(IN, f"host{i}.example.com") for i in range(2000)] + [dns_row(IN, "audit.checkmarx.cx")]
    text = zeek_tsv("dns", ZEEK_DNS_FIELDS, rows)
    gz = tmp_path / "dns.log.gz"
    gz.write_bytes(gzip.compress(text.encode()))
    res = sweep_paths([gz], KICS, WINDOW, chunk_size=4096)
    assert hits_by_line(res) == {2009: {"domain:audit.checkmarx.cx"}}
    assert (res.files[0].format, res.files[0].lines, res.files[0].errors) == ("zeek-tsv", 2010, [])

    cut = tmp_path / "cut.log.gz"
    data = gzip.compress(text.encode())
    cut.write_bytes(data[: len(data) // 2])
    res = sweep_paths([cut], KICS, WINDOW, chunk_size=4096)
    (st_,) = res.files
    assert st_.errors and "truncated" in st_.errors[0]
    assert 0 < st_.lines < 2010 and res.hits == []


def test_corrupt_lines_are_counted_and_still_matched(tmp_path: Path, engine: str) -> None:
    good = "\t".join(dns_row(IN, "example.com"))
    lines = [
        good,
        "\t".join(dns_row(IN, "audit.checkmarx.cx"))[:120],   # truncated, still holds the domain -> counted AND hit
        "\t".join(dns_row(IN, "example.org")).replace("example.org", "caf\xe9").encode("latin-1").decode("latin-1"),
        "this is not zeek at all",
        good,
    ]
    p = tmp_path / "dns.log"
    body = zeek_tsv("dns", ZEEK_DNS_FIELDS, []).replace("#close", "\n".join(lines) + "\n#close")
    p.write_bytes(body.encode("latin-1"))  # the é becomes a lone 0xE9 byte: not UTF-8
    res = sweep_paths([p], KICS, WINDOW)
    (st_,) = res.files
    assert (st_.lines, st_.unparsable) == (14, 3)
    assert hits_by_line(res) == {10: {"domain:audit.checkmarx.cx"}}
    assert res.hits[0].timestamp == IN  # taken from the broken line's leading epoch


def test_truncated_last_json_line(tmp_path: Path, engine: str) -> None:
    p = tmp_path / "resolver.log"
    full = json.dumps({"query_timestamp": "2026-04-22T14:20:00Z", "query_name": "example.com.", "srcaddr": "10.0.0.5"})
    p.write_text(full + "\n" + full + "\n" + '{"query_timestamp": "2026-04-22T14:20:00Z", "query_name": "audit.checkm')
    res = sweep_paths([p], KICS, WINDOW)
    assert (res.files[0].lines, res.files[0].unparsable) == (3, 1)
    assert res.hits == []  # the domain was cut: no boundary-confirmed hit


# ---------------------------------------------------------------- windows, inputs, output

def test_window_flags_with_closed_end(tmp_path: Path, engine: str) -> None:
    after = datetime(2026, 4, 22, 16, 0, tzinfo=UTC)
    p = tmp_path / "dns.log"
    p.write_text(zeek_tsv("dns", ZEEK_DNS_FIELDS, [dns_row(t, "audit.checkmarx.cx") for t in (BEFORE, IN, after)]))
    closed = Window(start=WINDOW.start, end=datetime(2026, 4, 22, 15, 41, 31, tzinfo=UTC), source="third party")
    assert [h.in_window for h in sweep_paths([p], KICS, closed).hits] == [False, True, False]
    assert [h.in_window for h in sweep_paths([p], KICS, WINDOW).hits] == [False, True, True]
    assert [h.in_window for h in sweep_paths([p], KICS, None).hits] == [None, None, None]


def test_defanged_pairs_directories_and_json_shape(tmp_path: Path, engine: str) -> None:
    d = tmp_path / "logs"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "a.log").write_text("2026-04-22T14:20:00Z GET hxxp://x.audit.checkmarx.cx/ from 94.154.172.43\n")
    (d / "b.log").write_text("nothing here\n")
    res = sweep_paths([d], [("domain", "audit[.]checkmarx[.]cx"), ("ip", "94[.]154[.]172[.]43")], WINDOW)
    out = json.loads(json.dumps(res.to_json_dict()))
    assert [Path(f["path"]).name for f in out["files"]] == ["b.log", "a.log"]
    assert [(h["line"], h["indicator"], h["kind"], h["timestamp"], h["in_window"]) for h in out["hits"]] == [
        (1, "audit.checkmarx.cx", "domain", "2026-04-22T14:20:00Z", True),
        (1, "94.154.172.43", "ip", "2026-04-22T14:20:00Z", True),
    ]
    assert set(out["hits"][0]) >= {"path", "line", "indicator", "kind", "timestamp", "in_window"}
    assert out["totals"] == {"files": 2, "lines": 2, "unparsable": 0, "hits": 2, "hits_in_window": 2}


def test_missing_path_and_bad_indicator_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        sweep_paths([tmp_path / "nope.log"], KICS, WINDOW)
    with pytest.raises(InputError, match="domain:not a domain!: indicator: .*not a domain name"):
        sweep_paths([tmp_path], [("domain", "not a domain!")], WINDOW)


def test_chunk_boundaries_and_parallel_ranges_agree(tmp_path: Path, monkeypatch, engine: str) -> None:
    rows = []
    for i in range(3000):
        rows.append(dns_row(IN, "audit.checkmarx.cx" if i % 397 == 5 else f"h{i}.example.com",
                            "94.154.172.43" if i % 911 == 3 else "203.0.113.1"))
    p = tmp_path / "dns.log"
    p.write_text(zeek_tsv("dns", ZEEK_DNS_FIELDS, rows))
    base = sweep_paths([p], KICS, WINDOW, workers=1)
    small = sweep_paths([p], KICS, WINDOW, workers=1, chunk_size=97)
    monkeypatch.setattr(sweep_mod, "PARALLEL_MIN_BYTES", 4096)
    par = sweep_paths([p], KICS, WINDOW, workers=2)
    assert len(base.hits) == 8 + 4
    assert base.hits == small.hits == par.hits
    assert base.files[0].lines == small.files[0].lines == par.files[0].lines == 3009


# ---------------------------------------------------------------- properties

LABELS = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
DOMAIN = Indicator(kind="domain", value="audit.checkmarx.cx", source="t")
IP = Indicator(kind="ip", value="94.154.172.43", source="t")


def _matches(ind: Indicator, text: str) -> bool:
    matcher = sweep_engine.compile_matcher([(ind.kind, ind.value)])
    return bool(sweep_engine.confirm_fields(matcher, {"raw": text}))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sub=st.lists(LABELS, max_size=3), glue=LABELS, tail=LABELS, dot=st.booleans(), upper=st.booleans())
def test_domain_matches_only_at_label_boundaries(sub: list[str], glue: str, tail: str, dot: bool, upper: bool) -> None:
    name = ".".join([*sub, "audit.checkmarx.cx"]) + ("." if dot else "")
    name = name.upper() if upper else name
    assert _matches(DOMAIN, f"query {name} A")
    assert _matches(DOMAIN, f'"{name}"')
    assert not _matches(DOMAIN, f"query {glue}audit.checkmarx.cx A")
    assert not _matches(DOMAIN, f"query audit.checkmarx.cx.{tail} A")
    assert not _matches(DOMAIN, f"query audit.checkmarx.cx{tail} A")


@settings(max_examples=100, deadline=None)
@given(pre=st.integers(0, 9), post=st.integers(0, 9), sep=st.sampled_from([" ", ",", "/", ":", "\t", "[", "="]))
def test_ip_matches_whole_addresses_only(pre: int, post: int, sep: str) -> None:
    assert _matches(IP, f"a{sep}94.154.172.43{sep}b")
    assert _matches(IP, "answers 94.154.172.43.")
    assert not _matches(IP, f"a {pre}94.154.172.43 b")
    assert not _matches(IP, f"a 94.154.172.43{post} b")
    assert not _matches(IP, "a 1.94.154.172.43 b")
    assert not _matches(IP, f"a 94.154.172.43.{post} b")


def test_format_detection() -> None:
    assert netlog.detect_format(zeek_tsv("dns", ZEEK_DNS_FIELDS, [dns_row(IN, "a.b")]).encode()).fields == tuple(ZEEK_DNS_FIELDS)
    assert netlog.detect_format(b'{"ts": 1, "uid": "C"}\n').name == "zeek-json"
    assert netlog.detect_format(b'{"query_name": "a.", "query_timestamp": "2026-04-22T14:20:00Z"}\n').name == "route53"
    assert netlog.detect_format(b'{"a": 1}\n').name == "jsonl"
    assert netlog.detect_format(b"1776867600.000    245 10.0.0.5 TCP_MISS/200 1 GET http://a/ - HIER_DIRECT/1.2.3.4 -\n").name == "squid"
    assert netlog.detect_format(b"hello\nworld\n").name == "text"
    assert netlog.detect_format(b"").name == "text"


ROUTE53_LINE = json.dumps({"query_timestamp": "2026-04-22T14:20:00Z", "query_name": "example.com.", "srcaddr": "10.0.0.5"})
SQUID_LINE = f"{IN.timestamp():.3f}    245 10.0.0.5 TCP_MISS/200 1532 GET http://example.com/ - HIER_DIRECT/10.1.1.1 text/html"
COMBINED_LINE = '10.0.0.5 - - [22/Apr/2026:14:20:00 +0000] "GET http://example.com/ HTTP/1.1" 200 10 "-" "curl/8.5" TCP_MISS:HIER_DIRECT'


@pytest.mark.parametrize(
    ("good", "fmt"), [(ROUTE53_LINE, "route53"), (SQUID_LINE, "squid"), (COMBINED_LINE, "combined")]
)
def test_malformed_lines_counted_in_every_format(tmp_path: Path, engine: str, good: str, fmt: str) -> None:
    bad_lines = [good[: len(good) // 3], "kernel: oops at audit.checkmarx.cx"]
    lines = [good] * 3000 + bad_lines + [good] * 3000  # several chunks: the bad ones sit in the middle
    p = tmp_path / "log"
    p.write_bytes(("\n".join(lines) + "\n").encode())
    res = sweep_paths([p], KICS, WINDOW, chunk_size=16384)
    (st_,) = res.files
    assert (st_.format, st_.lines, st_.unparsable) == (fmt, 6002, 2)
    assert [(h.line, h.indicator, h.timestamp) for h in res.hits] == [(3002, "audit.checkmarx.cx", None)]


def test_empty_and_newline_free_files(tmp_path: Path, engine: str) -> None:
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    one = tmp_path / "one.log"
    one.write_bytes(b"GET http://audit.checkmarx.cx/v1/telemetry")  # no trailing newline
    res = sweep_paths([empty, one], KICS, WINDOW)
    assert [(f.lines, f.unparsable, f.errors) for f in res.files] == [(0, 0, []), (1, 0, [])]
    assert {(h.line, h.kind) for h in res.hits} == {(1, "domain"), (1, "url")}


@pytest.mark.parametrize("chunk_size", [61, 97, 4096])
@pytest.mark.parametrize("compressed", [False, True])
def test_block_tails_are_read_once(tmp_path: Path, engine: str, chunk_size: int, compressed: bool) -> None:
    """Blocks are read in place up to their last newline (no copy): the cut line after it belongs to the next block.

    Hits, short Zeek lines and bytes that are not UTF-8 sit at every distance from the block ends; each is counted
    and matched once, as when the whole file is one block, and the reader's two views (``iter_blocks`` in place,
    ``iter_chunks`` cut) hold the same lines.
    """
    rows: list[bytes] = []
    hits = short = broken = 0
    for i in range(700):
        row = dns_row(IN, "audit.checkmarx.cx" if i % 7 == 3 else f"h{i}.example.com")
        line = "\t".join(row).encode()
        if i % 17 == 5:
            line, short = line.rsplit(b"\t", 3)[0], short + 1
        elif i % 13 == 4:
            line, broken = line.replace(b"CAbc", b"CA\xff\xfe", 1), broken + 1
        hits += i % 7 == 3
        rows.append(line)
    data = zeek_tsv("dns", ZEEK_DNS_FIELDS, []).encode().replace(b"#close\t2026-04-22-15-00-00\n", b"")
    data += b"\n".join(rows) + b"\n"
    p = tmp_path / ("dns.log.gz" if compressed else "dns.log")
    p.write_bytes(gzip.compress(data) if compressed else data)

    whole = sweep_paths([p], KICS, WINDOW, workers=1)
    cut = sweep_paths([p], KICS, WINDOW, workers=1, chunk_size=chunk_size)
    assert (whole.files[0].lines, whole.files[0].unparsable) == (8 + 700, short + broken)
    assert len({h.line for h in whole.hits}) == hits
    assert cut.hits == whole.hits
    assert (cut.files[0].lines, cut.files[0].unparsable, cut.files[0].bytes) == (
        whole.files[0].lines, whole.files[0].unparsable, len(data))
    blocks = [b[:used] for b, used, _ in netlog.iter_blocks(p, chunk_size=chunk_size)]
    assert blocks == [c for c, _ in netlog.iter_chunks(p, chunk_size=chunk_size)]
    assert b"".join(blocks) == data and all(b.endswith(b"\n") for b in blocks)


@pytest.mark.parametrize(("good", "fmt"), [(ROUTE53_LINE, "route53"), (SQUID_LINE, "squid"), (COMBINED_LINE, "combined")])
def test_malformed_counts_do_not_depend_on_blocks_or_workers(tmp_path: Path, monkeypatch, engine: str,
                                                             fmt: str, good: str) -> None:
    """The same file gives the same counts however it is cut: in blocks of any size (Hyperscan reads each whole
    block, the cut line after its last newline too, and must leave a match there to the next block) and among
    workers. Lines cut in half, lines that do not start as their format does, non-UTF-8 lines and hits sit at every
    distance from the block ends. Each line is judged on its own (before, a chunk holding one broken line had all
    its lines parsed, so one file gave 42, 46 or 96 for its 97 broken Squid lines depending on the block size).

    What is counted, by format: a JSON line that does not open with ``{`` or close with ``}``; a Squid line that
    does not start with its epoch or has fewer than ten fields; a combined line with fewer than two quotes (one
    prefixed with ``x`` still parses); a line that is not UTF-8, in any format.
    """
    lines: list[str] = []
    cut = prefixed = 0
    for i in range(600):
        line = good.replace("example.com", "audit.checkmarx.cx") if i % 7 == 3 else good
        if i % 11 == 5:
            line = line[: len(line) // 2]  # cut inside the request, before any closing brace or quote
            cut += 1
        elif i % 13 == 6:
            line, prefixed = "x" + line, prefixed + 1
        lines.append(line)
    data = ("\n".join(lines) + "\n").encode()
    data = data.replace(b"10.0.0.5", b"10.0.\xff.5", 4)  # not UTF-8: four lines
    expected = {"route53": cut + prefixed + 4, "squid": cut + prefixed + 4, "combined": cut + 4}[fmt]
    p = tmp_path / "log"
    p.write_bytes(data)
    whole = sweep_paths([p], KICS, WINDOW, workers=1)
    assert (whole.files[0].format, whole.files[0].lines, whole.files[0].unparsable) == (fmt, 600, expected)
    assert len({h.line for h in whole.hits}) == sum("audit.checkmarx.cx" in line for line in lines) > 0
    for chunk_size in (83, 211, 4096):
        blocks = sweep_paths([p], KICS, WINDOW, workers=1, chunk_size=chunk_size)
        assert (blocks.files[0].lines, blocks.files[0].unparsable) == (600, expected), chunk_size
        assert blocks.hits == whole.hits
    monkeypatch.setattr(sweep_mod, "PARALLEL_MIN_BYTES", 4096)
    shared = sweep_paths([p], KICS, WINDOW, workers=2, chunk_size=211)
    assert (shared.files[0].lines, shared.files[0].unparsable, shared.hits) == (600, expected, whole.hits)


SHAPE_CHARS = st.sampled_from(list('{}"\r0123456789abcx:.,/-') + ["\xff", "é"])
SHAPE_LINE = st.builds(
    lambda lead, parts, end: lead + "".join(tok + sep for tok, sep in parts)[: None if end else -1],
    st.sampled_from(["", " ", "\t", "{", '"', "x", "1"]),
    st.lists(st.tuples(st.text(SHAPE_CHARS, min_size=1, max_size=5), st.sampled_from([" ", "\t", "  ", " \t"])),
             max_size=12),  # around Squid's ten fields
    st.booleans(),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(SHAPE_LINE, min_size=1, max_size=12),
       fmt=st.sampled_from(["route53", "squid", "combined", "jsonl"]))
def test_hyperscan_structure_patterns_are_shape_bad(lines: list[str], fmt: str) -> None:
    """Hyperscan's structure patterns and the Python shape check flag the same malformed lines, so both backends
    count the same file alike: any mix of braces, quotes, blanks, tabs, carriage returns and non-UTF-8 bytes."""
    pytest.importorskip("hyperscan")
    log = netlog.LogFormat(fmt)
    chunk = ("\n".join(lines) + "\n").encode().replace("\xff".encode(), b"\xff")  # a byte that is never UTF-8
    nlines = chunk.count(b"\n")
    matcher = sweep_engine.compile_matcher([("domain", "audit.checkmarx.cx")])
    _, flagged = sweep_engine.scan_offsets(matcher, log, chunk, use="hyperscan")
    assert flagged is not None
    by_hyperscan = netlog.malformed_lines(log, chunk, nlines, flagged=flagged)
    by_python = netlog.malformed_lines(log, chunk, nlines)
    assert by_hyperscan == by_python
    assert by_python == {s for s, line in netlog.iter_lines(chunk)
                         if netlog.line_is_bad(log, line) and (netlog.shape_bad(log, line) or b"\xff" in line)}
