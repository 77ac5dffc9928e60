"""The sweep inside a real Prefect task run (as assess runs it), with worker processes forked under Prefect's threads.

Uses the shared ``prefect_harness`` session server (tests/support/prefect.py).
The parallel threshold is lowered so a small file is split into byte ranges and
scanned by a process pool, as a 1 GB log would be.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, task

from digestguard.advisory import Indicator, Window
from tasks.sweep import run as sweep_mod
from tasks.sweep.run import SweepResult, sweep_paths

WINDOW = Window(start=datetime(2026, 4, 22, 12, 35, tzinfo=timezone.utc), source="seed")
INDICATORS = [Indicator(kind="domain", value="audit.checkmarx[.]cx", source="seed")]


def test_sweep_task_in_a_flow_with_worker_processes(prefect_harness, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sweep_mod, "PARALLEL_MIN_BYTES", 64 * 1024)
    log = tmp_path / "job.log"
    lines = [f"2026-04-22T14:{i % 60:02d}:00Z GET https://h{i}.example.com/ 200" for i in range(20000)]
    lines[15000] = "2026-04-22T14:20:00Z GET https://x.audit.checkmarx.cx/v1/telemetry 200"
    log.write_text("\n".join(lines) + "\n")
    assert log.stat().st_size > 2 * 64 * 1024

    @task
    def sweep_in_a_task() -> SweepResult:
        return sweep_paths([str(log)], INDICATORS, WINDOW, workers=2)

    @flow
    def sweep_flow() -> SweepResult:
        return sweep_in_a_task()

    res = sweep_flow()
    assert [(h.line, h.indicator, h.in_window) for h in res.hits] == [(15001, "audit.checkmarx.cx", True)]
    assert (res.files[0].lines, res.files[0].unparsable) == (20000, 0)
