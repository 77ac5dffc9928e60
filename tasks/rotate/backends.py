"""The rotate stage's adapters: one per secret backend, one writer per consumer kind.

Why a module of its own: ``tasks/rotate/stage.py`` owns the *order* of a rotation and
its journal (what is done, what a crashed run must pick up); this module owns
*how* each backend makes, reads back, verifies and revokes a version, on top of
the thin clients in ``integrations/``. Each adapter answers the same five
questions, so the orchestration has no per-backend branches:

``base()``       what to remember in the journal *before* writing (ids only),
``recover(b)``   did an interrupted earlier attempt already write a version? (its id, or None),
``create(b)``    write a new version now and return its id,
``material(v)``  the value(s) of version ``v``, read back from the backend,
``revoke(v)``    make every exposed (older) version unusable; ``verify(v)`` checks ``v`` is current.

Values travel as ``dict[str, SecretStr]`` ("material": ``value``, or
``access_key_id``/``secret_access_key``, or ``username``/``password``) and are
never returned to the stage's caller.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from digestguard.errors import InputError, NotFound, Refused, Unavailable
from digestguard.inventory import Backends
from integrations import aws_iam, aws_secrets, azure_keyvault, gcp_secrets, vault
from integrations._secret_values import new_password, same_secret
from integrations.github import write_actions_secret
from tasks.connect import Connections

Material = dict[str, SecretStr]
"""The parts of one credential, masked."""

COPY_KINDS = ("vault-kv", "aws-secretsmanager", "azure-keyvault", "gcp-secretmanager")
"""Consumer kinds that are another backend holding a copy (they can take a whole multi-part credential)."""

_NAMESPACE = uuid.UUID("5b0d9a52-8f7e-4c43-9a57-6f1f2c0e7d11")


class Lost(Exception):
    """The new value can no longer be read (an IAM secret access key that was never stored)."""


def stable_token(*parts: str) -> str:
    """A deterministic idempotency token (36 chars) from ids: the same step of the same incident gets the same one."""
    return str(uuid.uuid5(_NAMESPACE, "\x1f".join(parts)))



# --------------------------------------------------------------------------- backends


class Backend:
    """One secret's backend. Subclasses fill in the five questions; ``version`` ids are strings."""

    default_field: str | None = "value"
    revoke_before_create = False  # IAM revoke-first: the old key goes before the new one exists
    needs_stash = False  # IAM: the new value cannot be read back from the backend itself

    def __init__(self, name: str, ref: Mapping[str, Any], clients: Connections, token_seed: tuple[str, ...]) -> None:
        self.name = name
        self.ref = dict(ref)
        self.clients = clients
        self.token_seed = token_seed

    def ref_str(self, key: str, *alts: str) -> str:
        for k in (key, *alts):
            v = self.ref.get(k)
            if isinstance(v, str) and v:
                return v
        raise InputError(f"secret {self.name}", f"ref needs {key!r}", field=f"ref.{key}")

    def base(self) -> dict[str, Any]:
        return {}

    def recover(self, base: Mapping[str, Any]) -> str | None:
        return None

    def create(self, base: Mapping[str, Any]) -> str:
        raise NotImplementedError

    def material(self, version: str) -> Material:
        raise NotImplementedError

    def revoke(self, version: str | None) -> dict[str, Any]:
        return {}

    def verify(self, version: str) -> tuple[bool, str]:
        return True, ""

    def current(self) -> str | None:
        """The id of the version a store holds now (``None``: this backend cannot say); manual items compare it."""
        return None


