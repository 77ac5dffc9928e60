"""Kubernetes: which images are running where (detect), and who owns them (purge report).

A thin typed layer over the official ``kubernetes`` client. One question is asked
of a cluster: *list every pod* (in all namespaces, or the given ones), page by
page with ``limit``/``continue``, and turn each container status into a
:class:`RunningContainer`: namespace, pod, container, the image as written in
the pod spec, the ``imageID`` the kubelet reports, the digest parsed from it,
the node, and the owning workload.

Why the ``imageID`` matters: a tag in the spec (``checkmarx/kics:latest``) says
nothing about *which* content runs; the kubelet's ``imageID``
(``docker-pullable://checkmarx/kics@sha256:...`` with dockershim,
``docker.io/checkmarx/kics@sha256:...`` with containerd/CRI-O) names the
manifest digest that was actually pulled, which is what an advisory lists.

Why the owner: a pod cannot be "purged" by deleting it (its controller makes a
new one). The purge report names the workload to fix: a ReplicaSet's pod
belongs to a Deployment (the ReplicaSet name is ``<deployment>-<pod-template-hash>``),
a Job's pod to a CronJob when the Job name is ``<cronjob>-<scheduled minute>``.

Nothing is dropped: a container that has no status yet (its image is still
being pulled, perhaps the malicious one) is returned with ``state="waiting"``
and no digest, and an ``imageID`` that names no repository digest (a bare image
id) is kept with ``digest=None`` rather than ignored.

Example::

    cfg = ClusterConfig(name="prod", url="https://k8s.example:6443", token=SecretStr(tok))
    scan = list_running_containers(cfg)
    for c in scan.containers:
        print(c.namespace, c.pod, c.container, c.image, c.digest, c.workload_kind, c.workload_name)
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import urllib3
from kubernetes import client as k8s, config as k8s_config
from kubernetes.client.exceptions import ApiException
from pydantic import ConfigDict, SecretStr

from digestguard._model import Model
from digestguard.credentials import resolve
from digestguard.errors import InputError, IntegrationError, NotFound, Refused, Unavailable
from digestguard.reference import is_digest, parse_digest
from digestguard.timeutil import parse_time
from integrations._errors import error_for_status, parse_retry_after
from integrations._rest import MAX_JSON_BYTES, Retrier, RetryPolicy, redact_url

__all__ = [
    "ClusterConfig",
    "ClusterImages",
    "RunningContainer",
    "cluster_config_from_inventory",
    "containers_of_pod",
    "digest_from_image_id",
    "list_running_containers",
    "workload_of",
]

DEFAULT_PAGE_SIZE = 500
# CronJob controller (v2) names a Job "<cronjob>-<scheduled time in unix minutes>".
_CRONJOB_JOB = re.compile(r"^(?P<cronjob>.+)-(?P<minute>\d{8,})$")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://")

ContainerKind = Literal["container", "init", "ephemeral"]
ContainerState = Literal["running", "waiting", "terminated", "unknown"]


# ---------------------------------------------------------------- types


@dataclass(frozen=True)
class ClusterConfig:
    """How to reach one cluster: ``url`` + ``token``, or ``kubeconfig`` (+ ``context``).

    ``name`` is how errors and results name the cluster (never the token).
    ``ca_file`` is a PEM bundle for a private cluster CA; ``verify_tls=False``
    skips verification (lab clusters only). ``namespaces`` empty = all namespaces.
    """

    name: str
    url: str | None = None
    token: SecretStr | None = field(default=None, repr=False)
    kubeconfig: str | Path | None = None
    context: str | None = None
    verify_tls: bool = True
    ca_file: str | Path | None = None
    namespaces: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.token, str):  # accept a plain str, keep it masked from here on
            object.__setattr__(self, "token", SecretStr(self.token))
        object.__setattr__(self, "namespaces", tuple(self.namespaces))
        src = f"kubernetes cluster {self.name!r}"
        if self.kubeconfig is None and not self.url:
            raise InputError(src, "give either url (+ token) or kubeconfig (+ context)")
        if self.url and not self.url.startswith(("http://", "https://")):
            raise InputError(src, f"{self.url!r} is not an http(s) URL", field="url")
        for ns in self.namespaces:
            if not ns or "/" in ns:
                raise InputError(src, f"{ns!r} is not a namespace name", field="namespaces")


class _Model(Model):
    """The shared strict base, frozen: these are answers read from a cluster, not inputs to edit."""

    model_config = ConfigDict(frozen=True)


class RunningContainer(_Model):
    """One container (or init/ephemeral container) of one pod, and the image it runs.

    ``image`` is the spec's text as written; ``status_image`` what the runtime
    reports (often normalised, e.g. ``docker.io/checkmarx/kics:latest``);
    ``image_id`` the raw ``imageID``; ``digest`` the manifest digest parsed from
    it (None when the container has not pulled yet or the runtime reported a
    bare image id). ``owner_kind``/``owner_name`` are the pod's controller as
    recorded; ``workload_kind``/``workload_name`` the top-level workload derived
    from it (Deployment from ReplicaSet, CronJob from Job), the thing to fix.
    """

    cluster: str
    namespace: str
    pod: str
    container: str
    container_kind: ContainerKind = "container"
    image: str
    status_image: str | None = None
    image_id: str | None = None
    image_id_repository: str | None = None
    digest: str | None = None
    node: str | None = None
    pod_phase: str | None = None
    state: ContainerState = "unknown"
    started_at: datetime | None = None
    owner_kind: str | None = None
    owner_name: str | None = None
    workload_kind: str
    workload_name: str


class ClusterImages(_Model):
    """The answer for one cluster: every container seen, and how the listing went."""

    cluster: str
    namespaces: tuple[str, ...] = ()  # () = all namespaces
    pod_count: int
    containers: tuple[RunningContainer, ...]
    pages: int
    restarts: int = 0  # listings restarted because a continue token expired (410)

    def by_digest(self, digest: str) -> list[RunningContainer]:
        d = parse_digest(digest)
        return [c for c in self.containers if c.digest == d]


# ---------------------------------------------------------------- parsing


def digest_from_image_id(image_id: str | None) -> tuple[str | None, str | None]:
    """``(repository, digest)`` from a kubelet ``imageID``; ``(None, None)`` when it names no manifest digest.

    >>> digest_from_image_id("docker-pullable://checkmarx/kics@sha256:" + "a" * 64)[0]
    'checkmarx/kics'
    >>> digest_from_image_id("docker.io/checkmarx/kics@sha256:" + "b" * 64)[1][:12]
    'sha256:bbbbb'
    >>> digest_from_image_id("sha256:" + "c" * 64)  # a bare image (config) id, not a manifest digest
    (None, None)
    """
    if not image_id:
        return None, None
    rest = _SCHEME.sub("", image_id.strip())
    if "@" not in rest:
        return None, None
    repo, _, digest = rest.rpartition("@")
    if not is_digest(digest):
        return None, None
    return (repo or None), parse_digest(digest)


def workload_of(
    pod_name: str, owner_refs: Sequence[dict[str, Any]] | None, labels: dict[str, str] | None
) -> tuple[str | None, str | None, str, str]:
    """``(owner_kind, owner_name, workload_kind, workload_name)`` for a pod.

    The controller reference wins (else the first reference). ReplicaSet ->
    Deployment only when the ReplicaSet name ends in the pod's
    ``pod-template-hash`` label (a bare ReplicaSet stays a ReplicaSet); Job ->
    CronJob only when the Job name is ``<name>-<8+ digit minute>``. A pod with
    no owner is its own workload (``Pod``).
    """
    refs = list(owner_refs or [])
    if not refs:
        return None, None, "Pod", pod_name
    ref = next((r for r in refs if r.get("controller")), refs[0])
    kind, name = str(ref.get("kind") or "Unknown"), str(ref.get("name") or "")
    wk, wn = kind, name
    if kind == "ReplicaSet":
        h = (labels or {}).get("pod-template-hash")
        if h and name.endswith("-" + h) and len(name) > len(h) + 1:
            wk, wn = "Deployment", name[: -(len(h) + 1)]
    elif kind == "Job":
        m = _CRONJOB_JOB.match(name)
        if m:
            wk, wn = "CronJob", m.group("cronjob")
    return kind, name, wk, wn


def _state(status: dict[str, Any] | None) -> tuple[ContainerState, datetime | None]:
    st = (status or {}).get("state") or {}
    if "running" in st:
        return "running", parse_time((st.get("running") or {}).get("startedAt"))
    if "terminated" in st:
        return "terminated", parse_time((st.get("terminated") or {}).get("startedAt"))
    if "waiting" in st:
        return "waiting", None
    return ("waiting" if status is None else "unknown"), None


def containers_of_pod(pod: dict[str, Any], cluster: str) -> list[RunningContainer]:
    """Every container of one pod JSON object (as the API serves it), with or without a status yet."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    owner_kind, owner_name, wk, wn = workload_of(name, meta.get("ownerReferences"), meta.get("labels"))
    out: list[RunningContainer] = []
    groups: tuple[tuple[ContainerKind, str, str], ...] = (
        ("init", "initContainers", "initContainerStatuses"),
        ("container", "containers", "containerStatuses"),
        ("ephemeral", "ephemeralContainers", "ephemeralContainerStatuses"),
    )
    for kind, spec_key, status_key in groups:
        statuses = {s.get("name"): s for s in (status.get(status_key) or []) if isinstance(s, dict)}
        seen: set[str] = set()
        specs = [c for c in (spec.get(spec_key) or []) if isinstance(c, dict)]
        # Statuses without a spec entry should not exist, but never drop one if they do.
        specs += [{"name": n, "image": s.get("image") or ""} for n, s in statuses.items() if n not in {c.get("name") for c in specs}]
        for c in specs:
            cname = str(c.get("name") or "")
            if cname in seen:
                continue
            seen.add(cname)
            st = statuses.get(cname)
            image_id = (st or {}).get("imageID") or None
            repo, digest = digest_from_image_id(image_id)
            state, started = _state(st)
            out.append(
                RunningContainer(
                    cluster=cluster,
                    namespace=ns,
                    pod=name,
                    container=cname,
                    container_kind=kind,
                    image=str(c.get("image") or (st or {}).get("image") or ""),
                    status_image=(st or {}).get("image") or None,
                    image_id=image_id,
                    image_id_repository=repo,
                    digest=digest,
                    node=spec.get("nodeName") or None,
                    pod_phase=status.get("phase") or None,
                    state=state,
                    started_at=started,
                    owner_kind=owner_kind,
                    owner_name=owner_name,
                    workload_kind=wk,
                    workload_name=wn,
                )
            )
    return out


