"""Times, one way: every timestamp the product reads or writes is an aware UTC ``datetime``.

Vendor APIs write RFC 3339 with ``Z`` and up to nanoseconds (Vault, Kubernetes), the journal writes
``isoformat()``; a naive time is taken as UTC, because an incident window must not shift by the
reader's time zone.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

_FRACTION = re.compile(r"\.(\d+)")


def utc(when: datetime) -> datetime:
    """``when`` as aware UTC; a naive value is taken to be UTC already."""
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)


def now() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(timezone.utc)


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 / RFC 3339 text (``Z``, offsets, up to nanoseconds) as aware UTC; ``None`` when empty or unreadable.

    Go's zero time (year 1, Vault's "never") also reads as ``None``.
    """
    if isinstance(value, datetime):
        return utc(value)
    if not value or not isinstance(value, str):
        return None
    text = _FRACTION.sub(lambda m: "." + m.group(1)[:6], value.strip().replace("Z", "+00:00").replace("z", "+00:00"), count=1)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return None if when.year <= 1 else utc(when)


def fmt_utc(when: datetime | None, empty: str = "") -> str:
    """``2026-04-22 12:35:00 UTC`` for people; ``empty`` when there is no time."""
    return utc(when).strftime("%Y-%m-%d %H:%M:%S UTC") if when else empty


def iso_z(when: datetime) -> str:
    """``2026-04-22T12:35:00Z``, the form vendor APIs take."""
    return utc(when).strftime("%Y-%m-%dT%H:%M:%SZ")
