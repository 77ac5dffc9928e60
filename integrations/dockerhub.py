"""Docker Hub's own API (hub.docker.com/v2): tag facts and organisation audit logs.

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
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

from digestguard.errors import AuthError, InputError, IntegrationError
from digestguard.reference import DOCKER_HUB, parse_reference
from digestguard.timeutil import parse_time, utc
from integrations._rest import Closing, RateLimit, RestClient
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
            token = r.json().get("access_token") or r.json().get("token")
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
