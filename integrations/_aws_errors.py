"""Translate botocore failures into :mod:`digestguard.errors` (shared by aws_iam and aws_secrets).

Why: tasks decide retry vs report from the error *type*, and botocore speaks
in error-code strings. AWS error messages name resources, never secret values,
so the message is kept (trimmed); request parameters are never included.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import botocore.exceptions as bx
from botocore.config import Config

from digestguard.errors import AuthError, IntegrationError, NotFound, RateLimited, Refused, Unavailable

CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=10, read_timeout=30)
"""botocore's own bounded back-off for throttling and 5xx: the retry that helps, in one place."""

_NOT_FOUND = {"NoSuchEntity", "ResourceNotFoundException", "NoSuchEntityException"}
_AUTH = {
    "AccessDenied", "AccessDeniedException", "InvalidClientTokenId", "UnrecognizedClientException",
    "SignatureDoesNotMatch", "ExpiredToken", "ExpiredTokenException", "AuthFailure", "MissingAuthenticationToken",
}
_THROTTLE = {"Throttling", "ThrottlingException", "TooManyRequestsException", "RequestLimitExceeded"}
_UNAVAILABLE = {"ServiceUnavailable", "ServiceFailure", "InternalFailure", "InternalServiceError", "InternalError"}


@contextmanager
def aws_errors(source: str) -> Iterator[None]:
    """Re-raise botocore errors from the block as typed errors naming ``source``."""
    try:
        yield
    except bx.ClientError as e:
        err = e.response.get("Error", {})
        code = str(err.get("Code", "Unknown"))
        message = f"{code}: {str(err.get('Message', ''))[:300]}"
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _NOT_FOUND:
            raise NotFound(source, message, status) from None
        if code in _AUTH or status in (401, 403):
            raise AuthError(source, message, status) from None
        if code in _THROTTLE or status == 429:
            raise RateLimited(source, message, status or 429) from None
        if code in _UNAVAILABLE or (status and status >= 500):
            raise Unavailable(source, message, status) from None
        if status and 400 <= status < 500:
            raise Refused(source, message, status) from None
        raise IntegrationError(source, message, status) from None
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
