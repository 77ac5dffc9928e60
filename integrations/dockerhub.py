"""Docker Hub's own API (hub.docker.com/v2): tag facts, organisation audit logs, personal access tokens.

Why beside the registry client: the registry protocol says *what* a tag names
now; Docker Hub's API says *when* it was pushed (``tag_last_pushed``) and, in
an organisation's audit log, *who* pushed (``repo.tag.push`` events with the
actor). Those two answers place a tag change inside or outside an incident
window (e.g. kics tags overwritten 2026-04-22 from 12:35 UTC).

Auth: public repositories answer anonymously; audit logs need a bearer token,
either given directly (``token``: an organisation access token, sent as is) or
obtained from ``POST /v2/auth/token`` with ``identifier`` + ``secret`` (a
username and personal access token). Secrets are plain parameters resolved by
the caller, sent only to ``api_url``, never kept in errors.

Personal access tokens (the credential stolen in the 2026 image incidents) are
managed through ``/v2/access-tokens`` with the account's own login
(``POST /v2/users/login`` {username, password} -> {token}; Hub does not let a PAT
manage PATs): list, create (the answer is the only time Hub shows the token),
``PATCH {is_active: false}`` and ``DELETE``. :func:`pat_probe` asks Hub whether a
PAT still logs in (``POST /v2/auth/token`` {identifier, secret}): 200 accepted,
401 refused, sent once, to ``api_url`` only.

The usage export (Hub: organisation > Usage > export, one CSV row per hour, account/token, repository, tag
and digest: ``datehour``, ``user_name``, ``repository``, ``access_token_name``, ``ips``, ``tag``,
``digest``, ``pulls``) is read by :func:`read_usage_export`: which of our tokens pulled what, from where.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from digestguard.errors import AuthError, InputError, IntegrationError, NotFound, Unavailable
from digestguard.reference import DOCKER_HUB, parse_reference
from digestguard.timeutil import parse_time, utc
from integrations._rest import Closing, RateLimit, RestClient
from integrations._secret_values import SecretLike, reveal
from integrations.registry import docker_hub_limit

API_URL = "https://hub.docker.com"
_MAX_PAGES = 1000


@dataclass(frozen=True)
class HubImage:
    """One platform entry of a tag: ``digest`` is the platform manifest's, not the index's."""

    os: str | None
    architecture: str | None
    variant: str | None
    digest: str | None
    last_pushed: datetime | None


@dataclass(frozen=True)
class HubTag:
    """A tag as Docker Hub reports it; ``digest`` is what the tag names (the index for multi-platform images)."""

    name: str
    digest: str | None
    tag_last_pushed: datetime | None
    tag_last_pulled: datetime | None
    last_updated: datetime | None
    status: str | None
    images: tuple[HubImage, ...] = ()


@dataclass(frozen=True)
class AuditEvent:
    """One audit log event (``repo.tag.push`` etc.); ``data`` holds the event's details (tag, digest...)."""

    account: str
    action: str
    name: str
    actor: str
    timestamp: datetime | None
    description: str = ""
    data: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HubAccessToken:
    """A personal access token as Hub lists it (never the token itself)."""

    uuid: str
    label: str
    is_active: bool
    created_at: datetime | None = None
    last_used: datetime | None = None


def _pat(d: dict[str, Any]) -> HubAccessToken:
    return HubAccessToken(uuid=str(d.get("uuid", "")), label=str(d.get("token_label", "")),
                          is_active=bool(d.get("is_active", True)), created_at=parse_time(d.get("created_at")),
                          last_used=parse_time(d.get("last_used")))


def hub_user_login(api_url: str, username: str, password: SecretLike, *, timeout: float = 30.0) -> str:
    """A JWT for the account from ``POST /v2/users/login`` (what the access-token API needs)."""
    with RestClient(vendor="docker-hub", api_url=api_url.rstrip("/"), auth_headers={}, timeout=timeout) as rest:
        r = rest.request("POST", "/v2/users/login", ok=(200,), source=f"docker-hub {api_url} login as {username}",
                         json={"username": username, "password": reveal(password, source="docker hub password")})
    token = (r.json() or {}).get("token")
    if not token:
        raise AuthError(f"docker-hub {api_url}", "login answered without a token")
    return str(token)


