"""Proof of death for Docker Hub personal access tokens and GitLab project/group access tokens.

No Docker Hub or GitLab can run here: the stand-ins ``flows/drill/servers/dockerhub.py`` and
``flows/drill/servers/gitlab.py`` speak the vendors' documented wire protocols (Hub's
``/v2/users/login``, ``/v2/access-tokens``, ``/v2/auth/token``; GitLab's ``access_tokens/:id/rotate``
and ``/personal_access_tokens/self``), driven by the product's own HTTP calls. Copies live in real
OpenBao KV (the stash the new token is written to before anything else refers to it).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from digestguard.advisory import load_advisory
from digestguard.findings import ExposedSecret, ExposureReport
from digestguard.inventory import parse_inventory
from digestguard.journal import Journal
from digestguard.plan import Approval
from flows.drill.servers.dockerhub import start_dockerhub
from flows.drill.servers.gitlab import DEFAULT_TOKEN as GL_ADMIN, GitLabServer
from integrations import dockerhub, gitlab, vault
from tasks.rotate import issuers
from tasks.rotate.stage import apply_rotation, plan_rotation


@pytest.fixture()
def bao(openbao):
    return vault.connect(openbao.addr, openbao.token)


@pytest.fixture()
def hub():
    h = start_dockerhub()
    h.add_account("acme-ci", "hub-account-password-1")
    yield h
    h.stop()


@pytest.fixture()
def gl():
    g = GitLabServer().start()
    yield g
    g.stop()


def _rotate(tmp_path: Path, inv_data: dict, name: str, clients: dict, strategy: str = "revoke-first", incident: str = "inc-t"):
    inv_data["secrets"][0]["strategy"] = strategy
    inv = parse_inventory(inv_data, "inv", tmp_path)
    exposure = ExposureReport(advisory="a", window_start=datetime(2026, 4, 22, tzinfo=timezone.utc),
                              secrets=[ExposedSecret(name=name, mapped=True, inventory_name=name, exposure="confirmed",
                                                     exposed_by=["gh:acme/infra/1"])])
    plan = plan_rotation(incident, load_advisory("kics-2026-04"), exposure, inv)
    approval = Approval(decision="approve", approvers=["alice"], plan_hash=plan.hash)
    journal = Journal(tmp_path / "j.sqlite")
    return apply_rotation(plan, approval, inv, journal, clients=clients, probe_wait=3), journal


def _proof(result):
    (proof,) = [v for v in result.verification if v.action == "contain"]
    return proof


def _hub_inv(openbao, hub, path: str) -> dict:
    return {"backends": {"vault_url": openbao.addr},
            "secrets": [{"name": "DOCKERHUB_TOKEN",
                         "issuer": {"kind": "dockerhub-pat", "ref": {"api_url": hub.url, "username": "acme-ci",
                                                                     "token_label": "ci-pull",
                                                                     "admin_password": "env:DG_HUB_PASSWORD"}},
                         "stores": [{"kind": "vault-kv", "path": path, "primary": True}]}]}


@pytest.mark.parametrize("strategy", ["revoke-first", "overlap"])
def test_dockerhub_pat_is_replaced_and_the_old_one_deactivated_then_deleted(tmp_path, openbao, bao, hub, monkeypatch, strategy):
    monkeypatch.setenv("DG_HUB_PASSWORD", "hub-account-password-1")
    old = hub.add_pat("acme-ci", "ci-pull")
    path = f"ci/hub-{strategy}"
    bao.secrets.kv.v2.create_or_update_secret(path=path, secret={"value": old["token"]})
    result, journal = _rotate(tmp_path, _hub_inv(openbao, hub, path), "DOCKERHUB_TOKEN", {"vault": bao}, strategy)
    assert [a.outcome for a in result.actions] == ["done"], result
    proof = _proof(result)
    assert proof.outcome == "done" and proof.detail["containment"] == "rotated", proof
    # against the issuer: the old PAT is gone from Hub and refused at login; exactly one PAT left, the stored one
    assert old["uuid"] not in hub.pats
    assert dockerhub.pat_probe(hub.url, "acme-ci", old["token"])[0] == "refused"
    new = vault.kv_read(bao, path).data
    (left,) = hub.pats.values()
    assert left["uuid"] == new["uuid"].get_secret_value() and left["is_active"]
    assert dockerhub.pat_probe(hub.url, "acme-ci", new["value"])[0] == "accepted"
    dumped = json.dumps([e.detail for e in journal.entries("inc-t")], default=str) + result.model_dump_json()
    assert old["token"] not in dumped and new["value"].get_secret_value() not in dumped
    assert "hub-account-password-1" not in dumped
    # a second run changes nothing at Hub
    again, _ = _rotate(tmp_path, _hub_inv(openbao, hub, path), "DOCKERHUB_TOKEN", {"vault": bao}, strategy)
    assert [a.outcome for a in again.actions] == ["already-done"] and len(hub.pats) == 1


def test_dockerhub_wrong_account_password_fails_the_secret_and_leaves_the_old_pat(tmp_path, openbao, bao, hub, monkeypatch):
    monkeypatch.setenv("DG_HUB_PASSWORD", "not-the-password")
    old = hub.add_pat("acme-ci", "ci-pull")
    bao.secrets.kv.v2.create_or_update_secret(path="ci/hub-bad", secret={"value": old["token"]})
    result, _ = _rotate(tmp_path, _hub_inv(openbao, hub, "ci/hub-bad"), "DOCKERHUB_TOKEN", {"vault": bao})
    assert [a.outcome for a in result.actions] == ["failed"] and not result.ok
    assert "not-the-password" not in result.model_dump_json()
    assert list(hub.pats) == [old["uuid"]] and hub.pats[old["uuid"]]["is_active"]


def test_dockerhub_resume_adopts_the_stashed_pat_and_deletes_an_orphan(tmp_path, openbao, bao, hub, monkeypatch):
    """A crash after a PAT was created but before the stash write leaves an orphan: the resumed run deletes it."""
    monkeypatch.setenv("DG_HUB_PASSWORD", "hub-account-password-1")
    old = hub.add_pat("acme-ci", "ci-pull")
    bao.secrets.kv.v2.create_or_update_secret(path="ci/hub-crash", secret={"value": old["token"]})
    inv = _hub_inv(openbao, hub, "ci/hub-crash")
    real_create = issuers.DockerHubPat.create
    monkeypatch.setattr(issuers.DockerHubPat, "create", lambda self, base: (real_create(self, base), os_exit())[0])
    with pytest.raises(SystemExit):
        _rotate(tmp_path, inv, "DOCKERHUB_TOKEN", {"vault": bao})
    assert len(hub.pats) == 2  # the orphan exists at Hub, nobody holds it
    monkeypatch.setattr(issuers.DockerHubPat, "create", real_create)
    result, _ = _rotate(tmp_path, inv, "DOCKERHUB_TOKEN", {"vault": bao})
    assert [a.outcome for a in result.actions] == ["done"], result
    (left,) = hub.pats.values()
    assert left["uuid"] == vault.kv_read(bao, "ci/hub-crash").data["uuid"].get_secret_value()
    assert _proof(result).detail["containment"] == "rotated"


def os_exit():
    raise SystemExit("killed after create")


def _gl_inv(openbao, gl, owner: str, owner_id: int, token_id: int, path: str) -> dict:
    return {"backends": {"vault_url": openbao.addr},
            "secrets": [{"name": "GITLAB_TOKEN",
                         "issuer": {"kind": "gitlab-access-token",
                                    "ref": {"api_url": gl.url, owner: owner_id, "token_id": token_id,
                                            "admin_token": "env:DG_GL_ADMIN"}},
                         "stores": [{"kind": "vault-kv", "path": path, "primary": True}]}]}


@pytest.mark.parametrize("owner", ["project", "group"])
def test_gitlab_access_token_rotated_by_gitlab_and_the_old_one_refused(tmp_path, openbao, bao, gl, monkeypatch, owner):
    monkeypatch.setenv("DG_GL_ADMIN", GL_ADMIN)
    oid = gl.add_project("acme/infra") if owner == "project" else gl.add_group("acme")
    old = gl.add_access_token(f"{owner}:{oid}", "ci-bot")
    path = f"ci/gl-{owner}"
    bao.secrets.kv.v2.create_or_update_secret(path=path, secret={"value": old["token"]})
    result, journal = _rotate(tmp_path, _gl_inv(openbao, gl, owner, oid, old["id"], path), "GITLAB_TOKEN", {"vault": bao})
    assert [a.outcome for a in result.actions] == ["done"], result
    proof = _proof(result)
    assert proof.outcome == "done" and proof.detail["containment"] == "rotated", proof
    assert gitlab.token_probe(gl.url, old["token"])[0] == "refused"
    new = vault.kv_read(bao, path).data["value"]
    assert gitlab.token_probe(gl.url, new)[0] == "accepted"
    live = [t for t in gl.access_tokens.values() if t["active"]]
    assert [t["token"] for t in live] == [new.get_secret_value()]
    assert len(gl.calls_to("POST", r"/rotate$")) == 1
    dumped = json.dumps([e.detail for e in journal.entries("inc-t")], default=str) + result.model_dump_json()
    assert old["token"] not in dumped and new.get_secret_value() not in dumped and GL_ADMIN not in dumped


def test_gitlab_crash_after_rotate_before_stash_rotates_the_lost_token_again(tmp_path, openbao, bao, gl, monkeypatch):
    """GitLab showed the new token once and the process died: nobody holds it. The resumed run rotates the live
    token of that name (revoking the lost one); in the end exactly one token is alive and it is the stored one."""
    monkeypatch.setenv("DG_GL_ADMIN", GL_ADMIN)
    pid = gl.add_project("acme/crash")
    old = gl.add_access_token(f"project:{pid}", "ci-bot")
    bao.secrets.kv.v2.create_or_update_secret(path="ci/gl-crash", secret={"value": old["token"]})
    inv = _gl_inv(openbao, gl, "project", pid, old["id"], "ci/gl-crash")
    real = issuers.GitLabAccessToken.create
    monkeypatch.setattr(issuers.GitLabAccessToken, "create", lambda self, base: (real(self, base), os_exit())[0])
    with pytest.raises(SystemExit):
        _rotate(tmp_path, inv, "GITLAB_TOKEN", {"vault": bao})
    monkeypatch.setattr(issuers.GitLabAccessToken, "create", real)
    result, _ = _rotate(tmp_path, inv, "GITLAB_TOKEN", {"vault": bao})
    assert [a.outcome for a in result.actions] == ["done"], result
    live = [t for t in gl.access_tokens.values() if t["active"]]
    stored = vault.kv_read(bao, "ci/gl-crash").data["value"].get_secret_value()
    assert [t["token"] for t in live] == [stored]
    assert gitlab.token_probe(gl.url, old["token"])[0] == "refused"


def test_gitlab_probe_refuses_an_unknown_token_and_names_no_value(gl):
    assert gitlab.token_probe(gl.url, "glpat-notatoken00000000") == ("refused", "HTTP 401")
    assert gitlab.token_probe(gl.url, GL_ADMIN)[0] == "accepted"
