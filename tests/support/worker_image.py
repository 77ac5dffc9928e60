"""Test-only: build and run ``deployments/Dockerfile`` with podman on a machine that reaches no container registry.

* :func:`standin_base` makes a stand-in for the digest-pinned ``python:3.11.10-slim-bookworm`` base: a minimal Debian
  bookworm root filesystem from ``mmdebstrap`` (using the host's own apt sources, passed through as files), imported
  into podman as :data:`STANDIN_IMAGE`. It carries what the Dockerfile needs from its base: ``python`` (Debian's
  python3 3.11 + python-is-python3), pip bootstrapped from Debian's bundled pip wheel into /usr/local the way the
  official image has pip outside the distribution's packages, ``useradd`` (passwd) and CA certificates. Debian's
  PEP 668 marker (/usr/lib/python3.11/EXTERNALLY-MANAGED) is removed so ``pip install`` behaves as in the official
  python image, which has no such marker. The tarball is cached under :data:`CACHE_DIR`, keyed by the UTC date and a
  hash of the recipe and the apt sources, so a second run the same day skips mmdebstrap.
* :func:`pip_build_config` hands the host's pip configuration (config files and ``PIP_*`` variables, merged into one
  file mounted as the build's /etc/pip.conf, plus the local files and folders it names, e.g. its CA bundle) into the
  build as read-only ``--volume`` mounts: nothing of it is written into the image or into this repository.
* :func:`runtime_options` finds podman options under which containers start here: first none (podman's defaults);
  in sandboxes where crun cannot set rlimits or handle the cgroup layout, ``--runtime runc`` with explicit ulimits.
"""

from __future__ import annotations

import configparser
import datetime as dt
import hashlib
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

STANDIN_IMAGE = "localhost/digestguard-test-base:bookworm"
BUILT_IMAGE = "localhost/digestguard-worker:test"
CACHE_DIR = Path(os.environ.get("DIGESTGUARD_IMAGE_CACHE", "/var/tmp/digestguard-image-test"))
LABEL = "org.digestguard.test-standin"
SUITE = "bookworm"
PACKAGES = ("python3", "python-is-python3", "python3-pip-whl", "passwd", "ca-certificates")
HOOKS = (
    # The official python image has no PEP 668 marker; Debian's would refuse the Dockerfile's `pip install`.
    'rm -f "$1"/usr/lib/python3.*/EXTERNALLY-MANAGED',
    # pip from Debian's bundled wheel, installed by itself (no network) into /usr/local, outside dpkg's files.
    'chroot "$1" sh -ec \'w=$(ls /usr/share/python-wheels/pip-*.whl); python3 "$w/pip" install -q --no-index '
    '--no-cache-dir --disable-pip-version-check --no-warn-script-location "$w"\'',
    'chroot "$1" python -m pip --version',
    'chroot "$1" useradd --help >/dev/null',
)
# mmdebstrap failures that mean "the package archive is unreachable" (a reason to skip, not to fail).
UNREACHABLE = re.compile(r"Could not resolve|Temporary failure resolving|Failed to fetch|Unable to connect|"
                         r"Could not connect|Connection timed out|No route to host|Network is unreachable")
# crun in gVisor-like sandboxes: it cannot set RLIMIT_NPROC / the default RLIMIT_NOFILE, nor use hybrid cgroups.
SANDBOX_RUNTIME = re.compile(r"setrlimit|error setting rlimit|cgroups in hybrid mode")


class Unavailable(Exception):
    """A prerequisite outside this repository is missing here (the test skips, saying which)."""


