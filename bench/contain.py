"""Bench: 50 exposed credentials over 5 issuers, each refused by its issuer within 60 s of the approval.

The issuers are the drill's: AWS IAM access keys (moto in server mode with IAM authentication on, so a
deleted key is really refused by STS), PostgreSQL role passwords (real PostgreSQL), OpenBao tokens
(real OpenBao), Docker Hub PATs and GitLab project access tokens (the wire-protocol stand-ins in
``flows/drill/servers/``). Each credential's exposed value sits in an OpenBao KV store (IAM: Secrets
Manager), as the inventory would have it. One approved plan of ``confirmed`` exposure (``revoke-first``)
goes through ``tasks.rotate.stage.apply_rotation`` with its production settings (4 workers, 30 s probe wait);
the figure is the journal's ``seconds_since_approval`` of each ``old-refused`` row (approval = just before
the call), the slowest one against the 60 s goal. No peer: nothing else rotates at issuers.

    .venv/bin/python -m bench.contain                  # 50 credentials, 10 per issuer
    .venv/bin/python -m bench.contain --per-issuer 4 --check 60

Prints ``uptime`` with the figure: the machine is shared, and its load moves the number.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import boto3
import hvac
import psycopg

from digestguard.advisory import load_advisory
from digestguard.findings import ExposedSecret, ExposureReport
from digestguard.inventory import parse_inventory
from digestguard.journal import Journal
from digestguard.plan import Approval
from flows.drill.servers.dockerhub import start_dockerhub
from flows.drill.servers.gitlab import DEFAULT_TOKEN as GL_ADMIN, GitLabServer
from flows.drill.services import DUMMY_AWS_ENV, start_moto_iam_auth, start_openbao, start_postgres
from tasks.rotate.stage import apply_rotation, plan_rotation

ISSUERS = ("aws-iam-access-key", "postgres-role", "vault-token", "dockerhub-pat", "gitlab-access-token")


def build(stack: contextlib.ExitStack, per: int) -> list[dict]:
    """Start the issuers and plant ``per`` exposed credentials at each; returns the inventory's secrets."""
    bao = start_openbao()
    stack.callback(bao.stop)
    moto = start_moto_iam_auth()
    stack.callback(moto.stop)
    os.environ.update({**DUMMY_AWS_ENV, "AWS_ACCESS_KEY_ID": moto.admin_key_id, "AWS_SECRET_ACCESS_KEY": moto.admin_secret})
    os.environ.pop("AWS_SESSION_TOKEN", None)
    pg = start_postgres()
    stack.callback(pg.stop)
    hub = start_dockerhub()
    stack.callback(hub.stop)
    gl = GitLabServer().start()
    stack.callback(gl.stop)
    os.environ.update({"BENCH_VAULT": bao.token, "BENCH_PG": pg.password, "BENCH_HUB": "bench-hub-password",
                       "BENCH_GL": GL_ADMIN})
    hub.add_account("bench", "bench-hub-password")
    kv = hvac.Client(url=bao.addr, token=bao.token).secrets.kv.v2
    iam = boto3.client("iam", endpoint_url=moto.endpoint_url, region_name="us-east-1")
    sm = boto3.client("secretsmanager", endpoint_url=moto.endpoint_url, region_name="us-east-1")
    bao_client = hvac.Client(url=bao.addr, token=bao.token)
    pid = gl.add_project("bench/app")
    out: list[dict] = []
    with psycopg.connect(host=pg.host, port=pg.port, user="postgres", password=pg.password, dbname="postgres",
                         autocommit=True) as conn:
        for n in range(per):
            iam.create_user(UserName=f"u{n}")
            key = iam.create_access_key(UserName=f"u{n}")["AccessKey"]
            sm.create_secret(Name=f"aws/u{n}", SecretString=json.dumps(
                {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}))
            out.append({"name": f"AWS_{n}", "issuer": {"kind": "aws-iam-access-key", "ref": {"user": f"u{n}"}},
                        "stores": [{"kind": "aws-secretsmanager", "name": f"aws/u{n}", "primary": True}]})
            conn.execute(f"CREATE ROLE r{n} LOGIN PASSWORD 'bench-old-{n}-password'")
            kv.create_or_update_secret(path=f"db/r{n}", secret={"username": f"r{n}", "password": f"bench-old-{n}-password"})
            out.append({"name": f"DB_{n}", "issuer": {"kind": "postgres-role", "ref": {
                "host": pg.host, "port": pg.port, "role": f"r{n}", "admin_password": "env:BENCH_PG"}},
                "stores": [{"kind": "vault-kv", "path": f"db/r{n}", "primary": True}]})
            tok = bao_client.auth.token.create(policies=["default"], ttl="1h")["auth"]
            kv.create_or_update_secret(path=f"tok/{n}", secret={"value": tok["client_token"]})
            out.append({"name": f"VAULT_{n}", "issuer": {"kind": "vault-token", "ref": {"accessor": tok["accessor"]}},
                        "stores": [{"kind": "vault-kv", "path": f"tok/{n}", "primary": True}]})
            pat = hub.add_pat("bench", f"pat-{n}")
            kv.create_or_update_secret(path=f"hub/{n}", secret={"value": pat["token"]})
            out.append({"name": f"HUB_{n}", "issuer": {"kind": "dockerhub-pat", "ref": {
                "api_url": hub.url, "username": "bench", "token_label": f"pat-{n}", "admin_password": "env:BENCH_HUB"}},
                "stores": [{"kind": "vault-kv", "path": f"hub/{n}", "primary": True}]})
            glt = gl.add_access_token(f"project:{pid}", f"bot-{n}")
            kv.create_or_update_secret(path=f"gl/{n}", secret={"value": glt["token"]})
            out.append({"name": f"GL_{n}", "issuer": {"kind": "gitlab-access-token", "ref": {
                "api_url": gl.url, "project": pid, "token_id": glt["id"], "admin_token": "env:BENCH_GL"}},
                "stores": [{"kind": "vault-kv", "path": f"gl/{n}", "primary": True}]})
    return [{"backends": {"vault_url": bao.addr, "vault_token": "env:BENCH_VAULT", "aws_endpoint_url": moto.endpoint_url,
                          "aws_region": "us-east-1"}, "secrets": out}]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-issuer", type=int, default=10, help="credentials per issuer (5 issuers; default 10 = 50)")
    ap.add_argument("--check", type=float, default=None, help="exit 1 when any old credential took longer than this")
    args = ap.parse_args(argv)
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as d:
        t = time.monotonic()
        (data,) = build(stack, args.per_issuer)
        setup = time.monotonic() - t
        inv = parse_inventory(data, "bench", Path(d))
        names = [s["name"] for s in data["secrets"]]
        exposure = ExposureReport(advisory="bench", window_start=datetime(2026, 4, 22, tzinfo=timezone.utc),
                                  secrets=[ExposedSecret(name=n, mapped=True, inventory_name=n, exposure="confirmed",
                                                         exposed_by=["gh:bench/app/1"]) for n in names])
        plan = plan_rotation("bench-contain", load_advisory("kics-2026-04"), exposure, inv)
        journal = Journal(Path(d) / "journal.sqlite")
        approval = Approval(decision="approve", approvers=["bench"], plan_hash=plan.hash, at=datetime.now(timezone.utc))
        t = time.monotonic()
        result = apply_rotation(plan, approval, inv, journal)
        wall = time.monotonic() - t
        rows = {e.target: e for e in journal.entries("bench-contain", "rotate") if e.action == "old-refused"}
        refused = {k: r.detail.get("seconds_since_approval") for k, r in rows.items() if r.status == "done"}
    missing = sorted(set(f"secret:{n}" for n in names) - set(refused))
    slowest = max(refused.values(), default=float("inf"))
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    by_kind: dict[str, float] = {}
    for n in names:
        kind = next(s["issuer"]["kind"] for s in data["secrets"] if s["name"] == n)
        if f"secret:{n}" in refused:
            by_kind[kind] = max(by_kind.get(kind, 0.0), refused[f"secret:{n}"])
    print(f"{len(names)} credentials over {len(ISSUERS)} issuers; set-up {setup:.1f} s; rotate stage {wall:.1f} s")
    for kind in ISSUERS:
        print(f"  {kind:22} slowest old credential refused {by_kind.get(kind, float('nan')):6.1f} s after approval")
    print(f"all {len(refused)} of {len(names)} refused; slowest {slowest:.1f} s after approval; "
          f"outcomes {sorted({a.outcome for a in result.actions})}")
    if missing:
        print(f"NOT refused: {missing[:10]}")
    print(f"load: {load}")
    if args.check is not None and (missing or slowest > args.check):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
