"""integrations.vault against REAL servers: an OpenBao dev server and a PostgreSQL 15.

No local protocol server here: OpenBao (Vault API compatible) answers every
call, and the database static-role test proves the rotation on PostgreSQL
itself (old password refused at login, new one accepted).
"""

from __future__ import annotations

import secrets

import psycopg
import pytest
from pydantic import SecretStr

from digestguard.errors import AuthError, InputError, NotFound, Refused, Unavailable
from integrations import vault
from integrations._secret_values import new_password


@pytest.fixture(scope="module")
def client(openbao):
    return vault.connect(openbao.addr, openbao.token)


def _path() -> str:
    return f"apps/ci/{secrets.token_hex(4)}"


def test_connect_rejects_a_bad_token_and_a_dead_address(openbao):
    with pytest.raises(AuthError) as e:
        vault.connect(openbao.addr, "not-a-token")
    assert openbao.addr in str(e.value)
    with pytest.raises(Unavailable):
        vault.connect("http://127.0.0.1:9", "x", timeout=2)
    with pytest.raises(InputError):
        vault.connect("127.0.0.1:8200", "x")


def test_kv_rotation_cycle_write_verify_soft_delete(client):
    path = _path()
    v1 = vault.kv_write(client, path, {"password": "leaked-one", "user": "ci"})
    assert v1 == 1
    meta = vault.kv_metadata(client, path)
    assert meta.current_version == 1 and [v.version for v in meta.versions] == [1]

    new = new_password()
    v2 = vault.kv_write(client, path, {"password": new, "user": "ci"}, cas=meta.current_version)
    assert v2 == 2
    assert vault.kv_version_matches(client, path, v2, {"password": new, "user": "ci"})
    assert not vault.kv_version_matches(client, path, v2, {"password": "leaked-one", "user": "ci"})

    after = vault.kv_metadata(client, path)
    stale = after.live_versions(except_version=v2)
    assert stale == [1]
    assert vault.kv_soft_delete(client, path, stale) == [1]

    final = vault.kv_metadata(client, path)
    by_number = {v.version: v for v in final.versions}
    assert final.current_version == 2
    assert by_number[1].deletion_time is not None and not by_number[1].destroyed  # metadata kept for the record
    assert by_number[2].live
    with pytest.raises(NotFound):
        vault.kv_read(client, path, version=1)
    latest = vault.kv_read(client, path)
    assert latest.version == 2 and latest.keys() == ["password", "user"]
    assert latest.data["password"].get_secret_value() == new.get_secret_value()
    # masked when printed by accident
    assert new.get_secret_value() not in repr(latest) and new.get_secret_value() not in str(latest.data)

    # re-running the delete is harmless
    assert vault.kv_soft_delete(client, path, [1]) == [1]


def test_kv_check_and_set_refuses_a_concurrent_write(client):
    path = _path()
    vault.kv_write(client, path, {"k": "a"})
    vault.kv_write(client, path, {"k": "b"})
    with pytest.raises(Refused) as e:
        vault.kv_write(client, path, {"k": "c"}, cas=1)
    assert path in str(e.value) and "c" != e.value.message
    assert vault.kv_metadata(client, path).current_version == 2


def test_kv_errors_are_typed_and_name_the_path(client):
    with pytest.raises(NotFound) as e:
        vault.kv_metadata(client, "does/not/exist")
    assert "secret/metadata/does/not/exist" in str(e.value)
    with pytest.raises(InputError):
        vault.kv_write(client, _path(), {"password": ""})
    with pytest.raises(InputError):
        vault.kv_write(client, "../x", {"a": "b"})


def test_static_role_rotation_changes_the_database_password(client, postgres, vault_static_role):
    setup = vault_static_role("app_ci")
    # the leaked password works before rotation
    with psycopg.connect(postgres.dsn(setup.username, setup.initial_password)) as conn:
        assert conn.execute("select current_user").fetchone()[0] == setup.username

    before = vault.db_static_role_status(client, setup.role)
    assert before.username == setup.username
    after = vault.db_rotate_static_role(client, setup.role)
    assert after.last_vault_rotation is not None
    assert before.last_vault_rotation is None or after.last_vault_rotation > before.last_vault_rotation
    assert not hasattr(after, "password")

    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(postgres.dsn(setup.username, setup.initial_password)).close()

    creds = vault.db_static_credentials(client, setup.role)
    assert creds.username == setup.username
    assert creds.password.get_secret_value() not in repr(creds)
    with psycopg.connect(postgres.dsn(creds.username, creds.password.get_secret_value())) as conn:
        assert conn.execute("select current_user").fetchone()[0] == setup.username


def test_static_role_missing_is_not_found(client, vault_static_role):
    vault_static_role("app_other")  # the engine is mounted
    with pytest.raises(NotFound):
        vault.db_static_role_status(client, "no_such_role")
    with pytest.raises((NotFound, Refused)):
        vault.db_rotate_static_role(client, "no_such_role")


def test_secret_str_values_are_accepted_for_writes(client):
    path = _path()
    v = vault.kv_write(client, path, {"token": SecretStr("s3cr3t-value")})
    assert vault.kv_version_matches(client, path, v, {"token": "s3cr3t-value"})


def test_no_value_in_debug_logs(client, caplog):
    import logging

    value = new_password()
    with caplog.at_level(logging.DEBUG):
        v = vault.kv_write(client, _path(), {"password": value})
    assert "urllib3" in caplog.text or caplog.records  # debug logging really was on
    assert value.get_secret_value() not in caplog.text and v >= 1
