"""plan_rotation / dry_run_result / the approval gate: pure functions, no services."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from digestguard.advisory import load_advisory
from digestguard.errors import PlanNotApproved
from digestguard.findings import ExposedSecret, ExposureReport
from digestguard.inventory import parse_inventory
from digestguard.journal import Journal
from digestguard.plan import Approval
from tasks.rotate.stage import apply_rotation, dry_run_result, plan_rotation

INVENTORY = {
    "secrets": [
        {"name": "registry-password", "backend": "vault-kv", "ref": {"path": "ci/registry", "key": "password"},
         "aliases": ["REGISTRY_PASSWORD"],
         "consumers": [{"kind": "github-actions-secret", "repo": "acme/api", "name": "REGISTRY_PASSWORD"},
                       {"kind": "gitlab-variable", "project": "acme/web", "key": "REGISTRY_PASSWORD"}]},
        {"name": "deploy-key", "backend": "aws-iam-access-key", "ref": {"user": "ci-deploy"},
         "aliases": ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
         "consumers": [{"kind": "github-actions-secret", "repo": "acme/api", "name": "AWS_ACCESS_KEY_ID", "field": "access_key_id"}]},
        {"name": "db", "backend": "vault-database-static-role", "ref": {"role": "app"}, "strategy": "overlap"},
    ],
}


def _exposure() -> ExposureReport:
    return ExposureReport(
        advisory="kics-2026-04", window_start=datetime(2026, 4, 22, 12, 35, tzinfo=timezone.utc),
        secrets=[
            ExposedSecret(name="REGISTRY_PASSWORD", inventory_name="registry-password", mapped=True,
                          exposed_by=["gh:acme/api/1"], how=["workflow secrets.REGISTRY_PASSWORD"], exposure="probable"),
            ExposedSecret(name="AWS_ACCESS_KEY_ID", inventory_name="deploy-key", mapped=True,
                          exposed_by=["gh:acme/api/1"], exposure="probable"),
            ExposedSecret(name="AWS_SECRET_ACCESS_KEY", inventory_name="deploy-key", mapped=True,
                          exposed_by=["gh:acme/api/2"], exposure="confirmed"),
            ExposedSecret(name="db", inventory_name="db", mapped=True, exposed_by=["gl:acme/web/9"], exposure="confirmed"),
            ExposedSecret(name="NPM_TOKEN", mapped=False, exposed_by=["gh:acme/api/1"], how=["workflow secrets.NPM_TOKEN"]),
        ],
    )


def _plan():
    inv = parse_inventory(INVENTORY, "inventory.yaml", Path("."))
    return plan_rotation("inc-1", load_advisory("kics-2026-04"), _exposure(), inv)


def test_plan_has_one_item_per_inventoried_secret_with_strategy_and_consumers():
    plan = _plan()
    assert plan.stage == "rotate"
    assert [i.target for i in plan.items] == ["secret:db", "secret:deploy-key", "secret:registry-password"]
    by = {i.target: i for i in plan.items}
    key = by["secret:deploy-key"]
    # two exposed names of one key: one item, the strongest exposure, both jobs, revoke-first by default
    assert key.kind == "aws-iam-access-key" and key.action == "rotate"
    assert key.params["exposure"] == "confirmed" and key.params["strategy"] == "revoke-first"
    assert key.params["exposed_by"] == ["gh:acme/api/1", "gh:acme/api/2"]
    assert key.params["consumers"][0]["id"] == "repo:acme/api:AWS_ACCESS_KEY_ID"
    assert by["secret:registry-password"].params["strategy"] == "overlap"  # probable
    assert by["secret:db"].params["strategy"] == "overlap"  # the inventory overrides confirmed's default
    assert [c["id"] for c in by["secret:registry-password"].params["consumers"]] == [
        "repo:acme/api:REGISTRY_PASSWORD", "project:acme/web:REGISTRY_PASSWORD"]
    assert by["secret:registry-password"].params["ref"] == {"path": "ci/registry", "key": "password"}
    # the unmapped secret is a note for a person, not silently dropped
    assert len(plan.notes) == 1 and plan.notes[0].startswith("NPM_TOKEN: not in the inventory")


def test_plan_hash_is_stable_and_markdown_shows_everything():
    a, b = _plan(), _plan()
    assert a.hash == b.hash
    md = a.markdown()
    assert "secret:deploy-key" in md and "NPM_TOKEN" in md and a.hash in md
    json.dumps([i.params for i in a.items])  # plain data, ids only


def test_dry_run_plans_everything_and_apply_refuses_without_matching_approval(tmp_path):
    plan = _plan()
    dry = dry_run_result(plan)
    assert dry.dry_run and [a.outcome for a in dry.actions] == ["planned"] * 3 and dry.notes == plan.notes
    inv = parse_inventory(INVENTORY, "inventory.yaml", Path("."))
    journal = Journal(tmp_path / "j.sqlite")
    with pytest.raises(PlanNotApproved):
        apply_rotation(plan, None, inv, journal)
    stale = Approval(decision="approve", approvers=["ana"], plan_hash="sha256:" + "0" * 64)
    with pytest.raises(PlanNotApproved, match="changed since"):
        apply_rotation(plan, stale, inv, journal)
    assert journal.entries("inc-1") == []  # nothing was attempted


def test_clients_are_built_from_backends_with_references_resolved_at_use(monkeypatch):
    """No service is contacted: the Azure credential and client are only constructed."""
    from azure.keyvault.secrets import SecretClient

    from digestguard.errors import InputError
    from digestguard.inventory import Backends, Inventory
    from tasks.connect import Connections

    monkeypatch.setenv("DG_TEST_AZ_SECRET", "client-secret-value")
    backends = Backends(azure_vault_url="https://example.vault.azure.net", azure_tenant_id="t", azure_client_id="c",
                        azure_client_secret="env:DG_TEST_AZ_SECRET", azure_authority="login.microsoftonline.com")
    inv = Inventory(backends=backends)
    clients = Connections(inv)
    assert isinstance(clients.get("azure"), SecretClient)
    assert clients.get("azure") is clients.get("azure")  # built once
    with pytest.raises(InputError, match="backends.vault_url"):
        clients.get("vault")
    monkeypatch.delenv("DG_TEST_AZ_SECRET")
    with pytest.raises(InputError, match="DG_TEST_AZ_SECRET") as e:
        Connections(inv).get("azure")
    assert "client-secret-value" not in str(e.value)
    given = object()
    assert Connections(inv, {"github": given}).get("github") is given


def test_plan_carries_the_issuer_and_updates_every_other_store(tmp_path):
    """Issue 16: a new-style secret's plan item names its issuer and lists the non-primary stores as copies to update."""
    inv = parse_inventory({"secrets": [{
        "name": "db", "issuer": {"kind": "postgres-role", "ref": {"role": "app", "host": "127.0.0.1", "port": 5432,
                                                              "admin_password": "env:DG_PG_ADMIN"}},
        "stores": [{"kind": "vault-kv", "path": "ci/db", "primary": True}, {"kind": "aws-secretsmanager", "name": "ci/db"}],
        "consumers": [{"kind": "github-actions-secret", "repo": "acme/api", "name": "DB_PASSWORD"}]}]}, "inv", tmp_path)
    exposure = ExposureReport(advisory="a", window_start=datetime(2026, 4, 22, tzinfo=timezone.utc),
                              secrets=[ExposedSecret(name="db", mapped=True, inventory_name="db", exposure="confirmed",
                                                     exposed_by=["job"])])
    plan = plan_rotation("inc", load_advisory("kics-2026-04"), exposure, inv)
    (item,) = plan.items
    assert item.kind == "postgres-role" and item.params["issuer"]["kind"] == "postgres-role"
    assert [c["kind"] for c in item.params["consumers"]] == ["vault-kv", "aws-secretsmanager", "github-actions-secret"]
