"""Crash injection at every step of every driven issuer's sequence: mint, switch consumers, revoke, probe.

A crash is a ``BaseException`` raised at that point (as a kill would stop the process there); the run is
then started again from its journal. Checked against the issuer itself, never the journal: exactly one
credential of ours is alive and it is the one the store holds (none issued twice without the extra
revoked, none missed), the exposed one is refused (none left alive), and every copy holds the stored value.

Issuers: AWS IAM (moto in server mode with IAM authentication on, STS refuses a deleted key), OpenBao
tokens (real OpenBao), PostgreSQL roles (real PostgreSQL), and the Docker Hub and GitLab wire-protocol
stand-ins (``flows/drill/servers/``), driven by the product's own HTTP calls.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any, Callable

import hvac
import psycopg
import pytest

import tasks.rotate.stage as stage_mod
from digestguard.journal import Journal
from flows.drill.servers.dockerhub import start_dockerhub
from flows.drill.servers.gitlab import DEFAULT_TOKEN as GL_ADMIN, GitLabServer
from integrations import aws_sts, dockerhub, gitlab, postgres as pgi, vault
from tasks import contain
from tasks.rotate import backends as backends_mod, issuers
from tasks.rotate.stage import apply_rotation
from tests.integration.test_contain_crash import Crash, _once, _plan, _tagged

STEPS = ("mint", "consumer", "revoke", "probe")


@dataclass
class Case:
    secret: dict
    clients: dict
    cls: type
    old: dict[str, str] = field(repr=False)
    live: Callable[[], list[str]] = lambda: []  # ids of our live credentials at the issuer
    stored_id: Callable[[dict], str | None] = lambda m: None  # the id of the credential the store holds
    probe: Callable[[dict], str] = lambda m: "unknown"  # the issuer's verdict on a credential
    teardown: Callable[[], None] = lambda: None


def _kv(bao, path: str) -> dict[str, str]:
    return {k: v.get_secret_value() for k, v in vault.kv_read(bao, path).data.items()}


def _stores(path: str) -> list[dict]:
    return [{"kind": "vault-kv", "path": path, "primary": True}, {"kind": "vault-kv", "path": path + "-copy"}]


def _hub(uid, bao, openbao, monkeypatch) -> Case:
    hub = start_dockerhub()
    hub.add_account("acme", "hub-pw-1234567890")
    monkeypatch.setenv("DG_HUB_PW", "hub-pw-1234567890")
    old = hub.add_pat("acme", "ci-pull")
    path = f"ci/hub-{uid}"
    for p in (path, path + "-copy"):
        bao.secrets.kv.v2.create_or_update_secret(path=p, secret={"value": old["token"]})
    return Case(secret={"name": f"HUB_{uid}", "issuer": {"kind": "dockerhub-pat", "ref": {
                    "api_url": hub.url, "username": "acme", "token_label": "ci-pull", "admin_password": "env:DG_HUB_PW"}},
                    "stores": _stores(path)},
                clients={"vault": bao}, cls=issuers.DockerHubPat, old={"value": old["token"]},
                live=lambda: [u for u, p in hub.pats.items() if p["is_active"]],
                stored_id=lambda m: m.get("uuid"), probe=lambda m: dockerhub.pat_probe(hub.url, "acme", m["value"])[0],
                teardown=hub.stop)


def _gitlab(uid, bao, openbao, monkeypatch) -> Case:
    gl = GitLabServer().start()
    monkeypatch.setenv("DG_GL_ADMIN", GL_ADMIN)
    pid = gl.add_project(f"acme/{uid}")
    old = gl.add_access_token(f"project:{pid}", "ci-bot")
    path = f"ci/gl-{uid}"
    for p in (path, path + "-copy"):
        bao.secrets.kv.v2.create_or_update_secret(path=p, secret={"value": old["token"]})

    def stored(m: dict) -> str | None:
        verdict, who = gitlab.token_probe(gl.url, m["value"])
        return who.removeprefix("token ") if verdict == "accepted" else None

    return Case(secret={"name": f"GL_{uid}", "issuer": {"kind": "gitlab-access-token", "ref": {
                    "api_url": gl.url, "project": pid, "token_id": old["id"], "admin_token": "env:DG_GL_ADMIN"}},
                    "stores": _stores(path)},
                clients={"vault": bao}, cls=issuers.GitLabAccessToken, old={"value": old["token"]},
                live=lambda: [str(t["id"]) for t in gl.access_tokens.values() if t["active"]], stored_id=stored,
                probe=lambda m: gitlab.token_probe(gl.url, m["value"])[0], teardown=gl.stop)


def _vault_token(uid, bao, openbao, monkeypatch) -> Case:
    made = hvac.Client(url=openbao.addr, token=openbao.token).auth.token.create(policies=["default"], ttl="1h")["auth"]
    path = f"ci/tok-{uid}"
    for p in (path, path + "-copy"):
        bao.secrets.kv.v2.create_or_update_secret(path=p, secret={"value": made["client_token"]})
    name = f"TOK_{uid}"
    tag = backends_mod.stable_token(f"inc-{uid}", f"secret:{name}", "vault-token")
    return Case(secret={"name": name, "issuer": {"kind": "vault-token", "ref": {"accessor": made["accessor"]}},
                        "stores": _stores(path)},
                clients={"vault": bao}, cls=issuers.VaultToken, old={"value": made["client_token"]},
                live=lambda: _tagged(bao, tag), stored_id=lambda m: vault.token_probe(openbao.addr, m["value"])[1],
                probe=lambda m: vault.token_probe(openbao.addr, m["value"])[0])


def _postgres(uid, bao, openbao, monkeypatch, pg) -> Case:
    role, old = f"app_{uid}", secrets.token_hex(12)
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{old}'")
    monkeypatch.setenv("DG_PG_ADMIN", pg.password)
    path = f"ci/pg-{uid}"
    for p in (path, path + "-copy"):
        bao.secrets.kv.v2.create_or_update_secret(path=p, secret={"username": role, "password": old})
    server = pgi.Server("127.0.0.1", pg.port)
    probe = lambda m: pgi.try_login(server, role, m["password"])[0]  # noqa: E731
    return Case(secret={"name": f"PG_{uid}", "issuer": {"kind": "postgres-role", "ref": {
                    "host": "127.0.0.1", "port": pg.port, "role": role, "admin_password": "env:DG_PG_ADMIN"}},
                    "stores": _stores(path)},
                clients={"vault": bao}, cls=issuers.PostgresRole, old={"password": old},
                live=lambda: ["role"], stored_id=lambda m: "role" if probe(m) == "accepted" else None, probe=probe)


def _iam(uid, auth) -> Case:
    iam, sm = auth.client("iam"), auth.client("secretsmanager")
    user = f"crash-{uid}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    pair = {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}
    for n in (f"ci/{user}", f"ci/{user}-copy"):
        sm.create_secret(Name=n, SecretString=json.dumps(pair))
    read = lambda n: json.loads(sm.get_secret_value(SecretId=n, VersionStage="AWSCURRENT")["SecretString"])  # noqa: E731
    return Case(secret={"name": f"IAM_{uid}", "issuer": {"kind": "aws-iam-access-key", "ref": {"user": user}},
                        "stores": [{"kind": "aws-secretsmanager", "name": f"ci/{user}", "primary": True},
                                   {"kind": "aws-secretsmanager", "name": f"ci/{user}-copy"}]},
                clients={"iam": iam, "secretsmanager": sm}, cls=backends_mod.AwsIamKey, old=pair,
                live=lambda: [k["AccessKeyId"] for k in iam.list_access_keys(UserName=user)["AccessKeyMetadata"]],
                stored_id=lambda m: m.get("access_key_id"),
                probe=lambda m: aws_sts.caller_identity(m["access_key_id"], m["secret_access_key"],
                                                        endpoint_url=auth.endpoint_url)[0],
                teardown=lambda: None) if read else None


def _stored(case: Case, bao, auth) -> tuple[dict, dict]:
    stores = case.secret["stores"]
    if stores[0]["kind"] == "aws-secretsmanager":
        sm = case.clients["secretsmanager"]
        get = lambda n: json.loads(sm.get_secret_value(SecretId=n, VersionStage="AWSCURRENT")["SecretString"])  # noqa: E731
        return get(stores[0]["name"]), get(stores[1]["name"])
    return _kv(bao, stores[0]["path"]), _kv(bao, stores[1]["path"])


def _crash(m: pytest.MonkeyPatch, case: Case, step: str) -> list[int]:
    """Arm one crash at ``step`` of this issuer's sequence."""
    if step == "mint":
        real = case.cls.create
        hits: list[int] = []

        def create(self, base):
            version = real(self, base)
            if not hits:
                hits.append(1)
                raise Crash()  # the issuer minted it; the process died before anything stored it
            return version

        m.setattr(case.cls, "create", create)
        return hits
    if step == "consumer":
        copy = case.secret["stores"][1]
        where = copy.get("path") or copy.get("name")
        return _once(m, stage_mod, "write_consumer",
                     lambda spec, *a, **kw: (spec.get("path") or spec.get("name")) == where)
    if step == "revoke":
        return _once(m, case.cls, "revoke_keys" if case.cls is backends_mod.AwsIamKey else "revoke", lambda *a, **kw: True)
    calls: list[int] = []
    real_call = contain.Prober.__call__

    def probe(self, material):
        calls.append(1)
        if len(calls) == 2:  # the probe after the revocation (the first one checks the exposed value works)
            raise Crash()
        return real_call(self, material)

    m.setattr(contain.Prober, "__call__", probe)
    return calls


