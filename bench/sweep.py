"""Benchmark: the network sweep vs ``grep -F -i -n -f`` and ``rg -F -i -n -f`` on one big log.

What it does, in one run so the three share the same machine state:

1. generates a Zeek ``dns.log``/``http.log``-style TSV file (``--size-mb``,
   default 1024) of realistic DNS and HTTP lines with about one hit per
   100,000 lines (plus near-miss decoys such as ``notaudit.checkmarx.cx`` and
   ``194.154.172.43`` that grep counts and the sweep must not), or reuses
   ``--file``;
2. reads it once so it is in the page cache, then times GNU grep, ripgrep and
   ``sweep_paths`` in interleaved rounds (``--repeat``, best kept), every output
   going to a file (GNU grep stops at the first match when writing to /dev/null);
3. prints MB/s, the ratios to grep, hit counts and peak RSS (GNU time's
   maximum resident set of the process and of its largest child).

Every tool looks for the same indicators: the network indicators of the
``--advisory`` pack (default ``kics-2026-04``). The sweep is timed three ways:
``digestguard sweep --advisory ... --json`` as a fresh process (the command an
on-call runs; the issue's goal is at least 0.5x ripgrep's throughput), ``wall``
(a fresh interpreter calling ``sweep_paths``), and ``scan`` (``sweep_paths``
inside that process: what the stage costs in a running flow).

    .venv/bin/python bench/sweep.py                # 1 GB, both backends
    .venv/bin/python bench/sweep.py --size-mb 256 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADVISORY = "kics-2026-04"
WORDS = ("api cdn mail static auth login update metrics assets img www edge eu us prod dev staging build cache "
         "objects blob registry docker github gitlab s3 storage compute pkg npm pypi files media video").split()
TLDS = ("com", "net", "org", "io", "dev", "cloud", "co.uk", "de", "cx")
ORGS = ("example", "contoso", "fabrikam", "acme", "initech", "globex", "umbrella", "hooli", "checkmarx", "aquasec")
UAS = ("Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0", "curl/8.5.0", "Go-http-client/1.1",
       "python-requests/2.32.3", "Docker-Client/27.3.1 (linux)", "aws-sdk-go-v2/1.30.3 os/linux lang/go#1.22.5",
       "KICS-Telemetry-Client/1.9", "Wget/1.21.4")
HITS = ("x.audit.checkmarx.cx", "AUDIT.CHECKMARX.CX")
DECOYS = ("notaudit.checkmarx.cx", "audit.checkmarx.cx.example.net")
FIELDS = ("ts uid id.orig_h id.orig_p id.resp_h id.resp_p proto method query_or_host uri user_agent answers status").split()


def _ip(r: random.Random) -> str:
    return f"{r.randint(1, 223)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"


def _host(r: random.Random) -> str:
    return ".".join(r.choice(WORDS) for _ in range(r.randint(1, 3))) + f".{r.choice(ORGS)}.{r.choice(TLDS)}"


def _line(r: random.Random, ts: float, i: int, special: str | None) -> str:
    host = special if special and "." in special and not special[0].isdigit() else _host(r)
    answer = special if special and special[0].isdigit() else _ip(r)
    if i % 3:
        return (f"{ts:.6f}\tC{r.getrandbits(64):016x}\t10.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"
                f"\t{r.randint(1024, 65535)}\t10.0.0.2\t53\tudp\t-\t{host}\t-\t-\t{answer},{_ip(r)}\t-")
    path = "/" + "/".join(r.choice(WORDS) for _ in range(r.randint(1, 4))) + f"?id={r.getrandbits(40):x}"
    ua = "KICS-Telemetry/2.0" if special == "ua" else r.choice(UAS)
    return (f"{ts:.6f}\tC{r.getrandbits(64):016x}\t10.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"
            f"\t{r.randint(1024, 65535)}\t{answer}\t443\ttcp\tGET\t{host}\t{path}\t{ua}\t-\t200")


def generate(path: Path, size_mb: int, seed: int = 7) -> dict[str, int]:
    """Write the log: distinct lines in 8 MB blocks, one indicator line per ~100,000 lines."""
    r = random.Random(seed)
    target = size_mb << 20
    written = lines = planted = 0
    ts = 1776859200.0  # 2026-04-22T12:00:00Z
    specials = [*HITS, "94.154.172.43", "ua"]
    decoys = [*DECOYS, "194.154.172.43", "94.154.172.431"]
    with open(path, "w", encoding="ascii") as f:
        f.write("#separator \\x09\n#path\tmixed\n#fields\t" + "\t".join(FIELDS) + "\n")
        while written < target:
            block = []
            for _ in range(40000):
                lines += 1
                ts += 0.01
                special = None
                if lines % 100_000 == 50_000:
                    special = specials[planted % len(specials)]
                    planted += 1
                elif lines % 100_000 == 0:
                    special = decoys[(lines // 100_000) % len(decoys)]
                block.append(_line(r, ts, lines, special))
            text = "\n".join(block) + "\n"
            f.write(text)
            written += len(text)
    return {"lines": lines, "planted": planted, "bytes": path.stat().st_size}


def timed(cmd: list[str], out: Path, env: dict[str, str] | None = None) -> tuple[float, int, str, float]:
    """(seconds, max RSS KiB, stderr, CPU seconds user+sys incl. workers) for ``cmd``, via GNU time."""
    tfile = out.with_suffix(".time")
    with open(out, "wb") as o:
        t0 = time.perf_counter()
        p = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", "-o", str(tfile), *cmd], stdout=o, stderr=subprocess.PIPE, env=env)
        dt = time.perf_counter() - t0
    if p.returncode not in (0, 1):
        raise SystemExit(f"{cmd[0]} failed ({p.returncode}): {p.stderr.decode()[-500:]}")
    rss, user, sys_ = tfile.read_text().split()[-3:]
    return dt, int(rss), p.stderr.decode(), float(user) + float(sys_)


SWEEP_SNIPPET = """
import json, resource, sys, time
t0 = time.perf_counter()
from tasks.sweep.run import sweep_paths
from tasks.sweep import engine as sweep_engine
t1 = time.perf_counter()
res = sweep_paths([sys.argv[1]], json.loads(sys.argv[2]), None, workers=int(sys.argv[3]))
t2 = time.perf_counter()
print(json.dumps(res.to_json_dict()))
print(json.dumps({"import_s": t1 - t0, "scan_s": t2 - t1, "backend": sweep_engine.backend(),
                  "self_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "child_rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}), file=sys.stderr)
