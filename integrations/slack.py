"""Slack Web API client: post, update and thread incident messages; open a channel; upload the report.

A thin typed layer over ``slack_sdk.WebClient`` so the notifier never touches
the SDK's exceptions or response objects:

* retries live in the SDK's own retry handlers, attached here once:
  ``RateLimitErrorRetryHandler`` (429, sleeping for the ``Retry-After`` Slack
  sends; bounded here: a wait longer than ``max_rate_limit_wait`` is not slept
  through but raised as ``RateLimited`` with ``retry_after``) and
  ``ConnectionErrorRetryHandler`` (refused / reset / dropped connections, with
  exponential back-off). Both have a bounded retry count;
* every call has a total deadline (connect, every attempt, every wait, every read) and
  its answer a size cap: the SDK's urllib transport is replaced by :class:`_BoundedWebClient`,
  which reads bodies chunk by chunk (a dripping or flooding server ends in ``Unavailable`` or
  ``Refused``), and the 429 handler asks the one :class:`~integrations._rest.RetryPolicy`
  whether a wait still fits;
* an answer is checked before use (an object, ``ts``/channel ids where the call needs them);
* failures become the typed errors of :mod:`digestguard.errors`
  (``RateLimited``, ``Unavailable``, ``AuthError``, ``NotFound``, ``Refused``) naming
  the API host and method, never the token;
* every outgoing string (message text, blocks, file content) goes through an
  optional ``scrub`` function first, the last line of defence that keeps a secret
  value out of a channel even if a caller put one in a message by mistake;
* ``base_url`` can point at an Enterprise Grid proxy or a local test server.

Example::

    client = SlackClient(token, base_url="http://127.0.0.1:8099/api/")
    msg = client.post("#sec-incident", "Incident kics-2026-04 opened")
    client.reply(msg, "detect: 3 compromised")
    client.update(msg, "Incident kics-2026-04: detect done")
    client.upload_file(msg.channel, "report.html", html, title="Incident report", thread_ts=msg.ts)
"""

from __future__ import annotations

import http.client
import io
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError, SlackRequestError
from slack_sdk.http_retry import (
    BackoffRetryIntervalCalculator,
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    RetryIntervalCalculator,
)
from slack_sdk.socket_mode import SocketModeClient
from slack_sdk.socket_mode.response import SocketModeResponse

from digestguard.errors import AuthError, InputError, IntegrationError, NotFound, RateLimited, Refused, Unavailable
from integrations._errors import parse_retry_after
from integrations._rest import MAX_ERROR_BYTES, DeadlineHTTPConnection, RetryPolicy, call_deadline, deadline_ssl_context

__all__ = ["DEFAULT_BASE_URL", "BoundedRateLimitHandler", "SlackClient", "SlackMessage", "channel_name_for"]

DEFAULT_BASE_URL = "https://slack.com/api/"

# Slack answers HTTP 200 with {"ok": false, "error": "..."}; these codes say what kind of "no" it was.
_AUTH_ERRORS = frozenset({
    "not_authed", "invalid_auth", "account_inactive", "token_revoked", "token_expired", "no_permission",
    "missing_scope", "not_allowed_token_type", "ekm_access_denied", "team_access_not_granted",
})
_NOT_FOUND_ERRORS = frozenset({"channel_not_found", "message_not_found", "thread_not_found", "file_not_found", "not_in_channel"})
_UNAVAILABLE_ERRORS = frozenset({"internal_error", "fatal_error", "service_unavailable", "request_timeout"})

MAX_ANSWER_BYTES = 1024 * 1024
"""The cap on one Web API answer (a posted message's echo is a few kB)."""
DEFAULT_DEADLINE = 60.0
"""Seconds one Slack call may take in total."""

Scrub = Callable[[str], str]


@dataclass(frozen=True)
class SlackMessage:
    """Where a message lives: the channel id and its ``ts`` (Slack's message id)."""

    channel: str
    ts: str
    thread_ts: str | None = None


def channel_name_for(incident: str) -> str:
    """A valid Slack channel name for an incident: lowercase, ``[a-z0-9-_]``, at most 80 characters.

    >>> channel_name_for("KICS 2026/04 #1")
    'inc-kics-2026-04-1'
    """
    out = []
    for ch in incident.lower():
        out.append(ch if ch.isascii() and (ch.isalnum() or ch in "-_") else "-")
    slug = "-".join(p for p in "".join(out).split("-") if p)
    if not slug:
        raise InputError("slack channel", f"incident id {incident!r} has no characters usable in a channel name")
    return ("inc-" + slug)[:80].rstrip("-_")