def run(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


# ---------------------------------------------------------------- the stand-in base

def host_apt_sources() -> list[Path]:
    """The host's apt source files (one-line .list or deb822 .sources), handed to mmdebstrap as they are."""
    etc = Path("/etc/apt")
    found = [etc / "sources.list"] + sorted((etc / "sources.list.d").glob("*.sources")) + sorted(
        (etc / "sources.list.d").glob("*.list"))
    return [p for p in found if p.is_file() and any(ln.strip() and not ln.lstrip().startswith("#")
                                                    for ln in p.read_text().splitlines())]


def host_apt_proxy_options() -> list[str]:
    """The host's apt proxy settings, if any (mmdebstrap does not read the host's apt.conf)."""
    opts = []
    for key in ("Acquire::http::Proxy", "Acquire::https::Proxy"):
        done = run(["apt-config", "dump", "--no-empty", "--format", "%v", key], timeout=30)
        value = done.stdout.strip() if done.returncode == 0 else ""
        if value and "\n" not in value:
            opts.append(f'--aptopt={key} "{value}"')
    return opts


def standin_key(sources: list[Path]) -> str:
    h = hashlib.sha256(repr((SUITE, PACKAGES, HOOKS)).encode())
    for s in sources:
        h.update(s.read_bytes())
    return f"{dt.datetime.now(dt.timezone.utc):%Y%m%d}-{h.hexdigest()[:12]}"


def _label_of(image: str) -> str | None:
    done = run(["podman", "image", "inspect", "--format", "{{index .Labels \"" + LABEL + "\"}}", image], timeout=60)
    return done.stdout.strip() if done.returncode == 0 else None


def standin_base(scratch: Path, log) -> tuple[str, dict]:
    """Make (or reuse) :data:`STANDIN_IMAGE`; return its name and timings (seconds, None when reused)."""
    if shutil.which("mmdebstrap") is None:
        raise Unavailable("mmdebstrap is not installed (Debian package mmdebstrap; .ci/setup installs it)")
    sources = host_apt_sources()
    if not sources:
        raise Unavailable("the host has no apt sources (/etc/apt/sources.list[.d]) to build a stand-in base from")
    key = standin_key(sources)
    timings: dict = {"mmdebstrap": None, "import": None}
    if _label_of(STANDIN_IMAGE) == key:
        log(f"stand-in base {STANDIN_IMAGE} ({key}) already in local storage")
        return STANDIN_IMAGE, timings
    try:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        cache = CACHE_DIR if os.access(CACHE_DIR, os.W_OK) else scratch
    except OSError:
        cache = scratch
    tar = cache / f"standin-{SUITE}-{key}.tar"
    if tar.is_file():
        log(f"stand-in rootfs from cache: {tar}")
    else:
        partial = cache / f".standin-{uuid.uuid4().hex}.tar"
        cmd = ["mmdebstrap", "--mode=auto", "--variant=minbase", "--format=tar", "--include=" + ",".join(PACKAGES),
               *host_apt_proxy_options(), *(f"--customize-hook={h}" for h in HOOKS),
               SUITE, str(partial), *map(str, sources)]
        started = dt.datetime.now().timestamp()
        try:
            done = run(cmd, timeout=1200)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        timings["mmdebstrap"] = round(dt.datetime.now().timestamp() - started, 1)
        log(f"mmdebstrap: rc={done.returncode} in {timings['mmdebstrap']} s")
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            out = done.stdout + done.stderr
            if UNREACHABLE.search(out):
                raise Unavailable("Debian's package archive is unreachable from here (mmdebstrap: "
                                  + UNREACHABLE.search(out).group(0) + ")")
            raise RuntimeError("mmdebstrap failed:\n" + out[-4000:])
        os.replace(partial, tar)
        for old in cache.glob(f"standin-{SUITE}-*.tar"):  # one cached tarball is enough
            if old != tar:
                old.unlink(missing_ok=True)
    started = dt.datetime.now().timestamp()
    done = run(["podman", "import", "--change", f"LABEL {LABEL}={key}", "--change", "ENV LANG=C.UTF-8",
                "--change", 'CMD ["python3"]', str(tar), STANDIN_IMAGE], timeout=600)
    timings["import"] = round(dt.datetime.now().timestamp() - started, 1)
    if done.returncode != 0:
        raise RuntimeError("podman import failed: " + done.stderr[-2000:])
    log(f"podman import: {STANDIN_IMAGE} in {timings['import']} s")
    return STANDIN_IMAGE, timings


# ---------------------------------------------------------------- the host's pip configuration, for the build

def _pip_config_files() -> list[Path]:
    """pip's config files in its own order (global, then user, then $PIP_CONFIG_FILE): later ones win."""
    xdg_dirs = os.environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(":")
    home = Path.home()
    user_cfg = Path(os.environ.get("XDG_CONFIG_HOME", home / ".config"))
    files = [Path(d) / "pip" / "pip.conf" for d in xdg_dirs if d] + [Path("/etc/pip.conf"),
                                                                     home / ".pip" / "pip.conf",
                                                                     user_cfg / "pip" / "pip.conf"]
    if os.environ.get("PIP_CONFIG_FILE") and os.environ["PIP_CONFIG_FILE"] != os.devnull:
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    return [f for f in files if f.is_file()]


def _local_paths(value: str) -> list[Path]:
    paths = []
    for token in value.split():
        p = Path(unquote(urlparse(token).path)) if token.startswith("file://") else Path(token)
        if token.startswith("file://") and p.name == "simple":
            p = p.parent  # a local simple index's pages link to the files beside it (../files/...)
        if p.is_absolute() and p.exists() and len(p.parts) > 2:  # never mount /, /etc, /opt, ... whole
            paths.append(p)
    return paths


def pip_build_config(scratch: Path) -> list[str]:
    """``--volume`` options giving the build the host's effective pip configuration, read-only, at build time only."""
    merged = configparser.RawConfigParser()
    for f in _pip_config_files():
        merged.read(f)
    for name, value in sorted(os.environ.items()):
        if name.startswith("PIP_") and name != "PIP_CONFIG_FILE":
            if not merged.has_section("global"):
                merged.add_section("global")
            merged.set("global", name[4:].lower().replace("_", "-"), value)
    conf = scratch / "pip.conf"
    conf.touch(mode=0o600)  # it may hold an index URL with a token: readable by root only, never printed
    with conf.open("w") as fh:
        merged.write(fh)
    mounts = {conf: Path("/etc/pip.conf")}
    for section in merged.sections():
        for _key, value in merged.items(section):
            for p in _local_paths(value):
                if not any(p == m or m in p.parents for m in mounts):
                    mounts[p] = p
    return [f"--volume={src}:{dst}:ro" for src, dst in mounts.items()]


# Run inside the built image with the mounts' (source digest or "dir", destination) pairs: podman 4.3 leaves a bind
# mount's missing destination behind as an empty file or folder; that is all that may be left (no host content).
LEAK_CHECK = """
import hashlib, json, os, sys
leaks = []
for digest, dst in json.loads(sys.argv[1]):
    if os.path.isdir(dst) and os.listdir(dst):
        leaks.append(dst)
    elif os.path.isfile(dst) and os.path.getsize(dst) and hashlib.sha256(open(dst, 'rb').read()).hexdigest() == digest:
        leaks.append(dst)
print(json.dumps(leaks))
"""


def mount_pairs(volume_opts: list[str]) -> list[tuple[str, str]]:
    """(sha256 of the host file, or "dir", destination) for each ``--volume=src:dst:ro`` option."""
    pairs = []
    for opt in volume_opts:
        src, dst, _ = opt.split("=", 1)[1].rsplit(":", 2)
        path = Path(src)
        pairs.append(("dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest(), dst))
    return pairs


def image_id(name: str) -> str | None:
    done = run(["podman", "image", "inspect", "--format", "{{.Id}}", name], timeout=60)
    return done.stdout.strip() if done.returncode == 0 else None


def remove_superseded(old_ids: list[str | None], keep: list[str | None], log) -> None:
    """Remove, by id, the images this test made on an earlier run and has since replaced (best effort)."""
    for old in {i for i in old_ids if i} - {i for i in keep if i}:
        done = run(["podman", "rmi", old], timeout=300)
        log(f"removed superseded image {old[:12]}" if done.returncode == 0 else
            f"kept superseded image {old[:12]}: {done.stderr.strip()[-200:]}")


# ---------------------------------------------------------------- running containers here

def runtime_options(image: str, log) -> list[str]:
    """podman options under which a container of ``image`` starts here (probed with ``true``)."""
    candidates = [[]]
    if shutil.which("runc"):
        nofile = run(["sh", "-c", "ulimit -Sn; ulimit -Hn"], timeout=10).stdout.split()
        candidates.append(["--runtime=runc", f"--ulimit=nofile={nofile[0]}:{nofile[1]}", "--ulimit=nproc=4096:4096"])
    errors = []
    for opts in candidates:
        name = f"digestguard-probe-{uuid.uuid4().hex[:8]}"
        try:
            done = run(["podman", "run", "--rm", "--name", name, "--network=none", *opts, image, "true"], timeout=120)
        finally:
            run(["podman", "rm", "--force", "--ignore", name], timeout=60)
        if done.returncode == 0:
            log(f"containers start here with: {' '.join(opts) or '(podman defaults)'}")
            return opts
        errors.append(f"{' '.join(opts) or 'defaults'}: {done.stderr.strip()[-500:]}")
        if not SANDBOX_RUNTIME.search(done.stderr):
            break
    raise RuntimeError("no container could be started here:\n" + "\n".join(errors))


def run_in(image: str, opts: list[str], argv: list[str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``podman run --rm`` (no network: the image must not need one) with the container removed even on timeout."""
    name = f"digestguard-test-{uuid.uuid4().hex[:8]}"
    try:
        return run(["podman", "run", "--rm", "--name", name, "--network=none", *opts, image, *(argv or [])],
                   timeout=timeout)
    finally:
        run(["podman", "rm", "--force", "--ignore", name], timeout=60)
