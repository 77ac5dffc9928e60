"""One way from a vendor error to a domain error (:mod:`digestguard.errors`).

Tasks decide retry vs report from the error *type*; vendors speak in HTTP
statuses, error-code strings and SDK exception classes. Two shapes, used by
every integration:

* :func:`error_for_status` maps an HTTP status (and the vendor's own words) to
  a typed error: 429 rate limited, 401/403 auth, 404/410 not found, 5xx
  unavailable, 400/405/409/412/422 refused, anything else unexpected. The httpx
  clients (:class:`integrations._rest.RestClient`, the registry client, and the
  Kubernetes lister for its ``ApiException``) use it after their retry loop has
  had its say: a loop must see a transport error before it becomes typed;
* one context manager per SDK, all of the same shape ``with aws_errors(source):``
  (also :func:`azure_errors`, :func:`gcp_errors`, :func:`hvac_errors`,
  :func:`docker_errors`): the block's vendor exceptions leave it as typed errors
  naming ``source``.

Vendor messages name resources, never secret values, so they are kept
(trimmed); request parameters and bodies are never included.

Each SDK is imported inside its own context manager, not at the top: importing
one integration (say the registry client) must not load botocore, azure-core,
google-api-core and hvac, each a heavy import of its own. Errors already typed (a ``DigestguardError``
raised inside the block) pass through unchanged.
"""

from __future__ import annotations

import email.utils
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from digestguard.errors import AuthError, DigestguardError, IntegrationError, NotFound, RateLimited, Refused, Unavailable
from digestguard.timeutil import now, utc

MESSAGE_LIMIT = 300
AUTH_REFUSED = "credential refused or lacks permission"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: either delta-seconds or an HTTP date; None when absent or unreadable."""
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
    return max(0.0, (utc(when) - now()).total_seconds())


def error_for_status(
    source: str,
    status: int,
    message: str,
    *,
    retry_after: float | None = None,
    auth_hint: str = AUTH_REFUSED,
) -> IntegrationError:
    """The typed error for an unsuccessful HTTP answer (returned, not raised, so the caller may retry it first)."""
    if status == 429 or retry_after is not None:
        return RateLimited(source, f"rate limited: {message}", status=status, retry_after=retry_after)
    if status in (401, 403):
        return AuthError(source, f"{auth_hint}: {message}", status=status)
    if status in (404, 410):
        return NotFound(source, message, status=status)
    if status >= 500:
        return Unavailable(source, message, status=status)
    if status in (400, 405, 409, 412, 422):
        return Refused(source, message, status=status)
    if status == 0:
        return Unavailable(source, f"no answer: {message}")
    return IntegrationError(source, f"unexpected answer: {message}", status=status)


# --------------------------------------------------------------------------- AWS (botocore)

_AWS_NOT_FOUND = {"NoSuchEntity", "ResourceNotFoundException", "NoSuchEntityException"}
_AWS_AUTH = {
    "AccessDenied", "AccessDeniedException", "InvalidClientTokenId", "UnrecognizedClientException",
    "SignatureDoesNotMatch", "ExpiredToken", "ExpiredTokenException", "AuthFailure", "MissingAuthenticationToken",
}
_AWS_THROTTLE = {"Throttling", "ThrottlingException", "TooManyRequestsException", "RequestLimitExceeded"}
_AWS_UNAVAILABLE = {"ServiceUnavailable", "ServiceFailure", "InternalFailure", "InternalServiceError", "InternalError"}


def _aws_client_error(source: str, response: dict) -> IntegrationError:
    err = response.get("Error", {})
    code = str(err.get("Code", "Unknown"))
    message = f"{code}: {str(err.get('Message', ''))[:MESSAGE_LIMIT]}"
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in _AWS_NOT_FOUND:
        return NotFound(source, message, status)
    if code in _AWS_AUTH or status in (401, 403):
        return AuthError(source, message, status)
    if code in _AWS_THROTTLE or status == 429:
        return RateLimited(source, message, status or 429)
    if code in _AWS_UNAVAILABLE or (status and status >= 500):
        return Unavailable(source, message, status)
    if status and 400 <= status < 500:
        return Refused(source, message, status)
    return IntegrationError(source, message, status)


@contextmanager
def aws_errors(source: str) -> Iterator[None]:
    """botocore errors from the block as typed errors naming ``source``."""
    import botocore.exceptions as bx  # heavy optional import: see the module docstring

    try:
        yield
    except bx.ClientError as e:
        raise _aws_client_error(source, e.response) from None
    except (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError, bx.ConnectionClosedError) as e:
        raise Unavailable(source, f"no answer: {type(e).__name__}") from None
    except bx.NoCredentialsError:
        raise AuthError(source, "no AWS credentials found") from None
    except bx.ParamValidationError:
        # botocore's text quotes the offending parameter *values*: never pass it on
        raise Refused(source, "invalid request parameters (details withheld: they may quote values)") from None


class _DropBodies(logging.Filter):
    """Drops botocore's DEBUG records that print request params and response bodies."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


