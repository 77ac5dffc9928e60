"""The one walk over a repository checkout (or a folder of exported CI logs).

``os.scandir`` with an explicit stack: no ``stat`` per file beyond what the directory entry
already knows, directory symlinks are never followed, and the caller decides which directories
to leave out. Every repository walk (reference scan, CI definition files, detect-secrets input,
CI log folders) goes through :func:`walk_files`, so they all agree on what "the files of a tree" are.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Container, Iterator

GIT_ONLY: frozenset[str] = frozenset({".git"})
"""Leave out only ``.git`` (the reference scan reads everything else)."""
DEPENDENCY_DIRS: frozenset[str] = frozenset({".git", "node_modules", ".venv", "venv", "__pycache__", ".tox",
                                             ".mypy_cache", ".pytest_cache"})
"""Leave out ``.git`` and dependency/tool folders (the secret scan)."""


def walk_files(
    root: str | os.PathLike[str],
    skip_dirs: Container[str] | Callable[[str], bool] = GIT_ONLY,
) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """(relative posix path, entry) for every file and symlink under ``root``, in no particular order.

    ``skip_dirs`` is a set of directory names, or a predicate on a directory's name, for the
    directories not entered. Directory symlinks are yielded as entries (never entered): callers
    check ``entry.is_symlink()`` / ``entry.is_file()``. Unreadable directories are passed over.
    """
    skip = skip_dirs if callable(skip_dirs) else skip_dirs.__contains__
    base = os.fspath(root)
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            it = os.scandir(os.path.join(base, rel) if rel else base)
        except OSError:
            continue
        with it:
            for e in it:
                r = f"{rel}/{e.name}" if rel else e.name
                if e.is_dir(follow_symlinks=False):
                    if not skip(e.name):
                        stack.append(r)
                elif e.is_symlink() or e.is_file(follow_symlinks=False):
                    yield r, e


def tree_order(rel: str) -> tuple[tuple[int, str], ...]:
    """Sort key for the top-down order: a folder's own files (by name) before its subfolders (by name)."""
    parts = rel.split("/")
    return (*((1, p) for p in parts[:-1]), (0, parts[-1]))
