"""GCP Secret Manager for the rotate stage: add a version, list, disable old ones, verify latest.

Secret Manager keeps values as numbered versions; consumers usually read
``versions/latest`` (the newest *enabled* version). Rotating = add a version
(returned as its number only), hand the value to consumers, then *disable*
the old versions: reads of them fail, they stay listed, and ``enable`` brings
one back if a consumer was missed. Nothing is destroyed.

Payloads are sent with a CRC32C so the service rejects a value damaged on
the way (Google's recommended integrity check). The client comes from
:func:`secret_manager_client` (credentials, ``api_endpoint`` and transport
passed in); errors come back as :mod:`digestguard.errors` naming the secret.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.api_core.client_options import ClientOptions
from google.cloud import secretmanager
from pydantic import SecretStr

from digestguard.errors import InputError, NotFound, Refused, Unavailable
from integrations._errors import gcp_errors
from integrations._rest import GCP_ACCESS_POLICY, google_retry
from integrations._secret_values import SecretLike, reveal, same_secret

__all__ = [
    "SecretVersionInfo",
    "add_version",
    "create_secret",
    "disable_versions",
    "latest_matches",
    "list_versions",
    "read_version",
    "secret_exists",
    "secret_source",
    "secret_manager_client",
]


@dataclass(frozen=True)
class SecretVersionInfo:
    """One version's metadata (no payload)."""

    secret: str
    version: str
    state: str  # ENABLED, DISABLED, DESTROYED
    create_time: datetime | None

    @property
    def enabled(self) -> bool:
        return self.state == "ENABLED"


def secret_manager_client(
    *,
    credentials: Any = None,
    api_endpoint: str | None = None,
    transport: str = "grpc",
    **client_options: Any,
) -> secretmanager.SecretManagerServiceClient:
    """A ``SecretManagerServiceClient``; ``api_endpoint`` + ``transport="rest"`` reach a local server in tests."""
    options = ClientOptions(api_endpoint=api_endpoint, **client_options) if (api_endpoint or client_options) else None
    return secretmanager.SecretManagerServiceClient(credentials=credentials, transport=transport, client_options=options)


def _check_secret(secret: str) -> str:
    parts = secret.strip("/").split("/")
    if len(parts) == 4 and parts[0] == "projects" and parts[2] == "secrets" and all(parts):
        return "/".join(parts)
    if len(parts) == 6 and parts[0] == "projects" and parts[2] == "locations" and parts[4] == "secrets" and all(parts):
        return "/".join(parts)
    raise InputError("gcp secret manager", f"expected projects/<p>/secrets/<s>, got {secret!r}", field="secret")


def secret_source(secret: str, version: str | None = None) -> str:
    """How errors name a secret (and version)."""
    return f"gcp secretmanager {secret}" + (f"/versions/{version}" if version else "")


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) as Secret Manager expects in ``data_crc32c``."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def secret_exists(client: secretmanager.SecretManagerServiceClient, secret: str) -> bool:
    """True when the secret (the container of versions) exists."""
    secret = _check_secret(secret)
    try:
        with gcp_errors(secret_source(secret)):
            client.get_secret(request={"name": secret})
    except NotFound:
        return False
    return True


def create_secret(client: secretmanager.SecretManagerServiceClient, project: str, secret_id: str,
                  *, labels: dict[str, str] | None = None) -> str:
    """Create an empty secret with automatic replication; returns its resource name."""
    if not project or "/" in project or not secret_id or "/" in secret_id:
        raise InputError("gcp secret manager", f"bad project/secret id: {project!r}/{secret_id!r}")
    name = f"projects/{project}/secrets/{secret_id}"
    with gcp_errors(secret_source(name)):
        created = client.create_secret(request={
            "parent": f"projects/{project}",
            "secret_id": secret_id,
            "secret": {"replication": {"automatic": {}}, "labels": labels or {}},
        })
    return created.name


def add_version(client: secretmanager.SecretManagerServiceClient, secret: str, value: SecretLike) -> str:
    """Add ``value`` as the newest version of ``secret``; return the version number only (e.g. ``"4"``)."""
    secret = _check_secret(secret)
    source = secret_source(secret)
    data = reveal(value, source=source).encode()
    with gcp_errors(source):
        version = client.add_secret_version(
            request={"parent": secret, "payload": {"data": data, "data_crc32c": crc32c(data)}}
        )
    del data
    return version.name.rsplit("/", 1)[-1]


def list_versions(client: secretmanager.SecretManagerServiceClient, secret: str) -> list[SecretVersionInfo]:
    """All versions of ``secret`` with their state, oldest first."""
    secret = _check_secret(secret)
    with gcp_errors(secret_source(secret)):
        items = [
            SecretVersionInfo(
                secret=secret,
                version=v.name.rsplit("/", 1)[-1],
                state=secretmanager.SecretVersion.State(v.state).name,
                create_time=v.create_time if isinstance(v.create_time, datetime) else None,
            )
            for v in client.list_secret_versions(request={"parent": secret})
        ]
    return sorted(items, key=lambda v: int(v.version) if v.version.isdigit() else 0)


def disable_versions(client: secretmanager.SecretManagerServiceClient, secret: str,
                     versions: Iterable[str | int]) -> list[str]:
    """Disable each version (reads then fail; still listed). Already disabled is fine. Returns them, sorted."""
    secret = _check_secret(secret)
    numbers = sorted({str(v) for v in versions}, key=lambda s: int(s) if s.isdigit() else 0)
    for number in numbers:
        if not number.isdigit():
            raise InputError(secret_source(secret), f"version must be a number, got {number!r} ('latest' is not allowed here)",
                             field="versions")
        with gcp_errors(secret_source(secret, number)):
            client.disable_secret_version(request={"name": f"{secret}/versions/{number}"})
    return numbers


def latest_matches(client: secretmanager.SecretManagerServiceClient, secret: str, expected: SecretLike,
                   *, version: str = "latest") -> bool:
    """True when ``versions/<version>`` (default latest) holds ``expected``; compared in constant time.

    Also checks the payload's CRC32C when the service sends one.
    """
    secret = _check_secret(secret)
    data, intact = _access(client, secret, version)
    if not intact:
        raise Unavailable(secret_source(secret, version), "payload checksum mismatch (damaged in transit)")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return False
    return same_secret(text, expected)


def read_version(client: secretmanager.SecretManagerServiceClient, secret: str, version: str) -> SecretStr:
    """One version's payload, masked, checksum-checked (for handing a rotated value to consumers after a resume).

    ``Refused`` when the payload does not match its CRC32C.
    """
    secret = _check_secret(secret)
    data, intact = _access(client, secret, version)
    if not intact:
        raise Refused(secret_source(secret, version), "payload checksum mismatch")
    return SecretStr(data.decode("utf-8"))


def _access(client: secretmanager.SecretManagerServiceClient, secret: str, version: str) -> tuple[bytes, bool]:
    """A version's payload bytes and whether they match the CRC32C the service sent (True when it sent none)."""
    with gcp_errors(secret_source(secret, version)):
        answer = client.access_secret_version(request={"name": f"{secret}/versions/{version}"},
                                              retry=google_retry(GCP_ACCESS_POLICY))
    data = answer.payload.data
    return data, not answer.payload.data_crc32c or crc32c(data) == answer.payload.data_crc32c