def pat_probe(api_url: str, username: str, pat: SecretLike, *, timeout: float = 10.0) -> tuple[str, str]:
    """Does Hub still accept ``pat`` for ``username``? ``("accepted", "HTTP 200")`` or ``("refused", "HTTP 401")``.

    One request, no retry, only to ``api_url`` (the PAT's own issuer).
    """
    url = f"{api_url.rstrip('/')}/v2/auth/token"
    try:
        r = httpx.post(url, json={"identifier": username, "secret": reveal(pat, source="docker hub PAT")}, timeout=timeout)
    except httpx.HTTPError as e:
        raise Unavailable(f"docker-hub {api_url} POST /v2/auth/token", f"no answer: {type(e).__name__}") from None
    if r.status_code == 200:
        return "accepted", f"login as {username}: HTTP 200"
    if r.status_code in (401, 403):
        return "refused", f"login as {username}: HTTP {r.status_code}"
    raise Unavailable(f"docker-hub {api_url} POST /v2/auth/token", f"unexpected answer {r.status_code}", r.status_code)


@dataclass(frozen=True)
class HubPull:
    """One row of Docker Hub's usage export: pulls in one hour by one account/token of one repository:tag@digest."""

    hour: datetime
    token_name: str
    user: str
    ips: tuple[str, ...]
    repository: str
    tag: str
    digest: str
    pulls: int


_USAGE_COLUMNS = {"hour": ("datehour", "hour", "date_hour"), "token": ("access_token_name", "token_name", "token name"),
                  "user": ("user_name", "username", "user"), "ips": ("ips", "ip", "ip_addresses"),
                  "repository": ("repository", "repo"), "tag": ("tag",), "digest": ("digest",),
                  "pulls": ("pulls", "pull_count", "count")}


def read_usage_export(path: str, *, limit_bytes: int = 256 * 2**20) -> list[HubPull]:
    """The rows of a usage-export CSV; ``InputError`` naming the file and the missing column or bad line."""
    import csv
    import os

    if os.path.getsize(path) > limit_bytes:
        raise InputError(path, f"usage export larger than {limit_bytes // 2**20} MiB")
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.DictReader(f)
        heads = {h.strip().lower(): h for h in (reader.fieldnames or [])}
        col = {}
        for key, names in _USAGE_COLUMNS.items():
            found = next((heads[n] for n in names if n in heads), None)
            if found is None and key not in ("user", "pulls"):
                raise InputError(path, f"usage export has no {names[0]!r} column (columns: {sorted(heads)})", field=names[0])
            col[key] = found
        out: list[HubPull] = []
        for n, row in enumerate(reader, start=2):
            hour = parse_time((row.get(col["hour"]) or "").strip().replace(" ", "T", 1))
            if hour is None:
                raise InputError(f"{path}:{n}", f"{col['hour']} is not a time", field=col["hour"])
            ips = tuple(i.strip() for i in (row.get(col["ips"]) or "").replace(";", ",").split(",") if i.strip())
            pulls = (row.get(col["pulls"]) or "").strip() if col["pulls"] else ""
            out.append(HubPull(hour=utc(hour), token_name=(row.get(col["token"]) or "").strip(),
                               user=(row.get(col["user"]) or "").strip() if col["user"] else "", ips=ips,
                               repository=(row.get(col["repository"]) or "").strip(), tag=(row.get(col["tag"]) or "").strip(),
                               digest=(row.get(col["digest"]) or "").strip(), pulls=int(pulls) if pulls.isdigit() else 1))
    return out


