"""Start-up guard: the CLI refuses, in one line, to run on another distribution's ``tasks`` package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from digestguard.install import foreign_packages

ROOT = Path(__file__).resolve().parents[2]


def _cli(args: list[str], cwd: Path, pythonpath: Path | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, "-c", "from flows.cli import main; main()", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_this_checkout_is_whole():
    assert foreign_packages() == []


def test_cli_refuses_a_shadowing_tasks_package(tmp_path: Path):
    fake = tmp_path / "other-dist"
    (fake / "tasks").mkdir(parents=True)
    (fake / "tasks" / "__init__.py").write_text("raise SystemExit('the foreign tasks package was imported')\n")
    run = _cli(["advisories", "list"], cwd=tmp_path, pythonpath=fake)
    assert run.returncode == 2, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("error: 'tasks' resolves to ") and str(fake / "tasks") in lines[0]
    assert str(ROOT / "tasks") in lines[0] and "its own environment" in lines[0]
    assert "'flows'" not in lines[0] and "'integrations'" not in lines[0] and run.stdout == ""


def test_cli_runs_without_a_shadow(tmp_path: Path):
    run = _cli(["advisories", "list"], cwd=tmp_path, pythonpath=None)
    assert run.returncode == 0, run.stderr
    assert "kics-2026-04" in run.stdout
