"""The inventory's issuer / stores / consumers shape (issue 16, point 1), and that older inventories keep loading."""

import logging
import textwrap
from pathlib import Path

import pytest

from digestguard.errors import InputError
from digestguard.inventory import load_inventory


def _load(tmp_path: Path, text: str):
    p = tmp_path / "inventory.yaml"
    p.write_text(textwrap.dedent(text))
    return load_inventory(p)


NEW_STYLE = """
secrets:
  - name: deploy-key
    issuer: {kind: aws-iam-access-key, ref: {user: ci-deployer}}
    stores:
      - {kind: vault-kv, path: ci/aws, primary: true}
      - {kind: aws-secretsmanager, name: ci/aws}
    consumers:
      - {kind: github-actions-secret, repo: acme/infra, name: AWS_ACCESS_KEY_ID, field: access_key_id}
  - name: registry-token
    issuer:
      kind: manual
      where: the vendor's console
      probe: {url: "https://registry.example/v2/", send: basic, username: ci, refused_status: [401]}
    stores: [{kind: vault-kv, path: ci/registry}]
"""


def test_new_style_secret_derives_backend_and_turns_other_stores_into_copies(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="digestguard.inventory"):
        inv = _load(tmp_path, NEW_STYLE)
    key, token = inv.secrets
    assert key.backend == "aws-iam-access-key" and key.ref == {"user": "ci-deployer"}
    assert [c.kind for c in key.all_consumers()] == ["vault-kv", "aws-secretsmanager", "github-actions-secret"]
    assert key.all_consumers()[0].path == "ci/aws"
    # a manual issuer: a person's item (no random string written into its store), the store is not a copy to overwrite
    assert token.backend == "manual" and token.ref == {"where": "the vendor's console"} and token.store_copies() == []
    assert token.issuer_kind() == "manual" and token.issuer.probe.refused_status == [401]
    assert inv.warnings() == [] and not caplog.records


def test_revalidating_a_loaded_inventory_changes_nothing(tmp_path):
    inv = _load(tmp_path, NEW_STYLE)
    again = type(inv).model_validate(inv.model_dump())
    assert again == inv and [c.kind for c in again.secrets[0].all_consumers()] == ["vault-kv", "aws-secretsmanager",
                                                                                   "github-actions-secret"]


def test_legacy_store_backend_without_issuer_loads_with_a_clear_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="digestguard.inventory"):
        inv = _load(tmp_path, """
        secrets:
          - {name: npm, backend: vault-kv, ref: {path: ci/npm}}
          - {name: key, backend: aws-iam-access-key, ref: {user: u}}
          - name: copies-only
            stores: [{kind: gcp-secretmanager, name: tok, primary: true}, {kind: azure-keyvault, name: tok}]
        """)
    assert [s.backend for s in inv.secrets] == ["vault-kv", "aws-iam-access-key", "gcp-secretmanager"]
    warned = inv.warnings()
    assert len(warned) == 2 and "secret npm: has stores (vault-kv) but no issuer" in warned[0]
    assert "secret copies-only: has stores (azure-keyvault, gcp-secretmanager) but no issuer" in warned[1]
    assert "old credential keeps working" in warned[0]
    assert [r.getMessage() for r in caplog.records if "no issuer" in r.getMessage()] == [f"{tmp_path / 'inventory.yaml'}: {w}"
                                                                                        for w in warned]


@pytest.mark.parametrize("text,needle", [
    ("""
    secrets:
      - name: x
        stores: [{kind: vault-kv, path: a}, {kind: vault-kv, path: b}]
    """, "none marked primary"),
    ("""
    secrets:
      - name: x
        stores: [{kind: vault-kv, path: a, primary: true}, {kind: vault-kv, path: b, primary: true}]
    """, "2 stores are marked primary"),
    ("""
    secrets:
      - {name: x}
    """, "needs an issuer, stores or a backend"),
    ("""
    secrets:
      - name: x
        issuer: {kind: manual, probe: {url: "ftp://x/", send: bearer}}
    """, "probe url must be http"),
    ("""
    secrets:
      - name: x
        issuer: {kind: manual, probe: {url: "https://x/", send: header}}
    """, "needs 'header'"),
    ("""
    secrets:
      - name: x
        issuer: {kind: manual, probe: {url: "https://x/", refused_status: [200]}}
    """, "both refused and ok"),
    ("""
    secrets:
      - name: x
        issuer: {kind: postgres-role, ref: {role: app, admin_password: hunter2}}
    """, "issuer.ref.admin_password"),
    ("""
    secrets:
      - name: x
        issuer: {kind: aws-iam-access-key, ref: {user: u}, colour: red}
    """, "unknown key"),
])
def test_hostile_or_incomplete_shapes_are_refused_with_the_reason(tmp_path, text, needle):
    with pytest.raises(InputError) as e:
        _load(tmp_path, text)
    assert needle in str(e.value)


def test_manual_issuer_without_stores_is_a_manual_item(tmp_path):
    inv = _load(tmp_path, """
    secrets:
      - {name: hub, issuer: {kind: manual, where: hub.docker.com}}
    """)
    assert inv.secrets[0].backend == "manual" and inv.secrets[0].ref == {"where": "hub.docker.com"}
    assert inv.warnings() == []
