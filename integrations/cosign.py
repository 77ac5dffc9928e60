"""Cosign (key-based) signature verification, for the watch: is this digest signed by *our* key?

Why: the KICS and Trivy attackers pushed images with stolen Docker Hub
credentials, but they did not hold the publisher's signing key. A watched image
whose new digest carries no valid signature from the expected key is the
signal, even before an advisory exists.

What cosign stores (``sigstore/cosign``, key-based, the classic tag scheme):

* under the tag ``sha256-<hex>.sig`` in the image's repository, an OCI image
  manifest whose layers have media type
  ``application/vnd.dev.cosign.simplesigning.v1+json``;
* each such layer blob is a "simple signing" payload::

      {"critical":{"identity":{"docker-reference":"registry/repo"},
                   "image":{"docker-manifest-digest":"sha256:..."},
                   "type":"cosign container image signature"},
       "optional":null}

* the layer's annotation ``dev.cosignproject.cosign/signature`` holds the
  base64 signature over the payload *bytes* (ECDSA P-256 with SHA-256 for
  ``cosign generate-key-pair`` keys; RSA PKCS#1 v1.5 SHA-256 and Ed25519 keys
  are verified too, as cosign's ``LoadVerifier`` does).

A digest is ``signed-valid`` when at least one layer's signature verifies
against one of the given public keys AND that payload's
``docker-manifest-digest`` is the image digest (a valid signature over some
other digest, copied next to this one, proves nothing) AND its ``type`` is the
cosign type. ``unsigned`` when the ``.sig`` tag does not exist; ``invalid``
otherwise, with the reason. Registry failures (auth, unavailable, rate
limited) are raised, never reported as ``unsigned``: "could not look" is not
"nothing there". No transparency log (Rekor) or keyless (Fulcio) checks: the
watch verifies against keys the organisation pins.

Registry access goes through a :class:`SignatureSource` (two functions), so the
verifier does not care which client fetches bytes;
:class:`RegistrySignatureSource` wires it to :class:`integrations.registry.RegistryClient`.

Example::

    with RegistryClient("ghcr.io") as reg:
        check = verify_signature(RegistrySignatureSource(reg), "acme/scanner", digest, pem_bytes)
    if check.status != "signed-valid":
        alert(check.reason)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from enum import Enum
from typing import Any, Protocol, Union

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from pydantic import ConfigDict

from digestguard._model import Model
from digestguard.errors import InputError, IntegrationError, NotFound
from digestguard.reference import parse_digest
from integrations.registry import registry_repository

__all__ = [
    "COSIGN_TYPE",
    "SIGNATURE_ANNOTATION",
    "SIMPLE_SIGNING_MEDIA_TYPE",
    "PublicKey",
    "RegistrySignatureSource",
    "SignatureCheck",
    "SignatureSource",
    "SignatureStatus",
    "key_fingerprint",
    "load_public_keys",
    "signature_tag",
    "verify_payload",
    "verify_signature",
]

SIMPLE_SIGNING_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
COSIGN_TYPE = "cosign container image signature"
MAX_SIGNATURE_LAYERS = 100  # a .sig manifest with more layers is not a signature we read layer by layer

PublicKey = Union[ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey]
KeyInput = Union[str, bytes, PublicKey]


class SignatureSource(Protocol):
    """The two registry reads verification needs.

    ``fetch_manifest`` raises :class:`digestguard.errors.NotFound` when the tag
    does not exist (that is how ``unsigned`` is told apart); other failures
    raise the other typed errors.
    """

    def fetch_manifest(self, repo: str, ref: str) -> tuple[bytes, str]:
        """``(exact manifest bytes, media type)`` of ``repo:ref``."""
        ...

    def fetch_blob(self, repo: str, digest: str) -> bytes:
        """The bytes of blob ``digest`` in ``repo``."""
        ...


class SignatureStatus(str, Enum):
    SIGNED_VALID = "signed-valid"
    UNSIGNED = "unsigned"
    INVALID = "invalid"


class SignatureCheck(Model):
    """The verdict for one digest. ``reason`` says why in words a person can act on.

    ``key_fingerprint`` (sha256 of the key's DER SubjectPublicKeyInfo) names the
    key that verified; ``docker_reference`` is what the signer claimed as the
    image's name (reported, not enforced: cosign does not enforce it either).
    """

    model_config = ConfigDict(frozen=True)

    repository: str
    digest: str
    status: SignatureStatus
    reason: str
    signature_tag: str
    signature_manifest_digest: str | None = None
    layers_checked: int = 0
    key_fingerprint: str | None = None
    docker_reference: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is SignatureStatus.SIGNED_VALID


# ---------------------------------------------------------------- keys


def load_public_keys(keys: KeyInput | Sequence[KeyInput], source: str = "cosign public key") -> list[PublicKey]:
    """Parse one or several PEM public keys (``cosign.pub``); several = accept any (key rotation).

    Raises :class:`InputError` naming ``source`` for unreadable or unsupported keys.
    """
    items: list[KeyInput] = [keys] if isinstance(keys, (str, bytes)) or not isinstance(keys, Sequence) else list(keys)
    if not items:
        raise InputError(source, "no public key given")
    out: list[PublicKey] = []
    for i, item in enumerate(items):
        where = source if len(items) == 1 else f"{source}[{i}]"
        if isinstance(item, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey)):
            out.append(item)
            continue
        data = item.encode() if isinstance(item, str) else item
        if not isinstance(data, bytes) or b"PRIVATE KEY" in data:
            raise InputError(where, "expected a PEM public key (never a private key)")
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise InputError(where, f"not a PEM public key: {type(exc).__name__}") from None
        if not isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey)):
            raise InputError(where, f"unsupported key type {type(key).__name__} (ECDSA, RSA or Ed25519)")
        out.append(key)
    return out


def key_fingerprint(key: PublicKey) -> str:
    """``sha256:<hex>`` of the DER SubjectPublicKeyInfo: a stable, non-secret name for a key."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def verify_payload(key: PublicKey, payload: bytes, signature: bytes) -> bool:
    """True when ``signature`` is ``key``'s signature over ``payload`` (cosign's algorithms: SHA-256)."""
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, payload)
        else:  # pragma: no cover - load_public_keys refuses others
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