@pytest.fixture()
def bao(openbao):
    return vault.connect(openbao.addr, openbao.token)


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("issuer", ["dockerhub-pat", "gitlab-access-token", "vault-token", "postgres-role", "aws-iam-access-key"])
def test_a_crash_at_any_step_leaves_one_live_credential_the_stored_one_and_the_old_one_dead(
        tmp_path, openbao, bao, monkeypatch, request, issuer, step):
    uid = f"{issuer.split('-')[0][:5]}{step}{secrets.token_hex(2)}"
    if issuer == "aws-iam-access-key":
        auth = request.getfixturevalue("moto_iam_auth")
        case = _iam(uid, auth)
    else:
        auth = None
        make: Any = {"dockerhub-pat": _hub, "gitlab-access-token": _gitlab, "vault-token": _vault_token}.get(issuer)
        case = (make(uid, bao, openbao, monkeypatch) if make else
                _postgres(uid, bao, openbao, monkeypatch, request.getfixturevalue("postgres")))
    try:
        case.secret["strategy"] = "revoke-first"
        plan, approval, inv = _plan(tmp_path, {"backends": {"vault_url": openbao.addr, **(
            {"aws_endpoint_url": auth.endpoint_url, "aws_region": "us-east-1"} if auth else {})},
            "secrets": [case.secret]}, case.secret["name"], f"inc-{uid}")
        journal = Journal(tmp_path / "j.sqlite")
        with monkeypatch.context() as m:
            hits = _crash(m, case, step)
            with pytest.raises(Crash):
                apply_rotation(plan, approval, inv, journal, clients=case.clients, attempts=1, probe_wait=3)
            assert hits, f"the crash at {step} was never reached"
        result = apply_rotation(plan, approval, inv, journal, clients=case.clients, probe_wait=3)
        assert [a.outcome for a in result.actions] == ["done"], result
        primary, copy = _stored(case, bao, auth)
        assert primary == copy  # every copy holds the stored credential
        assert case.probe(primary) == "accepted"  # the stored one works
        assert case.probe(case.old) == "refused"  # none left alive
        live = case.live()
        assert live == [case.stored_id(primary)], (live, step)  # none issued twice without the extra revoked
    finally:
        case.teardown()
