"""Stage 3, rotate, through real parts.

* Vault: the REAL OpenBao dev server (KV v2), and its database engine's static
  roles against a REAL PostgreSQL (the old password stops logging in, the new one works).
* AWS IAM and Secrets Manager: the REAL moto server.
* Azure Key Vault (over TLS), GCP Secret Manager, GitHub and GitLab: the LOCAL
  PROTOCOL SERVERS in tests/fakes/ (azure_keyvault.py, gcp_secrets.py,
  github.py, gitlab.py), spoken to by the vendors' SDKs / our clients unchanged.
  The GitHub server opens what it receives with its private key, so the tests
  read back exactly what a workflow would get.

Crash-resume: a rotation is interrupted (a consumer client raising a simulated
crash, or a subprocess SIGKILLed at a journaled point) and run again.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from azure.core.credentials import AccessToken
from google.auth.credentials import AnonymousCredentials
from pydantic import SecretStr

from digestguard.advisory import load_advisory
from digestguard.findings import ExposedSecret, ExposureReport
from digestguard.inventory import parse_inventory
from digestguard.journal import Journal
from digestguard.plan import Approval
from flows.drill.servers.gcp_secrets import start_secret_manager_server
from flows.drill.servers.github import DEFAULT_TOKEN as GH_TOKEN, GitHubServer
from flows.drill.servers.gitlab import DEFAULT_TOKEN as GL_TOKEN, GitLabServer
from integrations import aws_iam, aws_secrets, azure_keyvault, gcp_secrets, vault
from integrations.github import GitHubClient
from integrations.gitlab import GitLabClient
from tasks.rotate.stage import apply_rotation, plan_rotation
from tests.fakes.azure_keyvault import start_keyvault_server

AWS = {"region_name": "us-east-1", "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
KV_TOKEN = "kv-rotate-token"


class StaticToken:
    """An Azure TokenCredential handing out the local Key Vault server's token."""

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        return AccessToken(KV_TOKEN, int(time.time()) + 3600)


# --------------------------------------------------------------------------- the estate


@pytest.fixture(scope="module")
def github():
    with GitHubServer() as srv:
        srv.add_repo("acme", "api", environments=("production",))
        yield srv


@pytest.fixture(scope="module")
def gitlab():
    with GitLabServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def keyvault(tmp_path_factory):
    srv = start_keyvault_server(str(tmp_path_factory.mktemp("kv-rotate")), token=KV_TOKEN)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def gsm():
    srv = start_secret_manager_server()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def clients(openbao, moto_server, github, gitlab, keyvault, gsm) -> dict[str, Any]:
    """Ready clients for every backend and consumer, as ``apply_rotation(clients=...)`` takes them."""
    out = {
        "vault": vault.connect(openbao.addr, openbao.token),
        "iam": aws_iam.iam_client(endpoint_url=moto_server, **AWS),
        "secretsmanager": aws_secrets.secrets_client(endpoint_url=moto_server, **AWS),
        "azure": azure_keyvault.keyvault_client(keyvault.url, StaticToken(), connection_verify=keyvault.cert_path,
                                                verify_challenge_resource=False, retry_total=0),
        "gcp": gcp_secrets.secret_manager_client(credentials=AnonymousCredentials(), api_endpoint=gsm.url, transport="rest"),
        "github": GitHubClient(SecretStr(GH_TOKEN), api_url=github.url, max_wait=2, backoff=0.05),
        "gitlab": GitLabClient(GL_TOKEN, api_url=gitlab.base, max_wait=2, backoff=0.05),
    }
    yield out
    out["github"].close()
    out["gitlab"].close()


@pytest.fixture()
def journal(tmp_path) -> Journal:
    j = Journal(tmp_path / "journal.sqlite")
    yield j
    j.close()


def _uid() -> str:
    return secrets.token_hex(4)


def plan_for(secrets_: list[dict[str, Any]], exposure: str = "probable", incident: str | None = None):
    """Inventory + exposure (every secret mapped) -> an approved rotation plan."""
    inv = parse_inventory({"secrets": secrets_, "backends": {"gcp_project": "demo"}}, "inventory.yaml", Path("."))
    report = ExposureReport(advisory="kics-2026-04", window_start=datetime(2026, 4, 22, tzinfo=timezone.utc), secrets=[
        ExposedSecret(name=s["name"], inventory_name=s["name"], mapped=True, exposed_by=["gh:acme/api/run/1/job/2"],
                      exposure=exposure) for s in secrets_])
    plan = plan_rotation(incident or f"inc-{_uid()}", load_advisory("kics-2026-04"), report, inv)
    return plan, Approval(decision="approve", approvers=["ana"], plan_hash=plan.hash), inv


