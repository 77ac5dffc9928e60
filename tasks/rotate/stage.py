"""Stage 3, rotate: give every exposed credential a new value, update everyone who holds it, revoke the old one.

The plan (:func:`plan_rotation`) has one ``rotate`` item per exposed secret that
the inventory knows; unmapped secrets become plan notes for a person. Each item
carries ids only: backend, ``ref``, strategy, consumers (kind, id and the
fields to reach them), the jobs that exposed it.

Strategies: ``revoke-first`` (default for *confirmed* exposure) makes the
leaked credential unusable before any consumer gets the new one; ``overlap``
(default for *probable*) updates and verifies consumers first and revokes last,
so nothing breaks while it runs. For value stores (Vault KV, Secrets Manager,
Key Vault, GCP) "revoke" means the exposed versions become unreadable; since a
version can only be read back while it is live, revoke-first there writes the
new version first and revokes right after it, before any consumer is touched.
For an IAM key revoke-first deletes the old key before creating the new one.
A database static role is rotated by Vault in one atomic step.

Crash safety, the rule every step follows: the new value is written to its
backend *before* anything else refers to it, and each step is journaled
(``started`` before, ``done`` after, under target ``secret:<name>``). A resumed
run (after a crash, a kill, or a retry of a retryable error) reads the journal:
a ``new-version`` step that started but never finished is *recovered* from the
backend (Vault's check-and-set makes ``base+1`` the only version the write
could have made; Secrets Manager uses a token derived from incident and secret,
so a repeated put is the same version; Key Vault / GCP adopt the version that
appeared since the journaled list) and never written twice. Consumers always
get the value read back from the backend by the journaled version id, so the
first run and a resumed run hand out exactly the same value.

IAM access keys are the exception: AWS never shows a secret access key again.
The chosen design: when the secret has a whole-credential copy consumer
(``vault-kv`` or ``aws-secretsmanager`` with no ``field``) that copy is the
*stash*: it is written right after the key is created, before the step is
journaled done, and a resumed run reads the pair back from it. Without a stash
(or when the crash came between ``CreateAccessKey`` and the stash write) the
resumed run finds the orphan key (any key not in the journaled ``old-keys``
list), deletes it and creates another; a key whose secret was lost after the
step finished is deleted and replaced the same way. So an IAM key may be
created twice after a crash, but never left behind and never active unknown.

Values never leave this stage: they live in ``SecretStr`` locals of one
secret's rotation; results, journal rows and log lines carry ids and versions.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Mapping

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from digestguard.advisory import Advisory
from digestguard.errors import DigestguardError, IntegrationError, Refused
from digestguard.findings import ActionOutcome, ExposureReport, StageResult
from digestguard.inventory import Inventory
from digestguard.journal import Holder, Journal, LeaseHeld, lease_wait_default
from digestguard.plan import Approval, Plan, PlanItem, require_approved
from tasks import contain, used
from tasks.connect import Connections
from tasks.rotate.backends import (
    BACKENDS,
    COPY_KINDS,
    AwsIamKey,
    Backend,
    ConsumerSpec,
    Lost,
    consumer_id,
    copy_text,
    location,
    pick,
    read_stash,
    write_consumer,
)
from tasks.rotate.issuers import current_material, identifies_old

STAGE = "rotate"
PROBE_WAIT_SECONDS = 30.0
"""How long the old-credential probe keeps asking before "still accepted" (issuers converge: IAM takes seconds).
``DIGESTGUARD_PROBE_WAIT_SECONDS`` overrides it (tests against servers that never refuse)."""
_EXPOSURE_ORDER = {"clear": 0, "probable": 1, "confirmed": 2}
_log = logging.getLogger("digestguard.rotate")

ConfirmManual = Callable[[PlanItem], bool]


def default_strategy(exposure: str) -> str:
    """``revoke-first`` for confirmed exposure (the attacker has it: kill it now), ``overlap`` otherwise."""
    return "revoke-first" if exposure == "confirmed" else "overlap"


# --------------------------------------------------------------------------- plan


def plan_rotation(incident: str, advisory: Advisory, exposure: ExposureReport, inventory: Inventory) -> Plan:
    """One ``rotate`` item per exposed, inventoried secret (sorted by name); unmapped ones become notes.

    Several exposed names that map to the same inventory secret (``AWS_ACCESS_KEY_ID`` and
    ``AWS_SECRET_ACCESS_KEY`` both naming one key) become one item with the strongest exposure.
    """
    merged: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for s in exposure.secrets:
        inv = inventory.secret(s.inventory_name or s.name) if s.mapped else None
        if inv is None:
            jobs = ", ".join(s.exposed_by[:5]) + (f" and {len(s.exposed_by) - 5} more" if len(s.exposed_by) > 5 else "")
            seen = "; ".join(s.how[:3])
            why = "not in the inventory" if not s.mapped else f"mapped to {s.inventory_name!r}, which the inventory no longer has"
            notes.append(f"{s.name}: {why} ({s.exposure} exposure by {jobs or 'unknown jobs'}{'; ' + seen if seen else ''}): "
                         "rotate it by hand and add it to the inventory")
            continue
        cur = merged.setdefault(inv.name, {"secret": inv, "exposure": s.exposure, "jobs": [], "names": []})
        if _EXPOSURE_ORDER[s.exposure] > _EXPOSURE_ORDER[cur["exposure"]]:
            cur["exposure"] = s.exposure
        cur["jobs"] += [j for j in s.exposed_by if j not in cur["jobs"]]
        if s.name not in cur["names"]:
            cur["names"].append(s.name)
    items: list[PlanItem] = []
    evidence: list[str] = []
    for name in sorted(merged):
        m = merged[name]
        sec = m["secret"]
        strategy = sec.strategy or default_strategy(m["exposure"])
        consumers = []
        for c in sec.all_consumers():
            fields = c.model_dump(exclude_none=True)
            consumers.append({**fields, "id": consumer_id(fields, sec.name, inventory.backends)})
        jobs = sorted(m["jobs"])
        reason = f"{m['exposure']} exposure by {len(jobs)} job(s); {strategy}; {len(consumers)} consumer(s) to update"
        if sec.backend == "manual":
            where = sec.ref.get("where") or sec.owner or "where it was issued"
            reason = f"rotate by hand ({where}) and confirm; {m['exposure']} exposure by {len(jobs)} job(s)"
        system, where = location(str(sec.backend), sec.ref, inventory.backends)
        params = {"backend": sec.backend, "ref": dict(sec.ref), "strategy": strategy, "consumers": consumers,
                  "exposed_by": jobs, "exposure": m["exposure"], "names": sorted(m["names"]),
                  "exposed_from": exposure.window_start.isoformat(),
                  # what the approver reads: where it lives, which stores hold copies, who uses it
                  "system": system, "where": where,
                  "copies": [copy_text(c, inventory.backends) for c in consumers if c.get("kind") in COPY_KINDS],
                  "used_by": [copy_text(c, inventory.backends) for c in consumers if c.get("kind") not in COPY_KINDS]}
        if sec.issuer is not None and sec.issuer.kind != sec.backend:
            params["issued_by"] = location(sec.issuer.kind, {**sec.issuer.ref, "where": sec.issuer.where}, inventory.backends)[1]
        if sec.issuer is not None:
            params["issuer"] = sec.issuer.model_dump(exclude_none=True)
        primary = sec.primary_store() if sec.backend == "manual" else None
        if primary is not None:  # a person puts the new value there; the playbook propagates and probes it
            params["primary_store"] = {"kind": primary.kind, **primary.location()}
        items.append(PlanItem(target=f"secret:{sec.name}", action="rotate", kind=str(sec.backend), reason=reason, params=params))
        evidence += [f"{sec.name}: exposed to {j}" for j in jobs]
    return Plan(stage="rotate", incident=incident, advisory=advisory.id, items=items, evidence=evidence, notes=notes)


def dry_run_result(plan: Plan) -> StageResult:
    """``--dry-run``: every rotation planned, nothing changed."""
    return StageResult(stage=STAGE, dry_run=True, plan_hash=plan.hash, notes=list(plan.notes),
                       actions=[ActionOutcome(stage=STAGE, target=i.target, action=i.action, outcome="planned",
                                              detail={"backend": i.kind, "strategy": i.params.get("strategy"),
                                                      "consumers": [c["id"] for c in i.params.get("consumers", [])]})
                                for i in plan.items])


# --------------------------------------------------------------------------- one secret


class _Rotation:
    """The journaled steps of one secret's rotation. Re-running ``run`` is the same as resuming it."""

    def __init__(self, plan: Plan, item: PlanItem, journal: Journal, clients: Connections, approver: str,
                 confirm_manual: ConfirmManual | None, log: logging.Logger | logging.LoggerAdapter,
                 held: dict[str, Any] | None = None, approved_at: datetime | None = None, probe_wait: float = 30.0) -> None:
        self.plan, self.item, self.journal, self.clients = plan, item, journal, clients
        self.approver, self.confirm_manual, self.log = approver, confirm_manual, log
        self.name = item.target.removeprefix("secret:")
        self.p = item.params
        self.acted = False
        self.manual: list[ActionOutcome] = []
        self.notes: list[str] = []
        self.held = held if held is not None else {}  # the exposed value, in memory only, kept across retries
        self.approved_at = approved_at or datetime.now(timezone.utc)
        self.probe_wait = probe_wait
        self.contain: ActionOutcome | None = None
        self.prober = contain.prober_for(str(self.p.get("backend")), self.p.get("ref") or {}, self.p.get("issuer"),
                                         clients.backends)

    # -- journal plumbing ------------------------------------------------------------
    def _get(self, action: str):
        return self.journal.get(self.plan.incident, STAGE, self.item.target, action)

    def _record(self, action: str, status: str, detail: dict[str, Any] | None = None, error: str | None = None) -> None:
        self.journal.record(self.plan.incident, STAGE, self.item.target, action, status, detail=detail, error=error,
                            approver=self.approver)

    def _done(self, action: str, version: str | None) -> dict[str, Any] | None:
        e = self._get(action)
        if e and e.status in ("done", "skipped") and (version is None or str(e.detail.get("version")) == str(version)):
            return e.detail
        return None

    def step(self, action: str, fn: Callable[[], dict[str, Any]], version: str | None = None) -> dict[str, Any]:
        """Run ``fn`` unless the journal already has it done (for ``version``); journal before and after."""
        prior = self._done(action, version)
        if prior is not None:
            return prior
        self._record(action, "started")
        try:
            detail = dict(fn() or {})
        except BaseException as e:
            self._record(action, "failed", error=f"{type(e).__name__}: {e}"[:500])
            raise
        if version is not None:
            detail["version"] = version
        self._record(action, "done", detail)
        self.acted = True
        self.log.info("rotate %s %s done %s", self.item.target, action, _ids(detail))
        return detail

    # -- the rotation ----------------------------------------------------------------
    def run(self) -> ActionOutcome:
        if self.item.kind == "manual":
            return self._manual_secret()
        backend_cls = BACKENDS.get(self.p["backend"])
        if backend_cls is None:
            raise Refused(f"secret {self.name}", f"no rotation for backend {self.p['backend']!r}")
        backend = backend_cls(self.name, self.p.get("ref") or {}, self.clients, (self.plan.incident, self.item.target))
        consumers = [ConsumerSpec(kind=c["kind"], id=c["id"], fields={k: v for k, v in c.items() if k not in ("kind", "id")})
                     for c in self.p.get("consumers", [])]
        revoke_first = self.p.get("strategy") == "revoke-first"
        iam = isinstance(backend, AwsIamKey)
        stash = (next((c for c in consumers if c.kind in ("vault-kv", "aws-secretsmanager") and not c.get("field")), None)
                 if backend.needs_stash else None)
        detail: dict[str, Any] = {"backend": self.p["backend"], "strategy": self.p.get("strategy")}

        if iam:
            assert isinstance(backend, AwsIamKey)
            revoked = self._prepare_iam(backend, stash, revoke_first)
            if revoked is not None:
                detail["revoked"] = revoked
                self._prove_old()
        else:
            if stash is not None:
                backend.stash_reader = lambda: read_stash(stash, self.clients)  # type: ignore[attr-defined]
            self._hold_old(backend, stash)

        version = self._new_version(backend, stash)
        if revoke_first and not iam:
            detail["revoked"] = self.step("revoke-old", lambda: backend.revoke(version), version)
            self._prove_old()

        version, updated, failures = self._consumers(backend, consumers, version, stash)
        detail["version"] = version
        detail["consumers"] = updated
        retryable = next((e for e in failures.values() if isinstance(e, IntegrationError) and e.retryable), None)
        if retryable is not None:
            raise retryable  # the caller retries the whole secret; done steps are skipped

        def verify() -> dict[str, Any]:
            ok, why = backend.verify(version)
            if not ok:
                raise Refused(f"secret {self.name}", f"verification failed: {why}")
            return {"verified": True}

        self.step("verify", verify, version)
        if failures:
            if not revoke_first:
                self.notes.append(f"{self.name}: the exposed credential is still active because consumer(s) "
                                  f"{sorted(failures)} could not be updated; fix them and re-run")
            errors = "; ".join(f"{cid}: {e}" for cid, e in sorted(failures.items()))
            self._record("rotate", "failed", {"version": version}, error=errors[:500])
            self._prove_new(backend, version)
            return ActionOutcome(stage=STAGE, target=self.item.target, action="rotate", outcome="failed", detail=detail,
                                 error=errors)
        if not revoke_first:
            if iam:
                detail["revoked"] = self.step("revoke-old", lambda: backend.revoke_keys(backend.old))  # type: ignore[attr-defined]
            else:
                detail["revoked"] = self.step("revoke-old", lambda: backend.revoke(version), version)
            self._prove_old()
        detail["revoked"] = {k: v for k, v in (detail.get("revoked") or {}).items() if k != "version"}
        acted = self.acted
        self.step("rotate", lambda: {"consumers": len(updated)}, version)
        self._prove_new(backend, version)
        return ActionOutcome(stage=STAGE, target=self.item.target, action="rotate",
                             outcome="done" if acted else "already-done", detail=detail)

    def _prepare_iam(self, backend: AwsIamKey, stash: ConsumerSpec | None, revoke_first: bool) -> dict[str, Any] | None:
        """Journal the exposed keys, wire the stash reader, and make room under IAM's 2-key limit (or revoke first);
        returns what was revoked, if anything."""
        backend.old = list(self.step("old-keys", lambda: {"old": backend.old_keys()})["old"])
        if stash is not None:
            backend.stash_reader = lambda: read_stash(stash, self.clients)
        self._hold_old(backend, stash)
        if revoke_first:
            return self.step("revoke-old", lambda: backend.revoke_keys(backend.old))
        room = self.step("make-room", lambda: {"deleted_keys": backend.make_room(backend.old)})
        if room.get("deleted_keys"):
            self.notes.append(f"{self.name}: IAM's 2-key limit forced deleting exposed key(s) {room['deleted_keys']} "
                              "before the new one existed")
        return None

    def _new_version(self, backend: Backend, stash: ConsumerSpec | None) -> str:
        """Write the new version once; recover it from the backend if an earlier attempt was interrupted."""
        e = self._get("new-version")
        if e and e.status == "done":
            return str(e.detail["version"])
        version = backend.recover(e.detail) if e and e.detail.get("base_recorded") else None
        if version is not None:
            self.log.info("rotate %s new-version recovered %s from the backend", self.item.target, version)
        else:
            base = {**backend.base(), "base_recorded": True}
            self._record("new-version", "started", base)
            try:
                version = backend.create(base)
            except BaseException as exc:
                self._record("new-version", "failed", error=f"{type(exc).__name__}: {exc}"[:500])
                raise
        self.acted = True
        if stash is not None:  # IAM, tokens, passwords: the credential goes to its stash before it counts as made
            mat = backend.material(version)
            try:
                self.step(f"consumer:{stash.kind}:{stash.id}", lambda: write_consumer(stash, self.name, mat, self.clients,
                                                                                     (self.plan.incident, self.item.target)), version)
            except Exception as exc:
                # the stash refused: a key whose secret is stored nowhere must not stay active
                made = version
                self.step("discard-lost-key", lambda: (backend.discard(made), {"access_key_id": made})[1], made)  # type: ignore[attr-defined]
                self._record("new-version", "failed", {"lost": made}, error=f"stash write failed: {type(exc).__name__}"[:500])
                raise
        self._record("new-version", "done", {"version": version, "stash": stash.id if stash else None})
        self.log.info("rotate %s new-version %s", self.item.target, version)
        return version

    def _consumers(self, backend: Backend, consumers: list[ConsumerSpec], version: str,
                   stash: ConsumerSpec | None) -> tuple[str, list[str], dict[str, Exception]]:
        """Update every consumer with the value read back from the backend; collect (not raise) their failures."""
        pending = [c for c in consumers if c.kind != "manual" and self._done(f"consumer:{c.kind}:{c.id}", version) is None]
        material = None
        if pending:
            try:
                material = backend.material(version)
            except Lost:
                lost = version
                self.step("discard-lost-key", lambda: (backend.discard(lost), {"access_key_id": lost})[1], lost)  # type: ignore[attr-defined]
                self._record("new-version", "failed", {"lost": lost},
                             error=f"Lost: key {lost} was created but its secret was stored nowhere; replaced")
                self.notes.append(f"{self.name}: new key {lost} was lost in a crash before any consumer stored it; deleted and replaced")
                version = self._new_version(backend, stash)
                material = backend.material(version)
        updated: list[str] = []
        failures: dict[str, Exception] = {}
        for c in consumers:
            action = f"consumer:{c.kind}:{c.id}"
            if c.kind == "manual":
                self._manual_consumer(c, action, version)
                continue
            try:
                def write(c: ConsumerSpec = c) -> dict[str, Any]:
                    assert material is not None
                    if c.kind == "vault-kv" and not c.get("field") and not c.get("key") and len(material) > 1:
                        value: Any = material  # a copy in a key/value store gets every part (user and password alike)
                    else:
                        value = pick(material, c.get("field"), backend.default_field, c.kind, f"secret {self.name} consumer {c.id}")
                    return write_consumer(c, self.name, value, self.clients, (self.plan.incident, self.item.target))

                self.step(action, write, version)
                updated.append(c.id)
            except DigestguardError as exc:
                failures[c.id] = exc
        return version, updated, failures

    # -- proof of death ---------------------------------------------------------------
    def _hold_old(self, backend: Backend, stash: ConsumerSpec | None) -> None:
        """Read the exposed value once, before anything changes (memory only): the old-credential probe sends it."""
        if "old" in self.held or self.prober is None or self._done("old-refused", None) is not None:
            return
        # where the exposed value is read from: the stash for keys, tokens and passwords, else the backend itself;
        # once a (resumed) run has written there, the value there may be the new one: never mistake it for the old
        written = (self._get(f"consumer:{stash.kind}:{stash.id}") if backend.needs_stash and stash is not None
                   else self._get("new-version"))
        if written is not None and not identifies_old(backend):
            self.held["old"] = None
            return
        self.held["old"] = current_material(backend)
        if self.held["old"] is not None and self._get("revoke-old") is None:
            # the value must work before the rotation, or its refusal afterwards proves nothing
            before = self.prober(self.held["old"])
            self._record("old-alive-before", "done", {"verdict": before.verdict, "evidence": before.evidence,
                                                      "at": datetime.now(timezone.utc).isoformat()})
            if before.verdict == "refused":
                self.held["old"] = None
                self.held["not_live"] = before.evidence

    def _prove_old(self) -> None:
        """Probe the issuer with the exposed value until it is refused (or the wait ends); journal when and how."""
        if self.prober is None or self._done("old-refused", None) is not None:
            return
        old = self.held.get("old")
        if old is None:
            return
        res = contain.until(self.prober, old, "refused", within=self.probe_wait)
        now = datetime.now(timezone.utc)
        detail = {"verdict": res.verdict, "evidence": res.evidence, "at": now.isoformat(),
                  "seconds_since_approval": round((now - self.approved_at).total_seconds(), 3)}
        self._record("old-refused", "done" if res.verdict == "refused" else "failed", detail,
                     error=None if res.verdict == "refused" else f"old credential {res.verdict}: {res.evidence}"[:500])
        self.log.info("rotate %s old credential %s %.1f s after approval", self.item.target, res.verdict,
                      detail["seconds_since_approval"])

    def _prove_new(self, backend: Backend, version: str) -> None:
        """Probe with the new value, then set the containment outcome (``rotated`` only when old refused and new works)."""
        old_row = self._get("old-refused")
        old = (contain.ProbeResult(old_row.detail.get("verdict", "unknown"), old_row.detail.get("evidence", ""))
               if old_row else None)
        new = None
        if self.prober is not None:
            prior = self._done("new-works", version)
            if prior is not None:
                new = contain.ProbeResult(prior["verdict"], prior["evidence"])
            else:
                try:
                    new = contain.until(self.prober, backend.material(version), "accepted", within=self.probe_wait)
                except Lost:
                    new = contain.ProbeResult("unknown", "the new value can no longer be read")
                self._record("new-works", "done" if new.verdict == "accepted" else "failed",
                             {"verdict": new.verdict, "evidence": new.evidence, "version": version})
        outcome, text = contain.outcome(old, new, has_probe=self.prober is not None, old_held=old_row is not None)
        if old_row is None and self.held.get("not_live"):
            text = f"the held copy was already refused before the rotation ({self.held['not_live']}); revocation unproven"
        detail: dict[str, Any] = {
            "issuer": (self.p.get("issuer") or {}).get("kind") or self.p.get("backend"), "containment": text,
            "old_refused": bool(old and old.verdict == "refused"), "new_works": bool(new and new.verdict == "accepted"),
            "old_evidence": old.evidence if old else None, "new_evidence": new.evidence if new else None, "version": version,
            "copies_in_step": all(self._done(f"consumer:{c['kind']}:{c['id']}", version) is not None
                                  for c in self.p.get("consumers", []))}
        if old_row is not None and old and old.verdict == "refused":
            detail["seconds_to_old_refused"] = old_row.detail.get("seconds_since_approval")
        usage = self._used_after_exposure(old_row)
        if usage is not None:
            detail["used_after_exposure"] = usage.verdict
            detail["used_evidence"] = usage.evidence[:10]
        self.contain = ActionOutcome(stage=STAGE, target=self.item.target, action="contain", outcome=outcome, detail=detail,
                                     error=None if outcome == "done" else text)
        if usage is not None and usage.verdict == "yes":
            self.manual.append(ActionOutcome(stage=STAGE, target=self.item.target, action="used-after-exposure",
                                             outcome="needs-person", error=usage.person_item(self.name),
                                             detail={"source": usage.source, "evidence": usage.evidence[:20]}))

    def _used_after_exposure(self, old_row: Any) -> used.Usage | None:
        """Was the exposed value used between the start of exposure and its refusal? From the issuer's own trail."""
        if not self.p.get("exposed_from"):
            return None
        prior = self._done("used-after-exposure", None)
        if prior is not None and prior.get("verdict") in ("yes", "no"):
            return used.Usage(prior["verdict"], prior["source"], datetime.fromisoformat(prior["start"]),
                              datetime.fromisoformat(prior["end"]), list(prior.get("evidence") or []))
        start = datetime.fromisoformat(str(self.p["exposed_from"]))
        refused = old_row is not None and old_row.detail.get("verdict") == "refused"
        end = datetime.fromisoformat(old_row.detail["at"]) if refused else datetime.now(timezone.utc)
        alive = self._get("old-alive-before")
        ours = (used.ProbeWindow(datetime.fromisoformat(alive.detail["at"]), end)
                if alive is not None and alive.detail.get("at") else None)
        issuer = self.p.get("issuer") or {}
        ref = {**dict(self.p.get("ref") or {}), **dict(issuer.get("ref") or {})}
        old_keys = self._get("old-keys")
        row = {"source": "CloudTrail", "start": start.isoformat(), "end": end.isoformat()}

        def journal_pages(pages: dict[str, dict]) -> None:  # a lookup cut short resumes from its page token
            self._record("used-after-exposure", "started", {**row, "verdict": "not-yet-known", "cloudtrail_pages": pages})

        unfinished = (prior_row.detail.get("cloudtrail_pages") if (prior_row := self._get("used-after-exposure")) else None)
        if unfinished and (prior_row.detail.get("start"), prior_row.detail.get("end")) != (row["start"], row["end"]):
            unfinished = None  # another window: the pages read so far do not answer it
        usage = used.usage_for(str(issuer.get("kind") or self.p.get("backend")), ref, self.held.get("old"),
                               list(old_keys.detail.get("old") or []) if old_keys else [], self.clients.get, start, end, ours,
                               pages=unfinished or None, on_page=journal_pages)
        self._record("used-after-exposure", "done" if usage.verdict != "not-yet-known" else "started",
                     {"verdict": usage.verdict, "source": usage.source, "start": start.isoformat(), "end": end.isoformat(),
                      "evidence": usage.evidence[:20], "excluded": usage.excluded,
                      "cloudtrail_pages": usage.pages})  # empty once every lookup finished (rows merge details)
        return usage

    # -- things a person does ----------------------------------------------------------
    def _ask(self, item: PlanItem) -> bool:
        if self.confirm_manual is None:
            return False
        return bool(self.confirm_manual(item))

    def _manual_secret(self) -> ActionOutcome:
        """A checklist item: done only when a person (or the drill) confirms it was rotated by hand.

        With a primary store, the person (or ``digestguard confirm --value-from-stdin``) puts the new value
        there; the playbook then copies it to every other store and consumer and, with a probe, asks the
        issuer whether the old value is refused and the new one works (the old one is read before asking).
        """
        detail: dict[str, Any] = {"backend": "manual", "manual": True,
                                  "where": str((self.p.get("ref") or {}).get("where") or "")}
        store = self.p.get("primary_store")
        backend = None
        if store:
            cls = BACKENDS.get(store["kind"])
            loc = {k: v for k, v in store.items() if k != "kind"}
            loc.setdefault("secret_id", loc.get("name"))
            backend = cls(self.name, loc, self.clients, (self.plan.incident, self.item.target)) if cls else None
        confirmed = self._done("confirm", None) is not None
        if confirmed and (backend is None or self._done("rotate", None) is not None):
            return ActionOutcome(stage=STAGE, target=self.item.target, action="rotate", outcome="already-done", detail=detail)
        if backend is not None and not confirmed:
            base = self.step("manual-base", lambda: {"store_version": backend.current()})
            if backend.current() == base.get("store_version"):  # still the exposed value: hold it, check it works
                self._hold_old(backend, None)
        if not confirmed:
            if not self._ask(self.item):
                self._record("confirm", "planned", {"needs": "person"})
                return ActionOutcome(stage=STAGE, target=self.item.target, action="rotate", outcome="needs-person",
                                     detail={**detail, "checklist": self.item.reason})
            self.step("confirm", lambda: {"confirmed_by": self.approver})
        if backend is None:
            return ActionOutcome(stage=STAGE, target=self.item.target, action="rotate", outcome="done",
                                 detail={**detail, "confirmed": True})
        base = self._get("manual-base").detail if self._get("manual-base") else {}
        version = backend.current()
        if version is None or version == base.get("store_version"):
            why = (f"the primary store {store['kind']} still holds the exposed value: put the new one there and confirm again"
                   if version is not None else f"cannot tell whether the primary store {store['kind']} holds a new value "
                   "(no version to compare): update its copies by hand")
            self._record("confirm", "planned", {"needs": "person", "why": why})
            return ActionOutcome(stage=STAGE, target=self.item.target, action="rotate", outcome="needs-person",
                                 detail={**detail, "checklist": why}, error=why)
        if self.held.get("old") is None and self.prober is not None and base.get("store_version"):
            try:  # a later pass (after the pause): the exposed value is the store's version from before the person acted
                self.held["old"] = backend.material(str(base["store_version"]))
            except (DigestguardError, KeyError, ValueError):
                self.held["old"] = None
        consumers = [ConsumerSpec(kind=c["kind"], id=c["id"], fields={k: v for k, v in c.items() if k not in ("kind", "id")})
                     for c in self.p.get("consumers", [])]
        version, updated, failures = self._consumers(backend, consumers, version, None)
        self._prove_old()
        if not failures:  # the exposed copy in the store itself becomes unreadable too
            detail["revoked"] = self.step("revoke-old", lambda: backend.revoke(version), version)
        detail.update({"confirmed": True, "version": version, "consumers": updated})
        if failures:
            errors = "; ".join(f"{cid}: {e}" for cid, e in sorted(failures.items()))
            self._record("rotate", "failed", {"version": version}, error=errors[:500])
            self._prove_new(backend, version)
            return ActionOutcome(stage=STAGE, target=self.item.target, action="rotate", outcome="failed", detail=detail,
                                 error=errors)
        self.step("rotate", lambda: {"consumers": len(updated)}, version)
        self._prove_new(backend, version)
        return ActionOutcome(stage=STAGE, target=self.item.target, action="rotate", outcome="done", detail=detail)

    def _manual_consumer(self, c: ConsumerSpec, action: str, version: str) -> None:
        if self._done(action, version) is not None:
            return
        ask = PlanItem(target=self.item.target, action=f"update {c.id}", kind="manual",
                       reason=str(c.get("note") or f"update the copy of {self.name} at {c.id} by hand"),
                       params={"consumer": c.id, "version": version})
        if self._ask(ask):
            self.step(action, lambda: {"confirmed_by": self.approver}, version)
            return
        self._record(action, "planned", {"needs": "person", "version": version})
        self.manual.append(ActionOutcome(stage=STAGE, target=self.item.target, action=action, outcome="needs-person",
                                         detail={"version": version, "note": ask.reason}))


