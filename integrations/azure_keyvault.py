"""Azure Key Vault secrets for the rotate stage: set a new version, list versions, disable old ones.

Key Vault keeps every value as a version; "the secret" is its latest enabled
version. Rotating = set a new value (a new version, returned as its id only),
hand it to consumers, then *disable* the old versions (``enabled=False``):
reads of them fail from then on, yet they stay listed as the record and can
be re-enabled if a consumer was missed. Nothing is deleted.

The credential is passed in (``ClientSecretCredential`` in real life, any
``TokenCredential`` in tests); :func:`keyvault_client` builds the SDK client.
Errors come back as :mod:`digestguard.errors` naming vault and secret.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from azure.core.credentials import TokenCredential
from azure.keyvault.secrets import SecretClient
from pydantic import SecretStr

from digestguard.errors import InputError, Refused
from integrations._errors import azure_errors
from integrations._rest import azure_retry_kwargs
from integrations._secret_values import SecretLike, reveal, same_secret

__all__ = [
    "SecretVersion",
    "current_value_matches",
    "disable_versions",
    "keyvault_client",
    "list_versions",
    "read_version",
    "secret_source",
    "set_secret_version",
]


@dataclass(frozen=True)
class SecretVersion:
    """One version's properties (Key Vault never lists values)."""

    name: str
    version: str
    enabled: bool
    created_on: datetime | None
    updated_on: datetime | None


def keyvault_client(vault_url: str, credential: TokenCredential, **kwargs: Any) -> SecretClient:
    """A ``SecretClient`` for ``vault_url`` (``https://<name>.vault.azure.net``).

    The SDK retries 429/5xx honouring Retry-After, per
    :data:`integrations._rest.AZURE_SDK_POLICY`. ``kwargs`` go to the SDK and
    win over that policy: e.g. ``retry_total``, ``connection_verify`` (a CA
    file), ``verify_challenge_resource``.
    """
    if not vault_url.startswith("https://"):
        raise InputError("azure key vault url", f"must start with https:// (bearer tokens need TLS), got {vault_url!r}")
    return SecretClient(vault_url=vault_url, credential=credential, **{**azure_retry_kwargs(), **kwargs})


def secret_source(client: SecretClient, name: str, version: str | None = None) -> str:
    """How errors name a secret (and version) of this vault."""
    return f"azure keyvault {client.vault_url} secret {name}" + (f" version {version}" if version else "")


def _check_name(name: str) -> None:
    if not name or not all(ch.isalnum() or ch == "-" for ch in name) or len(name) > 127:
        raise InputError("azure key vault", f"not a secret name (1-127 of a-z, A-Z, 0-9, '-'): {name!r}", field="name")


def set_secret_version(
    client: SecretClient,
    name: str,
    value: SecretLike,
    *,
    content_type: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Store ``value`` as a new version of ``name`` (which becomes current); return the version id only."""
    _check_name(name)
    source = secret_source(client, name)
    with azure_errors(source):
        secret = client.set_secret(name, reveal(value, source=source), content_type=content_type, tags=tags)
    return str(secret.properties.version)


def list_versions(client: SecretClient, name: str) -> list[SecretVersion]:
    """All versions of ``name``, oldest first (by creation time)."""
    _check_name(name)
    with azure_errors(secret_source(client, name)):
        items = [
            SecretVersion(
                name=name,
                version=str(p.version),
                enabled=bool(p.enabled),
                created_on=p.created_on,
                updated_on=p.updated_on,
            )
            for p in client.list_properties_of_secret_versions(name)
        ]
    # stable sort: versions created within the same second keep the service's listing order
    return sorted(items, key=lambda v: (v.created_on is None, v.created_on or datetime.min))


def disable_versions(client: SecretClient, name: str, versions: Iterable[str]) -> list[str]:
    """Disable each of ``versions`` (reads then fail; the version stays listed). Returns them, sorted.

    Disabling an already disabled version is a harmless no-op, so re-runs are safe.
    """
    _check_name(name)
    done: list[str] = []
    for version in sorted(set(versions)):
        if not version:
            raise InputError(secret_source(client, name), "empty version id", field="versions")
        with azure_errors(secret_source(client, name, version)):
            client.update_secret_properties(name, version, enabled=False)
        done.append(version)
    return done


def current_value_matches(client: SecretClient, name: str, expected: SecretLike, *, version: str | None = None) -> bool:
    """True when the current (or given) version holds ``expected``; compared in constant time, never returned."""
    _check_name(name)
    with azure_errors(secret_source(client, name, version)):
        secret = client.get_secret(name, version)
    return secret.value is not None and same_secret(secret.value, expected)


def read_version(client: SecretClient, name: str, version: str) -> SecretStr:
    """One version's value, masked (for handing a rotated value to consumers after a resume).

    ``Refused`` when the version holds no value; ``NotFound``/``Refused`` (disabled) as the service says.
    """
    _check_name(name)
    source = secret_source(client, name, version)
    with azure_errors(source):
        secret = client.get_secret(name, version)
    if secret.value is None:
        raise Refused(source, "the version holds no value")
    return SecretStr(secret.value)
