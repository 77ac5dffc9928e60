"""Used after exposure? A verdict per exposed credential, ``yes | no | not-yet-known``, from the provider's own trail.

Sources, and the delivery horizon after which silence means ``no``:

==================  ================================================================  ===========
issuer              trail                                                             horizon
==================  ================================================================  ===========
AWS IAM key         CloudTrail ``LookupEvents`` by ``AccessKeyId`` (2 requests/s)     15 min
Vault/OpenBao token the file audit log, searched for the ``sys/audit-hash`` HMAC      0 (written before the answer)
PostgreSQL role     the server log's ``connection authorized: user=<role>`` lines     0 (written at login)
Docker Hub PAT      the usage export CSV (hour, token name, IPs, repository, tag,     2 h (hourly rows,
                    digest): rows of the PAT's label                                  exported late)
GitHub token        the organisation audit log, searched by ``hashed_token``          15 min
                    (base64 SHA-256 of the token; the token is never sent)
==================  ================================================================  ===========

:func:`malicious_pulls` answers from the same export which of our tokens and IPs pulled a malicious digest.

The window is from the start of exposure (T1) to the moment the issuer refused the old value
(T2; now, when it was never refused). The playbook's own probes with the old value (the
``GetCallerIdentity``, ``lookup-self`` or login just before and after revocation) are left out:
they are recognised by kind and by falling inside the journaled probe interval. ``yes`` is a
needs-person item: "investigate what this credential did between T1 and T2". A source that
cannot be read gives ``not-yet-known`` with the reason, never ``no``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal

from pydantic import SecretStr

from digestguard.errors import DigestguardError
from integrations import aws_cloudtrail, dockerhub, postgres, vault

UsedVerdict = Literal["yes", "no", "not-yet-known"]


@dataclass(frozen=True)
class Usage:
    verdict: UsedVerdict
    source: str
    start: datetime
    end: datetime
    evidence: list[str] = field(default_factory=list)
    excluded: int = 0  # the playbook's own probes left out
    pages: dict[str, dict] = field(default_factory=dict)  # CloudTrail lookups cut short: key -> {token, hits} to resume

    def person_item(self, name: str) -> str | None:
        if self.verdict != "yes":
            return None
        return (f"investigate what {name} did between {self.start.isoformat(timespec='seconds')} and "
                f"{self.end.isoformat(timespec='seconds')} ({self.source}: {len(self.evidence)} use(s) after exposure)")


@dataclass(frozen=True)
class ProbeWindow:
    """When the playbook itself used the old value (its probes), and what such a use looks like in the trail."""

    start: datetime
    end: datetime
    slack: timedelta = timedelta(seconds=5)

    def covers(self, at: datetime) -> bool:
        return self.start - self.slack <= at <= self.end + self.slack


def _verdict(hits: list[tuple[datetime, str]], source: str, start: datetime, end: datetime, now: datetime,
             horizon: timedelta, ours: ProbeWindow | None, is_probe: Callable[[str], bool]) -> Usage:
    kept, excluded = [], 0
    for at, line in sorted(hits):
        if not (start <= at <= end):
            continue
        if ours is not None and ours.covers(at) and is_probe(line):
            excluded += 1
            continue
        kept.append(f"{at.isoformat(timespec='seconds')} {line}")
    if kept:
        return Usage("yes", source, start, end, kept, excluded)
    if now >= end + horizon:
        return Usage("no", source, start, end, [f"no use in {source} between T1 and T2 (horizon {horizon} passed)"], excluded)
    return Usage("not-yet-known", source, start, end,
                 [f"{source} may still deliver events until {(end + horizon).isoformat(timespec='seconds')}"], excluded)


def _trail_line(e: aws_cloudtrail.TrailEvent) -> str:
    return f"{e.name} ({e.source}) by {e.username or '?'} from {e.source_ip or '?'} [event {e.event_id}]"


def aws_usage(ct, access_key_id: str, start: datetime, end: datetime, *, now: datetime | None = None,
              ours: ProbeWindow | None = None, on_page: Callable[[str, list[list[str]]], None] | None = None,
              resume_token: str | None = None, earlier: list[list[str]] | None = None) -> Usage:
    """CloudTrail events signed with the key between ``start`` and ``end``.

    ``on_page(token, hits)`` is called before each next page is fetched, with the hits read so far
    (``[iso time, line]``, ids and addresses only): journal both, and a lookup cut short (an outage, a
    crash) continues from ``resume_token`` with those ``earlier`` hits instead of reading every page again.
    """
    now = now or datetime.now(timezone.utc)
    source = "CloudTrail"
    seen: list[list[str]] = [list(h) for h in (earlier or [])]
    state: dict[str, object] = {"token": resume_token}

    def page(token: str) -> None:
        state["token"] = token
        if on_page is not None:
            on_page(token, list(seen))

    try:
        for e in aws_cloudtrail.lookup_by_access_key(ct, access_key_id, start, end, resume_token=resume_token, on_page=page):
            seen.append([e.at.isoformat(), _trail_line(e)])
    except DigestguardError as e:
        pages = {access_key_id: {"token": state["token"], "hits": seen}} if state["token"] else {}
        return Usage("not-yet-known", source, start, end, [f"CloudTrail could not be read: {e}"[:300]], pages=pages)
    hits = [(datetime.fromisoformat(at), line) for at, line in seen]
    return _verdict(hits, source, start, end, now, timedelta(seconds=aws_cloudtrail.DELIVERY_HORIZON_SECONDS), ours,
                    lambda line: line.startswith("GetCallerIdentity "))


def _audit_lines(path: Path, hashed: str) -> Iterable[tuple[datetime, str]]:
    with path.open(encoding="utf-8", errors="replace") as f:
        for raw in f:
            if hashed not in raw:
                continue
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if rec.get("type") != "request" or (rec.get("auth") or {}).get("client_token") != hashed:
                continue
            req = rec.get("request") or {}
            try:
                at = datetime.fromisoformat(str(rec.get("time")).replace("Z", "+00:00")).astimezone(timezone.utc)
            except ValueError:
                continue
            yield at, f"{req.get('operation', '?')} {req.get('path', '?')} from {req.get('remote_address', '?')}"


def vault_usage(client, device: str, audit_log: str | Path, token: SecretStr, start: datetime, end: datetime, *,
                now: datetime | None = None, ours: ProbeWindow | None = None) -> Usage:
    """Requests the token made, from the file audit device's log (matched by the device's HMAC of the token)."""
    now = now or datetime.now(timezone.utc)
    source = f"OpenBao audit log ({device})"
    try:
        hashed = vault.audit_hash(client, device, token)
        hits = list(_audit_lines(Path(audit_log), hashed))
    except (DigestguardError, OSError) as e:
        return Usage("not-yet-known", source, start, end, [f"audit log could not be read: {e}"[:300]])
    return _verdict(hits, source, start, end, now, timedelta(0), ours, lambda line: "auth/token/lookup-self" in line)


def postgres_usage(log_path: str | Path, role: str, start: datetime, end: datetime, *, now: datetime | None = None,
                   ours: ProbeWindow | None = None) -> Usage:
    """Logins of the role from the server's connection log (``log_connections=on``)."""
    now = now or datetime.now(timezone.utc)
    source = "PostgreSQL connection log"
    try:
        hits = [(c.at, f"login as {c.user} to database {c.database or '?'}") for c in postgres.connection_log(log_path, role)]
    except (DigestguardError, OSError) as e:
        return Usage("not-yet-known", source, start, end, [f"connection log could not be read: {e}"[:300]])
    return _verdict(hits, source, start, end, now, timedelta(0), ours, lambda line: True)