def _scrub_obj(obj: Any, scrub: Scrub) -> Any:
    """Apply ``scrub`` to every string inside blocks (dicts and lists of any depth)."""
    if isinstance(obj, str):
        return scrub(obj)
    if isinstance(obj, Mapping):
        return {k: _scrub_obj(v, scrub) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_scrub_obj(v, scrub) for v in obj]
    return obj


def shown_status(status: int | None) -> int | None:
    """The HTTP status worth naming: Slack says "no" with HTTP 200, so a 200 is not news."""
    return status if status and status != 200 else None


def _retry_after_header(headers: Any) -> str | None:
    """The ``Retry-After`` value of SDK response headers (any case; the SDK sometimes keeps a list per name)."""
    for k, v in (headers or {}).items():
        if k.lower() == "retry-after":
            value = (v[0] if v else None) if isinstance(v, list) else v
            return None if value is None else str(value)
    return None


class BoundedRateLimitHandler(RateLimitErrorRetryHandler):
    """The SDK's 429 handler (sleeps for ``Retry-After``), except that it gives up at once when Slack asks
    for a longer wait than ``max_wait`` seconds: the caller gets ``RateLimited`` with ``retry_after``
    and decides, instead of the whole response stalling inside a notification."""

    def __init__(self, max_retry_count: int = 3, max_wait: float = 30.0, *, policy: RetryPolicy | None = None,
                 elapsed: Callable[[], float] = lambda: 0.0) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.max_wait = max_wait
        self.policy = policy or RetryPolicy(max_retries=max_retry_count, max_wait=max_wait)
        self._elapsed = elapsed

    def _can_retry(self, *, state: Any, request: Any, response: Any = None, error: Any = None) -> bool:
        if not super()._can_retry(state=state, request=request, response=response, error=error):
            return False
        wait = parse_retry_after(_retry_after_header(response.headers))
        # The one retry policy decides: within its retries, its wait cap and the call's deadline.
        return self.policy.wait(state.current_attempt, retry_after=1.0 if wait is None else wait + 1.0,
                                elapsed=self._elapsed()) is not None


class _TooLarge(SlackClientError):
    """An answer over its cap (raised inside the transport; becomes Refused)."""


class _TooLate(SlackClientError):
    """The call's total deadline passed (raised inside the transport; becomes Unavailable)."""


def _read_bounded(fp: Any, cap: int, deadline_at: float, *, refuse: bool) -> bytes:
    """Read ``fp`` one network read at a time: at most ``cap`` bytes, never past ``deadline_at``."""
    read = getattr(fp, "read1", None) or fp.read
    chunks: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() > deadline_at:
            raise _TooLate("answer not complete within the deadline of this call (a slow or stalled server)")
        chunk = read(64 * 1024)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > cap:
            if refuse:
                raise _TooLarge(f"answer is over the {cap}-byte cap; not read further")
            chunks.append(chunk[: cap - (size - len(chunk))])
            return b"".join(chunks)
        chunks.append(chunk)


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    """Plain-HTTP connections whose socket waits end by the call's deadline (a local Slack stand-in, a proxy)."""

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(DeadlineHTTPConnection, req)


