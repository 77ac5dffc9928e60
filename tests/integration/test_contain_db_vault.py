"""Proof of death against real issuers: PostgreSQL role passwords (directly, and through an OpenBao
database static role) and OpenBao tokens revoked by accessor.

Real servers: Debian's PostgreSQL 15 with scram-sha-256 over TCP (an old password is refused at
login, SQLSTATE 28P01) and OpenBao (``lookup-self`` with a revoked token answers 403).
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime, timezone
from pathlib import Path

import hvac
import psycopg
import pytest

from digestguard.advisory import load_advisory
from digestguard.findings import ExposedSecret, ExposureReport
from digestguard.inventory import parse_inventory
from digestguard.journal import Journal
from digestguard.plan import Approval
from integrations import postgres as pgi, vault
from tasks.rotate.stage import apply_rotation, plan_rotation

PG = pgi.Server


def _rotate(tmp_path: Path, inv_data: dict, name: str, clients: dict, incident: str = "inc-db"):
    inv = parse_inventory(inv_data, "inv", tmp_path)
    exposure = ExposureReport(advisory="a", window_start=datetime(2026, 4, 22, tzinfo=timezone.utc),
                              secrets=[ExposedSecret(name=name, mapped=True, inventory_name=name, exposure="confirmed",
                                                     exposed_by=["gl:acme/web/3"])])
    plan = plan_rotation(incident, load_advisory("kics-2026-04"), exposure, inv)
    approval = Approval(decision="approve", approvers=["alice"], plan_hash=plan.hash)
    journal = Journal(tmp_path / "j.sqlite")
    return apply_rotation(plan, approval, inv, journal, clients=clients, probe_wait=5), journal


def _proof(result):
    (proof,) = [v for v in result.verification if v.action == "contain"]
    return proof


def _role(pg, name: str) -> str:
    pw = secrets.token_hex(12)
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute(f'DROP ROLE IF EXISTS "{name}"')
        c.execute(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{pw}'")
    return pw


@pytest.fixture()
def bao(openbao):
    return vault.connect(openbao.addr, openbao.token)


def test_postgres_role_password_rotated_and_the_old_one_refused_at_login(tmp_path, postgres, bao, openbao, monkeypatch):
    server = PG("127.0.0.1", postgres.port)
    old = _role(postgres, "app_direct")
    bao.secrets.kv.v2.create_or_update_secret(path="ci/app_direct", secret={"username": "app_direct", "password": old})
    monkeypatch.setenv("DG_PG_ADMIN", postgres.password)
    inv = {"backends": {"vault_url": openbao.addr},
           "secrets": [{"name": "app_direct",
                        "issuer": {"kind": "postgres-role",
                                   "ref": {"host": "127.0.0.1", "port": postgres.port, "role": "app_direct",
                                           "admin_password": "env:DG_PG_ADMIN"}},
                        "stores": [{"kind": "vault-kv", "path": "ci/app_direct", "primary": True}]}]}
    result, journal = _rotate(tmp_path, inv, "app_direct", {"vault": bao})
    assert [a.outcome for a in result.actions] == ["done"], result
    proof = _proof(result)
    assert proof.outcome == "done" and proof.detail["containment"] == "rotated", proof
    assert "28P01" in proof.detail["old_evidence"] and proof.detail["new_works"]
    # against the issuer itself: the old password is refused, the stored new one logs in
    assert pgi.try_login(server, "app_direct", old)[0] == "refused"
    new = vault.kv_read(bao, "ci/app_direct").data["password"]
    assert new.get_secret_value() != old and pgi.try_login(server, "app_direct", new)[0] == "accepted"
    # the password never appears in the server log, the journal or the result (a SCRAM verifier was sent)
    text = Path(postgres.log_path).read_text(errors="replace") + json.dumps([e.detail for e in journal.entries("inc-db")])
    text += result.model_dump_json()
    assert new.get_secret_value() not in text and old not in text


def test_static_role_rotation_is_proven_by_a_database_login(tmp_path, postgres, vault_static_role, bao, openbao):
    setup = vault_static_role("app_static")
    vault.db_rotate_static_role(bao, "app_static")  # OpenBao's password is live again: that is what CI was given
    exposed = vault.db_static_credentials(bao, "app_static").password
    server = PG("127.0.0.1", postgres.port)
    assert pgi.try_login(server, setup.username, exposed)[0] == "accepted"
    inv = {"backends": {"vault_url": openbao.addr},
           "secrets": [{"name": "app_static", "issuer": {
               "kind": "vault-database-static-role", "ref": {"role": "app_static", "host": "127.0.0.1", "port": postgres.port}}}]}
    result, _ = _rotate(tmp_path, inv, "app_static", {"vault": bao}, incident="inc-static")
    proof = _proof(result)
    assert proof.outcome == "done" and proof.detail["old_refused"] and proof.detail["new_works"], proof
    assert pgi.try_login(server, setup.username, exposed)[0] == "refused"


def test_static_role_without_a_database_address_is_not_called_rotated(tmp_path, vault_static_role, bao, openbao):
    vault_static_role("app_noaddr")
    inv = {"backends": {"vault_url": openbao.addr},
           "secrets": [{"name": "app_noaddr", "backend": "vault-database-static-role", "ref": {"role": "app_noaddr"}}]}
    result, _ = _rotate(tmp_path, inv, "app_noaddr", {"vault": bao}, incident="inc-noaddr")
    assert [a.outcome for a in result.actions] == ["done"]
    proof = _proof(result)
    assert proof.outcome == "needs-person" and proof.detail["containment"] == "copy replaced; revocation unproven"


def test_vault_token_revoked_by_accessor_and_lookup_self_with_it_fails(tmp_path, bao, openbao):
    root = hvac.Client(url=openbao.addr, token=openbao.token)
    made = root.auth.token.create(policies=["default"], ttl="1h", display_name="ci-runner")["auth"]
    old, accessor = made["client_token"], made["accessor"]
    bao.secrets.kv.v2.create_or_update_secret(path="ci/bao-token", secret={"value": old})
    inv = {"backends": {"vault_url": openbao.addr},
           "secrets": [{"name": "bao-token", "issuer": {"kind": "vault-token", "ref": {"accessor": accessor}},
                        "stores": [{"kind": "vault-kv", "path": "ci/bao-token", "primary": True}],
                        "strategy": "revoke-first"}]}
    result, _ = _rotate(tmp_path, inv, "bao-token", {"vault": bao}, incident="inc-token")
    assert [a.outcome for a in result.actions] == ["done"], result
    proof = _proof(result)
    assert proof.outcome == "done" and proof.detail["containment"] == "rotated", proof
    assert vault.token_probe(openbao.addr, old) == ("refused", "403")
    new = vault.kv_read(bao, "ci/bao-token").data["value"]
    verdict, new_accessor = vault.token_probe(openbao.addr, new)
    assert verdict == "accepted" and new_accessor != accessor
    assert vault.token_lookup_accessor(bao, new_accessor)["policies"] == ["default"]


def test_kv_copy_without_an_issuer_is_copy_replaced_revocation_unproven(tmp_path, bao, openbao):
    bao.secrets.kv.v2.create_or_update_secret(path="ci/npm", secret={"value": "exposed-npm-token"})
    inv = {"backends": {"vault_url": openbao.addr},
           "secrets": [{"name": "npm", "backend": "vault-kv", "ref": {"path": "ci/npm"}}]}
    result, _ = _rotate(tmp_path, inv, "npm", {"vault": bao}, incident="inc-npm")
    assert [a.outcome for a in result.actions] == ["done"]
    proof = _proof(result)
    assert (proof.outcome, proof.error) == ("needs-person", "copy replaced; revocation unproven")
    assert not proof.detail["old_refused"] and not proof.detail["new_works"]


def test_a_held_value_that_was_never_live_proves_nothing(tmp_path, postgres, bao, openbao, monkeypatch):
    """The stash holds a wrong (stale) password: its refusal after the rotation must not count as proof."""
    _role(postgres, "app_stale")
    bao.secrets.kv.v2.create_or_update_secret(path="ci/app_stale",
                                              secret={"username": "app_stale", "password": "stale-value"})
    monkeypatch.setenv("DG_PG_ADMIN", postgres.password)
    inv = {"secrets": [{"name": "app_stale",
                        "issuer": {"kind": "postgres-role",
                                   "ref": {"host": "127.0.0.1", "port": postgres.port, "role": "app_stale",
                                           "admin_password": "env:DG_PG_ADMIN"}},
                        "stores": [{"kind": "vault-kv", "path": "ci/app_stale", "primary": True}]}]}
    result, _ = _rotate(tmp_path, inv, "app_stale", {"vault": bao}, incident="inc-stale")
    proof = _proof(result)
    assert proof.outcome == "needs-person" and "already refused before the rotation" in proof.detail["containment"], proof
