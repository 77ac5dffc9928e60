"""OCI distribution (registry v2) client: resolve tags, read manifests, walk indexes, delete by digest.

Why our own client rather than a registry SDK: the questions digestguard asks
are few and exact ("which digest does this tag name *now*?", "is this digest
still there?", "delete it"), and the answers must not depend on a library's
guesses. The rules that matter (see ``shared/advisories/README.md``):

* a tag is resolved with ``HEAD /v2/<name>/manifests/<tag>`` and an ``Accept``
  naming all four manifest types; without the OCI types a registry answers 404
  for an OCI index. The digest is ``Docker-Content-Digest``; when a registry
  leaves it out we GET the manifest and hash the exact bytes (never re-encoded
  JSON). A HEAD is not counted as a pull on Docker Hub; a GET is.
* a digest's bytes are checked against the digest on every GET by digest.
* DELETE works by digest only; 405 means deletion is switched off, and the
  error says which setting turns it on.
* auth is anonymous, basic, or the bearer-token dance from
  ``WWW-Authenticate: Bearer realm=...,service=...,scope=...`` (Docker Hub's
  auth.docker.io); tokens are cached per scope until shortly before expiry.
* 429 is honoured (``Retry-After``), 5xx and connection errors are retried with
  bounded, jittered back-off (the one :class:`integrations._rest.RetryPolicy`);
  anything else becomes a typed error from :mod:`digestguard.errors` that names
  the registry and repository, never a credential.

Throughput: :func:`resolve_many` resolves thousands of references with a
bounded thread pool. Its HEAD requests go over ``http.client`` keep-alive
connections (one per worker thread), measured about 2x faster than httpx
here; any answer other than a clean 200-with-digest is handed to the full
httpx path, which does auth, retries and error mapping. So the fast path is a
shortcut, never a second set of rules.

Example::

    with RegistryClient("127.0.0.1:5000") as reg:
        digest = reg.resolve("checkmarx/kics", "latest")
        for child in reg.get_index_children("checkmarx/kics", digest):
            print(child.platform, child.digest)
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, urljoin, urlsplit

import httpx

from digestguard.errors import (
    AuthError,
    DigestguardError,
    InputError,
    IntegrationError,
    NotFound,
    RateLimited,
    Refused,
    Unavailable,
)
from digestguard.reference import DOCKER_HUB_ALIASES, ImageReference, parse_digest, parse_reference
from integrations._errors import error_for_status, parse_retry_after
from integrations._rest import (
    MAX_ERROR_BYTES,
    Closing,
    DeadlineHTTPConnection,
    RateLimit,
    Retrier,
    RetryPolicy,
    call_deadline,
    deadline_http_client,
    deadline_ssl_context,
    next_link,
    rate_limit,
    read_body,
)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_MEDIA_TYPES: tuple[str, ...] = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_MEDIA_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_ACCEPT = ", ".join(MANIFEST_MEDIA_TYPES)

DOCKER_HUB_REGISTRY_URL = "https://registry-1.docker.io"
DOCKER_HUB_REQUESTS_PER_MINUTE = 1000
"""Docker Hub's abuse limit is per IP address over every Hub property (registry, API, web) and "in the order of
thousands of requests per minute" (docs.docker.com, Docker Hub usage and limits): we stay at 1,000 a minute."""


def docker_hub_limit() -> RateLimit:
    """The one budget every Docker Hub client of this process shares (registry and hub.docker.com API)."""
    return rate_limit("dockerhub", "per-address", DOCKER_HUB_REQUESTS_PER_MINUTE, 60.0)
DELETE_SETTING = "storage.delete.enabled: true (environment REGISTRY_STORAGE_DELETE_ENABLED=true)"

_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))')
_MAX_TAG_PAGES = 10_000
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
"""The manifest size cap (containerd's): a bigger answer is refused, never read into memory."""
MAX_TAGS = 5_000
"""How many listed tags :meth:`RegistryClient.list_tags_bounded` returns; beyond it the listing is partial."""


# ---------------------------------------------------------------- values


@dataclass(frozen=True)
class Manifest:
    """A manifest as the registry stored it: exact ``body`` bytes, its ``media_type`` and ``digest``."""

    body: bytes
    media_type: str
    digest: str

    @property
    def is_index(self) -> bool:
        """True for an OCI image index or a Docker manifest list (multi-platform)."""
        return self.media_type in INDEX_MEDIA_TYPES

    def json(self) -> dict[str, Any]:
        """The manifest as a JSON object; IntegrationError when it is not JSON or not an object."""
        try:
            data = json.loads(self.body)
        except ValueError:
            raise IntegrationError(f"manifest {self.digest}", "manifest is not JSON") from None
        if not isinstance(data, dict):
            raise IntegrationError(f"manifest {self.digest}", f"manifest is a JSON {type(data).__name__}, not an object")
        return data