def store_manual_value(inventory: Inventory, name: str, value: str, who: str) -> dict[str, Any]:
    """Put a new value a person issued by hand into the secret's primary store (``digestguard confirm
    --value-from-stdin``); the paused run then copies it to every other store and consumer and probes it.

    Returns ids only (store kind, where, version); the value is registered with the redactor and never echoed.
    """
    from pydantic import SecretStr

    from digestguard.errors import InputError
    from digestguard.redact import register

    if not value or not value.strip():
        raise InputError("stdin", "no value given: paste the new credential (it is not echoed)")
    register(value)
    sec = inventory.secret(name)
    if sec is None:
        raise InputError(f"secret {name}", "not in the inventory")
    store = sec.primary_store()
    if store is None:
        raise InputError(f"secret {name}", "has no primary store to put the new value in: add 'stores' (one primary)",
                         field="stores")
    spec = ConsumerSpec(kind=store.kind, id=f"{store.kind}:{store.path or store.name}", fields=store.location())
    with Connections(inventory) as conns:
        out = write_consumer(spec, name, SecretStr(value), conns, (f"manual:{who}", f"secret:{name}"))
    return {"store": spec.id, **{k: v for k, v in out.items() if k in ("version", "unchanged")}}


def _ids(detail: Mapping[str, Any]) -> str:
    """A log-safe rendering of a step's detail (ids and versions only: that is all details hold)."""
    return ", ".join(f"{k}={v}" for k, v in sorted(detail.items()))


