"""HashiCorp Vault / OpenBao client for the rotate stage (KV v2 and database static roles).

A thin typed layer over ``hvac``. Two kinds of secret live in Vault:

* KV v2 entries, which the *caller* rotates: write a new version with a value it
  generated, hand the value to consumers, then soft-delete the old versions
  (``delete``, not ``destroy``: the metadata stays as the record of what existed).
* database static roles, which *Vault* rotates: ``rotate-role`` makes Vault set a
  new password on the database user; we read back only when and by whom it was
  rotated, not the password, unless a consumer really needs it.

Every function takes an ``hvac.Client`` made by :func:`connect`; failures come back
as :mod:`digestguard.errors` naming the Vault address and path, never a value.

Example::

    client = connect("https://vault.example:8200", token)
    old = kv_metadata(client, "apps/ci/registry")
    new_version = kv_write(client, "apps/ci/registry", {"password": new_password()}, cas=old.current_version)
    ...hand the value to consumers...
    kv_soft_delete(client, "apps/ci/registry", [v.version for v in old.versions if v.live])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import hvac
import requests
from pydantic import SecretStr

from digestguard.errors import InputError, IntegrationError, NotFound, Refused, Unavailable
from digestguard.timeutil import parse_time
from integrations._errors import hvac_errors
from integrations._rest import DEFAULT_DEADLINE, VAULT_READ_POLICY, bounded_session, urllib3_retry
from integrations._secret_values import SecretLike, reveal, same_secret

__all__ = [
    "KvMetadata",
    "KvVersion",
    "StaticCredentials",
    "StaticRoleStatus",
    "connect",
    "db_rotate_static_role",
    "db_static_credentials",
    "db_static_role_status",
    "kv_metadata",
    "kv_read",
    "kv_soft_delete",
    "kv_version_matches",
    "kv_write",
    "NewToken",
    "audit_hash",
    "token_create_like",
    "token_lookup_accessor",
    "token_probe",
    "token_revoke_accessor",
]


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class KvVersion:
    """One version in a KV v2 entry's metadata."""

    version: int
    created_time: datetime | None
    deletion_time: datetime | None
    destroyed: bool

    @property
    def live(self) -> bool:
        """Readable now: neither soft-deleted nor destroyed."""
        return self.deletion_time is None and not self.destroyed


@dataclass(frozen=True)
class KvMetadata:
    """A KV v2 entry's metadata: which versions exist and which is current."""

    path: str
    current_version: int
    oldest_version: int
    versions: tuple[KvVersion, ...]

    def live_versions(self, *, except_version: int | None = None) -> list[int]:
        """Version numbers still readable, optionally leaving one out (the new one)."""
        return [v.version for v in self.versions if v.live and v.version != except_version]


@dataclass(frozen=True)
class KvSecret:
    """One KV v2 version's data; values are ``SecretStr`` so a stray print shows nothing."""

    path: str
    version: int
    data: Mapping[str, SecretStr] = field(repr=False)

    def keys(self) -> list[str]:
        return sorted(self.data)


@dataclass(frozen=True)
class StaticRoleStatus:
    """What a static role says about its last rotation; no password in here."""

    role: str
    username: str
    last_vault_rotation: datetime | None
    rotation_period: int | None
    ttl: int | None


@dataclass(frozen=True)
class StaticCredentials:
    """The current credential of a static role, for the one consumer that must receive it."""

    role: str
    username: str
    password: SecretStr = field(repr=False)
    last_vault_rotation: datetime | None


# --------------------------------------------------------------------------- plumbing


