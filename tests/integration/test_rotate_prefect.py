"""No generated secret value reaches Prefect (database, result storage, logs) or the journal.

A rotation runs as ``rotate_task`` inside a small flow on the shared Prefect test
server (``prefect_harness``), with every client built from the inventory's
``backends`` (credentials as ``env:`` references), against the REAL OpenBao,
the REAL moto server and the LOCAL PROTOCOL SERVERS for GitHub, GitLab and GCP
Secret Manager (tests/fakes/). The test then reads the new values back from
the backends and searches every place Prefect and the journal write for them.
"""

from __future__ import annotations

import json
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path

from google.auth.credentials import AnonymousCredentials
from prefect import flow

from digestguard.advisory import load_advisory
from digestguard.findings import ExposedSecret, ExposureReport
from digestguard.inventory import parse_inventory
from digestguard.journal import Journal
from digestguard.plan import Approval
from flows.drill.servers.gcp_secrets import start_secret_manager_server
from flows.drill.servers.github import DEFAULT_TOKEN as GH_TOKEN, GitHubServer
from flows.drill.servers.gitlab import DEFAULT_TOKEN as GL_TOKEN, GitLabServer
from integrations import aws_iam, aws_secrets, gcp_secrets, vault
from tasks.rotate.backends import read_gcp_version
from tasks.rotate.stage import plan_rotation, rotate_task

