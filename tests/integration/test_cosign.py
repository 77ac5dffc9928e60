"""Cosign key-based signature verification against a real OCI registry.

The registry is the session's Debian ``docker-registry`` (``tests/support/registry.py``);
images are pushed with its helpers and signed by ``tests/support/cosign.py``,
which writes the same ``sha256-<hex>.sig`` manifests cosign writes (cosign
itself is not installable here). Verification reads them through the project's
own ``RegistryClient``.
"""

from __future__ import annotations

import socket
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from digestguard.errors import InputError, Unavailable
from integrations.cosign import (
    RegistrySignatureSource,
    SignatureStatus,
    key_fingerprint,
    load_public_keys,
    signature_tag,
    verify_signature,
)
from integrations.registry import RegistryClient
from tests.support.cosign import new_key, public_pem, sign_image
from tests.support.registry import OCI_MANIFEST, push_image, put_manifest


@pytest.fixture(scope="module")
def keys():
    ours, theirs = new_key(), new_key()
    return ours, theirs


@pytest.fixture()
def repo() -> str:
    return f"acme/scanner-{uuid.uuid4().hex[:8]}"


@pytest.fixture()
def source(registry):
    with RegistryClient(registry.host) as client:
        yield RegistrySignatureSource(client)


def test_signed_with_our_key_is_valid(registry, source, repo, keys) -> None:
    ours, _ = keys
    img = push_image(registry.base_url, repo, "1.0")
    sig_manifest = sign_image(registry.base_url, repo, img.digest, ours)

    check = verify_signature(source, repo, img.digest, public_pem(ours))

    assert check.status is SignatureStatus.SIGNED_VALID and check.ok
    assert check.signature_tag == signature_tag(img.digest) == img.digest.replace(":", "-") + ".sig"
    assert check.signature_manifest_digest == sig_manifest
    assert check.key_fingerprint == key_fingerprint(load_public_keys(public_pem(ours))[0])
    assert check.docker_reference == f"{registry.host}/{repo}"
    assert check.layers_checked == 1 and "names this digest" in check.reason


def test_unsigned_digest(registry, source, repo, keys) -> None:
    signed = push_image(registry.base_url, repo, "signed")
    sign_image(registry.base_url, repo, signed.digest, keys[0])
    unsigned = push_image(registry.base_url, repo, "unsigned")

    check = verify_signature(source, repo, unsigned.digest, public_pem(keys[0]))

    assert check.status is SignatureStatus.UNSIGNED and not check.ok
    assert signature_tag(unsigned.digest) in check.reason and check.signature_manifest_digest is None


def test_signed_with_another_key_is_invalid(registry, source, repo, keys) -> None:
    ours, theirs = keys
    img = push_image(registry.base_url, repo, "1.0")
    sign_image(registry.base_url, repo, img.digest, theirs)

    check = verify_signature(source, repo, img.digest, public_pem(ours))

    assert check.status is SignatureStatus.INVALID
    assert "does not verify" in check.reason and check.layers_checked == 1 and check.key_fingerprint is None


def test_valid_signature_over_another_digest_is_invalid(registry, source, repo, keys) -> None:
    ours, _ = keys
    good = push_image(registry.base_url, repo, "good")
    evil = push_image(registry.base_url, repo, "latest")  # the attacker's overwrite
    # Our real signature over the good digest, copied under the evil digest's .sig tag.
    sign_image(registry.base_url, repo, evil.digest, ours, signed_digest=good.digest)

    check = verify_signature(source, repo, evil.digest, public_pem(ours))

    assert check.status is SignatureStatus.INVALID
    assert f"over digest {good.digest}" in check.reason and evil.digest in check.reason
    assert check.key_fingerprint is not None  # the signature itself was ours


