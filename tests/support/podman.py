"""Session fixture ``podman_engine``: podman's Docker-compatible API service trusting the session's registry.

The service itself (config, isolation, start/stop) lives in ``flows/drill/podman.py``; the drill uses it too.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from flows.drill.podman import PodmanService, start_podman, stop_podman  # noqa: F401
from flows.drill.registry import RunningRegistry


@pytest.fixture(scope="session")
def podman_engine(tmp_path_factory: pytest.TempPathFactory, registry: "RunningRegistry") -> Iterator[PodmanService]:
    """A podman API service (Docker-compatible) that trusts the session's local registry over plain http."""
    root = tmp_path_factory.mktemp("podman")
    try:
        svc = start_podman(root, [registry.host])
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    yield svc
    stop_podman(svc)
    # vfs layers can be large-ish; podman may leave files owned by root: best effort.
    shutil.rmtree(root / "storage", ignore_errors=True)