def hub_repository(value: str) -> tuple[str, str]:
    """``checkmarx/kics``, ``docker.io/checkmarx/kics`` or ``alpine`` -> (namespace, repository)."""
    ref = parse_reference(value, "docker hub repository")
    if ref.registry != DOCKER_HUB:
        raise InputError("docker hub repository", f"{value!r} is not on Docker Hub ({ref.registry})")
    ns, _, repo = ref.repository.partition("/")
    if not repo or "/" in repo:
        raise InputError("docker hub repository", f"{value!r}: Docker Hub names are namespace/repository")
    return ns, repo


def _tag(d: dict[str, Any]) -> HubTag:
    images = tuple(
        HubImage(i.get("os"), i.get("architecture"), i.get("variant") or None, i.get("digest"), parse_time(i.get("last_pushed")))
        for i in d.get("images") or []
    )
    return HubTag(
        name=d.get("name", ""),
        digest=d.get("digest") or None,
        tag_last_pushed=parse_time(d.get("tag_last_pushed")),
        tag_last_pulled=parse_time(d.get("tag_last_pulled")),
        last_updated=parse_time(d.get("last_updated")),
        status=d.get("tag_status") or d.get("status"),
        images=images,
    )


def _iso(dt: datetime) -> str:
    """Docker Hub's audit-log time form: UTC with microseconds and ``Z`` (a naive time is taken as UTC)."""
    return utc(dt).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class DockerHub(Closing):
    """Client for hub.docker.com's API (tags, audit logs)."""

    def __init__(self, *, token: str | None = None, identifier: str | None = None, secret: str | None = None,
                 api_url: str = API_URL, timeout: float = 30.0, max_retries: int = 4,
                 sleep: Callable[[float], None] = time.sleep, request_limit: RateLimit | None = None) -> None:
        if (identifier is None) != (secret is None):
            raise InputError("docker hub credentials", "identifier and secret must be given together")
        self.api_url = api_url.rstrip("/")
        self._token = token
        self._identifier = identifier
        self._secret = secret
        # hub.docker.com shares the per-address abuse budget with the registry (any address of Docker Hub's)
        limit = request_limit or (docker_hub_limit() if self.api_url == API_URL else None)
        self._opts = {"timeout": timeout, "max_retries": max_retries, "sleep": sleep, "request_limit": limit}
        self._rest: RestClient | None = None

    def close(self) -> None:
        if self._rest is not None:
            self._rest.close()


    def _client(self) -> RestClient:
        """The REST client, logging in first when only identifier/secret were given."""
        if self._rest is None:
            if self._token is None and self._identifier is not None:
                self._token = self._login()
            auth = {"Authorization": f"Bearer {self._token}"} if self._token else {}
            self._rest = RestClient(vendor="docker-hub", api_url=self.api_url, auth_headers=auth,
                                    default_headers={"Accept": "application/json"}, **self._opts)
        return self._rest

    def _login(self) -> str:
        with RestClient(vendor="docker-hub", api_url=self.api_url, auth_headers={}, **self._opts) as rest:
            r = rest.request("POST", "/v2/auth/token", json={"identifier": self._identifier, "secret": self._secret},
                             ok=(200,), source=f"docker-hub {self.api_url} login as {self._identifier}")
        try:
            answer = rest.json_of(r, "/v2/auth/token", method="POST")
            token = answer.get("access_token") or answer.get("token")
        except ValueError:
            token = None
        if not token:
            raise AuthError(f"docker-hub {self.api_url}", "login answered without an access token")
        return token

    # -- tags

    def get_tag(self, repository: str, tag: str) -> HubTag:
        """Facts of one tag: digest, ``tag_last_pushed``, per-platform images; NotFound when absent."""
        ns, repo = hub_repository(repository)
        d = self._client().get_json(f"/v2/namespaces/{ns}/repositories/{repo}/tags/{quote(tag, safe='')}")
        return _tag(d)

    def list_tags(self, repository: str, page_size: int = 100) -> list[HubTag]:
        """Every tag of a repository, following the ``next`` URL of each page."""
        ns, repo = hub_repository(repository)
        rest = self._client()
        path: str | None = f"/v2/namespaces/{ns}/repositories/{repo}/tags"
        params: dict[str, Any] | None = {"page_size": page_size}
        out: list[HubTag] = []
        for _ in range(_MAX_PAGES):
            body = rest.get_json(path, params=params)
            out.extend(_tag(t) for t in body.get("results") or [])
            path, params = body.get("next"), None
            if not path:
                return out
        raise IntegrationError(f"docker-hub {ns}/{repo}", f"more than {_MAX_PAGES} pages of tags")

    # -- audit logs

    def audit_logs(self, account: str, *, action: str | None = None, name: str | None = None,
                   actor: str | None = None, start: datetime | None = None, end: datetime | None = None,
                   page_size: int = 100) -> list[AuditEvent]:
        """Audit events of an organisation, newest first, optionally filtered (``action="repo.tag.push"``).

        ``start``/``end`` bound the window (sent as ``from``/``to``). Pages are
        read until one comes back short.
        """
        if not account:
            raise InputError("docker hub audit logs", "account (organisation) is required")
        params: dict[str, Any] = {"page_size": page_size}
        for key, val in (("action", action), ("name", name), ("actor", actor)):
            if val:
                params[key] = val
        if start:
            params["from"] = _iso(start)
        if end:
            params["to"] = _iso(end)
        rest = self._client()
        out: list[AuditEvent] = []
        for page in range(1, _MAX_PAGES + 1):
            body = rest.get_json(f"/v2/auditlogs/{quote(account, safe='')}", params={**params, "page": page})
            logs = body.get("logs") or []
            for e in logs:
                out.append(AuditEvent(
                    account=e.get("account", account), action=e.get("action", ""), name=e.get("name", ""),
                    actor=e.get("actor", ""), timestamp=parse_time(e.get("timestamp")),
                    description=e.get("action_description", ""),
                    data={str(k): str(v) for k, v in (e.get("data") or {}).items()},
                ))
            if len(logs) < page_size:
                return out
        raise IntegrationError(f"docker-hub audit logs {account}", f"more than {_MAX_PAGES} pages")

    # -- personal access tokens (this client built with ``token=`` a JWT from :func:`hub_user_login`)

    def list_access_tokens(self, page_size: int = 100) -> list[HubAccessToken]:
        """Every PAT of the account, active or not, following ``next``."""
        rest = self._client()
        path: str | None = "/v2/access-tokens"
        params: dict[str, Any] | None = {"page": 1, "page_size": page_size}
        out: list[HubAccessToken] = []
        for _ in range(_MAX_PAGES):
            body = rest.get_json(path, params=params)
            out.extend(_pat(t) for t in body.get("results") or [])
            path, params = body.get("next"), None
            if not path:
                return out
        raise IntegrationError(f"docker-hub {self.api_url} access tokens", f"more than {_MAX_PAGES} pages")

    def create_access_token(self, label: str, scopes: list[str]) -> tuple[HubAccessToken, SecretStr]:
        """A new PAT; the answer is the only time Hub shows its value (returned masked)."""
        r = self._client().request("POST", "/v2/access-tokens", json={"token_label": label, "scopes": list(scopes)},
                                   ok=(200, 201))
        body = r.json()
        value = body.get("token")
        if not value:
            raise IntegrationError(f"docker-hub {self.api_url} POST /v2/access-tokens", "answer holds no token")
        return _pat(body), SecretStr(str(value))

    def set_access_token_active(self, uuid: str, active: bool) -> None:
        self._client().request("PATCH", f"/v2/access-tokens/{quote(uuid, safe='')}", json={"is_active": active}, ok=(200,))

    def delete_access_token(self, uuid: str) -> bool:
        """Delete a PAT; ``False`` when Hub no longer has it."""
        try:
            self._client().request("DELETE", f"/v2/access-tokens/{quote(uuid, safe='')}", ok=(200, 202, 204))
        except NotFound:
            return False
        return True