class _BoundedWebClient(WebClient):
    """``WebClient`` whose urllib transport keeps one call's total deadline and caps every body it reads.

    The SDK reads a whole answer with ``resp.read()`` under a per-socket-operation timeout, so a
    server sending one byte a second never times out and a flood is held in memory; this override
    opens and reads the same request, bounded. Deadlines are per thread (``begin`` starts one).
    """

    def __init__(self, *args: Any, deadline: float, max_body: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline
        self.max_body = max_body
        self._local = threading.local()

    def begin(self) -> None:
        self._local.deadline_at = time.monotonic() + self.deadline

    def elapsed(self) -> float:
        return time.monotonic() - (getattr(self._local, "deadline_at", time.monotonic() + self.deadline) - self.deadline)

    def _perform_urllib_http_request_internal(self, url: str, req: urllib.request.Request) -> dict[str, Any]:
        if not url.lower().startswith("http"):
            raise SlackRequestError(f"Invalid URL detected: {url}")
        deadline_at = getattr(self._local, "deadline_at", None) or time.monotonic() + self.deadline
        remaining = deadline_at - time.monotonic()
        if remaining <= 0:
            raise _TooLate(f"no answer within the {self.deadline:.0f}s deadline of this call")
        timeout = min(float(self.timeout), remaining)
        with call_deadline(deadline_at):
            try:
                return self._open(req, timeout, deadline_at)
            except (URLError, OSError, http.client.HTTPException):
                if time.monotonic() >= deadline_at:  # the status line or headers came too slowly
                    raise _TooLate(f"no complete answer within the {self.deadline:.0f}s deadline of this call "
                                   "(a slow or stalled server)") from None
                raise

    def _opener(self) -> urllib.request.OpenerDirector:
        """urllib's opener (proxy from ``proxy`` or the environment) on connections bounded by the call's deadline."""
        opener = getattr(self._local, "opener", None)
        if opener is None:
            context = deadline_ssl_context(self.ssl if self.ssl is not None else ssl.create_default_context())
            handlers: list[Any] = [_DeadlineHTTPHandler(), urllib.request.HTTPSHandler(context=context)]
            if self.proxy is not None:
                handlers.append(urllib.request.ProxyHandler({"http": self.proxy, "https": self.proxy}))
            opener = self._local.opener = urllib.request.build_opener(*handlers)
        return opener

    def _open(self, req: urllib.request.Request, timeout: float, deadline_at: float) -> dict[str, Any]:
        try:
            resp = self._opener().open(req, timeout=timeout)  # noqa: S310 - http(s) checked above
        except HTTPError as e:
            # The SDK reads the error body itself: hand it a bounded copy (the vendor's message, never a flood).
            fp = e.fp
            body = _read_bounded(fp, MAX_ERROR_BYTES, deadline_at, refuse=False) if fp is not None else b""
            raise HTTPError(e.url, e.code, e.msg, e.headers, io.BytesIO(body)) from None
        with resp:
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_body:
                raise _TooLarge(f"answer of {int(declared)} bytes is over the {self.max_body}-byte cap; not read")
            body = _read_bounded(resp, self.max_body, deadline_at, refuse=True)
        if resp.headers.get_content_type() == "application/gzip":
            return {"status": resp.code, "headers": resp.headers, "body": body}
        charset = resp.headers.get_content_charset() or "utf-8"
        return {"status": resp.code, "headers": resp.headers, "body": body.decode(charset, errors="replace")}


class SlackClient:
    """A bot-token Slack Web API client with bounded retries and typed errors."""

    def __init__(
        self,
        token: str,
        *,
        base_url: str | None = None,
        timeout: int = 10,
        rate_limit_retries: int = 3,
        max_rate_limit_wait: float = 30.0,
        connection_retries: int = 2,
        retry_interval: RetryIntervalCalculator | None = None,
        scrub: Scrub | None = None,
        deadline: float = DEFAULT_DEADLINE,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        if not token or not token.strip():
            raise InputError("slack", "no bot token given (inventory slack.token resolved to an empty value)")
        url = base_url or DEFAULT_BASE_URL
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InputError("slack", f"api_url {url!r} is not an http(s) URL", field="slack.api_url")
        self.base_url = url if url.endswith("/") else url + "/"
        self.source = f"slack {parts.netloc}"
        self.scrub: Scrub = scrub or (lambda s: s)
        if deadline <= 0:
            raise InputError("slack", "deadline must be > 0 seconds", field="deadline")
        self.retry = RetryPolicy(max_retries=rate_limit_retries, max_wait=max_rate_limit_wait, deadline=deadline)
        self._web = _BoundedWebClient(
            token=token,
            base_url=self.base_url,
            timeout=timeout,
            deadline=deadline,
            max_body=max_answer_bytes,
            retry_handlers=[
                BoundedRateLimitHandler(max_retry_count=rate_limit_retries, max_wait=max_rate_limit_wait,
                                        policy=self.retry, elapsed=lambda: self._web.elapsed()),
                # The SDK's default error types (URLError incl. refused/connect timeout, reset, remote
                # disconnect). Read timeouts are NOT retried: Slack may have posted the message already.
                ConnectionErrorRetryHandler(
                    max_retry_count=connection_retries,
                    interval_calculator=retry_interval or BackoffRetryIntervalCalculator(backoff_factor=0.5),
                ),
            ],
        )

    # ------------------------------------------------------------------ plumbing
    def _call(self, method: str, fn: Callable[..., Any], **kwargs: Any) -> dict[str, Any]:
        """Call one SDK method; translate every failure into a typed error naming host and method."""
        where = f"{self.source} {method}"
        self._web.begin()
        try:
            resp = fn(**kwargs)
        except _TooLarge as e:
            raise Refused(where, str(e)) from None
        except _TooLate as e:
            raise Unavailable(where, str(e)) from None
        except SlackApiError as e:
            err = self._api_error(where, e)
            err.slack_error = (e.response.data or {}).get("error") if isinstance(e.response.data, dict) else None  # type: ignore[attr-defined]
            raise err from None
        except SlackRequestError as e:
            raise Refused(where, f"request refused by the client: {str(e)[:200]}") from None
        except (URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", None) or e
            raise Unavailable(where, f"cannot reach Slack: {type(reason).__name__}: {str(reason)[:200]}") from None
        except SlackClientError as e:
            raise Unavailable(where, f"Slack client error: {str(e)[:200]}") from None
        except ValueError as e:  # a non-JSON body (a proxy's HTML error page) fails to parse
            raise Unavailable(where, f"unreadable answer: {type(e).__name__}") from None
        except (AttributeError, TypeError):  # the SDK looks inside an answer that is JSON but not an object
            raise Unavailable(where, "answer is not a JSON object") from None
        if not isinstance(resp.data, dict):
            raise Unavailable(where, f"answer is not a JSON object ({type(resp.data).__name__})")
        return dict(resp.data)

    @staticmethod
    def _api_error(where: str, e: SlackApiError) -> IntegrationError:
        status = getattr(e.response, "status_code", None)
        data = e.response.data if isinstance(getattr(e.response, "data", None), dict) else {}
        code = str(data.get("error") or "unknown_error")
        if code.startswith("Received a response in a non-JSON format"):  # the SDK's words, then the vendor's body
            return Unavailable(where, "answer is not JSON (a proxy or maintenance page?)", status=shown_status(status))
        headers = getattr(e.response, "headers", {}) or {}
        shown = status if status and status != 200 else None  # Slack says "no" with HTTP 200: the code is the news
        if status == 429 or code == "ratelimited":
            retry_after = parse_retry_after(_retry_after_header(headers))
            return RateLimited(where, "rate limited after retries", status=429, retry_after=retry_after)
        if status is not None and status >= 500 or code in _UNAVAILABLE_ERRORS:
            return Unavailable(where, f"Slack error {code}", status=shown)
        if code in _AUTH_ERRORS or status in (401, 403):
            return AuthError(where, f"Slack refused the token: {code}", status=shown)
        if code in _NOT_FOUND_ERRORS or status == 404:
            return NotFound(where, f"Slack error {code}", status=shown)
        return Refused(where, f"Slack error {code}", status=shown)

    def _clean_text(self, text: str, blocks: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
        out: dict[str, Any] = {"text": self.scrub(text)}
        if blocks is not None:
            out["blocks"] = _scrub_obj(list(blocks), self.scrub)
        return out

    # ------------------------------------------------------------------ API
    def auth_test(self) -> dict[str, Any]:
        """Who the token is (team, user, bot ids): a cheap check that the token works."""
        data = self._call("auth.test", self._web.auth_test)
        return {k: data.get(k) for k in ("url", "team", "team_id", "user", "user_id", "bot_id")}

    def post(self, channel: str, text: str, *, blocks: Sequence[Mapping[str, Any]] | None = None,
             thread_ts: str | None = None, reply_broadcast: bool = False) -> SlackMessage:
        """Post a message (``thread_ts`` makes it a thread reply). Returns the channel *id* and ts.

        ``channel`` may be a name (``#sec-incident``) or id; the answer always carries the id,
        which is what ``update`` needs.
        """
        if not channel:
            raise InputError("slack", "no channel given", field="slack.channel")
        kwargs: dict[str, Any] = {"channel": channel, **self._clean_text(text, blocks), "unfurl_links": False,
                                  "unfurl_media": False}
        if thread_ts:
            kwargs["thread_ts"] = thread_ts
            if reply_broadcast:
                kwargs["reply_broadcast"] = True
        data = self._call("chat.postMessage", self._web.chat_postMessage, **kwargs)
        ts = data.get("ts")
        if not isinstance(ts, str) or not ts:
            raise Unavailable(f"{self.source} chat.postMessage", "answer carried no message ts")
        got = data.get("channel")
        return SlackMessage(channel=got if isinstance(got, str) and got else channel, ts=ts, thread_ts=thread_ts)

    def reply(self, parent: SlackMessage, text: str, *, blocks: Sequence[Mapping[str, Any]] | None = None,
              broadcast: bool = False) -> SlackMessage:
        """Reply in ``parent``'s thread (``broadcast`` also shows the reply in the channel)."""
        return self.post(parent.channel, text, blocks=blocks, thread_ts=parent.thread_ts or parent.ts, reply_broadcast=broadcast)

    def update(self, message: SlackMessage, text: str, *, blocks: Sequence[Mapping[str, Any]] | None = None) -> SlackMessage:
        """Replace a message's text and blocks in place (``chat.update``)."""
        kwargs: dict[str, Any] = {"channel": message.channel, "ts": message.ts, **self._clean_text(text, blocks)}
        if blocks is None:
            kwargs["blocks"] = []  # drop old blocks, or Slack keeps showing them instead of the new text
        data = self._call("chat.update", self._web.chat_update, **kwargs)
        return SlackMessage(channel=str(data.get("channel") or message.channel), ts=str(data.get("ts") or message.ts),
                            thread_ts=message.thread_ts)

    def create_channel(self, name: str, *, private: bool = False) -> str:
        """Open a channel and return its id. ``Refused`` with ``name_taken`` when it exists already."""
        data = self._call("conversations.create", self._web.conversations_create, name=name, is_private=private)
        channel = data.get("channel")
        if not isinstance(channel, dict) or not isinstance(channel.get("id"), str) or not channel["id"]:
            raise Unavailable(f"{self.source} conversations.create", "answer carried no channel id")
        return str(channel["id"])

    def upload_file(self, channel: str, filename: str, content: str | bytes, *, title: str | None = None,
                    thread_ts: str | None = None, initial_comment: str | None = None) -> str:
        """Upload a file into a channel (or thread) with ``files_upload_v2``; returns the file id.

        Text content (``str``) is scrubbed like a message; bytes are sent as they are.
        """
        body = self.scrub(content) if isinstance(content, str) else content
        kwargs: dict[str, Any] = {"channel": channel, "filename": filename, "content": body,
                                  "title": self.scrub(title or filename)}
        if thread_ts:
            kwargs["thread_ts"] = thread_ts
        if initial_comment:
            kwargs["initial_comment"] = self.scrub(initial_comment)
        data = self._call("files.upload (v2)", self._web.files_upload_v2, **kwargs)
        f = data.get("file") or (data.get("files") or [{}])[0]
        return str(f.get("id") or "") if isinstance(f, dict) else ""


# --------------------------------------------------------------------------- approval buttons (Socket Mode)
APPROVE_ACTION = "digestguard_approve"
REJECT_ACTION = "digestguard_reject"


def approval_buttons(value: str) -> dict[str, Any]:
    """The approve / reject buttons of an approval request (``value`` names run, stage and plan hash)."""
    return {"type": "actions", "block_id": "digestguard_gate", "elements": [
        {"type": "button", "action_id": APPROVE_ACTION, "style": "primary", "value": value,
         "text": {"type": "plain_text", "text": "Approve"}},
        {"type": "button", "action_id": REJECT_ACTION, "style": "danger", "value": value,
         "text": {"type": "plain_text", "text": "Reject"}}]}


@dataclass(frozen=True)
class ButtonClick:
    """One approve/reject click as Slack delivered it: who (Slack user id, set by Slack, not by the clicker) and what."""

    user_id: str
    decision: str
    value: str


class ButtonListener:
    """Approve/reject clicks received over Socket Mode: slack-sdk's own ``SocketModeClient`` with the app-level
    token (``xapp-...``) opens a websocket through ``apps.connections.open``, so no public endpoint is needed.
    Every envelope is acknowledged; ``on_click`` gets the block actions that are ours."""

    def __init__(self, app_token: str, on_click: Callable[[ButtonClick], None], *, base_url: str | None = None) -> None:
        if not app_token or not app_token.strip():
            raise InputError("slack", "no app-level token (inventory slack.app_token resolved to an empty value)")
        url = base_url or DEFAULT_BASE_URL
        self.on_click = on_click
        web = WebClient(base_url=url if url.endswith("/") else url + "/")
        self.client = SocketModeClient(app_token=app_token, web_client=web, auto_reconnect_enabled=True)
        self.client.socket_mode_request_listeners.append(self._on_request)

    def _on_request(self, client: Any, req: Any) -> None:
        client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))
        payload = req.payload or {}
        if req.type != "interactive" or payload.get("type") != "block_actions":
            return
        user = (payload.get("user") or {}).get("id") or ""
        for a in payload.get("actions") or []:
            if a.get("action_id") in (APPROVE_ACTION, REJECT_ACTION) and user:
                self.on_click(ButtonClick(user_id=user, value=str(a.get("value") or ""),
                                          decision="approve" if a["action_id"] == APPROVE_ACTION else "reject"))

    def start(self) -> "ButtonListener":
        try:
            self.client.connect()
        except SlackApiError as e:
            raise AuthError("slack apps.connections.open", f"Socket Mode refused: {e.response.get('error')}") from None
        except (SlackClientError, URLError, OSError) as e:
            raise Unavailable("slack apps.connections.open", f"Socket Mode unavailable: {type(e).__name__}") from None
        return self

    def close(self) -> None:
        self.client.close()