def connect(
    addr: str,
    token: SecretLike,
    *,
    namespace: str | None = None,
    verify: bool | str = True,
    timeout: float = 15.0,
    deadline: float = DEFAULT_DEADLINE,
) -> hvac.Client:
    """An ``hvac.Client`` for ``addr`` with ``token``; checks the token before returning.

    ``verify`` is ``True``, ``False`` or a CA bundle path (as in ``requests``).
    Raises ``AuthError`` when the token is not accepted, ``Unavailable`` when
    nothing answers at ``addr``. ``timeout`` bounds one socket wait, ``deadline`` one call in total
    (a slow-dripping answer is ``Unavailable`` at the deadline); an answer over the JSON cap is ``Refused``.
    """
    if not addr.startswith(("http://", "https://")):
        raise InputError("vault address", f"must start with http:// or https://, got {addr!r}")
    # reads (GET/LIST) retry on 429/502/503/504 with bounded back-off honouring Retry-After up to its cap;
    # writes (POST) do not: a repeated rotate or write is the caller's decision, via the typed error.
    # Every call ends within ``deadline`` and no answer over the JSON cap is held (see bounded_session).
    retry = urllib3_retry(VAULT_READ_POLICY, methods=frozenset({"GET", "LIST", "HEAD"}))
    session = bounded_session("vault", deadline=deadline, retry=retry)
    client = hvac.Client(
        url=addr.rstrip("/"),
        token=reveal(token, source="vault token"),
        namespace=namespace,
        verify=verify,
        timeout=timeout,
        session=session,
    )
    with _translate(client, "auth/token/lookup-self"):
        answer = client.auth.token.lookup_self()
    if not isinstance(answer, dict) or not isinstance(answer.get("data"), dict):  # hvac hands back a non-JSON 200 as is
        raise IntegrationError(_source(client, "auth/token/lookup-self"),
                               "answer is not a Vault token lookup (not JSON or not an object: not a Vault API?)")
    return client


def _source(client: hvac.Client, path: str) -> str:
    return f"vault {client.url} {path}"


def _translate(client: hvac.Client, path: str) -> AbstractContextManager[None]:
    """hvac and requests failures as typed errors naming the Vault address and path (never the request body)."""
    return hvac_errors(_source(client, path))


def _check_path(path: str) -> str:
    clean = path.strip("/")
    if not clean or ".." in clean.split("/"):
        raise InputError("vault path", f"not a usable KV path: {path!r}")
    return clean


# --------------------------------------------------------------------------- KV v2


def kv_metadata(client: hvac.Client, path: str, *, mount: str = "secret") -> KvMetadata:
    """Versions of a KV v2 entry (numbers, times, deleted/destroyed), no data.

    ``NotFound`` when the entry has never been written.
    """
    path = _check_path(path)
    with _translate(client, f"{mount}/metadata/{path}"):
        data = client.secrets.kv.v2.read_secret_metadata(path=path, mount_point=mount)["data"]
    versions = tuple(
        sorted(
            (
                KvVersion(
                    version=int(number),
                    created_time=parse_time(info.get("created_time")),
                    deletion_time=parse_time(info.get("deletion_time")),
                    destroyed=bool(info.get("destroyed")),
                )
                for number, info in (data.get("versions") or {}).items()
            ),
            key=lambda v: v.version,
        )
    )
    return KvMetadata(
        path=path,
        current_version=int(data.get("current_version") or 0),
        oldest_version=int(data.get("oldest_version") or 0),
        versions=versions,
    )


def kv_write(
    client: hvac.Client,
    path: str,
    data: Mapping[str, SecretLike],
    *,
    mount: str = "secret",
    cas: int | None = None,
) -> int:
    """Write ``data`` as a new version and return only its version number.

    ``cas`` (check-and-set) is the version the caller expects to be current:
    pass ``kv_metadata(...).current_version`` so a concurrent writer makes this
    fail with ``Refused`` instead of being silently overwritten. ``cas=0`` means
    "only if the entry does not exist yet".
    """
    path = _check_path(path)
    if not data:
        raise InputError(_source(client, f"{mount}/data/{path}"), "nothing to write", field="data")
    plain = {str(k): reveal(v, source=f"vault {mount}/{path} key {k}") for k, v in data.items()}
    try:
        with _translate(client, f"{mount}/data/{path}"):
            answer = client.secrets.kv.v2.create_or_update_secret(path=path, secret=plain, cas=cas, mount_point=mount)
            return int(answer["data"]["version"])
    finally:
        del plain


