"""A small JSON-over-HTTP core shared by the GitHub and GitLab clients.

Why not one per vendor: both speak the same dialect (bearer-ish token header,
JSON bodies, ``Link: <...>; rel="next"`` pagination, 429/5xx with
``Retry-After`` or a rate-limit reset epoch). Keeping the retry and error
mapping in one place means both clients retry the same way and raise the same
typed errors from :mod:`digestguard.errors`.

Rules this module keeps:

* the token is sent only to the API origin (never to a redirect target such as
  a log-download URL on blob storage), and never appears in an error;
* retries are bounded: at most ``max_retries`` extra attempts, each wait capped
  by ``max_wait``; a wait the server asks for that is longer than ``max_wait``
  is not slept through but raised as :class:`RateLimited` with ``retry_after``
  so the task can decide;
* a non-idempotent ``POST`` is retried only when the server cannot have acted
  on it (429, connection refused), never after a 5xx, so a retry cannot open a
  second pull request.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from typing import Any

import httpx

from digestguard.errors import (
    AuthError,
    InputError,
    IntegrationError,
    NotFound,
    RateLimited,
    Refused,
    Unavailable,
)

_LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')
_USERINFO = re.compile(r"(https?://)[^/@\s]+@")

RETRYABLE_5XX = frozenset({500, 502, 503, 504})


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


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def api_time(value: Any) -> datetime | None:
    """An API timestamp (``2026-04-22T13:05:11Z``) as an aware datetime; None when absent."""
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def iso_utc(value: datetime, name: str, source: str) -> str:
    """ISO-8601 UTC with ``Z``; naive datetimes are refused because an incident window must not shift by a timezone."""
    if not isinstance(value, datetime):
        raise InputError(source, f"expected a datetime, got {type(value).__name__}", field=name)
    if value.tzinfo is None:
        raise InputError(source, "datetime has no timezone; pass an aware UTC datetime", field=name)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def raise_for(response: httpx.Response, source: str, *, wait: float | None = None) -> None:
    """Translate an unsuccessful response into the matching typed error."""
    status = response.status_code
    msg = _message(response)
    if wait is not None or status == 429:
        raise RateLimited(source, f"rate limited: {msg}", status=status, retry_after=wait)
    if status in (401, 403):
        raise AuthError(source, f"credential refused or lacks permission: {msg}", status=status)
    if status in (404, 410):
        raise NotFound(source, msg, status=status)
    if status >= 500:
        raise Unavailable(source, msg, status=status)
    if status in (400, 405, 409, 412, 422):
        raise Refused(source, msg, status=status)
    raise IntegrationError(source, f"unexpected answer: {msg}", status=status)


class RestClient:
    """One API endpoint, one token header, bounded retries, typed errors.

    ``auth_headers`` are sent only on requests to ``api_url``'s origin.
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
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not api_url or not api_url.startswith(("http://", "https://")):
            raise InputError(f"{vendor} api_url", f"{api_url!r} is not an http(s) URL")
        if max_retries < 0:
            raise InputError(f"{vendor} client", "max_retries must be >= 0", field="max_retries")
        self.vendor = vendor
        self.api_url = api_url.rstrip("/")
        self._origin = httpx.URL(self.api_url).copy_with(path="/", query=None, fragment=None)
        self._auth = dict(auth_headers)
        self._http = httpx.Client(
            base_url=self.api_url + "/",
            headers=dict(default_headers or {}),
            timeout=timeout,
            follow_redirects=False,
        )
        self.max_retries = max_retries
        self.max_wait = max_wait
        self.backoff = backoff
        self._sleep = sleep

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
    ) -> httpx.Response:
        """Send one request, retrying 429/5xx/transport errors within the bounds; return an ``ok`` response.

        ``path`` is relative to ``api_url`` (``/repos/o/r``) or absolute (a pagination or
        redirect URL). Absolute URLs on another origin get no auth header.
        """
        src = source or self.source(method, path)
        url = httpx.URL(path) if path.startswith(("http://", "https://")) else httpx.URL(self.api_url + "/" + path.lstrip("/"))
        send_headers = dict(headers or {})
        if self._same_origin(url):
            send_headers.update(self._auth)
        safe_to_repeat = method.upper() != "POST"
        attempt = 0
        redirects = 0
        while True:
            try:
                response = self._http.request(method, url, params=params, json=json, headers=send_headers)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # The request never reached the server: repeating is safe for any method.
                error: IntegrationError = Unavailable(src, f"cannot connect: {type(exc).__name__}")
                wait = None
            except httpx.TransportError as exc:
                error = Unavailable(src, f"transport error: {type(exc).__name__}")
                wait = None
                if not safe_to_repeat:
                    raise error from None
            else:
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
                wait = rate_limit_wait(response)
                try:
                    raise_for(response, src, wait=wait)
                except IntegrationError as exc:
                    error = exc
                retryable = isinstance(error, RateLimited) or (
                    response.status_code in RETRYABLE_5XX and safe_to_repeat
                )
                if not retryable:
                    raise error from None
            if attempt >= self.max_retries:
                raise error from None
            delay = wait if wait is not None else min(self.max_wait, self.backoff * (2**attempt))
            if delay > self.max_wait:
                # The server wants more patience than we may spend here: let the caller decide.
                raise error from None
            self._sleep(delay)
            attempt += 1

    def get_json(self, path: str, *, params: Mapping[str, Any] | None = None) -> Any:
        return self.request("GET", path, params=params, ok=(200,)).json()

    def paginate(
        self,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        item_key: str | None = None,
        max_pages: int = 1000,
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
            body = response.json()
            items = body.get(item_key, []) if item_key and isinstance(body, dict) else body
            if not isinstance(items, list):
                raise IntegrationError(self.source("GET", path), f"expected a list under {item_key or 'the body'}")
            yield from items
            url = next_link(response)
            current_params = {}  # the next link carries the full query
            pages += 1
            if pages >= max_pages:
                raise IntegrationError(self.source("GET", path), f"more than {max_pages} pages; narrow the query")


class RestBackedClient:
    """Lifecycle shared by the forge clients: ``self.rest`` is their :class:`RestClient`."""

    rest: RestClient

    @property
    def api_url(self) -> str:
        return self.rest.api_url

    def close(self) -> None:
        self.rest.close()

    def __enter__(self):  # noqa: ANN204 - returns the subclass
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
