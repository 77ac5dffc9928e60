"""A real OCI registry (Debian's ``docker-registry``, distribution 2.8) for the drill, the tests and the benches.

Why a real registry: the behaviour the product relies on (HEAD answering 404
for OCI manifests without the right Accept, DELETE by tag refused, 405 when
deletion is disabled, tags vanishing with their digest) is the registry's, and
a stub would only echo our assumptions back.

``start_registry`` returns a :class:`RunningRegistry` (the test fixtures in
``tests/support/registry.py`` wrap it, once per session).

Push helpers build small fake images without Docker: a random layer blob, a
config blob and a manifest, uploaded with the distribution API
(POST uploads -> PUT Location&digest=... -> PUT manifest). ``push_index`` builds
an OCI image index (or Docker manifest list) over linux/amd64 and linux/arm64
children; ``overwrite_tag`` re-points an existing tag at fresh content, which is
exactly what the attacker did to ``checkmarx/kics:latest``.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

REGISTRY_BINARY = "docker-registry"


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (tiny race accepted: the registry cannot take port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class RunningRegistry:
    """A started registry: ``base_url`` (http://127.0.0.1:PORT), ``host`` (127.0.0.1:PORT) as used in references."""

    base_url: str
    host: str
    root: Path
    delete_enabled: bool
    process: subprocess.Popen = field(repr=False)

    def ref(self, repo: str, tag: str | None = None, digest: str | None = None) -> str:
        """An image reference string on this registry: ``127.0.0.1:PORT/repo:tag``."""
        out = f"{self.host}/{repo}"
        if tag:
            out += f":{tag}"
        if digest:
            out += f"@{digest}"
        return out


def _config_yaml(root: Path, port: int, delete_enabled: bool) -> str:
    return (
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"  delete:\n    enabled: {'true' if delete_enabled else 'false'}\n"
        "  cache:\n    blobdescriptor: inmemory\n"
        "  redirect:\n    disable: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )


def start_registry(root: Path, delete_enabled: bool = True, timeout: float = 15.0) -> RunningRegistry:
    """Start ``docker-registry serve`` on a free loopback port with its storage under ``root``.

    Raises RuntimeError naming the Debian package when the binary is missing.
    """
    binary = shutil.which(REGISTRY_BINARY)
    if binary is None:
        raise RuntimeError(
            f"`{REGISTRY_BINARY}` not found: install the Debian package `docker-registry` (apt-get install -y docker-registry)"
        )
    root.mkdir(parents=True, exist_ok=True)
    last_err: Exception | None = None
    for _ in range(3):  # retry on a lost free-port race
        port = free_port()
        cfg = root / "config.yml"
        cfg.write_text(_config_yaml(root, port, delete_enabled))
        log = open(root / "registry.log", "ab")
        proc = subprocess.Popen([binary, "serve", str(cfg)], stdout=log, stderr=subprocess.STDOUT, cwd=root)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                last_err = RuntimeError(f"docker-registry exited with {proc.returncode}; see {root / 'registry.log'}")
                break
            try:
                if httpx.get(f"{base}/v2/", timeout=1.0).status_code == 200:
                    return RunningRegistry(base, f"127.0.0.1:{port}", root, delete_enabled, proc)
            except httpx.HTTPError as e:
                last_err = e
            time.sleep(0.05)
        stop_registry_process(proc)
    raise RuntimeError(f"docker-registry did not answer /v2/ in {timeout}s: {last_err}")


def stop_registry_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def running_registry(delete_enabled: bool = True, root: Path | None = None) -> Iterator[RunningRegistry]:
    """Context manager form of :func:`start_registry` (benches use it); removes a temp root it made."""
    own = root is None
    path = Path(tempfile.mkdtemp(prefix="dg-registry-")) if own else root
    reg = start_registry(path, delete_enabled)
    try:
        yield reg
    finally:
        stop_registry_process(reg.process)
        if own:
            shutil.rmtree(path, ignore_errors=True)








# ---------------------------------------------------------------- pushing


@dataclass(frozen=True)
class PushedImage:
    """What ``push_image`` put in the registry."""

    repo: str
    tag: str | None
    digest: str
    media_type: str
    manifest: bytes
    config_digest: str
    layer_digests: tuple[str, ...]
    platform: str


@dataclass(frozen=True)
class PushedIndex:
    """What ``push_index`` put in the registry: the index digest and ``{"linux/amd64": digest, ...}``."""

    repo: str
    tag: str | None
    digest: str
    media_type: str
    manifest: bytes
    children: dict[str, str]


def _expect(r: httpx.Response, status: int) -> None:
    if r.status_code != status:
        raise RuntimeError(f"{r.request.method} {r.request.url.path}: HTTP {r.status_code} (wanted {status}): {r.text[:300]}")


def _base(base_url: str) -> str:
    return base_url if base_url.startswith(("http://", "https://")) else f"http://{base_url}"


def push_blob(base_url: str, repo: str, data: bytes, client: httpx.Client | None = None) -> str:
    """Upload one blob (monolithic: POST then PUT Location&digest=); returns its digest."""
    digest = sha256_digest(data)
    c = client or httpx.Client(timeout=30)
    try:
        base = _base(base_url)
        if c.head(f"{base}/v2/{repo}/blobs/{digest}").status_code == 200:
            return digest
        r = c.post(f"{base}/v2/{repo}/blobs/uploads/")
        _expect(r, 202)
        loc = r.headers["Location"]
        if loc.startswith("/"):
            loc = base + loc
        # The Location carries ?_state=...: append the digest by hand (params= would replace the query).
        loc += ("&" if "?" in loc else "?") + f"digest={digest}"
        r = c.put(loc, content=data, headers={"Content-Type": "application/octet-stream"})
        _expect(r, 201)
        return digest
    finally:
        if client is None:
            c.close()


def put_manifest(base_url: str, repo: str, reference: str, body: bytes, media_type: str,
                 client: httpx.Client | None = None) -> str:
    """PUT a manifest under a tag or digest; returns the digest of ``body`` (checked against the registry's answer)."""
    c = client or httpx.Client(timeout=30)
    try:
        r = c.put(f"{_base(base_url)}/v2/{repo}/manifests/{reference}", content=body,
                  headers={"Content-Type": media_type})
        _expect(r, 201)
        digest = sha256_digest(body)
        if r.headers.get("Docker-Content-Digest", digest) != digest:
            raise RuntimeError(f"registry stored {repo}:{reference} as {r.headers.get('Docker-Content-Digest')}, expected {digest}")
        return digest
    finally:
        if client is None:
            c.close()


def make_layer_tar(files: dict[str, bytes]) -> bytes:
    """An uncompressed tar holding ``files`` (engines apply layers, so they must be real tar archives)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _platform_dict(platform: str) -> dict[str, str]:
    parts = platform.split("/")
    out = {"architecture": parts[1], "os": parts[0]}
    if len(parts) > 2:
        out["variant"] = parts[2]
    return out


def push_image(base_url: str, repo: str, tag: str | None = "latest", *, platform: str = "linux/amd64",
               docker: bool = False, layer_size: int = 256, payload: bytes | None = None,
               client: httpx.Client | None = None, created: str | None = None) -> PushedImage:
    """Push a small fake single-platform image; ``tag=None`` pushes it by digest only (an index child).

    ``payload`` (default random) is the one file of a real gzipped tar layer, so two
    calls give two different digests and engines can apply the layer.
    ``docker=True`` writes Docker v2 media types instead of OCI. ``created``: the config's
    ``created`` time (RFC 3339), as a builder writes it.
    """
    c = client or httpx.Client(timeout=30)
    try:
        content = payload if payload is not None else os.urandom(layer_size)
        tar = make_layer_tar({"payload.bin": content})
        layer = gzip.compress(tar, mtime=0)
        layer_digest = push_blob(base_url, repo, layer, c)
        plat = _platform_dict(platform)
        config = json.dumps({**plat, "config": {"Cmd": ["/payload.bin"]},
                             "rootfs": {"type": "layers", "diff_ids": [sha256_digest(tar)]},
                             **({"created": created} if created else {})},
                            sort_keys=True).encode()
        config_digest = push_blob(base_url, repo, config, c)
        mt = DOCKER_MANIFEST if docker else OCI_MANIFEST
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": mt,
            "config": {"mediaType": DOCKER_CONFIG if docker else OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": DOCKER_LAYER if docker else OCI_LAYER, "digest": layer_digest, "size": len(layer)}],
        }, indent=2).encode()
        digest = put_manifest(base_url, repo, tag or sha256_digest(manifest), manifest, mt, c)
        return PushedImage(repo, tag, digest, mt, manifest, config_digest, (layer_digest,), platform)
    finally:
        if client is None:
            c.close()


def push_index(base_url: str, repo: str, tag: str | None = "latest", *,
               platforms: tuple[str, ...] = ("linux/amd64", "linux/arm64"), docker: bool = False,
               client: httpx.Client | None = None) -> PushedIndex:
    """Push a multi-platform image: children by digest, then an OCI index (or Docker list) under ``tag``."""
    c = client or httpx.Client(timeout=30)
    try:
        children: dict[str, str] = {}
        entries = []
        for plat in platforms:
            img = push_image(base_url, repo, None, platform=plat, docker=docker, client=c)
            children[plat] = img.digest
            entries.append({"mediaType": img.media_type, "digest": img.digest, "size": len(img.manifest),
                            "platform": _platform_dict(plat)})
        mt = DOCKER_LIST if docker else OCI_INDEX
        body = json.dumps({"schemaVersion": 2, "mediaType": mt, "manifests": entries}, indent=2).encode()
        digest = put_manifest(base_url, repo, tag or sha256_digest(body), body, mt, c)
        return PushedIndex(repo, tag, digest, mt, body, children)
    finally:
        if client is None:
            c.close()


def overwrite_tag(base_url: str, repo: str, tag: str, *, index: bool = True) -> PushedIndex | PushedImage:
    """The attack: push fresh content under an existing ``tag`` (the old digest stays, untagged)."""
    if index:
        return push_index(base_url, repo, tag)
    return push_image(base_url, repo, tag)


def push_many_tags(base_url: str, repo: str, count: int, *, prefix: str = "t") -> dict[str, str]:
    """Point ``count`` tags (``t0``..) at one small image (one manifest PUT each); returns ``{tag: digest}``.

    Cheap fan-out for pagination tests and benches: blobs are uploaded once.
    """
    with httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=8)) as c:
        img = push_image(base_url, repo, f"{prefix}0", client=c)
        out = {f"{prefix}0": img.digest}
        for i in range(1, count):
            put_manifest(base_url, repo, f"{prefix}{i}", img.manifest, img.media_type, c)
            out[f"{prefix}{i}"] = img.digest
        return out
