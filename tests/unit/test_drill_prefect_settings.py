"""The drill's Prefect settings are in force however the drill is reached (issue 15, point 6).

Prefect reads its settings when it is first imported, so a timeout exported afterwards never applies (the
ephemeral server then gives up after Prefect's default 20 s). Each case runs in a fresh interpreter with the
variable removed from the environment and asks Prefect itself which value it holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ASK = ("from prefect.settings import get_current_settings as g; import json; s = g().server; "
       "print(json.dumps([s.ephemeral.startup_timeout_seconds, s.analytics_enabled]))")


@pytest.mark.parametrize("entry", [
    "import flows.drill.flow",                       # a deployment or a test importing the drill flow directly
    "import flows.drill.servers",                    # the stand-ins alone
    "import flows.cli; from flows.drill.flow import run_drill",  # the CLI's own order
])
def test_startup_timeout_applies_before_prefect_loads(entry):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_SERVER_")}
    r = subprocess.run([sys.executable, "-c", f"{entry}\n{ASK}"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    timeout, analytics = json.loads(r.stdout.strip().splitlines()[-1])
    assert timeout == 180 and analytics is False


def test_an_operator_setting_wins():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_SERVER_")}
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "300"
    r = subprocess.run([sys.executable, "-c", f"import flows.drill.flow\n{ASK}"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])[0] == 300