HUB_EXPORT_HORIZON = timedelta(hours=2)
GITHUB_AUDIT_HORIZON = timedelta(minutes=15)


def _pull_line(p: dockerhub.HubPull, malicious: set[str]) -> str:
    bad = " MALICIOUS DIGEST" if p.digest in malicious else ""
    return (f"{p.pulls} pull(s) of {p.repository}:{p.tag}@{p.digest or '?'} with token {p.token_name!r} "
            f"from {', '.join(p.ips) or '?'}{bad}")


def dockerhub_usage(export: str | Path, token_label: str, start: datetime, end: datetime, *, now: datetime | None = None,
                    malicious: Iterable[str] = ()) -> Usage:
    """Pulls made with the PAT labelled ``token_label``, from Hub's usage export (hourly rows).

    An hour counts when it overlaps [start, end]. Our own probe (a login) pulls nothing, so nothing is left out.
    """
    now = now or datetime.now(timezone.utc)
    source = "Docker Hub usage export"
    try:
        rows = dockerhub.read_usage_export(str(export))
    except (DigestguardError, OSError) as e:
        return Usage("not-yet-known", source, start, end, [f"usage export could not be read: {e}"[:300]])
    bad = set(malicious)
    hits = [(max(p.hour, start), _pull_line(p, bad)) for p in rows
            if p.token_name == token_label and p.hour <= end and p.hour + timedelta(hours=1) > start]
    return _verdict(hits, source, start, end, now, HUB_EXPORT_HORIZON, None, lambda line: False)


def malicious_pulls(export: str | Path, digests: Iterable[str]) -> list[dockerhub.HubPull]:
    """Which of our tokens and IPs pulled a malicious digest (rows of the usage export naming one of ``digests``)."""
    want = set(digests)
    return [p for p in dockerhub.read_usage_export(str(export)) if p.digest in want]