"""


Tool = tuple[str, str, list[str], "dict[str, str] | None"]
"""(key, label, command, environment or None)."""


def tools_for(log: Path, ind_file: Path, backends: str, workers: int, advisory: str,
              indicators: list[tuple[str, str]]) -> list[Tool]:
    """grep, ripgrep (when installed, with and without mmap), the CLI, and the sweep once per backend, as fresh
    processes."""
    tools: list[Tool] = [
        ("grep", "grep -F -i -n -f", ["grep", "-F", "-i", "-n", "-f", str(ind_file), str(log)], None),
    ]
    if shutil.which("rg"):
        tools.append(("rg", "rg -F -i -n -f (--no-mmap)",
                      ["rg", "-F", "-i", "-n", "--no-mmap", "-f", str(ind_file), str(log)], None))
        tools.append(("rg-mmap", "rg -F -i -n -f (mmap)", ["rg", "-F", "-i", "-n", "-f", str(ind_file), str(log)], None))
    cli = Path(sys.executable).with_name("digestguard")
    tools.append(("cli", "digestguard sweep --json (fresh process)",
                  [str(cli), "sweep", "--advisory", advisory, "--json", str(log)], None))
    for backend in [b for b in backends.split(",") if b]:
        env = dict(os.environ, DIGESTGUARD_SWEEP_ENGINE=backend, PYTHONPATH=str(ROOT))
        cmd = [sys.executable, "-c", SWEEP_SNIPPET, str(log), json.dumps(indicators), str(workers)]
        tools.append((f"sweep-{backend}", f"sweep {backend}", cmd, env))
    return tools


def table_rows(tools: list[Tool], runs: dict[str, list[tuple[float, int, str, float]]],
               work: Path) -> tuple[list[tuple[str, float, int, str]], dict[str, float]]:
    """``(rows, CPU seconds by row name)`` from the best run of each tool (the sweep adds a scan-only row)."""
    rows: list[tuple[str, float, int, str]] = []
    cpu: dict[str, float] = {}
    for key, label, _cmd, _env in tools:
        dt = min(r[0] for r in runs[key])
        rss = max(r[1] for r in runs[key])
        cpu[label] = min(r[3] for r in runs[key])
        out = work / f"{key}.out"
        if key == "cli":
            res = json.loads(out.read_text())
            rows.append((label, dt, rss, f"{res['totals']['hits']} hits, {res['totals']['lines']} lines read, "
                                         f"verdict {res['verdict']}"))
            continue
        if not key.startswith("sweep-"):
            rows.append((label, dt, rss, f"{sum(1 for _ in open(out, 'rb'))} matching lines"))
            continue
        metas = [json.loads(r[2].strip().splitlines()[-1]) for r in runs[key]]
        meta = min(metas, key=lambda m: m["scan_s"])
        res = json.loads(out.read_text())
        stats = res["files"][0]
        note = (f"{res['totals']['hits']} hits on {len({h['line'] for h in res['hits']})} lines, "
                f"{stats['lines']} lines read, {stats['unparsable']} unparsable; backend {meta['backend']}, "
                f"main RSS {max(m['self_rss_kb'] for m in metas) // 1024} MB, "
                f"largest worker {max(m['child_rss_kb'] for m in metas) // 1024} MB")
        cpu[f"{label} (wall, incl. {meta['import_s']:.1f}s imports)"] = cpu[label]
        rows.append((f"{label} (wall, incl. {meta['import_s']:.1f}s imports)", dt, rss, note))
        rows.append((f"{label} (scan only)", meta["scan_s"], rss, ""))
    return rows, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--file", type=Path, help="scan this file instead of generating one")
    ap.add_argument("--dir", type=Path, help="where to write the generated log (default: a temp dir, removed after)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per tool; the best is kept")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--backends", default="hyperscan,python")
    ap.add_argument("--advisory", default=ADVISORY, help="the pack whose network indicators every tool looks for")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from digestguard.advisory import load_advisory

    indicators = [(i.kind, i.value) for i in load_advisory(args.advisory).network]

    work = args.dir or Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        log = args.file
        if log is None:
            log = work / "mixed.log"
            t = time.perf_counter()
            info = generate(log, args.size_mb)
            print(f"generated {log} {info['bytes'] / 1e6:.0f} MB, {info['lines']} lines, {info['planted']} planted hits "
                  f"in {time.perf_counter() - t:.1f}s")
        mb = log.stat().st_size / 1e6
        ind_file = work / "indicators.txt"
        ind_file.write_text("".join(v + "\n" for _, v in indicators))
        with open(log, "rb") as f:  # into the page cache
            while f.read(16 << 20):
                pass
        tools = tools_for(log, ind_file, args.backends, args.workers, args.advisory, indicators)
        # interleaved rounds: a burst of load on this shared box hits every tool alike
        runs: dict[str, list[tuple[float, int, str, float]]] = {key: [] for key, *_ in tools}
        for _ in range(args.repeat):
            for key, _label, cmd, env in tools:
                runs[key].append(timed(cmd, work / f"{key}.out", env))
        rows, cpu = table_rows(tools, runs, work)
        grep_s = min(r[0] for r in runs["grep"])
        grep_cpu = min(r[3] for r in runs["grep"])

        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"\nfile: {mb:.0f} MB, cached; workers={args.workers}; cpus={os.cpu_count()}; load average {load}\n")
        rg_s = min((r[0] for k in ("rg", "rg-mmap") if k in runs for r in runs[k]), default=None)
        print(f"{'tool':52} {'seconds':>8} {'MB/s':>8} {'x grep':>7} {'x rg':>6} {'CPU s':>6} {'MB/CPU-s':>9} "
              f"{'peak RSS':>9}  notes")
        for name, dt, rss, note in rows:
            c = cpu.get(name)
            cpu_cols = f"{'':6} {'':9}" if c is None else f"{c:6.2f} {mb / max(c, 0.01):9.0f}"
            x_rg = f"{rg_s / dt:6.2f}" if rg_s else f"{'-':>6}"
            print(f"{name:52} {dt:8.2f} {mb / dt:8.0f} {grep_s / dt:7.2f} {x_rg} {cpu_cols} {rss / 1024:7.0f}MB  {note}")
        print(f"\nCPU seconds are user+sys of the process and its workers (best run); grep used {grep_cpu:.2f}.")
        if rg_s:
            cli_s = min(r[0] for r in runs["cli"])
            print(f"digestguard sweep as a fresh process: {rg_s / cli_s:.2f}x ripgrep's throughput (best rg run "
                  f"{rg_s:.2f} s; goal: at least 0.50x) and {grep_s / cli_s:.2f}x grep's.")
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
