"""Watch alerts as Slack messages (see ``tasks/watch/cycle.py``).

One message per image or source event; network hits grouped per file per
cycle (a burst of hits must not become a burst of messages and a rate limit).
Log lines reach the channel with query-string values blanked: tokens ride in
URLs more often than anywhere else in a proxy log. Everything from outside
(log lines, references, reasons) is escaped for mrkdwn in the message blocks,
so no line can ping a channel or forge a link.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from digestguard.credentials import resolve
from digestguard.errors import DigestguardError
from digestguard.inventory import Inventory
from digestguard.markdown import mrkdwn
from integrations.slack import SlackClient
from tasks.watch.events import (
    ActionTagMovedEvent,
    DriftEvent,
    MaliciousEvent,
    NetworkHitEvent,
    NewDestinationEvent,
    SignatureEvent,
    SourceDownEvent,
    SourceRecoveredEvent,
    redact_line,
)

Alert = Callable[[Sequence[Any]], None]
"""Deliver a batch of events (raise a DigestguardError when it could not; they are queued and retried)."""

_ICON = {"critical": ":rotating_light:", "high": ":warning:", "warning": ":large_orange_diamond:", "info": ":white_check_mark:"}
MAX_HITS_PER_MESSAGE = 20


def _safe_line(text: str | None) -> str:
    """A log line fit for a channel (blanked again: a queued event may predate the blanking), mrkdwn-escaped."""
    return mrkdwn(redact_line(text) or "")


def alert_messages(events: Sequence[Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """``[(text, blocks)]``: one message per image/source event, network hits grouped per file."""
    out: list[tuple[str, list[dict[str, Any]]]] = []
    hits: dict[str, list[NetworkHitEvent]] = {}
    for ev in events:
        if isinstance(ev, NetworkHitEvent):
            hits.setdefault(ev.path, []).append(ev)
            continue
        title = f"{_ICON[ev.severity]} *[{ev.severity.upper()}] watch: {ev.kind}*"
        lines = [mrkdwn(_event_detail(ev))]  # the templates use no & < >: only outside text is affected
        text = f"[{ev.severity}] {ev.summary()}"
        if isinstance(ev, NewDestinationEvent):  # its host comes straight from a log line: no ping, no forged link
            text = mrkdwn(text)
        out.append((text, [{"type": "section", "text": {"type": "mrkdwn", "text": title + "\n" + "\n".join(lines)}}]))
    for path, hs in hits.items():
        advs = sorted({a for h in hs for a in h.advisories})
        text = f"[critical] {len(hs)} network indicator hit(s) ({', '.join(advs)}) in {path}"
        body = "\n".join(f"line {h.line}: `{mrkdwn(h.indicator)}` ({h.indicator_kind}) "
                         f"{h.timestamp.isoformat() if h.timestamp else ''}\n>{_safe_line(h.text)}"
                         for h in hs[:MAX_HITS_PER_MESSAGE])
        more = f"\n…and {len(hs) - MAX_HITS_PER_MESSAGE} more" if len(hs) > MAX_HITS_PER_MESSAGE else ""
        head = f"{_ICON['critical']} *[CRITICAL] watch: network-hit* in `{mrkdwn(path)}` ({mrkdwn(', '.join(advs))})"
        out.append((text, [{"type": "section", "text": {"type": "mrkdwn", "text": f"{head}\n{body}{more}"[:2900]}}]))
    return out


def _event_detail(ev: Any) -> str:
    if isinstance(ev, DriftEvent):
        who = ev.pushed_by or ("unknown" if not ev.push_info_error else f"unknown ({ev.push_info_error})")
        return (f"`{ev.reference}` moved to a digest nobody listed as expected\n"
                f"before: `{ev.before}`\nafter:  `{ev.after}`\n"
                f"pushed: {ev.pushed_at.isoformat() if ev.pushed_at else 'unknown'} by {who}")
    if isinstance(ev, MaliciousEvent):
        inc = f"dry-run incident `{ev.incident}` started" if ev.incident else f"incident NOT started: {ev.incident_error}"
        via = "" if ev.matched == ev.digest else f" (platform child `{ev.matched}`)"
        if ev.mirror:
            via += (f" through the public mirror `{mrkdwn(ev.mirror)}` (nobody here can purge it: ask its operator, "
                    "or stop pulling through it)")
        return (f"`{ev.reference}` now names `{ev.digest}`{via}, listed as malicious by *{ev.advisory}* {ev.advisory_title}\n"
                f"before: `{ev.before or 'first seen'}`\n"
                f"pushed: {ev.pushed_at.isoformat() if ev.pushed_at else 'unknown'} by {ev.pushed_by or 'unknown'}\n{inc}\n"
                "Do not pull it; pin the previous digest.")
    if isinstance(ev, ActionTagMovedEvent):
        used = "\n".join(f"• `{u}`" for u in ev.used_in[:10])
        return (f"tag `{ev.tag}` of `{ev.repository}` moved (force-pushed) since first seen\n"
                f"before: `{ev.before}`\nafter:  `{ev.after}`\n"
                + ("A release tag should never move: pin the first-seen commit by SHA.\n" if ev.severity == "critical"
                   else "A floating tag moves with releases: check the new commit.\n") + used)
    if isinstance(ev, NewDestinationEvent):
        return _new_destination(ev)
    if isinstance(ev, SignatureEvent):
        return f"`{ev.reference}@{ev.digest}` is *{ev.status}*: {ev.reason}"
    if isinstance(ev, SourceDownEvent):
        return f"`{ev.source}` cannot be checked: {ev.error}\n(said once; a recovery notice follows)"
    if isinstance(ev, SourceRecoveredEvent):
        return f"`{ev.source}` answers again" + (f" (down since {ev.down_since.isoformat()})" if ev.down_since else "")
    return ev.summary()


def _new_destination(ev: NewDestinationEvent) -> str:
    """Job, images and destination first; then why it matters (young, rare) and the one command to run."""
    job = (f"job `{ev.job}`" + (f" (workflow `{ev.workflow}`)" if ev.workflow else "")
           + (f" {ev.job_url}" if ev.job_url else "")) if ev.job else \
        f"job unknown ({ev.candidate_jobs} job(s) of the group were running)"
    images = ", ".join(f"`{i}`" for i in ev.images[:6]) or "none logged"
    actions = ", ".join(f"`{a}`" for a in ev.actions[:6]) or "none logged"
    where = f"host `{ev.runner_host}`" if ev.runner_host else "an address in the group's ranges"
    flags = (f"{'*young*' if ev.young else 'not young'} (first seen in the estate "
             f"{ev.estate_first_seen.isoformat() if ev.estate_first_seen else 'unknown'}), "
             f"{'*rare*' if ev.rare else 'common'} ({ev.groups_seen} runner group(s) reach it)")
    step = (f"dry run: `{ev.dry_run_command}`" if ev.dry_run_command else f"no dry run offered: {ev.draft_error}")
    return (f"runner group `{ev.group}` reached `{ev.destination}` (`{ev.host}`) for the first time, at "
            f"{ev.first_at.isoformat()}, from `{ev.client}` ({where})\n"
            f"{job}\nimages used before: {images}\nactions used before: {actions}\n{flags}\n"
            f"first connection: `{redact_line(ev.source)}:{ev.line}`\n{step}")


def slack_alerter(inventory: Inventory, **client_options: Any) -> tuple[Alert | None, str | None]:
    """``(alert, None)`` posting to ``inventory.slack``; ``(None, reason)`` when Slack is not configured or its token
    cannot be resolved (the watch still runs and keeps the alerts queued in its state)."""
    if inventory.slack is None:
        return None, "no slack section in the inventory"
    cfg = inventory.slack
    try:
        client = SlackClient(resolve(cfg.token, "inventory slack.token") or "", base_url=cfg.api_url, **client_options)
    except DigestguardError as e:
        return None, str(e)

    def alert(events: Sequence[Any]) -> None:
        for text, blocks in alert_messages(events):
            client.post(cfg.channel, text, blocks=blocks)

    return alert, None