class VaultKv(Backend):
    """KV v2: a new version (other keys of the entry kept), exposed versions soft-deleted (metadata kept)."""

    @property
    def client(self):
        return self.clients.get("vault")

    @property
    def path(self) -> str:
        return self.ref_str("path")

    @property
    def mount(self) -> str:
        return str(self.ref.get("mount") or self.clients.backends.vault_kv_mount)

    def _key(self, data: Mapping[str, Any]) -> str:
        key = self.ref.get("key")
        if key:
            return str(key)
        if len(data) == 1:
            return next(iter(data))
        raise Refused(f"vault {self.mount}/{self.path}", f"the entry holds {len(data)} keys {sorted(data)}: name the one to rotate "
                      f"in the inventory (secrets[{self.name}].ref.key)")

    def base(self) -> dict[str, Any]:
        try:
            current = vault.kv_metadata(self.client, self.path, mount=self.mount).current_version
        except NotFound:
            current = 0
        return {"base_version": current}

    def current(self) -> str | None:
        return str(self.base()["base_version"] or "") or None

    def recover(self, base: Mapping[str, Any]) -> str | None:
        meta = vault.kv_metadata(self.client, self.path, mount=self.mount)
        ours = int(base["base_version"]) + 1  # cas=base guarantees base+1 is the only version our write could be
        hit = next((v for v in meta.versions if v.version == ours and v.live), None)
        return str(ours) if hit else None

    def create(self, base: Mapping[str, Any]) -> str:
        b = int(base["base_version"])
        data: dict[str, SecretStr] = {}
        if b:
            data = dict(vault.kv_read(self.client, self.path, version=b, mount=self.mount).data)
        key = self.ref.get("key") or (self._key(data) if data else "value")
        data[str(key)] = new_password()
        return str(vault.kv_write(self.client, self.path, data, mount=self.mount, cas=b))

    def material(self, version: str) -> Material:
        data = vault.kv_read(self.client, self.path, version=int(version), mount=self.mount).data
        return {"value": data[self._key(data)]}

    def revoke(self, version: str | None) -> dict[str, Any]:
        meta = vault.kv_metadata(self.client, self.path, mount=self.mount)
        old = [v for v in meta.live_versions(except_version=int(version or 0)) if v < int(version or 0)]
        return {"soft_deleted": vault.kv_soft_delete(self.client, self.path, old, mount=self.mount)}

    def verify(self, version: str) -> tuple[bool, str]:
        meta = vault.kv_metadata(self.client, self.path, mount=self.mount)
        live = meta.live_versions()
        if meta.current_version != int(version) or int(version) not in live:
            return False, f"current version is {meta.current_version}, expected live {version}"
        return True, ""


class VaultStaticRole(Backend):
    """Database static role: Vault itself changes the password (rotate-role); the old one dies at that moment."""

    default_field = "password"

    @property
    def client(self):
        return self.clients.get("vault")

    @property
    def role(self) -> str:
        return self.ref_str("role")

    @property
    def mount(self) -> str:
        return str(self.ref.get("mount") or self.clients.backends.vault_database_mount)

    def base(self) -> dict[str, Any]:
        st = vault.db_static_role_status(self.client, self.role, mount=self.mount)
        return {"last_rotation": st.last_vault_rotation.isoformat() if st.last_vault_rotation else None}

    def recover(self, base: Mapping[str, Any]) -> str | None:
        st = vault.db_static_role_status(self.client, self.role, mount=self.mount)
        now = st.last_vault_rotation.isoformat() if st.last_vault_rotation else None
        return now if now and now != base.get("last_rotation") else None

    def create(self, base: Mapping[str, Any]) -> str:
        st = vault.db_rotate_static_role(self.client, self.role, mount=self.mount)
        if st.last_vault_rotation is None:
            raise Refused(f"vault {self.mount}/static-roles/{self.role}", "rotate-role answered but no rotation time is recorded")
        return st.last_vault_rotation.isoformat()

    def material(self, version: str) -> Material:
        creds = vault.db_static_credentials(self.client, self.role, mount=self.mount)
        return {"username": SecretStr(creds.username), "password": creds.password, "value": creds.password}

    def revoke(self, version: str | None) -> dict[str, Any]:
        return {"revoked_by": "rotate-role"}

    def verify(self, version: str) -> tuple[bool, str]:
        st = vault.db_static_role_status(self.client, self.role, mount=self.mount)
        now = st.last_vault_rotation.isoformat() if st.last_vault_rotation else None
        return (now is not None and now >= version), f"last rotation {now}, expected {version} or later"


