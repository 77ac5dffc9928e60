"""The one redactor: every secret value a run handles is registered here, and everything that leaves passes it.

Registered: every value a credential reference resolves to (:func:`digestguard.credentials.resolve`)
and every secret value an integration reveals to send it, the old ones and the new ones
(:func:`integrations._secret_values.reveal`). Applied to: the message of every
:class:`digestguard.errors.DigestguardError` (so vendor error text that echoes a value is
masked where it is made), every log record (a record factory installed by :func:`install`),
journal rows, Slack text, artifacts and the report.

Values are matched as they are, JSON-escaped, URL-encoded, Slack-escaped and HTML-escaped,
longest first; per-call ``extra`` values shorter than 4 characters only as whole words. Well-known token
shapes (Slack, GitHub, GitLab, Vault, private keys) are masked even when never registered.
"""

from __future__ import annotations

import html
import json
import logging
import re
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

MASK = "[redacted]"
MIN_REGISTERED = 8
"""Shorter values are not registered process-wide: no credential is that short, while masking every "bob"
(a user name resolved through a reference) in every message would destroy the record. ``extra`` still masks them."""

TOKEN_SHAPES = re.compile(
    r"xox[abposr]-[A-Za-z0-9-]{10,}"
    r"|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
    r"|glpat-[A-Za-z0-9_-]{16,}"
    r"|\b(?:hvs|hvb)\.[A-Za-z0-9_-]{20,}"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)"
)
"""Credential shapes that are masked even when nobody registered the value."""

IDENTIFIER_SHAPES = re.compile(r"(?:AKIA|ASIA|AIDA|AROA)[A-Z0-9]{16}")
"""Identifiers that travel inside credential material but are not secret (an AWS access key id is shown by the console,
CloudTrail and every error AWS returns). They are never registered: the journal must keep them, or a resumed run could
not tell which key it already made or revoked."""

_lock = threading.Lock()
_values: set[str] = set()
_variants: list[str] = []  # longest first


def _slack(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def register(*values: Any) -> None:
    """Remember ``values`` (str or pydantic ``SecretStr``; None and values under :data:`MIN_REGISTERED`
    characters ignored) for every later redaction."""
    global _variants
    with _lock:
        changed = False
        for v in values:
            if v is None:
                continue
            plain = v.get_secret_value() if hasattr(v, "get_secret_value") else str(v)
            if len(plain) < MIN_REGISTERED or plain in _values or IDENTIFIER_SHAPES.fullmatch(plain):
                continue
            _values.add(plain)
            changed = True
        if changed:
            _variants = sorted({f for p in _values for f in _forms(p)}, key=len, reverse=True)


def _forms(p: str) -> tuple[str, ...]:
    """The spellings a value takes in messages: as is, JSON-escaped, URL-encoded, Slack- and HTML-escaped."""
    return (p, json.dumps(p)[1:-1], quote(p, safe=""), _slack(p), html.escape(p))


def registered_count() -> int:
    """How many values are registered (for tests and the drill's scorecard; never the values)."""
    with _lock:
        return len(_values)


def redact(text: Any, extra: Iterable[str] = (), *, mask: str = MASK) -> Any:
    """``text`` with every registered value (plus ``extra``, for this call only) and every well-known
    token shape masked. Not a string (None, a number): returned as is.

    >>> register("s3cr3t-value")
    >>> redact("token is s3cr3t-value, again s3cr3t-value")
    'token is [redacted], again [redacted]'
    """
    if not isinstance(text, str) or not text:
        return text
    extras = [str(e) for e in extra if e]
    with _lock:
        variants = _variants
    short = {e for e in extras if len(e) < 4}
    if extras:
        variants = sorted({*variants, *(f for e in extras if len(e) >= 4 for f in _forms(e))}, key=len, reverse=True)
    for v in variants:
        if v in text:
            text = text.replace(v, mask)
    for v in short:
        text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(v)}(?![A-Za-z0-9])", mask, text)
    return TOKEN_SHAPES.sub(mask, text)


def redact_data(value: Any) -> Any:
    """``value`` (dicts, lists, strings, nested) with :func:`redact` applied to every string in it."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_data(v) for v in value]
    return value


_installed = False


def install() -> None:
    """Make every log record of the process pass :func:`redact` (its message and arguments), once."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string is the logger's problem, not a reason to leak
            return record
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, ()
        return record

    logging.setLogRecordFactory(factory)
