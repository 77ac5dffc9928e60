"""integrations.aws_iam against a REAL moto server (moto 5, server mode) via boto3.

No local protocol server: moto answers the IAM API over HTTP. The 2-keys-per-user
limit and last-used tracking are moto's own behaviour, not ours.
"""

from __future__ import annotations

import secrets

import boto3
import pytest

from digestguard.errors import InputError, NotFound, Refused
from integrations import aws_iam

CREDS = {"region_name": "us-east-1", "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture(scope="module")
def endpoint(moto_server: str) -> str:
    """The session's moto server (tests/support/aws.py)."""
    return moto_server


@pytest.fixture(scope="module")
def iam(endpoint):
    return aws_iam.iam_client(endpoint_url=endpoint, **CREDS)


@pytest.fixture
def user(iam) -> str:
    name = f"ci-{secrets.token_hex(4)}"
    iam.create_user(UserName=name)
    return name


def test_rotation_cycle_create_deactivate_delete(iam, user):
    old = aws_iam.create_access_key(iam, user)
    new = aws_iam.create_access_key(iam, user)
    secret = new.secret_access_key.get_secret_value()
    assert len(secret) >= 20
    assert secret not in repr(new) and secret not in str(new)  # an accidental log shows nothing

    keys = aws_iam.list_access_keys(iam, user)
    assert {k.access_key_id for k in keys} == {old.access_key_id, new.access_key_id}
    assert all(k.status == "Active" for k in keys)

    aws_iam.deactivate_access_key(iam, user, old.access_key_id)
    status = {k.access_key_id: k.status for k in aws_iam.list_access_keys(iam, user)}
    assert status == {old.access_key_id: "Inactive", new.access_key_id: "Active"}

    assert aws_iam.delete_access_key(iam, user, old.access_key_id) is True
    assert [k.access_key_id for k in aws_iam.list_access_keys(iam, user)] == [new.access_key_id]
    # re-running the delete is safe; strict mode says it is gone
    assert aws_iam.delete_access_key(iam, user, old.access_key_id) is False
    with pytest.raises(NotFound):
        aws_iam.delete_access_key(iam, user, old.access_key_id, missing_ok=False)


def test_third_key_is_refused_with_a_clear_message(iam, user):
    a = aws_iam.create_access_key(iam, user)
    b = aws_iam.create_access_key(iam, user)
    with pytest.raises(Refused) as e:
        aws_iam.create_access_key(iam, user)
    text = str(e.value)
    assert user in text and a.access_key_id in text and b.access_key_id in text and "2" in text
    assert a.secret_access_key.get_secret_value() not in text
    assert len(aws_iam.list_access_keys(iam, user)) == 2


def test_last_used_reports_never_then_the_service(iam, user, endpoint):
    key = aws_iam.create_access_key(iam, user)
    never = aws_iam.access_key_last_used(iam, key.access_key_id)
    assert never.when is None and never.service is None and never.user == user

    as_user = boto3.client(
        "iam", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=key.access_key_id, aws_secret_access_key=key.secret_access_key.get_secret_value(),
    )
    as_user.list_users()
    used = aws_iam.access_key_last_used(iam, key.access_key_id)
    assert used.when is not None and used.service == "iam" and used.region == "us-east-1"


def test_missing_user_and_bad_input(iam):
    with pytest.raises(NotFound) as e:
        aws_iam.list_access_keys(iam, "nobody-here")
    assert "user/nobody-here" in str(e.value)
    with pytest.raises(NotFound):
        aws_iam.create_access_key(iam, "nobody-here")
    with pytest.raises(InputError):
        aws_iam.deactivate_access_key(iam, "u", "not a key id")
    with pytest.raises(InputError):
        aws_iam.list_access_keys(iam, " ")


def test_new_secret_key_not_in_debug_logs(iam, user, caplog):
    import logging

    with caplog.at_level(logging.DEBUG):
        key = aws_iam.create_access_key(iam, user)
    assert "botocore" in caplog.text
    assert key.secret_access_key.get_secret_value() not in caplog.text
