"""``integrations.git`` with real git: a local bare repository is the remote.

Everything here is real (git 2.39 subprocesses, a bare remote on disk); nothing
stands in for anything. Each test builds its own remote under ``tmp_path``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from digestguard.errors import InputError, NotFound, Refused
from integrations.git import (
    AUTHOR_EMAIL,
    clone,
    commit_and_push,
    current_branch,
    parse_remote,
    prepare_branch,
    remote_url,
)

CI = ".github/workflows/ci.yml"
OLD = "jobs:\n  scan:\n    runs-on: ubuntu-latest\n    container: checkmarx/kics:latest\n"
PINNED = "jobs:\n  scan:\n    runs-on: ubuntu-latest\n    container: checkmarx/kics@sha256:" + "1" * 64 + "\n"
BRANCH = "digestguard/pin-kics"

HUMAN = {"GIT_AUTHOR_NAME": "Ada", "GIT_AUTHOR_EMAIL": "ada@example.com",
         "GIT_COMMITTER_NAME": "Ada", "GIT_COMMITTER_EMAIL": "ada@example.com"}


def sh(cwd: Path, *args: str) -> str:
    env = {**os.environ, **HUMAN, "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True, env=env).stdout.strip()


def human_commit(clone_dir: Path, rel: str, text: str, message: str, push_to: str) -> str:
    (clone_dir / rel).parent.mkdir(parents=True, exist_ok=True)
    (clone_dir / rel).write_text(text)
    sh(clone_dir, "add", rel)
    sh(clone_dir, "commit", "-q", "-m", message)
    sh(clone_dir, "push", "-q", "origin", f"HEAD:refs/heads/{push_to}")
    return sh(clone_dir, "rev-parse", "HEAD")


@pytest.fixture()
def remote(tmp_path: Path) -> Path:
    """A bare remote whose ``main`` holds a workflow that uses a tag."""
    bare = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    seed = tmp_path / "seed"
    subprocess.run(["git", "clone", "-q", str(bare), str(seed)], check=True, capture_output=True)
    sh(seed, "checkout", "-q", "-b", "main")
    human_commit(seed, CI, OLD, "ci", "main")
    return bare


@pytest.fixture()
def checkout(tmp_path: Path, remote: Path) -> Path:
    return clone(str(remote), tmp_path / "work")


def remote_sha(remote: Path, ref: str) -> str:
    return sh(remote, "rev-parse", ref)


def test_commit_and_push_creates_one_commit_on_the_base(remote: Path, checkout: Path) -> None:
    update = commit_and_push(checkout, branch=BRANCH, base="main", files={CI: PINNED}, message="Pin kics to a digest")

    assert update.pushed and update.changed and update.commit == remote_sha(remote, BRANCH)
    assert remote_sha(remote, f"{BRANCH}^") == remote_sha(remote, "main") == update.base_sha
    assert sh(remote, "show", f"{BRANCH}:{CI}") == PINNED.rstrip("\n")
    assert sh(remote, "log", "-1", "--format=%an <%ae>|%cn <%ce>|%s", BRANCH) == (
        f"digestguard <{AUTHOR_EMAIL}>|digestguard <{AUTHOR_EMAIL}>|Pin kics to a digest"
    )
    assert current_branch(checkout) == BRANCH


def test_rerun_with_same_content_pushes_nothing(remote: Path, checkout: Path) -> None:
    first = commit_and_push(checkout, branch=BRANCH, base="main", files={CI: PINNED}, message="Pin")
    again = commit_and_push(checkout, branch=BRANCH, base="main", files={CI: PINNED}, message="Pin")

    assert not again.pushed and not again.changed
    assert again.commit == first.commit == remote_sha(remote, BRANCH)


def test_rerun_with_new_content_or_moved_base_updates_the_same_branch(tmp_path: Path, remote: Path, checkout: Path) -> None:
    commit_and_push(checkout, branch=BRANCH, base="main", files={CI: PINNED}, message="Pin v1")
    newer = PINNED.replace("1" * 64, "2" * 64)
    second = commit_and_push(checkout, branch=BRANCH, base="main", files={CI: newer, "README.md": "pinned\n"}, message="Pin v2")
    assert second.pushed and remote_sha(remote, BRANCH) == second.commit
    assert sh(remote, "rev-list", "--count", f"main..{BRANCH}") == "1"  # still a single commit on top of the base

    other = tmp_path / "other"
    subprocess.run(["git", "clone", "-q", str(remote), str(other)], check=True, capture_output=True)
    new_main = human_commit(other, "docs.md", "docs\n", "docs", "main")

    third = commit_and_push(checkout, branch=BRANCH, base="main", files={CI: newer, "README.md": "pinned\n"}, message="Pin v2")
    assert third.pushed and third.base_sha == new_main
    assert remote_sha(remote, f"{BRANCH}^") == new_main  # rebuilt on the moved base


def test_unchanged_files_make_no_commit(remote: Path, checkout: Path) -> None:
    update = commit_and_push(checkout, branch=BRANCH, base="main", files={CI: OLD, "gone.txt": None}, message="noop")
    assert update.commit is None and not update.pushed
    assert subprocess.run(["git", "-C", str(remote), "rev-parse", "--verify", "--quiet", BRANCH], capture_output=True).returncode != 0


def test_branch_with_someone_elses_commit_is_not_overwritten(tmp_path: Path, remote: Path, checkout: Path) -> None:
    commit_and_push(checkout, branch=BRANCH, base="main", files={CI: PINNED}, message="Pin")
    reviewer = tmp_path / "reviewer"
    subprocess.run(["git", "clone", "-q", "-b", BRANCH, str(remote), str(reviewer)], check=True, capture_output=True)
    theirs = human_commit(reviewer, "NOTE.md", "please keep\n", "reviewer fix", BRANCH)

    with pytest.raises(Refused) as err:
        commit_and_push(checkout, branch=BRANCH, base="main", files={CI: PINNED.replace("1", "3")}, message="Pin again")
    assert "ada@example.com" in str(err.value) and str(checkout) in str(err.value)
    assert remote_sha(remote, BRANCH) == theirs


def test_dirty_checkout_is_refused_unless_discarding(remote: Path, checkout: Path) -> None:
    (checkout / CI).write_text("local edit\n")
    with pytest.raises(Refused, match="uncommitted"):
        prepare_branch(checkout, BRANCH, "main")
    prepare_branch(checkout, BRANCH, "main", discard_changes=True)
    assert (checkout / CI).read_text() == OLD


def test_errors_name_the_checkout(tmp_path: Path, checkout: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(InputError) as err:
        prepare_branch(plain, BRANCH, "main")
    assert str(plain) in str(err.value)
    with pytest.raises(NotFound) as err:
        prepare_branch(checkout, BRANCH, "no-such-base")
    assert str(checkout) in str(err.value) and "fetch" in str(err.value)
    with pytest.raises(NotFound):
        remote_url(checkout, "upstream")
    for bad in ({"../escape.txt": "x"}, {"/etc/passwd": "x"}, {".git/config": "x"}):
        with pytest.raises(InputError):
            commit_and_push(checkout, branch=BRANCH, base="main", files=bad, message="m")
    with pytest.raises(InputError):
        prepare_branch(checkout, "main", "main")
    with pytest.raises(InputError):
        prepare_branch(checkout, "bad..name", "main")


def test_remote_url_drops_credentials_and_parses(checkout: Path) -> None:
    subprocess.run(["git", "-C", str(checkout), "remote", "add", "gh", "https://x-access-token:ghs_SECRET@github.com/acme/api.git"], check=True)
    url = remote_url(checkout, "gh")
    assert url == "https://github.com/acme/api.git" and "ghs_SECRET" not in url
    assert parse_remote(url) == ("github.com", "acme/api")
    assert parse_remote("git@gitlab.example.com:platform/ci/images.git") == ("gitlab.example.com", "platform/ci/images")
    assert parse_remote("ssh://git@github.com:22/acme/web") == ("github.com", "acme/web")
    with pytest.raises(InputError):
        parse_remote("/srv/git/local.git")


def test_remote_given_as_a_url(remote: Path, checkout: Path) -> None:
    """The inventory may name the push target by URL instead of a configured remote."""
    update = commit_and_push(checkout, branch=BRANCH, base="main", files={CI: PINNED}, message="Pin", remote=str(remote))
    assert update.pushed and remote_sha(remote, BRANCH) == update.commit
    again = commit_and_push(checkout, branch=BRANCH, base="main", files={CI: PINNED}, message="Pin", remote=str(remote))
    assert not again.pushed
