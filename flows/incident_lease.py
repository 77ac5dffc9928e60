"""One run per incident: the incident id a run uses, and the lease that keeps a second run out.

- ``incident_id_for``: without an explicit id, a run's incident id is derived from its
  Prefect flow run id, so a retry of the same flow run (in process, or re-run by a
  worker on another machine) keeps the incident, its approvals and its journal rows.
- ``hold_incident``: the journal lease ``incident:<id>``. A second run of the same
  incident waits ``DIGESTGUARD_LEASE_WAIT`` seconds (30 by default) and then ends with
  one line naming the holder's flow run, host and since when. The same flow run (a
  retry) takes its own lease over at once; a crashed holder's lease lapses after its ttl.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone

from digestguard.journal import Holder, Journal, Lease, lease_wait_default

INCIDENT_TTL = 120.0  # seconds a crashed run keeps the incident; renewed every ttl/3 while the run lives


def incident_id_for(advisory_id: str, flow_run_id: str | None, now: datetime | None = None) -> str:
    """``kics-2026-04-run-3f2a9c01d4e5`` for a flow run (stable across its retries); else a fresh readable id."""
    if flow_run_id:
        return f"{advisory_id}-run-{re.sub(r'[^0-9a-f]', '', flow_run_id.lower())[:12]}"
    now = now or datetime.now(timezone.utc)
    return f"{advisory_id}-{now:%Y%m%d-%H%M}-{uuid.uuid4().hex[:4]}"


def hold_incident(journal: Journal, incident: str, flow_run_id: str | None, *, wait: float | None = None,
                  ttl: float = INCIDENT_TTL) -> Lease:
    """Take the incident's lease for this run, or raise ``LeaseHeld`` (its message is the one line to show)."""
    return journal.lease(f"incident:{incident}", Holder.here(flow_run_id), ttl=ttl,
                         wait=lease_wait_default() if wait is None else wait)
