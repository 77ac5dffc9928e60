"""A real moto server (AWS APIs over HTTP) shared by the whole test session.

Why server mode rather than ``mock_aws``: the product's boto3 clients are built
with an ``endpoint_url`` exactly as they would be against a VPC endpoint, and
the HTTP wire (signing, errors, pagination) is exercised for real.

``moto_server`` returns the endpoint URL (``http://127.0.0.1:PORT``). Dummy
credentials and a region are put in the environment for the session, so no
boto3 call can wander to real AWS with a developer's own keys.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import boto3
import pytest

from flows.drill.services import DUMMY_AWS_ENV as DUMMY_ENV, start_moto as _start_moto
from tests.support.vault import free_port


def start_moto():
    """Start a moto server on a free loopback port; returns (server, endpoint_url)."""
    m = _start_moto()
    return m, m.endpoint_url


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """Endpoint URL of a session-wide moto server; sets dummy AWS credentials in the environment."""
    saved = {k: os.environ.get(k) for k in DUMMY_ENV}
    os.environ.update(DUMMY_ENV)
    try:
        server, url = start_moto()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield url
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass(frozen=True)
class MotoIamAuth:
    """A moto server that checks every request's signature and IAM policy (a deleted key is refused).

    ``admin_key_id``/``admin_secret`` belong to an IAM user with an inline ``Allow *`` policy, made in
    the server's first (unauthenticated) requests; use them for every client of this server.
    """

    endpoint_url: str
    admin_key_id: str
    admin_secret: str = field(repr=False)

    def client(self, service: str, key_id: str | None = None, secret: str | None = None):
        return boto3.client(service, endpoint_url=self.endpoint_url, region_name="us-east-1",
                            aws_access_key_id=key_id or self.admin_key_id, aws_secret_access_key=secret or self.admin_secret)


@pytest.fixture(scope="session")
def moto_iam_auth() -> Iterator[MotoIamAuth]:
    """A moto server process of its own with ``INITIAL_NO_AUTH_ACTION_COUNT=3`` (local-services.md).

    Its own process because moto reads that setting once per process, and the session's other
    moto server must stay unauthenticated for the tests that use it.
    """
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3", **DUMMY_ENV}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:  # a TCP connect is no request: it does not use up one of the unauthenticated actions
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto server with IAM auth did not start (exit {proc.poll()})", pytrace=False)
                time.sleep(0.1)
        iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1",
                           aws_access_key_id="AKIAUNAUTHBOOTSTRAP0", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="dg-admin")
        iam.put_user_policy(UserName="dg-admin", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="dg-admin")["AccessKey"]
        yield MotoIamAuth(url, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
