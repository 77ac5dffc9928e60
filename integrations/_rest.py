"""The one retry policy of every integration, and the JSON-over-HTTP client the REST vendors share.

:class:`RetryPolicy` and :class:`Retrier` are the ONE place that decides "retry
this? how long to wait?": the same retryable statuses (429, 500, 502, 503, 504
and connection errors) for every client, a capped ``Retry-After``, exponential
back-off, an optional deadline. The hand-written loops (this module's
:class:`RestClient`, the registry client, the Kubernetes pod lister) ask a
:class:`Retrier`; the vendor SDKs that retry themselves (botocore, urllib3 under
hvac, Azure, Google) get their settings from :func:`botocore_config`,
:func:`urllib3_retry`, :func:`azure_retry_kwargs` and :func:`google_retry`,
built from the named policies below; :func:`bounded_session` (hvac) and
:func:`bound_botocore` (boto3) give those SDKs the same total deadline and body caps.

:class:`RestClient` serves GitHub, GitLab, Docker Hub and Artifact Registry:
token header, JSON bodies, ``Link: <...>; rel="next"`` pagination, 429/5xx with
``Retry-After`` or a rate-limit reset epoch, typed errors from
:mod:`digestguard.errors` (via :mod:`integrations._errors`).

Rules this module keeps:

* the token is sent only to the API origin (never to a redirect target such as
  a log-download URL on blob storage), and never appears in an error;
* retries are bounded: at most ``max_retries`` extra attempts, each wait capped
  by ``max_wait``; a wait the server asks for that is longer than ``max_wait``
  is not slept through but raised as :class:`RateLimited` with ``retry_after``
  so the task can decide;
* a non-idempotent ``POST`` is retried only when the server cannot have acted
  on it (429, connection refused), never after a 5xx, so a retry cannot open a
  second pull request;
* one call (every attempt, wait and read) ends within its total ``deadline``:
  bodies are streamed (:func:`read_body`), so a server dripping one byte at a
  time cannot outlast it, and a body over its cap (:data:`MAX_JSON_BYTES` for
  API answers, :data:`MAX_LOG_BYTES` for CI logs, :data:`MAX_ERROR_BYTES` for
  error text) is refused without being held in memory;
* a JSON answer is parsed and its shape checked (:func:`json_answer`) before
  any caller looks inside it.
"""

from __future__ import annotations

import http.client
import random
import re
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self, TypedDict

import httpcore
import httpx
from pydantic import SecretStr

from digestguard.errors import InputError, IntegrationError, RateLimited, Refused, Unavailable
from digestguard.timeutil import iso_z
from integrations._errors import error_for_status, parse_retry_after
from integrations._secret_values import SecretLike, reveal

__all__ = [
    "MAX_ERROR_BYTES", "MAX_JSON_BYTES", "MAX_LOG_BYTES", "json_answer", "read_body",
    "DeadlineHTTPConnection", "call_deadline", "deadline_http_client", "deadline_ssl_context",
    "AWS_SDK_POLICY", "GCP_ACCESS_POLICY", "RETRY_STATUSES", "VAULT_READ_POLICY",
    "Closing", "RateLimit", "RestBackedClient", "RestClient", "RestOptions", "Retrier", "RetryPolicy",
    "MAX_PAGES", "azure_retry_kwargs", "botocore_config", "bound_botocore", "bounded_session", "read_raw", "google_retry", "iso_utc", "next_link",
    "parse_retry_after", "raise_for", "rate_limit", "rate_limit_wait", "redact_url", "urllib3_retry",
]

_LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')
_USERINFO = re.compile(r"(https?://)[^/@\s]+@")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
"""Retryable answers, the same for every client: rate limited, and the server errors that heal by waiting."""

MAX_JSON_BYTES = 16 * 1024 * 1024
"""The cap on one JSON API answer (a page of runs, jobs, pulls): a bigger one is refused, never held."""
MAX_LOG_BYTES = 64 * 1024 * 1024
"""The cap on one CI log download, the same as on one decompressed member of a CI-log folder."""
MAX_ERROR_BYTES = 64 * 1024
"""How much of an error answer is read: enough for the vendor's message, never a flood."""
MAX_PAGES = 1000
"""The cap on pages one paginated read follows: past it the query is too broad (or the server loops)."""
DEFAULT_DEADLINE = 120.0
"""Seconds one REST call may take in total: connect, every attempt, every wait, every read."""


# --------------------------------------------------------------------------- the call's deadline, per socket wait

_CALL_DEADLINE: ContextVar[float | None] = ContextVar("digestguard_call_deadline", default=None)


@contextmanager
def call_deadline(deadline_at: float) -> Iterator[None]:
    """Within this block every socket wait of our HTTP clients (:func:`deadline_http_client`,
    :func:`deadline_ssl_context`, :class:`DeadlineHTTPConnection`) ends by ``deadline_at`` (``time.monotonic()``).

    Why: a socket timeout bounds one wait, not a call. A server that drips its status line and headers one byte
    per wait (a hostile registry, a man in the middle) would hold a call for hours; the body is already cut by
    :func:`read_body`, but the headers come before it. Per thread (a context variable), so clients shared by
    worker threads keep each call's own deadline.
    """
    token = _CALL_DEADLINE.set(deadline_at)
    try:
        yield
    finally:
        _CALL_DEADLINE.reset(token)