def journal_text(path: Path) -> bytes:
    """Every byte of the journal database and its WAL/SHM files."""
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def new_gitlab_project(gitlab: GitLabServer, key: str, value: str) -> int:
    pid = gitlab.add_project(f"acme/p{_uid()}")
    gitlab.add_variable(f"project:{pid}", key, value, masked=True)
    return pid


# --------------------------------------------------------------------------- vault kv


def test_vault_kv_overlap_updates_every_consumer_then_soft_deletes_the_exposed_versions(clients, github, gitlab, gsm, journal):
    vc = clients["vault"]
    path = f"ci/registry-{_uid()}"
    vault.kv_write(vc, path, {"password": "leaked-one-aaaaaaaa", "username": "ci"})
    vault.kv_write(vc, path, {"password": "leaked-two-aaaaaaaa", "username": "ci"})
    pid = new_gitlab_project(gitlab, "REGISTRY_PASSWORD", "leaked-two-aaaaaaaa")
    copy = f"copy-{_uid()}"
    gcp_secrets.create_secret(clients["gcp"], "demo", copy)
    name = f"registry-{_uid()}"
    plan, approval, inv = plan_for([{
        "name": name, "backend": "vault-kv", "ref": {"path": path, "key": "password"},
        "consumers": [
            {"kind": "github-actions-secret", "repo": "acme/api", "name": "REGISTRY_PASSWORD"},
            {"kind": "github-actions-secret", "repo": "acme/api", "environment": "production", "name": "REGISTRY_PASSWORD"},
            {"kind": "github-actions-secret", "org": "acme", "name": "REGISTRY_PASSWORD"},
            {"kind": "gitlab-variable", "project": str(pid), "key": "REGISTRY_PASSWORD"},
            {"kind": "azure-keyvault", "name": f"registry-copy-{_uid()}"},
            {"kind": "gcp-secretmanager", "name": copy},
        ]}])

    result = apply_rotation(plan, approval, inv, journal, clients=clients)

    assert [(a.target, a.outcome) for a in result.actions] == [(f"secret:{name}", "done")], result
    detail = result.actions[0].detail
    assert detail["version"] == "3" and detail["revoked"] == {"soft_deleted": [1, 2]} and len(detail["consumers"]) == 6
    meta = vault.kv_metadata(vc, path)
    assert meta.current_version == 3 and meta.live_versions() == [3]
    new = vault.kv_read(vc, path, version=3).data
    value = new["password"].get_secret_value()
    assert new["username"].get_secret_value() == "ci"  # the entry's other keys are kept
    assert value not in ("leaked-one-aaaaaaaa", "leaked-two-aaaaaaaa") and len(value) >= 32
    for scope in ("repo:acme/api", "env:acme/api/production", "org:acme"):
        assert github.decrypt_secret(scope, "REGISTRY_PASSWORD") == value
    assert gitlab.variables[(f"project:{pid}", "REGISTRY_PASSWORD", "*")]["value"] == value
    copy_name = [c for c in plan.items[0].params["consumers"] if c["kind"] == "azure-keyvault"][0]["name"]
    assert azure_keyvault.current_value_matches(clients["azure"], copy_name, value)
    assert gcp_secrets.latest_matches(clients["gcp"], f"projects/demo/secrets/{copy}", value)
    assert value.encode() not in journal_text(journal.path)
    assert value not in result.model_dump_json()

    # a second run changes nothing: no new version anywhere
    again = apply_rotation(plan, approval, inv, journal, clients=clients)
    assert [a.outcome for a in again.actions] == ["already-done"]
    assert vault.kv_metadata(vc, path).current_version == 3
    assert len(gcp_secrets.list_versions(clients["gcp"], f"projects/demo/secrets/{copy}")) == 1


