"""Input is refused loudly and precisely (issue 15, point 3): every YAML file digestguard reads goes through
``digestguard.safe_yaml``; literal credentials are refused in every field and never echoed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from digestguard.advisory import load_advisory_file
from digestguard.errors import InputError
from digestguard.inventory import load_inventory
from digestguard.safe_yaml import MAX_DEPTH, load_yaml_text

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "ghp_" + "A1b2C3d4E5f6G7h8I9j0" * 2  # the shape of a GitHub token (not a real one)


def _write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def test_a_second_images_key_is_refused_naming_file_line_and_key(tmp_path):
    src = sorted((ROOT / "advisories").glob("kics*.y*ml"))[0].read_text()
    doubled = src + "\nimages:\n  - repository: checkmarx/kics\n    malicious: []\n"
    p = _write(tmp_path, "pack.yaml", doubled)
    with pytest.raises(InputError) as e:
        load_advisory_file(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:{doubled.count(chr(10)) - 2}: images: duplicate key (first at line ")
    assert len(msg.splitlines()) == 1


def test_a_second_secrets_key_in_an_inventory_is_refused(tmp_path):
    p = _write(tmp_path, "inv.yaml",
               "secrets:\n  - {name: a, backend: manual}\nregistries: []\nsecrets:\n  - {name: b, backend: manual}\n")
    with pytest.raises(InputError, match=r"inv.yaml:4: secrets: duplicate key \(first at line 1\)"):
        load_inventory(p)


def test_nested_duplicate_keys_are_refused_too():
    with pytest.raises(InputError, match=r"x.yaml:3: path: duplicate key"):
        load_yaml_text("secrets:\n  - path: a\n    path: b\n", "x.yaml")


def test_alias_bomb_is_refused_before_it_expands(tmp_path):
    bomb = ("a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
            "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
            "e: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n")
    p = _write(tmp_path, "inv.yaml", bomb)
    assert len(bomb) < 500
    with pytest.raises(InputError, match=r"inv.yaml:4: \*c: aliases expand to more than 10000 nodes"):
        load_inventory(p)
    assert load_yaml_text("x: &x {a: 1}\ny: *x\n", "ok.yaml") == {"x": {"a": 1}, "y": {"a": 1}}  # small ones are fine


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 20_000])
def test_excessive_nesting_is_refused(tmp_path, depth):
    p = _write(tmp_path, "inv.yaml", "a: " + "[" * depth + "]" * depth + "\n")
    with pytest.raises(InputError) as e:
        load_inventory(p)
    assert str(e.value).startswith(f"{p}:1: ") and "nest" in str(e.value)


@pytest.mark.parametrize("encoding", ["utf-16", "latin-1"])
def test_non_utf8_files_are_refused(tmp_path, encoding):
    p = _write(tmp_path, "inv.yaml", "registries: []\nslack: {channel: '#sécurité'}\n".encode(encoding))
    with pytest.raises(InputError, match=r"not UTF-8 text: byte \d+"):
        load_inventory(p)
    with pytest.raises(InputError, match="not UTF-8"):
        load_advisory_file(p)


def test_utf8_with_bom_is_accepted(tmp_path):
    p = _write(tmp_path, "inv.yaml", b"\xef\xbb\xbfregistries: []\n")
    assert load_inventory(p).registries == []


@pytest.mark.parametrize("doc, field", [
    ({"registries": [{"name": "r", "url": f"https://bob:{TOKEN}@registry.example"}]}, "registries.0.url"),
    ({"registries": [{"name": "r", "url": "https://bob:hunter2@registry.example"}]}, "registries.0.url"),
    ({"ci_logs": [{"name": "g", "kind": "github", "repo": "a/b", "api_url": f"https://{TOKEN}@api.github.com"}]},
     "ci_logs.0.api_url"),
    ({"secrets": [{"name": "s", "backend": "manual", "ref": {"token": TOKEN}}]}, "secrets.0.ref.token"),
    ({"secrets": [{"name": "s", "backend": "manual", "owner": f"ask bob, the token is {TOKEN}"}]}, "secrets.0.owner"),
    ({"secrets": [{"name": "s", "backend": "manual", "consumers": [{"kind": "manual", "note": TOKEN}]}]},
     "secrets.0.consumers.0.note"),
    ({"slack": {"channel": "#x", "token": "xoxb-1234567890-abcdefghij"}}, "slack.token"),
])
def test_literal_credentials_are_refused_in_every_field_and_never_echoed(tmp_path, doc, field):
    import yaml

    p = _write(tmp_path, "inv.yaml", yaml.safe_dump(doc))
    with pytest.raises(InputError) as e:
        load_inventory(p)
    msg = str(e.value)
    assert field in msg and "literal credential" in msg
    for secret in (TOKEN, "hunter2", "xoxb-1234567890-abcdefghij"):
        assert secret not in msg


def test_plain_urls_and_ssh_users_are_not_credentials(tmp_path):
    import yaml

    doc = {"registries": [{"name": "r", "url": "https://registry.example:5000"}],
           "docker_engines": [{"name": "e", "url": "ssh://deploy@build-host"}]}
    assert load_inventory(_write(tmp_path, "inv.yaml", yaml.safe_dump(doc))).docker_engines[0].url.startswith("ssh://")


def test_the_shipped_example_inventory_validates():
    inv = load_inventory(ROOT / "inventory.example.yaml")
    assert inv.secrets and inv.ci_logs


def test_the_cli_prints_one_line_and_exits_2_on_bad_input(tmp_path):
    p = _write(tmp_path, "inv.yaml", "registries: []\nregistries: []\n")
    r = subprocess.run([sys.executable, "-m", "flows.cli", "detect", "-a", "kics-2026-04", "-i", str(p)],
                       capture_output=True, text=True, timeout=300, cwd=str(ROOT))
    assert r.returncode == 2
    assert r.stderr.strip() == (f"error: {p}:2: registries: duplicate key (first at line 1); "
                                "a second one would silently replace the first")
