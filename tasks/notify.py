"""Stage 6, notify: keep people in the loop on Slack while the playbook runs.

One incident message per incident, kept current with ``chat.update`` as stages
progress (a status board: one line per stage); each stage's details go in that
message's thread. Destructive stages post an approval request (what will be
rotated or purged, who must approve, a link straight to the paused run in the
Prefect UI) which is edited in place with the decision, the approvers and the
time once it is made. The response ends with a summary (detected, exposed,
rotated, purged, pinned with PR links, what still needs a person) and the
HTML report as a file in the thread.

Rules this module keeps:

* **Slack being down never stops the response.** Every method catches the
  failure, records it in the journal (the row for that Slack action gets
  ``failed`` with the error, plus a ``notify``/``slack-failed`` event) and returns
  an :class:`~digestguard.findings.ActionOutcome` saying so. Retries of 429s and
  dropped connections happen inside the client (slack-sdk retry handlers).
* **State survives a re-run.** The incident message's channel and ts live in
  the journal (``stage="notify", target="slack", action="incident-message"``,
  detail ``{channel, ts, stages}``) so a re-run of the same incident edits the same
  message; approval requests and the final summary are found the same way.
* **No secret value in a message.** Messages are built from ids, names, versions
  and counts only; and when the notifier is given known secret values, every
  outgoing string passes the one redactor (:func:`digestguard.redact.redact`, every value the run
  resolved or revealed is registered with it) in the client just before it is sent.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from prefect.runtime import flow_run
from prefect.settings import get_current_settings

from digestguard.credentials import resolve
from digestguard.errors import DigestguardError, NotFound, RateLimited, Unavailable
from digestguard.findings import ActionOutcome
from digestguard.inventory import ApprovalPolicy, Inventory
from digestguard.journal import Journal
from digestguard.markdown import mrkdwn, mrkdwn_link, origin_of, slack_plain
from digestguard.plan import Approval, Plan
from digestguard.redact import MASK, redact
from digestguard.timeutil import now, utc
from integrations.slack import ButtonClick, ButtonListener, SlackClient, SlackMessage, approval_buttons, channel_name_for
from tasks.report.model import IncidentReport, approvers_text

__all__ = [
    "MASK",
    "Notifier",
    "flow_run_url",
    "markdown_to_mrkdwn",
    "prefect_ui_url",
    "redact",
    "who_must_approve",
]

STAGE_ORDER = ("detect", "assess", "rotate", "purge", "pin", "report")
_ICONS = {
    "started": ":hourglass_flowing_sand:", "running": ":hourglass_flowing_sand:", "done": ":white_check_mark:",
    "failed": ":x:", "awaiting-approval": ":raised_hand:", "approved": ":white_check_mark:", "rejected": ":no_entry:",
    "no-decision": ":alarm_clock:", "expired": ":alarm_clock:",
    "skipped": ":fast_forward:", "dry-run": ":test_tube:", "partial": ":warning:",
    "planned": ":memo:",
}
_BLOCK_TEXT_MAX = 2900  # Slack refuses section text over 3000 characters

# --------------------------------------------------------------------------- redaction


# --------------------------------------------------------------------------- Prefect links


def prefect_ui_url() -> str | None:
    """The Prefect UI base URL: ``PREFECT_UI_URL`` from the environment, else Prefect's setting."""
    env = os.environ.get("PREFECT_UI_URL")
    if env:
        return env.rstrip("/")
    try:
        url = get_current_settings().ui_url
    except Exception:  # noqa: BLE001 - a link is a convenience, never a failure
        return None
    return str(url).rstrip("/") if url else None


def flow_run_url(flow_run_id: Any | None = None) -> str | None:
    """``<ui>/runs/flow-run/<id>`` for ``flow_run_id`` (default: the current flow run), or None."""
    if flow_run_id is None:
        try:
            flow_run_id = flow_run.id
        except Exception:  # noqa: BLE001
            flow_run_id = None
    ui = prefect_ui_url()
    if not flow_run_id or not ui:
        return None
    return f"{ui}/runs/flow-run/{flow_run_id}"


# --------------------------------------------------------------------------- Slack text helpers


def _link(url: str | None, label: str, origins: Iterable[str] = ()) -> str:
    """A Slack link to ``url`` when its origin is one of ``origins`` (the inventory's, and Prefect's own UI),
    else the label and the URL as inert text."""
    ui = origin_of(prefect_ui_url() or "")
    return mrkdwn_link(url, label, {*origins, *([ui] if ui else [])})


