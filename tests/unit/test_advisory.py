"""Advisory packs: the shipped packs carry the incident facts; malformed packs are refused by file and field."""

import json
import textwrap
from pathlib import Path

import pytest

from digestguard.advisory import PACKS_DIR, json_schema, list_packs, load_advisory, load_advisory_file, refang
from digestguard.errors import InputError
from digestguard.reference import parse_reference


def test_shipped_packs_load_with_the_seed_facts():
    packs = {a.id: a for a in list_packs()}
    assert set(packs) >= {"kics-2026-04", "trivy-2026-03"}
    kics = packs["kics-2026-04"]
    img = kics.images[0]
    assert img.repository == "docker.io/checkmarx/kics"
    assert img.tags_overwritten == ["latest", "v2.1.20", "v2.1.20-debian", "alpine", "debian"]
    assert img.tags_created == ["v2.1.21", "v2.1.21-debian"]
    idx = {m.digest: m for m in img.malicious if m.kind == "index"}
    assert idx["sha256:2588a44890263a8185bd5d9fadb6bc9220b60245dbcbc4da35e1b62a6f8c230d"].tags == ["alpine", "v2.1.20", "v2.1.21"]
    assert idx["sha256:a0d9366f6f0166dcbf92fcdc98e1a03d2e6210e8d7e8573f74d50849130651a0"].tags == ["latest"]
    children = [m for m in img.malicious if m.kind == "manifest"]
    assert len(children) == 6 and all(m.parent in idx and m.source == "third party" for m in children)
    assert kics.window.start.isoformat() == "2026-04-22T12:35:00+00:00" and kics.window.end is None
    net = {(i.kind, i.value) for i in kics.network}
    assert ("domain", "audit.checkmarx.cx") in net and ("user_agent", "KICS-Telemetry/2.0") in net
    assert ("ip", "94.154.172.43") in net and ("url_path", "/v1/telemetry") in net
    assert all(i.source for i in kics.network)
    assert all(kg.digest is None for kg in img.known_good)  # no known-good digest was published

    trivy = packs["trivy-2026-03"]
    assert {r.value for r in trivy.references} >= {"GHSA-69fq-xp46-6x23", "CVE-2026-33634"}
    action = {a.repository: a for a in trivy.actions}["aquasecurity/trivy-action"]
    assert action.safe[0].commit == "57a97c7e7821a5776cebc9bb87c984fa69cba8f1"
    assert "ddb9da4475c1cef7d5389062bdfdfbdbd1394648" in action.malicious_commits
    assert trivy.is_malicious("sha256:425cd3e1a2846ac73944e891250377d2b03653e6f028833e30fc00c1abbc6d33")
    assert "scan.aquasecurtiy.org" in {i.value for i in trivy.network}


def test_aliases_match_every_spelling():
    img = load_advisory("kics-2026-04").images[0]
    for spelling in ["checkmarx/kics:latest", "docker.io/checkmarx/kics", "index.docker.io/checkmarx/kics:alpine",
                     "registry-1.docker.io/checkmarx/kics"]:
        assert img.matches(parse_reference(spelling))
    for other in ["checkmarx/kics-github-action", "mycorp/checkmarx/kics", "ghcr.io/checkmarx/kics"]:
        assert not img.matches(parse_reference(other))
    trivy = load_advisory("trivy-2026-03").images[0]
    assert trivy.matches(parse_reference("ghcr.io/aquasecurity/trivy:0.69.4"))


@pytest.mark.parametrize("defanged,real", [
    ("audit.checkmarx[.]cx", "audit.checkmarx.cx"), ("hxxps://audit[.]checkmarx[.]cx/v1", "https://audit.checkmarx.cx/v1"),
    ("evil(.)example[dot]com", "evil.example.com"), ("1.2.3[.]4", "1.2.3.4"),
])
def test_refang(defanged, real):
    assert refang(defanged) == real


GOOD = """
id: test-pack
title: t
window: {start: "2026-01-01T00:00:00Z", source: test}
images:
  - repository: acme/app
    malicious: [{digest: "sha256:%s", source: test}]
network:
  - {kind: url, value: "hxxps://evil[.]example/x", source: test}
""" % ("a" * 64)


def _write(tmp_path, text):
    p = tmp_path / "pack.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_user_pack_accepted_and_refanged(tmp_path):
    a = load_advisory_file(_write(tmp_path, GOOD))
    assert a.network[0].value == "https://evil.example/x"
    assert a.images[0].repository == "docker.io/acme/app"


@pytest.mark.parametrize("mutate,field,reason", [
    (lambda s: s.replace("a" * 64, "a" * 10), "images.0.malicious.0.digest", "64 hex"),
    (lambda s: s.replace("title: t", "title: t\ncolour: red"), "colour", "unknown key"),
    (lambda s: s.replace('source: test}\nimages', 'end: "2025-01-01T00:00:00Z", source: test}\nimages'),
     "window", "before start"),
    (lambda s: s.split("images:")[0] + "images: []\n", "images", "at least 1"),
    (lambda s: s.replace("acme/app", "Acme/App"), "images.0.repository", "lowercase"),
])
def test_malformed_pack_names_file_field_and_reason(tmp_path, mutate, field, reason):
    p = _write(tmp_path, mutate(GOOD))
    with pytest.raises(InputError) as e:
        load_advisory_file(p)
    msg = str(e.value)
    assert str(p) in msg and field in msg and reason in msg


def test_unknown_advisory_lists_known_ones():
    with pytest.raises(InputError, match="kics-2026-04"):
        load_advisory("no-such-pack")


def test_json_schema_exported():
    schema = json_schema()
    assert schema["title"] == "Advisory"
    assert "images" in schema["required"]
    json.dumps(schema)


def test_checkout_finds_the_packs_at_the_repository_root():
    root = Path(__file__).resolve().parents[2]
    assert PACKS_DIR == root / "advisories"
    assert {p.name for p in PACKS_DIR.glob("*.yaml")} >= {"kics-2026-04.yaml", "trivy-2026-03.yaml"}


@pytest.mark.parametrize("make", [lambda d: d.mkdir(), lambda d: None], ids=["empty", "missing"])
def test_no_packs_is_an_error_naming_the_place(tmp_path, make):
    d = tmp_path / "advisories"
    make(d)
    (tmp_path / "advisories.yaml.bak").write_text("not a pack")
    with pytest.raises(InputError) as e:
        list_packs(d)
    assert str(d) in str(e.value) and "no advisory packs found" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(InputError, match="no advisory packs found"):
        load_advisory("kics-2026-04", d)