# ---------------------------------------------------------------- client


def _api_client(cfg: ClusterConfig) -> k8s.ApiClient:
    """A configured ``ApiClient``; the token lives only inside the client's configuration."""
    conf = k8s.Configuration()
    src = f"kubernetes cluster {cfg.name!r}"
    if cfg.kubeconfig is not None:
        path = Path(cfg.kubeconfig).expanduser()
        if not path.is_file():
            raise InputError(src, f"kubeconfig {str(path)!r} does not exist", field="kubeconfig")
        try:
            # persist_config=False: never write refreshed tokens back into the user's file.
            k8s_config.load_kube_config(
                config_file=str(path), context=cfg.context, client_configuration=conf, persist_config=False
            )
        except k8s_config.ConfigException as exc:
            raise InputError(src, f"kubeconfig {str(path)!r} context {cfg.context!r}: {_first_line(exc)}") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(src, f"kubeconfig {str(path)!r} is not usable: {type(exc).__name__}") from None
    if cfg.url:
        conf.host = cfg.url.rstrip("/")
    if cfg.token is not None:
        conf.api_key = {"authorization": cfg.token.get_secret_value()}
        conf.api_key_prefix = {"authorization": "Bearer"}
    if cfg.ca_file is not None:
        conf.ssl_ca_cert = str(cfg.ca_file)
    if not cfg.verify_tls:
        conf.verify_ssl = False
    conf.retries = 0  # our own bounded retry below decides; urllib3 would retry blindly
    return k8s.ApiClient(conf)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _status_message(exc: ApiException) -> str:
    """The ``Status.message`` of an API error body (the server's words), else the HTTP reason."""
    body = exc.body
    if body is None and getattr(exc, "data", None) is not None:
        body = exc.data
    try:
        parsed = json.loads(body) if isinstance(body, (str, bytes)) else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and parsed.get("message"):
        return str(parsed["message"])[:300]
    return str(exc.reason or "error")