# --------------------------------------------------------------------------- apply


def apply_rotation(plan: Plan, approval: Approval | None, inventory: Inventory, journal: Journal, *,
                   clients: Connections | Mapping[str, Any] | None = None, confirm_manual: ConfirmManual | None = None,
                   max_workers: int = 4, attempts: int = 3, backoff: float = 1.0,
                   lease_wait: float | None = None, probe_wait: float | None = None) -> StageResult:
    """Rotate every secret of an approved plan, journaled and resumable; one secret's failure does not stop the others.

    ``clients``: the run's :class:`~tasks.connect.Connections` (left open), or ready clients by name
    (``vault``, ``iam``, ``secretsmanager``, ``azure``, ``gcp``, ``github``, ``gitlab``; tests) with the
    rest built from ``inventory.backends`` and closed at the end. ``confirm_manual(item) -> bool`` answers manual items
    (a person, or the drill's auto-confirm); without it they come back ``needs-person``.
    Retryable errors (429/5xx) re-run the secret's rotation up to ``attempts`` times,
    which is safe because every step resumes from the journal.

    One actor per credential, across incidents and machines: each secret's rotation holds the
    journal's lease ``credential:<target>``; a second actor waits up to ``lease_wait`` seconds
    (default ``DIGESTGUARD_LEASE_WAIT``, 30) and then fails that secret naming the holder. The
    journal is read again once the lease is held, so the waiter finds the work already done.

    Each secret's containment (``tasks/contain.py``: old refused by its issuer? new accepted?) is a
    ``contain`` entry of ``verification``; ``probe_wait`` bounds how long the old value is re-probed.
    """
    approval = require_approved(plan, approval)
    approver = ",".join(approval.approvers)
    if probe_wait is None:
        probe_wait = float(os.environ.get("DIGESTGUARD_PROBE_WAIT_SECONDS") or PROBE_WAIT_SECONDS)
    log = _logger()
    result = StageResult(stage=STAGE, plan_hash=plan.hash, approved_by=list(approval.approvers), notes=list(plan.notes))
    journal.event(plan.incident, STAGE, "rotate-started", {"plan_hash": plan.hash, "items": len(plan.items)})
    own = not isinstance(clients, Connections)
    pool_clients = Connections(inventory, clients) if own else clients
    lock = threading.Lock()
    holder = Holder.here(str(flow_run.id) if flow_run.id else None)
    wait = lease_wait_default() if lease_wait is None else lease_wait

    def one(item: PlanItem) -> tuple[ActionOutcome, list[ActionOutcome], list[str]]:
        try:
            lease = journal.lease(f"credential:{item.target}", holder, wait=wait)
        except LeaseHeld as e:  # another run is rotating this credential: not journaled, that row is the holder's
            log.error("rotate %s refused: %s", item.target, e)
            return (ActionOutcome(stage=STAGE, target=item.target, action="rotate", outcome="failed",
                                  detail={"backend": item.kind, "lease": "held"}, error=str(e)), [], [])
        with lease:
            return unleased(item)

    def unleased(item: PlanItem) -> tuple[ActionOutcome, list[ActionOutcome], list[str]]:
        held: dict[str, Any] = {}

        def rotation() -> _Rotation:
            return _Rotation(plan, item, journal, pool_clients, approver, confirm_manual, log, held, approval.at, probe_wait)

        rot = rotation()
        for n in range(1, attempts + 1):
            try:
                out = rot.run()
                return out, rot.manual + ([rot.contain] if rot.contain else []), rot.notes
            except IntegrationError as e:
                if e.retryable and n < attempts:
                    pause = min(getattr(e, "retry_after", None) or backoff * 2 ** (n - 1), 30.0)
                    log.warning("rotate %s: %s; retrying in %.1f s", item.target, e, pause)
                    time.sleep(pause)
                    rot = rotation()
                    continue
                error = str(e)
            except (DigestguardError, Lost) as e:
                error = str(e)
            except Exception as e:  # noqa: BLE001 - one secret's surprise must not stop the others
                error = f"{type(e).__name__}: {e}"[:500]
            log.error("rotate %s failed: %s", item.target, error)
            with lock:
                journal.record(plan.incident, STAGE, item.target, "rotate", "failed", error=error[:500], approver=approver)
            return (ActionOutcome(stage=STAGE, target=item.target, action="rotate", outcome="failed",
                                  detail={"backend": item.kind}, error=error), rot.manual, rot.notes)
        raise AssertionError("unreachable")

    try:
        workers = max(1, min(max_workers, len(plan.items) or 1))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rotate") as pool:
            outcomes = list(pool.map(one, plan.items))
    finally:
        if own:
            pool_clients.close()
    result = _with_outcomes(result, outcomes)
    journal.event(plan.incident, STAGE, "rotate-finished",
                  {"done": result.count("done") + result.count("already-done"), "failed": result.count("failed"),
                   "needs_person": result.count("needs-person")})
    return result


