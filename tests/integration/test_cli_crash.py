"""The CLI on a bad day: an unreachable Prefect API is one clear line, not a traceback (issue 15, point 6e).

``respond`` runs the flow against ``PREFECT_API_URL``; here that names a loopback port nothing listens on, the
way a stopped server or a wrong URL looks. The traceback appears only with ``--debug`` (the flag's other half is
tested in ``test_coverage.py`` with a forced journal failure).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_respond_with_prefect_unreachable_is_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    inv = tmp_path / "inventory.yaml"
    inv.write_text("registries: []\n")
    env = {**os.environ, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    r = subprocess.run([sys.executable, "-m", "flows.cli", "respond", "-a", "kics-2026-04", "-i", str(inv)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, (r.stdout[-2000:], r.stderr[-2000:])
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert lines[0].startswith("error: ") and "digestguard respond" in lines[0] and f"127.0.0.1:{port}" in lines[0]
    assert "--debug" in lines[0]
