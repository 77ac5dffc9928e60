"""Sign images the way ``cosign sign --key`` does, without cosign (not installable here).

:func:`sign_image` writes what cosign writes for a key-based signature: a
simple-signing payload blob, a config blob, and an OCI manifest whose layer
(media type ``application/vnd.dev.cosign.simplesigning.v1+json``) carries the
base64 signature in the ``dev.cosignproject.cosign/signature`` annotation,
pushed under the tag ``sha256-<hex>.sig`` next to the image. Like cosign, a
second signature is appended as another layer of the same manifest.

The payload bytes are exactly Go's ``json.Marshal`` of cosign's
``payload.SimpleContainerImage`` (compact, fields in struct order,
``"optional":null``), and the signature is ECDSA P-256 / SHA-256 in ASN.1 DER
as cosign's ``generate-key-pair`` keys produce.

Knobs for negative tests: ``signed_digest`` signs a payload naming another
digest (stored under *this* digest's tag); ``tamper_payload`` stores payload
bytes that differ from the signed ones.
"""

from __future__ import annotations

import base64
import json

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from tests.support.registry import OCI_MANIFEST, push_blob, put_manifest, sha256_digest

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"


def new_key() -> ec.EllipticCurvePrivateKey:
    """A P-256 key like ``cosign generate-key-pair`` makes."""
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    """The ``cosign.pub`` of a private key (PEM SubjectPublicKeyInfo)."""
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def simple_signing_payload(docker_reference: str, digest: str) -> bytes:
    """cosign's payload bytes for ``digest`` (Go json.Marshal output: compact, struct order)."""
    doc = {
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature",
        },
        "optional": None,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def _sign(key, payload: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(payload, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(payload, padding.PKCS1v15(), hashes.SHA256())
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(payload)
    raise TypeError(f"unsupported key {type(key).__name__}")


def _base(registry_url: str) -> str:
    return registry_url if registry_url.startswith(("http://", "https://")) else f"http://{registry_url}"


def signature_tag(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    return f"{algo}-{hexpart}.sig"


def _existing_layers(client: httpx.Client, base: str, repo: str, tag: str) -> list[dict]:
    r = client.get(f"{base}/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
    if r.status_code == 404:
        return []
    r.raise_for_status()
    return list(r.json().get("layers") or [])


def sign_image(
    registry_url: str,
    repo: str,
    digest: str,
    private_key,
    *,
    signed_digest: str | None = None,
    docker_reference: str | None = None,
    tamper_payload: bool = False,
    append: bool = True,
) -> str:
    """Sign ``repo@digest`` with ``private_key`` and push ``sha256-<hex>.sig``; returns the signature manifest digest.

    ``signed_digest`` (default ``digest``) is the digest named inside the signed
    payload. ``append=False`` replaces earlier signatures instead of adding a layer.
    """
    base = _base(registry_url)
    host = base.split("://", 1)[1]
    payload = simple_signing_payload(docker_reference or f"{host}/{repo}", signed_digest or digest)
    signature = base64.b64encode(_sign(private_key, payload)).decode()
    stored = payload.replace(b'"optional":null', b'"optional":{}') if tamper_payload else payload
    tag = signature_tag(digest)
    with httpx.Client(timeout=30) as c:
        payload_digest = push_blob(base, repo, stored, c)
        layers = _existing_layers(c, base, repo, tag) if append else []
        layers.append({
            "mediaType": SIMPLE_SIGNING,
            "size": len(stored),
            "digest": payload_digest,
            "annotations": {SIGNATURE_ANNOTATION: signature},
        })
        config = json.dumps({
            "architecture": "", "created": "0001-01-01T00:00:00Z", "history": [{"created": "0001-01-01T00:00:00Z"}],
            "os": "", "rootfs": {"type": "layers", "diff_ids": [x["digest"] for x in layers]}, "config": {},
        }, separators=(",", ":")).encode()
        config_digest = push_blob(base, repo, config, c)
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "size": len(config), "digest": config_digest},
            "layers": layers,
        }, separators=(",", ":")).encode()
        put_manifest(base, repo, tag, manifest, OCI_MANIFEST, c)
        return sha256_digest(manifest)
