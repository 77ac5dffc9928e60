"""Issuers the rotate stage drives itself, beyond IAM and Vault's static roles: PostgreSQL role passwords
and Vault/OpenBao tokens; and how each backend's *current* (exposed) value is read before anything changes.

Both adapters answer the same five questions as ``tasks/rotate/backends.py`` (so the
stage keeps its one order and journal) and, like IAM keys, the new credential exists
only in this process until it is stored: ``needs_stash`` makes the stage write it to a
whole-credential copy (a ``vault-kv`` or ``aws-secretsmanager`` consumer without
``field``) before the step counts as done, and a resumed run reads it back from there.

* ``postgres-role``: ``ALTER ROLE ... PASSWORD`` as the admin from ``ref`` (``host``,
  ``port``, ``dbname``, ``role``, ``admin_user``, ``admin_password`` as a credential
  reference). The old password dies the moment the new one is set, so revoke-first
  and overlap are the same single step. A crash between ``ALTER ROLE`` and the stash
  write loses the new password: the resumed run sets another one (no credential stays
  alive that nobody holds).
* ``vault-token``: an orphan token with the exposed token's policies, tagged with a
  meta field derived from (incident, secret); the exposed token is revoked by its
  accessor (``ref.accessor``). A resumed run adopts the tagged token the stash holds
  and revokes every other tagged one, so no extra token stays alive.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

from digestguard.credentials import resolve
from digestguard.errors import InputError, NotFound
from integrations import aws_secrets, postgres, vault
from integrations._secret_values import new_password
from tasks.rotate.backends import (
    BACKENDS,
    AwsIamKey,
    AwsSecretsManager,
    Backend,
    Lost,
    Material,
    VaultKv,
    VaultStaticRole,
    stable_token,
)

_META = "digestguard_rotation"


class _Stashed(Backend):
    """A credential that exists only in this process until the stage stores it (``needs_stash``)."""

    needs_stash = True

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self._fresh: tuple[str, Material] | None = None
        self.stash_reader = None  # set by the stage: reads the credential back from its whole-credential copy

    def _stashed(self) -> Material:
        if self.stash_reader is None:
            return {}
        try:
            return dict(self.stash_reader())
        except (NotFound, KeyError, ValueError):
            return {}

    def stashed_version(self, material: Material) -> str | None:
        """The version id the stashed material belongs to (``None``: not a credential of ours)."""
        raise NotImplementedError

    def material(self, version: str) -> Material:
        if self._fresh and self._fresh[0] == version:
            return self._fresh[1]
        stashed = self._stashed()
        if stashed and self.stashed_version(stashed) == version:
            self._fresh = (version, stashed)
            return stashed
        raise Lost(f"{self.name}: new credential {version} was not stored anywhere readable")

    def discard(self, version: str) -> None:
        """Make a new credential nobody holds unusable (a crash before the stash write)."""


class PostgresRole(_Stashed):
    """A PostgreSQL login role's password, set by ``ALTER ROLE`` as the admin."""

    default_field = "password"

    @property
    def server(self) -> postgres.Server:
        return postgres.Server(host=self.ref_str("host"), port=int(self.ref.get("port") or 5432),
                               dbname=str(self.ref.get("dbname") or "postgres"))

    @property
    def role(self) -> str:
        return self.ref_str("role", "username")

    def _admin(self) -> tuple[str, SecretStr]:
        ref = self.ref_str("admin_password")
        value = resolve(ref, f"secret {self.name} ref.admin_password")
        if not value:
            raise InputError(f"secret {self.name}", "ref.admin_password resolved to nothing", field="ref.admin_password")
        return str(self.ref.get("admin_user") or "postgres"), SecretStr(value)

    def create(self, base: Mapping[str, Any]) -> str:
        password = new_password()
        user, admin = self._admin()
        postgres.set_role_password(self.server, user, admin, self.role, password)
        version = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        self._fresh = (version, {"username": SecretStr(self.role), "password": password})
        return version

    def stashed_version(self, material: Material) -> str | None:
        # the stash is ours when its password is the one the server accepts now: ask the issuer
        pw = material.get("password") or material.get("value")
        if pw is None:
            return None
        verdict, _ = postgres.try_login(self.server, self.role, pw)
        return "current" if verdict == "accepted" else None

    def material(self, version: str) -> Material:
        if self._fresh and self._fresh[0] == version:
            return self._fresh[1]
        stashed = self._stashed()
        if stashed and self.stashed_version(stashed) == "current":
            self._fresh = (version, stashed)
            return stashed
        raise Lost(f"postgres role {self.role}: the password set at {version} was not stored anywhere readable")

    def revoke(self, version: str | None) -> dict[str, Any]:
        return {"revoked_by": "ALTER ROLE (the old password stopped working when the new one was set)"}

    def verify(self, version: str) -> tuple[bool, str]:
        verdict, why = postgres.try_login(self.server, self.role, self.material(version)["password"])
        return verdict == "accepted", f"login with the new password: {verdict} ({why})"


