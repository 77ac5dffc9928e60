"""integrations.gcp_secrets against a LOCAL PROTOCOL SERVER (flows/drill/servers/gcp_secrets.py).

No Secret Manager emulator exists: the server speaks the Secret Manager v1 REST
API over plain http; the client under test is the real
``google-cloud-secret-manager`` SDK with ``transport="rest"``,
``AnonymousCredentials`` and ``api_endpoint`` pointed at it.
"""

from __future__ import annotations

import secrets

import pytest
from google.auth.credentials import AnonymousCredentials

from digestguard.errors import InputError, NotFound, Refused, Unavailable
from flows.drill.servers.gcp_secrets import crc32c as server_crc32c, start_secret_manager_server
from integrations import gcp_secrets as gsm
from integrations._secret_values import new_password


@pytest.fixture(scope="module")
def server():
    srv = start_secret_manager_server()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return gsm.secret_manager_client(credentials=AnonymousCredentials(), api_endpoint=server.url, transport="rest")


@pytest.fixture
def secret(client) -> str:
    sid = f"ci-registry-{secrets.token_hex(4)}"
    assert not gsm.secret_exists(client, f"projects/demo/secrets/{sid}")
    name = gsm.create_secret(client, "demo", sid)
    assert name == f"projects/demo/secrets/{sid}" and gsm.secret_exists(client, name)
    return name


def test_crc32c_agrees_with_an_independent_implementation():
    for sample in (b"", b"123456789", b"\x00\xff" * 50):
        assert gsm.crc32c(sample) == server_crc32c(sample)
    assert gsm.crc32c(b"123456789") == 0xE3069283  # the standard check value


def test_rotation_cycle_add_disable_verify(client, server, secret):
    old = gsm.add_version(client, secret, "leaked-value")
    value = new_password()
    new = gsm.add_version(client, secret, value)
    assert (old, new) == ("1", "2")
    add_calls = [c for c in server.calls if c.path.endswith(":addVersion")]
    assert add_calls and all(c.body["payload"]["data"] == "<redacted>" and "dataCrc32c" in c.body["payload"]
                             for c in add_calls)

    assert gsm.latest_matches(client, secret, value)
    assert not gsm.latest_matches(client, secret, "leaked-value")

    stale = [v.version for v in gsm.list_versions(client, secret) if v.enabled and v.version != new]
    assert gsm.disable_versions(client, secret, stale) == ["1"]
    states = {v.version: v.state for v in gsm.list_versions(client, secret)}
    assert states == {"1": "DISABLED", "2": "ENABLED"}
    assert any(c.path == f"/v1/{secret}/versions/1:disable" for c in server.calls)

    with pytest.raises(Refused):  # a disabled version cannot be read any more
        gsm.latest_matches(client, secret, "leaked-value", version="1")
    assert gsm.latest_matches(client, secret, value)
    assert gsm.disable_versions(client, secret, [1]) == ["1"]  # re-run is harmless


def test_latest_skips_disabled_versions(client, secret):
    gsm.add_version(client, secret, "first-value-xxxx")
    gsm.add_version(client, secret, "second-value-xxx")
    gsm.disable_versions(client, secret, ["2"])
    assert gsm.latest_matches(client, secret, "first-value-xxxx")


def test_errors_are_typed_and_name_the_secret(client, server):
    with pytest.raises(NotFound) as e:
        gsm.add_version(client, "projects/demo/secrets/missing", "a-value-xxxxxxxx")
    assert "projects/demo/secrets/missing" in str(e.value)
    with pytest.raises(InputError):
        gsm.add_version(client, "demo/missing", "x")
    with pytest.raises(InputError):
        gsm.disable_versions(client, "projects/demo/secrets/x", ["latest"])
    server.fail_next(503)
    with pytest.raises(Unavailable):
        gsm.list_versions(client, "projects/demo/secrets/missing")
    gsm.create_secret(client, "demo", "dup-one")
    with pytest.raises(Refused, match="already exists"):
        gsm.create_secret(client, "demo", "dup-one")


def test_no_value_in_debug_logs(client, secret, caplog):
    import logging

    value = new_password()
    with caplog.at_level(logging.DEBUG):
        gsm.add_version(client, secret, value)
        assert gsm.latest_matches(client, secret, value)
    assert caplog.records and value.get_secret_value() not in caplog.text
