"""Proof of death: ask each credential's own issuer whether the old value is refused and the new one accepted.

A credential counts as *rotated* only when a probe with the **old** value is refused
by its issuer and the **new** value passes the same probe. The probes:

=============================  ==========================================================
issuer                         probe
=============================  ==========================================================
``aws-iam-access-key``         STS ``GetCallerIdentity`` signed with the key pair
``postgres-role``              a login as the role (``ref.host``/``port``/``dbname``)
``vault-database-static-role`` the same database login (when the ref says where the database is)
``vault-token``                ``auth/token/lookup-self`` with the token at the inventory's Vault
declared (``issuer.probe``)    one HTTP request to the inventory's URL, no redirects followed
=============================  ==========================================================

A probe sends a credential only to that issuer's address from the inventory, once per
attempt, without following redirects. Without a probe the outcome is
``copy replaced; revocation unproven``: a needs-person item, never "rotated".

Values arrive as ``dict[str, SecretStr]`` ("material") and never leave a probe; results
hold only ``accepted`` / ``refused`` / ``unknown`` and an evidence string (a status,
an error code, an ARN or accessor).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from pydantic import SecretStr

from digestguard.errors import IntegrationError
from digestguard.inventory import Backends, Probe
from integrations import aws_sts, dockerhub, gitlab, postgres, vault

Verdict = Literal["accepted", "refused", "unknown"]
Material = Mapping[str, SecretStr]

UNPROVEN = "copy replaced; revocation unproven"
ROTATED = "rotated"


@dataclass(frozen=True)
class ProbeResult:
    """What the issuer said about one value (no value in here)."""

    verdict: Verdict
    evidence: str


@dataclass(frozen=True)
class Prober:
    """The probe of one secret's issuer: call it with a credential's material."""

    issuer: str
    target: str  # where the probe goes (an address from the inventory), for the evidence line
    fn: Callable[[Material], tuple[str, str]]

    def __call__(self, material: Material) -> ProbeResult:
        try:
            verdict, evidence = self.fn(material)
        except IntegrationError as e:
            return ProbeResult("unknown", f"{self.issuer} at {self.target}: {e}"[:300])
        except KeyError as e:
            return ProbeResult("unknown", f"{self.issuer}: the credential has no part {e}")
        return ProbeResult(verdict, f"{self.issuer} at {self.target}: {evidence}")  # type: ignore[arg-type]


def _part(material: Material, *names: str) -> SecretStr:
    for n in names:
        if n in material:
            return material[n]
    raise KeyError(names[0])


def _pg_server(ref: Mapping[str, Any]) -> postgres.Server | None:
    host = ref.get("host")
    if not host:
        return None
    return postgres.Server(host=str(host), port=int(ref.get("port") or 5432), dbname=str(ref.get("dbname") or "postgres"))


def http_probe(probe: Probe, material: Material, *, timeout: float = 10) -> tuple[str, str]:
    """One request to ``probe.url`` with the credential sent as declared; the status decides."""
    value = _part(material, "value", "password", "token", "secret_access_key").get_secret_value()
    headers: dict[str, str] = {}
    auth = None
    if probe.send == "bearer":
        headers["Authorization"] = f"Bearer {value}"
    elif probe.send == "basic":
        auth = httpx.BasicAuth(probe.username or _part(material, "username").get_secret_value(), value)
    else:
        headers[str(probe.header)] = value
    try:
        r = httpx.request(probe.method, probe.url, headers=headers, auth=auth, timeout=timeout, follow_redirects=False)
    except httpx.HTTPError as e:
        return "unknown", f"no answer ({type(e).__name__})"
    if r.status_code in probe.refused_status:
        return "refused", f"HTTP {r.status_code}"
    if r.status_code in probe.ok_status:
        return "accepted", f"HTTP {r.status_code}"
    return "unknown", f"HTTP {r.status_code} means neither refused nor ok"


def prober_for(backend: str, ref: Mapping[str, Any], issuer: Mapping[str, Any] | None, backends: Backends) -> Prober | None:
    """The probe of a secret's issuer, or ``None`` when nothing here can ask the issuer (then: unproven)."""
    issuer = issuer or {}
    kind = str(issuer.get("kind") or backend)
    iref = {**dict(ref), **dict(issuer.get("ref") or {})}
    declared = issuer.get("probe")
    if declared:
        p = declared if isinstance(declared, Probe) else Probe.model_validate(declared)
        return Prober(kind, p.url, lambda m: http_probe(p, m))
    if kind == "aws-iam-access-key":
        endpoint, region = backends.aws_endpoint_url, backends.aws_region or "us-east-1"
        return Prober(kind, endpoint or "sts.amazonaws.com", lambda m: aws_sts.caller_identity(
            _part(m, "access_key_id"), _part(m, "secret_access_key"), endpoint_url=endpoint, region_name=region))
    if kind in ("postgres-role", "vault-database-static-role"):
        server = _pg_server(iref)
        if server is None:
            return None
        role = iref.get("username") or iref.get("role")
        return Prober(kind, f"{server.host}:{server.port}", lambda m: postgres.try_login(
            server, (m["username"].get_secret_value() if "username" in m else str(role)), _part(m, "password", "value")))
    if kind == "dockerhub-pat":
        api, user = str(iref.get("api_url") or dockerhub.API_URL), str(iref.get("username") or "")
        if not user:
            return None
        return Prober(kind, api, lambda m: dockerhub.pat_probe(api, user, _part(m, "value", "token")))
    if kind == "gitlab-access-token":
        api = str(iref.get("api_url") or gitlab.DEFAULT_API_URL)
        return Prober(kind, api, lambda m: gitlab.token_probe(api, _part(m, "value", "token")))
    if kind == "vault-token":
        addr = str(iref.get("addr") or backends.vault_url or "")
        if not addr:
            return None
        return Prober(kind, addr, lambda m: vault.token_probe(addr, _part(m, "value", "token")))
    return None


def until(prober: Prober, material: Material, want: Verdict, *, within: float, every: float = 0.5) -> ProbeResult:
    """Probe until the issuer says ``want`` or ``within`` seconds pass (issuers converge: IAM takes seconds)."""
    deadline = time.monotonic() + within
    while True:
        res = prober(material)
        if res.verdict == want or time.monotonic() >= deadline:
            return res
        time.sleep(every)


def outcome(old: ProbeResult | None, new: ProbeResult | None, *, has_probe: bool,
            old_held: bool) -> tuple[Literal["done", "failed", "needs-person"], str]:
    """The containment outcome from the two probes: ``rotated`` only when old is refused and new accepted."""
    if not has_probe:
        return "needs-person", UNPROVEN
    if not old_held or old is None:
        return "needs-person", "old value not held by this run (replaced before it was read); revocation unproven"
    if old.verdict == "accepted":
        return "failed", "old credential still accepted by its issuer"
    if new is not None and new.verdict == "refused":
        return "failed", "new credential refused by its issuer"
    if old.verdict == "refused" and new is not None and new.verdict == "accepted":
        return "done", ROTATED
    return "needs-person", "the issuer gave no clear answer; revocation unproven"