@dataclass(frozen=True)
class IndexChild:
    """One entry of an index: the child ``digest`` and its ``platform`` (``linux/arm64/v8``; None if unstated)."""

    digest: str
    media_type: str
    platform: str | None
    size: int | None = None


@dataclass(frozen=True)
class RateLimitInfo:
    """Docker Hub's ``ratelimit-limit`` / ``ratelimit-remaining`` as last seen (``100;w=21600`` -> 100, 21600)."""

    limit: int | None
    remaining: int | None
    window_seconds: int | None


@dataclass(frozen=True)
class Resolution:
    """The answer for one reference of :func:`resolve_many`: a ``digest`` or the ``error`` that stopped it.

    Never both None: a reference that could not be resolved keeps its error, so
    no finding is silently dropped.
    """

    reference: str
    digest: str | None
    error: DigestguardError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


# ---------------------------------------------------------------- helpers


def _is_loopback(host: str) -> bool:
    h = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    h = h.strip("[]")
    return h in ("localhost", "::1") or h.startswith("127.")


def registry_base_url(registry: str, insecure: bool | None = None) -> str:
    """The HTTP base URL for a registry host as written in references.

    ``docker.io`` (and its aliases) -> ``https://registry-1.docker.io``. A value
    that already has a scheme is used as is. Loopback hosts default to plain
    http (as Docker treats them); ``insecure=True`` forces http for others.
    """
    if not registry or not isinstance(registry, str):
        raise InputError("registry", f"registry host must be a non-empty string, got {registry!r}")
    if registry.startswith(("http://", "https://")):
        return registry.rstrip("/")
    host = registry.lower()
    if host in DOCKER_HUB_ALIASES:
        return DOCKER_HUB_REGISTRY_URL
    if insecure is None:
        insecure = _is_loopback(host)
    return f"{'http' if insecure else 'https'}://{registry}"


def registry_repository(registry: str, repository: str) -> str:
    """The repository path as the registry wants it: Docker Hub official images get ``library/``."""
    repo = repository.strip("/")
    if not repo:
        raise InputError("repository", "empty repository name")
    if registry.lower() in DOCKER_HUB_ALIASES and "/" not in repo:
        return f"library/{repo}"
    return repo


