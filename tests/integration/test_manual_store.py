"""Manual items with a primary store: the person puts the new value there, the playbook copies it and probes it.

Real OpenBao holds a copy; the primary store is the GCP Secret Manager stand-in (flows/drill/servers/gcp_secrets.py,
Secret Manager's REST protocol to the unmodified google-cloud-secret-manager client); the issuer is the GitLab
stand-in's ``/personal_access_tokens/self`` as a declared probe.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from google.auth.credentials import AnonymousCredentials

from digestguard.advisory import load_advisory
from digestguard.findings import ExposedSecret, ExposureReport
from digestguard.inventory import parse_inventory
from digestguard.journal import Journal
from digestguard.plan import Approval
from flows.drill.servers.gcp_secrets import start_secret_manager_server
from flows.drill.servers.gitlab import GitLabServer
from integrations import gcp_secrets, vault
from tasks.rotate.stage import apply_rotation, plan_rotation


@pytest.fixture()
def world(tmp_path, openbao):
    gcp = start_secret_manager_server()
    gl = GitLabServer().start()
    gsm = gcp_secrets.secret_manager_client(credentials=AnonymousCredentials(), api_endpoint=gcp.url, transport="rest")
    gsm.create_secret(request={"parent": "projects/p", "secret_id": "vendor", "secret": {"replication": {"automatic": {}}}})
    old = gl.add_access_token("user:vendor", "vendor-api")
    gcp_secrets.add_version(gsm, "projects/p/secrets/vendor", old["token"])
    bao = vault.connect(openbao.addr, openbao.token)
    bao.secrets.kv.v2.create_or_update_secret(path="ci/vendor-copy", secret={"value": old["token"]})
    inv = parse_inventory({
        "backends": {"vault_url": openbao.addr, "gcp_endpoint": gcp.url, "gcp_project": "p"},
        "secrets": [{"name": "VENDOR", "issuer": {"kind": "manual", "where": "vendor portal", "probe": {
            "url": f"{gl.url}/personal_access_tokens/self", "send": "header", "header": "PRIVATE-TOKEN"}},
            "stores": [{"kind": "gcp-secretmanager", "name": "projects/p/secrets/vendor", "primary": True},
                       {"kind": "vault-kv", "path": "ci/vendor-copy"}]}]}, "inv", tmp_path)
    exposure = ExposureReport(advisory="a", window_start=datetime(2026, 4, 22, tzinfo=timezone.utc),
                              secrets=[ExposedSecret(name="VENDOR", mapped=True, inventory_name="VENDOR", exposure="confirmed",
                                                     exposed_by=["gh:acme/infra/1"])])
    plan = plan_rotation("inc-manual", load_advisory("kics-2026-04"), exposure, inv)
    approval = Approval(decision="approve", approvers=["alice"], plan_hash=plan.hash)
    yield {"gsm": gsm, "gl": gl, "old": old, "bao": bao, "inv": inv, "plan": plan, "approval": approval,
           "journal": Journal(tmp_path / "j.sqlite")}
    gl.stop()
    gcp.stop()


def _apply(w, confirm):
    return apply_rotation(w["plan"], w["approval"], w["inv"], w["journal"], clients={"vault": w["bao"], "gcp": w["gsm"]},
                          confirm_manual=confirm, probe_wait=2)


def test_the_new_value_put_in_the_primary_store_reaches_every_copy_and_is_proven(world):
    first = _apply(world, None)
    assert [a.outcome for a in first.actions] == ["needs-person"]
    # the person: revoke at the vendor, issue a new token, put it in the primary store; then confirm
    world["gl"].access_tokens[world["old"]["id"]]["active"] = False
    new = world["gl"].add_access_token("user:vendor", "vendor-api")["token"]
    gcp_secrets.add_version(world["gsm"], "projects/p/secrets/vendor", new)
    second = _apply(world, lambda item: True)
    assert [a.outcome for a in second.actions] == ["done"], second
    (c,) = [v for v in second.verification if v.action == "contain"]
    assert c.outcome == "done" and c.detail["old_refused"] and c.detail["new_works"] and c.detail["copies_in_step"], c
    assert vault.kv_read(world["bao"], "ci/vendor-copy").data["value"].get_secret_value() == new
    # the exposed version in the primary store is no longer readable
    versions = {v.version: v.enabled for v in gcp_secrets.list_versions(world["gsm"], "projects/p/secrets/vendor")}
    assert versions == {"1": False, "2": True}
    assert new not in second.model_dump_json() and world["old"]["token"] not in second.model_dump_json()
    assert [a.outcome for a in _apply(world, lambda item: True).actions] == ["already-done"]


def test_a_confirmation_without_a_new_value_in_the_store_stays_a_persons_item(world):
    result = _apply(world, lambda item: True)
    (a,) = result.actions
    assert a.outcome == "needs-person" and "still holds the exposed value" in a.error
    assert vault.kv_read(world["bao"], "ci/vendor-copy").data["value"].get_secret_value() == world["old"]["token"]
    assert not [v for v in result.verification if v.action == "contain"]
