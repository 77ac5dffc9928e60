"""Writers of the real log formats the sweep reads (Zeek TSV, Squid native, Route 53 Resolver JSON), and CI job
logs in GitHub's runner format, for the egress baseline tests. Times are epoch seconds."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

DAY = 86400.0
T0 = 1775001600.0  # 2026-04-01T00:00:00Z


def zeek_dns(rows: list[tuple[float, str, str]]) -> str:
    """``(ts, source address, query)`` rows as a Zeek dns.log (TSV with its header)."""
    head = ["#separator \\x09", "#set_separator\t,", "#empty_field\t(empty)", "#unset_field\t-", "#path\tdns",
            "#open\t2026-04-01-00-00-00",
            "#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\ttrans_id\tquery\tqtype_name\trcode_name\tanswers",
            "#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tcount\tstring\tstring\tstring\tvector[string]"]
    body = [f"{t:.6f}\tC{n}\t{src}\t{40000 + n % 20000}\t10.0.0.2\t53\tudp\t{n}\t{q}\tA\tNOERROR\t198.51.100.{n % 250}"
            for n, (t, src, q) in enumerate(rows)]
    return "\n".join(head + body) + "\n"


def zeek_conn(rows: list[tuple[float, str, str]]) -> str:
    """``(ts, source address, destination address)`` rows as a Zeek conn.log."""
    head = ["#separator \\x09", "#set_separator\t,", "#empty_field\t(empty)", "#unset_field\t-", "#path\tconn",
            "#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\tduration",
            "#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tstring\tinterval"]
    body = [f"{t:.6f}\tK{n}\t{src}\t{50000 + n % 10000}\t{dst}\t443\ttcp\tssl\t0.2" for n, (t, src, dst) in enumerate(rows)]
    return "\n".join(head + body) + "\n"


def squid(rows: list[tuple[float, str, str]]) -> str:
    """``(ts, client, host or URL)`` rows as Squid native access.log lines (CONNECT for a bare host)."""
    out = []
    for t, client, target in rows:
        if "://" in target:
            out.append(f"{t:.3f}     87 {client} TCP_MISS/200 5120 GET {target} - HIER_DIRECT/{target.split('/')[2]} text/html")
        else:
            out.append(f"{t:.3f}    120 {client} TCP_TUNNEL/200 4312 CONNECT {target}:443 - HIER_DIRECT/{target} -")
    return "\n".join(out) + "\n"


def route53(rows: list[tuple[float, str, str]]) -> str:
    """``(ts, source address, query name)`` rows as Route 53 Resolver query log JSON lines."""
    return "".join(json.dumps({
        "version": "1.100000", "account_id": "123456789012", "region": "us-east-1", "vpc_id": "vpc-0abc",
        "query_timestamp": datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "query_name": q + ".", "query_type": "A", "query_class": "IN", "rcode": "NOERROR", "answers": [],
        "srcaddr": src, "srcport": "53533", "transport": "UDP", "srcids": {"instance": "i-0abc"}}) + "\n"
        for t, src, q in rows)


def daily(days: range, src: str, hosts: list[str], hour: float = 9.0) -> list[tuple[float, str, str]]:
    """Each of ``hosts`` once a day (a minute apart) from ``src``."""
    return [(T0 + d * DAY + hour * 3600 + i * 60, src, h) for d in days for i, h in enumerate(hosts)]


def github_job(at: float, runner: str, *, images: list[tuple[str, str]] = (), actions: list[tuple[str, str]] = (),
               seconds: float = 600, pull_after: list[tuple[str, str]] = ()) -> str:
    """A GitHub Actions job log that ran on ``runner`` for ``seconds``, pulling ``images`` (reference, digest) at the
    start and ``pull_after`` at the end."""
    def ts(s: float) -> str:
        d = datetime.fromtimestamp(at + s, tz=timezone.utc)
        return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond:06d}0Z"

    lines = [f"{ts(0)} Current runner version: '2.333.1'", f"{ts(0.1)} Runner name: '{runner}'",
             f"{ts(0.1)} Machine name: '{runner}'", f"{ts(0.2)} Prepare all required actions"]
    for name, sha in actions:
        lines.append(f"{ts(0.3)} Download action repository '{name}' (SHA:{sha})")
    for k, (ref, digest) in enumerate(images):
        lines += [f"{ts(1 + k)} ##[command]/usr/bin/docker pull {ref}", f"{ts(1.5 + k)} Digest: {digest}",
                  f"{ts(1.6 + k)} Status: Downloaded newer image for {ref}"]
    for k, (ref, digest) in enumerate(pull_after):
        lines += [f"{ts(seconds - 5 + k)} ##[command]/usr/bin/docker pull {ref}", f"{ts(seconds - 4.5 + k)} Digest: {digest}"]
    lines.append(f"{ts(seconds)} Cleaning up orphan processes")
    return "\n".join(lines) + "\n"


def write_inventory(root: Path, **sections: Any) -> Path:
    p = root / "inventory.yaml"
    p.write_text(yaml.safe_dump(sections, sort_keys=False))
    return p