def parse_ratelimit(value: str | None) -> tuple[int | None, int | None]:
    """``"100;w=21600"`` -> (100, 21600); junk -> (None, None)."""
    if not value:
        return None, None
    head, _, rest = value.partition(";")
    try:
        n = int(head.strip())
    except ValueError:
        return None, None
    window = None
    m = re.search(r"w=(\d+)", rest)
    if m:
        window = int(m.group(1))
    return n, window


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="https://auth.docker.io/token",service="registry.docker.io"`` -> ("bearer", {...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
              for m in _CHALLENGE_PARAM.finditer(rest)}
    return scheme.lower(), params


def sha256_of(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def verify_digest(body: bytes, digest: str, source: str) -> None:
    """Raise IntegrationError when ``body`` does not hash to ``digest`` (a registry handing out other bytes)."""
    algo, _, want = digest.partition(":")
    try:
        got = hashlib.new(algo, body).hexdigest()
    except ValueError:
        raise IntegrationError(source, f"cannot verify digest algorithm {algo!r}") from None
    if got != want:
        raise IntegrationError(source, f"manifest bytes hash to {algo}:{got}, not {digest}: content does not match its digest")


def index_children(manifest: Manifest) -> list[IndexChild]:
    """The children of an index (digest + platform); ``[]`` for a single-platform manifest.

    Platform strings are ``os/architecture[/variant]``; attestation entries
    (``unknown/unknown``) are kept, so a caller deciding what to delete sees them.
    """
    if not manifest.is_index:
        return []
    data = manifest.json()
    source = f"index {manifest.digest}"
    entries = data.get("manifests")
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise IntegrationError(source, f"'manifests' is a {type(entries).__name__}, not a list")
    out = []
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("digest"), str):
            raise IntegrationError(source, f"manifests[{n}] has no 'digest' string")
        plat = entry.get("platform") or None
        pstr = None
        if isinstance(plat, dict):
            pstr = f"{plat.get('os', 'unknown')}/{plat.get('architecture', 'unknown')}"
            if plat.get("variant"):
                pstr += f"/{plat['variant']}"
        size = entry.get("size")
        media = entry.get("mediaType")
        out.append(IndexChild(parse_digest(entry["digest"], f"{source} manifests[{n}]"),
                              media if isinstance(media, str) else "", pstr, size if isinstance(size, int) else None))
    return out


def _tag_page(body: bytes, source: str) -> list[str]:
    """The tags of one ``tags/list`` page, validated: ``{"tags": [str, ...]}`` (null or missing: none)."""
    try:
        data = json.loads(body)
    except ValueError:
        raise IntegrationError(source, "tags/list answer is not JSON") from None
    if not isinstance(data, dict):
        raise IntegrationError(source, f"tags/list answer is a JSON {type(data).__name__}, not an object")
    tags = data.get("tags")
    if tags is None:
        return []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise IntegrationError(source, "tags/list 'tags' is not a list of strings")
    return tags


# ---------------------------------------------------------------- client


class _Token:
    __slots__ = ("value", "expires")

    def __init__(self, value: str, expires: float) -> None:
        self.value = value
        self.expires = expires


class RegistryClient(Closing):
    """A client for one registry host (``docker.io``, ``ghcr.io``, ``127.0.0.1:5000``).

    Credentials are plain parameters: the caller resolves ``env:``/``prefect-secret:``
    references first. They are sent only to the registry and its token realm,
    and never appear in errors or ``repr``.

    ``max_retries`` bounds the extra tries per request (5xx, connection errors, 429);
    ``backoff`` is the first wait, doubling to ``max_backoff`` (jittered); a ``Retry-After``
    longer than ``max_wait`` is not slept through but raised as
    :class:`RateLimited` with ``retry_after`` so the task can decide (for every status, not only 429).
    ``deadline`` bounds one call in total (every attempt, wait and read); ``timeout`` one socket
    operation. Manifests are streamed and refused beyond :data:`MAX_MANIFEST_BYTES`; tag lists stop
    at ``max_tags`` (reported as incomplete by :meth:`list_tags_bounded`).
    """

    def __init__(
        self,
        registry: str,
        *,
        username: str | None = None,
        password: str | None = None,
        base_url: str | None = None,
        insecure: bool | None = None,
        verify: bool | str = True,
        timeout: float = 15.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_wait: float = 30.0,
        deadline: float = 60.0,
        max_tags: int = MAX_TAGS,
        pool_size: int = 64,
        sleep: Callable[[float], None] = time.sleep,
        fast_path: bool = True,
        request_limit: RateLimit | None = None,
    ) -> None:
        if max_retries < 0:
            raise InputError(f"registry {registry}", "must be >= 0", field="max_retries")
        if (username is None) != (password is None):
            raise InputError(f"registry {registry}", "username and password must be given together")
        self.registry = registry.lower() if not registry.startswith(("http://", "https://")) else registry
        self.base_url = (base_url or registry_base_url(registry, insecure)).rstrip("/")
        self._username = username
        self._password = password
        self._verify = verify
        self.timeout = timeout
        self.deadline = deadline
        self.max_tags = max_tags
        self.retry = RetryPolicy(max_retries=max_retries, backoff=backoff, max_backoff=max_backoff,
                                 max_wait=max_wait, deadline=deadline, jitter=True)
        self._sleep = sleep
        self._pool_size = pool_size
        self._http_client: httpx.Client | None = None
        self._ssl_ctx: ssl.SSLContext | None = None
        self._tokens: dict[str, _Token] = {}
        self._basic_wanted = False
        self._lock = threading.Lock()
        self._local = threading.local()
        self._fast_conns: list[http.client.HTTPConnection] = []
        self.rate_limit = RateLimitInfo(None, None, None)
        self.request_limit = request_limit or (docker_hub_limit() if self.base_url == DOCKER_HUB_REGISTRY_URL else None)
        """Paces every request: Docker Hub's per-address abuse limit, shared with the Hub API client."""
        self._fast = fast_path and self._fast_path_possible()

    def __repr__(self) -> str:
        return f"RegistryClient({self.registry!r}, base_url={self.base_url!r}, auth={'basic' if self._username else 'anonymous'})"

    # -- lifecycle

    @property
    def _http(self) -> httpx.Client:
        """The httpx client, made on first use: building one (TLS context) costs ~40 ms, and the fast path may never need it."""
        client = self._http_client
        if client is None:
            with self._lock:
                if self._http_client is None:
                    self._http_client = deadline_http_client(
                        timeout=self.timeout,
                        verify=self._verify,
                        follow_redirects=True,
                        limits=httpx.Limits(max_connections=self._pool_size, max_keepalive_connections=self._pool_size),
                        headers={"User-Agent": "digestguard"},
                    )
                client = self._http_client
        return client

    def close(self) -> None:
        if self._http_client is not None:
            self._http_client.close()
        with self._lock:
            conns, self._fast_conns = self._fast_conns, []
        for c in conns:
            c.close()


    # -- public API

    def resolve(self, repository: str, tag: str) -> str:
        """The digest ``repository:tag`` names right now (HEAD; GET-and-hash when no digest header).

        Raises NotFound when the tag or repository does not exist.
        """
        repo = registry_repository(self.registry, repository)
        if not tag or "/" in tag:
            raise InputError(self._source(repo), f"invalid tag {tag!r}")
        if self._fast:
            digest = self._fast_head(repo, tag)
            if digest is not None:
                return digest
        source = self._source(repo, tag)
        r, _ = self._request("HEAD", repo, f"/v2/{repo}/manifests/{quote(tag, safe='')}", source,
                             headers={"Accept": MANIFEST_ACCEPT})
        header = r.headers.get("docker-content-digest")
        if header:
            try:
                return parse_digest(header, source)
            except InputError:
                pass  # a malformed header: trust the bytes instead
        return self.get_manifest(repository, tag).digest

    def get_manifest(self, repository: str, reference: str) -> Manifest:
        """The manifest under a tag or digest: exact bytes, media type, digest (bytes hashed, never trusted blindly)."""
        repo = registry_repository(self.registry, repository)
        source = self._source(repo, reference)
        by_digest = ":" in reference
        if by_digest:
            reference = parse_digest(reference, source)
        self._check_pull_budget(source)
        r, body = self._request("GET", repo, f"/v2/{repo}/manifests/{quote(reference, safe=':')}", source,
                                headers={"Accept": MANIFEST_ACCEPT}, max_body=MAX_MANIFEST_BYTES)
        media_type = (r.headers.get("content-type") or "").split(";")[0].strip()
        if not media_type or media_type in ("application/json", "application/octet-stream"):
            try:
                found = json.loads(body).get("mediaType")
            except (ValueError, AttributeError):
                found = None
            media_type = found if isinstance(found, str) and found else media_type
        if by_digest:
            verify_digest(body, reference, source)
            digest = reference
        else:
            digest = sha256_of(body)
        return Manifest(body=body, media_type=media_type, digest=digest)

    def get_index_children(self, repository: str, reference: str) -> list[IndexChild]:
        """Walk an index (or Docker manifest list) to its children; ``[]`` for a single-platform image."""
        return index_children(self.get_manifest(repository, reference))

    def exists(self, repository: str, reference: str) -> bool:
        """True when a manifest answers HEAD under ``reference`` (tag or digest); False on 404."""
        repo = registry_repository(self.registry, repository)
        source = self._source(repo, reference)
        try:
            self._request("HEAD", repo, f"/v2/{repo}/manifests/{quote(reference, safe=':')}", source,
                          headers={"Accept": MANIFEST_ACCEPT})
        except NotFound:
            return False
        return True

    def ping(self) -> None:
        """Check that an OCI distribution API answers at ``base_url`` (``GET /v2/``: 200, or 401 asking for auth).

        A host answering 404 there is not a registry: every tag would look absent, so this raises
        IntegrationError instead of letting "nothing found" read as "clean".
        """
        source = f"registry {self.registry}"
        try:
            self._request("GET", "", "/v2/", source)
        except AuthError:
            return  # a registry that wants credentials; the repository calls will say whether ours work
        except NotFound:
            raise IntegrationError(source, f"no OCI distribution API at {self.base_url} (GET /v2/ answered 404)",
                                   404) from None

    def list_tags(self, repository: str, page_size: int | None = None) -> list[str]:
        """Every tag of ``repository``, following ``Link: <...>; rel="next"`` pages. Order as the registry gives it."""
        return self.list_tags_bounded(repository, page_size, max_tags=None)[0]

    def list_tags_bounded(self, repository: str, page_size: int | None = None,
                          max_tags: int | None | Literal["default"] = "default") -> tuple[list[str], bool]:
        """``(tags, complete)``: at most ``max_tags`` tags (default the client's ``max_tags``, None: no bound);
        ``complete`` is False when the bound cut the list.

        Every page is checked against the schema ``{"tags": [str, ...] | null}``; anything else
        (``{"tags": "latest"}``, numbers, non-JSON) raises IntegrationError.
        """
        if max_tags == "default":
            max_tags = self.max_tags
        repo = registry_repository(self.registry, repository)
        source = self._source(repo)
        path = f"/v2/{repo}/tags/list" + (f"?n={int(page_size)}" if page_size else "")
        tags: list[str] = []
        seen: set[str] = set()
        for _ in range(_MAX_TAG_PAGES):
            r, body = self._request("GET", repo, path, source, max_body=MAX_MANIFEST_BYTES)
            tags.extend(_tag_page(body, source))
            if max_tags is not None and len(tags) >= max_tags:
                return tags[:max_tags], False
            nxt = next_link(r)
            if not nxt:
                return tags, True
            nxt_path = self._relative(nxt, source)
            if nxt_path in seen:
                raise IntegrationError(source, f"tags/list pagination loops at {nxt_path!r}")
            seen.add(nxt_path)
            path = nxt_path
        raise IntegrationError(source, f"tags/list gave more than {_MAX_TAG_PAGES} pages")


    def blob_exists(self, repository: str, digest: str) -> bool:
        """HEAD on a blob: True when the registry has it in ``repository``."""
        repo = registry_repository(self.registry, repository)
        source = self._source(repo, digest)
        digest = parse_digest(digest, source)
        try:
            self._request("HEAD", repo, f"/v2/{repo}/blobs/{digest}", source)
        except NotFound:
            return False
        return True

    def get_blob(self, repository: str, digest: str, *, max_bytes: int = 64 * 1024 * 1024) -> bytes:
        """A blob's bytes (config, signature payload, small layer), checked against ``digest``.

        Larger than ``max_bytes`` -> Refused (this client holds blobs in memory). Redirects to
        blob storage are followed; httpx drops the Authorization header on a cross-origin redirect.
        """
        repo = registry_repository(self.registry, repository)
        source = self._source(repo, digest)
        digest = parse_digest(digest, source)
        try:
            _, body = self._request("GET", repo, f"/v2/{repo}/blobs/{digest}", source, max_body=max_bytes)
        except Refused as e:
            raise Refused(source, f"blob larger than {max_bytes} bytes; not read into memory ({e})") from None
        verify_digest(body, digest, source)
        return body

    def delete_manifest(self, repository: str, digest: str) -> None:
        """DELETE a manifest by digest (its tags vanish with it).

        Raises Refused (405) naming :data:`DELETE_SETTING` when the registry has
        deletion disabled, NotFound when already gone, InputError for a tag.
        """
        repo = registry_repository(self.registry, repository)
        source = self._source(repo, digest)
        if not isinstance(digest, str) or ":" not in digest:
            raise InputError(source, "delete needs a digest (sha256:...): registries refuse DELETE by tag", "digest")
        digest = parse_digest(digest, source)
        self._request("DELETE", repo, f"/v2/{repo}/manifests/{digest}", source, actions="delete")

    # -- internals

    def _source(self, repo: str, reference: str | None = None) -> str:
        where = f"{self.registry}/{repo}"
        if reference:
            where += ("@" if ":" in reference else ":") + reference
        return f"registry {where}"

    def _relative(self, link: str, source: str) -> str:
        """A pagination link as a path on this registry (absolute links to another origin are refused)."""
        absolute = urljoin(self.base_url + "/", link)
        base, target = urlsplit(self.base_url), urlsplit(absolute)
        if (target.scheme, target.netloc) != (base.scheme, base.netloc):
            raise IntegrationError(source, f"pagination link points to another origin ({target.netloc})")
        return target.path + (f"?{target.query}" if target.query else "")

    def _check_pull_budget(self, source: str) -> None:
        """Refuse a GET up front when the registry said no pulls remain (a GET counts as a pull on Docker Hub)."""
        rl = self.rate_limit
        if rl.remaining is not None and rl.remaining <= 0:
            raise RateLimited(source, "pull rate limit exhausted (ratelimit-remaining: 0)", status=None,
                              retry_after=float(rl.window_seconds) if rl.window_seconds else None)

    def _note_ratelimit(self, r: httpx.Response) -> None:
        if "ratelimit-remaining" not in r.headers and "ratelimit-limit" not in r.headers:
            return
        limit, window = parse_ratelimit(r.headers.get("ratelimit-limit"))
        remaining, w2 = parse_ratelimit(r.headers.get("ratelimit-remaining"))
        self.rate_limit = RateLimitInfo(limit, remaining, window or w2)

    def _scope(self, repo: str, actions: str) -> str:
        return f"repository:{repo}:{actions}"

    def _auth_header(self, scope: str) -> str | None:
        with self._lock:
            tok = self._tokens.get(scope)
        if tok is not None and tok.expires > time.monotonic():
            return f"Bearer {tok.value}"
        if self._basic_wanted and self._username is not None:
            raw = f"{self._username}:{self._password or ''}".encode()
            return "Basic " + base64.b64encode(raw).decode("ascii")
        return None

    def _request(self, method: str, repo: str, path: str, source: str, *, headers: Mapping[str, str] | None = None,
                 actions: str = "pull", max_body: int = MAX_ERROR_BYTES) -> tuple[httpx.Response, bytes]:
        """Send with auth, retries and error mapping; returns a 2xx response and its body, or raises a typed error.

        The whole call (every attempt, every wait, every read) ends within ``self.deadline``
        seconds; a 2xx body longer than ``max_body`` is refused without being held in memory.
        """
        scope = self._scope(repo, actions)
        url = self.base_url + path
        authed_once = False
        retrier = Retrier(self.retry, self._sleep)
        deadline_at = time.monotonic() + self.deadline
        while True:
            hdrs = dict(headers or {})
            auth = self._auth_header(scope)
            if auth:
                hdrs["Authorization"] = auth
            if self.request_limit is not None:
                self.request_limit.acquire(source, max_wait=max(0.0, deadline_at - time.monotonic()))
            try:
                r, body = self._send(method, url, hdrs, source, max_body, deadline_at)
            except httpx.TransportError as e:
                if time.monotonic() >= deadline_at:
                    raise Unavailable(source, f"no complete answer within the {self.deadline:.0f}s deadline of this "
                                              f"call (a slow or stalled registry; {type(e).__name__})") from None
                if not retrier.again():
                    raise Unavailable(source, f"{type(e).__name__} after {retrier.attempts} attempts "
                                              f"talking to {self.base_url}") from None
                continue
            self._note_ratelimit(r)
            status = r.status_code
            if 200 <= status < 300:
                return r, body
            if status == 401 and not authed_once:
                authed_once = True
                self._authenticate(r, scope, source)
                continue
            if status not in self.retry.statuses:
                self._raise_for(r, body, source, method)
            wait = parse_retry_after(r.headers.get("retry-after"))
            if not retrier.again(status, retry_after=wait):
                raise self._gave_up(r, body, source, wait, retrier.attempts)

    def _send(self, method: str, url: str, headers: dict[str, str], source: str, max_body: int,
              deadline_at: float) -> tuple[httpx.Response, bytes]:
        """One streamed request: the body read chunk by chunk, capped, and never past ``deadline_at``.

        A 2xx body over ``max_body`` (declared or read) raises Refused; an error body is cut at
        :data:`MAX_ERROR_BYTES`. Running out of time raises Unavailable naming the deadline.
        """
        remaining = deadline_at - time.monotonic()
        if remaining <= 0:
            raise Unavailable(source, f"no answer within the {self.deadline:.0f}s deadline of this call")
        timeout = httpx.Timeout(min(self.timeout, remaining))
        with call_deadline(deadline_at), self._http.stream(method, url, headers=headers, timeout=timeout) as r:
            body = read_body(r, source, limit=max_body, deadline_at=deadline_at, deadline=self.deadline)
        return r, body

    def _gave_up(self, r: httpx.Response, body: bytes, source: str, wait: float | None, attempts: int) -> IntegrationError:
        """The error for a retryable answer the policy gives up on (retries spent, or a wait beyond ``max_wait``)."""
        if r.status_code != 429:
            if wait is not None and wait > self.retry.max_wait:
                return Unavailable(source, f"{_error_text(r, body)}; the registry asks to wait {wait:.0f}s, over the "
                                           f"{self.retry.max_wait:.0f}s cap", r.status_code)
            return Unavailable(source, f"{_error_text(r, body)} after {attempts} attempts", r.status_code)
        if wait is not None and wait > self.retry.max_wait:
            return RateLimited(source, f"rate limited; registry asks to wait {wait:.0f}s", 429, retry_after=wait)
        return RateLimited(source, f"still rate limited after {attempts} attempts", 429, retry_after=wait)

    def _raise_for(self, r: httpx.Response, body: bytes, source: str, method: str) -> None:
        status = r.status_code
        text = _error_text(r, body)
        if status == 404 and method == "HEAD":
            text = "not found"  # a HEAD answer has no body to quote
        if status == 405 and method == "DELETE":
            raise Refused(source, f"the registry has deletion disabled ({text}); enable it with {DELETE_SETTING}", status)
        raise error_for_status(source, status, text)

    def _authenticate(self, r: httpx.Response, scope: str, source: str) -> None:
        """Answer a 401 challenge: basic -> remember to send basic; bearer -> fetch and cache a token for ``scope``."""
        header = r.headers.get("www-authenticate", "")
        scheme, params = parse_challenge(header) if header else ("", {})
        if scheme == "basic":
            if self._username is None:
                raise AuthError(source, "registry wants basic auth and no credentials were given", 401)
            if self._basic_wanted:
                raise AuthError(source, "basic credentials refused", 401)
            self._basic_wanted = True
            return
        if scheme != "bearer" or "realm" not in params:
            raise AuthError(source, f"unauthorized and no usable challenge ({scheme or 'none'})", 401)
        want_scope = params.get("scope") or scope
        token = self._fetch_token(params["realm"], params.get("service"), want_scope, source)
        with self._lock:
            self._tokens[scope] = token
            self._tokens[want_scope] = token

    def _fetch_token(self, realm: str, service: str | None, scope: str, source: str) -> _Token:
        query: dict[str, str] = {"scope": scope}
        if service:
            query["service"] = service
        auth = httpx.BasicAuth(self._username, self._password or "") if self._username is not None else None
        retrier = Retrier(self.retry, self._sleep)
        deadline_at = time.monotonic() + self.deadline
        while True:
            try:
                with call_deadline(deadline_at):
                    r = self._http.get(realm, params=query, auth=auth)
            except httpx.TransportError as e:
                if time.monotonic() >= deadline_at:
                    raise Unavailable(source, f"token service: no complete answer within the {self.deadline:.0f}s "
                                              f"deadline ({type(e).__name__})") from None
                if not retrier.again():
                    raise Unavailable(source, f"token service unreachable ({type(e).__name__})") from None
                continue
            if r.status_code not in self.retry.statuses:
                break
            if not retrier.again(r.status_code, retry_after=parse_retry_after(r.headers.get("retry-after"))):
                cls = RateLimited if r.status_code == 429 else Unavailable
                raise cls(source, "token service keeps failing", r.status_code)
        if r.status_code in (401, 403):
            raise AuthError(source, f"token service refused the credentials for scope {scope}", r.status_code)
        if r.status_code != 200:
            raise AuthError(source, f"token service answered {r.status_code} for scope {scope}", r.status_code)
        try:
            data = r.json()
        except ValueError:
            raise AuthError(source, "token service answer is not JSON") from None
        value = data.get("token") or data.get("access_token")
        if not value:
            raise AuthError(source, "token service answer carries no token")
        expires_in = data.get("expires_in") or 60
        try:
            expires_in = float(expires_in)
        except (TypeError, ValueError):
            expires_in = 60.0
        return _Token(value, time.monotonic() + max(1.0, expires_in - 5.0))

    # -- fast path (http.client keep-alive per thread)

    def _fast_path_possible(self) -> bool:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or (parts.path not in ("", "/")):
            return False
        proxies = urllib.request.getproxies()
        if proxies and not urllib.request.proxy_bypass(parts.hostname or ""):
            return False  # httpx honours proxy settings; the fast path would not
        return True

    def _ssl_context(self) -> ssl.SSLContext:
        """One TLS context per client, shared by the worker threads (building one costs tens of ms)."""
        with self._lock:
            if self._ssl_ctx is None:
                if self._verify is False:
                    self._ssl_ctx = ssl._create_unverified_context()
                elif isinstance(self._verify, str):
                    self._ssl_ctx = ssl.create_default_context(cafile=self._verify)
                else:
                    self._ssl_ctx = ssl.create_default_context()
            return self._ssl_ctx

    def _fast_conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            parts = urlsplit(self.base_url)
            if parts.scheme == "https":
                conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=self.timeout,
                                                   context=deadline_ssl_context(self._ssl_context()))
            else:
                conn = DeadlineHTTPConnection(parts.hostname, parts.port, timeout=self.timeout)
            self._local.conn = conn
            with self._lock:
                self._fast_conns.append(conn)
        return conn

    def _fast_head(self, repo: str, tag: str) -> str | None:
        """One keep-alive HEAD; the digest on a clean 200, else None (the caller takes the full path)."""
        headers = {"Accept": MANIFEST_ACCEPT, "User-Agent": "digestguard"}
        auth = self._auth_header(self._scope(repo, "pull"))
        if auth:
            headers["Authorization"] = auth
        path = f"/v2/{repo}/manifests/{quote(tag, safe='')}"
        deadline_at = time.monotonic() + self.deadline
        for _ in range(2):  # a kept-alive connection the server closed: reconnect once
            conn = self._fast_conn()
            if self.request_limit is not None:
                self.request_limit.acquire(f"registry {self.registry} HEAD {path}", max_wait=self.deadline)
            try:
                with call_deadline(deadline_at):
                    conn.request("HEAD", path, headers=headers)
                    resp = conn.getresponse()
                    resp.read()
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                if time.monotonic() >= deadline_at:
                    raise Unavailable(f"registry {self.registry} HEAD {path}",
                                      f"no complete answer within the {self.deadline:.0f}s deadline of this call "
                                      f"(a slow or stalled registry; {type(e).__name__})") from None
                continue
            if resp.status != 200:
                return None
            if resp.getheader("ratelimit-remaining") is not None:
                limit, window = parse_ratelimit(resp.getheader("ratelimit-limit"))
                remaining, w2 = parse_ratelimit(resp.getheader("ratelimit-remaining"))
                self.rate_limit = RateLimitInfo(limit, remaining, window or w2)
            header = resp.getheader("docker-content-digest")
            if not header:
                return None
            try:
                return parse_digest(header)
            except InputError:
                return None
        return None