def test_vault_kv_with_several_keys_and_no_ref_key_fails_that_secret_and_the_others_continue(clients, github, journal):
    vc = clients["vault"]
    ambiguous, fine = f"ci/amb-{_uid()}", f"ci/fine-{_uid()}"
    vault.kv_write(vc, ambiguous, {"a": "leaked-aaaaaaaaaaaa", "b": "leaked-bbbbbbbbbbbb"})
    vault.kv_write(vc, fine, {"token": "leaked-cccccccccccc"})
    plan, approval, inv = plan_for([
        {"name": "amb", "backend": "vault-kv", "ref": {"path": ambiguous},
         "consumers": [{"kind": "github-actions-secret", "repo": "acme/api", "name": "AMB"}]},
        {"name": "fine", "backend": "vault-kv", "ref": {"path": fine},
         "consumers": [{"kind": "github-actions-secret", "repo": "acme/api", "name": "FINE"}]},
        {"name": "missing", "backend": "azure-keyvault", "ref": {"name": f"nope-{_uid()}"}},
    ], exposure="confirmed")

    result = apply_rotation(plan, approval, inv, journal, clients=clients)

    out = {a.target: a for a in result.actions}
    assert out["secret:fine"].outcome == "done"
    assert github.decrypt_secret("repo:acme/api", "FINE") == vault.kv_read(vc, fine).data["token"].get_secret_value()
    assert vault.kv_metadata(vc, fine).live_versions() == [2]  # revoke-first: the exposed version went at once
    assert out["secret:amb"].outcome == "failed" and "name the one to rotate" in out["secret:amb"].error
    assert vault.kv_metadata(vc, ambiguous).current_version == 1  # nothing written for it
    assert out["secret:missing"].outcome == "failed" and "was not found" in out["secret:missing"].error
    assert not result.ok


# --------------------------------------------------------------------------- vault database static role


def test_static_role_rotation_kills_the_leaked_password_and_hands_the_new_one_to_consumers(
        clients, postgres, vault_static_role, gitlab, journal):
    setup = vault_static_role(f"app_{_uid()}")
    pid = new_gitlab_project(gitlab, "DB_PASSWORD", setup.initial_password)
    plan, approval, inv = plan_for([{
        "name": "db", "backend": "vault-database-static-role", "ref": {"role": setup.role},
        "consumers": [{"kind": "gitlab-variable", "project": str(pid), "key": "DB_PASSWORD"},
                      {"kind": "gitlab-variable", "project": str(pid), "key": "DB_USER", "field": "username"}]}],
        exposure="confirmed")

    result = apply_rotation(plan, approval, inv, journal, clients=clients)

    assert [a.outcome for a in result.actions] == ["done"], result
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(postgres.dsn(setup.username, setup.initial_password)).close()
    stored = gitlab.variables[(f"project:{pid}", "DB_PASSWORD", "*")]["value"]
    assert gitlab.variables[(f"project:{pid}", "DB_USER", "*")]["value"] == setup.username
    with psycopg.connect(postgres.dsn(setup.username, stored)) as conn:
        assert conn.execute("select current_user").fetchone()[0] == setup.username
    assert stored.encode() not in journal_text(journal.path)
    # re-run: no second rotate-role
    before = vault.db_static_role_status(clients["vault"], setup.role).last_vault_rotation
    assert [a.outcome for a in apply_rotation(plan, approval, inv, journal, clients=clients).actions] == ["already-done"]
    assert vault.db_static_role_status(clients["vault"], setup.role).last_vault_rotation == before


# --------------------------------------------------------------------------- aws


def _iam_user(clients, keys: int = 1) -> tuple[str, list[str]]:
    user = f"ci-{_uid()}"
    clients["iam"].create_user(UserName=user)
    return user, [aws_iam.create_access_key(clients["iam"], user).access_key_id for _ in range(keys)]