def _map_api_error(exc: ApiException, source: str) -> IntegrationError:
    status = int(exc.status or 0)
    retry_after = parse_retry_after((exc.headers or {}).get("Retry-After")) if status == 429 and exc.headers else None
    return error_for_status(source, status, _status_message(exc), retry_after=retry_after,
                            auth_hint="token refused or lacks permission to list pods")


def _map_transport_error(exc: Exception, source: str) -> IntegrationError:
    reason = getattr(exc, "reason", None)
    if isinstance(exc, urllib3.exceptions.SSLError) or isinstance(reason, urllib3.exceptions.SSLError):
        # Not retryable: a certificate problem does not heal by waiting.
        return IntegrationError(source, "TLS verification failed (check ca_file / verify_tls)")
    return Unavailable(source, f"cannot reach the API server: {type(reason or exc).__name__}")


class _Lister:
    """Pages through one pod list with bounded retries; restarts once if a continue token expires."""

    def __init__(
        self,
        api: k8s.CoreV1Api,
        cfg: ClusterConfig,
        host: str,
        *,
        page_size: int,
        retry: RetryPolicy,
        timeout: float,
        sleep: Callable[[float], None],
    ) -> None:
        self.api, self.cfg, self.host = api, cfg, host
        self.page_size, self.retry, self.timeout, self.sleep = page_size, retry, timeout, sleep
        self.pages = 0
        self.restarts = 0

    def source(self, namespace: str | None) -> str:
        path = f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"
        return f"kubernetes cluster {self.cfg.name!r} ({self.host}) GET {path}"

    def _page(self, namespace: str | None, cont: str | None) -> dict[str, Any]:
        src = self.source(namespace)
        kwargs: dict[str, Any] = {"limit": self.page_size, "_preload_content": False, "_request_timeout": self.timeout}
        if cont:
            kwargs["_continue"] = cont
        retrier = Retrier(self.retry, self.sleep)
        while True:
            try:
                return self._fetch(src, namespace, kwargs)
            except ApiException as exc:
                error = _map_api_error(exc, src)
                again = retrier.again(int(exc.status or 0), retry_after=getattr(error, "retry_after", None))
            except urllib3.exceptions.HTTPError as exc:
                error = _map_transport_error(exc, src)
                again = error.retryable and retrier.again()  # a TLS failure does not heal by waiting
            if not again:
                raise error from None

    def _fetch(self, src: str, namespace: str | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        if namespace:
            resp = self.api.list_namespaced_pod(namespace, **kwargs)
        else:
            resp = self.api.list_pod_for_all_namespaces(**kwargs)
        self.pages += 1
        try:
            body = json.loads(self._read(resp, src))
        except ValueError:
            raise IntegrationError(src, "answer is not JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("items", []), list):
            raise IntegrationError(src, "answer is not a PodList")
        return body

    def _read(self, resp: Any, src: str) -> bytes:
        """A page's body, streamed: at most :data:`MAX_JSON_BYTES` (a page of ``page_size`` pods is far less),
        and within the request's ``timeout`` in total (a dripping API server cannot hold the lister)."""
        deadline_at = time.monotonic() + self.timeout
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in resp.stream(64 * 1024):
                size += len(chunk)
                if size > MAX_JSON_BYTES:
                    raise Refused(src, f"page is over the {MAX_JSON_BYTES}-byte cap; not read further")
                chunks.append(chunk)
                if time.monotonic() > deadline_at:
                    raise Unavailable(src, f"page not complete within {self.timeout:.0f}s (a slow or stalled server)")
        finally:
            resp.release_conn()
        return b"".join(chunks)

    def pods(self, namespace: str | None) -> list[dict[str, Any]]:
        """All pods of one scope. A 410 (continue token expired) restarts the scope once from the top,
        so the answer is one consistent snapshot rather than a stitched, possibly duplicated one."""
        for round_ in range(2):
            items: list[dict[str, Any]] = []
            cont: str | None = None
            try:
                while True:
                    body = self._page(namespace, cont)
                    items.extend(p for p in body.get("items") or [] if isinstance(p, dict))
                    cont = ((body.get("metadata") or {}).get("continue")) or None
                    if not cont:
                        return items
            except NotFound as exc:
                if exc.status != 410 or cont is None or round_ == 1:
                    raise
                self.restarts += 1
        raise AssertionError("unreachable")


def list_running_containers(
    cfg: ClusterConfig,
    namespaces: Iterable[str] | None = None,
    *,
    page_size: int = DEFAULT_PAGE_SIZE,
    max_retries: int = 4,
    max_wait: float = 30.0,
    backoff: float = 0.5,
    timeout: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
) -> ClusterImages:
    """List every pod of the cluster (or of ``namespaces``, else ``cfg.namespaces``) and return its containers.

    Pages with ``limit=page_size`` and the ``continue`` token. Retries 429/5xx and
    unreachable servers at most ``max_retries`` times (``Retry-After`` honoured,
    each wait at most ``max_wait`` s; a longer ``Retry-After`` is raised as
    :class:`RateLimited`). Raises :class:`AuthError` (401/403),
    :class:`Unavailable`, :class:`RateLimited`, :class:`InputError` (bad config).
    """
    if page_size < 1:
        raise InputError("list_running_containers", "page_size must be >= 1", field="page_size")
    scope = tuple(dict.fromkeys(namespaces if namespaces is not None else cfg.namespaces))
    api_client = _api_client(cfg)
    try:
        host = redact_url(api_client.configuration.host or "")
        lister = _Lister(
            k8s.CoreV1Api(api_client), cfg, host,
            page_size=page_size, retry=RetryPolicy(max_retries=max_retries, backoff=backoff, max_backoff=max_wait,
                                                   max_wait=max_wait),
            timeout=timeout, sleep=sleep,
        )
        pods: list[dict[str, Any]] = []
        for ns in scope or (None,):
            pods.extend(lister.pods(ns))
        containers = [c for pod in pods for c in containers_of_pod(pod, cfg.name)]
        return ClusterImages(
            cluster=cfg.name,
            namespaces=scope,
            pod_count=len(pods),
            containers=tuple(containers),
            pages=lister.pages,
            restarts=lister.restarts,
        )
    finally:
        api_client.close()


def cluster_config_from_inventory(entry: Any) -> ClusterConfig:
    """A :class:`ClusterConfig` from an inventory ``KubernetesCluster``, resolving its token reference now.

    Relative kubeconfig paths are the caller's to resolve (``Inventory.resolve_path``).
    """

    token = resolve(entry.token, f"kubernetes.{entry.name}.token") if entry.token else None
    return ClusterConfig(
        name=entry.name,
        url=entry.url,
        token=SecretStr(token) if token is not None else None,
        kubeconfig=entry.kubeconfig,
        context=entry.context,
        verify_tls=entry.verify_tls,
        namespaces=tuple(entry.namespaces),
    )
