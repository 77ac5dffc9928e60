"""integrations.aws_secrets against a REAL moto server (moto 5, server mode) via boto3.

No local protocol server. The rotation-function path configures a Lambda in
moto (run without Docker, set through moto's /moto-api/config); on the
rotate-now call moto plays the rotation itself and moves AWSCURRENT, which is
what a real function's finishSecret step does. (moto then forgets the
function's ARN; no assertion depends on that.) Known moto quirks (two AWSCURRENT after a
plain put, stale value without VersionStage) are exactly what the client
avoids, so no test leans on them.
"""

from __future__ import annotations

import io
import json
import secrets
import urllib.request
import uuid
import zipfile

import boto3
import pytest
from pydantic import SecretStr

from digestguard.errors import InputError, NotFound, Refused, Unavailable
from integrations import aws_secrets as sm_mod

CREDS = {"region_name": "us-east-1", "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture(scope="module")
def endpoint(moto_server: str) -> str:
    """The session's moto server (tests/support/aws.py)."""
    return moto_server


@pytest.fixture(scope="module")
def sm(endpoint):
    return sm_mod.secrets_client(endpoint_url=endpoint, **CREDS)


def _secret(sm, value: str = "leaked-value") -> str:
    name = f"ci/registry-{secrets.token_hex(4)}"
    sm.create_secret(Name=name, SecretString=value)
    return name


def _stages(sm, name):
    return sm_mod.describe_secret(sm, name).versions


def test_put_new_version_moves_awscurrent_explicitly(sm):
    name = _secret(sm)
    before = sm_mod.describe_secret(sm, name)
    assert not before.rotation_enabled and before.current_version_id

    value = sm_mod.random_password(sm)
    assert len(value.get_secret_value()) == 40 and "**" in repr(value)
    new = sm_mod.put_new_version(sm, name, value)

    versions = _stages(sm, name)
    assert [v for v, s in versions.items() if "AWSCURRENT" in s] == [new]  # exactly one AWSCURRENT
    assert "AWSPREVIOUS" in versions[before.current_version_id]
    assert not any("AWSPENDING" in s for s in versions.values())
    assert sm_mod.current_value_matches(sm, name, value)
    assert not sm_mod.current_value_matches(sm, name, "leaked-value")
    current = sm_mod.read_current(sm, name)
    assert current.version_id == new and value.get_secret_value() not in repr(current)

    assert sm_mod.retire_previous(sm, name) == before.current_version_id
    versions = _stages(sm, name)
    assert versions[before.current_version_id] == () and versions[new] == ("AWSCURRENT",)
    assert sm_mod.retire_previous(sm, name) is None  # re-run is harmless


def test_put_is_idempotent_with_the_same_token(sm):
    name = _secret(sm)
    token = str(uuid.uuid4())
    first = sm_mod.put_new_version(sm, name, "v-one-aaaaaaaaaaaa", client_request_token=token)
    again = sm_mod.put_new_version(sm, name, "v-one-aaaaaaaaaaaa", client_request_token=token)
    assert first == again == token
    assert len(_stages(sm, name)) == 2


def test_rotate_secret_value_without_function_delivers_once(sm):
    name = _secret(sm)
    delivered: list[SecretStr] = []
    outcome = sm_mod.rotate_secret_value(sm, name, deliver=delivered.append)
    assert outcome.method == "put-value" and outcome.new_version_id != outcome.previous_version_id
    assert len(delivered) == 1 and sm_mod.current_value_matches(sm, name, delivered[0])
    assert "leaked" not in repr(outcome) and delivered[0].get_secret_value() not in repr(outcome)


def test_pending_version_blocks_a_put(sm):
    name = _secret(sm)
    sm.put_secret_value(SecretId=name, SecretString="half-done", VersionStages=["AWSPENDING"])
    with pytest.raises(Refused, match="AWSPENDING"):
        sm_mod.put_new_version(sm, name, "another-value-xxxxxxxx")


@pytest.fixture(scope="module")
def rotation_function(endpoint) -> str:
    """A Lambda in moto, run without Docker, to stand as the rotation function."""
    req = urllib.request.Request(
        endpoint + "/moto-api/config", data=json.dumps({"lambda": {"use_docker": False}}).encode(), method="POST"
    )
    urllib.request.urlopen(req, timeout=10).read()
    iam = boto3.client("iam", endpoint_url=endpoint, **CREDS)
    name = f"rot-{secrets.token_hex(4)}"
    role = iam.create_role(RoleName=name, AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("lambda_function.py", "def lambda_handler(event, context):\n    return {}\n")
    lam = boto3.client("lambda", endpoint_url=endpoint, **CREDS)
    return lam.create_function(
        FunctionName=name, Runtime="python3.12", Role=role,
        Handler="lambda_function.lambda_handler", Code={"ZipFile": buf.getvalue()},
    )["FunctionArn"]


def test_rotation_function_path_waits_for_awscurrent(sm, rotation_function):
    name = _secret(sm)
    sm.rotate_secret(SecretId=name, RotationLambdaARN=rotation_function,
                     RotationRules={"AutomaticallyAfterDays": 30}, RotateImmediately=False)
    d = sm_mod.describe_secret(sm, name)
    assert d.has_rotation_function
    old = d.current_version_id

    called: list[SecretStr] = []
    outcome = sm_mod.rotate_secret_value(sm, name, deliver=called.append, timeout=20)
    assert outcome.method == "rotation-function" and outcome.previous_version_id == old
    assert called == []  # consumers read it from Secrets Manager: the value never passed through us
    after = sm_mod.describe_secret(sm, name)
    assert after.current_version_id == outcome.new_version_id != old
    assert "AWSPREVIOUS" in after.versions[old]


def test_rotate_with_function_refuses_without_one(sm):
    name = _secret(sm)
    with pytest.raises(Refused, match="no rotation function"):
        sm_mod.rotate_with_function(sm, name)


def test_errors_are_typed_and_name_the_secret(sm):
    with pytest.raises(NotFound) as e:
        sm_mod.describe_secret(sm, "no/such/secret")
    assert "no/such/secret" in str(e.value)
    with pytest.raises(InputError):
        sm_mod.put_new_version(sm, _secret(sm), "")
    with pytest.raises(InputError):
        sm_mod.put_new_version(sm, _secret(sm), "x" * 20, client_request_token="short")


def test_dead_endpoint_is_unavailable():
    from botocore.config import Config

    dead = boto3.client("secretsmanager", endpoint_url="http://127.0.0.1:9",
                        config=Config(retries={"max_attempts": 1}, connect_timeout=1), **CREDS)
    with pytest.raises(Unavailable):
        sm_mod.describe_secret(dead, "anything")


def test_no_value_in_logs_even_at_debug(sm, caplog):
    """botocore logs request params and response bodies at DEBUG; the integration silences exactly those records."""
    import logging

    name = _secret(sm)
    delivered: list[SecretStr] = []
    with caplog.at_level(logging.DEBUG):
        outcome = sm_mod.rotate_secret_value(sm, name, deliver=delivered.append)
        current = sm_mod.read_current(sm, name)
    assert "botocore" in caplog.text  # debug logging really was on
    assert delivered and delivered[0].get_secret_value() not in caplog.text
    assert current.version_id == outcome.new_version_id
