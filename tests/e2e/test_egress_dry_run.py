"""From an egress alert to "what would we purge and rotate": the drill's estate (real registry, podman, OpenBao, moto,
the GitHub/GCP/Slack stand-ins of ``flows/drill/``) with its planted week of runner proxy egress and a call home no
advisory names. `digestguard egress check` flags it; the exact dry-run command the alert offers is run as a process
against the shared Prefect test server and shows the purge and rotation it would do, changing nothing."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from digestguard.advisory import load_advisory, load_advisory_file
from flows.drill.flow import Sandbox, build_sandbox, score_egress
from integrations.registry import RegistryClient

ROOT = Path(__file__).parents[2]


def test_alert_offers_a_dry_run_that_shows_purge_and_rotation(prefect_harness, tmp_path: Path):
    with contextlib.ExitStack() as stack:
        sb = build_sandbox(load_advisory("kics-2026-04"), tmp_path / "sb", stack)
        env = {**os.environ, "PREFECT_API_URL": prefect_harness}
        env.pop("DIGESTGUARD_JOURNAL", None)
        bin_dir = Path(sys.executable).parent
        r = subprocess.run([str(bin_dir / "digestguard"), "egress", "check", "-i", str(sb.inventory_path), "--json"],
                           capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 1, r.stderr[-2000:]
        (ev,) = json.loads(r.stdout)["events"]
        assert ev["destination"] == "drill-exfil.example" and ev["job"] == "acme/infra/inside-malicious.log"
        draft = load_advisory_file(ev["draft_advisory"])
        assert [(i.kind, i.value) for i in draft.network] == [("domain", "upload.drill-exfil.example")]
        assert {m.digest for img in draft.images for m in img.malicious} == {sb.attacker["latest"].digest}
        argv = shlex.split(ev["dry_run_command"])
        assert argv[:3] == ["digestguard", "respond", "--dry-run"]
        reg = RegistryClient(sb.registry.host, base_url=sb.registry.base_url, insecure=True)
        stack.callback(reg.close)
        before = reg.resolve("checkmarx/kics", "latest")
        d = subprocess.run([str(bin_dir / argv[0]), *argv[1:]], capture_output=True, text=True, env=env, cwd=ROOT,
                           timeout=600)
        assert d.returncode == 1, d.stderr[-3000:]  # found: the suspect digest is in the registry and was run
        out = d.stdout
        assert re.search(r"^mode\s+dry-run$", out, re.M), out
        purge = re.search(r"^purge\s+(\{.*\})$", out, re.M)
        rotate = re.search(r"^rotate\s+(\{.*\})$", out, re.M)
        assert purge and "'planned'" in purge.group(1) and rotate and "'planned'" in rotate.group(1), out
        after = reg.resolve("checkmarx/kics", "latest")
        assert before == after == sb.attacker["latest"].digest  # a dry run deleted nothing


def test_scorecard_egress_stage_fails_when_the_watch_saw_nothing(tmp_path: Path):
    sb = Sandbox(root=tmp_path, advisory=load_advisory("kics-2026-04"), advisory_path=tmp_path / "a.yaml",
                 inventory_path=tmp_path / "i.yaml")
    sb.planted["egress"] = {"group": "ci-runners", "destination": "drill-exfil.example",
                            "host": "upload.drill-exfil.example", "job": "acme/infra/inside-malicious.log"}
    st = score_egress(sb, {"events": []})
    assert not st.ok and st.actual["destination"] is None
    assert not score_egress(sb, None, "RuntimeError: journal locked").ok
