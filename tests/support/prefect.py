"""One Prefect test server for the whole test session.

``prefect_test_harness`` starts a temporary SQLite-backed server (about 20 s),
so it is started once and shared. The services the tests do not need (task-run
recorder, event persister, triggers, analytics) are switched off: with them on,
SQLite's "database is locked" stalls the next flow by 13-33 s after a flow with
many task runs (see shared/notes/local-services.md).
"""

from __future__ import annotations

import os
from typing import Iterator

import pytest

_QUIET = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_FOREMAN_ENABLED": "false",
    "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.3",
}


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start the shared Prefect test server; yields its API URL."""
    home = tmp_path_factory.mktemp("prefect-home")
    os.environ.setdefault("PREFECT_HOME", str(home))
    for k, v in _QUIET.items():
        os.environ.setdefault(k, v)
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())