class AwsSecretsManager(Backend):
    """Secrets Manager: the rotation function when configured, else a new value moved to AWSCURRENT.

    The version id is a token derived from (incident, secret): a repeated put is
    the same version, so a resumed run can never store a second one.
    """

    @property
    def client(self):
        return self.clients.get("secretsmanager")

    @property
    def secret_id(self) -> str:
        return self.ref_str("secret_id", "name", "arn")

    def base(self) -> dict[str, Any]:
        d = aws_secrets.describe_secret(self.client, self.secret_id)
        return {"request_token": stable_token(*self.token_seed, "new-version"), "previous": d.current_version_id,
                "rotation_function": d.has_rotation_function}

    def current(self) -> str | None:
        return aws_secrets.describe_secret(self.client, self.secret_id).current_version_id

    def recover(self, base: Mapping[str, Any]) -> str | None:
        return None  # create() is idempotent by token: repeating it is the recovery

    def create(self, base: Mapping[str, Any]) -> str:
        token = str(base["request_token"])
        d = aws_secrets.describe_secret(self.client, self.secret_id)
        if aws_secrets.CURRENT in d.versions.get(token, ()):
            return token
        if d.has_rotation_function:
            if token in d.versions:  # our earlier request is still running: wait for it instead of starting another
                return self._wait_current(token)
            return aws_secrets.rotate_with_function(self.client, self.secret_id, client_request_token=token)
        value = aws_secrets.random_password(self.client)  # discarded unstored when the put already happened
        return aws_secrets.put_new_version(self.client, self.secret_id, value, client_request_token=token)

    def _wait_current(self, token: str, timeout: float = 300.0, poll: float = 2.0) -> str:
        deadline = time.monotonic() + timeout
        while aws_secrets.CURRENT not in aws_secrets.describe_secret(self.client, self.secret_id).versions.get(token, ()):
            if time.monotonic() >= deadline:
                raise Unavailable(f"aws secretsmanager {self.secret_id}",
                                  f"the rotation function has not moved AWSCURRENT to {token} within {timeout:.0f} s")
            time.sleep(poll)
        return token

    def material(self, version: str) -> Material:
        cur = aws_secrets.read_current(self.client, self.secret_id)
        if cur.version_id != version:
            raise Refused(f"aws secretsmanager {self.secret_id}",
                          f"AWSCURRENT is now {cur.version_id}, not the rotated version {version}: someone rotated it since; re-plan")
        return {"value": cur.value}

    def revoke(self, version: str | None) -> dict[str, Any]:
        """AWSPREVIOUS off the exposed version, and every older version made unreadable by VersionId (resource policy)."""
        retired = aws_secrets.retire_previous(self.client, self.secret_id)
        old = [v for v in aws_secrets.all_version_ids(self.client, self.secret_id) if v != version]
        return {"retired": retired, "denied_versions": aws_secrets.deny_versions(self.client, self.secret_id, old)}

    def verify(self, version: str) -> tuple[bool, str]:
        cur = aws_secrets.describe_secret(self.client, self.secret_id).current_version_id
        return cur == version, f"AWSCURRENT is on {cur}, expected {version}"


class AzureKeyVault(Backend):
    """Key Vault: a new version; the exposed (older, enabled) versions disabled, never deleted."""

    @property
    def client(self):
        return self.clients.get("azure")

    @property
    def secret(self) -> str:
        return self.ref_str("name", "secret")

    def base(self) -> dict[str, Any]:
        return {"before": [v.version for v in azure_keyvault.list_versions(self.client, self.secret)]}

    def recover(self, base: Mapping[str, Any]) -> str | None:
        before = set(base.get("before") or [])
        fresh = [v for v in azure_keyvault.list_versions(self.client, self.secret) if v.version not in before and v.enabled]
        return fresh[-1].version if fresh else None

    def create(self, base: Mapping[str, Any]) -> str:
        return azure_keyvault.set_secret_version(self.client, self.secret, new_password(), content_type="text/plain")

    def material(self, version: str) -> Material:
        value = read_azure_version(self.client, self.secret, version)
        return {"value": value}

    def revoke(self, version: str | None) -> dict[str, Any]:
        versions = azure_keyvault.list_versions(self.client, self.secret)
        ids = [v.version for v in versions]
        upto = ids.index(version) if version in ids else len(ids)
        old = [v.version for v in versions[:upto] if v.enabled and v.version != version]
        return {"disabled": azure_keyvault.disable_versions(self.client, self.secret, old)}

    def verify(self, version: str) -> tuple[bool, str]:
        enabled = [v.version for v in azure_keyvault.list_versions(self.client, self.secret) if v.enabled]
        return (bool(enabled) and enabled[-1] == version), f"newest enabled version is {enabled[-1] if enabled else None}"


