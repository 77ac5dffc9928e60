"""Typed errors shared by integrations and tasks.

Integrations translate vendor failures into these so that a task can decide
between retrying (``RateLimited``, ``Unavailable``) and reporting (``NotFound``,
``Refused``, ``AuthError``) without knowing which SDK raised what. Every error
names the *source* (an inventory entry, a URL, a file) it came from, and never
carries a secret value.
"""

from __future__ import annotations

from digestguard.redact import redact


class DigestguardError(Exception):
    """Base of every error this project raises on purpose.

    Its text passes the one redactor (:mod:`digestguard.redact`) when it is made, so vendor
    text that echoes a registered secret value is masked before anything can log or store it.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact(a) for a in args))


class InputError(DigestguardError, ValueError):
    """Bad input from a person or a file: names the input, the field and the reason."""

    def __init__(self, source: str, reason: str, field: str | None = None) -> None:
        self.source = redact(source)
        self.field = field
        self.reason = redact(reason)
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where}: {reason}")


class IntegrationError(DigestguardError):
    """An external system answered badly or not at all."""

    retryable: bool = False

    def __init__(self, source: str, message: str, status: int | None = None) -> None:
        self.source = redact(source)
        self.status = status
        self.message = redact(message)
        code = f" (HTTP {status})" if status else ""
        super().__init__(f"{source}: {message}{code}")


class NotFound(IntegrationError):
    """The thing asked for does not exist there (often good news: already gone)."""


class Refused(IntegrationError):
    """The system understood and said no (405 delete disabled, 409 conflict, 400)."""


class AuthError(IntegrationError):
    """401/403: the credential is missing, wrong or lacks the permission."""


class RateLimited(IntegrationError):
    """429 or an exhausted quota; ``retry_after`` seconds when the system said so."""

    retryable = True

    def __init__(self, source: str, message: str, status: int | None = 429, retry_after: float | None = None) -> None:
        super().__init__(source, message, status)
        self.retry_after = retry_after


class Unavailable(IntegrationError):
    """5xx, timeouts, refused connections: worth retrying with back-off."""

    retryable = True


class PlanNotApproved(DigestguardError):
    """An apply step was handed an approval that does not match its plan's hash."""
