"""The plan says where: each item of a realistic rotate and purge plan names its system precisely (account and
key id, mount and path, vault, project, role, registry and repository), its copies and its consumers, and the
rendered Markdown keeps every table row narrow with the long text under the table (nothing for the UI to cut).
Pure functions over a realistic inventory; no service is contacted."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from digestguard.advisory import load_advisory
from digestguard.findings import DetectResult, ExposedSecret, ExposureReport, Finding
from digestguard.inventory import parse_inventory
from tasks.purge import plan_purge
from tasks.rotate.stage import plan_rotation

INVENTORY = {
    "registries": [{"name": "mirror", "kind": "distribution", "url": "https://registry.acme.internal:5000"},
                   {"name": "prod-ecr", "kind": "ecr", "region": "eu-west-1", "account_id": "210987654321"}],
    "backends": {"vault_url": "https://vault.acme.internal:8200", "aws_region": "us-east-1", "gcp_project": "acme-ci",
                 "azure_vault_url": "https://acme-ci.vault.azure.net"},
    "secrets": [
        {"name": "deploy-key", "backend": "aws-iam-access-key",
         "ref": {"account": "123456789012", "user": "ci-deployer", "access_key_id": "AKIAEXAMPLEOLDKEY001"},
         "aliases": ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
         "consumers": [{"kind": "github-actions-secret", "repo": "acme/infra", "name": "AWS_ACCESS_KEY_ID", "field": "access_key_id"},
                       {"kind": "vault-kv", "mount": "kv-ci", "path": "aws/deployer", "key": "pair"},
                       {"kind": "gitlab-variable", "project": "acme/web", "key": "AWS_SECRET_ACCESS_KEY",
                        "environment": "production", "field": "secret_access_key"}]},
        {"name": "registry-password", "backend": "vault-kv", "ref": {"path": "ci/registry", "key": "password"},
         "aliases": ["REGISTRY_PASSWORD"],
         "consumers": [{"kind": "github-actions-secret", "org": "acme", "name": "REGISTRY_PASSWORD"}]},
        {"name": "sonar-token", "backend": "gcp-secretmanager", "ref": {"secret": "sonar-token"}, "aliases": ["SONAR_TOKEN"]},
        {"name": "npm-token", "backend": "azure-keyvault", "ref": {"name": "npm-publish"}, "aliases": ["NPM_TOKEN"]},
        {"name": "slack-hook", "backend": "aws-secretsmanager",
         "ref": {"arn": "arn:aws:secretsmanager:eu-central-1:555566667777:secret:ci/slack-hook-AbCdEf"},
         "aliases": ["SLACK_WEBHOOK"]},
        {"name": "db-app", "issuer": {"kind": "postgres-role",
                                      "ref": {"host": "db.acme.internal", "port": 5433, "dbname": "app", "role": "app_ci",
                                              "admin_password": "env:PG_ADMIN"}},
         "stores": [{"kind": "aws-secretsmanager", "name": "ci/db-app", "primary": True}], "aliases": ["DB_PASSWORD"]},
        {"name": "vendor-key", "backend": "manual", "ref": {"where": "the vendor's portal, Settings > API"},
         "aliases": ["VENDOR_API_KEY"]},
    ],
}
ALIASES = {"AWS_ACCESS_KEY_ID": "deploy-key", "REGISTRY_PASSWORD": "registry-password", "SONAR_TOKEN": "sonar-token",
           "NPM_TOKEN": "npm-token", "SLACK_WEBHOOK": "slack-hook", "DB_PASSWORD": "db-app", "VENDOR_API_KEY": "vendor-key"}
JOB = "gh:acme/infra/actions/runs/9876543210/jobs/1234567890123 (iac-scan / kics, attempt 2, runner ubuntu-latest)"


def _inventory():
    return parse_inventory(INVENTORY, "inventory.yaml", Path("."))


def _rotate_md() -> tuple[object, str]:
    exposure = ExposureReport(advisory="kics-2026-04", window_start=datetime(2026, 4, 22, 12, 35, tzinfo=timezone.utc),
                              secrets=[ExposedSecret(name=n, inventory_name=inv, mapped=True, exposed_by=[JOB], exposure="confirmed")
                                       for n, inv in ALIASES.items()])
    plan = plan_rotation("inc-where", load_advisory("kics-2026-04"), exposure, _inventory())
    return plan, plan.markdown()


def _item_block(md: str, target: str) -> str:
    start = md.index(f"`{target}`\n")
    end = md.find("\n\n", start)
    nxt = md.find("\n", md.find("   - why:", start))
    return md[start:min(x for x in (end, nxt) if x != -1)]


def test_each_rotate_item_names_system_copies_and_consumers_exactly():
    plan, md = _rotate_md()
    iam = _item_block(md, "secret:deploy-key")
    assert "- where: AWS IAM account 123456789012, user ci-deployer, access key AKIAEXAMPLEOLDKEY001" in iam
    assert "- copies: Vault KV vault.acme.internal:8200, mount kv-ci, path aws/deployer, key pair" in iam
    assert ("- consumers: GitHub Actions secret AWS_ACCESS_KEY_ID in repository acme/infra (its access_key_id); "
            "GitLab CI variable AWS_SECRET_ACCESS_KEY in project acme/web (environment production) (its secret_access_key)") in iam
    assert "- exposed by: " + JOB in iam and "- why: confirmed exposure by 1 job(s); revoke-first; 3 consumer(s)" in iam
    kv = _item_block(md, "secret:registry-password")
    assert "- where: Vault KV vault.acme.internal:8200, mount secret, path ci/registry, key password" in kv  # default mount named
    assert "- consumers: GitHub Actions secret REGISTRY_PASSWORD in org acme" in kv and "- copies: none besides" in kv
    assert "- where: GCP Secret Manager project acme-ci, secret sonar-token" in _item_block(md, "secret:sonar-token")
    assert "- where: Azure Key Vault acme-ci.vault.azure.net, secret npm-publish" in _item_block(md, "secret:npm-token")
    assert ("- where: AWS Secrets Manager account 555566667777, eu-central-1, secret "
            "arn:aws:secretsmanager:eu-central-1:555566667777:secret:ci/slack-hook-AbCdEf") in _item_block(md, "secret:slack-hook")
    db = _item_block(md, "secret:db-app")
    assert "- where: PostgreSQL db.acme.internal:5433/app, role app_ci" in db
    assert "- copies: AWS Secrets Manager us-east-1, secret ci/db-app" in db
    assert "env:PG_ADMIN" not in md and "admin_password" not in md  # a credential reference is no location
    # outside text is Markdown-escaped (issue 15: inert), so ">" is written as the entity Markdown shows as ">"
    assert "- where: by hand: the vendor's portal, Settings &gt; API" in _item_block(md, "secret:vendor-key")
    summary = md[md.index("**By system**"):md.index("| # |")]
    for line in ("- AWS IAM account 123456789012: 1 rotate", "- Vault KV mount secret: 1 rotate",
                 "- AWS Secrets Manager eu-central-1: 1 rotate",
                 "- GCP Secret Manager project acme-ci: 1 rotate", "- PostgreSQL db.acme.internal:5433/app: 1 rotate"):
        assert line in summary, summary


def test_rows_stay_narrow_and_nothing_long_sits_in_a_cell():
    plan, md = _rotate_md()
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(plan.items)  # the header and one row per item
    assert max(len(r) for r in rows) <= 110, max(rows, key=len)
    assert not any(JOB[:40] in r or "consumer(s)" in r or "…" in r for r in rows)  # nothing cut either  # reasons and jobs are under the table
    assert all(r.count("|") == 5 for r in rows)  # no cell broke the table


def test_an_unnamed_account_or_key_is_said_missing_not_guessed():
    inv = {"secrets": [{"name": "k", "backend": "aws-iam-access-key", "ref": {"user": "u"}, "aliases": ["AWS_ACCESS_KEY_ID"]}]}
    exposure = ExposureReport(advisory="kics-2026-04", window_start=datetime(2026, 4, 22, tzinfo=timezone.utc),
                              secrets=[ExposedSecret(name="AWS_ACCESS_KEY_ID", inventory_name="k", mapped=True, exposed_by=["j"])])
    md = plan_rotation("i", load_advisory("kics-2026-04"), exposure, parse_inventory(inv, "inventory.yaml", Path("."))).markdown()
    assert ("- where: AWS IAM (account not named in the inventory), user u, every access key of the user "
            "(listed when rotation starts)") in md


def test_purge_items_name_registry_host_and_repository():
    adv = load_advisory("kics-2026-04")
    bad = adv.images[0].malicious[0].digest
    detected = DetectResult(advisory=adv.id, findings=[
        Finding(source="mirror", kind="registry", location="mirror/checkmarx/kics:latest", digest=bad, matched=bad,
                match_kind="index", verdict="compromised"),
        Finding(source="prod-ecr", kind="ecr", location="prod-ecr/tools/kics@" + bad, digest=bad, verdict="compromised",
                detail={"tags": ["latest"]})])
    plan = plan_purge("inc-where", adv, detected, _inventory())
    md = plan.markdown()
    assert f"- where: registry mirror (registry.acme.internal:5000), repository checkmarx/kics, digest {bad}" in md
    assert f"- where: ECR prod-ecr (account 210987654321, eu-west-1), repository tools/kics, digest {bad}" in md
    summary = md[md.index("**By system**"):md.index("| # |")]
    assert "- registry mirror: " in summary and "- ecr prod-ecr: 1 delete-image" in summary
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert all(bad not in r for r in rows) and max(len(r) for r in rows) <= 110  # full digests only below
