"""The inventory: the user's description of their estate (``inventory.yaml``).

Every stage reads it: where images live (registries, engines, clusters), where
CI runs and logs, where network logs are, which secrets exist and who consumes
them, which repositories get pin pull requests, where Slack is. It is
validated strictly (unknown keys are errors) and credentials in it are
references only (see ``digestguard.credentials``). Relative paths resolve
against the inventory file's folder, so an inventory and its logs can travel
together. See ``inventory.example.yaml`` at the repository root.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from digestguard.credentials import check_reference, refuse_literal_credentials
from digestguard.egress import EgressSettings, RunnerGroup, check_runner_groups
from digestguard.errors import InputError
from digestguard.journal import JOURNAL_ENV, check_location, is_postgres_url
from digestguard.netlog import FORMATS
from digestguard.safe_yaml import load_yaml_file

_log = logging.getLogger("digestguard.inventory")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _cred(v: str | None, field: str) -> str | None:
    if v is None:
        return None
    return check_reference(v, "inventory", field)


class Registry(_Model):
    """A registry or pull-through cache we can query (and, with approval, delete from)."""

    name: str
    kind: Literal["distribution", "dockerhub", "ecr", "gar"] = "distribution"
    url: str | None = Field(None, description="registry base URL (distribution, dockerhub) or the vendor endpoint (ecr: AWS endpoint, gar: REST API)")
    api_url: str | None = Field(None, description="dockerhub: the Hub API (repository info, audit logs); default https://hub.docker.com")
    username: str | None = Field(None, description="credential reference for basic/token auth")
    password: str | None = Field(None, description="credential reference")
    token: str | None = Field(None, description="credential reference (bearer token / GAR access token)")
    region: str | None = None
    account_id: str | None = None
    project: str | None = None
    location: str | None = None
    repositories: list[str] = Field(default_factory=list, description="repository names in this registry to check (default: the advisory's)")
    mirror_of: str | None = Field(None, description="upstream registry this cache mirrors, e.g. docker.io")

    @field_validator("username", "password", "token")
    @classmethod
    def _refs(cls, v: str | None, info: Any) -> str | None:
        return _cred(v, f"registries.{info.field_name}")


class DockerEngine(_Model):
    name: str
    url: str = Field(description="unix:///..., tcp://host:port or ssh://user@host")
    tls_verify: bool = False

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not v.startswith(("unix://", "tcp://", "ssh://", "http://", "https://")):
            raise ValueError("docker engine url must start with unix://, tcp://, ssh://, http:// or https://")
        return v


class KubernetesCluster(_Model):
    name: str
    url: str | None = None
    kubeconfig: str | None = None
    context: str | None = None
    token: str | None = None
    namespaces: list[str] = Field(default_factory=list, description="empty = all namespaces")
    verify_tls: bool = True

    @field_validator("token")
    @classmethod
    def _ref(cls, v: str | None) -> str | None:
        return _cred(v, "kubernetes.token")


class CISource(_Model):
    """Where CI job logs come from."""

    name: str
    kind: Literal["folder", "github", "gitlab"]
    path: str | None = Field(None, description="folder of exported job logs (kind=folder)")
    repo: str | None = Field(None, description="owner/name (github) or project id/path (gitlab)")
    api_url: str | None = None
    token: str | None = None

    @field_validator("token")
    @classmethod
    def _ref(cls, v: str | None) -> str | None:
        return _cred(v, "ci_logs.token")

    @model_validator(mode="after")
    def _needs(self) -> "CISource":
        if self.kind == "folder" and not self.path:
            raise ValueError("a folder CI source needs 'path'")
        if self.kind in ("github", "gitlab") and not self.repo:
            raise ValueError(f"a {self.kind} CI source needs 'repo'")
        return self


class NetworkLogSource(_Model):
    name: str | None = None
    kind: Literal["file", "cloudwatch"] = "file"
    path: str | None = None
    format: str | None = Field(None, description="zeek-tsv, zeek-json, route53, squid, combined, jsonl, text; auto when omitted")
    log_group: str | None = None
    region: str | None = None
    endpoint_url: str | None = None

    @model_validator(mode="after")
    def _needs(self) -> "NetworkLogSource":
        if self.kind == "file" and not self.path:
            raise ValueError("a file network-log source needs 'path'")
        if self.kind == "cloudwatch" and not self.log_group:
            raise ValueError("a cloudwatch network-log source needs 'log_group'")
        if self.format is not None and self.format not in FORMATS:
            raise ValueError(f"format {self.format!r} is not a log format digestguard reads ({', '.join(FORMATS)})")
        if self.name is None:
            self.name = self.path or self.log_group
        return self


class Consumer(_Model):
    """A place that holds a copy of a secret and must be updated after rotation."""

    kind: Literal["github-actions-secret", "gitlab-variable", "vault-kv", "aws-secretsmanager", "azure-keyvault", "gcp-secretmanager", "manual"]
    repo: str | None = None
    name: str | None = None
    environment: str | None = None
    org: str | None = None
    visibility: Literal["all", "private", "selected"] | None = None
    project: str | None = None
    key: str | None = None
    path: str | None = None
    mount: str | None = None
    field: str | None = Field(None, description="which part of the new credential to store (e.g. access_key_id, secret_access_key, value)")
    note: str | None = None


SecretBackend = Literal[
    "vault-kv", "vault-database-static-role", "aws-iam-access-key", "aws-secretsmanager", "azure-keyvault", "gcp-secretmanager",
    "postgres-role", "vault-token", "dockerhub-pat", "gitlab-access-token", "manual",
]

StoreKind = Literal["vault-kv", "aws-secretsmanager", "azure-keyvault", "gcp-secretmanager"]
STORE_KINDS: tuple[str, ...] = ("vault-kv", "aws-secretsmanager", "azure-keyvault", "gcp-secretmanager")
"""Backends that only hold a copy of a credential: writing a new value there tells no issuer anything."""

IssuerKind = Literal["aws-iam-access-key", "postgres-role", "vault-database-static-role", "vault-token",
                     "dockerhub-pat", "gitlab-access-token", "manual"]
DRIVEN_ISSUERS: tuple[str, ...] = ("aws-iam-access-key", "postgres-role", "vault-database-static-role", "vault-token",
                                   "dockerhub-pat", "gitlab-access-token")
"""Issuers the rotate stage mints and revokes at itself (the others are a person's job)."""


class Probe(_Model):
    """A declared check of whether a credential still works, sent only to its own issuer's URL.

    ``send``: ``bearer`` (``Authorization: Bearer <value>``), ``basic`` (``username`` + the value as
    password) or ``header`` (the value in header ``header``). A status in ``refused_status`` means the
    credential is dead; one in ``ok_status`` means it works; anything else proves nothing.
    """

    url: str
    method: Literal["GET", "POST", "HEAD"] = "GET"
    send: Literal["bearer", "basic", "header"] = "bearer"
    header: str | None = None
    username: str | None = Field(None, description="basic: the user name (not a secret)")
    refused_status: list[int] = Field(default_factory=lambda: [401, 403])
    ok_status: list[int] = Field(default_factory=lambda: [200])

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("https://", "http://")):
            raise ValueError("a probe url must be http(s)://")
        return v

    @model_validator(mode="after")
    def _needs(self) -> "Probe":
        if self.send == "header" and not self.header:
            raise ValueError("a probe with send: header needs 'header'")
        if set(self.refused_status) & set(self.ok_status):
            raise ValueError("a status cannot mean both refused and ok")
        return self


