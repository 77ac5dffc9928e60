"""The whole drill, timed: set-up and each playbook stage, per scale, on SQLite and on PostgreSQL.

    .venv/bin/python -m bench.drill [--scales 1 16 64 256] [--pg-scales 100]

A first, cold drill (which also starts Prefect's embedded server) is reported apart; then each scale builds a fresh
sandbox (N times the repositories, CI jobs and Vault secrets) and runs ``incident_response`` in execute mode with
auto-approval, exactly as ``digestguard drill --auto-approve --scale N``. ``--pg-scales`` runs those scales with the
journal on a real PostgreSQL (started here as the ``postgres`` user when run as root, one fresh database per
drill, reached through ``DIGESTGUARD_JOURNAL`` with its password by reference). Every row carries the load
average at its end: the 2-core box is shared, and figures move with it.

Goals: playbook time grows at most linearly with the scale; scale 100 under 60 s (SQLite and PostgreSQL).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

STAGES = ("detect", "assess", "rotate", "purge", "pin", "notify")
PG_PASSWORD_ENV = "DG_BENCH_PG_PASSWORD"


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


@contextlib.contextmanager
def postgres() -> Iterator[tuple[int, str]]:
    """A throw-away PostgreSQL on 127.0.0.1 (scram-sha-256), as ``shared/notes/local-services.md`` describes:
    ``initdb``/``pg_ctl`` as the ``postgres`` user when we are root. Yields (port, superuser password)."""
    bindir = os.path.dirname(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)[0])
    prefix, uid, gid = [], None, None
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        prefix, uid, gid = ["runuser", "-u", "postgres", "--"], pw.pw_uid, pw.pw_gid
    root = tempfile.mkdtemp(prefix="dg-bench-pg-")
    data, sock = os.path.join(root, "data"), os.path.join(root, "sock")
    os.mkdir(sock)
    password = secrets.token_hex(16)
    pwfile = os.path.join(root, "pw")
    with open(pwfile, "w") as f:
        f.write(password + "\n")
    if uid is not None:
        for p in (root, sock, pwfile):
            os.chown(p, uid, gid)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([*prefix, f"{bindir}/initdb", "-D", data, "-U", "postgres", f"--pwfile={pwfile}", "--auth-local=trust",
                    "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c max_connections=60"
    subprocess.run([*prefix, f"{bindir}/pg_ctl", "-D", data, "-o", opts, "-l", os.path.join(root, "pg.log"), "-w", "-t", "60",
                    "start"], check=True, capture_output=True)
    try:
        yield port, password
    finally:
        subprocess.run([*prefix, f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _fresh_database(port: int, password: str, name: str) -> str:
    import psycopg

    with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres password={password} dbname=postgres",
                         autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    os.environ[PG_PASSWORD_ENV] = password
    return f"postgresql://postgres:env:{PG_PASSWORD_ENV}@127.0.0.1:{port}/{name}?sslmode=disable"


def _row(run_drill, n: int, journal: str) -> dict:
    t = time.monotonic()
    card = run_drill("kics-2026-04", auto_approve=True, scale=n)
    row = {"scale": n, "journal": journal, "ok": card["ok"], "wall_s": round(time.monotonic() - t, 1), "load": _load(),
           **card["timings"]}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scales", type=int, nargs="*", default=[1, 16, 64, 256])
    ap.add_argument("--pg-scales", type=int, nargs="*", default=[100])
    args = ap.parse_args()
    from flows.drill.services import quiet_prefect_server

    quiet_prefect_server()
    from flows.drill.flow import run_drill

    # the first drill in a process also starts Prefect's embedded server: reported apart, as the cold start
    t = time.monotonic()
    cold = run_drill("kics-2026-04", auto_approve=True, scale=1)
    print(json.dumps({"cold_start_scale_1_wall_s": round(time.monotonic() - t, 1), "ok": cold["ok"], "load": _load(),
                      **cold["timings"]}), flush=True)
    rows = [_row(run_drill, n, "sqlite") for n in args.scales]
    if args.pg_scales:
        with postgres() as (port, password):
            for n in args.pg_scales:
                os.environ["DIGESTGUARD_JOURNAL"] = _fresh_database(port, password, f"drill_{n}_{secrets.token_hex(3)}")
                try:
                    rows.append(_row(run_drill, n, "postgresql"))
                finally:
                    os.environ.pop("DIGESTGUARD_JOURNAL", None)
    print("\nscale journal     ok    wall s  setup s  playbook s  " + "  ".join(f"{s:>6}" for s in STAGES)
          + "  x scale-1  linear   load (1/5/15 min)")
    base = next((r for r in rows if r["journal"] == "sqlite"), rows[0])
    for r in rows:
        growth = r["playbook_s"] / base["playbook_s"]
        print(f"{r['scale']:5} {r['journal']:10} {str(r['ok']):5} {r['wall_s']:7.1f}  {r['setup_s']:7.1f}  "
              f"{r['playbook_s']:10.1f}  " + "  ".join(f"{r.get(f'stage_{k}_s', 0):6.1f}" for k in STAGES)
              + f"  {growth:8.2f}x  {r['scale'] / base['scale']:5.0f}x   {r['load']}")


if __name__ == "__main__":
    main()
