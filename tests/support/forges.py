"""Fixtures for the local GitHub and GitLab protocol servers (``flows/drill/servers/github.py``, ``gitlab.py``).

No real GitHub or GitLab can run here, so these local protocol servers stand in for
them; a test using one should say so in its docstring. They start in milliseconds, so
each test module gets fresh ones (module scope): no state leaks between stages' tests.

* ``github_server`` -> ``GitHubServer`` (``.url`` is the ``api_url``; token ``flows.drill.servers.github.DEFAULT_TOKEN``)
* ``gitlab_server`` -> ``GitLabServer`` (``.url`` is the ``api_url``; token ``flows.drill.servers.gitlab.DEFAULT_TOKEN``)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flows.drill.servers.github import GitHubServer
from flows.drill.servers.gitlab import GitLabServer


@pytest.fixture(scope="module")
def github_server() -> Iterator[GitHubServer]:
    with GitHubServer() as server:
        yield server


@pytest.fixture(scope="module")
def gitlab_server() -> Iterator[GitLabServer]:
    with GitLabServer() as server:
        yield server
