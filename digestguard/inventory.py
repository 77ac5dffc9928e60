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

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from digestguard.credentials import check_reference, refuse_literal_credentials
from digestguard.errors import InputError
from digestguard.safe_yaml import load_yaml_file


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
    format: str | None = Field(None, description="zeek-dns, zeek-http, route53, squid, jsonl, text; auto when omitted")
    log_group: str | None = None
    region: str | None = None
    endpoint_url: str | None = None

    @model_validator(mode="after")
    def _needs(self) -> "NetworkLogSource":
        if self.kind == "file" and not self.path:
            raise ValueError("a file network-log source needs 'path'")
        if self.kind == "cloudwatch" and not self.log_group:
            raise ValueError("a cloudwatch network-log source needs 'log_group'")
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
    "vault-kv", "vault-database-static-role", "aws-iam-access-key", "aws-secretsmanager", "azure-keyvault", "gcp-secretmanager", "manual"
]


class Secret(_Model):
    """A credential the estate holds: where it lives (backend + ref) and who consumes it."""

    name: str
    backend: SecretBackend
    ref: dict[str, Any] = Field(default_factory=dict, description="backend-specific location: path/mount, user, secret_id, name, project ...")
    consumers: list[Consumer] = Field(default_factory=list)
    strategy: Literal["revoke-first", "overlap"] | None = Field(None, description="default: revoke-first on confirmed exposure, overlap otherwise")
    aliases: list[str] = Field(default_factory=list, description="other names CI files use for it (e.g. AWS_ACCESS_KEY_ID)")
    owner: str | None = None


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

    @field_validator("token")
    @classmethod
    def _ref(cls, v: str) -> str:
        return check_reference(v, "inventory", "slack.token")


class Backends(_Model):
    """Connection settings for secret backends (credentials as references)."""

    vault_url: str | None = None
    vault_token: str | None = None
    vault_kv_mount: str = "secret"
    vault_database_mount: str = "database"
    aws_region: str | None = None
    aws_endpoint_url: str | None = None
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
    gitlab_api_url: str | None = None
    gitlab_token: str | None = None

    @field_validator("vault_token", "azure_client_secret", "github_token", "gitlab_token")
    @classmethod
    def _refs(cls, v: str | None, info: Any) -> str | None:
        return _cred(v, f"backends.{info.field_name}")


class ApprovalPolicy(_Model):
    distinct_from_trigger: bool = Field(False, description="the approver must differ from whoever started the run")
    two_approvers: bool = Field(False, description="two distinct approvers per destructive stage")
    timeout_seconds: int = Field(3600, ge=10)


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
    journal: str | None = Field(None, description="journal database path (default .digestguard/journal.sqlite next to the inventory)")
    base_dir: str = Field(".", description="set by the loader: the inventory file's folder")

    @model_validator(mode="after")
    def _unique_names(self) -> "Inventory":
        for section in ("registries", "docker_engines", "ci_logs", "secrets", "repositories", "kubernetes"):
            names = [x.name for x in getattr(self, section)]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{section}: duplicate names {dupes}")
        return self

    def resolve_path(self, p: str) -> Path:
        """A path from the file, resolved against the inventory's folder."""
        path = Path(p).expanduser()
        return path if path.is_absolute() else (Path(self.base_dir) / path).resolve()

    def journal_path(self) -> Path:
        return self.resolve_path(self.journal or ".digestguard/journal.sqlite")

    def secret(self, name: str) -> Secret | None:
        for s in self.secrets:
            if s.name == name or name in s.aliases:
                return s
        return None


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
            lines.append(f"{source}: {loc}: {msg}")
        raise InputError(source, "invalid inventory\n" + "\n".join(lines)) from None
    except InputError as e:
        raise InputError(source, e.reason, e.field) from None
    return inv


def load_inventory(path: str | Path) -> Inventory:
    """Load and validate an inventory file; relative paths resolve against its folder."""
    p = Path(path).expanduser().resolve()
    data = load_yaml_file(p, "inventory")
    refuse_literal_credentials(data, str(path))
    return parse_inventory(data, str(path), p.parent)
