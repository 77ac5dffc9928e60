"""Session fixtures for the real OCI registry (Debian's ``docker-registry``): ``registry`` (delete enabled)
and ``registry_nodelete`` (delete disabled, for the 405 path).

The registry itself and the push helpers live in ``flows/drill/registry.py`` (the drill uses them too);
they are re-exported here so tests can keep importing them from one place.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.drill.registry import (  # noqa: F401  (re-exported for tests and benches)
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    PushedImage,
    PushedIndex,
    RunningRegistry,
    free_port,
    make_layer_tar,
    overwrite_tag,
    push_blob,
    push_image,
    push_index,
    push_many_tags,
    put_manifest,
    running_registry,
    sha256_digest,
    start_registry,
    stop_registry_process,
)


def _start_or_fail(root: Path, delete_enabled: bool) -> RunningRegistry:
    try:
        return start_registry(root, delete_enabled)
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """A local OCI registry with ``storage.delete.enabled: true`` (shared by the whole session)."""
    reg = _start_or_fail(tmp_path_factory.mktemp("registry"), True)
    yield reg
    stop_registry_process(reg.process)


@pytest.fixture(scope="session")
def registry_nodelete(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """A local OCI registry with deletion DISABLED: DELETE answers 405 UNSUPPORTED."""
    reg = _start_or_fail(tmp_path_factory.mktemp("registry-nodelete"), False)
    yield reg
    stop_registry_process(reg.process)
