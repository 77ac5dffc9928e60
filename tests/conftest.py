"""Shared test set-up: each real service starts once per test session.

Fixture modules live in ``tests/support/`` (one per service family) and are
loaded here so any test can ask for them by name.
"""

import pathlib

import pytest

pytest.register_assert_rewrite("tests.support")

# Every fixture module in tests/support (one per service family) is a plugin.
pytest_plugins = sorted(
    f"tests.support.{p.stem}"
    for p in (pathlib.Path(__file__).parent / "support").glob("*.py")
    if p.stem != "__init__"
)