# ---------------------------------------------------------------- verification


def signature_tag(digest: str) -> str:
    """The cosign tag for ``digest``: ``sha256:abc...`` -> ``sha256-abc....sig``."""
    algo, _, hexpart = parse_digest(digest).partition(":")
    return f"{algo}-{hexpart}.sig"


def _layer_reason(i: int, text: str) -> str:
    return f"layer {i}: {text}"


def _check_layer(
    source: SignatureSource, repo: str, digest: str, index: int, layer: dict[str, Any], keys: list[PublicKey]
) -> tuple[bool, str, str | None, str | None]:
    """``(valid, reason, key fingerprint, docker-reference)`` for one simple-signing layer."""
    annotations = layer.get("annotations") or {}
    sig_b64 = annotations.get(SIGNATURE_ANNOTATION) if isinstance(annotations, dict) else None
    if not sig_b64 or not isinstance(sig_b64, str):
        return False, _layer_reason(index, f"no {SIGNATURE_ANNOTATION} annotation"), None, None
    try:
        signature = base64.b64decode(sig_b64, validate=True)
    except (binascii.Error, ValueError):
        return False, _layer_reason(index, "signature annotation is not base64"), None, None
    blob_digest = layer.get("digest")
    try:
        blob_digest = parse_digest(str(blob_digest), "layer digest")
    except InputError:
        return False, _layer_reason(index, f"layer digest {blob_digest!r} is not a digest"), None, None
    try:
        payload = source.fetch_blob(repo, blob_digest)
    except NotFound:
        # The manifest names a payload the registry does not hold: nothing verifiable here.
        return False, _layer_reason(index, f"payload blob {blob_digest} is missing from the registry"), None, None
    algo, _, want = blob_digest.partition(":")
    if hashlib.new(algo, payload).hexdigest() != want:
        return False, _layer_reason(index, f"payload bytes do not hash to {blob_digest}"), None, None
    signer = next((k for k in keys if verify_payload(k, payload, signature)), None)
    if signer is None:
        return False, _layer_reason(index, "signature does not verify against the given public key(s)"), None, None
    fp = key_fingerprint(signer)
    try:
        doc = json.loads(payload)
        critical = doc["critical"]
        claimed = critical["image"]["docker-manifest-digest"]
        kind = critical.get("type")
        ref = (critical.get("identity") or {}).get("docker-reference")
    except (ValueError, KeyError, TypeError):
        return False, _layer_reason(index, "signed payload is not a simple-signing document"), fp, None
    if kind != COSIGN_TYPE:
        return False, _layer_reason(index, f"signed payload type is {kind!r}, not {COSIGN_TYPE!r}"), fp, ref
    try:
        claimed_norm = parse_digest(str(claimed), "docker-manifest-digest")
    except InputError:
        claimed_norm = None
    if claimed_norm != digest:
        return False, _layer_reason(index, f"valid signature, but over digest {claimed}, not {digest}"), fp, ref
    return True, _layer_reason(index, "signature verifies and names this digest"), fp, ref