class Issuer(_Model):
    """Where a credential is minted and revoked (the party that accepts it), and how to ask it about one."""

    kind: IssuerKind
    ref: dict[str, Any] = Field(default_factory=dict, description="issuer-specific: user, role, dsn, accessor, token name ...")
    probe: Probe | None = Field(None, description="declared probe (manual and HTTP issuers); driven issuers have a built-in one")
    where: str | None = Field(None, description="manual: where a person revokes and re-issues it")

    @field_validator("ref")
    @classmethod
    def _refs(cls, v: dict[str, Any]) -> dict[str, Any]:
        for k in ("admin_password", "admin_token", "token"):
            if isinstance(v.get(k), str):
                _cred(v[k], f"issuer.ref.{k}")
        return v


class Store(_Model):
    """A place a copy of the credential lives; one store of a secret is its ``primary``."""

    kind: StoreKind
    primary: bool = False
    path: str | None = None
    mount: str | None = None
    key: str | None = None
    name: str | None = None
    project: str | None = None
    field: str | None = Field(None, description="which part of the credential this copy holds (default: all / value)")

    def location(self) -> dict[str, Any]:
        """The store as a backend ``ref`` (primary) or consumer fields (other copies)."""
        return self.model_dump(exclude_none=True, exclude={"kind", "primary"})


