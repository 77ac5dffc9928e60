"""Shared test set-up: each real service starts once per test session.

Fixture modules live in ``tests/support/`` (one per service family) and are
loaded here so any test can ask for them by name.
"""

pytest_plugins = [
    "tests.support.registry",
    "tests.support.podman",
    "tests.support.aws",
    "tests.support.vault",
    "tests.support.prefect",
]
