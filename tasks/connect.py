"""Every inventory entry -> its client, in one place.

A run opens one :class:`Connections` (a context manager) and hands it to every
stage: detect, purge and pin share the registry clients; rotate gets its secret
backends and forges from it. Each client is built on first use, with its
credential reference resolved at that moment (``digestguard.credentials.resolve``)
and handed straight to the client, never stored on the entry, returned or logged;
it is cached for the rest of the run and closed when the run closes the pool.

Tests (and the drill) inject ready clients by key: ``registry:<name>``,
``ecr:<name>``, ``gar:<name>``, ``engine:<name>``, and the backend names
``vault``, ``iam``, ``secretsmanager``, ``azure``, ``gcp``, ``github``, ``gitlab``.
Injected clients belong to the caller and are not closed here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, Literal

from azure.identity import ClientSecretCredential
from google.auth.credentials import AnonymousCredentials
from pydantic import SecretStr

from digestguard.credentials import resolve
from digestguard.errors import InputError
from digestguard.inventory import Backends, DockerEngine, Inventory, KubernetesCluster, Registry
from integrations import (
    aws_cloudtrail,
    aws_iam,
    aws_secrets,
    azure_keyvault,
    docker_engine,
    ecr,
    gar,
    gcp_secrets,
    github,
    gitlab,
    kubernetes,
    registry,
    vault,
)

Forge = Literal["github", "gitlab"]
BACKEND_CLIENTS = ("vault", "iam", "secretsmanager", "azure", "gcp", "github", "gitlab", "cloudtrail")


def host_of(url: str) -> str:
    """``https://mirror.example:5000/v2`` -> ``mirror.example:5000`` (lower case)."""
    return url.split("://", 1)[-1].split("/", 1)[0].lower()


def registry_client(entry: Registry) -> registry.RegistryClient:
    """An OCI distribution client (a registry, a pull-through cache, Docker Hub) for an inventory entry."""
    host = host_of(entry.url) if entry.url else ("docker.io" if entry.kind == "dockerhub" else entry.name)
    return registry.RegistryClient(host, base_url=entry.url, username=resolve(entry.username, f"registry {entry.name}"),
                                   password=resolve(entry.password, f"registry {entry.name}"))


def ecr_client(entry: Registry) -> Any:
    """A boto3 ECR client for an ``ecr`` entry (region and endpoint from the entry)."""
    return ecr.ecr_client(region_name=entry.region, endpoint_url=entry.url)


def gar_client(entry: Registry) -> gar.ArtifactRegistry:
    """An Artifact Registry client for a ``gar`` entry."""
    return gar.ArtifactRegistry(resolve(entry.token, f"registry {entry.name}") or "", api_url=entry.url or gar.API_URL)


def gar_package(entry: Registry, repository: str) -> gar.GarPackage:
    """The Artifact Registry package of ``repository`` in a ``gar`` entry."""
    return gar.GarPackage(entry.project, entry.location, entry.name, repository)


def engine_client(entry: DockerEngine) -> docker_engine.DockerEngine:
    """A Docker-API client (Docker, podman) for an inventory engine."""
    return docker_engine.DockerEngine(entry.url)


def cluster_config(entry: KubernetesCluster, inventory: Inventory) -> kubernetes.ClusterConfig:
    """How to reach a cluster; a relative kubeconfig path is relative to the inventory file."""
    cfg = kubernetes.cluster_config_from_inventory(entry)
    if cfg.kubeconfig:
        cfg = kubernetes.ClusterConfig(**{**cfg.__dict__, "kubeconfig": inventory.resolve_path(str(cfg.kubeconfig))})
    return cfg


def forge_client(kind: Forge, backends: Backends, *, source: str, token: str | None = None, api_url: str | None = None):
    """A ``GitHubClient`` or ``GitLabClient`` (a context manager) for ``source`` (named in errors).

    An entry's own ``token``/``api_url`` win; otherwise the inventory's ``backends`` give them.
    """
    if kind not in ("github", "gitlab"):
        raise InputError(source, f"{kind!r} is not a forge (github, gitlab)")
    ref = token or (backends.github_token if kind == "github" else backends.gitlab_token)
    if not ref:
        raise InputError(source, f"no {kind} token: set the entry's token or backends.{kind}_token", field="token")
    secret = SecretStr(resolve(ref, f"{source} token") or "")
    url = api_url or (backends.github_api_url if kind == "github" else backends.gitlab_api_url)
    if kind == "github":
        return github.GitHubClient(secret, url or github.DEFAULT_API_URL, writes_per_minute=backends.github_writes_per_minute)
    return gitlab.GitLabClient(secret, url or gitlab.DEFAULT_API_URL)


def _need(value: Any, field: str) -> Any:
    if value in (None, ""):
        raise InputError("inventory", "needed by this stage but not set", field=f"backends.{field}")
    return value


def _azure_client(b: Backends) -> Any:
    secret = resolve(_need(b.azure_client_secret, "azure_client_secret"), "backends.azure_client_secret")
    extra: dict[str, Any] = {}
    if b.azure_authority:
        extra["authority"] = b.azure_authority
    if isinstance(b.azure_verify, str):
        extra["connection_verify"] = b.azure_verify
    cred = ClientSecretCredential(_need(b.azure_tenant_id, "azure_tenant_id"), _need(b.azure_client_id, "azure_client_id"),
                                  secret or "", **extra)
    kv_kwargs: dict[str, Any] = {}
    if b.azure_verify is not None:
        kv_kwargs["connection_verify"] = b.azure_verify
    return azure_keyvault.keyvault_client(_need(b.azure_vault_url, "azure_vault_url"), cred, **kv_kwargs)