def test_any_valid_layer_counts_and_keys_can_rotate(registry, source, repo, keys) -> None:
    ours, theirs = keys
    img = push_image(registry.base_url, repo, "1.0")
    sign_image(registry.base_url, repo, img.digest, theirs)
    sign_image(registry.base_url, repo, img.digest, ours)  # appended, as cosign does

    check = verify_signature(source, repo, img.digest, public_pem(ours))
    assert check.status is SignatureStatus.SIGNED_VALID and check.layers_checked == 2

    # Only the attacker's layer with only the old key: invalid; with both keys accepted: valid.
    sign_image(registry.base_url, repo, img.digest, theirs, append=False)
    assert verify_signature(source, repo, img.digest, public_pem(ours)).status is SignatureStatus.INVALID
    both = verify_signature(source, repo, img.digest, [public_pem(ours), public_pem(theirs)])
    assert both.ok and both.key_fingerprint == key_fingerprint(load_public_keys(public_pem(theirs))[0])


def test_tampered_payload_is_invalid(registry, source, repo, keys) -> None:
    img = push_image(registry.base_url, repo, "1.0")
    sign_image(registry.base_url, repo, img.digest, keys[0], tamper_payload=True)
    check = verify_signature(source, repo, img.digest, public_pem(keys[0]))
    assert check.status is SignatureStatus.INVALID and "does not verify" in check.reason


def test_sig_tag_without_signature_layers_is_invalid(registry, source, repo, keys) -> None:
    img = push_image(registry.base_url, repo, "1.0")
    # An ordinary image manifest pushed under the .sig tag (a squatted tag).
    put_manifest(registry.base_url, repo, signature_tag(img.digest), img.manifest, OCI_MANIFEST)
    check = verify_signature(source, repo, img.digest, public_pem(keys[0]))
    assert check.status is SignatureStatus.INVALID and "simplesigning" in check.reason


@pytest.mark.parametrize("make_key", [
    lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ed25519.Ed25519PrivateKey.generate,
], ids=["rsa", "ed25519"])
def test_rsa_and_ed25519_keys(registry, source, repo, make_key) -> None:
    key = make_key()
    img = push_image(registry.base_url, repo, "1.0")
    sign_image(registry.base_url, repo, img.digest, key)
    assert verify_signature(source, repo, img.digest, public_pem(key)).ok


def test_bad_inputs_are_refused(source, keys) -> None:
    from cryptography.hazmat.primitives import serialization

    with pytest.raises(InputError, match="digest"):
        verify_signature(source, "acme/x", "latest", public_pem(keys[0]))
    with pytest.raises(InputError, match="PEM public key"):
        verify_signature(source, "acme/x", "sha256:" + "a" * 64, b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    private_pem = keys[0].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    with pytest.raises(InputError, match="never a private key") as err:
        load_public_keys(private_pem)
    assert "PRIVATE" not in str(err.value)


def test_unreachable_registry_is_raised_not_unsigned(keys) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with RegistryClient(f"127.0.0.1:{port}", max_retries=0, fast_path=False) as client:
        with pytest.raises(Unavailable):
            verify_signature(RegistrySignatureSource(client), "acme/x", "sha256:" + "b" * 64, public_pem(keys[0]))


def test_signature_manifest_naming_a_missing_payload_is_invalid(registry, source, repo, keys) -> None:
    """The payload blob was deleted from the registry after signing: invalid, not an error and not 'unsigned'."""
    import httpx

    img = push_image(registry.base_url, repo, "1.0")
    sign_image(registry.base_url, repo, img.digest, keys[0])
    with RegistryClient(registry.host) as client:
        payload_digest = client.get_manifest(repo, signature_tag(img.digest)).json()["layers"][0]["digest"]
    r = httpx.delete(f"{registry.base_url}/v2/{repo}/blobs/{payload_digest}")
    assert r.status_code == 202, r.text

    check = verify_signature(source, repo, img.digest, public_pem(keys[0]))
    assert check.status is SignatureStatus.INVALID and "missing" in check.reason
