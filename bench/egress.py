"""Benchmark: egress baselines over a generated month of CI runner egress, side by side with ripgrep.

What it does, in one run so both share the machine state:

1. generates a month (``--days``, default 30) of Zeek ``dns.log`` files, one per day as Zeek rotates them, from
   ``--groups`` runner groups of ``--hosts`` runners each (``--lines`` in total, default 30 million). Traffic is
   what CI runners do: package registries and their file hosts (pypi, npm, Docker Hub, ghcr, Maven, Go proxy),
   CDNs with a fresh random subdomain on most lookups (CloudFront, Fastly, Akamai, Azure Edge, Cloudflare),
   telemetry (Sentry, Datadog, Segment ...), per-group project services, and a Zipf long tail of ``--tail``
   registrable domains per group (rare ones first show up late, as real long tails do). A handful of LEGITIMATE new
   destinations appear after the learning week (a new SaaS, a new mirror), and ONE planted exfiltration
   destination is reached once by one runner of one group on day 20;
2. runs ``check_egress`` (the same function `digestguard egress check` and the watch run) over the files with the
   journal in a temporary SQLite file, timed; then ``rg -c -F`` for the planted destination over the same files,
   timed (ripgrep's literal search: the floor for "read every byte once"), interleaved ``--repeat`` times;
3. prints: whether the planted destination was flagged, on its FIRST connection (time and line match the plant),
   with the right group; the false alerts (every other alert, the legitimate new destinations included) per runner
   group per day after learning (goal: at most 1); lines/s and MB/s of both; and ``uptime``.

    .venv/bin/python bench/egress.py                         # the full month: 30 M lines (~3 GB)
    .venv/bin/python bench/egress.py --lines 3000000         # a few minutes on a busy 2-core box
    .venv/bin/python bench/egress.py --lines 3000000 --json  # the figures as one JSON object
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DAY = 86400.0
START = datetime(2026, 3, 1, tzinfo=timezone.utc).timestamp()
PLANTED = "upload.telemetry-cdn-sync.com"  # looks like telemetry; no advisory names it
LEGIT_NEW = ["api.newvendor-saas.io", "mirror.fresh-packages.org", "hooks.slack-alt.dev", "eu.status-provider.net",
             "artifacts.partner-corp.com"]
REGISTRIES = ["pypi.org", "files.pythonhosted.org", "registry.npmjs.org", "registry-1.docker.io", "auth.docker.io",
              "production.cloudflare.docker.com", "ghcr.io", "pkg-containers.githubusercontent.com",
              "repo.maven.apache.org", "repo1.maven.org", "proxy.golang.org", "sum.golang.org", "crates.io",
              "static.crates.io", "rubygems.org", "index.rubygems.org", "api.nuget.org", "deb.debian.org",
              "security.debian.org", "archive.ubuntu.com", "dl-cdn.alpinelinux.org", "github.com", "api.github.com",
              "codeload.github.com", "objects.githubusercontent.com", "gitlab.com", "quay.io", "gcr.io",
              "storage.googleapis.com", "s3.amazonaws.com"]
CDNS = ["cloudfront.net", "fastly.net", "akamaiedge.net", "azureedge.net", "cdn.cloudflare.net", "fastly-edge.com",
        "edgekey.net", "b-cdn.net"]
TELEMETRY = ["o123456.ingest.sentry.io", "http-intake.logs.datadoghq.com", "api.segment.io", "api.mixpanel.com",
             "telemetry.nodejs.org", "stats.g.doubleclick.net", "api.honeycomb.io", "otlp.nr-data.net"]
WORDS = "api cdn static auth edge eu us prod build cache objects blob pkg files media app svc portal data".split()
TLDS = ["com", "net", "org", "io", "dev", "cloud", "co.uk", "de", "app", "sh"]
HEAD = ("#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tdns\n#open\t{day}\n"
        "#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\ttrans_id\tquery\tqtype_name\trcode_name\t"
        "answers\n#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tcount\tstring\tstring\tstring\tvector[string]\n")


def _tail(r: random.Random, n: int) -> list[str]:
    seen: set[str] = set()
    out = []
    while len(out) < n:
        d = f"{r.choice(WORDS)}{r.randint(1, 999)}.{r.choice(['acme', 'globex', 'initech', 'hooli', 'umbrella', 'vandelay', 'wonka', 'stark', 'tyrell', 'cyberdyne'])}-{r.randint(1, 300)}.{r.choice(TLDS)}"
        if d not in seen:
            seen.add(d)
            out.append(d)
    return out


def generate(root: Path, lines: int, days: int, groups: int, hosts: int, seed: int, tail: int = 200) -> dict:
    """Write one dns.log per day; return what was planted (and the runner inventory)."""
    r = random.Random(seed)
    tails = {g: _tail(r, tail) for g in range(groups)}  # each group's own dependencies and services
    weights = [1.0 / (k + 1) ** 1.2 for k in range(tail)]
    project = {g: [f"{w}.group{g}-svc.internal-corp.com" for w in ("api", "db", "cache", "auth")] for g in range(groups)}
    runners = {g: [f"10.{g + 10}.0.{h + 10}" for h in range(hosts)] for g in range(groups)}
    per_day = lines // days
    planted_day, planted_group, planted_host = 20, 1 % groups, 0
    planted_t = START + planted_day * DAY + 13 * 3600 + 17 * 60 + 5.25
    legit = [(START + (9 + 4 * i) * DAY + 11 * 3600 + i * 97, i % groups, h) for i, h in enumerate(LEGIT_NEW)]
    planted_line = None
    for d in range(days):
        path = root / f"dns.{datetime.fromtimestamp(START + d * DAY, tz=timezone.utc):%Y-%m-%d}.log"
        day0 = START + d * DAY
        ts = sorted(day0 + r.random() * DAY for _ in range(per_day))
        extra = [(planted_t, planted_group, PLANTED)] if d == planted_day else []
        extra += [(t, g, h) for t, g, h in legit if day0 <= t < day0 + DAY]
        tail_pick = {g: r.choices(tails[g], weights=weights, k=per_day // 20 // groups + 1) for g in range(groups)}
        out = [HEAD.format(day=f"{datetime.fromtimestamp(day0, tz=timezone.utc):%Y-%m-%d-%H-%M-%S}")]
        line_no = HEAD.count("\n")
        ei = 0
        extra.sort()
        for i, t in enumerate(ts):
            while ei < len(extra) and extra[ei][0] <= t:
                et, eg, eh = extra[ei]
                line_no += 1
                if eh == PLANTED:
                    planted_line = (path.name, line_no)
                out.append(f"{et:.6f}\tCx{ei}\t{runners[eg][planted_host]}\t41000\t10.0.0.2\t53\tudp\t1\t{eh}\tA\tNOERROR\t-\n")
                ei += 1
            g = i % groups
            src = runners[g][(i >> 3) % hosts]
            x = r.random()
            if x < 0.45:
                q = REGISTRIES[int(r.random() * len(REGISTRIES))]
            elif x < 0.80:
                q = f"d{r.getrandbits(40):010x}.{CDNS[int(r.random() * len(CDNS))]}"
            elif x < 0.88:
                q = TELEMETRY[int(r.random() * len(TELEMETRY))]
            elif x < 0.95:
                q = project[g][int(r.random() * 4)]
            else:
                pick = tail_pick[g]
                q = pick[int(r.random() * len(pick))]
            line_no += 1
            out.append(f"{t:.6f}\tC{i:x}\t{src}\t{40000 + (i & 8191)}\t10.0.0.2\t53\tudp\t{i & 65535}\t{q}\tA\tNOERROR\t"
                       f"198.51.100.{i & 255}\n")
        for et, eg, eh in extra[ei:]:
            line_no += 1
            if eh == PLANTED:
                planted_line = (path.name, line_no)
            out.append(f"{et:.6f}\tCx\t{runners[eg][planted_host]}\t41000\t10.0.0.2\t53\tudp\t1\t{eh}\tA\tNOERROR\t-\n")
        path.write_text("".join(out))
    return {"planted": PLANTED, "planted_at": planted_t, "planted_group": f"group-{planted_group}",
            "planted_line": planted_line, "legit_new": LEGIT_NEW, "runners": runners}


def _inventory(root: Path, logs: Path, runners: dict, learning_days: float) -> Path:
    import yaml

    inv = {"network_logs": [{"name": "zeek", "path": str(logs)}],
           "runners": [{"name": f"group-{g}", "hosts": [{"name": f"g{g}-runner-{i}", "address": a}
                                                        for i, a in enumerate(addrs)]} for g, addrs in runners.items()],
           "egress": {"learning_days": learning_days}, "journal": str(root / "journal.sqlite")}
    p = root / "inventory.yaml"
    p.write_text(yaml.safe_dump(inv))
    return p


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=30_000_000, help="lines in the month (default 30 M)")
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--groups", type=int, default=6)
    ap.add_argument("--hosts", type=int, default=4, help="runners per group")
    ap.add_argument("--learning-days", type=float, default=7.0)
    ap.add_argument("--tail", type=int, default=200, help="long-tail registrable domains per group (Zipf 1.2)")
    ap.add_argument("--repeat", type=int, default=1, help="timed rounds of each side (best kept)")
    ap.add_argument("--seed", type=int, default=19)
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from digestguard.inventory import load_inventory
    from digestguard.journal import Journal
    from tasks.egress.check import check_egress

    root = Path(tempfile.mkdtemp(prefix="egress-bench-"))
    try:
        logs = root / "logs"
        logs.mkdir()
        t = time.monotonic()
        plant = generate(logs, args.lines, args.days, args.groups, args.hosts, args.seed, args.tail)
        gen_s = time.monotonic() - t
        files = sorted(logs.iterdir())
        size = sum(f.stat().st_size for f in files)
        for f in files:  # into the page cache for both sides
            with f.open("rb") as fh:
                while fh.read(1 << 24):
                    pass
        inv = load_inventory(_inventory(root, logs, plant["runners"], args.learning_days))
        ours, rg, rep, rg_count = [], [], None, None
        ours_cpu, rg_cpu = [], []
        for _ in range(args.repeat):
            (root / "journal.sqlite").unlink(missing_ok=True)
            j = Journal(root / "journal.sqlite")
            t, c = time.monotonic(), time.process_time()
            rep = check_egress(inv, j, jobs=[], draft=lambda ev, _inv: ev)
            ours.append(time.monotonic() - t)
            ours_cpu.append(time.process_time() - c)
            j.close()
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.monotonic()
            out = subprocess.run(["rg", "-c", "-F", "--no-filename", PLANTED, *map(str, files)], capture_output=True,
                                 text=True)
            rg.append(time.monotonic() - t)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            rg_cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            rg_count = sum(int(x) for x in out.stdout.split())
        assert rep is not None
        lines = rep.lines
        hit = next((e for e in rep.events if e.host == PLANTED), None)
        first_ok = bool(hit and abs(hit.first_at.timestamp() - plant["planted_at"]) < 0.001
                        and plant["planted_line"] and hit.source.endswith(plant["planted_line"][0])
                        and hit.line == plant["planted_line"][1] and hit.group == plant["planted_group"])
        false = [e for e in rep.events if e is not hit]
        judged_days = max(1e-9, args.days - args.learning_days)
        per_group_day = len(false) / (args.groups * judged_days)
        legit_flagged = sorted(e.host for e in false if e.host in LEGIT_NEW)
        best_ours, best_rg = min(ours), min(rg)
        result = {
            "lines": lines, "bytes": size, "files": len(files), "groups": args.groups, "days": args.days,
            "learning_days": args.learning_days, "generate_s": round(gen_s, 1),
            "planted_flagged": hit is not None, "planted_on_first_connection": first_ok,
            "planted_young": bool(hit and hit.young), "planted_rare": bool(hit and hit.rare),
            "false_alerts": len(false), "false_alerts_per_group_per_day": round(per_group_day, 3),
            "legit_new_flagged": legit_flagged, "other_false_alerts": sorted(e.destination for e in false
                                                                             if e.host not in LEGIT_NEW),
            "ours_s": round(best_ours, 2), "ours_lines_per_s": round(lines / best_ours),
            "ours_mb_per_s": round(size / best_ours / 1e6, 1),
            "rg_s": round(best_rg, 2), "rg_mb_per_s": round(size / best_rg / 1e6, 1), "rg_matches": rg_count,
            "ratio_ours_to_rg": round(best_rg / best_ours, 3), "malformed": rep.malformed, "uptime": _uptime(),
            "ours_cpu_s": round(min(ours_cpu), 2), "rg_cpu_s": round(min(rg_cpu), 2),
            "ours_cpu_us_per_line": round(min(ours_cpu) / max(1, lines) * 1e6, 2),
        }
        if args.json:
            print(json.dumps(result, indent=2))
            return
        print(f"{lines:,} lines, {size / 1e6:,.0f} MB in {len(files)} files, {args.groups} groups x {args.hosts} "
              f"runners, {args.days} days ({args.learning_days:g} learning); generated in {gen_s:.0f} s")
        print(f"planted {PLANTED}: flagged={result['planted_flagged']} on its first connection={first_ok} "
              f"young={result['planted_young']} rare={result['planted_rare']}")
        print(f"false alerts: {len(false)} = {per_group_day:.3f} per group per day after learning (goal <= 1); "
              f"legitimate new destinations flagged: {len(legit_flagged)}/{len(LEGIT_NEW)}; "
              f"others: {result['other_false_alerts'][:10]}")
        print(f"egress check: {best_ours:.2f} s = {lines / best_ours:,.0f} lines/s, {size / best_ours / 1e6:.1f} MB/s")
        print(f"rg -c -F:     {best_rg:.2f} s = {size / best_rg / 1e6:.1f} MB/s ({rg_count} match)   "
              f"ours/rg speed = {best_rg / best_ours:.3f}")
        print(f"CPU: egress check {result['ours_cpu_s']} s ({result['ours_cpu_us_per_line']} us/line), "
              f"rg {result['rg_cpu_s']} s (all threads)")
        print(f"uptime: {result['uptime']}")
    finally:
        if args.keep:
            print(f"files kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