class GcpSecretManager(Backend):
    """Secret Manager: add a version; older enabled versions disabled (``enable`` brings one back)."""

    @property
    def client(self):
        return self.clients.get("gcp")

    @property
    def secret(self) -> str:
        return gcp_name(self.ref.get("secret") or self.ref.get("name"), self.ref.get("project"), self.clients.backends,
                        f"secret {self.name}")

    def base(self) -> dict[str, Any]:
        nums = [int(v.version) for v in gcp_secrets.list_versions(self.client, self.secret) if v.version.isdigit()]
        return {"max_version": max(nums, default=0)}

    def current(self) -> str | None:
        top = int(self.base()["max_version"])
        return str(top) if top else None

    def recover(self, base: Mapping[str, Any]) -> str | None:
        top = int(base.get("max_version") or 0)
        fresh = [int(v.version) for v in gcp_secrets.list_versions(self.client, self.secret)
                 if v.version.isdigit() and int(v.version) > top and v.enabled]
        return str(min(fresh)) if fresh else None

    def create(self, base: Mapping[str, Any]) -> str:
        return gcp_secrets.add_version(self.client, self.secret, new_password())

    def material(self, version: str) -> Material:
        return {"value": read_gcp_version(self.client, self.secret, version)}

    def revoke(self, version: str | None) -> dict[str, Any]:
        old = [v.version for v in gcp_secrets.list_versions(self.client, self.secret)
               if v.enabled and v.version.isdigit() and int(v.version) < int(version or 0)]
        return {"disabled": gcp_secrets.disable_versions(self.client, self.secret, old)}

    def verify(self, version: str) -> tuple[bool, str]:
        enabled = [int(v.version) for v in gcp_secrets.list_versions(self.client, self.secret) if v.enabled and v.version.isdigit()]
        top = max(enabled, default=None)
        return top == int(version), f"newest enabled version is {top}, expected {version}"


class AwsIamKey(Backend):
    """An IAM user's access key. AWS never shows a secret access key again, so see ``tasks/rotate/stage.py`` for the stash rule."""

    default_field = None
    needs_stash = True

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self._fresh: tuple[str, Material] | None = None  # the key this process created, while it lives
        self.old: list[str] = []  # the exposed key ids, fixed by the stage's "old-keys" step before anything changes
        self.stash_reader: Callable[[], Material] | None = None  # set by the stage: reads the pair back from the copy

    @property
    def client(self):
        return self.clients.get("iam")

    @property
    def user(self) -> str:
        return self.ref_str("user")

    def old_keys(self) -> list[str]:
        """The exposed keys: the one the ref names, or every key the user has before the rotation."""
        keys = [k.access_key_id for k in aws_iam.list_access_keys(self.client, self.user)]
        named = self.ref.get("access_key_id")
        return [k for k in keys if k == named] if named else keys

    def base(self) -> dict[str, Any]:
        return {"old": list(self.old)}

    def recover(self, base: Mapping[str, Any]) -> str | None:
        """Adopt an orphan key only when the stash holds its secret; delete every other orphan."""
        old = set(base.get("old") or [])
        orphans = [k.access_key_id for k in aws_iam.list_access_keys(self.client, self.user) if k.access_key_id not in old]
        adopt = None
        if orphans and self.stash_reader is not None:
            try:
                stashed = self.stash_reader()
                kid = stashed.get("access_key_id")
                if kid is not None and kid.get_secret_value() in orphans and "secret_access_key" in stashed:
                    adopt = kid.get_secret_value()
                    self._fresh = (adopt, stashed)
            except (NotFound, KeyError, ValueError):
                adopt = None
        for k in orphans:
            if k != adopt:
                aws_iam.deactivate_access_key(self.client, self.user, k)
                aws_iam.delete_access_key(self.client, self.user, k)
        return adopt

    def make_room(self, old: list[str]) -> list[str]:
        """Overlap under IAM's 2-key limit: free one slot, an inactive exposed key first, else the oldest exposed one."""
        keys = aws_iam.list_access_keys(self.client, self.user)
        if len(keys) < aws_iam.MAX_KEYS_PER_USER:
            return []
        exposed = [k for k in keys if k.access_key_id in old]
        if not exposed:
            raise Refused(f"aws iam user/{self.user}", "already has 2 keys and neither is the exposed one: a person must free a slot")
        victim = next((k for k in exposed if k.status == "Inactive"), exposed[0])
        aws_iam.deactivate_access_key(self.client, self.user, victim.access_key_id)
        aws_iam.delete_access_key(self.client, self.user, victim.access_key_id)
        return [victim.access_key_id]

    def create(self, base: Mapping[str, Any]) -> str:
        key = aws_iam.create_access_key(self.client, self.user)
        self._fresh = (key.access_key_id, {"access_key_id": SecretStr(key.access_key_id),
                                           "secret_access_key": key.secret_access_key})
        return key.access_key_id

    def material(self, version: str) -> Material:
        if self._fresh and self._fresh[0] == version:
            return self._fresh[1]
        if self.stash_reader is not None:
            try:
                stashed = self.stash_reader()
            except NotFound:
                stashed = {}
            kid = stashed.get("access_key_id")
            if kid is not None and kid.get_secret_value() == version and "secret_access_key" in stashed:
                self._fresh = (version, stashed)
                return stashed
        raise Lost(f"aws iam user/{self.user} key {version}: its secret access key was not stored anywhere readable")

    def discard(self, version: str) -> None:
        """Delete a new key whose secret was lost (a crash before any consumer stored it)."""
        aws_iam.deactivate_access_key(self.client, self.user, version)
        aws_iam.delete_access_key(self.client, self.user, version)

    def revoke_keys(self, old: list[str]) -> dict[str, Any]:
        present = {k.access_key_id for k in aws_iam.list_access_keys(self.client, self.user)}
        gone = []
        for k in old:
            if k in present:
                aws_iam.deactivate_access_key(self.client, self.user, k)  # reversible first, then for good
                aws_iam.delete_access_key(self.client, self.user, k)
            gone.append(k)
        return {"deleted_keys": gone}

    def verify(self, version: str) -> tuple[bool, str]:
        keys = {k.access_key_id: k.status for k in aws_iam.list_access_keys(self.client, self.user)}
        return keys.get(version) == "Active", f"key {version} is {keys.get(version, 'missing')}"


