"""Git operations in a local checkout, for the pin stage's pull/merge requests.

The pin stage rewrites image references to digests in a checkout and proposes the
change as a branch. What this module guarantees:

* **idempotent re-runs**: the branch is always rebuilt from the current base plus one
  commit; if the remote branch already holds exactly that content on that base,
  nothing is pushed; otherwise it is replaced with ``--force-with-lease`` pinned to
  the sha we saw, so a concurrent push is never clobbered blindly;
* **people's work is safe**: a remote branch that carries commits by anyone other than
  digestguard is not overwritten (``Refused``); a checkout with uncommitted changes is
  not reset unless the caller says so;
* **a fixed identity**: author and committer are ``digestguard <digestguard@localhost>``
  whatever the machine's git config says, and commit signing is off (no key prompts);
* **plain subprocess, no shell**: arguments are a list, ``GIT_TERMINAL_PROMPT=0`` so a
  missing credential fails instead of hanging, and every error names the checkout
  path and the git command, with any ``user:token@`` removed from URLs.

Example::

    update = commit_and_push(checkout, branch="digestguard/pin-kics-2026-04", base="main",
                             files={".github/workflows/ci.yml": new_text},
                             message="Pin checkmarx/kics to its known-good digest")
    if update.changed: ...open_or_update_pull_request(...)
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from digestguard.errors import AuthError, InputError, IntegrationError, NotFound, Refused, Unavailable
from integrations._rest import redact_url

__all__ = [
    "AUTHOR_EMAIL",
    "AUTHOR_NAME",
    "BranchUpdate",
    "clone",
    "commit_and_push",
    "commit_paths",
    "current_branch",
    "head_sha",
    "parse_remote",
    "prepare_branch",
    "push_branch",
    "remote_url",
]

AUTHOR_NAME = "digestguard"
AUTHOR_EMAIL = "digestguard@localhost"
NETWORK_TIMEOUT = 300.0
LOCAL_TIMEOUT = 60.0

_SCRUB_ENV = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_NAMESPACE", "GIT_PREFIX")


@dataclass(frozen=True)
class BranchUpdate:
    """What :func:`commit_and_push` did. ``changed`` is False when the remote already had this content."""

    repo: str
    branch: str
    base: str
    base_sha: str
    commit: str | None
    """The branch head after the call, or ``None`` when the files did not differ from the base."""
    pushed: bool
    changed: bool


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB_ENV}
    env.update(
        GIT_TERMINAL_PROMPT="0",
        LC_ALL="C",
        LANG="C",
        GIT_AUTHOR_NAME=AUTHOR_NAME,
        GIT_AUTHOR_EMAIL=AUTHOR_EMAIL,
        GIT_COMMITTER_NAME=AUTHOR_NAME,
        GIT_COMMITTER_EMAIL=AUTHOR_EMAIL,
    )
    return env


def _classify(stderr: str) -> type[IntegrationError]:
    s = stderr.lower()
    if any(t in s for t in ("authentication failed", "permission denied", "could not read username",
                            "could not read password", "403", "access denied", "terminal prompts disabled")):
        return AuthError
    if any(t in s for t in ("stale info", "[rejected]", "non-fast-forward", "failed to push", "protected branch")):
        return Refused
    if any(t in s for t in ("couldn't find remote ref", "does not appear to be a git repository", "repository not found",
                            "no such remote", "not found", "does not exist", "unknown revision")):
        return NotFound
    if any(t in s for t in ("could not resolve host", "connection refused", "timed out", "unable to access",
                            "connection reset", "early eof", "the remote end hung up")):
        return Unavailable
    return IntegrationError


def _git(repo: Path | None, *args: str, timeout: float = LOCAL_TIMEOUT, ok: tuple[int, ...] = (0,),
         source: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``git [-C repo] args``; raise a typed error naming the checkout and command on failure."""
    cmd = ["git"]
    if repo is not None:
        cmd += ["-C", str(repo)]
    cmd += ["-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false", "-c", "core.quotepath=off", *args]
    where = source or f"git {repo if repo is not None else ''}".rstrip()
    what = f"git {args[0]}" if args else "git"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout, check=False)
    except FileNotFoundError:
        raise IntegrationError(where, "the git executable is not installed") from None
    except subprocess.TimeoutExpired:
        raise Unavailable(where, f"{what} did not finish within {timeout:.0f} s") from None
    if proc.returncode not in ok:
        err = redact_url((proc.stderr or proc.stdout or "").strip())
        kind = _classify(err)
        raise kind(where, f"{what} failed: {err[-600:] or 'exit ' + str(proc.returncode)}")
    return proc