class VaultToken(_Stashed):
    """A Vault/OpenBao token found in CI: a like-for-like orphan token, the exposed one revoked by accessor."""

    default_field = "value"

    @property
    def client(self):
        return self.clients.get("vault")

    @property
    def accessor(self) -> str:
        return self.ref_str("accessor")

    def _tag(self) -> str:
        return stable_token(*self.token_seed, "vault-token")

    def base(self) -> dict[str, Any]:
        return {"old_accessor": self.accessor}

    def _ours(self) -> list[str]:
        out = []
        for acc in vault.token_accessors(self.client):
            try:
                meta = vault.token_lookup_accessor(self.client, acc).get("meta") or {}
            except NotFound:
                continue
            if meta.get(_META) == self._tag():
                out.append(acc)
        return out

    def recover(self, base: Mapping[str, Any]) -> str | None:
        """Adopt the tagged token the stash holds; revoke every other token an interrupted attempt made."""
        stashed = self._stashed()
        held = self.stashed_version(stashed) if stashed else None
        adopt = None
        for acc in self._ours():
            if acc == held:
                adopt = acc
                self._fresh = (acc, stashed)
            else:
                vault.token_revoke_accessor(self.client, acc)
        return adopt

    def create(self, base: Mapping[str, Any]) -> str:
        try:
            like = vault.token_lookup_accessor(self.client, self.accessor)
        except NotFound:  # already revoked (revoke-first, or a person did it): mint with the inventory's policies
            like = {"policies": list(self.ref.get("policies") or ["default"]), "display_name": self.name}
        new = vault.token_create_like(self.client, like, meta={_META: self._tag()})
        self._fresh = (new.accessor, {"value": new.token})
        return new.accessor

    def stashed_version(self, material: Material) -> str | None:
        token = material.get("value") or material.get("token")
        if token is None:
            return None
        verdict, accessor = vault.token_probe(self.client.url, token)
        return accessor if verdict == "accepted" else None

    def discard(self, version: str) -> None:
        vault.token_revoke_accessor(self.client, version)

    def revoke(self, version: str | None) -> dict[str, Any]:
        return {"revoked_accessor": self.accessor, "was_live": vault.token_revoke_accessor(self.client, self.accessor)}

    def verify(self, version: str) -> tuple[bool, str]:
        try:
            vault.token_lookup_accessor(self.client, version)
        except NotFound:
            return False, f"token {version} does not exist"
        return True, ""


BACKENDS.update({"postgres-role": PostgresRole, "vault-token": VaultToken})


def current_material(backend: Backend) -> Material | None:
    """The exposed value as the backend holds it *before* the rotation changes anything (``None``: not readable).

    It is what the old-credential probe sends to the issuer; it lives in memory for the one rotation only.
    """
    try:
        if isinstance(backend, (AwsIamKey, _Stashed)):
            stashed = backend.stash_reader() if backend.stash_reader is not None else {}
            if isinstance(backend, AwsIamKey):
                kid = stashed.get("access_key_id")
                return stashed if kid is not None and kid.get_secret_value() in backend.old else None
            if isinstance(backend, VaultToken) and stashed:
                verdict, accessor = vault.token_probe(backend.client.url, stashed.get("value") or stashed["token"])
                return None if verdict == "accepted" and accessor != backend.accessor else stashed  # a live other token: new
            return stashed or None
        if isinstance(backend, VaultStaticRole):
            creds = vault.db_static_credentials(backend.client, backend.role, mount=backend.mount)
            return {"username": SecretStr(creds.username), "password": creds.password}
        if isinstance(backend, VaultKv):
            meta = vault.kv_metadata(backend.client, backend.path, mount=backend.mount)
            return backend.material(str(meta.current_version)) if meta.current_version else None
        if isinstance(backend, AwsSecretsManager):
            return {"value": aws_secrets.read_current(backend.client, backend.secret_id).value}
    except (NotFound, KeyError, ValueError):
        return None
    return None


def identifies_old(backend: Backend) -> bool:
    """Whether :func:`current_material` tells the exposed value from a new one by itself (a key id, a token accessor),
    so a resumed run may read it even after a write to the stash had started."""
    return isinstance(backend, (AwsIamKey, VaultToken))