_BODY_LOGGERS = ("botocore.endpoint", "botocore.parsers", "botocore.httpchecksum", "botocore.awsrequest")


def keep_secrets_out_of_botocore_debug_logs() -> None:
    """At DEBUG botocore logs request params (``SecretString``) and response bodies
    (``SecretAccessKey``); silence exactly those loggers' DEBUG records, idempotently.
    Other botocore debug output (retries, endpoints, signing steps) stays.
    """
    for name in _BODY_LOGGERS:
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropBodies) for f in log.filters):
            log.addFilter(_DropBodies())


# --------------------------------------------------------------------------- Azure (azure-core)


def _azure_message(e: Exception) -> str:
    """The service's error code and message (Key Vault never echoes secret values in them)."""
    err = getattr(e, "error", None)
    if err is not None and getattr(err, "message", None):
        return f"{err.code}: {err.message}"[:MESSAGE_LIMIT]
    text = str(getattr(e, "reason", None) or getattr(e, "message", None) or type(e).__name__)
    return text.splitlines()[0][:MESSAGE_LIMIT]


@contextmanager
def azure_errors(source: str) -> Iterator[None]:
    """azure-core errors from the block as typed errors naming ``source``.

    A 401/403 that says "disabled" is a disabled secret version, not a credential
    problem: it is ``Refused``.
    """
    from azure.core import exceptions as ax  # heavy optional import: see the module docstring

    try:
        yield
    except ax.ResourceNotFoundError as e:
        raise NotFound(source, _azure_message(e), 404) from None
    except ax.ClientAuthenticationError as e:
        raise AuthError(source, _azure_message(e), getattr(e, "status_code", None) or 401) from None
    except ax.HttpResponseError as e:
        status = e.status_code or 0
        message = _azure_message(e)
        if status == 429:
            after = e.response.headers.get("Retry-After") if e.response is not None else None
            raise RateLimited(source, message, 429, retry_after=parse_retry_after(after)) from None
        if status in (401, 403) and "disabled" not in message:
            raise AuthError(source, message, status) from None
        if status >= 500:
            raise Unavailable(source, message, status) from None
        if 400 <= status < 500:
            raise Refused(source, message, status) from None
        raise IntegrationError(source, message, status or None) from None
    except (ax.ServiceRequestError, ax.ServiceResponseError) as e:
        raise Unavailable(source, f"no answer: {type(e).__name__}") from None


# --------------------------------------------------------------------------- Google (google-api-core)


def _first_line(e: Exception) -> str:
    message = getattr(e, "message", None) or str(e)
    return str(message).splitlines()[0][:MESSAGE_LIMIT]


@contextmanager
def gcp_errors(source: str) -> Iterator[None]:
    """google-api-core errors (and the REST transport's ``requests`` errors) from the block as typed errors."""
    import google.api_core.exceptions as gx  # heavy optional import: see the module docstring
    import requests

    try:
        yield
    except gx.NotFound as e:
        raise NotFound(source, _first_line(e), 404) from None
    except (gx.Unauthenticated, gx.PermissionDenied, gx.Forbidden, gx.Unauthorized) as e:
        raise AuthError(source, _first_line(e), e.code if isinstance(e.code, int) else 403) from None
    except (gx.TooManyRequests, gx.ResourceExhausted) as e:
        raise RateLimited(source, _first_line(e), 429) from None
    except (gx.ServiceUnavailable, gx.InternalServerError, gx.GatewayTimeout, gx.DeadlineExceeded,
            gx.RetryError, gx.BadGateway) as e:
        raise Unavailable(source, _first_line(e), 503) from None
    except (gx.InvalidArgument, gx.BadRequest, gx.FailedPrecondition, gx.AlreadyExists, gx.Conflict,
            gx.PreconditionFailed) as e:
        raise Refused(source, _first_line(e), e.code if isinstance(e.code, int) else 400) from None
    except gx.GoogleAPICallError as e:
        raise IntegrationError(source, _first_line(e)) from None
    except (requests.ConnectionError, requests.Timeout) as e:
        raise Unavailable(source, f"no answer: {type(e).__name__}") from None


