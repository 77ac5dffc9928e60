"""Small helpers shared by the secret-backend clients (vault, aws_*, azure, gcp).

Why a module of its own: every backend takes a new secret value from the rotate
stage and some hand one back (a new access key, a static-role password). The
value travels as ``pydantic.SecretStr`` so that an accidental ``print``, log
line, exception or Prefect result shows ``**********`` instead of the value;
only the line that really sends it to a backend calls :func:`reveal`.
"""

from __future__ import annotations

import hmac
import secrets
import string

from pydantic import SecretStr

from digestguard.errors import InputError
from digestguard.redact import register

SecretLike = str | SecretStr
"""What the clients accept as a secret value: a plain ``str`` or a ``SecretStr``."""

_ALPHABET = string.ascii_letters + string.digits


def reveal(value: SecretLike, *, source: str = "secret value") -> str:
    """The plain text of ``value``, for the one call that must send it.

    Refuses an empty value: writing "" as a new credential would lock people
    out while looking like a successful rotation.
    """
    plain = value.get_secret_value() if isinstance(value, SecretStr) else value
    if not isinstance(plain, str):
        raise InputError(source, f"expected str or SecretStr, got {type(value).__name__}")
    if plain == "":
        raise InputError(source, "a new secret value must not be empty")
    register(plain)  # old or new: from now on no error, log, row or message of this process can carry it
    return plain


def new_password(length: int = 40) -> SecretStr:
    """A random password of letters and digits (no symbols, so it survives URLs, shells and DSNs).

    40 characters of a 62-letter alphabet is about 238 bits.
    """
    if length < 16:
        raise InputError("new_password", "length below 16 is too weak for a rotated credential", field="length")
    return SecretStr("".join(secrets.choice(_ALPHABET) for _ in range(length)))


def same_secret(a: SecretLike, b: SecretLike) -> bool:
    """Constant-time comparison, so verification never needs to hand a value back."""
    left = a.get_secret_value() if isinstance(a, SecretStr) else a
    right = b.get_secret_value() if isinstance(b, SecretStr) else b
    return hmac.compare_digest(left.encode(), right.encode())