def kv_soft_delete(client: hvac.Client, path: str, versions: Iterable[int], *, mount: str = "secret") -> list[int]:
    """Soft-delete ``versions`` (unreadable, metadata kept; ``undelete`` can bring them back).

    Returns the sorted version numbers asked for. Deleting an already deleted
    version is not an error (Vault treats it as done), which keeps re-runs safe.
    """
    path = _check_path(path)
    numbers = sorted({int(v) for v in versions})
    if not numbers:
        return []
    if numbers[0] < 1:
        raise InputError(_source(client, f"{mount}/delete/{path}"), "versions start at 1", field="versions")
    with _translate(client, f"{mount}/delete/{path}"):
        client.secrets.kv.v2.delete_secret_versions(path=path, versions=numbers, mount_point=mount)
    return numbers


def kv_read(client: hvac.Client, path: str, *, version: int | None = None, mount: str = "secret") -> KvSecret:
    """Read one version (latest when ``version`` is None); values come back as ``SecretStr``.

    ``NotFound`` for a missing entry or a deleted/destroyed version.
    """
    path = _check_path(path)
    with _translate(client, f"{mount}/data/{path}"):
        answer = client.secrets.kv.v2.read_secret_version(
            path=path, version=version, mount_point=mount, raise_on_deleted_version=True
        )["data"]
        return KvSecret(
            path=path,
            version=int(answer["metadata"]["version"]),
            data={str(k): SecretStr(str(v)) for k, v in (answer.get("data") or {}).items()},
        )


def kv_version_matches(
    client: hvac.Client,
    path: str,
    version: int,
    expected: Mapping[str, SecretLike],
    *,
    mount: str = "secret",
) -> bool:
    """True when ``version`` holds exactly ``expected`` (constant-time compare, no value returned).

    The rotate stage uses this to verify its write without reading the value
    out into a variable that could end up in a result.
    """
    stored = kv_read(client, path, version=version, mount=mount)
    if set(stored.data) != set(expected):
        return False
    return all(same_secret(stored.data[k], expected[k]) for k in expected)


# --------------------------------------------------------------------------- database static roles


def db_static_role_status(client: hvac.Client, role: str, *, mount: str = "database") -> StaticRoleStatus:
    """When the static role's password was last rotated by Vault, without the password.

    Reads ``<mount>/static-roles/<role>``; ``NotFound`` when the role does not exist.
    """
    data = _role_data(client, role, mount, "static-roles", client.secrets.database.read_static_role)
    return StaticRoleStatus(
        role=role,
        username=str(data.get("username", "")),
        last_vault_rotation=parse_time(data.get("last_vault_rotation")),
        rotation_period=_int_or_none(data.get("rotation_period")),
        ttl=_int_or_none(data.get("ttl")),
    )


def db_rotate_static_role(client: hvac.Client, role: str, *, mount: str = "database") -> StaticRoleStatus:
    """Make Vault set a new password on the role's database user now, and report the new status.

    This is a real credential change on the database: the old password stops
    working when this returns. ``Refused`` when Vault could not change it
    (e.g. the database refused the statement); the old password then still works.
    """
    _check_role(role)
    with _translate(client, f"{mount}/rotate-role/{role}"):
        client.secrets.database.rotate_static_role_credentials(name=role, mount_point=mount)
    return db_static_role_status(client, role, mount=mount)


def db_static_credentials(client: hvac.Client, role: str, *, mount: str = "database") -> StaticCredentials:
    """The role's current username and password (masked), for a consumer that must be given it."""
    data = _role_data(client, role, mount, "static-creds", client.secrets.database.get_static_credentials)
    return StaticCredentials(
        role=role,
        username=str(data.get("username", "")),
        password=SecretStr(str(data.get("password", ""))),
        last_vault_rotation=parse_time(data.get("last_vault_rotation")),
    )


def _role_data(client: hvac.Client, role: str, mount: str, what: str, read: Callable[..., Any]) -> dict[str, Any]:
    """The ``data`` of one ``<mount>/<what>/<role>`` read, errors naming that path."""
    _check_role(role)
    with _translate(client, f"{mount}/{what}/{role}"):
        return read(name=role, mount_point=mount)["data"]


def _check_role(role: str) -> None:
    if not role or "/" in role:
        raise InputError("vault static role", f"not a role name: {role!r}")