class Secret(_Model):
    """A credential the estate holds: its issuer, the stores holding copies, and the consumers using it.

    Older inventories name one ``backend`` + ``ref`` (and consumers) instead; they keep loading. A new-style
    entry may leave ``backend`` out: it is the issuer's kind when the playbook drives that issuer, else the
    primary store's kind (or ``manual``). Stores other than the primary are updated like consumers.
    """

    name: str
    backend: SecretBackend | None = None
    ref: dict[str, Any] = Field(default_factory=dict, description="backend-specific location: path/mount, user, secret_id, name, project ...")
    issuer: Issuer | None = None
    stores: list[Store] = Field(default_factory=list)
    consumers: list[Consumer] = Field(default_factory=list)
    strategy: Literal["revoke-first", "overlap"] | None = Field(None, description="default: revoke-first on confirmed exposure, overlap otherwise")
    aliases: list[str] = Field(default_factory=list, description="other names CI files use for it (e.g. AWS_ACCESS_KEY_ID)")
    owner: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> "Secret":
        primaries = [s for s in self.stores if s.primary]
        if len(primaries) > 1:
            raise ValueError(f"secret {self.name}: {len(primaries)} stores are marked primary; mark one")
        if len(self.stores) > 1 and not primaries:
            raise ValueError(f"secret {self.name}: {len(self.stores)} stores and none marked primary; mark one")
        if self.backend is None:
            if self.issuer is not None and self.issuer.kind in DRIVEN_ISSUERS:
                self.backend = self.issuer.kind  # type: ignore[assignment]
                self.ref = self.ref or dict(self.issuer.ref)
            elif self.issuer is not None:
                # an issuer the playbook cannot drive: a person revokes and re-issues; writing a random
                # string into the stores would only look like a rotation
                self.backend = "manual"
                self.ref = self.ref or ({"where": self.issuer.where} if self.issuer.where else {})
            elif self.stores:
                store = self.primary_store()
                assert store is not None
                self.backend = store.kind
                self.ref = self.ref or store.location()
            else:
                raise ValueError(f"secret {self.name}: needs an issuer, stores or a backend")
        return self

    def primary_store(self) -> Store | None:
        """The primary store (the only store when there is one)."""
        return next((s for s in self.stores if s.primary), self.stores[0] if len(self.stores) == 1 else None)

    def store_copies(self) -> list[Consumer]:
        """Every store except the one the rotation writes first, as consumers to update."""
        first = self.primary_store() if self.backend in STORE_KINDS or self.backend == "manual" else None
        return [Consumer(kind=s.kind, **s.location()) for s in self.stores if s is not first]

    def all_consumers(self) -> list[Consumer]:
        """What the rotation updates after the new credential exists: the other stores, then the consumers."""
        return [*self.store_copies(), *self.consumers]

    def issuer_kind(self) -> str | None:
        """The issuer's kind: declared, or implied by a backend that is an issuer (IAM, database roles, tokens)."""
        if self.issuer is not None:
            return self.issuer.kind
        return self.backend if self.backend in DRIVEN_ISSUERS else None

    def warnings(self) -> list[str]:
        """What the inventory leaves unsaid about this secret that a responder needs to know."""
        if self.issuer_kind() is None and (self.stores or self.backend in STORE_KINDS):
            kinds = sorted({s.kind for s in self.stores} | ({self.backend} if self.backend in STORE_KINDS else set()))
            return [f"secret {self.name}: has stores ({', '.join(kinds)}) but no issuer: rotating it only replaces the copies, "
                    "the old credential keeps working wherever it was issued; add 'issuer' (kind, and a probe for a manual one)"]
        return []


class Repository(_Model):
    name: str
    kind: Literal["github", "gitlab", "local"] = "github"
    path: str = Field(description="local checkout")
    remote: str | None = Field(None, description="git remote name or URL to push the pin branch to (default: origin)")
    base_branch: str | None = None
    api_url: str | None = None
    token: str | None = None

    @field_validator("token")
    @classmethod
    def _ref(cls, v: str | None) -> str | None:
        return _cred(v, "repositories.token")


class Slack(_Model):
    channel: str
    token: str
    create_channel: bool = Field(False, description="open a new channel named after the incident")
    api_url: str | None = Field(None, description="Web API base URL override (tests, Enterprise Grid proxies)")
    app_token: str | None = Field(None, description="app-level token reference (xapp-, connections:write): approve/reject "
                                                    "buttons over Socket Mode")

    @field_validator("token")
    @classmethod
    def _ref(cls, v: str) -> str:
        return check_reference(v, "inventory", "slack.token")

    @field_validator("app_token")
    @classmethod
    def _app_ref(cls, v: str | None) -> str | None:
        return check_reference(v, "inventory", "slack.app_token") if v else None


