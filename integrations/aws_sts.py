"""AWS STS ``GetCallerIdentity``: the one question any valid access key can answer, used as proof of death.

Every signed AWS request with a deleted or inactive key is refused with
``InvalidClientTokenId`` (403); ``GetCallerIdentity`` needs no permission at all,
so "refused" there means the key itself is dead, not that it lacks a policy.
The probe talks only to the endpoint the inventory gives for AWS (the issuer).
"""

from __future__ import annotations

from typing import Literal

import boto3

from digestguard.errors import AuthError
from integrations._errors import aws_errors, keep_secrets_out_of_botocore_debug_logs
from integrations._rest import botocore_config
from integrations._secret_values import SecretLike, reveal

keep_secrets_out_of_botocore_debug_logs()

__all__ = ["caller_identity"]

_DEAD = {"InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException", "ExpiredToken", "AuthFailure"}


def caller_identity(access_key_id: SecretLike, secret_access_key: SecretLike, *, endpoint_url: str | None = None,
                    region_name: str = "us-east-1") -> tuple[Literal["accepted", "refused"], str]:
    """``("accepted", arn)`` when STS accepts the key pair, ``("refused", code)`` when it rejects the key itself.

    Other failures (no answer, throttling) raise the typed error: they prove nothing either way.
    """
    kid = reveal(access_key_id, source="access key id")
    sts = boto3.session.Session().client(
        "sts", endpoint_url=endpoint_url, region_name=region_name, aws_access_key_id=kid,
        aws_secret_access_key=reveal(secret_access_key, source="secret access key"), config=botocore_config())
    try:
        with aws_errors(f"aws sts GetCallerIdentity ({kid})"):
            arn = str(sts.get_caller_identity().get("Arn", ""))
    except AuthError as e:
        code = e.message.split(":", 1)[0]
        if code in _DEAD or e.status == 403:
            return "refused", code
        raise
    finally:
        sts.close()
    return "accepted", arn
