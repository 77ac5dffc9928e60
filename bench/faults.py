"""Bench: how long the detect stage takes against each fault of the hostile registry, with the production bounds.

The registry is ``tests/fakes/hostile_registry.py`` on a free loopback port (one fault per run). The client is
built with :class:`integrations.registry.RegistryClient`'s own defaults (total deadline per call, Retry-After cap,
4 MiB manifest cap, tag-list bound) unless ``--deadline`` overrides the per-call deadline. For every fault the
bench prints the stage's wall time, the coverage state and whether the malicious ``latest`` was still found,
then the worst case; ``--check SECONDS`` exits 1 when the worst case is over SECONDS or a finding was lost.

    .venv/bin/python -m bench.faults                       # every fault, production bounds
    .venv/bin/python -m bench.faults --faults drip huge --deadline 10 --check 30
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from digestguard.advisory import load_advisory_file
from digestguard.inventory import Registry
from integrations.registry import RegistryClient
from tasks.detect import detect_registry, source_coverage
from tests.fakes.hostile_registry import FAULTS, LATEST_DIGEST, pack_yaml, start_hostile_registry


def one(fault: str, advisory, deadline: float | None) -> tuple[float, str, bool]:
    """(seconds, coverage state, latest still found) for one fault."""
    reg = start_hostile_registry(fault)
    try:
        opts = {"deadline": deadline} if deadline else {}
        with RegistryClient(reg.base_url.removeprefix("http://"), base_url=reg.base_url, **opts) as client:
            t0 = time.monotonic()
            findings = detect_registry(Registry(name="hostile", url=reg.base_url), advisory, client)
            took = time.monotonic() - t0
    finally:
        reg.stop()
    found = any(f.digest == LATEST_DIGEST and f.verdict == "compromised" for f in findings)
    return took, source_coverage("hostile", "registry", findings).state, found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--faults", nargs="+", default=list(FAULTS), choices=FAULTS)
    ap.add_argument("--deadline", type=float, default=None, help="per-call deadline (default: the client's)")
    ap.add_argument("--check", type=float, default=None, help="exit 1 when the worst case is over this many seconds")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        pack = Path(d) / "pack.json"
        pack.write_text(pack_yaml())
        advisory = load_advisory_file(pack)
    worst, lost = (0.0, ""), []
    print(f"{'fault':16} {'seconds':>8} {'coverage':10} latest found")
    for fault in args.faults:
        took, state, found = one(fault, advisory, args.deadline)
        print(f"{fault:16} {took:8.2f} {state:10} {'yes' if found else 'no'}")
        if fault != "not-registry" and not found:
            lost.append(fault)
        worst = max(worst, (took, fault))
    print(f"worst case: {worst[1]} in {worst[0]:.2f} s" + (f"; LOST the finding under {', '.join(lost)}" if lost else ""))
    return 1 if lost or (args.check is not None and worst[0] > args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