def github_usage(client, org: str, token: SecretStr, start: datetime, end: datetime, *,
                 now: datetime | None = None) -> Usage:
    """Entries of the organisation audit log made with ``token`` (by its ``hashed_token``) between start and end."""
    now = now or datetime.now(timezone.utc)
    source = f"GitHub audit log ({org})"
    try:
        entries = client.audit_log_by_token(org, token, start)
    except DigestguardError as e:
        return Usage("not-yet-known", source, start, end, [f"audit log could not be read: {e}"[:300]])
    hits = [(datetime.fromtimestamp(int(e.get("@timestamp") or 0) / 1000, timezone.utc),
             f"{e.get('action', '?')} by {e.get('actor', '?')} from {e.get('actor_ip', '?')}"
             + (f" on {e['repo']}" if e.get("repo") else "")) for e in entries]
    return _verdict(hits, source, start, end, now, GITHUB_AUDIT_HORIZON, None, lambda line: False)


def usage_for(kind: str, ref: dict, old: dict | None, old_key_ids: list[str], get_client: Callable[[str], object],
              start: datetime, end: datetime, ours: ProbeWindow | None, *, pages: dict[str, dict] | None = None,
              on_page: Callable[[dict[str, dict]], None] | None = None) -> Usage:
    """The verdict from the trail this issuer has here (see the module table); ``not-yet-known`` when there is none.

    ``ref``: the issuer's ref merged over the secret's (``log_path`` for PostgreSQL, ``audit_log`` and
    ``audit_device`` for Vault tokens); ``old``: the exposed value held in memory (Vault tokens need it for the
    HMAC); ``get_client(name)``: the run's clients (``cloudtrail``, ``vault``).
    """
    if kind == "aws-iam-access-key":
        try:
            ct = get_client("cloudtrail")
        except DigestguardError as e:
            return Usage("not-yet-known", "CloudTrail", start, end, [f"no CloudTrail client: {e}"[:300]])
        keys = old_key_ids or ([old["access_key_id"].get_secret_value()] if old and "access_key_id" in old else [])
        if not keys:
            return Usage("not-yet-known", "CloudTrail", start, end, ["the exposed key id is not known"])
        open_pages = dict(pages or {})

        def lookup(k: str) -> Usage:
            def page(token: str, hits: list[list[str]]) -> None:
                open_pages[k] = {"token": token, "hits": hits}
                if on_page is not None:
                    on_page(dict(open_pages))

            prior = open_pages.get(k) or {}
            u = aws_usage(ct, k, start, end, ours=ours, on_page=page, resume_token=prior.get("token"),
                          earlier=prior.get("hits"))
            open_pages.pop(k, None)
            open_pages.update(u.pages)
            return u

        uses = [lookup(k) for k in keys]
        verdict: UsedVerdict = ("yes" if any(u.verdict == "yes" for u in uses) else
                                "no" if all(u.verdict == "no" for u in uses) else "not-yet-known")
        return Usage(verdict, "CloudTrail", start, end, [e for u in uses for e in u.evidence], sum(u.excluded for u in uses),
                     pages=open_pages)
    if kind == "vault-token":
        if not ref.get("audit_log"):
            return Usage("not-yet-known", "OpenBao audit log", start, end, ["no audit_log in the issuer's ref"])
        token = (old or {}).get("value") or (old or {}).get("token")
        if token is None:
            return Usage("not-yet-known", "OpenBao audit log", start, end, ["the exposed token is not held by this run"])
        try:
            client = get_client("vault")
        except DigestguardError as e:
            return Usage("not-yet-known", "OpenBao audit log", start, end, [f"no Vault client: {e}"[:300]])
        return vault_usage(client, str(ref.get("audit_device") or "file"), ref["audit_log"], token, start, end, ours=ours)
    if kind in ("postgres-role", "vault-database-static-role"):
        role = ref.get("username") or ref.get("role")
        if not ref.get("log_path") or not role:
            return Usage("not-yet-known", "PostgreSQL connection log", start, end, ["no log_path in the issuer's ref"])
        return postgres_usage(ref["log_path"], str(role), start, end, ours=ours)
    if kind == "dockerhub-pat":
        if not ref.get("usage_export"):
            return Usage("not-yet-known", "Docker Hub usage export", start, end, ["no usage_export in the issuer's ref"])
        return dockerhub_usage(ref["usage_export"], str(ref.get("token_label") or ""), start, end,
                               malicious=ref.get("malicious_digests") or ())
    if ref.get("github_audit_org"):  # a GitHub token (a manual issuer): the organisation audit log
        token = (old or {}).get("value") or (old or {}).get("token")
        if token is None:
            return Usage("not-yet-known", "GitHub audit log", start, end, ["the exposed token is not held by this run"])
        try:
            gh = get_client("github")
        except DigestguardError as e:
            return Usage("not-yet-known", "GitHub audit log", start, end, [f"no GitHub client: {e}"[:300]])
        return github_usage(gh, str(ref["github_audit_org"]), token, start, end)
    return Usage("not-yet-known", "no trail", start, end, [f"no audit trail of {kind} is read here"])