def _int_or_none(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- tokens (issuer: Vault/OpenBao itself)


@dataclass(frozen=True)
class NewToken:
    """A token just created: its accessor (an id, safe to log) and the token itself (masked)."""

    accessor: str
    token: SecretStr = field(repr=False)


def token_lookup_accessor(client: hvac.Client, accessor: str) -> dict[str, Any]:
    """What Vault knows of the token behind ``accessor`` (policies, meta, ttl; never the token); ``NotFound`` once revoked."""
    with _translate(client, "auth/token/lookup-accessor"):
        try:
            return dict(client.auth.token.lookup_accessor(accessor)["data"])
        except hvac.exceptions.InvalidRequest as e:  # Vault answers 400 "invalid accessor" for a revoked one
            raise NotFound(_source(client, "auth/token/lookup-accessor"), _first(e, "invalid accessor"), 404) from None


def token_create_like(client: hvac.Client, like: Mapping[str, Any], *, meta: Mapping[str, str]) -> NewToken:
    """An orphan token with the same policies, period/ttl and display name as ``like`` (a lookup-accessor answer)."""
    policies = [p for p in (like.get("policies") or []) if p != "root"] or ["default"]
    ttl = like.get("creation_ttl") or like.get("ttl") or None
    with _translate(client, "auth/token/create-orphan"):
        out = client.auth.token.create_orphan(policies=policies, ttl=f"{int(ttl)}s" if ttl else None,
                                              period=f"{int(like['period'])}s" if like.get("period") else None,
                                              display_name=str(like.get("display_name") or "digestguard").removeprefix("token-"),
                                              meta=dict(meta), renewable=bool(like.get("renewable", True)))
    auth = out["auth"]
    return NewToken(accessor=str(auth["accessor"]), token=SecretStr(str(auth["client_token"])))


def token_revoke_accessor(client: hvac.Client, accessor: str) -> bool:
    """Revoke the token behind ``accessor`` (and its children); ``False`` when it was already gone."""
    try:
        token_lookup_accessor(client, accessor)
    except NotFound:
        return False
    with _translate(client, "auth/token/revoke-accessor"):
        client.auth.token.revoke_accessor(accessor)
    return True


def token_accessors(client: hvac.Client) -> list[str]:
    """Every token accessor (needs ``sudo`` on ``auth/token/accessors``)."""
    with _translate(client, "auth/token/accessors"):
        out = client.auth.token.list_accessors()
    return [str(a) for a in (out.get("data") or {}).get("keys") or []]


def token_probe(addr: str, token: SecretLike, *, timeout: float = 10, verify: bool | str = True,
                deadline: float = DEFAULT_DEADLINE) -> tuple[str, str]:
    """``lookup-self`` with ``token`` at ``addr`` (its own issuer): ``("accepted", accessor)`` or ``("refused", status)``.

    No retry and no other endpoint: the token travels once, to the Vault that issued it.
    """
    url = f"{addr.rstrip('/')}/v1/auth/token/lookup-self"
    try:
        with bounded_session("vault", deadline=deadline, retry=0) as session:
            r = session.get(url, headers={"X-Vault-Token": reveal(token, source="vault token")}, timeout=timeout,
                            verify=verify)
    except (requests.ConnectionError, requests.Timeout) as e:
        raise Unavailable(f"vault {addr} auth/token/lookup-self", f"no answer: {type(e).__name__}") from None
    if r.status_code == 200:
        return "accepted", str((r.json().get("data") or {}).get("accessor") or "")
    if r.status_code in (401, 403):
        return "refused", str(r.status_code)
    raise Unavailable(f"vault {addr} auth/token/lookup-self", f"unexpected answer {r.status_code}", r.status_code)


def audit_hash(client: hvac.Client, device: str, value: SecretLike) -> str:
    """The ``hmac-sha256:...`` that audit device ``device`` writes for ``value`` (``sys/audit-hash``)."""
    with _translate(client, f"sys/audit-hash/{device}"):
        out = client.sys.calculate_hash(device, reveal(value, source="audited value"))
    text = str((out.get("data") or out).get("hash") or "")
    if not text.startswith("hmac-"):
        raise Refused(_source(client, f"sys/audit-hash/{device}"), "no hash in the answer")
    return text


def _first(e: Exception, default: str) -> str:
    errors = [str(x) for x in (getattr(e, "errors", None) or []) if x]
    return "; ".join(errors)[:200] if errors else default
