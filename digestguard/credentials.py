"""Credential references: how the inventory names a secret without holding it.

The inventory file is shared, reviewed and committed; it must never hold a
credential. It holds a *reference* instead, resolved at the moment of use:

- ``env:NAME``            an environment variable of the process doing the work
- ``prefect-secret:NAME`` a Prefect ``Secret`` block (works the same on a worker)

``resolve`` returns the value to the integration that needs it; the value is
never stored on a model, logged or returned from a task.
"""

from __future__ import annotations

import os
import re
from typing import Any

from digestguard.errors import InputError
from digestguard.redact import register

REFERENCE_RE = re.compile(r"^(env|prefect-secret):([A-Za-z0-9_.\-/]+)$")

# Shapes of well-known credentials: a literal like these in the inventory is refused.
_LITERAL_SHAPES = [
    re.compile(r"^(AKIA|ASIA)[A-Z0-9]{16}$"),          # AWS access key id
    re.compile(r"^xox[abposr]-[A-Za-z0-9-]{10,}$"),      # Slack tokens
    re.compile(r"^gh[pousr]_[A-Za-z0-9]{20,}$"),          # GitHub tokens
    re.compile(r"^github_pat_[A-Za-z0-9_]{20,}$"),
    re.compile(r"^glpat-[A-Za-z0-9_-]{16,}$"),            # GitLab
    re.compile(r"^(hvs|hvb|s)\.[A-Za-z0-9]{20,}$"),       # Vault / OpenBao tokens
    re.compile(r"^-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"^eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\."),  # JWT
]


_USERINFO = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://([^/@\s?#]+)@")


def literal_in_url(value: str) -> bool:
    """True when ``value`` is a URL carrying a credential in its userinfo (``https://bob:TOKEN@host``,
    ``https://ghp_...@github.com``); a bare user name (``ssh://git@host``) is not one."""
    m = _USERINFO.match((value or "").strip())
    if not m:
        return False
    user, _, password = m.group(1).partition(":")
    return bool(password) or looks_like_literal_secret(user)


def find_literal_credentials(data: Any, path: str = "") -> list[str]:
    """The dotted paths (``ci_logs.0.api_url``) of every string in ``data`` that holds a literal credential:
    the shape of a known token or key, or a URL with a password in it. Values are never returned."""
    out: list[str] = []
    stack: list[tuple[str, Any]] = [(path, data)]
    while stack:
        where, v = stack.pop()
        if isinstance(v, dict):
            stack.extend((f"{where}.{k}" if where else str(k), x) for k, x in v.items())
        elif isinstance(v, (list, tuple)):
            stack.extend((f"{where}.{i}" if where else str(i), x) for i, x in enumerate(v))
        elif isinstance(v, str) and (looks_like_literal_secret(v) or literal_in_url(v) or _embedded_secret(v)):
            out.append(where)
    return sorted(out)


def _embedded_secret(value: str) -> bool:
    """True when a longer text (a note, a description) contains a credential-shaped word."""
    return " " in value.strip() and any(looks_like_literal_secret(w.strip("\"'`,;()[]<>")) or literal_in_url(w)
                                        for w in value.split())


def refuse_literal_credentials(data: Any, source: str) -> None:
    """InputError naming every field of ``data`` that holds a literal credential (never the value)."""
    fields = find_literal_credentials(data)
    if fields:
        raise InputError(source, "literal credential(s) refused: remove them from the file, rotate them, and use a "
                                 "reference like 'env:NAME' or 'prefect-secret:NAME'", ", ".join(fields))


def is_reference(value: str) -> bool:
    """True for ``env:NAME`` / ``prefect-secret:NAME``."""
    return bool(REFERENCE_RE.match(value or ""))


def looks_like_literal_secret(value: str) -> bool:
    """True when ``value`` has the shape of a real credential (a token, key or private key)."""
    v = (value or "").strip()
    return any(p.search(v) for p in _LITERAL_SHAPES)


def check_reference(value: str, source: str, field: str) -> str:
    """Accept only a reference; refuse literals with a message that names the field, never the value."""
    if is_reference(value):
        return value
    literal = looks_like_literal_secret(value) or literal_in_url(value)
    hint = " (it looks like a real credential: remove it from the file and rotate it)" if literal else ""
    raise InputError(source, "credentials must be references like 'env:NAME' or 'prefect-secret:NAME', "
                             f"not literal values{hint}", field)


def resolve(ref: str | None, source: str = "credential") -> str | None:
    """The value a reference points at (None for None). Raises ``InputError`` naming the reference, not the value."""
    if ref is None:
        return None
    m = REFERENCE_RE.match(ref)
    if not m:
        raise InputError(source, f"{ref!r} is not a credential reference")
    kind, name = m.groups()
    if kind == "env":
        value = os.environ.get(name)
        if value is None:
            raise InputError(source, f"environment variable {name} is not set")
        register(value)
        return value
    from prefect.blocks.system import Secret  # imported lazily: prefect is heavy

    try:
        value = str(Secret.load(name).get())
        register(value)
        return value
    except ValueError as e:
        raise InputError(source, f"Prefect Secret block {name!r} could not be loaded: {type(e).__name__}") from None
