"""`digestguard sandbox`: the drill's estate (real registry, podman, OpenBao, moto; local GitHub, Slack and GCP
protocol servers) stays up for practice until SIGTERM/SIGINT, then everything is torn down."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def _first_line(proc: subprocess.Popen, timeout: float) -> str:
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        raise AssertionError("the sandbox printed nothing")
    return proc.stdout.readline()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sandbox_stays_up_for_practice_and_tears_down_on_a_signal(sig):
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "sandbox", "--json"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ})
    try:
        info = json.loads(_first_line(proc, 300))
        inventory, advisory, root = Path(info["inventory"]), Path(info["advisory"]), Path(info["dir"])
        assert inventory.is_file() and advisory.is_file() and root.is_dir()
        # the estate answers: detect finds the planted compromise (exit 1 = compromised images found)
        d = subprocess.run([sys.executable, "-m", "flows.cli", "detect", "-a", str(advisory), "-i", str(inventory), "--json"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert d.returncode == 1, d.stderr[-2000:]
        assert json.loads(d.stdout)["counts"].get("compromised", 0) > 0
        assert proc.poll() is None
        proc.send_signal(sig)
        proc.wait(120)
    finally:
        proc.kill()
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    assert not root.exists()