def verify_signature(
    source: SignatureSource,
    repo: str,
    digest: str,
    public_keys: KeyInput | Sequence[KeyInput],
    *,
    signature_repository: str | None = None,
) -> SignatureCheck:
    """Verify the cosign signature of ``repo@digest`` against ``public_keys``.

    ``signature_repository`` is where signatures live when not next to the image
    (cosign's ``COSIGN_REPOSITORY``). Returns a :class:`SignatureCheck`; raises
    :class:`InputError` for a bad digest or key, and the source's typed errors
    (AuthError, Unavailable, RateLimited, ...) when the registry cannot be read.
    """
    digest = parse_digest(digest, f"{repo} digest")
    keys = load_public_keys(public_keys)
    tag = signature_tag(digest)
    sig_repo = signature_repository or repo
    base = {"repository": repo, "digest": digest, "signature_tag": tag}
    try:
        body, media_type = source.fetch_manifest(sig_repo, tag)
    except NotFound:
        return SignatureCheck(**base, status=SignatureStatus.UNSIGNED, reason=f"no signature: tag {tag} does not exist in {sig_repo}")
    manifest_digest = "sha256:" + hashlib.sha256(body).hexdigest()
    base["signature_manifest_digest"] = manifest_digest

    def invalid(reason: str, checked: int = 0, fp: str | None = None, ref: str | None = None) -> SignatureCheck:
        return SignatureCheck(**base, status=SignatureStatus.INVALID, reason=reason, layers_checked=checked,
                              key_fingerprint=fp, docker_reference=ref)

    try:
        manifest = json.loads(body)
    except ValueError:
        return invalid(f"{tag} is not a JSON manifest")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("layers"), list):
        return invalid(f"{tag} is not an image manifest with layers (media type {media_type or 'unknown'})")
    layers = [x for x in manifest["layers"] if isinstance(x, dict) and x.get("mediaType") == SIMPLE_SIGNING_MEDIA_TYPE]
    if not layers:
        return invalid(f"{tag} has no {SIMPLE_SIGNING_MEDIA_TYPE} layers")
    if len(layers) > MAX_SIGNATURE_LAYERS:
        return invalid(f"{tag} has {len(layers)} signature layers (more than {MAX_SIGNATURE_LAYERS}); refusing to read them all")
    reasons: list[str] = []
    last_fp = last_ref = None
    for i, layer in enumerate(layers):
        ok, reason, fp, ref = _check_layer(source, sig_repo, digest, i, layer, keys)
        if ok:
            return SignatureCheck(**base, status=SignatureStatus.SIGNED_VALID, reason=reason, layers_checked=i + 1,
                                  key_fingerprint=fp, docker_reference=ref)
        reasons.append(reason)
        last_fp, last_ref = fp or last_fp, ref or last_ref
    return invalid("; ".join(reasons), len(layers), last_fp, last_ref)


# ---------------------------------------------------------------- wiring to the registry client


class RegistrySignatureSource:
    """A :class:`SignatureSource` over :class:`integrations.registry.RegistryClient` (auth, retries, typed errors).

    Manifests come from ``RegistryClient.get_manifest``. Blobs come from
    ``RegistryClient.get_blob`` when the client has it; until then through the
    client's own request path (same auth, retries and error mapping), with the
    bytes checked against the digest here.
    """

    def __init__(self, client: Any) -> None:
        self.client = client

    def fetch_manifest(self, repo: str, ref: str) -> tuple[bytes, str]:
        m = self.client.get_manifest(repo, ref)
        return m.body, m.media_type

    def fetch_blob(self, repo: str, digest: str) -> bytes:
        get_blob = getattr(self.client, "get_blob", None)
        if callable(get_blob):
            data = get_blob(repo, digest)
            return data if isinstance(data, bytes) else bytes(data)

        path_repo = registry_repository(self.client.registry, repo)
        source = f"{self.client.registry}/{path_repo}@{digest}"
        r = self.client._request("GET", path_repo, f"/v2/{path_repo}/blobs/{digest}", source)
        data = r.content
        algo, _, want = digest.partition(":")
        if hashlib.new(algo, data).hexdigest() != want:
            raise IntegrationError(source, f"blob bytes do not hash to {digest}")
        return data
