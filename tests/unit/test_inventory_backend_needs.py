"""The inventory is checked against what each backend needs when it is loaded (issue 15, point 3).

Every case is a file written to disk and loaded the way the CLI loads it: a mistake is one line naming the
file and the field, raised before anything could be revoked. The shipped example validates.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from digestguard.errors import InputError
from digestguard.inventory import load_inventory

ROOT = Path(__file__).resolve().parents[2]

IAM = """
secrets:
  - name: deploy-key
    issuer: {kind: aws-iam-access-key, ref: {user: ci-deployer}}
    stores: [{kind: vault-kv, path: ci/aws/deployer, primary: true}]
    consumers:
      - {kind: github-actions-secret, repo: acme/infra, name: AWS_ACCESS_KEY_ID, field: access_key_id}
      - %s
"""

CASES = {
    # the shipped example's old mistake: the exposed key deleted, the new secret stored nowhere
    "iam consumer without field": (IAM % "{kind: github-actions-secret, repo: acme/infra, name: AWS_SECRET_ACCESS_KEY}",
                                   "secrets[0] (deploy-key).consumers[1].field", "access_key_id, secret_access_key"),
    "iam consumer with a field that is no part": (
        IAM % "{kind: gitlab-variable, project: acme/infra, key: AWS_SECRET, field: password}",
        "secrets[0] (deploy-key).consumers[1].field", "not a part"),
    "github consumer without repo": (IAM % "{kind: github-actions-secret, name: X, field: secret_access_key}",
                                     "secrets[0] (deploy-key).consumers[1].repo", "'repo' or 'org'"),
    "gitlab consumer without project": (IAM % "{kind: gitlab-variable, key: X, field: secret_access_key}",
                                        "consumers[1].project", "'project' or 'repo'"),
    "iam issuer without user": ("""
secrets:
  - name: k
    issuer: {kind: aws-iam-access-key, ref: {}}
    stores: [{kind: vault-kv, path: ci/k, primary: true}]
""", "secrets[0] (k).issuer.ref.user", "'user'"),
    "vault-kv store without path": ("""
secrets:
  - name: k
    backend: vault-kv
    ref: {mount: secret}
""", "secrets[0] (k).ref.path", "'path'"),
    "secrets manager consumer without its id": ("""
secrets:
  - name: k
    stores: [{kind: vault-kv, path: ci/k, primary: true}]
    consumers: [{kind: aws-secretsmanager}]
""", "consumers[0].name", "'name' or 'path'"),
    "postgres role without host": ("""
secrets:
  - name: db
    issuer: {kind: postgres-role, ref: {role: app, admin_password: "env:PGPW"}}
""", "secrets[0] (db).issuer.ref.host", "'host'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_backend_mistake_is_one_line_naming_file_and_field(tmp_path, case):
    text, field, words = CASES[case]
    f = tmp_path / "inventory.yaml"
    f.write_text(text)
    with pytest.raises(InputError) as err:
        load_inventory(f)
    msg = str(err.value)
    assert "\n" not in msg and str(f) in msg and field in msg and words in msg, msg


def test_the_cli_refuses_before_anything_runs(tmp_path):
    """``digestguard rotate`` on such a file: exit 2 and one line on stderr, no traceback, nothing journaled."""
    f = tmp_path / "inventory.yaml"
    f.write_text(CASES["iam consumer without field"][0])
    r = subprocess.run([sys.executable, "-m", "flows.cli", "rotate", "-a", "kics-2026-04", "-i", str(f), "--dry-run"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "consumers[1].field" in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / ".digestguard").exists()


def test_the_shipped_example_validates():
    inv = load_inventory(ROOT / "inventory.example.yaml")
    iam = [s for s in inv.secrets if s.backend == "aws-iam-access-key"]
    assert iam and all(c.field for s in iam for c in s.consumers if c.kind == "github-actions-secret")