def _error_text(r: httpx.Response, body: bytes) -> str:
    """The registry's own error code/message (``{"errors":[{"code","message"}]}``), shortened."""
    try:
        data = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace")
        return (text or r.reason_phrase or f"HTTP {r.status_code}").strip()[:200] or f"HTTP {r.status_code}"
    errs = data.get("errors") if isinstance(data, dict) else None
    if isinstance(errs, list) and errs:
        return "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errs if isinstance(e, dict))[:300]
    return str(data)[:200]


# ---------------------------------------------------------------- many references


def resolve_many(
    refs: Iterable[str | ImageReference],
    *,
    concurrency: int = 64,
    credentials: Mapping[str, tuple[str, str]] | None = None,
    clients: Mapping[str, RegistryClient] | None = None,
    **client_options: Any,
) -> list[Resolution]:
    """Resolve many tag references at once, in input order, one :class:`Resolution` each.

    ``credentials`` maps a registry host (``docker.io``, ``127.0.0.1:5000``) to
    ``(username, password)``; ``clients`` lets a caller pass ready clients (they
    are not closed here); other keyword options go to :class:`RegistryClient`.
    One client per registry is shared by ``concurrency`` worker threads, so
    connections are kept alive and a bearer token is fetched once per scope.

    A pinned reference (``name@sha256:...``) resolves to its own digest with no
    request: pass the tag alone to see where the tag points now. A reference that
    fails to parse or resolve carries its error; nothing is dropped.
    """
    if concurrency < 1:
        raise InputError("concurrency", "must be at least 1")
    items = list(refs)
    own: dict[str, RegistryClient] = {}
    given = dict(clients or {})
    creds = dict(credentials or {})
    lock = threading.Lock()

    def client_for(registry: str) -> RegistryClient:
        if registry in given:
            return given[registry]
        with lock:
            c = own.get(registry)
            if c is None:
                user, pw = creds.get(registry, (None, None))
                c = own[registry] = RegistryClient(registry, username=user, password=pw,
                                                   pool_size=max(concurrency, 1), **client_options)
            return c

    def one(item: str | ImageReference) -> Resolution:
        text = str(item)
        try:
            ref = item if isinstance(item, ImageReference) else parse_reference(item)
            if ref.digest:
                return Resolution(text, ref.digest)
            return Resolution(text, client_for(ref.registry).resolve(ref.repository, ref.effective_tag))
        except DigestguardError as e:
            return Resolution(text, None, e)
        except Exception as e:  # never lose a reference to a surprise; keep it visible as an error
            return Resolution(text, None, IntegrationError(f"resolve {text}", f"{type(e).__name__}: {e}"))

    try:
        if concurrency == 1 or len(items) <= 1:
            return [one(i) for i in items]
        with ThreadPoolExecutor(max_workers=min(concurrency, len(items)), thread_name_prefix="resolve") as pool:
            return list(pool.map(one, items))
    finally:
        for c in own.values():
            c.close()

