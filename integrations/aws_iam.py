"""AWS IAM access keys for the rotate stage: list, create, deactivate, delete, last used.

A leaked IAM user key is rotated in the order that never leaves the user without
a working key: create the new key -> hand it to consumers -> deactivate the old
(reversible, and it shows at once who still uses it) -> delete it later.
IAM allows at most two keys per user, so creation is refused up front with a
clear :class:`~digestguard.errors.Refused` when two already exist (delete an
inactive one first) rather than half-way through.

The new secret access key exists exactly once, in the :class:`NewAccessKey`
returned by :func:`create_access_key`; its field is a ``SecretStr`` left out of
``repr``, so a stray log line shows only the key id.

Every function takes a boto3 IAM client (see :func:`iam_client`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import boto3
from pydantic import SecretStr

from digestguard.errors import InputError, NotFound, Refused
from integrations._errors import aws_errors, keep_secrets_out_of_botocore_debug_logs
from integrations._rest import botocore_config

keep_secrets_out_of_botocore_debug_logs()

__all__ = [
    "MAX_KEYS_PER_USER",
    "AccessKey",
    "KeyLastUsed",
    "NewAccessKey",
    "access_key_last_used",
    "create_access_key",
    "deactivate_access_key",
    "delete_access_key",
    "iam_client",
    "list_access_keys",
]

MAX_KEYS_PER_USER = 2
"""IAM's hard limit of access keys per user."""


@dataclass(frozen=True)
class AccessKey:
    """One access key's public facts (no secret: IAM never returns it again after creation)."""

    user: str
    access_key_id: str
    status: Literal["Active", "Inactive"]
    created: datetime | None


@dataclass(frozen=True)
class NewAccessKey:
    """A freshly created key; ``secret_access_key`` is masked in repr/str."""

    user: str
    access_key_id: str
    created: datetime | None
    secret_access_key: SecretStr = field(repr=False)


@dataclass(frozen=True)
class KeyLastUsed:
    """When and where a key was last used; ``when`` is None if never (or not yet recorded)."""

    access_key_id: str
    user: str | None
    when: datetime | None
    service: str | None
    region: str | None


def iam_client(*, session: boto3.session.Session | None = None, endpoint_url: str | None = None, **kwargs: Any):
    """A boto3 IAM client with bounded retries (``endpoint_url`` for tests against a local moto server)."""
    session = session or boto3.session.Session()
    return session.client("iam", endpoint_url=endpoint_url, config=botocore_config(), **kwargs)


def _check(user: str, key_id: str | None = None) -> None:
    if not user or not user.strip():
        raise InputError("aws iam", "an IAM user name is required", field="user")
    if key_id is not None and (not key_id or not key_id.isalnum()):
        raise InputError("aws iam", f"not an access key id: {key_id!r}", field="access_key_id")


def _src(user: str, key_id: str | None = None) -> str:
    return f"aws iam user/{user}" + (f" key {key_id}" if key_id else "")


def list_access_keys(iam, user: str) -> list[AccessKey]:
    """The user's access keys (at most two), oldest first."""
    _check(user)
    keys: list[AccessKey] = []
    with aws_errors(_src(user)):
        for page in iam.get_paginator("list_access_keys").paginate(UserName=user):
            for k in page.get("AccessKeyMetadata", []):
                keys.append(AccessKey(user=user, access_key_id=k["AccessKeyId"], status=k["Status"], created=k.get("CreateDate")))
    return sorted(keys, key=lambda k: (k.created is None, k.created or datetime.min, k.access_key_id))


def create_access_key(iam, user: str) -> NewAccessKey:
    """Create a new key for ``user``. Move the secret to its consumers; never log or return it further.

    Raises ``Refused`` naming the existing key ids when the user already has
    two keys, and ``NotFound`` when the user does not exist.
    """
    existing = list_access_keys(iam, user)
    if len(existing) >= MAX_KEYS_PER_USER:
        listing = ", ".join(f"{k.access_key_id} ({k.status})" for k in existing)
        raise Refused(
            _src(user),
            f"already has {len(existing)} access keys ({listing}); IAM allows {MAX_KEYS_PER_USER}: "
            "delete one (an inactive or leaked key) before creating a new one",
            409,
        )
    with aws_errors(_src(user)):
        k = iam.create_access_key(UserName=user)["AccessKey"]
    return NewAccessKey(
        user=user,
        access_key_id=k["AccessKeyId"],
        created=k.get("CreateDate"),
        secret_access_key=SecretStr(k["SecretAccessKey"]),
    )


def deactivate_access_key(iam, user: str, access_key_id: str) -> None:
    """Set a key Inactive: requests signed with it now fail, and it can still be re-activated."""
    _check(user, access_key_id)
    with aws_errors(_src(user, access_key_id)):
        iam.update_access_key(UserName=user, AccessKeyId=access_key_id, Status="Inactive")


def delete_access_key(iam, user: str, access_key_id: str, *, missing_ok: bool = True) -> bool:
    """Delete a key for good. Returns False when it was already gone (and ``missing_ok``), so re-runs are safe."""
    _check(user, access_key_id)
    try:
        with aws_errors(_src(user, access_key_id)):
            iam.delete_access_key(UserName=user, AccessKeyId=access_key_id)
    except NotFound:
        if missing_ok:
            return False
        raise
    return True


def access_key_last_used(iam, access_key_id: str) -> KeyLastUsed:
    """When, with which service and in which region the key was last used (None when never)."""
    _check("-", access_key_id)
    with aws_errors(f"aws iam key {access_key_id}"):
        answer = iam.get_access_key_last_used(AccessKeyId=access_key_id)
    used = answer.get("AccessKeyLastUsed", {}) or {}
    service = used.get("ServiceName")
    region = used.get("Region")
    return KeyLastUsed(
        access_key_id=access_key_id,
        user=answer.get("UserName"),
        when=used.get("LastUsedDate"),
        service=None if service in (None, "N/A") else service,
        region=None if region in (None, "N/A") else region,
    )
