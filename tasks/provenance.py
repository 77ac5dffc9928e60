"""Action provenance: a pinned ``uses: owner/repo@SHA`` must be a commit of that repository, as tagged.

Why: a SHA pin stops a force-pushed tag, but only if the SHA is the right one. GitHub serves
any commit of a repository's fork network under the parent's name, so ``owner/repo@SHA`` can
name a commit pushed only to a fork (an "impostor commit"). And a ``# v1.2.3`` comment is what
reviewers read: it must match what tag ``v1.2.3`` points at. Checks, for every pinned use:

- ``unknown-commit``: the repository (network) has no such commit;
- ``impostor-commit``: no branch or tag of the repository reaches the commit;
- ``comment-mismatch``: the version comment names a tag that is missing or points elsewhere;
- ``moved-tag``: a tag of the repository points at another commit than when the watch state
  first saw it (a force-push), reported once per tag.

The GitHub API answers through ``integrations.github.GitHubClient`` (``list_tags``,
``list_branches``, ``compare_status``, ``get_commit``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from digestguard._model import Model
from tasks.scan.references import ActionUse, scan_tree
from tasks.watch.state import WatchState

_SHA1 = re.compile(r"^[0-9a-fA-F]{40}$")
# the version-comment forms pinning tools write (``# v1.2.3``, ``# tag=v1.2.3``, ``# renovate: tag=v1``,
# ``# pin @v2.1.0``, ``# ratchet:owner/repo@v2``, ``# prettier/v2.0.1``, ``# name-0.23.5``); any other
# comment (``# needed for X``, ``# ratchet:exclude``) names no version and is not judged
_COMMENT = re.compile(r"#[ \t]*(?:renovate[ \t]*:[ \t]*)?(?:pin[ \t]+|tag[ \t]*[=:][ \t]*|ratchet:[\w-]+/[\w.-]+(?:/[\w.-]+)*)?"
                      r"@?(?P<v>(?:[\w-]*[-/])?v?\d+(?:\.\d+(?:\.\d+)?)?(?:-[A-Za-z0-9.]+)?)(?![\w.+/-])")


class ProvenanceFinding(Model):
    path: str
    line: int
    reference: str
    kind: Literal["unknown-commit", "impostor-commit", "comment-mismatch", "moved-tag"]
    reason: str
    target: str


def version_comment(text: str, use: ActionUse) -> str | None:
    """The ``# v1.2.3`` after a ``uses:`` value, if any."""
    line_end = text.find("\n", use.value_end)
    rest = text[use.value_end:line_end if line_end != -1 else len(text)]
    hash_at = rest.find("#")
    m = _COMMENT.match(rest, hash_at) if hash_at != -1 else None
    return m.group("v") if m else None


class _Repo:
    """One action repository's refs, fetched once."""

    def __init__(self, client: Any, name: str) -> None:
        self.client = client
        self.owner, _, self.repo = name.partition("/")
        self.tags: dict[str, str] = client.list_tags(self.owner, self.repo)
        self.branches: dict[str, str] = client.list_branches(self.owner, self.repo)
        self.reachable: dict[str, bool] = {}

    def reaches(self, sha: str) -> bool:
        """True when a branch or tag of the repository has ``sha`` in its history."""
        if sha not in self.reachable:
            heads = {**self.branches, **self.tags}
            ok = sha in {v.lower() for v in heads.values()}
            for ref in heads:
                if ok:
                    break
                ok = self.client.compare_status(self.owner, self.repo, ref, sha) in ("identical", "behind")
            self.reachable[sha] = ok
        return self.reachable[sha]


def check_actions(root: str | Path, client: Any, state: WatchState | None = None) -> list[ProvenanceFinding]:
    """Findings for every SHA-pinned action use under ``root`` (see the module docstring)."""
    out: list[ProvenanceFinding] = []
    repos: dict[str, _Repo] = {}
    reported_moves: set[tuple[str, str]] = set()
    for fs in scan_tree(root).files:
        for use in fs.actions:
            if not _SHA1.match(use.ref):
                continue
            sha = use.ref.lower()
            r = repos.get(use.repository)
            if r is None:
                r = repos[use.repository] = _Repo(client, use.repository)
                out += _moved_tags(use, r, state, reported_moves)
            out += _check_use(fs.text, use, sha, r)
    return out


def _finding(use: ActionUse, kind: str, reason: str) -> ProvenanceFinding:
    return ProvenanceFinding(path=use.path, line=use.line, reference=use.text, kind=kind,  # type: ignore[arg-type]
                             reason=reason, target=use.repository)


def _check_use(text: str, use: ActionUse, sha: str, r: _Repo) -> list[ProvenanceFinding]:
    if r.client.get_commit(r.owner, r.repo, sha) is None:
        return [_finding(use, "unknown-commit", f"{use.repository} has no commit {sha}")]
    out = []
    if not r.reaches(sha):
        out.append(_finding(use, "impostor-commit",
                            f"commit {sha[:12]} is reachable from no branch or tag of {use.repository} "
                            "(only from a fork): an impostor commit"))
    tag = version_comment(text, use)
    if tag is not None:
        current = r.tags.get(tag)
        if current is None:
            out.append(_finding(use, "comment-mismatch", f"the comment names tag {tag}, which {use.repository} does not have"))
        elif current.lower() != sha:
            out.append(_finding(use, "comment-mismatch",
                                f"the comment says {tag}, but tag {tag} points at {current[:12]} now, not {sha[:12]}"))
    return out


_RELEASE_TAG = re.compile(r"^v?\d+\.\d+\.\d+(?:[-+][\w.+-]*)?$")


def is_release_tag(tag: str) -> bool:
    """True for a full version tag (``v1.2.3``, ``0.34.0``, ``v2.0.0-rc.1``): one that should never move.
    Floating tags (``v4``, ``v4.1``, ``latest``) are moved on purpose by every release."""
    return bool(_RELEASE_TAG.match(tag))


def tag_moves(repository: str, tags: dict[str, str], state: WatchState) -> list[tuple[str, str, str]]:
    """``[(tag, first-seen commit, current commit)]`` for every tag of ``repository`` (owner/repo) that points
    elsewhere than when the watch state first saw it; tags not seen before are remembered (first one wins).
    The one rule behind ``lint --check-actions`` and the watch cycle."""
    first = state.action_tags(repository)
    out = [(tag, first[tag], sha.lower()) for tag, sha in sorted(tags.items())
           if tag in first and first[tag] != sha.lower()]
    state.remember_action_tags(repository, tags)
    return out


def _moved_tags(use: ActionUse, r: _Repo, state: WatchState | None, reported: set[tuple[str, str]]) -> list[ProvenanceFinding]:
    """Tags of the repository that point elsewhere than when first seen; remembers new ones."""
    if state is None:
        return []
    out = []
    for tag, was, sha in tag_moves(use.repository, r.tags, state):
        if (use.repository, tag) not in reported:
            reported.add((use.repository, tag))
            out.append(_finding(use, "moved-tag", f"tag {tag} of {use.repository} moved from {was[:12]} "
                                                  f"(first seen) to {sha[:12]}: force-pushed"))
    return out
