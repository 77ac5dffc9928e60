"""A real moto server (AWS APIs over HTTP) shared by the whole test session.

Why server mode rather than ``mock_aws``: the product's boto3 clients are built
with an ``endpoint_url`` exactly as they would be against a VPC endpoint, and
the HTTP wire (signing, errors, pagination) is exercised for real.

``moto_server`` returns the endpoint URL (``http://127.0.0.1:PORT``). Dummy
credentials and a region are put in the environment for the session, so no
boto3 call can wander to real AWS with a developer's own keys.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from flows.drill.services import DUMMY_AWS_ENV as DUMMY_ENV, start_moto as _start_moto


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
