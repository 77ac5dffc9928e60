"""Issuers the rotate stage drives itself, beyond IAM and Vault's static roles: PostgreSQL role passwords,
Vault/OpenBao tokens, Docker Hub personal access tokens and GitLab project/group access tokens; and how
each backend's *current* (exposed) value is read before anything changes.

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
* ``dockerhub-pat``: a new PAT (label ``<token_label>-dg-<tag>``, the old one's scopes)
  through Hub's ``/v2/access-tokens`` as the account (``ref.username``,
  ``ref.admin_password``: the account password, a credential reference); the old PAT
  (``ref.token_uuid``, or the one labelled ``ref.token_label``) is deactivated, then
  deleted. The stash holds ``value`` and ``uuid``; a resumed run adopts the tagged PAT
  the stash holds and deletes every other tagged one.
* ``gitlab-access-token``: GitLab's rotate API (``ref.project`` or ``ref.group``,
  ``ref.token_id``, ``ref.admin_token``): one call revokes the old token and issues the
  new one, so revoke-first and overlap are the same step. A crash before the stash
  write loses the new token: the resumed run rotates the live token of the same name
  again (which revokes the lost one), so no token stays alive that nobody holds.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

from digestguard.credentials import resolve
from digestguard.errors import InputError, NotFound
from integrations import aws_secrets, dockerhub, gitlab, postgres, vault
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


class DockerHubPat(_Stashed):
    """A Docker Hub personal access token: create a like-for-like PAT, deactivate and delete the exposed one."""

    default_field = "value"

    @property
    def api_url(self) -> str:
        return str(self.ref.get("api_url") or dockerhub.API_URL)

    @property
    def username(self) -> str:
        return self.ref_str("username")

    def _hub(self) -> dockerhub.DockerHub:
        password = resolve(self.ref_str("admin_password"), f"secret {self.name} ref.admin_password")
        if not password:
            raise InputError(f"secret {self.name}", "ref.admin_password resolved to nothing", field="ref.admin_password")
        return dockerhub.DockerHub(token=dockerhub.hub_user_login(self.api_url, self.username, password), api_url=self.api_url)

    def _label(self) -> str:
        return f"{self.ref.get('token_label') or self.name}-dg-{stable_token(*self.token_seed, 'dockerhub-pat')[:8]}"

    def _old(self, tokens: list[dockerhub.HubAccessToken]) -> dockerhub.HubAccessToken | None:
        if self.ref.get("token_uuid"):
            return next((t for t in tokens if t.uuid == self.ref["token_uuid"]), None)
        label = self.ref.get("token_label")
        if not label:
            raise InputError(f"secret {self.name}", "ref needs 'token_uuid' or 'token_label' (the exposed PAT)",
                             field="ref.token_uuid")
        return next((t for t in tokens if t.label == label), None)

    def base(self) -> dict[str, Any]:
        with self._hub() as hub:
            old = self._old(hub.list_access_tokens())
        return {"old_uuid": old.uuid if old else None}

    def recover(self, base: Mapping[str, Any]) -> str | None:
        stashed = self._stashed()
        held = self.stashed_version(stashed) if stashed else None
        adopt = None
        with self._hub() as hub:
            for t in hub.list_access_tokens():
                if t.label != self._label():
                    continue
                if t.uuid == held:
                    adopt, self._fresh = t.uuid, (t.uuid, stashed)
                else:  # made by an interrupted attempt, held by nobody
                    hub.delete_access_token(t.uuid)
        return adopt

    def create(self, base: Mapping[str, Any]) -> str:
        scopes = list(self.ref.get("scopes") or ["repo:read"])
        with self._hub() as hub:
            made, value = hub.create_access_token(self._label(), scopes)
        self._fresh = (made.uuid, {"value": value, "uuid": SecretStr(made.uuid), "username": SecretStr(self.username)})
        return made.uuid

    def stashed_version(self, material: Material) -> str | None:
        value, uuid = material.get("value"), material.get("uuid")
        if value is None or uuid is None:
            return None
        verdict, _ = dockerhub.pat_probe(self.api_url, self.username, value)
        return uuid.get_secret_value() if verdict == "accepted" else None

    def discard(self, version: str) -> None:
        with self._hub() as hub:
            hub.delete_access_token(version)

    def revoke(self, version: str | None) -> dict[str, Any]:
        with self._hub() as hub:
            old = self._old(hub.list_access_tokens())
            if old is None or old.uuid == version:
                return {"old_pat": None, "deleted": False}
            hub.set_access_token_active(old.uuid, False)
            return {"old_pat": old.uuid, "deactivated": True, "deleted": hub.delete_access_token(old.uuid)}

    def verify(self, version: str) -> tuple[bool, str]:
        with self._hub() as hub:
            t = next((t for t in hub.list_access_tokens() if t.uuid == version), None)
        return (t is not None and t.is_active), f"PAT {version} {'active' if t and t.is_active else 'missing or inactive'}"


class GitLabAccessToken(_Stashed):
    """A GitLab project or group access token, rotated by GitLab's rotate API (old revoked in the same call)."""

    default_field = "value"

    @property
    def api_url(self) -> str:
        return str(self.ref.get("api_url") or gitlab.DEFAULT_API_URL)

    def _owner(self) -> tuple[str, str]:
        if self.ref.get("project"):
            return "project", str(self.ref["project"])
        if self.ref.get("group"):
            return "group", str(self.ref["group"])
        raise InputError(f"secret {self.name}", "ref needs 'project' or 'group'", field="ref.project")

    def _client(self) -> gitlab.GitLabClient:
        token = resolve(self.ref_str("admin_token"), f"secret {self.name} ref.admin_token")
        if not token:
            raise InputError(f"secret {self.name}", "ref.admin_token resolved to nothing", field="ref.admin_token")
        return gitlab.GitLabClient(token, self.api_url)

    def _tokens(self, gl: gitlab.GitLabClient) -> list[dict[str, Any]]:
        return gl.list_access_tokens(*self._owner())  # type: ignore[arg-type]

    def base(self) -> dict[str, Any]:
        return {"old_token_id": int(self.ref.get("token_id") or 0) or None}

    def _name(self, tokens: list[dict[str, Any]]) -> str | None:
        tid = self.ref.get("token_id")
        hit = next((t for t in tokens if str(t.get("id")) == str(tid)), None)
        return str(hit["name"]) if hit else (str(self.ref["token_name"]) if self.ref.get("token_name") else None)

    def recover(self, base: Mapping[str, Any]) -> str | None:
        stashed = self._stashed()
        held = self.stashed_version(stashed) if stashed else None
        if held is not None and str(held) != str(self.ref.get("token_id")):
            self._fresh = (held, stashed)
            return held
        return None  # create() rotates whatever live token of that name exists: a lost one gets revoked

    def create(self, base: Mapping[str, Any]) -> str:
        kind, owner = self._owner()
        with self._client() as gl:
            tokens = self._tokens(gl)
            name = self._name(tokens)
            live = [t for t in tokens if t.get("active") and (str(t.get("id")) == str(self.ref.get("token_id"))
                                                             or (name is not None and t.get("name") == name))]
            if not live:
                raise NotFound(f"gitlab {kind} {owner}", f"no active access token {self.ref.get('token_id')} ({name}) to rotate")
            target = max(live, key=lambda t: int(t["id"]))  # the newest of the name: after a crash, the lost one
            made, value = gl.rotate_access_token(kind, owner, int(target["id"]))  # type: ignore[arg-type]
        version = str(made["id"])
        self._fresh = (version, {"value": value})
        return version

    def stashed_version(self, material: Material) -> str | None:
        value = material.get("value") or material.get("token")
        if value is None:
            return None
        verdict, who = gitlab.token_probe(self.api_url, value)
        return who.removeprefix("token ") if verdict == "accepted" else None

    def revoke(self, version: str | None) -> dict[str, Any]:
        return {"revoked_by": "GitLab rotate (the old token was revoked when the new one was issued)",
                "old_token_id": self.ref.get("token_id")}

    def verify(self, version: str) -> tuple[bool, str]:
        with self._client() as gl:
            t = next((t for t in self._tokens(gl) if str(t.get("id")) == str(version)), None)
        return bool(t and t.get("active")), f"access token {version} {'active' if t and t.get('active') else 'missing or revoked'}"


BACKENDS.update({"postgres-role": PostgresRole, "vault-token": VaultToken, "dockerhub-pat": DockerHubPat,
                 "gitlab-access-token": GitLabAccessToken})


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
            if isinstance(backend, GitLabAccessToken) and stashed:
                held = backend.stashed_version(stashed)
                return None if held is not None and held != str(backend.ref.get("token_id")) else stashed
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
    return isinstance(backend, (AwsIamKey, VaultToken, GitLabAccessToken))