class Backends(_Model):
    """Connection settings for secret backends (credentials as references)."""

    vault_url: str | None = None
    vault_token: str | None = None
    vault_kv_mount: str = "secret"
    vault_database_mount: str = "database"
    aws_region: str | None = None
    aws_endpoint_url: str | None = None
    aws_cloudtrail_endpoint_url: str | None = Field(None, description="CloudTrail endpoint override (default: aws_endpoint_url)")
    azure_vault_url: str | None = None
    azure_tenant_id: str | None = None
    azure_client_id: str | None = None
    azure_client_secret: str | None = None
    azure_authority: str | None = None
    azure_verify: str | bool | None = None
    gcp_project: str | None = None
    gcp_endpoint: str | None = None
    github_api_url: str | None = None
    github_token: str | None = None
    github_writes_per_minute: int = Field(80, ge=1, le=100_000, description=(
        "GitHub's content-creating requests (pull requests, Actions secrets) per minute, paced across the run: "
        "80 is github.com's documented secondary limit; a GitHub Enterprise Server sets its own"))
    gitlab_api_url: str | None = None
    gitlab_token: str | None = None

    @field_validator("vault_token", "azure_client_secret", "github_token", "gitlab_token")
    @classmethod
    def _refs(cls, v: str | None, info: Any) -> str | None:
        return _cred(v, f"backends.{info.field_name}")


class Approver(_Model):
    """A person who may answer a gate, with the identities that prove it is them."""

    name: str = Field(min_length=1, description="the handle the record shows (compared trimmed and case-folded)")
    slack_user_id: str | None = Field(None, description="Slack user id (U...) whose button clicks count as this person")
    ssh_key: str | None = Field(None, description="SSH public key line (allowed-signers key) that verifies terminal answers")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        v = " ".join(v.split()).casefold()
        if not v or any(c in v for c in '",*?!'):
            raise ValueError('an approver needs a name without quotes, commas or wildcards (",*?!)')
        return v


class ApprovalPolicy(_Model):
    approvers: list[Approver] = Field(default_factory=list, description="who may answer (empty: anyone who names themself)")
    require_verified: bool = Field(False, description="refuse asserted identities (a Prefect UI answer); count only "
                                                      "SSH-signed or Slack answers")
    distinct_from_trigger: bool = Field(False, description="the approver must differ from whoever started the run "
                                                           "(the run must then say who started it: triggered_by)")
    two_approvers: bool = Field(False, description="two distinct approvers per destructive stage")
    timeout_seconds: int = Field(3600, ge=10)

    @model_validator(mode="after")
    def _distinct_people(self) -> "ApprovalPolicy":
        for attr in ("name", "slack_user_id", "ssh_key"):
            seen = [getattr(a, attr) for a in self.approvers if getattr(a, attr)]
            if len(seen) != len(set(seen)):
                raise ValueError(f"approvals.approvers: two approvers share one {attr}: one person, one entry")
        return self

    def approver(self, name: str) -> Approver | None:
        """The listed approver with this (normalised) name."""
        return next((a for a in self.approvers if a.name == name), None)


class WatchedImage(_Model):
    reference: str
    cosign_public_key: str | None = Field(None, description="path to a PEM public key")
    allow: list[str] = Field(default_factory=list, description="digests expected as updates")


