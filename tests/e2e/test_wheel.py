"""The wheel as the pre-commit hook gets it: built, installed non-editably into a fresh venv, run from elsewhere.

The packs must travel inside the wheel: an install that lost them used to list nothing and let ``lint`` pass a
malicious digest. The fresh venv gets only the wheel; its dependencies come from the project's venv through a
``.pth`` line (offline, and fast), which adds that site-packages as a plain path: the checkout's editable hook
there is a ``.pth`` of its own and is not processed, so the checkout stays invisible.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAL = "sha256:2588a44890263a8185bd5d9fadb6bc9220b60245dbcbc4da35e1b62a6f8c230d"  # kics-2026-04, tags alpine/v2.1.20
GOOD = "sha256:" + "ab" * 32


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _site_packages(python: Path) -> Path:
    out = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=python.parent)
    assert out.returncode == 0, out.stderr
    return Path(out.stdout.strip())


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin/ directory of a fresh venv holding the freshly built wheel (no editable link to the checkout)."""
    uv = shutil.which("uv")
    assert uv, "uv is needed to build the wheel (bash .ci/setup installs it)"
    base = tmp_path_factory.mktemp("wheel")
    dist = base / "dist"
    # --offline: the build backend (hatchling) is in uv's cache since `uv sync` built the project with it.
    built = _run([uv, "build", "--wheel", "--offline", "--out-dir", str(dist)], cwd=ROOT)
    if built.returncode != 0:  # a cache without hatchling (another machine): let uv fetch it
        built = _run([uv, "build", "--wheel", "--out-dir", str(dist)], cwd=ROOT)
    assert built.returncode == 0, built.stderr
    (wheel,) = dist.glob("digestguard-*.whl")

    env_dir = base / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = _site_packages(python)
    (site / "zz_project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    inst = _run([uv, "pip", "install", "--offline", "--no-deps", "--python", str(python), str(wheel)], cwd=base)
    assert inst.returncode == 0, inst.stderr
    return env_dir / "bin"


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT)))
    return env


def test_installed_wheel_is_not_the_checkout(installed: Path, tmp_path: Path):
    probe = ("import digestguard.advisory as a, flows, tasks, integrations;"
             "print(a.PACKS_DIR); print(flows.__file__); print(tasks.__file__); print(integrations.__file__)")
    out = _run([str(installed / "python"), "-c", probe], cwd=tmp_path, env=_clean_env())
    assert out.returncode == 0, out.stderr
    venv_dir = installed.parent.resolve()
    for line in out.stdout.split():
        assert Path(line).resolve().is_relative_to(venv_dir), f"{line} is not inside the fresh venv"
        assert not Path(line).resolve().is_relative_to(ROOT), line
    assert out.stdout.split()[0].endswith(os.path.join("digestguard", "advisories"))


def test_installed_wheel_lists_the_packs_and_lint_refuses_a_malicious_digest(installed: Path, tmp_path: Path):
    cli = str(installed / "digestguard")
    env = _clean_env()
    listed = _run([cli, "advisories", "list"], cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    assert "kics-2026-04" in listed.stdout and "trivy-2026-03" in listed.stdout

    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "Dockerfile").write_text(f"FROM alpine:3.20@{GOOD}\n")
    ok = _run([cli, "lint", str(clean)], cwd=tmp_path, env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr

    # Pinned to a digest, so only the advisory packs can tell it is malicious.
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "Dockerfile").write_text(f"FROM checkmarx/kics:alpine@{MAL}\n")
    refused = _run([cli, "lint", str(bad)], cwd=tmp_path, env=env)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert MAL in refused.stdout and "malicious by kics-2026-04" in refused.stdout

