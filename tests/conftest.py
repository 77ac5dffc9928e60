"""Shared test set-up: each real service starts once per test session.

Fixture modules live in ``tests/support/`` (one per service family) and are
loaded here so any test can ask for them by name.
"""

import os
import pathlib

import pytest

# The session moto server has IAM authentication off (it accepts any key), so an exposed IAM key's
# probe never turns "refused" there: re-probing it for the production 30 s would only slow the suite.
# Tests of proof of death use issuers that really refuse (tests/support/aws.py: moto_iam_auth).
os.environ.setdefault("DIGESTGUARD_PROBE_WAIT_SECONDS", "1")

pytest.register_assert_rewrite("tests.support")

# Every fixture module in tests/support (one per service family) is a plugin.
pytest_plugins = sorted(
    f"tests.support.{p.stem}"
    for p in (pathlib.Path(__file__).parent / "support").glob("*.py")
    if p.stem != "__init__"
)
