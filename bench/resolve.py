"""Bench: resolving N tag references, digestguard's ``resolve_many`` vs ``curl --parallel``.

Why this peer: ``curl --parallel --parallel-max 64`` issuing the same HEAD
requests (same Accept header, keep-alive, 64 in flight) is the cheapest way a
shell script would do the job, so it sets the bar: the goal is a throughput
ratio (ours / curl) of at least 0.8.

The bench starts its own Debian ``docker-registry`` (flows/drill/registry.py)
on a free loopback port, pushes one small image under N tags spread over 10
repositories, then, for each N, alternates curl and resolve_many ``--repeat``
times and reports the best run of each (the least disturbed by other load on
a 2-core machine), plus the median.

curl 7.88 (Debian 12) gets slower per request as one ``--parallel`` list grows
(measured here: about 1,000 req/s for 200 URLs, 220 for 2,000, 100 for 5,000),
which would flatter us. So curl is also run in batches of ``--curl-batch``
URLs (one curl process per batch, in turn) and the ratio is taken against
whichever curl variant was faster.

    .venv/bin/python -m bench.resolve                 # N = 200, 2000, 5000
    .venv/bin/python -m bench.resolve --sizes 2000 --repeat 5 --check

``--check`` exits 1 when any ratio is under the goal. Every request goes to
127.0.0.1 only; the run is bounded by the sizes given.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from flows.drill.registry import push_image, put_manifest, running_registry
from integrations.registry import MANIFEST_ACCEPT, resolve_many

GOAL = 0.8
REPOS = 10


def seed(base_url: str, count: int) -> list[tuple[str, str]]:
    """Push one image per repository and ``count`` tags in all; returns [(repo, tag)] and checks nothing failed."""
    with httpx.Client(timeout=30) as c:
        images = {f"bench/app{r}": push_image(base_url, f"bench/app{r}", "seed", client=c) for r in range(REPOS)}
    pairs = [(f"bench/app{i % REPOS}", f"v{i}") for i in range(count)]
    local = threading.local()

    def put(pair: tuple[str, str]) -> None:
        c = getattr(local, "c", None) or httpx.Client(timeout=30)
        local.c = c
        img = images[pair[0]]
        put_manifest(base_url, pair[0], pair[1], img.manifest, img.media_type, c)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, pairs))
    return pairs


def write_curl_config(path: Path, base_url: str, pairs: list[tuple[str, str]]) -> None:
    """One HEAD per reference with the same Accept header resolve_many sends; status codes to stdout."""
    lines = []
    for repo, tag in pairs:
        lines.append(f'url = "{base_url}/v2/{repo}/manifests/{tag}"\n')
        lines.append("head\n")
        lines.append(f'header = "Accept: {MANIFEST_ACCEPT}"\n')
        lines.append('output = "/dev/null"\n')
        lines.append('write-out = "%{http_code}\\n"\n')
    path.write_text("".join(lines))


def run_curl(configs: list[Path], n: int, parallel: int) -> float:
    """Wall seconds for curl to do the N HEADs (one curl run per config, in turn); fails loudly on any non-200."""
    codes: list[str] = []
    t = time.perf_counter()
    for config in configs:
        out = subprocess.run(
            ["curl", "--no-progress-meter", "--parallel", "--parallel-max", str(parallel), "--parallel-immediate",
             "-K", str(config)],
            capture_output=True, text=True, check=True,
        )
        codes += out.stdout.split()
    elapsed = time.perf_counter() - t
    if len(codes) != n or any(c != "200" for c in codes):
        raise SystemExit(f"curl: expected {n} x 200, got {len(codes)} answers, non-200: {sorted(set(codes) - {'200'})}")
    return elapsed


def run_ours(refs: list[str], concurrency: int, expected: set[str]) -> float:
    t = time.perf_counter()
    res = resolve_many(refs, concurrency=concurrency)
    elapsed = time.perf_counter() - t
    bad = [r for r in res if not r.ok or r.digest not in expected]
    if bad:
        raise SystemExit(f"resolve_many: {len(bad)} of {len(refs)} failed, first: {bad[0]}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 2000, 5000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--single-max", type=int, default=2000,
                    help="largest N also run as one curl list (one 5,000-URL list takes minutes and is never curl's best)")
    ap.add_argument("--curl-batch", type=int, default=200,
                    help="URLs per curl run in the batched variant (curl 7.88 slows down on long --parallel lists)")
    ap.add_argument("--check", action="store_true", help=f"exit 1 when a ratio is under {GOAL}")
    args = ap.parse_args(argv)
    if shutil.which("curl") is None:
        raise SystemExit("curl not found: install the Debian package `curl`")

    rows = []
    with running_registry() as reg, tempfile.TemporaryDirectory(prefix="dg-bench-") as tmp:
        t = time.perf_counter()
        pairs_all = seed(reg.base_url, max(args.sizes))
        print(f"registry {reg.base_url}: pushed {len(pairs_all)} tags over {REPOS} repositories in {time.perf_counter() - t:.1f}s", flush=True)
        with httpx.Client() as c:
            expected = {c.head(f"{reg.base_url}/v2/bench/app{r}/manifests/seed", headers={"Accept": MANIFEST_ACCEPT}
                               ).headers["docker-content-digest"] for r in range(REPOS)}
        for n in args.sizes:
            pairs = pairs_all[:n]
            one = Path(tmp) / f"curl-{n}.cfg"
            write_curl_config(one, reg.base_url, pairs)
            batches = []
            for i in range(0, n, args.curl_batch):
                cfg = Path(tmp) / f"curl-{n}-{i}.cfg"
                write_curl_config(cfg, reg.base_url, pairs[i:i + args.curl_batch])
                batches.append(cfg)
            refs = [reg.ref(repo, tag) for repo, tag in pairs]
            single_t, batch_t, ours_t = [], [], []
            for _ in range(args.repeat):
                if n <= args.single_max:
                    single_t.append(run_curl([one], n, args.concurrency))
                batch_t.append(run_curl(batches, n, args.concurrency))
                ours_t.append(run_ours(refs, args.concurrency, expected))
            # the peer is curl at its best: one run, or batches when curl slows down on long lists
            curl_t = single_t if single_t and min(single_t) <= min(batch_t) else batch_t
            best_curl, best_ours = n / min(curl_t), n / min(ours_t)
            med_curl, med_ours = n / statistics.median(curl_t), n / statistics.median(ours_t)
            rows.append((n, n / min(single_t) if single_t else float("nan"), n / min(batch_t), best_curl, best_ours,
                         best_ours / best_curl, med_curl, med_ours, med_ours / med_curl))
            print(f"N={n}: curl {best_curl:.0f} req/s, ours {best_ours:.0f} req/s, ratio {best_ours / best_curl:.2f}", flush=True)

    print(f"\n{'N':>6} {'curl 1 run':>10} {'curl batched':>12} {'ours':>7} {'ratio':>6} | "
          f"{'median curl':>11} {'median ours':>11} {'ratio':>6}   (req/s; ratio = ours / best curl)")
    for n, c1, cb, _bc, bo, br, mc, mo, mr in rows:
        print(f"{n:>6} {c1:>10.0f} {cb:>12.0f} {bo:>7.0f} {br:>6.2f} | {mc:>11.0f} {mo:>11.0f} {mr:>6.2f}")
    worst = min(r[5] for r in rows)
    print(f"\ngoal: ratio >= {GOAL} (best runs); worst ratio {worst:.2f} -> {'MET' if worst >= GOAL else 'NOT MET'}")
    if args.check and worst < GOAL:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