BACKENDS: dict[str, type[Backend]] = {
    "vault-kv": VaultKv,
    "vault-database-static-role": VaultStaticRole,
    "aws-secretsmanager": AwsSecretsManager,
    "azure-keyvault": AzureKeyVault,
    "gcp-secretmanager": GcpSecretManager,
    "aws-iam-access-key": AwsIamKey,
}


# --------------------------------------------------------------------------- read-backs (the integrations' read_version)


def read_azure_version(client, name: str, version: str) -> SecretStr:
    """One Key Vault version's value, masked (for handing the rotated value to consumers after a resume)."""
    return azure_keyvault.read_version(client, name, version)


def read_gcp_version(client, secret: str, version: str) -> SecretStr:
    """One Secret Manager version's payload, masked, checksum-checked."""
    return gcp_secrets.read_version(client, secret, version)


def gcp_name(secret: Any, project: Any, backends: Backends, where: str) -> str:
    """``projects/p/secrets/s`` from a full name, or a short name plus a project (the item's or backends.gcp_project)."""
    text = str(secret or "")
    if text.startswith("projects/"):
        return text
    proj = project or backends.gcp_project
    if not text or not proj:
        raise InputError(where, "a GCP secret needs a full name projects/<p>/secrets/<s>, or a name and backends.gcp_project")
    return f"projects/{proj}/secrets/{text}"


# --------------------------------------------------------------------------- consumers


@dataclass(frozen=True)
class ConsumerSpec:
    """A consumer as the plan carries it: its kind, a stable id, and the fields to reach it (no values)."""

    kind: str
    id: str
    fields: dict[str, Any]

    def get(self, key: str) -> Any:
        return self.fields.get(key)


def consumer_id(c: Mapping[str, Any], secret_name: str, backends: Backends | None = None) -> str:
    """A stable, readable id for a consumer (journal action and plan params)."""
    kind = c.get("kind")
    name = c.get("name") or c.get("key") or secret_name
    if kind == "github-actions-secret":
        if c.get("org"):
            return f"org:{c['org']}:{name}"
        if c.get("environment"):
            return f"env:{c.get('repo')}/{c['environment']}:{name}"
        return f"repo:{c.get('repo')}:{name}"
    if kind == "gitlab-variable":
        key = c.get("key") or c.get("name") or secret_name
        scope = f"@{c['environment']}" if c.get("environment") else ""
        return f"project:{c.get('project')}:{key}{scope}"
    if kind == "vault-kv":
        mount = c.get("mount") or (backends.vault_kv_mount if backends else "secret")
        return f"{mount}/{c.get('path')}#{c.get('key') or c.get('field') or 'value'}"
    if kind in ("aws-secretsmanager", "azure-keyvault"):
        return str(c.get("name") or c.get("path"))
    if kind == "gcp-secretmanager":
        return str(c.get("name") or c.get("path"))
    return str(c.get("note") or c.get("name") or "manual")


