"""From "odd connection" to "what would we purge and rotate" in one command: a draft advisory built from an alert.

The draft names the destination as the network indicator (a ``domain`` or an
``ip``), the images the job pulled before the connection as the suspects (each
with the digest its log showed), and a window opening when that job started
(or an hour before the connection when no job is known). It is a valid pack
(``digestguard.advisory.parse_advisory``), written under
``.digestguard/egress-drafts/`` next to the inventory; the alert carries the
exact command::

    digestguard respond --dry-run --advisory <draft> -i <inventory>

which plans, and changes nothing. Without an image digest there is no suspect
to name: the alert says so instead of offering a command that could not run.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from digestguard.advisory import Indicator, parse_advisory
from digestguard.inventory import Inventory
from digestguard.reference import try_parse_reference
from tasks.watch.events import NewDestinationEvent

DRAFT_DIR = ".digestguard/egress-drafts"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.-]+", "-", text.lower()).strip("-.")[:60] or "x"


def suspects(images: list[str]) -> dict[str, list[str]]:
    """``{canonical repository: [digest, ...]}`` of the alert's images that carry a digest."""
    out: dict[str, list[str]] = {}
    for text in images:
        name, sep, digest = text.rpartition("@")
        if not sep or not digest.startswith("sha256:"):
            continue
        ref = try_parse_reference(name) or try_parse_reference(text)
        if ref is None:
            continue
        tags = out.setdefault(ref.name, [])
        if digest not in tags:
            tags.append(digest)
    return out


def _indicator(ev: NewDestinationEvent) -> dict[str, str] | None:
    """The host as logged when it is a valid domain or address, else its registrable domain (a log line may hold
    anything), else None."""
    for value in (ev.host, ev.destination):
        try:
            ipaddress.ip_address(value)
            return {"kind": "ip", "value": value}
        except ValueError:
            pass
        try:
            Indicator(kind="domain", value=value, source="egress alert")
            return {"kind": "domain", "value": value}
        except ValidationError:
            continue
    return None


def draft_advisory(ev: NewDestinationEvent) -> dict[str, Any] | None:
    """The pack as data (None when the alert names no image digest)."""
    found = suspects(ev.images)
    if not found:
        return None
    indicator = _indicator(ev)
    if indicator is None:
        return None
    where = f"egress alert: runner group {ev.group}, {ev.source}:{ev.line}"
    job = f"job {ev.job}" + (f" of {ev.workflow}" if ev.workflow else "") if ev.job else "an unattributed job"
    start = ev.first_at - timedelta(hours=1)
    return {
        "id": f"egress-{_slug(ev.group)}-{_slug(ev.destination)}-{ev.first_at:%Y%m%d%H%M}",
        "title": f"DRAFT from an egress alert: {ev.group} reached {ev.destination}",
        "summary": (f"Runner group {ev.group} connected to {ev.host} at {ev.first_at.isoformat()}, a destination it "
                    f"never reached before ({job}). Suspects: the images that job pulled just before. A draft for a "
                    "dry run, not a published advisory."),
        "images": [{"repository": repo, "malicious": [{"digest": d, "source": where, "confirmed": False} for d in digests]}
                   for repo, digests in found.items()],
        "window": {"start": start.isoformat(), "source": where},
        "network": [{**indicator, "source": where}],
        "notes": [f"actions the job downloaded before the connection: {', '.join(ev.actions) or 'none logged'}"],
    }


def write_draft(ev: NewDestinationEvent, inventory: Inventory, inventory_path: str | None = None) -> NewDestinationEvent:
    """The alert with its draft's path and dry-run command (or ``draft_error`` saying why there is none)."""
    data = draft_advisory(ev)
    if data is None:
        why = "no job could be attributed" if not ev.job else f"job {ev.job} logged no image digest"
        if suspects(ev.images) and _indicator(ev) is None:
            return ev.model_copy(update={"draft_error": "the destination is neither a domain name nor an address: "
                                                        "no network indicator to build a draft advisory from"})
        return ev.model_copy(update={"draft_error": f"{why}: no suspect image to build a draft advisory from"})
    folder = inventory.resolve_path(DRAFT_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{data['id']}.yaml"
    parse_advisory(data, str(path))  # the draft must be a valid pack before anyone is told to run it
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    inv = inventory_path or str(Path(inventory.base_dir) / "inventory.yaml")
    cmd = f"digestguard respond --dry-run --advisory {shlex.quote(str(path))} -i {shlex.quote(inv)}"
    return ev.model_copy(update={"draft_advisory": str(path), "dry_run_command": cmd})