def test_iam_key_revoke_first_stores_both_parts_and_deletes_the_exposed_key(clients, github, journal):
    user, (old,) = _iam_user(clients)
    stash = f"ci/aws-{_uid()}"
    plan, approval, inv = plan_for([{
        "name": "deploy", "backend": "aws-iam-access-key", "ref": {"user": user},
        "consumers": [{"kind": "vault-kv", "path": stash},
                      {"kind": "github-actions-secret", "repo": "acme/api", "name": "AWS_ACCESS_KEY_ID", "field": "access_key_id"},
                      {"kind": "github-actions-secret", "repo": "acme/api", "name": "AWS_SECRET_ACCESS_KEY",
                       "field": "secret_access_key"}]}], exposure="confirmed")

    result = apply_rotation(plan, approval, inv, journal, clients=clients)

    assert [a.outcome for a in result.actions] == ["done"], result
    keys = aws_iam.list_access_keys(clients["iam"], user)
    assert len(keys) == 1 and keys[0].access_key_id != old and keys[0].status == "Active"
    pair = vault.kv_read(clients["vault"], stash).data
    assert pair["access_key_id"].get_secret_value() == keys[0].access_key_id
    assert github.decrypt_secret("repo:acme/api", "AWS_ACCESS_KEY_ID") == keys[0].access_key_id
    secret = github.decrypt_secret("repo:acme/api", "AWS_SECRET_ACCESS_KEY")
    assert secret == pair["secret_access_key"].get_secret_value() and len(secret) >= 20
    assert secret.encode() not in journal_text(journal.path) and secret not in result.model_dump_json()
    assert result.actions[0].detail["revoked"] == {"deleted_keys": [old]}


def test_iam_overlap_at_the_two_key_limit_removes_the_inactive_exposed_key_first(clients, github, journal):
    user, (k1, k2) = _iam_user(clients, keys=2)
    aws_iam.deactivate_access_key(clients["iam"], user, k1)
    plan, approval, inv = plan_for([{
        "name": "deploy2", "backend": "aws-iam-access-key", "ref": {"user": user},
        "consumers": [{"kind": "github-actions-secret", "repo": "acme/api", "name": "AWS_KEY_ID2", "field": "access_key_id"}]}],
        exposure="probable")

    result = apply_rotation(plan, approval, inv, journal, clients=clients)

    assert [a.outcome for a in result.actions] == ["done"], result
    keys = aws_iam.list_access_keys(clients["iam"], user)
    assert [k.access_key_id for k in keys] == [github.decrypt_secret("repo:acme/api", "AWS_KEY_ID2")]
    assert {k1, k2}.isdisjoint({k.access_key_id for k in keys})
    assert any("2-key limit" in n for n in result.notes)
    rows = {e.action: e for e in journal.entries(plan.incident)}
    assert rows["make-room"].detail["deleted_keys"] == [k1]  # the inactive exposed one went first
    assert rows["revoke-old"].detail["deleted_keys"] == [k1, k2]


def test_secretsmanager_put_value_moves_awscurrent_and_retires_the_previous(clients, gitlab, journal):
    sm = clients["secretsmanager"]
    sid = f"ci/npm-{_uid()}"
    sm.create_secret(Name=sid, SecretString="leaked-npm-token-aaaa")
    old = aws_secrets.describe_secret(sm, sid).current_version_id
    pid = new_gitlab_project(gitlab, "NPM_TOKEN", "leaked-npm-token-aaaa")
    plan, approval, inv = plan_for([{
        "name": "npm", "backend": "aws-secretsmanager", "ref": {"secret_id": sid},
        "consumers": [{"kind": "gitlab-variable", "project": str(pid), "key": "NPM_TOKEN"}]}])

    result = apply_rotation(plan, approval, inv, journal, clients=clients)

    assert [a.outcome for a in result.actions] == ["done"], result
    d = aws_secrets.describe_secret(sm, sid)
    assert d.current_version_id == result.actions[0].detail["version"] != old
    assert "AWSPREVIOUS" not in d.versions.get(old, ()) and "AWSCURRENT" not in d.versions.get(old, ())
    value = aws_secrets.read_current(sm, sid).value.get_secret_value()
    assert gitlab.variables[(f"project:{pid}", "NPM_TOKEN", "*")]["value"] == value != "leaked-npm-token-aaaa"
    # the exposed version is not just unlabelled: GetSecretValue on its VersionId is denied to everyone
    # (moto stores resource policies but does not enforce them; real AWS evaluates the explicit Deny)
    policy = json.loads(sm.get_resource_policy(SecretId=sid)["ResourcePolicy"])
    (deny,) = [st for st in policy["Statement"] if st["Sid"] == aws_secrets.DENY_SID]
    assert deny["Effect"] == "Deny" and deny["Action"] == "secretsmanager:GetSecretValue" and deny["Principal"] == "*"
    assert deny["Condition"]["StringEquals"]["secretsmanager:VersionId"] == [old]
    apply_rotation(plan, approval, inv, journal, clients=clients)
    assert len(aws_secrets.describe_secret(sm, sid).versions) == 2  # one new version, even after a re-run
    again = json.loads(sm.get_resource_policy(SecretId=sid)["ResourcePolicy"])
    assert again == policy  # the re-run added nothing