class Inventory(_Model):
    registries: list[Registry] = Field(default_factory=list)
    docker_engines: list[DockerEngine] = Field(default_factory=list)
    kubernetes: list[KubernetesCluster] = Field(default_factory=list)
    ci_logs: list[CISource] = Field(default_factory=list)
    network_logs: list[NetworkLogSource] = Field(default_factory=list)
    secrets: list[Secret] = Field(default_factory=list)
    repositories: list[Repository] = Field(default_factory=list)
    slack: Slack | None = None
    backends: Backends = Field(default_factory=Backends)
    approvals: ApprovalPolicy = Field(default_factory=ApprovalPolicy)
    images: list[WatchedImage] = Field(default_factory=list)
    runners: list[RunnerGroup] = Field(default_factory=list, description="CI runner groups: hosts and address ranges "
                                                                         "(egress baselines, tasks/egress/)")
    egress: EgressSettings = Field(default_factory=EgressSettings)
    journal: str | None = Field(None, description="journal: a SQLite path (default .digestguard/journal.sqlite next to the "
                                                  "inventory) or a postgresql:// URL, password by reference; "
                                                  "DIGESTGUARD_JOURNAL overrides it")
    base_dir: str = Field(".", description="set by the loader: the inventory file's folder")
    _secret_index: dict[str, Secret] = PrivateAttr(default_factory=dict)
    _secret_key: tuple[int, int] | None = PrivateAttr(default=None)

    @field_validator("journal")
    @classmethod
    def _journal_holds_no_password(cls, v: str | None) -> str | None:
        return check_location(v, "journal") if v and is_postgres_url(v) else v

    @model_validator(mode="after")
    def _unique_names(self) -> "Inventory":
        for section in ("registries", "docker_engines", "ci_logs", "secrets", "repositories", "kubernetes"):
            counts = Counter(x.name for x in getattr(self, section))
            dupes = sorted(n for n, c in counts.items() if c > 1)
            if dupes:
                raise ValueError(f"{section}: duplicate names {dupes}")
        problems = check_runner_groups(self.runners, self.egress, [s.name or "" for s in self.network_logs])
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def runner_group(self, name: str) -> RunnerGroup | None:
        return next((g for g in self.runners if g.name == name), None)

    def resolve_path(self, p: str) -> Path:
        """A path from the file, resolved against the inventory's folder."""
        path = Path(p).expanduser()
        return path if path.is_absolute() else (Path(self.base_dir) / path).resolve()

    def journal_location(self) -> str:
        """Where the journal lives: ``DIGESTGUARD_JOURNAL`` when set (relative paths against the working directory),
        else the file's ``journal:`` (relative to the inventory's folder), else ``.digestguard/journal.sqlite`` next
        to the inventory. A PostgreSQL URL comes back as written (its password, if any, by reference)."""
        env = os.environ.get(JOURNAL_ENV, "").strip()
        if env:
            return check_location(env, JOURNAL_ENV) if is_postgres_url(env) else str(Path(env).expanduser().resolve())
        raw = self.journal or ".digestguard/journal.sqlite"
        return raw if is_postgres_url(raw) else str(self.resolve_path(raw))

    def journal_path(self) -> Path:
        """The journal's SQLite file; an error when the journal is on PostgreSQL (use ``journal_location``)."""
        location = self.journal_location()
        if is_postgres_url(location):
            raise InputError("inventory", "the journal is on PostgreSQL, not in a file", "journal")
        return Path(location)

    def warnings(self) -> list[str]:
        """Every secret's warnings (see :meth:`Secret.warnings`), in inventory order."""
        return [w for s in self.secrets for w in s.warnings()]

    def link_origins(self) -> list[str]:
        """The web origins this inventory names (forges, registries, CI sources): the only places a report, a
        Slack message or a pull request body links to. A forge's API origin brings its web origin
        (``api.github.com`` -> ``github.com``); a GitHub or GitLab entry without ``api_url`` brings the
        public one. Any other URL, from CI metadata, a vendor answer or an advisory, is shown as inert text."""
        from digestguard.markdown import origin_of

        urls: list[str] = []
        defaults = {"github": "https://api.github.com", "gitlab": "https://gitlab.com"}
        for e in [*self.ci_logs, *self.repositories]:
            urls.append(e.api_url or defaults.get(e.kind, ""))
        for r in self.registries:
            urls += [r.url or "", r.api_url or ""]
        b = self.backends
        urls += [b.github_api_url or "", b.gitlab_api_url or ""]
        out: list[str] = []
        for u in urls:
            o = origin_of(u) if u else None
            if o is None:
                continue
            out.append(o)
            scheme, _, host = o.partition("://")
            if host.startswith("api."):
                out.append(f"{scheme}://{host[4:]}")
        return sorted(set(out))

    def secret(self, name: str) -> Secret | None:
        """The secret named ``name`` (or with that alias), first in file order; an indexed look-up."""
        key = (id(self.secrets), len(self.secrets))
        if self._secret_key != key:  # built on first use, rebuilt when the list is replaced or grows
            index: dict[str, Secret] = {}
            for s in self.secrets:
                for n in (s.name, *s.aliases):
                    index.setdefault(n, s)
            self._secret_index, self._secret_key = index, key
        return self._secret_index.get(name)