def _hhmm(d: datetime) -> str:
    """``2026-04-22 12:35 UTC``: to the minute, which is what a person reading a channel needs."""
    return utc(d).strftime("%Y-%m-%d %H:%M UTC")


def _cap(text: str, limit: int = _BLOCK_TEXT_MAX) -> str:
    return text if len(text) <= limit else text[: limit - 30].rstrip() + "\n… (truncated, see the report)"


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _cap(text)}}


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": _cap(text, 1900)}]}


_DETAILS_MAX = 12000  # a thread reply longer than this is cut with a pointer to the report


_MD_LINK = re.compile(r"(?<!\\)\[((?:[^\]\\]|\\.)+)(?<!\\)\]\((https?://[^)\s|<>]+)\)")


def markdown_to_mrkdwn(md: str, limit: int = _DETAILS_MAX, *, origins: Iterable[str] = ()) -> str:
    r"""GitHub Markdown (what ``Plan.markdown()`` and the stages' renderers produce) as Slack mrkdwn.

    The Markdown's outside text was made inert when it was written (:mod:`digestguard.markdown`);
    this only translates: its escapes are undone and ``& < >`` escaped for Slack; headings and
    ``**bold**`` become ``*bold*``; ``[text](url)`` becomes ``<url|text>`` only for a URL whose origin
    is in ``origins`` (else the text stays, the URL inert); ``- `` bullets become ``•``; a table
    becomes a code block (Slack has no tables, monospace keeps the columns readable).

    >>> markdown_to_mrkdwn("### Plan\n- **2** items, see [PR](https://x/1)", origins=["https://x"])
    '*Plan*\n• *2* items, see <https://x/1|PR>'
    """
    out: list[str] = []
    table: list[str] = []
    allowed = set(origins)

    def flush() -> None:
        if table:
            out.append("```\n" + "\n".join(table) + "\n```")
            table.clear()

    def unmd(text: str) -> str:
        """Markdown escapes undone (they were for Markdown; the text stays inert: URLs defanged, no mention)."""
        return (text.replace("\\[", "[").replace("\\]", "]").replace("\\`", "ˋ")
                .replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))

    def slack(text: str) -> str:
        """Slack's three control characters escaped."""
        return unmd(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    def links(line: str) -> str:
        parts: list[str] = []
        last = 0
        for m in _MD_LINK.finditer(line):
            parts.append(slack(line[last:m.start()]))
            parts.append(mrkdwn_link(m.group(2), unmd(m.group(1)), allowed))
            last = m.end()
        parts.append(slack(line[last:]))
        return "".join(parts)

    for raw in md.splitlines():
        if raw.lstrip().startswith("|"):
            if not re.fullmatch(r"\s*\|(\s*:?-{3,}:?\s*\|)+\s*", raw):
                table.append(slack(raw.replace("\\|", "/").replace("`", "")))
            continue
        flush()
        line = links(raw)
        line = re.sub(r"^\s{0,3}#{1,6}\s+(.*)$", r"*\1*", line)
        line = re.sub(r"\*\*(.+?)\*\*", r"*\1*", line)
        line = re.sub(r"^(\s*)[-*] (?!\[)", r"\1• ", line)
        line = re.sub(r"^(\s*)[-*] \[ \] ", r"\1☐ ", line)
        out.append(line)
    flush()
    text = "\n".join(out).strip()
    if len(text) > limit:
        text = text[: limit - 60].rstrip() + "\n… (cut here: the full details are in the report)"
        if text.count("```") % 2:
            text += "\n```"
    return text


def who_must_approve(policy: ApprovalPolicy | None, *, approvers: Iterable[str] = (), triggered_by: str | None = None) -> str:
    """The approval rule in words, for the request message."""
    policy = policy or ApprovalPolicy()
    parts = ["two distinct approvers" if policy.two_approvers else "one approver"]
    names = [a for a in approvers if a]
    if names:
        parts.append("from " + ", ".join(mrkdwn(n, mentions=True) for n in names))  # the inventory's approvers
    if policy.distinct_from_trigger:
        parts.append(f"not {mrkdwn(triggered_by)} (who started the run)" if triggered_by
                     else "not the person who started the run")
    deadline = now() + timedelta(seconds=policy.timeout_seconds)
    parts.append(f"before {_hhmm(deadline)} (the run stops without a decision)")
    return ", ".join(parts)


# --------------------------------------------------------------------------- the notifier


class _NotPosted(DigestguardError):
    """A thread reply or edit was asked for but the incident message itself could not be posted."""



class Notifier:
    """Slack notifications for one incident, with their state kept in the journal.

    Build it with :meth:`from_inventory` (the usual way) or directly with a client.
    Without ``inventory.slack`` it is disabled: every method returns a ``skipped``
    outcome, so the flow calls it unconditionally.
    """

    def __init__(
        self,
        journal: Journal,
        incident: str,
        *,
        client: SlackClient | None,
        channel: str | None,
        create_channel: bool = False,
        advisory_id: str = "",
        title: str = "",
        run_url: str | None = None,
        disabled_reason: str | None = None,
        cooldown: float = 30.0,
        link_origins: Iterable[str] = (),
    ) -> None:
        self.journal = journal
        self.link_origins = sorted(set(link_origins))  # the only origins a message links to (plus Prefect's UI)
        self.cooldown = cooldown
        self._down_error: str | None = None
        self._down_until = 0.0
        self._forcing = False
        self.incident = incident
        self.client = client
        self.channel = channel
        self.create_channel = create_channel
        self.advisory_id = advisory_id
        self.title = title
        self.run_url = run_url
        self.coverage_note: str | None = None  # "N of M sources not checked: ...", shown above the board
        self.disabled_reason = disabled_reason if client is None else None
        self.app_token_ref: str | None = None  # slack.app_token: approval buttons over Socket Mode
        self.api_url: str | None = None
        self.message: SlackMessage | None = None
        self.stages: dict[str, dict[str, str]] = {}
        self.outcomes: list[ActionOutcome] = []
        self._opened = False
        saved = journal.get(incident, "notify", "slack", "incident-message")
        if saved:
            self.stages = dict(saved.detail.get("stages") or {})
            if saved.detail.get("channel") and saved.detail.get("ts"):
                self.message = SlackMessage(str(saved.detail["channel"]), str(saved.detail["ts"]))

    @classmethod
    def from_inventory(
        cls,
        inventory: Inventory,
        journal: Journal,
        incident: str,
        *,
        advisory_id: str = "",
        title: str = "",
        secrets: Iterable[str] = (),
        run_url: str | None = None,
        client_factory: Callable[..., SlackClient] = SlackClient,
        cooldown: float = 30.0,
        **client_options: Any,
    ) -> "Notifier":
        """A notifier for ``inventory.slack``; disabled (with the reason journaled) when Slack is not configured
        or its token cannot be resolved, because a missing Slack token must not stop the response."""
        known = [s for s in secrets if s]
        common: dict[str, Any] = dict(advisory_id=advisory_id, title=title, run_url=run_url, cooldown=cooldown,
                                      link_origins=inventory.link_origins())
        if inventory.slack is None:
            return cls(journal, incident, client=None, channel=None, disabled_reason="no slack section in the inventory",
                       **common)
        cfg = inventory.slack
        try:
            token = resolve(cfg.token, "inventory slack.token") or ""
            client = client_factory(token, base_url=cfg.api_url, scrub=lambda s: redact(s, known), **client_options)
        except DigestguardError as e:
            journal.event(incident, "notify", "slack-disabled", {"error": str(e)[:300]})
            return cls(journal, incident, client=None, channel=cfg.channel, disabled_reason=str(e), **common)
        n = cls(journal, incident, client=client, channel=cfg.channel, create_channel=cfg.create_channel, **common)
        n.app_token_ref, n.api_url = cfg.app_token, cfg.api_url
        return n

    @property
    def enabled(self) -> bool:
        return self.client is not None

    @property
    def buttons(self) -> bool:
        """Whether approval requests carry approve/reject buttons (Slack on, and an app-level token for Socket Mode)."""
        return self.client is not None and bool(self.app_token_ref)

    def button_listener(self, on_click: Callable[[ButtonClick], None]) -> ButtonListener | None:
        """A started Socket Mode listener for the approval buttons; None without an app token or when Socket Mode
        cannot connect (journaled: the gate still answers through Prefect and the terminal)."""
        if not self.buttons or not self.app_token_ref:
            return None
        try:
            token = resolve(self.app_token_ref, "inventory slack.app_token") or ""
            return ButtonListener(token, on_click, base_url=self.api_url).start()
        except DigestguardError as e:
            self.journal.event(self.incident, "notify", "slack-buttons-unavailable", {"error": str(e)[:300]})
            return None

    # ------------------------------------------------------------------ plumbing
    def _outcome(self, action: str, outcome: str, *, detail: dict[str, Any] | None = None,
                 error: str | None = None) -> ActionOutcome:
        o = ActionOutcome(stage="notify", target="slack", action=action, outcome=outcome, detail=detail or {}, error=error)  # type: ignore[arg-type]
        self.outcomes.append(o)
        return o

    def _attempt(self, action: str, fn: Callable[[], dict[str, Any]]) -> ActionOutcome:
        """Run one Slack action; journal and return its outcome; never raise.

        After Slack proved unreachable (retries exhausted), further actions fail fast for
        ``cooldown`` seconds instead of each waiting through its own retries and timeouts,
        so a Slack outage costs the response seconds, not minutes. The final summary
        always tries (see :meth:`final_summary`).
        """
        if self.client is None:
            return self._outcome(action, "skipped", error=f"slack disabled: {self.disabled_reason}")
        if not self._forcing and self._down_error and time.monotonic() < self._down_until:
            return self._failed(action, f"not sent, Slack is unavailable: {self._down_error}")
        try:
            detail = fn()
        except Exception as e:  # noqa: BLE001 - Slack must never stop the response
            err = f"{type(e).__name__}: {e}"[:500]
            if isinstance(e, (Unavailable, RateLimited)):
                self._down_error, self._down_until = err, time.monotonic() + self.cooldown
            return self._failed(action, err)
        self._down_error = None
        self.journal.record(self.incident, "notify", "slack", action, "done", detail=detail)
        return self._outcome(action, "done", detail=detail)

    def _failed(self, action: str, err: str) -> ActionOutcome:
        self.journal.record(self.incident, "notify", "slack", action, "failed", error=err)
        self.journal.event(self.incident, "notify", "slack-failed", {"action": action, "error": err})
        return self._outcome(action, "failed", error=err)

    def _save_board(self) -> None:
        """Persist the stage board (and where the message is) on the incident-message row."""
        detail: dict[str, Any] = {"stages": self.stages}
        if self.message:
            detail.update(channel=self.message.channel, ts=self.message.ts)
        row = self.journal.get(self.incident, "notify", "slack", "incident-message")
        status = row.status if row else "planned"
        self.journal.record(self.incident, "notify", "slack", "incident-message", status, detail=detail,
                            error=row.error if row else None)

    def _target_channel(self) -> str:
        """The configured channel, or (``create_channel``) the incident's own channel, created once."""
        assert self.client is not None
        if not self.create_channel:
            return str(self.channel)
        row = self.journal.get(self.incident, "notify", "slack", "channel")
        if row and row.status == "done" and row.detail.get("channel"):
            return str(row.detail["channel"])
        name = channel_name_for(self.incident)
        try:
            cid = self.client.create_channel(name)
            self.journal.record(self.incident, "notify", "slack", "channel", "done", detail={"channel": cid, "name": name})
            return cid
        except DigestguardError as e:
            if getattr(e, "slack_error", None) != "name_taken":
                raise
            # Taken (by a person, or a run that crashed before journaling): post where the inventory says instead.
            self.journal.record(self.incident, "notify", "slack", "channel", "skipped",
                                detail={"name": name, "fallback": str(self.channel)}, error="name_taken")
            return str(self.channel)

    # ------------------------------------------------------------------ the incident message
    def _board_text(self) -> tuple[str, list[dict[str, Any]]]:
        head = f"Incident {self.incident}" + (f": {self.title}" if self.title else "")
        order = [s for s in STAGE_ORDER if s in self.stages] + [s for s in self.stages if s not in STAGE_ORDER]
        lines = []
        for s in order:
            st = self.stages[s]
            icon = _ICONS.get(st.get("status", ""), ":small_blue_diamond:")
            summary = st.get("summary") or ""
            lines.append(f"{icon} *{mrkdwn(s)}*: {mrkdwn(st.get('status', ''))}" + (f" · {mrkdwn(summary)}" if summary else ""))
        board = "\n".join(lines) or "_Response starting…_"
        if self.coverage_note:
            board = f":warning: *INCOMPLETE: {mrkdwn(self.coverage_note[:600])}*\n{board}"
        ctx = " · ".join(x for x in [f"advisory `{mrkdwn(self.advisory_id)}`" if self.advisory_id else "",
                                     _link(self.run_url, "Prefect flow run", self.link_origins) if self.run_url else "",
                                     f"updated {_hhmm(now())}"] if x)
        text = f":rotating_light: *{mrkdwn(head)}*\n{board}\n{ctx}"
        blocks = [{"type": "header", "text": {"type": "plain_text", "text": slack_plain(f"🚨 {head}")[:150], "emoji": True}},
                  _section(board), _context(ctx)]
        return text, blocks

    def open_incident(self) -> ActionOutcome:
        """Post the incident message, or (re-run) edit the one the journal remembers."""
        def run() -> dict[str, Any]:
            assert self.client is not None
            text, blocks = self._board_text()
            if self.message:
                try:
                    self.message = self.client.update(self.message, text, blocks=blocks)
                    return {"channel": self.message.channel, "ts": self.message.ts, "stages": self.stages, "reused": True}
                except NotFound:
                    self.message = None  # deleted by someone: post a fresh one below
            self.message = self.client.post(self._target_channel(), text, blocks=blocks)
            return {"channel": self.message.channel, "ts": self.message.ts, "stages": self.stages, "reused": False}

        out = self._attempt("incident-message", run)
        self._opened = out.outcome == "done"
        return out

    def _ensure_open(self) -> SlackMessage:
        """The incident message, posting it first if needed; raises with the posting's own error when it cannot."""
        if not (self._opened and self.message):
            out = self.open_incident()
            if out.outcome != "done" or self.message is None:
                raise _NotPosted(f"no incident message to update: {out.error}")
        assert self.message is not None
        return self.message

    def _refresh(self) -> None:
        assert self.client is not None and self.message is not None
        text, blocks = self._board_text()
        self.client.update(self.message, text, blocks=blocks)

    def stage_update(self, stage: str, status: str, summary: str = "", details: str | None = None) -> ActionOutcome:
        """Set ``stage``'s line on the board (``status``: started, done, failed, skipped, planned, partial ...)
        and, with ``details`` (Markdown built from ids and counts, e.g. ``plan.markdown()``), post them in
        the thread, converted to Slack mrkdwn."""
        self.stages[stage] = {"status": status, "summary": summary[:300], "at": now().isoformat(timespec="seconds")}
        self._save_board()

        def run() -> dict[str, Any]:
            assert self.client is not None
            self._ensure_open()
            self._refresh()
            detail: dict[str, Any] = {"status": status}
            if details:
                reply = self.client.reply(self.message, f"*{mrkdwn(stage)}* · {mrkdwn(status)}\n{markdown_to_mrkdwn(details, origins=self.link_origins)}")
                detail["reply_ts"] = reply.ts
            return detail

        return self._attempt(f"stage:{stage}", run)

    # ------------------------------------------------------------------ approvals
    def _approval_text(self, plan: Plan, *, who: str, link: str | None, top: int, decision: str | None = None,
                       buttons: str | None = None) -> tuple[str, list[dict[str, Any]]]:
        verbs = {"rotate": "rotated", "purge": "purged", "pin": "pinned"}
        counts = Counter(i.action for i in plan.items)
        count_text = ", ".join(f"{n} {mrkdwn(a)}" for a, n in counts.most_common()) or "nothing"
        verb = verbs.get(plan.stage, "changed")
        lines = [f"*{len(plan.items)} item(s) will be {verb}* ({count_text}). Plan `{plan.short_hash}`."]
        for it in plan.items[:top]:
            reason = f" · {mrkdwn(it.reason[:120])}" if it.reason else ""
            lines.append(f"• {mrkdwn(it.action)} `{mrkdwn(it.target)}`{reason}")
        if len(plan.items) > top:
            lines.append(f"• … and {len(plan.items) - top} more (all listed in the run's approval form)")
        body = "\n".join(lines)
        title = f"{plan.stage.capitalize()} plan for incident {self.incident}"
        if decision:
            first = f"{decision}\n*{mrkdwn(title)}*"
            ask = _link(link, "Prefect flow run", self.link_origins) if link else ""
        else:
            first = f":raised_hand: *Approval needed: {mrkdwn(title)}*"
            how = (f"{_link(link, 'Open the paused run in Prefect', self.link_origins)} to approve or reject." if link
                   else "Approve or reject in the Prefect UI (flow run link unavailable).")
            ask = f"*Who must approve:* {who}\n" + how
        text = "\n".join(x for x in (first, body, ask) if x)
        blocks = [_section(first), _section(body)] + ([_section(ask)] if ask else [])
        if buttons and not decision:
            blocks.append(approval_buttons(buttons))
        return text, blocks

    def request_approval(
        self,
        plan: Plan,
        *,
        flow_run_id: Any | None = None,
        policy: ApprovalPolicy | None = None,
        approvers: Iterable[str] = (),
        triggered_by: str | None = None,
        top: int = 5,
    ) -> ActionOutcome:
        """Ask for approval in the incident thread (also shown in the channel).

        Posted once per plan: a re-run with the same plan hash edits the earlier request.
        """
        action = f"approval-request:{plan.stage}"
        link = flow_run_url(flow_run_id) or self.run_url
        who = who_must_approve(policy, approvers=approvers, triggered_by=triggered_by)
        self.stages[plan.stage] = {"status": "awaiting-approval", "summary": f"{len(plan.items)} item(s), plan {plan.short_hash}"}
        self._save_board()

        def run() -> dict[str, Any]:
            assert self.client is not None
            self._ensure_open()
            self._refresh()
            value = (json.dumps({"run": str(flow_run_id), "stage": plan.stage, "plan_hash": plan.hash})
                     if self.buttons and flow_run_id else None)
            text, blocks = self._approval_text(plan, who=who, link=link, top=top, buttons=value)
            row = self.journal.get(self.incident, "notify", "slack", action)
            if row and row.detail.get("plan_hash") == plan.hash and row.detail.get("ts"):
                msg = SlackMessage(str(row.detail["channel"]), str(row.detail["ts"]), self.message.ts)
                try:
                    self.client.update(msg, text, blocks=blocks)
                    return {"channel": msg.channel, "ts": msg.ts, "plan_hash": plan.hash, "link": link or "", "reused": True}
                except NotFound:
                    pass
            msg = self.client.reply(self.message, text, blocks=blocks, broadcast=True)
            return {"channel": msg.channel, "ts": msg.ts, "plan_hash": plan.hash, "link": link or "", "reused": False}

        return self._attempt(action, run)

    def record_decision(self, plan: Plan, approval: Approval | None, *, policy: ApprovalPolicy | None = None) -> ActionOutcome:
        """Edit the approval request with the decision, approvers and time (``approval=None``: no decision came)."""
        action = f"approval-request:{plan.stage}"
        if approval is None or approval.expired:
            decision, status, who, at = (":alarm_clock: *Expired*: no decision came in time; the stage did not run",
                                         "expired", "", approval.at if approval else now())
        else:
            who = approvers_text(approval.approvers, approval.identities)
            at = approval.at
            if approval.approved:
                decision, status = f":white_check_mark: *Approved* by {mrkdwn(who)} at {_hhmm(at)}", "approved"
            else:
                decision, status = f":no_entry: *Rejected* by {mrkdwn(who)} at {_hhmm(at)}", "rejected"
        if approval is not None and approval.reason:
            decision += f": {mrkdwn(approval.reason[:300])}"
        if approval is not None and approval.plan_hash != plan.hash:
            decision += (f"\n:warning: the decision was for plan `{approval.plan_hash[7:19]}`, not `{plan.short_hash}`: "
                         "it does not apply")
        self.stages[plan.stage] = {"status": status, "summary": (f"by {who} at {_hhmm(at)}" if who else _hhmm(at))}
        self._save_board()
        link = None
        row = self.journal.get(self.incident, "notify", "slack", action)
        if row:
            link = row.detail.get("link") or None

        def run() -> dict[str, Any]:
            assert self.client is not None
            self._ensure_open()
            self._refresh()
            text, blocks = self._approval_text(plan, who="", link=link, top=5, decision=decision)
            detail = {"decision": status, "approvers": who, "decided_at": at.isoformat()}
            if row and row.detail.get("ts") and row.detail.get("plan_hash") == plan.hash:
                msg = SlackMessage(str(row.detail["channel"]), str(row.detail["ts"]), self.message.ts)
                try:
                    self.client.update(msg, text, blocks=blocks)
                    return detail
                except NotFound:
                    pass
            msg = self.client.reply(self.message, text, blocks=blocks)
            return {**detail, "channel": msg.channel, "ts": msg.ts, "plan_hash": plan.hash}

        return self._attempt(action, run)

    # ------------------------------------------------------------------ the end
    def final_summary(self, report: IncidentReport, *, html: str | None = None,
                      filename: str | None = None) -> list[ActionOutcome]:
        """Post (or on a re-run edit) the summary in the thread, mark the board finished, upload the HTML report.

        Returns one outcome per Slack action.
        """
        counts = report.counts()
        people = report.all_needs_person()
        status = "done" if not people else "partial"
        left = f"{len(people)} item(s) need a person" if people else "nothing left for a person"
        self.stages["report"] = {"status": status, "summary": left}
        self._save_board()
        text, blocks = self._summary_text(report, people)
        self._forcing = True  # the summary is the record people read: always try, even right after an outage
        try:
            return self._final(html, filename, text, blocks, people, counts)
        finally:
            self._forcing = False

    def _final(self, html: str | None, filename: str | None, text: str, blocks: list[dict[str, Any]],
               people: list[str], counts: dict[str, Any]) -> list[ActionOutcome]:
        """Post or edit the summary, then upload the HTML report unless the same one is already in the thread."""
        def run() -> dict[str, Any]:
            assert self.client is not None
            self._ensure_open()
            self._refresh()
            row = self.journal.get(self.incident, "notify", "slack", "final-summary")
            if row and row.detail.get("ts"):
                msg = SlackMessage(str(row.detail["channel"]), str(row.detail["ts"]), self.message.ts)
                try:
                    self.client.update(msg, text, blocks=blocks)
                    return {"channel": msg.channel, "ts": msg.ts, "needs_person_count": len(people), "reused": True}
                except NotFound:
                    pass
            msg = self.client.reply(self.message, text, blocks=blocks, broadcast=True)
            return {"channel": msg.channel, "ts": msg.ts, "needs_person_count": len(people),
                    "compromised_count": counts["compromised"], "reused": False}

        outs = [self._attempt("final-summary", run)]
        if outs[-1].outcome == "failed":
            self._forcing = False  # Slack just failed again: do not wait through the upload's retries too
        if html is not None:
            name = filename or f"incident-{channel_name_for(self.incident)[4:]}-report.html"

            digest = hashlib.sha256(html.encode("utf-8")).hexdigest()[:16]

            def upload() -> dict[str, Any]:
                assert self.client is not None
                row = self.journal.get(self.incident, "notify", "slack", "report-file")
                if row and row.status == "done" and row.detail.get("sha256") == digest:
                    return dict(row.detail)  # the same report is already in the thread
                self._ensure_open()
                fid = self.client.upload_file(self.message.channel, name, html, title=f"Incident {self.incident} report",
                                              thread_ts=self.message.ts)
                return {"file_id": fid, "name": name, "sha256": digest}

            outs.append(self._attempt("report-file", upload))
        return outs

    def _summary_text(self, report: IncidentReport, people: list[str]) -> tuple[str, list[dict[str, Any]]]:
        lines = [f"• {mrkdwn(x)}" for x in report.summary_lines()]
        prs = [_link(p.url, p.label(), [*self.link_origins, *report.link_origins]) for p in report.pull_requests]
        if prs:
            lines.append("• Pull requests: " + ", ".join(prs))
        head = f":clipboard: *Incident {mrkdwn(self.incident)}: response summary*"
        body = "\n".join(lines)
        if people:
            shown = people[:15]
            todo = "*Still needs a person:*\n" + "\n".join(f"• {mrkdwn(p)}" for p in shown)
            if len(people) > len(shown):
                todo += f"\n• … and {len(people) - len(shown)} more (see the report)"
        else:
            todo = "*Still needs a person:* nothing."
        text = f"{head}\n{body}\n{todo}"
        blocks = [_section(head), _section(body), _section(todo)]
        if report.flow_run_url or self.run_url:
            blocks.append(_context(_link(report.flow_run_url or self.run_url, "Prefect flow run", self.link_origins)))
        return text, blocks

    def failures(self) -> list[ActionOutcome]:
        """Every Slack action of this notifier that did not reach Slack."""
        return [o for o in self.outcomes if o.outcome == "failed"]