# --------------------------------------------------------------------------- where (for the plan)

_SYSTEM = {"vault-kv": "Vault KV", "vault-database-static-role": "Vault database", "vault-token": "Vault token",
           "aws-iam-access-key": "AWS IAM", "aws-secretsmanager": "AWS Secrets Manager", "azure-keyvault": "Azure Key Vault",
           "gcp-secretmanager": "GCP Secret Manager", "postgres-role": "PostgreSQL", "manual": "by hand",
           "github-actions-secret": "GitHub Actions secret", "gitlab-variable": "GitLab CI variable"}


def _host(url: Any) -> str:
    """``host[:port]`` of a URL (never its userinfo or path)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(str(url))
        return parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else ""
    except ValueError:
        return ""


def _gcp_parts(secret: Any, project: Any, backends: Backends | None) -> tuple[str, str]:
    text = str(secret or "")
    if text.startswith("projects/") and "/secrets/" in text:
        proj, _, name = text.removeprefix("projects/").partition("/secrets/")
        return proj, name.split("/", 1)[0]
    return str(project or (backends.gcp_project if backends else "") or "?"), text or "?"


def location(kind: str, ref: Mapping[str, Any], backends: Backends | None = None) -> tuple[str, str]:
    """(system, where) of a credential or a copy, precise enough to find it by hand: ``("AWS IAM account 1234...",
    "AWS IAM account 1234..., user ci-deployer, access key AKIA...")``. Ids and names only (the inventory holds no
    values). What the inventory does not say is said to be missing, not guessed."""
    b = backends or Backends()
    label = _SYSTEM.get(kind, kind)
    g = lambda *keys: next((str(ref[k]) for k in keys if ref.get(k)), "")  # noqa: E731
    if kind == "aws-iam-access-key":
        account = g("account", "account_id")
        system = f"{label} account {account}" if account else label
        key = g("access_key_id")
        return system, (f"{system}{'' if account else ' (account not named in the inventory)'}, user {g('user', 'username') or '?'}, "
                        + (f"access key {key}" if key else "every access key of the user (listed when rotation starts)"))
    if kind in ("vault-kv", "vault-database-static-role", "vault-token"):
        server = _host(b.vault_url) or "(backends.vault_url)"
        if kind == "vault-kv":
            mount = g("mount") or b.vault_kv_mount
            key = g("key")
            return f"{label} mount {mount}", (f"{label} {server}, mount {mount}, path {g('path', 'name') or '?'}"
                                                       + (f", key {key}" if key else ""))
        if kind == "vault-database-static-role":
            mount = g("mount") or b.vault_database_mount
            return f"{label} mount {mount}", f"{label} {server}, mount {mount}, static role {g('role') or '?'}"
        return f"{label} {server}", f"{label} {server}, accessor {g('accessor') or '?'}"
    if kind == "aws-secretsmanager":
        arn = g("arn")
        account = g("account", "account_id") or (arn.split(":")[4] if arn.count(":") >= 5 else "")
        region = g("region") or (arn.split(":")[3] if arn.count(":") >= 5 else "") or b.aws_region or "?"
        return f"{label} {region}", (f"{label} {'account ' + account + ', ' if account else ''}{region}, "
                                     f"secret {g('secret_id', 'name', 'path') or arn or '?'}")
    if kind == "azure-keyvault":
        vault_ = g("vault", "vault_url") or b.azure_vault_url or "(backends.azure_vault_url)"
        vault_ = _host(vault_) or vault_
        return f"{label} {vault_}", f"{label} {vault_}, secret {g('name', 'secret') or '?'}"
    if kind == "gcp-secretmanager":
        proj, name = _gcp_parts(g("secret", "name", "path"), g("project"), b)
        return f"{label} project {proj}", f"{label} project {proj}, secret {name}"
    if kind == "postgres-role":
        server = f"{g('host') or '?'}:{g('port') or 5432}/{g('dbname') or 'postgres'}"
        return f"{label} {server}", f"{label} {server}, role {g('role', 'username') or '?'}"
    if kind == "manual":
        return label, f"{label}: {g('where', 'note') or 'where it was issued (the inventory does not say)'}"
    if kind == "github-actions-secret":
        scope = (f"org {g('org')}" if g("org") else f"repository {g('repo') or '?'}"
                 + (f", environment {g('environment')}" if g("environment") else ""))
        return label, f"{label} {g('name') or '?'} in {scope}"
    if kind == "gitlab-variable":
        env = f" (environment {g('environment')})" if g("environment") else ""
        return label, f"{label} {g('key', 'name') or '?'} in project {g('project', 'repo') or '?'}{env}"
    shown = [f"{k} {v}" for k, v in ref.items() if v and k != "id" and not any(w in k for w in ("password", "token", "secret"))]
    return label, f"{label}: " + (", ".join(shown) or "(the inventory does not say where)")


def copy_text(c: Mapping[str, Any], backends: Backends | None = None) -> str:
    """One copy or consumer of a credential, as the plan lists it (with the part it holds)."""
    where = location(str(c.get("kind")), c, backends)[1]
    return where + (f" (its {c['field']})" if c.get("field") else "")


def pick(material: Material, field: str | None, default: str | None, kind: str, where: str) -> SecretStr | Material:
    """The part of the credential a consumer gets: its ``field``, the backend's default, or (copies only) all of it."""
    want = field or default
    if want is None:
        if kind in COPY_KINDS:
            return material
        raise InputError(where, f"this credential has parts {sorted(material)}: set the consumer's 'field' to one of them",
                         field="field")
    if want not in material:
        raise InputError(where, f"field {want!r} is not a part of this credential (parts: {sorted(material)})", field="field")
    return material[want]


