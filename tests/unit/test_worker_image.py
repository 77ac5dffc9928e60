"""The worker image (``deployments/Dockerfile``): base pinned by digest, dependencies from the lock with hashes.

What runs here: our own linter on the Dockerfile (the policy gate teams run), a check that every ``FROM`` names a
digest, that the requirements file the image installs is exactly ``uv export --frozen`` of ``uv.lock`` and carries
a hash for every requirement, and that pip is told ``--require-hashes``. The build itself needs the base image:
it runs with podman when the pinned base is in local storage, and is skipped (saying so) when it is not: this
machine has no route to Docker Hub.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deployments" / "Dockerfile"
LOCK_TXT = ROOT / "deployments" / "requirements.lock.txt"
EXPORT = ["uv", "export", "--frozen", "--no-dev", "--extra", "postgres", "--no-emit-project", "--format", "requirements-txt"]


def _instructions() -> list[str]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_our_linter_passes_the_dockerfile():
    done = subprocess.run([sys.executable, "-m", "flows.cli", "lint", str(DOCKERFILE)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_linter_would_refuse_a_tag_only_base(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.read_text().replace("@sha256:", "-was-pinned-"))
    done = subprocess.run([sys.executable, "-m", "flows.cli", "lint", str(bad)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and "python" in done.stdout


def test_every_base_is_pinned_by_digest():
    froms = [i for i in _instructions() if i.upper().startswith("FROM ")]
    assert froms
    for f in froms:
        assert re.search(r"@sha256:[0-9a-f]{64}\b", f), f


def test_installs_the_lock_with_hashes_only():
    runs = " ".join(i for i in _instructions() if i.upper().startswith("RUN "))
    assert "--require-hashes" in runs and "requirements.lock.txt" in runs and "--no-deps" in runs
    reqs = re.findall(r"^([A-Za-z0-9_.-]+)==\S+(?: ;[^\\\n]*)? \\\n((?:\s+--hash=sha256:[0-9a-f]{64}(?: \\)?\n)+)",
                      LOCK_TXT.read_text(), re.MULTILINE)
    names = [r[0].lower() for r in reqs]
    pinned = [ln for ln in LOCK_TXT.read_text().splitlines() if re.match(r"^[A-Za-z0-9_.-]+==", ln)]
    assert len(reqs) == len(pinned) > 50  # every requirement has its hashes
    assert {"prefect", "psycopg", "httpx", "pydantic"} <= set(names)


def test_requirements_file_is_the_lock_exported():
    if shutil.which("uv") is None:
        pytest.fail("uv is not installed: the worker image is built from `uv export --frozen` (install uv)")
    done = subprocess.run(EXPORT, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    strip = lambda t: [ln for ln in t.splitlines() if not ln.startswith("#")]  # noqa: E731 - the header names the command
    assert strip(done.stdout) == strip(LOCK_TXT.read_text()), (
        "deployments/requirements.lock.txt is stale: " + " ".join(EXPORT) + " -o deployments/requirements.lock.txt")


def test_copied_paths_exist_and_hold_the_entrypoints():
    for i in _instructions():
        if i.upper().startswith("COPY ") and "--from" not in i:
            *sources, _dest = i.split()[1:]
            for s in sources:
                assert (ROOT / s).exists(), s
    from flows.deploy_steps import ENTRYPOINTS

    copied = " ".join(i for i in _instructions() if i.upper().startswith("COPY "))
    assert all(e.split("/")[0] + "/" in copied for e in ENTRYPOINTS)
    assert any(i.startswith("ENV") and "DIGESTGUARD_HOME=/opt/digestguard" in i for i in _instructions())
    assert any(i.startswith("USER ") and i.split()[1] != "0" for i in _instructions())


def test_image_builds_where_the_base_is_available(tmp_path):
    base = next(i.split()[1] for i in _instructions() if i.upper().startswith("FROM "))
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed")
    if subprocess.run(["podman", "image", "exists", base], capture_output=True).returncode != 0:
        pytest.skip(f"the pinned base {base} is not in local storage and this machine cannot reach Docker Hub: "
                    "build not run")
    done = subprocess.run(["podman", "build", "--pull=never", "-f", str(DOCKERFILE), "-t", "digestguard-worker:test",
                           str(ROOT)], capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