# What each backend needs to act, checked when the inventory is loaded (before anything is revoked): for a
# secret's backend ``ref`` (any one of the keys), and for each consumer kind (any one of the fields).
_REF_NEEDS: dict[str, tuple[str, ...]] = {
    "vault-kv": ("path",), "vault-database-static-role": ("role",), "aws-iam-access-key": ("user",),
    "aws-secretsmanager": ("secret_id", "name", "arn"), "azure-keyvault": ("name", "secret"),
    "gcp-secretmanager": ("name", "secret"), "vault-token": ("accessor",),
}
_POSTGRES_NEEDS = (("host",), ("role", "username"), ("admin_password",))
_CONSUMER_NEEDS: dict[str, tuple[str, ...]] = {
    "github-actions-secret": ("repo", "org"), "gitlab-variable": ("project", "repo"), "vault-kv": ("path", "name"),
    "aws-secretsmanager": ("name", "path"), "azure-keyvault": ("name",), "gcp-secretmanager": ("name", "path"),
}
_COPY_KINDS = ("vault-kv", "aws-secretsmanager", "azure-keyvault", "gcp-secretmanager")
_PARTS: dict[str, tuple[str, ...]] = {"aws-iam-access-key": ("access_key_id", "secret_access_key")}
"""Credentials with several parts: a consumer that holds one string must say which part (its ``field``)."""


def check_backend_needs(inv: Inventory, source: str) -> None:
    """Refuse, naming the file and the field, an entry a backend could not act on: a missing ``ref`` key, a
    consumer without its address, a one-string consumer of a two-part credential without ``field`` (the IAM case:
    the old key would be deleted and the new secret stored nowhere)."""
    for i, sec in enumerate(inv.secrets):
        at = f"secrets[{i}] ({sec.name})"
        backend = str(sec.backend or "")
        needs = [_REF_NEEDS[backend]] if backend in _REF_NEEDS else list(_POSTGRES_NEEDS) if backend == "postgres-role" else []
        place = "issuer.ref" if sec.issuer is not None and backend == sec.issuer.kind else "ref"
        for keys in needs:
            if not any(sec.ref.get(k) for k in keys):
                raise InputError(source, f"{backend} needs {' or '.join(repr(k) for k in keys)}", f"{at}.{place}.{keys[0]}")
        parts = _PARTS.get(backend)
        for j, c in enumerate(sec.consumers):
            cat = f"{at}.consumers[{j}]"
            want = _CONSUMER_NEEDS.get(c.kind, ())
            if want and not any(getattr(c, k) for k in want):
                raise InputError(source, f"a {c.kind} consumer needs {' or '.join(repr(k) for k in want)}", f"{cat}.{want[0]}")
            if parts and c.kind not in _COPY_KINDS and c.kind != "manual":
                if not c.field:
                    raise InputError(source, f"this {backend} credential has parts {', '.join(parts)}: say which one this "
                                             f"{c.kind} consumer holds", f"{cat}.field")
                if c.field not in parts:
                    raise InputError(source, f"{c.field!r} is not a part of a {backend} credential (parts: "
                                             f"{', '.join(parts)})", f"{cat}.field")


def parse_inventory(data: Any, source: str, base_dir: Path) -> Inventory:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(source, "an inventory is a mapping at the top level")
    try:
        inv = Inventory.model_validate({**data, "base_dir": str(base_dir)})
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            if loc == "(top level)" and msg.removeprefix("Value error, ").startswith(("runners", "egress")):
                # checks across sections (runner groups): each problem names its own field, one line each
                lines += [f"{source}: {part.removeprefix('Value error, ')}" for part in msg.split("\n")]
                continue
            lines.append(f"{source}: {loc}: {msg}")
        if len(lines) == 1:  # one mistake, one line naming file and field
            err = e.errors()[0]
            raise InputError(source, "unknown key" if err["type"] == "extra_forbidden" else err["msg"],
                             ".".join(str(p) for p in err["loc"]) or None) from None
        raise InputError(source, "invalid inventory\n" + "\n".join(lines)) from None
    except InputError as e:
        raise InputError(source, e.reason, e.field) from None
    check_backend_needs(inv, source)
    for w in inv.warnings():
        _log.warning("%s: %s", source, w)
    return inv


def load_inventory(path: str | Path) -> Inventory:
    """Load and validate an inventory file; relative paths resolve against its folder."""
    p = Path(path).expanduser().resolve()
    data = load_yaml_file(p, "inventory")
    refuse_literal_credentials(data, str(path))
    return parse_inventory(data, str(path), p.parent)