def _wait_left(timeout: float | None, exc: type[Exception]) -> float | None:
    """``timeout`` cut to the time left before the current call's deadline; ``exc`` once it has passed."""
    at = _CALL_DEADLINE.get()
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise exc("the deadline of this call has passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """An httpcore stream whose every read, write and TLS handshake waits at most until the call's deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _wait_left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _wait_left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname,
                                                     _wait_left(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's own blocking backend, each connection wrapped in a :class:`_DeadlineStream`."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.connect_tcp(host, port, _wait_left(timeout, httpcore.ConnectTimeout),
                                                       local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.connect_unix_socket(path, _wait_left(timeout, httpcore.ConnectTimeout),
                                                               socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def deadline_http_client(**kwargs: Any) -> httpx.Client:
    """An ``httpx.Client`` (same arguments) whose socket waits end by the deadline of :func:`call_deadline`.

    httpx offers no way to choose httpcore's network backend, so it is set on the connection pool of every
    transport the client made (its own, and one per proxy from the environment) before any connection exists.
    Should an httpx or httpcore upgrade rename those attributes, this refuses to build a client rather than
    build one without the bound (``tests/integration/test_client_faults.py`` drips headers at it).
    """
    client = httpx.Client(**kwargs)
    transports = [client._transport, *(t for t in client._mounts.values() if t is not None)]
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        if not hasattr(pool, "_network_backend"):
            client.close()
            raise RuntimeError(f"cannot bound {type(transport).__name__}: httpx/httpcore internals changed")
        pool._network_backend = _DeadlineBackend()
    return client


class _DeadlineSocket(socket.socket):
    """A plain socket whose receives and sends wait at most until the call's deadline (:func:`call_deadline`)."""

    base_timeout: float | None = None

    def _clamp(self) -> None:
        self.settimeout(_wait_left(self.base_timeout, TimeoutError))

    def recv_into(self, *args: Any, **kwargs: Any) -> int:
        self._clamp()
        return super().recv_into(*args, **kwargs)

    def recv(self, *args: Any, **kwargs: Any) -> bytes:
        self._clamp()
        return super().recv(*args, **kwargs)

    def sendall(self, *args: Any, **kwargs: Any) -> None:
        self._clamp()
        super().sendall(*args, **kwargs)


class _DeadlineSSLSocket(ssl.SSLSocket):
    """The TLS socket of a :func:`deadline_ssl_context`: reads and writes end by the call's deadline."""

    def _clamp(self) -> None:
        base = getattr(self, "_digestguard_timeout", _MISSING_TIMEOUT)
        if base is _MISSING_TIMEOUT:
            base = self._digestguard_timeout = self.gettimeout()
        self.settimeout(_wait_left(base, TimeoutError))

    def recv_into(self, *args: Any, **kwargs: Any) -> int:
        self._clamp()
        return super().recv_into(*args, **kwargs)

    def recv(self, *args: Any, **kwargs: Any) -> bytes:
        self._clamp()
        return super().recv(*args, **kwargs)

    def sendall(self, *args: Any, **kwargs: Any) -> None:
        self._clamp()
        super().sendall(*args, **kwargs)


_MISSING_TIMEOUT = object()


def deadline_ssl_context(context: ssl.SSLContext) -> ssl.SSLContext:
    """``context``, its sockets made :class:`_DeadlineSSLSocket` (``SSLContext.sslsocket_class``); returns it."""
    context.sslsocket_class = _DeadlineSSLSocket
    return context


class DeadlineHTTPConnection(http.client.HTTPConnection):
    """``http.client.HTTPConnection`` whose socket waits end by the deadline of :func:`call_deadline`."""

    def connect(self) -> None:
        super().connect()
        if self.sock is not None and not isinstance(self.sock, (_DeadlineSocket, ssl.SSLSocket)):
            raw = self.sock
            sock = _DeadlineSocket(raw.family, raw.type, raw.proto, fileno=raw.detach())
            sock.base_timeout = self.timeout if isinstance(self.timeout, (int, float)) else None
            sock.settimeout(sock.base_timeout)
            self.sock = sock


# --------------------------------------------------------------------------- the retry policy


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long one request is retried.

    ``max_retries`` extra attempts after the first; the n-th retry waits
    ``backoff * 2**n`` capped at ``max_backoff`` (with ``jitter``, a random
    50-100 % of that), or what the server asked for in ``Retry-After``. A
    server-asked wait longer than ``max_wait`` is not slept through: the caller
    gets the error (``RateLimited`` with ``retry_after``) and decides. With a
    ``deadline`` (seconds since the first attempt) no wait may end after it.
    """

    max_retries: int = 4
    backoff: float = 0.5
    max_backoff: float = 60.0
    max_wait: float = 60.0
    deadline: float | None = None
    statuses: frozenset[int] = RETRY_STATUSES
    jitter: bool = False

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise InputError("retry policy", "max_retries must be >= 0", field="max_retries")

    def retryable(self, status: int | None, *, safe: bool = True) -> bool:
        """Whether an answer is worth another try: ``status`` None is a connection error.

        ``safe`` says repeating cannot do a thing twice (an idempotent method, or a
        request the server refused before acting on it, as with 429).
        """
        return safe and (status is None or status in self.statuses)

    def backoff_delay(self, retry: int) -> float:
        """The wait before retry number ``retry + 1`` when the server named none."""
        base = min(self.max_backoff, self.backoff * (2**retry))
        return base * (0.5 + random.random() / 2) if self.jitter else base

    def wait(self, retry: int, *, retry_after: float | None = None, elapsed: float = 0.0) -> float | None:
        """Seconds to wait before retry number ``retry + 1``, or None to give up now."""
        if retry >= self.max_retries:
            return None
        delay = retry_after if retry_after is not None else self.backoff_delay(retry)
        if delay > self.max_wait:
            return None
        if self.deadline is not None and elapsed + delay > self.deadline:
            return None
        return delay


class Retrier:
    """The retries of one request under a :class:`RetryPolicy`: counts them, keeps the deadline, sleeps.

    ``sleep`` exists so a caller with its own clock (a test, a Prefect task) can wait its way.
    """

    def __init__(self, policy: RetryPolicy, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.retries = 0
        self._sleep = sleep
        self._clock = clock
        self._started = clock()

    @property
    def attempts(self) -> int:
        """Attempts made so far (the first one included)."""
        return self.retries + 1

    def again(self, status: int | None = None, *, retry_after: float | None = None, safe: bool = True) -> bool:
        """True (after sleeping) when the request should be sent again; False when the caller should raise."""
        if not self.policy.retryable(status, safe=safe):
            return False
        delay = self.policy.wait(self.retries, retry_after=retry_after, elapsed=self._clock() - self._started)
        if delay is None:
            return False
        self._sleep(delay)
        self.retries += 1
        return True


# The vendor SDKs that retry themselves, configured from these policies and nowhere else.
# Their numbers are the ones each client has always used (behaviour unchanged):
AWS_SDK_POLICY = RetryPolicy(max_retries=5)
"""botocore standard mode: 5 retries (throttling, 5xx, connection errors) with its own capped back-off."""
VAULT_READ_POLICY = RetryPolicy(max_retries=3, backoff=0.5, max_backoff=8.0, statuses=frozenset({429, 502, 503, 504}))
"""hvac's session: reads retried 3 times (2 of them for connection errors), writes never."""
GCP_ACCESS_POLICY = RetryPolicy(backoff=2.0, max_backoff=60.0, deadline=60.0, statuses=frozenset({429, 503}))
"""Secret Manager's own retry of ``access_secret_version`` (time-bounded, as google-api-core retries are)."""
AZURE_SDK_POLICY = RetryPolicy(max_retries=10, backoff=0.8, max_backoff=120.0)
"""azure-core's ``RetryPolicy`` defaults (10 retries, 0.8 s back-off factor, 120 s cap), named here."""


def botocore_config(policy: RetryPolicy = AWS_SDK_POLICY, *, connect_timeout: float = 10, read_timeout: float = 30):
    """A botocore ``Config`` retrying per ``policy`` (botocore's ``max_attempts`` counts retries, as ours does)."""
    from botocore.config import Config  # heavy optional import: only the AWS clients need it

    return Config(retries={"mode": "standard", "max_attempts": policy.max_retries},
                  connect_timeout=connect_timeout, read_timeout=read_timeout)


def urllib3_retry(policy: RetryPolicy = VAULT_READ_POLICY, *, methods: frozenset[str] = frozenset({"GET", "LIST", "HEAD"})):
    """A urllib3 ``Retry`` per ``policy`` for a ``requests`` session: only ``methods`` retried, Retry-After honoured.

    Connection errors get one retry fewer than answers (a server that is down stays down
    for a while); a read error is never retried: the request may have been acted on.
    """
    from urllib3.exceptions import MaxRetryError
    from urllib3.util.retry import Retry  # imported with requests only by the clients that need it

    max_wait = policy.max_wait

    class CappedRetry(Retry):
        """urllib3's ``Retry``, except that a ``Retry-After`` over the policy's ``max_wait`` is not slept
        through (urllib3 sleeps any length asked): the answer goes back to the caller as it is."""

        def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
            asked = parse_retry_after(response.headers.get("retry-after")) if response is not None else None
            if asked is not None and asked > max_wait:
                raise MaxRetryError(_pool, url or "", None)  # with raise_on_status=False: the answer is returned
            return super().increment(method, url, response, error, _pool, _stacktrace)

    return CappedRetry(
        total=policy.max_retries, connect=max(0, policy.max_retries - 1), read=0,
        backoff_factor=policy.backoff, backoff_max=policy.max_backoff,
        status_forcelist=tuple(sorted(policy.statuses)), allowed_methods=methods,
        respect_retry_after_header=True, raise_on_status=False,
    )


def read_raw(raw: Any, response: Any, source: str, *, limit: int, deadline_at: float, deadline: float,
             decode: bool = False) -> bytes:
    """The body of a not-yet-read urllib3 answer ``raw`` (``response`` gives its status and headers), read as
    :func:`read_body` reads an httpx one, for the SDKs built on urllib3 (requests under hvac, botocore).

    ``read1`` returns what one socket read brought, so a drip is seen chunk by chunk; a timer shuts the
    socket down at ``deadline_at`` (urllib3's ``HTTPResponse.shutdown``), so even one byte per socket
    timeout cannot outlast the deadline (:class:`Unavailable`). The connection goes back to the pool only
    when the answer was read whole; any other exception from the read comes out as it is, connection closed.
    """
    import urllib3.exceptions  # imported only by the clients that need it

    def cut() -> None:
        try:
            raw.shutdown()
        except (ValueError, RuntimeError, OSError):
            pass  # already released or closed: nothing left to cut

    def chunks() -> Iterator[bytes]:
        while chunk := raw.read1(64 * 1024, decode_content=decode):
            yield chunk

    late = f"answer not complete within the {deadline:.0f}s deadline of this call (a slow or stalled server)"
    timer = threading.Timer(max(0.0, deadline_at - time.monotonic()), cut)
    timer.daemon = True
    timer.start()
    try:
        body = read_body(response, source, limit=limit, deadline_at=deadline_at, deadline=deadline, chunks_in=chunks())
        if time.monotonic() >= deadline_at:  # the timer cut the read short: what came is not all of it
            raise Unavailable(source, late)
    except (OSError, urllib3.exceptions.HTTPError):
        raw.close()
        if time.monotonic() >= deadline_at:
            raise Unavailable(source, late) from None
        raise
    except BaseException:
        raw.close()
        raise
    finally:
        timer.cancel()
    raw.release_conn()
    return body


def bounded_session(vendor: str, *, deadline: float = DEFAULT_DEADLINE, max_body: int = MAX_JSON_BYTES,
                    retry: Any = None):
    """A ``requests.Session`` (for an SDK that takes one, as ``hvac.Client(session=...)``) whose every
    request ends within ``deadline`` seconds and whose answers are capped like :class:`RestClient`'s.

    What is bounded, per request: each socket wait by ``min(timeout, time left)``; the body, read by
    :func:`read_raw` under ``max_body`` (2xx, else :data:`MAX_ERROR_BYTES`) and cut at the deadline.
    Over the deadline: :class:`Unavailable`; over the cap: :class:`Refused`, both naming ``vendor`` and
    the URL (no query). Not bounded by the deadline: the
    status line and headers (each socket read only by the timeout) and urllib3's own retries before the
    answer (bounded by ``retry``'s count and capped waits, see :func:`urllib3_retry`).
    """
    import requests  # imported only by the clients that need it
    import urllib3.exceptions
    from requests.adapters import HTTPAdapter

    if deadline <= 0:
        raise InputError(f"{vendor} client", "deadline must be > 0 seconds", field="deadline")

    class BoundedSession(requests.Session):
        def send(self, request: Any, **kwargs: Any) -> Any:
            source = f"{vendor} {redact_url(str(request.url).split('?', 1)[0])}"
            deadline_at = time.monotonic() + deadline
            timeout = kwargs.get("timeout") or deadline
            connect_t, read_t = timeout if isinstance(timeout, tuple) else (timeout, timeout)
            kwargs["timeout"] = (min(connect_t or deadline, deadline), min(read_t or deadline, deadline))
            kwargs["stream"] = True
            response = super().send(request, **kwargs)
            try:
                body = read_raw(response.raw, response, source, limit=max_body, deadline_at=deadline_at,
                                deadline=deadline, decode=True)
            except (OSError, urllib3.exceptions.HTTPError) as e:
                raise requests.ConnectionError(f"answer cut short: {type(e).__name__}") from None
            response._content = body
            response._content_consumed = True
            return response

    session = BoundedSession()
    adapter_retry = urllib3_retry() if retry is None else retry
    session.mount("http://", HTTPAdapter(max_retries=adapter_retry))
    session.mount("https://", HTTPAdapter(max_retries=adapter_retry))
    return session


def bound_botocore(client: Any, source: str, *, deadline: float = DEFAULT_DEADLINE, max_body: int = MAX_JSON_BYTES):
    """Give every API call of the boto3 ``client`` a total ``deadline`` and its answers a ``max_body`` cap;
    returns ``client``. botocore has per-socket timeouts and counted retries, no total deadline, and it
    reads a whole answer into memory however slowly it comes and however big it is.

    How, the botocore way: ``before-call`` (once per API call) starts the call's clock; ``before-send``
    (once per attempt) refuses an attempt after the deadline (:class:`Unavailable`, not retried) and
    otherwise sends the signed request through the client's own HTTP session (its TLS, proxy and pool
    settings) and reads the answer with :func:`read_raw`: at most ``max_body`` bytes (:class:`Refused`),
    cut at the deadline even when it drips one byte per socket timeout. What stays bounded only by
    botocore's settings (:func:`botocore_config`): the connect and the status line and headers of one
    attempt (``connect_timeout``/``read_timeout`` per socket wait), and the back-off between retries
    (counted, capped by botocore, checked against the deadline before the next attempt). Paginating
    callers add their own page cap (:data:`MAX_PAGES`).
    """
    from botocore.exceptions import ConnectionClosedError  # heavy optional import: only the AWS clients
    from urllib3.exceptions import HTTPError

    if deadline <= 0:
        raise InputError(source, "deadline must be > 0 seconds", field="deadline")
    clock = threading.local()
    http = client._endpoint.http_session  # botocore's own URLLib3Session: the same one its _send uses

    def start(**_: Any) -> None:
        clock.deadline_at = time.monotonic() + deadline

    def send(request: Any, **_: Any) -> Any:
        deadline_at = getattr(clock, "deadline_at", None) or time.monotonic() + deadline
        if time.monotonic() >= deadline_at:
            raise Unavailable(source, f"no answer within the {deadline:.0f}s deadline of this call")
        streams = request.stream_output
        request.stream_output = True  # else botocore's send reads the whole answer itself, unbounded
        try:
            response = http.send(request)
        finally:
            request.stream_output = streams
        if streams:
            return response  # a streamed download (S3 GetObject): its reader bounds it, not us
        try:
            response._content = read_raw(response.raw, response, source, limit=max_body,
                                          deadline_at=deadline_at, deadline=deadline)
        except (OSError, HTTPError):
            raise ConnectionClosedError(endpoint_url=request.url) from None  # botocore may retry this one
        return response

    client.meta.events.register("before-call", start)
    client.meta.events.register("before-send", send)
    return client


def azure_retry_kwargs(policy: RetryPolicy = AZURE_SDK_POLICY) -> dict[str, Any]:
    """azure-core client keyword arguments retrying per ``policy`` (429/5xx, honouring Retry-After)."""
    return {"retry_total": policy.max_retries, "retry_backoff_factor": policy.backoff,
            "retry_backoff_max": policy.max_backoff}


def google_retry(policy: RetryPolicy = GCP_ACCESS_POLICY):
    """A google-api-core ``Retry`` per ``policy``: its statuses as exceptions, doubling back-off, deadline."""
    import google.api_core.exceptions as gx  # heavy optional import: only the GCP client needs it
    from google.api_core import retry as gretry

    kinds = tuple(gx.exception_class_for_http_status(s) for s in sorted(policy.statuses))
    return gretry.Retry(predicate=gretry.if_exception_type(*kinds), initial=policy.backoff,
                        maximum=policy.max_backoff, multiplier=2.0, timeout=policy.deadline)


# --------------------------------------------------------------------------- HTTP helpers


def redact_url(url: str) -> str:
    """``url`` without any ``user:password@`` part, for messages and results."""
    return _USERINFO.sub(r"\1", url)


def next_link(response: httpx.Response) -> str | None:
    """The ``rel="next"`` URL of a ``Link`` header, if any (RFC 8288, as GitHub and GitLab send it)."""
    header = response.headers.get("link")
    if not header:
        return None
    for part in header.split(","):
        m = _LINK_NEXT.search(part)
        if m:
            return m.group(1)
    return None


def iso_utc(value: datetime, name: str, source: str) -> str:
    """ISO-8601 UTC with ``Z``; naive datetimes are refused because an incident window must not shift by a timezone."""
    if not isinstance(value, datetime):
        raise InputError(source, f"expected a datetime, got {type(value).__name__}", field=name)
    if value.tzinfo is None:
        raise InputError(source, "datetime has no timezone; pass an aware UTC datetime", field=name)
    return iso_z(value)


def rate_limit_wait(response: httpx.Response) -> float | None:
    """How long the server asks us to wait, or ``None`` when this is not a rate limit.

    GitHub signals its primary limit with 403 *or* 429 and ``x-ratelimit-remaining: 0``
    plus ``x-ratelimit-reset`` (epoch seconds), and secondary limits with 403/429 and
    ``Retry-After``. GitLab uses 429 with ``Retry-After`` and ``RateLimit-Reset``.
    A 403 without any of these is a permission problem, not a rate limit.
    """
    status = response.status_code
    if status not in (403, 429):
        return None
    headers = response.headers
    after = parse_retry_after(headers.get("retry-after"))
    if after is not None:
        return after
    remaining = headers.get("x-ratelimit-remaining", headers.get("ratelimit-remaining"))
    reset = headers.get("x-ratelimit-reset", headers.get("ratelimit-reset"))
    if remaining is not None and remaining.strip() == "0" and reset:
        try:
            return max(0.0, float(reset) - time.time()) + 1.0
        except ValueError:
            return 60.0
    if status == 429:
        # Limited but without a usable hint: wait until the reset epoch if there is one,
        # else let the caller's back-off decide (None keeps it a RateLimited error).
        try:
            return max(0.0, float(reset) - time.time()) + 1.0 if reset else None
        except ValueError:
            return None
    text = response.text[:500].lower() if status == 403 else ""
    if "rate limit" in text:
        return 60.0
    return None


def _message(response: httpx.Response) -> str:
    """The vendor's own error text, shortened; both vendors put it under ``message`` or ``error``."""
    try:
        body = response.json()
    except ValueError:
        return (response.text or response.reason_phrase or "").strip()[:300] or f"HTTP {response.status_code}"
    if isinstance(body, dict):
        parts = []
        for key in ("message", "error", "error_description"):
            if key in body and body[key]:
                parts.append(str(body[key]))
        errors = body.get("errors")
        if errors:
            parts.append(str(errors))
        if parts:
            return "; ".join(parts)[:300]
    return str(body)[:300]


def read_body(response: Any, source: str, *, limit: int, deadline_at: float, deadline: float,
              error_limit: int = MAX_ERROR_BYTES, chunks_in: Iterable[bytes] | None = None) -> bytes:
    """The body of a streamed ``response``, read chunk by chunk: at most ``limit`` bytes for a 2xx answer
    (more raises :class:`Refused`, declared or read, and nothing more is read), at most ``error_limit``
    for any other (the rest is dropped), and never past ``deadline_at`` (:class:`Unavailable`).

    ``response`` is an ``httpx.Response`` (its ``iter_bytes()`` is read) or, with ``chunks_in``, any
    answer with ``status_code`` and ``headers`` whose body ``chunks_in`` yields (a ``requests`` one)."""
    ok = 200 <= response.status_code < 300
    cap = limit if ok else error_limit
    declared = response.headers.get("content-length", "")
    if ok and declared.isdigit() and int(declared) > cap:
        raise Refused(source, f"answer of {int(declared)} bytes is over the {cap}-byte cap; not read")
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes() if chunks_in is None else chunks_in:
        size += len(chunk)
        if size > cap:
            if ok:
                raise Refused(source, f"answer is over the {cap}-byte cap; not read further")
            chunks.append(chunk[: cap - (size - len(chunk))])
            break
        chunks.append(chunk)
        if time.monotonic() > deadline_at:
            raise Unavailable(source, f"answer not complete within the {deadline:.0f}s deadline of this call "
                                      "(a slow or stalled server)")
    return b"".join(chunks)


def json_answer(response: httpx.Response, source: str, expect: type | tuple[type, ...] = dict) -> Any:
    """``response``'s JSON body, checked to be an ``expect`` (an object by default) before anyone looks inside."""
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        raise IntegrationError(source, f"answer is not JSON (HTTP {response.status_code}, "
                                       f"{len(response.content)} bytes)", status=response.status_code) from None
    if not isinstance(body, expect):
        want = " or ".join(t.__name__ for t in (expect if isinstance(expect, tuple) else (expect,)))
        raise IntegrationError(source, f"answer is a JSON {type(body).__name__}, expected {want}",
                               status=response.status_code)
    return body


def raise_for(response: httpx.Response, source: str, *, wait: float | None = None) -> None:
    """Translate an unsuccessful response into the matching typed error."""
    raise error_for_status(source, response.status_code, _message(response), retry_after=wait)


class RateLimit:
    """At most ``count`` requests in any ``per`` seconds, across the threads of a process (a sliding window).

    The one client-side pacer of every vendor with a documented request budget: GitHub's 80 content-creating
    requests a minute, CloudTrail ``LookupEvents``' 2 a second, Docker Hub's abuse limit. :meth:`acquire`
    reserves the next free slot and sleeps until it; a slot further away than ``max_wait`` is not waited
    for: :class:`RateLimited` (with ``retry_after``) is raised instead, so the stage reports that target
    as throttled rather than stalling the run. ``clock``/``sleep`` exist for tests.
    """

    def __init__(self, count: int, per: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if count < 1 or per <= 0:
            raise InputError("rate limit", f"{count} per {per}s is not a budget (need count >= 1, per > 0)")
        self.count, self.per = count, per
        self._grants: deque[float] = deque(maxlen=count)
        self._lock = threading.Lock()
        self._clock, self._sleep = clock, sleep
        self.waited = 0.0
        """Seconds slept so far (reported beside the stage's timings)."""

    def acquire(self, source: str = "rate limit", *, max_wait: float | None = None) -> float:
        """Take one slot, sleeping until it is free; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            at = now if len(self._grants) < self.count else max(now, self._grants[0] + self.per)
            delay = at - now
            if max_wait is not None and delay > max_wait:
                raise RateLimited(source, f"throttled: the client-side budget of {self.count} requests per "
                                          f"{self.per:g}s is spent for the next {delay:.0f}s", status=None,
                                  retry_after=delay)
            self._grants.append(at)  # maxlen drops the oldest grant
            self.waited += max(delay, 0.0)
        if delay > 0:
            self._sleep(delay)
        return max(delay, 0.0)


_LIMITS: dict[tuple[str, str], RateLimit] = {}
_LIMITS_LOCK = threading.Lock()


def rate_limit(vendor: str, key: str, count: int, per: float) -> RateLimit:
    """The process-wide :class:`RateLimit` of one vendor endpoint (``key``: its URL, region, account...).

    Every client of the same endpoint in this process shares it, so two clients (or two stages) cannot
    spend the same budget twice. A new ``count``/``per`` for the same key replaces the old budget.
    """
    with _LIMITS_LOCK:
        cur = _LIMITS.get((vendor, key))
        if cur is None or (cur.count, cur.per) != (count, per):
            cur = _LIMITS[(vendor, key)] = RateLimit(count, per)
        return cur


class RestClient:
    """One API endpoint, one token header, bounded retries, typed errors.

    ``auth_headers`` are sent only on requests to ``api_url``'s origin.
    ``timeout`` bounds one socket operation, ``deadline`` one call in total (every attempt, wait and read).
    ``sleep`` exists so a caller with its own clock (a Prefect task) can wait its way.
    """

    def __init__(
        self,
        *,
        vendor: str,
        api_url: str,
        auth_headers: Mapping[str, str],
        default_headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        max_retries: int = 4,
        max_wait: float = 60.0,
        backoff: float = 0.5,
        deadline: float = DEFAULT_DEADLINE,
        sleep: Callable[[float], None] = time.sleep,
        write_limit: RateLimit | None = None,
        request_limit: RateLimit | None = None,
    ) -> None:
        if not api_url or not api_url.startswith(("http://", "https://")):
            raise InputError(f"{vendor} api_url", f"{api_url!r} is not an http(s) URL")
        if max_retries < 0:
            raise InputError(f"{vendor} client", "max_retries must be >= 0", field="max_retries")
        if deadline <= 0:
            raise InputError(f"{vendor} client", "deadline must be > 0 seconds", field="deadline")
        self.retry = RetryPolicy(max_retries=max_retries, backoff=backoff, max_backoff=max_wait, max_wait=max_wait,
                                 deadline=deadline)
        self.deadline = deadline
        self.timeout = timeout
        self.vendor = vendor
        self.api_url = api_url.rstrip("/")
        self._origin = httpx.URL(self.api_url).copy_with(path="/", query=None, fragment=None)
        self._auth = dict(auth_headers)
        self._http = deadline_http_client(
            base_url=self.api_url + "/",
            headers=dict(default_headers or {}),
            timeout=timeout,
            follow_redirects=False,
        )
        self._sleep = sleep
        self.write_limit = write_limit
        """Paces content-creating requests (POST, PUT, PATCH, DELETE), e.g. GitHub's 80 a minute."""
        self.request_limit = request_limit
        """Paces every request, e.g. Docker Hub's per-address abuse limit."""
        self.max_wait = max_wait

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def source(self, method: str, path: str) -> str:
        """How errors name where they came from: vendor, API host, method and path (no query, no token)."""
        path = str(httpx.URL(path).path) if path.startswith("http") else path.split("?", 1)[0]
        return f"{self.vendor} {redact_url(self.api_url)} {method} {path}"

    def _same_origin(self, url: httpx.URL) -> bool:
        return (url.scheme, url.host, url.port) == (self._origin.scheme, self._origin.host, self._origin.port)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        ok: tuple[int, ...] = (200, 201, 204),
        headers: Mapping[str, str] | None = None,
        source: str | None = None,
        max_body: int = MAX_JSON_BYTES,
    ) -> httpx.Response:
        """Send one request, retrying 429/5xx/transport errors within the bounds; return an ``ok`` response.

        ``path`` is relative to ``api_url`` (``/repos/o/r``) or absolute (a pagination or
        redirect URL). Absolute URLs on another origin get no auth header. The answer's body is
        read in full (at most ``max_body`` bytes) within the call's ``deadline``.
        """
        src = source or self.source(method, path)
        url = httpx.URL(path) if path.startswith(("http://", "https://")) else httpx.URL(self.api_url + "/" + path.lstrip("/"))
        send_headers = dict(headers or {})
        if self._same_origin(url):
            send_headers.update(self._auth)
        safe_to_repeat = method.upper() != "POST"
        retrier = Retrier(self.retry, self._sleep)
        deadline_at = time.monotonic() + self.deadline
        redirects = 0
        while True:
            if self.request_limit is not None:
                self.request_limit.acquire(src, max_wait=self.max_wait)
            if self.write_limit is not None and method.upper() in _WRITES:
                self.write_limit.acquire(src, max_wait=self.max_wait)
            try:
                response = self._send(method, url, params, json, send_headers, src, max_body, deadline_at)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # The request never reached the server: repeating is safe for any method.
                if time.monotonic() >= deadline_at or not retrier.again():
                    raise Unavailable(src, f"cannot connect: {type(exc).__name__}") from None
                continue
            except httpx.TransportError as exc:
                if time.monotonic() >= deadline_at:
                    raise Unavailable(src, f"no complete answer within the {self.deadline:.0f}s deadline of this call "
                                           f"(a slow or stalled server; {type(exc).__name__})") from None
                if not retrier.again(safe=safe_to_repeat):
                    raise Unavailable(src, f"transport error: {type(exc).__name__}") from None
                continue
            if response.status_code in ok:
                return response
            location = response.headers.get("location")
            if response.status_code in (301, 302, 303, 307, 308) and location and method.upper() in ("GET", "HEAD") and redirects < 5:
                # A renamed or moved repository answers 301; follow it, sending the token only on our origin.
                redirects += 1
                url = url.join(location)
                send_headers = dict(headers or {})
                if self._same_origin(url):
                    send_headers.update(self._auth)
                continue
            limit_wait = rate_limit_wait(response)
            wait = limit_wait
            if wait is None and response.status_code in self.retry.statuses:
                wait = parse_retry_after(response.headers.get("retry-after"))  # a 503 may ask too: same cap
            message = _message(response)
            if wait is not None and wait > self.retry.max_wait:
                message += f"; the server asks to wait {wait:.0f}s, over the {self.retry.max_wait:.0f}s cap"
            error = error_for_status(src, response.status_code, message, retry_after=limit_wait)
            limited = isinstance(error, RateLimited)  # the server refused before acting: safe to repeat
            if not retrier.again(429 if limited else response.status_code, retry_after=wait,
                                 safe=safe_to_repeat or limited):
                raise error from None

    def _send(self, method: str, url: httpx.URL, params: Mapping[str, Any] | None, json: Any,
              headers: dict[str, str], source: str, max_body: int, deadline_at: float) -> httpx.Response:
        """One streamed attempt: no socket wait beyond the call's deadline, the body read under its cap."""
        remaining = deadline_at - time.monotonic()
        if remaining <= 0:
            raise Unavailable(source, f"no answer within the {self.deadline:.0f}s deadline of this call")
        request = self._http.build_request(method, url, params=params, json=json, headers=headers,
                                           timeout=httpx.Timeout(min(self.timeout, remaining)))
        with call_deadline(deadline_at):
            streamed = self._http.send(request, stream=True)
            try:
                body = read_body(streamed, source, limit=max_body, deadline_at=deadline_at, deadline=self.deadline)
            finally:
                streamed.close()
        return httpx.Response(streamed.status_code, headers=streamed.headers, content=body, request=request)

    def json_of(self, response: httpx.Response, path: str, expect: type | tuple[type, ...] = dict,
                method: str = "GET") -> Any:
        """``response``'s JSON, checked to be an ``expect`` (see :func:`json_answer`)."""
        return json_answer(response, self.source(method, path), expect)

    def get_json(self, path: str, *, params: Mapping[str, Any] | None = None,
                 expect: type | tuple[type, ...] = dict) -> Any:
        """GET ``path`` and return its JSON answer, refused unless it is an ``expect`` (an object by default)."""
        return self.json_of(self.request("GET", path, params=params, ok=(200,)), path, expect)

    def paginate(
        self,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        item_key: str | None = None,
        max_pages: int = MAX_PAGES,
    ) -> Iterator[dict[str, Any]]:
        """Yield every item over all pages, following ``Link: rel="next"``.

        ``item_key`` names the list inside an object answer (GitHub's
        ``{"total_count":..,"workflow_runs":[..]}``); ``None`` means the answer is the list.
        """
        url: str | None = path
        current_params = dict(params or {})
        pages = 0
        while url is not None:
            response = self.request("GET", url, params=current_params or None, ok=(200,))
            body = self.json_of(response, path, (dict, list))
            items = body.get(item_key, []) if item_key and isinstance(body, dict) else body
            if not isinstance(items, list):
                raise IntegrationError(self.source("GET", path), f"expected a list under {item_key or 'the body'}")
            if not all(isinstance(i, dict) for i in items):
                raise IntegrationError(self.source("GET", path), f"expected a list of objects under {item_key or 'the body'}")
            yield from items
            url = next_link(response)
            current_params = {}  # the next link carries the full query
            pages += 1
            if pages >= max_pages:
                raise IntegrationError(self.source("GET", path), f"more than {max_pages} pages; narrow the query")


_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class RestOptions(TypedDict, total=False):
    """The knobs a :class:`RestBackedClient` passes on to its :class:`RestClient`."""

    timeout: float
    max_retries: int
    max_wait: float
    backoff: float
    deadline: float
    write_limit: RateLimit | None
    request_limit: RateLimit | None


class Closing:
    """``with client:`` closes it at the end; the one lifecycle every integration client with a ``close()`` shares."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RestBackedClient(Closing):
    """Set-up and lifecycle shared by the clients built on one :class:`RestClient`, ``self.rest``."""

    rest: RestClient

    def _open(
        self,
        vendor: str,
        token: SecretLike,
        api_url: str,
        auth_headers: Callable[[str], Mapping[str, str]],
        default_headers: Mapping[str, str],
        options: RestOptions,
    ) -> None:
        """Check and reveal ``token`` (only into the auth header), then make ``self.rest`` for ``api_url``."""
        if not token or (isinstance(token, SecretStr) and not token.get_secret_value()):
            raise InputError(f"{vendor} token", "no token given (a token reference resolved to nothing?)")
        tok = reveal(token, source=f"{vendor} token")
        self.rest = RestClient(vendor=vendor, api_url=api_url, auth_headers=auth_headers(tok),
                               default_headers=default_headers, **options)

    @property
    def api_url(self) -> str:
        return self.rest.api_url

    def close(self) -> None:
        self.rest.close()