# --------------------------------------------------------------------------- Vault / OpenBao (hvac)


def _hvac_reason(e: Exception, default: str) -> str:
    errors = [str(x) for x in (getattr(e, "errors", None) or []) if x]
    return "; ".join(errors)[:MESSAGE_LIMIT] if errors else default


@contextmanager
def hvac_errors(source: str) -> Iterator[None]:
    """hvac and ``requests`` failures from the block as typed errors naming ``source``.

    Vault's own error texts ("permission denied", "check-and-set parameter did
    not match") never contain secret data, so they are kept.
    """
    import hvac.exceptions as hx  # heavy optional import: see the module docstring
    import requests

    try:
        yield
    except hx.InvalidPath as e:
        raise NotFound(source, _hvac_reason(e, "not found"), 404) from None
    except (hx.Unauthorized, hx.Forbidden) as e:
        status = 403 if isinstance(e, hx.Forbidden) else 401
        raise AuthError(source, _hvac_reason(e, "permission denied"), status) from None
    except hx.RateLimitExceeded as e:
        raise RateLimited(source, _hvac_reason(e, "rate limited")) from None
    except (hx.InternalServerError, hx.BadGateway, hx.VaultDown, hx.VaultNotInitialized) as e:
        raise Unavailable(source, _hvac_reason(e, "server error"), 503) from None
    except (hx.InvalidRequest, hx.PreconditionFailed, hx.UnsupportedOperation, hx.ParamValidationError) as e:
        raise Refused(source, _hvac_reason(e, "request refused"), 400) from None
    except hx.VaultError as e:
        raise IntegrationError(source, _hvac_reason(e, "unexpected answer")) from None
    except (requests.ConnectionError, requests.Timeout) as e:
        raise Unavailable(source, f"no answer: {type(e).__name__}") from None
    except (KeyError, TypeError, AttributeError) as e:  # hvac hands a non-Vault 200 back as it is: no "data" in it
        raise IntegrationError(source, f"answer is not shaped like Vault's ({type(e).__name__} reading it)") from None


# --------------------------------------------------------------------------- Docker Engine / podman (docker SDK)


def _docker_message(e: Exception) -> str:
    return str(getattr(e, "explanation", None) or e)[:MESSAGE_LIMIT]


@contextmanager
def docker_errors(source: str) -> Iterator[None]:
    """docker SDK and ``requests`` failures from the block as typed errors naming ``source``.

    podman answers 500 for a failed pull of a missing tag: that 500 says "not found"
    or "manifest unknown" and is ``NotFound``, not ``Unavailable``.
    """
    import docker.errors as dx  # heavy optional import: see the module docstring
    import requests

    try:
        yield
    except DigestguardError:
        raise
    except dx.NotFound as e:
        raise NotFound(source, _docker_message(e), 404) from None
    except dx.APIError as e:
        raise _docker_api_error(source, e.status_code, _docker_message(e)) from None
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
        raise Unavailable(source, f"engine unreachable ({type(e).__name__})") from None
    except dx.DockerException as e:
        raise IntegrationError(source, _docker_message(e)) from None


def _docker_api_error(source: str, status: int | None, msg: str) -> IntegrationError:
    if status in (401, 403):
        return AuthError(source, msg, status)
    if status in (400, 409):
        return Refused(source, msg, status)
    if status is not None and status >= 500:
        if "manifest unknown" in msg.lower() or "not found" in msg.lower():
            return NotFound(source, msg, status)
        return Unavailable(source, msg, status)
    return IntegrationError(source, msg, status)
