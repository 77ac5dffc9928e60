"""The inventory: the documented shape is accepted as written; literal secrets are refused."""

import textwrap
from pathlib import Path

import pytest

from digestguard.credentials import resolve
from digestguard.errors import InputError
from digestguard.inventory import load_inventory

ISSUE_EXAMPLE = """
registries:
  - name: mirror
    kind: distribution
    url: http://127.0.0.1:5000
docker_engines:
  - name: runner-1
    url: unix:///var/run/docker.sock
ci_logs:
  - name: exported
    kind: folder
    path: ./ci-logs
network_logs:
  - path: ./logs/dns.log
    format: zeek-tsv
secrets:
  - name: deploy-key
    backend: aws-iam-access-key
    ref: {user: ci-deployer}
    consumers:
      - {kind: github-actions-secret, repo: acme/infra, name: AWS_ACCESS_KEY_ID, field: access_key_id}
repositories:
  - name: acme/infra
    kind: github
    path: ./checkouts/infra
slack:
  channel: "#sec-incident"
  token: env:SLACK_BOT_TOKEN
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "inv" / "inventory.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text))
    return p


def test_issue_example_is_accepted_and_paths_resolve_against_the_file(tmp_path):
    inv = load_inventory(_write(tmp_path, ISSUE_EXAMPLE))
    assert inv.registries[0].kind == "distribution"
    assert inv.secrets[0].consumers[0].repo == "acme/infra"
    assert inv.resolve_path(inv.ci_logs[0].path) == (tmp_path / "inv" / "ci-logs").resolve()
    assert inv.resolve_path(inv.repositories[0].path) == (tmp_path / "inv" / "checkouts" / "infra").resolve()
    assert inv.journal_path().parent.name == ".digestguard"


def test_shipped_example_is_valid():
    inv = load_inventory(Path(__file__).parents[2] / "inventory.example.yaml")
    assert inv.slack and inv.slack.token == "env:SLACK_BOT_TOKEN"


@pytest.mark.parametrize("literal", ["xoxb-1234567890-abcdefghijkl", "hunter2", "ghp_" + "a" * 36])
def test_literal_credentials_are_refused_without_echoing_them(tmp_path, literal):
    p = _write(tmp_path, ISSUE_EXAMPLE.replace("env:SLACK_BOT_TOKEN", literal))
    with pytest.raises(InputError) as e:
        load_inventory(p)
    assert "slack.token" in str(e.value) and literal not in str(e.value)


def test_unknown_key_and_bad_engine_url_named(tmp_path):
    with pytest.raises(InputError, match="registries.0.colour: unknown key"):
        load_inventory(_write(tmp_path, ISSUE_EXAMPLE.replace("kind: distribution", "kind: distribution\n    colour: red")))
    with pytest.raises(InputError, match="docker_engines.0.url"):
        load_inventory(_write(tmp_path, ISSUE_EXAMPLE.replace("unix:///var/run/docker.sock", "/var/run/docker.sock")))
    # a log format the reader does not know is refused at load, naming the field (not when the sweep runs)
    with pytest.raises(InputError, match=r"network_logs\.0.*'zeek-dns' is not a log format"):
        load_inventory(_write(tmp_path, ISSUE_EXAMPLE.replace("format: zeek-tsv", "format: zeek-dns")))


def test_credential_references_resolve_at_use(monkeypatch):
    monkeypatch.setenv("DG_TEST_TOKEN", "s3cret-value")
    assert resolve("env:DG_TEST_TOKEN") == "s3cret-value"
    monkeypatch.delenv("DG_TEST_TOKEN")
    with pytest.raises(InputError, match="DG_TEST_TOKEN is not set"):
        resolve("env:DG_TEST_TOKEN")