def _gcp_client(b: Backends) -> Any:
    if b.gcp_endpoint and b.gcp_endpoint.startswith("http://"):
        # a plain-http endpoint is a local stand-in: no Google credentials travel to it
        return gcp_secrets.secret_manager_client(credentials=AnonymousCredentials(), api_endpoint=b.gcp_endpoint,
                                                 transport="rest")
    return gcp_secrets.secret_manager_client(api_endpoint=b.gcp_endpoint)


def backend_client(name: str, b: Backends) -> Any:
    """The client of one secret backend or forge named in ``BACKEND_CLIENTS``, from the inventory's ``backends``."""
    if name == "vault":
        url = _need(b.vault_url, "vault_url")
        token = resolve(_need(b.vault_token, "vault_token"), "backends.vault_token")
        return vault.connect(url, SecretStr(token or ""))
    if name in ("iam", "secretsmanager"):
        kwargs: dict[str, Any] = {"endpoint_url": b.aws_endpoint_url}
        if b.aws_region:
            kwargs["region_name"] = b.aws_region
        return (aws_iam.iam_client if name == "iam" else aws_secrets.secrets_client)(**kwargs)
    if name == "cloudtrail":  # "was the exposed key used?": its own endpoint (moto has no LookupEvents)
        ct: dict[str, Any] = {"endpoint_url": b.aws_cloudtrail_endpoint_url or b.aws_endpoint_url}
        if b.aws_region:
            ct["region_name"] = b.aws_region
        return aws_cloudtrail.cloudtrail_client(**ct)
    if name == "azure":
        return _azure_client(b)
    if name == "gcp":
        return _gcp_client(b)
    if name in ("github", "gitlab"):
        return forge_client(name, b, source=f"backends.{name}")
    raise InputError("inventory", f"no client named {name!r} (known: {', '.join(BACKEND_CLIENTS)})")


class Connections:
    """The run's clients: built on first use, cached per run, closed on ``close()`` (or leaving ``with``).

    Safe to share between the threads a stage fans out into: each client is built once.
    """

    def __init__(self, inventory: Inventory, given: Mapping[str, Any] | None = None) -> None:
        self.inventory = inventory
        self._given = dict(given or {})
        self._own: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def backends(self) -> Backends:
        """The inventory's ``backends`` (mounts, projects and URLs the clients were built from)."""
        return self.inventory.backends

    def __enter__(self) -> Connections:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _cached(self, key: str, build: Callable[[], Any]) -> Any:
        if key in self._given:
            return self._given[key]
        with self._lock:
            if key not in self._own:
                self._own[key] = build()
            return self._own[key]

    def _registry_entry(self, name: str) -> Registry:
        for r in self.inventory.registries:
            if r.name == name:
                return r
        raise InputError("inventory", f"no registry named {name!r}", field="registries")

    def registry_entry(self, name: str) -> Registry:
        """The inventory entry of registry ``name``."""
        return self._registry_entry(name)

    def registry(self, name: str) -> registry.RegistryClient:
        """The OCI distribution client of registry ``name``."""
        return self._cached(f"registry:{name}", lambda: registry_client(self._registry_entry(name)))

    def ecr(self, name: str) -> Any:
        """The boto3 ECR client of registry ``name``."""
        return self._cached(f"ecr:{name}", lambda: ecr_client(self._registry_entry(name)))

    def gar(self, name: str) -> gar.ArtifactRegistry:
        """The Artifact Registry client of registry ``name``."""
        return self._cached(f"gar:{name}", lambda: gar_client(self._registry_entry(name)))

    def engine(self, name: str) -> docker_engine.DockerEngine:
        """The Docker-API client of engine ``name``."""
        def build() -> docker_engine.DockerEngine:
            entry = next((e for e in self.inventory.docker_engines if e.name == name), None)
            if entry is None:
                raise InputError("inventory", f"no docker engine named {name!r}", field="docker_engines")
            return engine_client(entry)

        return self._cached(f"engine:{name}", build)

    def get(self, name: str) -> Any:
        """A secret backend or forge client by name (``vault``, ``iam``, ``secretsmanager``, ``azure``, ``gcp``, ``github``, ``gitlab``)."""
        return self._cached(name, lambda: backend_client(name, self.inventory.backends))

    def forge(self, kind: Forge, *, source: str, token: str | None = None, api_url: str | None = None):
        """The run's one client per forge: an entry (repository, CI source) whose token reference and API URL
        are the backends' own (or unset) shares ``get(kind)``; another token or endpoint gets its own client,
        built once for the run. Keyed by the *reference* (``env:NAME``), never by a resolved value."""
        b = self.inventory.backends
        default_ref = b.github_token if kind == "github" else b.gitlab_token if kind == "gitlab" else None
        default_url = b.github_api_url if kind == "github" else b.gitlab_api_url if kind == "gitlab" else None
        if (token or default_ref) == default_ref and (api_url or default_url) == default_url:
            if kind not in ("github", "gitlab"):
                raise InputError(source, f"{kind!r} is not a forge (github, gitlab)")
            return self.get(kind)
        return self._cached(f"{kind}:{api_url or default_url}:{token or default_ref}",
                            lambda: forge_client(kind, b, source=source, token=token, api_url=api_url))

    def built(self) -> list[str]:
        """The keys of the clients this pool built so far (what a run connected to; tests count them)."""
        with self._lock:
            return list(self._own)

    def close(self) -> None:
        """Close every client this pool built (injected ones belong to the caller); a failing close hides nothing."""
        with self._lock:
            own, self._own = list(self._own.values()), {}
        for c in own:
            close = getattr(c, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:  # noqa: BLE001 - closing must not hide the stage's outcome
                    pass