def _checkout(repo: str | Path) -> Path:
    """``repo`` as a Path, after checking it is the top of a git work tree."""
    path = Path(repo)
    if not path.is_dir():
        raise InputError(str(path), "checkout directory does not exist", field="repo")
    proc = subprocess.run(["git", "-C", str(path), "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                          env=_env(), check=False)
    if proc.returncode != 0:
        raise InputError(str(path), "not a git checkout (git rev-parse failed)", field="repo")
    return path


def _check_branch_name(name: str, field: str) -> None:
    if not name or name.startswith("-"):
        raise InputError("git branch", f"{name!r} is not a branch name", field=field)
    proc = subprocess.run(["git", "check-ref-format", "--branch", name], capture_output=True, text=True, env=_env(), check=False)
    if proc.returncode != 0:
        raise InputError("git branch", f"{name!r} is not a valid branch name", field=field)


def _check_remote_name(name: str) -> None:
    """A configured remote's name (``origin``) or a URL/path git can push to; never an option."""
    if not name or name.startswith("-") or any(c.isspace() or ord(c) < 32 for c in name):
        raise InputError("git remote", f"{redact_url(name)!r} is not a remote name or URL", field="remote")


def _inside(repo: Path, rel: str) -> Path:
    """``repo/rel`` after checking ``rel`` stays inside the checkout (no absolute paths, no ``..`` escapes, no .git)."""
    if not rel or os.path.isabs(rel):
        raise InputError(str(repo), f"{rel!r} must be a path relative to the checkout", field="files")
    target = (repo / rel).resolve()
    root = repo.resolve()
    if target != root and root not in target.parents:
        raise InputError(str(repo), f"{rel!r} points outside the checkout", field="files")
    if ".git" in Path(rel).parts:
        raise InputError(str(repo), f"{rel!r} is inside .git", field="files")
    return target


# --------------------------------------------------------------------------- reading


def remote_url(repo: str | Path, remote: str = "origin") -> str:
    """The fetch URL of ``remote``, with any ``user:token@`` removed (it is never needed to identify a repo)."""
    path = _checkout(repo)
    _check_remote_name(remote)
    proc = _git(path, "remote", "get-url", remote, ok=(0, 2, 128))
    if proc.returncode != 0:
        raise NotFound(f"git {path}", f"no remote named {remote!r}")
    return redact_url(proc.stdout.strip())


def parse_remote(url: str) -> tuple[str, str]:
    """``(host, "owner/repo")`` from an https, ssh or scp-style remote URL.

    >>> parse_remote("git@github.com:acme/api.git")
    ('github.com', 'acme/api')
    >>> parse_remote("https://gitlab.example.com/platform/ci/images.git")
    ('gitlab.example.com', 'platform/ci/images')
    """
    url = redact_url(url.strip())
    m = re.match(r"^(?:https?|ssh|git)://(?:[^@/]+@)?(?P<host>[^/:]+)(?::\d+)?/(?P<path>.+?)(?:\.git)?/?$", url)
    if not m:
        m = re.match(r"^(?:[^@/]+@)?(?P<host>[^/:]+):(?P<path>[^/].*?)(?:\.git)?/?$", url)
    if not m or "/" not in m.group("path"):
        raise InputError("git remote URL", f"{url!r} does not name a host and an owner/repo path")
    return m.group("host").lower(), m.group("path")


def head_sha(repo: str | Path, ref: str = "HEAD") -> str:
    path = _checkout(repo)
    return _git(path, "rev-parse", "--verify", "--quiet", ref + "^{commit}").stdout.strip()


def current_branch(repo: str | Path) -> str | None:
    """The checked-out branch, or ``None`` on a detached HEAD."""
    path = _checkout(repo)
    proc = _git(path, "symbolic-ref", "--quiet", "--short", "HEAD", ok=(0, 1))
    return proc.stdout.strip() or None


# --------------------------------------------------------------------------- changing


def clone(url: str, dest: str | Path, *, branch: str | None = None) -> Path:
    """Clone ``url`` into ``dest`` (which must not exist or be empty); returns the checkout path."""
    target = Path(dest)
    if target.exists() and any(target.iterdir()):
        raise InputError(str(target), "clone destination exists and is not empty", field="dest")
    args = ["clone", "--no-tags", "--quiet"]
    if branch:
        _check_branch_name(branch, "branch")
        args += ["--branch", branch]
    _git(None, *args, "--", url, str(target), timeout=NETWORK_TIMEOUT, source=f"git clone {redact_url(url)}")
    return target


def prepare_branch(repo: str | Path, branch: str, base: str, *, remote: str = "origin", discard_changes: bool = False) -> str:
    """Check out ``branch`` freshly made from ``base`` on ``remote``; return the base commit sha.

    ``remote`` is a configured remote's name or a URL (the inventory may give either).

    Fetches ``base`` first so the branch starts from what the remote has now. Refuses a
    checkout with uncommitted changes to tracked files unless ``discard_changes``.
    """
    path = _checkout(repo)
    _check_branch_name(branch, "branch")
    _check_branch_name(base, "base")
    _check_remote_name(remote)
    if branch == base:
        raise InputError("git branch", f"the change branch must differ from the base {base!r}", field="branch")
    dirty = _git(path, "status", "--porcelain", "--untracked-files=no").stdout.strip()
    if dirty and not discard_changes:
        raise Refused(f"git {path}", "checkout has uncommitted changes; commit or discard them first")
    # Our own ref namespace: works for a remote given as a URL and leaves the user's
    # remote-tracking refs alone.
    tracking = f"refs/digestguard/base/{base}"
    _git(path, "fetch", "--no-tags", "--quiet", remote, f"+refs/heads/{base}:{tracking}", timeout=NETWORK_TIMEOUT)
    force = ["--force"] if discard_changes else []
    _git(path, "checkout", "--quiet", *force, "--no-track", "-B", branch, tracking)
    return head_sha(path)


def commit_paths(repo: str | Path, paths: Iterable[str], message: str) -> str | None:
    """Commit exactly ``paths`` (added, changed or deleted) as digestguard; ``None`` if none changed."""
    path = _checkout(repo)
    rels = [str(p) for p in paths]
    if not rels:
        raise InputError(str(path), "no paths to commit", field="paths")
    for rel in rels:
        _inside(path, rel)
    if not message.strip():
        raise InputError(str(path), "commit message is empty", field="message")
    # A path to delete that git never knew is simply not part of the change.
    rels = [r for r in rels if (path / r).exists() or _git(path, "ls-files", "--", r).stdout.strip()]
    if not rels:
        return None
    _git(path, "add", "--all", "--", *rels)
    staged = _git(path, "diff", "--cached", "--quiet", "--", *rels, ok=(0, 1))
    if staged.returncode == 0:
        return None
    _git(path, "commit", "--quiet", "--no-verify", f"--author={AUTHOR_NAME} <{AUTHOR_EMAIL}>", "-m", message, "--", *rels)
    return head_sha(path)


def _remote_head(path: Path, remote: str, branch: str) -> str | None:
    out = _git(path, "ls-remote", "--heads", remote, f"refs/heads/{branch}", timeout=NETWORK_TIMEOUT).stdout
    for line in out.splitlines():
        sha, _, ref = line.partition("\t")
        if ref.strip() == f"refs/heads/{branch}":
            return sha.strip()
    return None


def push_branch(repo: str | Path, branch: str, *, remote: str = "origin", base: str | None = None) -> bool:
    """Push the checked-out ``branch`` to ``remote``; return False when the remote already had the same content.

    "Same" means same tree on the same parent, so a re-run that produces an identical
    commit (only the timestamp differs) pushes nothing and the local branch adopts the
    remote commit. Otherwise the remote branch is replaced with ``--force-with-lease``
    pinned to the sha seen a moment ago. With ``base`` given (and fetched by
    :func:`prepare_branch`), a remote branch carrying commits after the base by anyone
    but digestguard is refused, not overwritten. ``remote`` is a remote name or a URL.
    """
    path = _checkout(repo)
    _check_branch_name(branch, "branch")
    _check_remote_name(remote)
    if current_branch(path) != branch:
        raise Refused(f"git {path}", f"{branch!r} is not the checked-out branch")
    seen = _remote_head(path, remote, branch)
    if seen is not None:
        _git(path, "fetch", "--no-tags", "--quiet", remote, f"+refs/heads/{branch}:refs/digestguard/branch/{branch}", timeout=NETWORK_TIMEOUT)
        if base is not None:
            authors = _git(path, "log", "--format=%ae", f"refs/digestguard/base/{base}..{seen}").stdout.split()
            others = sorted({a for a in authors if a != AUTHOR_EMAIL})
            if others:
                raise Refused(f"git {path}", f"remote branch {branch!r} has commits by others ({', '.join(others)}); not overwriting")
        same_tree = _git(path, "rev-parse", f"{seen}^{{tree}}").stdout == _git(path, "rev-parse", "HEAD^{tree}").stdout
        same_parent = _git(path, "rev-parse", f"{seen}^@").stdout.split() == _git(path, "rev-parse", "HEAD^@").stdout.split()
        if same_tree and same_parent:
            _git(path, "reset", "--quiet", "--soft", seen)
            return False
    lease = f"--force-with-lease=refs/heads/{branch}:{seen or ''}"
    _git(path, "push", "--quiet", "--no-verify", lease, remote, f"HEAD:refs/heads/{branch}", timeout=NETWORK_TIMEOUT)
    return True


def commit_and_push(
    repo: str | Path,
    *,
    branch: str,
    base: str,
    files: Mapping[str, str | bytes | None],
    message: str,
    remote: str = "origin",
    discard_changes: bool = False,
) -> BranchUpdate:
    """Rebuild ``branch`` from ``remote/base``, write ``files`` (``None`` deletes), commit, push.

    Safe to re-run: the same input gives no new push; changed input replaces the branch's
    single commit. If the files equal the base, nothing is committed or pushed
    (``commit=None``) and the caller should not open a pull request.
    """
    path = _checkout(repo)
    if not files:
        raise InputError(str(path), "no files to commit", field="files")
    for rel in files:
        _inside(path, rel)
    base_sha = prepare_branch(path, branch, base, remote=remote, discard_changes=discard_changes)
    for rel, content in files.items():
        target = _inside(path, rel)
        if content is None:
            if target.exists():
                target.unlink()
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            with open(target, "w", encoding="utf-8", newline="") as fh:
                fh.write(content)
    commit = commit_paths(path, list(files), message)
    if commit is None:
        return BranchUpdate(str(path), branch, base, base_sha, None, pushed=False, changed=False)
    pushed = push_branch(path, branch, remote=remote, base=base)
    return BranchUpdate(str(path), branch, base, base_sha, head_sha(path), pushed=pushed, changed=pushed)


def checkout(repo: str | Path, ref: str) -> None:
    """Switch the checkout to ``ref`` (a branch or commit): the pin stage puts the on-call's working tree back as it was."""
    path = _checkout(repo)
    _git(path, "checkout", "--quiet", ref)