AWS = {"region_name": "us-east-1", "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@flow(name="rotate-leak-check")
def rotate_flow(plan, approval, inventory, journal_path: str):
    return rotate_task(plan, approval, inventory, Journal(journal_path))


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_generated_values_are_nowhere_in_prefect_or_the_journal(prefect_harness, openbao, moto_server, tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_HOME, PREFECT_LOCAL_STORAGE_PATH, PREFECT_SERVER_DATABASE_CONNECTION_URL

    uid = secrets.token_hex(4)
    monkeypatch.setenv("DG_VAULT_TOKEN", openbao.token)
    monkeypatch.setenv("DG_GITHUB_TOKEN", GH_TOKEN)
    monkeypatch.setenv("DG_GITLAB_TOKEN", GL_TOKEN)
    gsm = start_secret_manager_server()
    with GitHubServer() as github, GitLabServer() as gitlab:
        github.add_repo("acme", "api")
        pid = gitlab.add_project("acme/web")
        gitlab.add_variable(f"project:{pid}", "NPM_TOKEN", "leaked-npm-aaaaaaaa", masked=True)

        vc = vault.connect(openbao.addr, openbao.token)
        iam = aws_iam.iam_client(endpoint_url=moto_server, **AWS)
        sm = aws_secrets.secrets_client(endpoint_url=moto_server, **AWS)
        gcp = gcp_secrets.secret_manager_client(credentials=AnonymousCredentials(), api_endpoint=gsm.url, transport="rest")
        kv_path, user, sid = f"ci/leak-{uid}", f"leak-{uid}", f"ci/leak-npm-{uid}"
        vault.kv_write(vc, kv_path, {"password": "leaked-kv-aaaaaaaaaa"})
        iam.create_user(UserName=user)
        old_key = aws_iam.create_access_key(iam, user).access_key_id
        sm.create_secret(Name=sid, SecretString="leaked-npm-aaaaaaaa")
        gname = gcp_secrets.create_secret(gcp, "demo", f"leak-{uid}")
        gcp_secrets.add_version(gcp, gname, "leaked-gcp-aaaaaaaaa")

        inv = parse_inventory({
            "backends": {"vault_url": openbao.addr, "vault_token": "env:DG_VAULT_TOKEN", "aws_endpoint_url": moto_server,
                         "aws_region": "us-east-1", "gcp_project": "demo", "gcp_endpoint": gsm.url,
                         "github_api_url": github.url, "github_token": "env:DG_GITHUB_TOKEN",
                         "gitlab_api_url": gitlab.base, "gitlab_token": "env:DG_GITLAB_TOKEN"},
            "secrets": [
                {"name": "kv", "backend": "vault-kv", "ref": {"path": kv_path},
                 "consumers": [{"kind": "github-actions-secret", "repo": "acme/api", "name": "REGISTRY_PASSWORD"}]},
                {"name": "iam", "backend": "aws-iam-access-key", "ref": {"user": user},
                 "consumers": [{"kind": "vault-kv", "path": f"ci/leak-aws-{uid}"},
                               {"kind": "github-actions-secret", "repo": "acme/api", "name": "AWS_SECRET_ACCESS_KEY",
                                "field": "secret_access_key"}]},
                {"name": "npm", "backend": "aws-secretsmanager", "ref": {"secret_id": sid},
                 "consumers": [{"kind": "gitlab-variable", "project": str(pid), "key": "NPM_TOKEN"}]},
                {"name": "gcp", "backend": "gcp-secretmanager", "ref": {"name": f"leak-{uid}"},
                 "consumers": [{"kind": "github-actions-secret", "repo": "acme/api", "name": "GCP_TOKEN"}]},
            ]}, "inventory.yaml", tmp_path)
        exposure = ExposureReport(advisory="kics-2026-04", window_start=datetime(2026, 4, 22, tzinfo=timezone.utc), secrets=[
            ExposedSecret(name=s.name, inventory_name=s.name, mapped=True, exposed_by=["job-1"], exposure="confirmed")
            for s in inv.secrets])
        plan = plan_rotation(f"leak-{uid}", load_advisory("kics-2026-04"), exposure, inv)
        approval = Approval(decision="approve", approvers=["ana"], plan_hash=plan.hash)
        journal_path = tmp_path / "journal.sqlite"

        state = rotate_flow(plan, approval, inv, str(journal_path), return_state=True)
        result = state.result()
        assert [(a.target, a.outcome) for a in result.actions] == [
            ("secret:gcp", "done"), ("secret:iam", "done"), ("secret:kv", "done"), ("secret:npm", "done")], result

        # the values, read back from where they now live
        pair = vault.kv_read(vc, f"ci/leak-aws-{uid}").data
        values = {
            "kv": vault.kv_read(vc, kv_path).data["password"].get_secret_value(),
            "iam": pair["secret_access_key"].get_secret_value(),
            "npm": aws_secrets.read_current(sm, sid).value.get_secret_value(),
            "gcp": read_gcp_version(gcp, gname, "2").get_secret_value(),
        }
        assert github.decrypt_secret("repo:acme/api", "REGISTRY_PASSWORD") == values["kv"]
        assert github.decrypt_secret("repo:acme/api", "AWS_SECRET_ACCESS_KEY") == values["iam"]
        assert github.decrypt_secret("repo:acme/api", "GCP_TOKEN") == values["gcp"]
        assert gitlab.variables[(f"project:{pid}", "NPM_TOKEN", "*")]["value"] == values["npm"]
        assert [k.access_key_id for k in aws_iam.list_access_keys(iam, user)] == [pair["access_key_id"].get_secret_value()] != [old_key]
    gsm.stop()

    # the run's logs, through the Prefect API (wait for the batched log writer to deliver the rotate lines)
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + 15
        while True:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            text = "\n".join(log.message for log in logs)
            if text.count("new-version") >= 4 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
    assert "rotate secret:kv new-version" in text  # the search below looks at real log lines
    # every byte Prefect's database, result storage and the journal hold
    db_url = str(PREFECT_SERVER_DATABASE_CONNECTION_URL.value())
    db_dir = Path(db_url.split(":///", 1)[1]).parent
    places = _files(db_dir) + _files(Path(PREFECT_LOCAL_STORAGE_PATH.value())) + _files(Path(PREFECT_HOME.value()) / "storage")
    places += [p for p in journal_path.parent.glob(journal_path.name + "*")]
    assert any(p.suffix == ".db" for p in places), places
    blobs = {str(p): p.read_bytes() for p in places}
    db_bytes = b"".join(data for where, data in blobs.items() if where.startswith(str(db_dir)))
    assert b"rotate-leak-check" in db_bytes and b"new-version" in db_bytes  # the right database, logs included
    blobs["prefect logs"] = text.encode()
    blobs["flow result"] = json.dumps(result.model_dump(mode="json")).encode()
    for name, value in values.items():
        assert len(value) >= 20
        hits = [where for where, data in blobs.items() if value.encode() in data]
        assert hits == [], f"the new {name} value leaked into {hits}"