# --------------------------------------------------------------------------- azure, gcp, manual, retries


def test_azure_and_gcp_get_a_new_version_and_their_exposed_versions_disabled(clients, keyvault, github, journal):
    kv, gcp = clients["azure"], clients["gcp"]
    aname, gid = f"registry-{_uid()}", f"token-{_uid()}"
    azure_keyvault.set_secret_version(kv, aname, "leaked-azure-aaaaaaa")
    azure_keyvault.set_secret_version(kv, aname, "leaked-azure-bbbbbbb")
    gname = gcp_secrets.create_secret(gcp, "demo", gid)
    gcp_secrets.add_version(gcp, gname, "leaked-gcp-aaaaaaaaa")
    keyvault.fail_next(503)  # the first call answers 503: the stage retries the secret
    plan, approval, inv = plan_for([
        {"name": "az", "backend": "azure-keyvault", "ref": {"name": aname},
         "consumers": [{"kind": "github-actions-secret", "repo": "acme/api", "name": "AZ_SECRET"}]},
        {"name": "gc", "backend": "gcp-secretmanager", "ref": {"name": gid},
         "consumers": [{"kind": "github-actions-secret", "repo": "acme/api", "name": "GCP_SECRET"}]},
    ], exposure="confirmed")

    result = apply_rotation(plan, approval, inv, journal, clients=clients, backoff=0.05)

    assert [a.outcome for a in result.actions] == ["done", "done"], result
    versions = azure_keyvault.list_versions(kv, aname)
    assert [v.enabled for v in versions] == [False, False, True]
    assert azure_keyvault.current_value_matches(kv, aname, github.decrypt_secret("repo:acme/api", "AZ_SECRET"))
    assert {v.version: v.state for v in gcp_secrets.list_versions(gcp, gname)} == {"1": "DISABLED", "2": "ENABLED"}
    assert gcp_secrets.latest_matches(gcp, gname, github.decrypt_secret("repo:acme/api", "GCP_SECRET"))


def test_manual_items_wait_for_a_person(clients, journal):
    plan, approval, inv = plan_for([{"name": "jenkins", "backend": "manual", "ref": {"where": "jenkins credentials"}}])
    first = apply_rotation(plan, approval, inv, journal, clients=clients)
    assert [a.outcome for a in first.actions] == ["needs-person"]
    asked = []
    second = apply_rotation(plan, approval, inv, journal, clients=clients, confirm_manual=lambda item: asked.append(item.target) or True)
    assert [a.outcome for a in second.actions] == ["done"] and asked == ["secret:jenkins"]
    assert [a.outcome for a in apply_rotation(plan, approval, inv, journal, clients=clients).actions] == ["already-done"]


# --------------------------------------------------------------------------- crash and resume


class SimulatedCrash(BaseException):
    """Stands for the process dying: not an Exception, so nothing may catch it on the way."""


class CrashingGitHub:
    """The real GitHubClient, except that the ``n``-th secret write dies like a killed process."""

    def __init__(self, real: GitHubClient, n: int = 1) -> None:
        self.real, self.n = real, n

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.real, name)
        if not name.startswith("set_"):
            return attr

        def wrapped(*a: Any, **kw: Any) -> Any:
            self.n -= 1
            if self.n == 0:
                raise SimulatedCrash("power cut")
            return attr(*a, **kw)

        return wrapped


def test_crash_after_the_new_version_resumes_without_a_second_version(clients, github, journal):
    vc = clients["vault"]
    path = f"ci/crash-{_uid()}"
    vault.kv_write(vc, path, {"token": "leaked-crash-aaaaaaa"})
    plan, approval, inv = plan_for([{
        "name": "crashy", "backend": "vault-kv", "ref": {"path": path},
        "consumers": [{"kind": "github-actions-secret", "repo": "acme/api", "name": "CRASH_A"},
                      {"kind": "github-actions-secret", "repo": "acme/api", "name": "CRASH_B"}]}])

    with pytest.raises(SimulatedCrash):
        apply_rotation(plan, approval, inv, journal, clients={**clients, "github": CrashingGitHub(clients["github"], n=2)})
    rows = {e.action: e.status for e in journal.entries(plan.incident)}
    assert rows["new-version"] == "done" and rows["consumer:github-actions-secret:repo:acme/api:CRASH_A"] == "done"
    assert rows["consumer:github-actions-secret:repo:acme/api:CRASH_B"] == "failed"
    assert vault.kv_metadata(vc, path).live_versions() == [1, 2]  # overlap: the old one is still readable

    result = apply_rotation(plan, approval, inv, journal, clients=clients)

    assert [a.outcome for a in result.actions] == ["done"]
    meta = vault.kv_metadata(vc, path)
    assert meta.current_version == 2 and meta.live_versions() == [2]  # exactly one new version; the old one revoked
    value = vault.kv_read(vc, path).data["token"].get_secret_value()
    assert github.decrypt_secret("repo:acme/api", "CRASH_A") == value == github.decrypt_secret("repo:acme/api", "CRASH_B")


