"""Answering a paused gate from a terminal (``digestguard approve`` / ``confirm``) over Prefect's REST API.

Three plain HTTP calls (read the run, read the pause's description, resume with the answer) with the
standard library's ``urllib``: no Prefect import (about 3 s), no httpx import (it loads its own CLI, rich
and pygments: up to 2.5 s on a busy 2-core machine) and no temporary server, so an answer takes well under
two seconds. The answer carries the hash of
the plan the gate shows right now, read from the pause's own description; the gate still checks everything
(name, hash, rules, signature) and journals a refusal when the answer does not count.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from typing import Any
from uuid import UUID

from digestguard.errors import InputError, Unavailable
from flows.identity import sign_answer
from flows.local_server import api_url

HASH_IN_DESCRIPTION = re.compile(r"Plan hash `(sha256:[0-9a-f]{64})`")
MANUAL_HEADER = "### Manual rotation"


class Api:
    """The few Prefect REST calls an answer needs (JSON in, status and JSON or text out)."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.headers = {"Content-Type": "application/json"}
        if os.environ.get("PREFECT_API_KEY"):
            self.headers["Authorization"] = f"Bearer {os.environ['PREFECT_API_KEY']}"

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, str]:
        """One request; a busy server (429/502/503: SQLite "database is locked" under load) is asked again a few
        times, as Prefect's own client does (a refused resume changed nothing, so asking again is safe)."""
        for wait in (0.3, 0.6, 1.2, 2.0, None):
            status, text = self._once(method, path, body)
            if status not in (429, 502, 503) or wait is None:
                return status, text
            time.sleep(wait)
        return status, text

    def _once(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, str]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=self.headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - the configured Prefect API
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")
        except (urllib.error.URLError, OSError) as e:
            raise Unavailable(self.base, f"the Prefect API does not answer: {e}") from None


class PausedRun:
    """A paused flow run as the REST API shows it: its id, pause key and the form's description."""

    def __init__(self, api: Api, flow_run_id: str) -> None:
        try:
            self.id = str(UUID(flow_run_id))
        except ValueError:
            raise InputError(flow_run_id, "not a flow run id (a UUID, as printed by `digestguard respond`)") from None
        self.api = api
        status, text = api.call("GET", f"/flow_runs/{self.id}")
        if status == 404:
            raise InputError(flow_run_id, "no such flow run on this Prefect server")
        if status != 200:
            raise Unavailable(api.base, f"reading the flow run answered {status}")
        state = json.loads(text).get("state") or {}
        if state.get("type") != "PAUSED":
            raise InputError(flow_run_id, f"flow run is {state.get('name') or 'unknown'}, not paused at a gate")
        details = state.get("state_details") or {}
        self.pause_key = details.get("pause_key")
        keyset = details.get("run_input_keyset") or {}
        self.description = ""
        if keyset.get("description"):
            status, text = api.call("GET", f"/flow_runs/{self.id}/input/{keyset['description']}")
            if status == 200:
                try:
                    value = json.loads(text)
                except ValueError:
                    value = text
                self.description = value if isinstance(value, str) else str(value)

    def resume(self, run_input: dict[str, Any]) -> None:
        status, text = self.api.call("POST", f"/flow_runs/{self.id}/resume", {"run_input": run_input})
        if status not in (200, 201):
            raise Unavailable(self.api.base, f"resuming answered {status}: {text[:200]}")
        body = json.loads(text)
        if body.get("status") != "ACCEPT":
            reason = (body.get("details") or {}).get("reason") or body.get("status")
            raise InputError(self.id, f"the server did not take the answer: {reason}")


def _api(api: str | None = None) -> Api:
    url = api or api_url()
    if not url:
        raise InputError("PREFECT_API_URL", "no Prefect server found: `digestguard respond` starts one (and records it "
                                            "under $PREFECT_HOME), or set PREFECT_API_URL")
    return Api(url)


def blank(name: str | None) -> bool:
    return not " ".join((name or "").split())


def answer_gate(flow_run_id: str, *, approver: str, reject: bool = False, reason: str = "",
                signature: str | None = None, sign_with: str | None = None, api: str | None = None,
                extra: dict[str, str] | None = None) -> str:
    """Answer a paused approval gate; returns the plan hash answered. ``sign_with``: an SSH private key
    that signs (plan hash, run id, decision) so the gate can verify who answered. ``api``: the Prefect API
    URL (default: ``PREFECT_API_URL``, else the local server ``respond`` recorded)."""
    if blank(approver):
        raise InputError("--approver", "name yourself: a blank approver is refused")
    run = PausedRun(_api(api), flow_run_id)
    m = HASH_IN_DESCRIPTION.search(run.description)
    if not m or run.description.startswith(MANUAL_HEADER):
        raise InputError(flow_run_id, "the paused run is not waiting at a digestguard approval gate"
                                      + (" (it waits for a manual rotation: use `digestguard confirm`)"
                                         if run.description.startswith(MANUAL_HEADER) else ""))
    plan_hash = m.group(1)
    decision = "reject" if reject else "approve"
    answer = {"decision": decision, "approver": approver, "reason": reason, "plan_hash": plan_hash}
    if sign_with:
        signature = sign_answer(sign_with, plan_hash=plan_hash, run_id=run.id, decision=decision)
    if signature:
        answer["signature"] = signature
    run.resume({**answer, **(extra or {})})
    return plan_hash


def paused_manual_target(flow_run_id: str, api: str | None = None) -> tuple[str, str | None]:
    """The target (``secret:NAME``) a paused manual-rotation item waits for, and the run's inventory parameter."""
    run = PausedRun(_api(api), flow_run_id)
    if not run.description.startswith(MANUAL_HEADER):
        raise InputError(flow_run_id, "the paused run is not waiting for a manual rotation (use `digestguard approve`)")
    target = run.description.splitlines()[0].removeprefix(MANUAL_HEADER).strip(" :`")
    status, text = run.api.call("GET", f"/flow_runs/{run.id}")
    params = (json.loads(text).get("parameters") or {}) if status == 200 else {}
    inventory = params.get("inventory")
    return target, str(inventory) if isinstance(inventory, str) else None


def confirm_manual(flow_run_id: str, *, who: str, rotated: bool = True, note: str = "", api: str | None = None) -> str:
    """Answer a paused manual-rotation item; returns the item's target as the pause shows it."""
    if blank(who):
        raise InputError("--who", "name yourself: a blank name is refused")
    run = PausedRun(_api(api), flow_run_id)
    if not run.description.startswith(MANUAL_HEADER):
        raise InputError(flow_run_id, "the paused run is not waiting for a manual rotation (use `digestguard approve`)")
    target = run.description.splitlines()[0].removeprefix(MANUAL_HEADER).strip(" :`")
    run.resume({"rotated": rotated, "who": who, "note": note})
    return target
