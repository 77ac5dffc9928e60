"""integrations.azure_keyvault against a LOCAL PROTOCOL SERVER (tests/fakes/azure_keyvault.py).

No Key Vault emulator exists: the server speaks the Key Vault secrets REST API
over TLS (self-signed cert made with ``cryptography``) with the real challenge
auth (401 + WWW-Authenticate, then Bearer). The client under test is the real
``azure-keyvault-secrets`` SDK, unchanged, with a static TokenCredential.
"""

from __future__ import annotations

import time

import pytest
from azure.core.credentials import AccessToken

from digestguard.errors import AuthError, InputError, NotFound, RateLimited, Refused
from integrations import azure_keyvault as kv
from integrations._secret_values import new_password
from tests.fakes.azure_keyvault import start_keyvault_server


class StaticToken:
    """A TokenCredential that hands out one token and records the scopes asked for."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_keyvault_server(str(tmp_path_factory.mktemp("kv")), token="kv-token-123")
    yield srv
    srv.stop()


def _client(server, token="kv-token-123", **kw):
    cred = StaticToken(token)
    client = kv.keyvault_client(
        server.url, cred, connection_verify=server.cert_path, verify_challenge_resource=False, retry_total=0, **kw
    )
    return client, cred


def test_rotation_cycle_set_list_disable(server):
    client, cred = _client(server)
    old = kv.set_secret_version(client, "ci-registry", "leaked-value")
    # the challenge dance happened: first call unauthenticated, then a token for the vault's scope
    first = server.calls[-2:]
    assert [c.authorized for c in first] == [False, True]
    assert cred.scopes and cred.scopes[0] == ("https://vault.azure.net/.default",)

    value = new_password()
    new = kv.set_secret_version(client, "ci-registry", value, content_type="text/plain")
    assert new != old and len(new) == 32
    assert all(c.body is None or c.body.get("value") in (None, "<redacted>") for c in server.calls)

    versions = kv.list_versions(client, "ci-registry")
    assert [v.version for v in versions] == [old, new] and all(v.enabled for v in versions)
    assert kv.current_value_matches(client, "ci-registry", value)

    stale = [v.version for v in versions if v.version != new]
    assert kv.disable_versions(client, "ci-registry", stale) == [old]
    status = {v.version: v.enabled for v in kv.list_versions(client, "ci-registry")}
    assert status == {old: False, new: True}
    patch = [c for c in server.calls if c.method == "PATCH"][-1]
    assert patch.path == f"/secrets/ci-registry/{old}" and patch.body["attributes"]["enabled"] is False

    # the old version can no longer be read; the current one still can
    with pytest.raises(Refused, match="disabled"):
        kv.current_value_matches(client, "ci-registry", "leaked-value", version=old)
    assert kv.current_value_matches(client, "ci-registry", value)
    # re-running is harmless
    assert kv.disable_versions(client, "ci-registry", [old]) == [old]


def test_errors_are_typed_and_name_the_vault(server):
    client, _ = _client(server)
    with pytest.raises(NotFound) as e:
        kv.list_versions(client, "nope")
    assert server.url in str(e.value) and "nope" in str(e.value)
    kv.set_secret_version(client, "other", "a-value-xxxxxxxx")
    with pytest.raises(NotFound):
        kv.disable_versions(client, "other", ["0" * 32])
    with pytest.raises(InputError):
        kv.set_secret_version(client, "bad/name", "x")
    with pytest.raises(InputError):
        kv.keyvault_client("http://127.0.0.1:1", StaticToken("t"))


def test_wrong_token_is_auth_error(server):
    client, _ = _client(server, token="wrong")
    with pytest.raises(AuthError):
        kv.set_secret_version(client, "x1", "a-value-xxxxxxxx")


def test_throttling_is_rate_limited_with_retry_after(server):
    client, _ = _client(server)
    kv.set_secret_version(client, "throttled", "a-value-xxxxxxxx")  # finish the challenge first
    server.fail_next(429, headers={"Retry-After": "7"})
    with pytest.raises(RateLimited) as e:
        kv.list_versions(client, "throttled")
    assert e.value.retry_after == 7.0


def test_sdk_retries_help_through_a_brief_outage(server):
    client, _ = _client(server)
    kv.set_secret_version(client, "flaky", "a-value-xxxxxxxx")
    client_with_retries = kv.keyvault_client(
        server.url, StaticToken("kv-token-123"), connection_verify=server.cert_path,
        verify_challenge_resource=False, retry_total=2, retry_backoff_factor=0.01,
    )
    server.fail_next(503)
    assert [v.enabled for v in kv.list_versions(client_with_retries, "flaky")] == [True]


def test_no_value_in_debug_logs(server, caplog):
    import logging

    client, _ = _client(server)
    value = new_password()
    with caplog.at_level(logging.DEBUG):
        kv.set_secret_version(client, "logged", value)
        assert kv.current_value_matches(client, "logged", value)
    assert caplog.records and value.get_secret_value() not in caplog.text