class CrashingSecretsManager:
    """The real boto3 Secrets Manager client, except that ``put_secret_value`` dies once."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def __getattr__(self, name: str) -> Any:
        if name == "put_secret_value":
            def crash(**kw: Any) -> Any:
                raise SimulatedCrash("power cut")
            return crash
        return getattr(self.real, name)


def test_iam_crash_before_the_stash_write_deletes_the_orphan_key_and_makes_another(clients, github, journal):
    user, (old,) = _iam_user(clients)
    sid = f"ci/aws-stash-{_uid()}"
    clients["secretsmanager"].create_secret(Name=sid, SecretString="{}")
    plan, approval, inv = plan_for([{
        "name": "iam-orphan", "backend": "aws-iam-access-key", "ref": {"user": user},
        "consumers": [{"kind": "aws-secretsmanager", "name": sid},
                      {"kind": "github-actions-secret", "repo": "acme/api", "name": "ORPHAN_KEY_ID", "field": "access_key_id"}]}])

    with pytest.raises(SimulatedCrash):
        apply_rotation(plan, approval, inv, journal, clients={**clients, "secretsmanager": CrashingSecretsManager(clients["secretsmanager"])})
    orphan = [k.access_key_id for k in aws_iam.list_access_keys(clients["iam"], user) if k.access_key_id != old]
    assert len(orphan) == 1  # created, its secret stored nowhere

    result = apply_rotation(plan, approval, inv, journal, clients=clients)

    assert [a.outcome for a in result.actions] == ["done"], result
    keys = [k.access_key_id for k in aws_iam.list_access_keys(clients["iam"], user)]
    assert len(keys) == 1 and keys[0] not in (old, orphan[0])  # orphan deleted, old revoked (overlap: at the end)
    stashed = json.loads(aws_secrets.read_current(clients["secretsmanager"], sid).value.get_secret_value())
    assert stashed["access_key_id"] == keys[0] == github.decrypt_secret("repo:acme/api", "ORPHAN_KEY_ID")


def test_iam_stash_that_refuses_leaves_no_unstored_key_behind(clients, journal):
    user, (old,) = _iam_user(clients)
    plan, approval, inv = plan_for([{
        "name": "iam-nostash", "backend": "aws-iam-access-key", "ref": {"user": user},
        "consumers": [{"kind": "aws-secretsmanager", "name": f"ci/missing-{_uid()}"}]}])

    result = apply_rotation(plan, approval, inv, journal, clients=clients)

    assert [a.outcome for a in result.actions] == ["failed"] and "can't find" in result.actions[0].error
    assert [k.access_key_id for k in aws_iam.list_access_keys(clients["iam"], user)] == [old]  # new key discarded
    rows = {e.action: e for e in journal.entries(plan.incident)}
    assert rows["discard-lost-key"].status == "done" and rows["new-version"].status == "failed"


_CHILD = r"""
import sys, time
from pydantic import SecretStr
from digestguard.journal import Journal
from digestguard.plan import Approval, Plan
from digestguard.inventory import Inventory
from integrations import aws_iam, vault
from integrations.github import GitHubClient
from tasks.rotate.stage import apply_rotation

args = dict(a.split("=", 1) for a in sys.argv[1:])
plan = Plan.model_validate_json(open(args["plan"]).read())
inv = Inventory.model_validate_json(open(args["inventory"]).read())
approval = Approval(decision="approve", approvers=["ana"], plan_hash=plan.hash)