def _as_text(value: SecretStr | Material) -> SecretStr:
    """A whole multi-part credential as one JSON string (for copies that hold a single string)."""
    if isinstance(value, SecretStr):
        return value
    return SecretStr(json.dumps({k: v.get_secret_value() for k, v in sorted(value.items())}, sort_keys=True))


def _write_github_actions_secret(spec: ConsumerSpec, secret_name: str, value: SecretStr | Material, clients: Connections,
                                 token_seed: tuple[str, ...], where: str) -> dict[str, Any]:
    name = spec.get("name") or secret_name
    w = write_actions_secret(clients.get("github"), name, _as_text(value), repo=spec.get("repo"),
                             environment=spec.get("environment"), org=spec.get("org"), visibility=spec.get("visibility"))
    return {"scope": w.scope, "created": w.created, "key_id": w.key_id}


def _write_gitlab_variable(spec: ConsumerSpec, secret_name: str, value: SecretStr | Material, clients: Connections,
                           token_seed: tuple[str, ...], where: str) -> dict[str, Any]:
    project = spec.get("project") or spec.get("repo")
    if not project:
        raise InputError(where, "a gitlab-variable consumer needs 'project'", field="project")
    key = spec.get("key") or spec.get("name") or secret_name
    w = clients.get("gitlab").set_project_variable(project, key, _as_text(value), environment_scope=spec.get("environment"))
    return {"scope": w.scope, "created": w.created, "masked": w.masked}


def _write_vault_kv(spec: ConsumerSpec, secret_name: str, value: SecretStr | Material, clients: Connections,
                    token_seed: tuple[str, ...], where: str) -> dict[str, Any]:
    client = clients.get("vault")
    path = spec.get("path") or spec.get("name")
    if not path:
        raise InputError(where, "a vault-kv consumer needs 'path'", field="path")
    mount = spec.get("mount") or clients.backends.vault_kv_mount
    parts: dict[str, SecretStr] = dict(value) if isinstance(value, dict) else {spec.get("key") or spec.get("field") or "value": value}
    try:
        current = vault.kv_read(client, path, mount=mount)
        data = {**current.data, **parts}
        if set(current.data) == set(data) and all(same_secret(current.data[k], data[k]) for k in data):
            return {"version": current.version, "unchanged": True}
        cas = current.version
    except NotFound:
        data, cas = parts, None
    version = vault.kv_write(client, path, data, mount=mount, cas=cas)
    if not vault.kv_version_matches(client, path, version, data, mount=mount):
        raise Refused(where, f"version {version} does not hold what was written")
    return {"version": version}


