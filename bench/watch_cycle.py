"""Bench: one watch cycle over N watched tags vs ``curl --parallel`` issuing the same HEAD requests.

Why this peer: a watch cycle is, on the wire, one HEAD per watched tag; the
cheapest way a shell script could ask the same question is ``curl --parallel
--parallel-max 64`` (same Accept header, keep-alive, 64 in flight). The goal is
a throughput ratio (ours / curl) of at least 0.8, for the *whole* cycle:
loading the watch list from the inventory, reading and comparing the state
file, resolving, and recording, not just the HEADs.

Set-up is shared with ``bench/resolve.py``: a Debian ``docker-registry`` on a
free loopback port, one small image per repository under N tags over 10
repositories. As there, curl runs twice per round: one ``--parallel`` list of
all N URLs, and batches of ``--curl-batch`` URLs in turn (curl 7.88 slows down
as one parallel list grows, which would flatter us); the ratio is taken
against whichever curl variant was faster. The inventory lists the N references; the shipped advisory
packs are loaded (their malicious digests are compared every cycle). The
first cycle records the baseline and is reported apart; the measured cycles
are steady-state ones (nothing moved), each with a fresh registry client pool,
as a scheduled deployment run would have. Curl and the watch alternate
``--repeat`` times; the best run of each is compared, and the median too.

    .venv/bin/python -m bench.watch_cycle                  # N = 5000
    .venv/bin/python -m bench.watch_cycle --sizes 1000 5000 --repeat 5 --check

``--check`` exits 1 when a ratio is under the goal. Every request goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.resolve import GOAL, REPOS, run_curl, seed, write_curl_config
from digestguard.inventory import load_inventory
from flows.drill.registry import running_registry
from tasks.watch.cycle import watch_cycle
from tasks.watch.sources import RegistryPool, load_packs
from tasks.watch.state import WatchState


def run_watch_cycle(inv_path: Path, state_path: Path, packs, concurrency: int, n: int) -> float:
    """Wall seconds for one whole cycle (inventory load included); fails loudly unless all N were unchanged."""
    t = time.perf_counter()
    inv = load_inventory(inv_path)
    with WatchState(state_path) as state, RegistryPool(inv, concurrency=concurrency) as pool:
        rep = watch_cycle(inv, state, packs=packs, registries=pool, concurrency=concurrency)
    elapsed = time.perf_counter() - t
    if rep.unchanged != n or rep.events:
        raise SystemExit(f"watch cycle: expected {n} unchanged and no events, got {rep.unchanged} unchanged, "
                         f"{len(rep.events)} event(s): {[e.summary() for e in rep.events[:3]]}")
    return elapsed


def curl_configs(tmp: Path, base_url: str, pairs: list[tuple[str, str]], batch: int) -> tuple[Path, list[Path]]:
    """One curl config with every URL, and the same URLs in batches of ``batch``."""
    n = len(pairs)
    one = tmp / f"curl-{n}.cfg"
    write_curl_config(one, base_url, pairs)
    batches = []
    for i in range(0, n, batch):
        cfg = tmp / f"curl-{n}-{i}.cfg"
        write_curl_config(cfg, base_url, pairs[i:i + batch])
        batches.append(cfg)
    return one, batches


def baseline_cycle(inv_path: Path, state_path: Path, packs, concurrency: int, n: int) -> float:
    """Wall seconds of the first cycle (it records all N digests); fails loudly unless all N were first seen."""
    t = time.perf_counter()
    inv = load_inventory(inv_path)
    with WatchState(state_path) as state, RegistryPool(inv, concurrency=concurrency) as pool:
        first = watch_cycle(inv, state, packs=packs, registries=pool, concurrency=concurrency)
    if first.first_seen != n:
        raise SystemExit(f"baseline cycle: {first.first_seen} of {n} recorded; events: {[e.summary() for e in first.events[:3]]}")
    return time.perf_counter() - t


def measure(reg, tmp: Path, pairs: list[tuple[str, str]], packs, args: argparse.Namespace) -> tuple:
    """One row of the table for N = ``len(pairs)``: baseline seconds, best and median rates of curl and the watch."""
    n = len(pairs)
    one, batches = curl_configs(tmp, reg.base_url, pairs, args.curl_batch)
    inv_path = tmp / f"inventory-{n}.yaml"
    inv_path.write_text(yaml.safe_dump({"images": [{"reference": reg.ref(repo, tag)} for repo, tag in pairs]}))
    state_path = tmp / f"watch-{n}.sqlite"
    first_t = baseline_cycle(inv_path, state_path, packs, args.concurrency, n)
    single_t, batch_t, ours_t = [], [], []
    for _ in range(args.repeat):
        single_t.append(run_curl([one], n, args.concurrency))
        batch_t.append(run_curl(batches, n, args.concurrency))
        ours_t.append(run_watch_cycle(inv_path, state_path, packs, args.concurrency, n))
    curl_t = single_t if min(single_t) <= min(batch_t) else batch_t
    print(f"N={n}: curl one list best {n / min(single_t):.0f} req/s, batches of {args.curl_batch} best "
          f"{n / min(batch_t):.0f} req/s -> comparing with the faster")
    best_curl, best_ours = n / min(curl_t), n / min(ours_t)
    med_curl, med_ours = n / statistics.median(curl_t), n / statistics.median(ours_t)
    return (n, first_t, best_curl, best_ours, best_ours / best_curl, med_curl, med_ours, med_ours / med_curl)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[5000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--curl-batch", type=int, default=200, help="URLs per curl run in the batched variant")
    ap.add_argument("--check", action="store_true", help=f"exit 1 when a ratio is under {GOAL}")
    args = ap.parse_args(argv)
    if shutil.which("curl") is None:
        raise SystemExit("curl not found: install the Debian package `curl`")

    packs = load_packs()
    with running_registry() as reg, tempfile.TemporaryDirectory(prefix="dg-bench-watch-") as tmp:
        t = time.perf_counter()
        pairs_all = seed(reg.base_url, max(args.sizes))
        took = time.perf_counter() - t
        print(f"registry {reg.base_url}: pushed {len(pairs_all)} tags over {REPOS} repositories in {took:.1f}s")
        rows = [measure(reg, Path(tmp), pairs_all[:n], packs, args) for n in args.sizes]

    print(f"\n{'N':>6} {'baseline s':>10} {'curl req/s':>11} {'watch ref/s':>11} {'ratio':>6} | "
          f"{'median curl':>11} {'median watch':>12} {'ratio':>6}")
    for n, ft, bc, bo, br, mc, mo, mr in rows:
        print(f"{n:>6} {ft:>10.2f} {bc:>11.0f} {bo:>11.0f} {br:>6.2f} | {mc:>11.0f} {mo:>12.0f} {mr:>6.2f}")
    worst = min(r[4] for r in rows)
    print(f"\ngoal: ratio >= {GOAL} (best runs); worst ratio {worst:.2f} -> {'MET' if worst >= GOAL else 'NOT MET'}")
    return 1 if args.check and worst < GOAL else 0


if __name__ == "__main__":
    sys.exit(main())