class Hang:
    def __init__(self, real): self.real = real
    def __getattr__(self, name):
        if name.startswith("set_"):
            def hang(*a, **kw):
                time.sleep(600)
            return hang
        return getattr(self.real, name)

clients = {
    "vault": vault.connect(args["vault"], args["vault_token"]),
    "iam": aws_iam.iam_client(endpoint_url=args["moto"], region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing"),
    "github": Hang(GitHubClient(SecretStr(args["gh_token"]), api_url=args["github"])),
}
apply_rotation(plan, approval, inv, Journal(args["journal"]), clients=clients)
"""


def _run_and_kill(tmp_path: Path, plan, inv, journal: Journal, openbao, moto_server, github, until: str) -> None:
    """Run apply_rotation in a child process; SIGKILL it once the journal shows ``until`` started."""
    (tmp_path / "plan.json").write_text(plan.model_dump_json())
    (tmp_path / "inv.json").write_text(inv.model_dump_json())
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, f"plan={tmp_path / 'plan.json'}", f"inventory={tmp_path / 'inv.json'}",
         f"journal={journal.path}", f"vault={openbao.addr}", f"vault_token={openbao.token}", f"moto={moto_server}",
         f"github={github.url}", f"gh_token={GH_TOKEN}"],
        cwd=Path(__file__).resolve().parents[2], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            row = journal.get(plan.incident, "rotate", plan.items[0].target, until)
            if row is not None and row.status == "started":
                break
            if child.poll() is not None:
                pytest.fail(f"child ended early: {child.stdout.read().decode()[-3000:]}")
            assert time.monotonic() < deadline, "the child never reached the kill point"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL


def test_sigkill_during_consumer_update_resumes_with_the_same_kv_value(tmp_path, clients, github, openbao, moto_server, journal):
    vc = clients["vault"]
    path = f"ci/kill-{_uid()}"
    vault.kv_write(vc, path, {"token": "leaked-kill-aaaaaaaa"})
    plan, approval, inv = plan_for([{
        "name": "killed", "backend": "vault-kv", "ref": {"path": path},
        "consumers": [{"kind": "github-actions-secret", "repo": "acme/api", "name": "KILLED"}]}], exposure="confirmed")

    _run_and_kill(tmp_path, plan, inv, journal, openbao, moto_server, github, until="consumer:github-actions-secret:repo:acme/api:KILLED")
    assert vault.kv_metadata(vc, path).live_versions() == [2]  # revoke-first: done before the kill

    result = apply_rotation(plan, approval, inv, journal, clients=clients)

    assert [a.outcome for a in result.actions] == ["done"], result
    assert vault.kv_metadata(vc, path).current_version == 2  # no second version after the resume
    assert github.decrypt_secret("repo:acme/api", "KILLED") == vault.kv_read(vc, path).data["token"].get_secret_value()


def test_sigkill_after_an_iam_key_without_a_stash_replaces_the_lost_key(tmp_path, clients, github, openbao, moto_server, journal):
    user, (old,) = _iam_user(clients)
    plan, approval, inv = plan_for([{
        "name": "nostash", "backend": "aws-iam-access-key", "ref": {"user": user},
        "consumers": [{"kind": "github-actions-secret", "repo": "acme/api", "name": "NOSTASH_ID", "field": "access_key_id"},
                      {"kind": "github-actions-secret", "repo": "acme/api", "name": "NOSTASH_SECRET",
                       "field": "secret_access_key"}]}])

    _run_and_kill(tmp_path, plan, inv, journal, openbao, moto_server, github,
                  until="consumer:github-actions-secret:repo:acme/api:NOSTASH_ID")
    lost = journal.get(plan.incident, "rotate", "secret:nostash", "new-version").detail["version"]
    assert {k.access_key_id for k in aws_iam.list_access_keys(clients["iam"], user)} == {old, lost}

    result = apply_rotation(plan, approval, inv, journal, clients=clients)

    assert [a.outcome for a in result.actions] == ["done"], result
    keys = [k.access_key_id for k in aws_iam.list_access_keys(clients["iam"], user)]
    assert len(keys) == 1 and keys[0] not in (old, lost)  # nothing left behind, nothing old active
    assert github.decrypt_secret("repo:acme/api", "NOSTASH_ID") == keys[0]
    assert len(github.decrypt_secret("repo:acme/api", "NOSTASH_SECRET")) >= 20
    assert any("lost" in n for n in result.notes)