def _write_aws_secretsmanager(spec: ConsumerSpec, secret_name: str, value: SecretStr | Material, clients: Connections,
                              token_seed: tuple[str, ...], where: str) -> dict[str, Any]:
    sm = clients.get("secretsmanager")
    sid = spec.get("name") or spec.get("path")
    if not sid:
        raise InputError(where, "an aws-secretsmanager consumer needs 'name' (the secret id)", field="name")
    text = _as_text(value)
    if aws_secrets.current_value_matches(sm, sid, text):
        return {"unchanged": True}
    version = aws_secrets.put_new_version(sm, sid, text, client_request_token=stable_token(*token_seed, spec.kind, spec.id))
    if not aws_secrets.current_value_matches(sm, sid, text):
        raise Refused(where, f"AWSCURRENT does not hold the value written as {version}")
    return {"version": version}


def _write_azure_keyvault(spec: ConsumerSpec, secret_name: str, value: SecretStr | Material, clients: Connections,
                          token_seed: tuple[str, ...], where: str) -> dict[str, Any]:
    kv = clients.get("azure")
    name = spec.get("name")
    if not name:
        raise InputError(where, "an azure-keyvault consumer needs 'name'", field="name")
    text = _as_text(value)
    try:
        if azure_keyvault.current_value_matches(kv, name, text):
            return {"unchanged": True}
    except NotFound:
        pass
    version = azure_keyvault.set_secret_version(kv, name, text, content_type="text/plain")
    if not azure_keyvault.current_value_matches(kv, name, text, version=version):
        raise Refused(where, f"version {version} does not hold what was written")
    return {"version": version}


def _write_gcp_secretmanager(spec: ConsumerSpec, secret_name: str, value: SecretStr | Material, clients: Connections,
                             token_seed: tuple[str, ...], where: str) -> dict[str, Any]:
    gcp = clients.get("gcp")
    full = gcp_name(spec.get("name") or spec.get("path"), spec.get("project"), clients.backends, where)
    text = _as_text(value)
    try:
        if gcp_secrets.latest_matches(gcp, full, text):
            return {"unchanged": True}
    except NotFound:
        pass
    version = gcp_secrets.add_version(gcp, full, text)
    if not gcp_secrets.latest_matches(gcp, full, text, version=version):
        raise Refused(where, f"version {version} does not hold what was written")
    return {"version": version}


_WRITERS: dict[str, Callable[..., dict[str, Any]]] = {
    "github-actions-secret": _write_github_actions_secret,
    "gitlab-variable": _write_gitlab_variable,
    "vault-kv": _write_vault_kv,
    "aws-secretsmanager": _write_aws_secretsmanager,
    "azure-keyvault": _write_azure_keyvault,
    "gcp-secretmanager": _write_gcp_secretmanager,
}


def write_consumer(spec: ConsumerSpec, secret_name: str, value: SecretStr | Material, clients: Connections,
                   token_seed: tuple[str, ...]) -> dict[str, Any]:
    """Put the new value where ``spec`` points; return ids only. Copies are read back and compared afterwards.

    A copy already holding the value is left as it is (a resumed run adds no second version).
    """
    where = f"consumer {spec.kind} {spec.id}"
    writer = _WRITERS.get(spec.kind)
    if writer is None:
        raise InputError(where, f"no writer for consumer kind {spec.kind!r}")
    return writer(spec, secret_name, value, clients, token_seed, where)


def read_stash(spec: ConsumerSpec, clients: Connections) -> Material:
    """Read a whole credential back from a copy written by :func:`write_consumer` (the IAM stash)."""
    if spec.kind == "vault-kv":
        mount = spec.get("mount") or clients.backends.vault_kv_mount
        return dict(vault.kv_read(clients.get("vault"), spec.get("path") or spec.get("name"), mount=mount).data)
    if spec.kind == "aws-secretsmanager":
        cur = aws_secrets.read_current(clients.get("secretsmanager"), spec.get("name") or spec.get("path"))
        try:
            parsed = json.loads(cur.value.get_secret_value())
        except ValueError:
            return {}
        return {k: SecretStr(str(v)) for k, v in parsed.items()} if isinstance(parsed, dict) else {}
    raise InputError(f"consumer {spec.kind} {spec.id}", "only vault-kv and aws-secretsmanager copies can hold the IAM stash")
