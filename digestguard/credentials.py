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

from digestguard.errors import InputError

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
    hint = " (it looks like a real credential: remove it from the file and rotate it)" if looks_like_literal_secret(value) else ""
    raise InputError(source, f"credentials must be references like 'env:NAME' or 'prefect-secret:NAME', not literal values{hint}", field)


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
        return value
    from prefect.blocks.system import Secret  # imported lazily: prefect is heavy

    try:
        return str(Secret.load(name).get())
    except ValueError as e:
        raise InputError(source, f"Prefect Secret block {name!r} could not be loaded: {type(e).__name__}") from None
