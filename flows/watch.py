"""``watch``: the scheduled digest-drift watch as a Prefect flow.

Each cycle is one coarse task (thousands of HEADs fan out inside it, see
``tasks/watch/cycle.py``); between cycles the flow starts a dry-run
``incident_response`` subflow for every advisory a watched tag matched, and
posts the cycle's alerts to the inventory's Slack channel. ``inventory`` is a
required parameter: the deployments run it every 5 minutes with ``cycles=1``
only once one is set (``digestguard serve --inventory``; in
``deployments/prefect.yaml`` the schedule ships inactive until its parameters
name one); the state file keeps the memory between runs, so a scheduled run
and a long-running ``--cycles 0`` behave the same.

No secret is a parameter: Slack and registry credentials are references in the
inventory, resolved when used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from digestguard.inventory import Inventory, load_inventory
from flows.incident_response import incident_response
from tasks.watch.alerts import slack_alerter
from tasks.watch.cycle import run_watch, watch_cycle
from tasks.watch.events import CycleReport, MaliciousEvent
from tasks.watch.sources import RegistryPool, load_packs
from tasks.watch.state import WatchState


@task(name="watch-cycle", cache_policy=NO_CACHE, persist_result=False)
def watch_cycle_task(inventory: Inventory, state: WatchState, **options: Any) -> CycleReport:
    """One cycle (Prefect task: timing and failures show per cycle in the UI; never cached)."""
    return watch_cycle(inventory, state, **options)


def dry_run_starter(inventory_path: str):
    """A ``start_incident`` that runs ``incident_response`` in dry-run mode (a subflow when called inside a flow)."""

    def start(ev: MaliciousEvent) -> str:
        summary = incident_response(advisory=ev.advisory_source or ev.advisory, inventory=inventory_path,
                                    mode="dry-run", triggered_by=f"watch: {ev.reference} -> {ev.digest}")
        return str(summary.get("incident") or "")

    return start


def run(
    inventory: str,
    *,
    cycles: int = 1,
    interval: float = 0,
    include_repositories: bool = False,
    advisories_dir: str | None = None,
    state_path: str | None = None,
    in_flow: bool = False,
    on_report=None,
) -> list[CycleReport]:
    """The watch without Prefect bookkeeping per cycle (the CLI's path); the flow calls it with ``in_flow=True``."""
    inv_path = str(Path(inventory).expanduser().resolve())
    inv = load_inventory(inv_path)
    load_packs(advisories_dir)  # bad packs fail now, before the first cycle; each cycle reads them again
    alert, why = slack_alerter(inv)
    cycle = watch_cycle_task if in_flow else watch_cycle
    with WatchState.for_inventory(inv, state_path) as state, RegistryPool(inv) as pool:
        reports = run_watch(inv, state, cycles=cycles, interval=interval, alert=alert,
                            start_incident=dry_run_starter(inv_path), cycle=cycle, registries=pool,
                            advisories_dir=advisories_dir, include_repositories=include_repositories,
                            inventory_path=inv_path,
                            on_report=_with_note(on_report, None if alert else f"alerts not posted to Slack: {why}"))
    return reports


def _with_note(on_report, note: str | None):
    def hook(rep: CycleReport) -> None:
        if note:
            rep.notes.append(note)
        if on_report:
            on_report(rep)

    return hook


@flow(name="watch", persist_result=False, log_prints=False)
def watch(
    inventory: str,
    cycles: int = 1,
    interval: float = 0,
    include_repositories: bool = False,
    advisories_dir: str | None = None,
    state_path: str | None = None,
) -> dict[str, Any]:
    """Watch the inventory's image tags and network logs for ``cycles`` cycles, ``interval`` seconds apart.

    ``include_repositories`` also watches every tagged, unpinned image reference in the
    inventory's repositories. ``advisories_dir`` overrides the shipped packs;
    ``state_path`` the state file (default ``.digestguard/watch.sqlite`` next to the inventory).
    Returns counts, events and started incident ids (no secrets: digests, paths, sources).
    """
    log = get_run_logger()

    def on_report(rep: CycleReport) -> None:
        for ev in rep.events:
            (log.warning if ev.severity in ("high", "critical") else log.info)("%s", ev.summary())
        for n in rep.notes:
            log.info("%s", n)
        log.info("cycle: %d reference(s), %d unchanged, %d first seen, %d event(s), %d alert(s) sent, %d pending",
                 rep.references, rep.unchanged, rep.first_seen, len(rep.events), rep.alerts_sent, rep.alerts_pending)

    reports = run(inventory, cycles=cycles, interval=interval, include_repositories=include_repositories,
                  advisories_dir=advisories_dir, state_path=state_path, in_flow=True, on_report=on_report)
    return summarize(reports)


def summarize(reports: list[CycleReport]) -> dict[str, Any]:
    """The flow's return value and the CLI's ``--json``: per-cycle counts and every event."""
    return {
        "cycles": len(reports),
        "events": [e.model_dump(mode="json") for r in reports for e in r.events],
        "incidents": [i for r in reports for i in r.incidents],
        "alerts_pending": reports[-1].alerts_pending if reports else 0,
        "reports": [{k: v for k, v in r.to_json_dict().items() if k != "events"} for r in reports],
    }