def _with_outcomes(result: StageResult, outcomes: list[tuple[ActionOutcome, list[ActionOutcome], list[str]]]) -> StageResult:
    """The stage result with every secret's outcome, its manual items and notes, and a verification per new version."""
    actions, notes, verification = list(result.actions), list(result.notes), list(result.verification)
    for outcome, manual, more in outcomes:
        actions += [outcome, *[m for m in manual if m.action != "contain"]]
        verification += [m for m in manual if m.action == "contain"]
        notes += more
        if outcome.outcome in ("done", "already-done") and outcome.detail.get("version") is not None:
            verification.append(ActionOutcome(stage=STAGE, target=outcome.target, action="verify", outcome="done",
                                              detail={"version": outcome.detail["version"]}))
    return result.model_copy(update={"actions": actions, "notes": notes, "verification": verification})


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a flow/task run (lines reach the UI), else this module's logger."""
    try:

        return get_run_logger()
    except Exception:  # noqa: BLE001 - no run context: plain logging
        return _log


@task(name="rotate", persist_result=False, cache_policy=NO_CACHE)
def rotate_task(plan: Plan, approval: Approval | None, inventory: Inventory, journal: Journal,
                connections: Connections | None = None, confirm_manual: ConfirmManual | None = None) -> StageResult:
    """Prefect task: apply the approved rotation plan; returns ids and versions only (never persisted, never cached).

    ``confirm_manual`` answers manual items (the drill confirms them all); without it they come
    back ``needs-person`` and the flow asks a person.
    """
    return apply_rotation(plan, approval, inventory, journal, clients=connections, confirm_manual=confirm_manual)
