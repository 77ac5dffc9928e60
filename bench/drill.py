"""The whole drill, timed: set-up and each playbook stage, at scale 1, 2 and 4.

    .venv/bin/python -m bench.drill [--scales 1 2 4]

A first, cold drill (which also starts Prefect's embedded server) is reported apart; then each scale builds a fresh sandbox (N times the repositories, CI jobs and Vault secrets) and runs
``incident_response`` in execute mode with auto-approval, exactly as ``digestguard drill --auto-approve --scale N``.
The goal is under 60 s at scale 1 on a 2-core machine, and linear growth.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4, 8])
    args = ap.parse_args()
    from flows.drill.services import quiet_prefect_server

    quiet_prefect_server()
    from flows.drill.flow import run_drill

    # the first drill in a process also starts Prefect's embedded server: reported apart, as the cold start
    t = time.monotonic()
    cold = run_drill("kics-2026-04", auto_approve=True, scale=1)
    print(json.dumps({"cold_start_scale_1_wall_s": round(time.monotonic() - t, 1), "ok": cold["ok"], **cold["timings"]}))
    rows = []
    for n in args.scales:
        t = time.monotonic()
        card = run_drill("kics-2026-04", auto_approve=True, scale=n)
        total = time.monotonic() - t
        rows.append((n, card["ok"], total, card["timings"]))
        print(json.dumps({"scale": n, "ok": card["ok"], "wall_s": round(total, 1), **card["timings"]}))
    print("\nscale  ok    wall s  setup s  playbook s  detect  assess  rotate  purge  pin  notify")
    for n, ok, total, t in rows:
        st = [t.get(f"stage_{k}_s", 0) for k in ("detect", "assess", "rotate", "purge", "pin", "notify")]
        print(f"{n:5}  {str(ok):5} {total:7.1f}  {t['setup_s']:7.1f}  {t['playbook_s']:10.1f}  " + "  ".join(f"{x:6.1f}" for x in st))
    base = rows[0][3]["playbook_s"]
    for n, _, _, t in rows[1:]:
        print(f"playbook at scale {n}: {t['playbook_s'] / base:.2f}x scale {rows[0][0]} (linear would be {n / rows[0][0]:.1f}x)")


if __name__ == "__main__":
    main()
