"""Quarantine gate: a digest or action SHA that a change moves to must not be the attacker's.

Why: when a tag is overwritten, a pinning bot (or a person running ``docker pull`` and
copying the digest) produces exactly a "digest update" - to the attacker's image. The same
goes for a force-pushed action tag and its new commit. So on a pull request, every pinned
digest or commit that changed against the base is checked:

- listed as malicious by an advisory: refused;
- for an image or action an advisory is about: refused when it was pushed inside the
  advisory's window, and also when its push time cannot be found (fail closed: the on-call
  checks it and allow-lists it with a reason);
- unless an allow-list entry names that digest/SHA with a reason.

Push times come from the caller's ``pushed_at`` (``github_pushed_at`` asks the GitHub API for
an action commit's committer date; images need a registry-side time the caller supplies).
Both are hints an attacker can set, which is why the malicious lists come first and an
unknown time fails closed.

    digestguard lint . --check-updates origin/main --allow quarantine-allow.yaml
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field

from digestguard._model import Model
from digestguard.advisory import Advisory, Window
from digestguard.errors import InputError
from digestguard.reference import is_digest, try_parse_reference
from tasks.scan.ci_files import classify
from tasks.scan.references import FileScan, scan_text

_SHA1 = re.compile(r"^[0-9a-fA-F]{40}$")


class Update(Model):
    """A pinned digest (image) or commit SHA (action) that is new in the change."""

    path: str
    line: int
    kind: Literal["image", "action"]
    name: str = Field(description="canonical image repository, or owner/repo for an action")
    reference: str
    old: list[str] = Field(default_factory=list, description="what the base pinned this name to in the same file")
    new: str


class AllowEntry(Model):
    """One digest or SHA a person checked and let through, and why."""

    digest: str
    reason: str = Field(min_length=3)


class QuarantineFinding(Model):
    path: str
    line: int
    reference: str
    kind: Literal["quarantined"] = "quarantined"
    reason: str
    advisory: str | None = None
    target: str | None = None


PushedAt = Callable[[Update], datetime | None]


def load_allow_list(path: str | Path) -> list[AllowEntry]:
    """``[{digest: sha256:... | <40-hex SHA>, reason: ...}, ...]`` from YAML; each entry needs a reason."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or []
    except (OSError, yaml.YAMLError) as e:
        raise InputError(str(p), f"cannot read the allow-list: {e}") from None
    if isinstance(data, dict):
        data = data.get("allow", [])
    if not isinstance(data, list):
        raise InputError(str(p), "want a list of {digest, reason} entries")
    out = []
    for i, item in enumerate(data):
        try:
            entry = AllowEntry.model_validate(item)
        except ValueError as e:
            raise InputError(str(p), f"entry {i + 1}: {e}") from None
        value = entry.digest.strip().lower()
        if not (is_digest(value) or _SHA1.match(value)):
            raise InputError(str(p), f"entry {i + 1}: {entry.digest!r} is neither a digest nor a commit SHA")
        out.append(AllowEntry(digest=value, reason=entry.reason.strip()))
    return out


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, check=False, timeout=120)


def _pins(fs: FileScan) -> list[tuple[int, str, str, str, str]]:
    """(line, kind, name, reference text, digest/SHA) of every pinned reference in one scanned file."""
    out = []
    for f in fs.found:
        ref = f.ref if f.pinnable else None
        if ref is not None and ref.digest:
            out.append((f.line, "image", ref.name, f.text, ref.digest))
    for h in fs.helm:
        if h.ref is not None and h.digest is not None and is_digest(h.digest.text):
            out.append((h.digest.line, "image", h.ref.name, h.text, h.digest.text.lower()))
    for a in fs.actions:
        if _SHA1.match(a.ref):
            out.append((a.line, "action", a.repository, a.text, a.ref.lower()))
    return out


def updates_since(root: str | Path, base_ref: str) -> list[Update]:
    """Every pin in the working tree that the base (``git`` ref ``base_ref``) did not have for that name and file."""
    root = Path(root)
    if _git(root, "rev-parse", "--verify", "--quiet", f"{base_ref}^{{commit}}").returncode != 0:
        raise InputError(base_ref, f"not a commit in {root} (fetch it first, e.g. git fetch origin main)")
    diff = _git(root, "diff", "--name-only", "-z", base_ref, "--")
    untracked = _git(root, "ls-files", "--others", "--exclude-standard", "-z")
    if diff.returncode != 0:
        raise InputError(base_ref, f"git diff failed: {diff.stderr.decode(errors='replace').strip()}")
    paths = sorted({p for p in (diff.stdout + untracked.stdout).decode("utf-8", "replace").split("\0") if p})
    out: list[Update] = []
    for rel in paths:
        kind = classify(rel)
        path = root / rel
        if kind is None or not path.is_file() or path.is_symlink():
            continue
        try:
            new_text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        shown = _git(root, "show", f"{base_ref}:{rel}")
        old_text = shown.stdout.decode("utf-8", "replace") if shown.returncode == 0 else ""
        before: dict[str, set[str]] = {}
        for _, _, name, _, digest in _pins(scan_text(rel, old_text, kind)):
            before.setdefault(name, set()).add(digest)
        for line, k, name, text, digest in _pins(scan_text(rel, new_text, kind)):
            if digest not in before.get(name, set()):
                out.append(Update(path=rel, line=line, kind=k, name=name, reference=text,  # type: ignore[arg-type]
                                  old=sorted(before.get(name, set())), new=digest))
    return out


def _related(u: Update, adv: Advisory) -> tuple[bool, bool, list[Window]]:
    """(is the new value malicious, is the advisory about this name, its windows) for one update."""
    if u.kind == "action":
        ar = next((a for a in adv.actions if a.repository.lower() == u.name.lower()), None)
        if ar is None:
            return False, False, []
        return u.new in ar.malicious_commits, True, [ar.window or adv.window]
    ref = try_parse_reference(u.name)
    img = adv.image_for(ref) if ref is not None else None
    if adv.is_malicious(u.new):
        return True, True, adv.windows()
    if img is None:
        return False, False, []
    return False, True, [adv.window, *img.windows]


def _pack_known_good(u: Update, adv: Advisory) -> bool:
    """True when the advisory lists ``u.new`` as a known-good digest of the image ``u`` names."""
    img = adv.image_for(try_parse_reference(u.name))
    return img is not None and any(k.digest == u.new for k in img.known_good)


def _span(w: Window) -> str:
    return f"{w.start:%Y-%m-%d %H:%M}Z - " + (f"{w.end:%Y-%m-%d %H:%M}Z" if w.end else "open")


def check_updates(updates: Sequence[Update], advisories: Sequence[Advisory], allow: Sequence[AllowEntry] = (),
                  pushed_at: PushedAt | None = None) -> tuple[list[QuarantineFinding], list[tuple[Update, str]]]:
    """(refused updates, allowed ones with the allow-list's reason)."""
    allowed_by = {a.digest: a.reason for a in allow}
    refused: list[QuarantineFinding] = []
    allowed: list[tuple[Update, str]] = []
    for u in updates:
        why = _why_refused(u, advisories, pushed_at)
        if why is None:
            continue
        if u.new in allowed_by:
            allowed.append((u, allowed_by[u.new]))
            continue
        reason, adv_id = why
        refused.append(QuarantineFinding(path=u.path, line=u.line, reference=u.reference, reason=reason,
                                         advisory=adv_id, target=u.name))
    return refused, allowed


def _why_refused(u: Update, advisories: Sequence[Advisory], pushed_at: PushedAt | None) -> tuple[str, str] | None:
    change = f"changed in this diff {'from ' + ', '.join(x[:19] for x in u.old) + ' ' if u.old else ''}to {u.new[:19]}..."
    related: list[tuple[Advisory, list[Window]]] = []
    for adv in advisories:
        bad, about, windows = _related(u, adv)
        if bad:
            return f"{change}, which {adv.id} lists as malicious", adv.id
        if about:
            related.append((adv, windows))
    if not related:
        return None
    if u.kind == "image" and any(_pack_known_good(u, adv) for adv, _ in related):
        return None  # the pack's own known-good digest (with its source and method): what pin moves references to
    when = pushed_at(u) if pushed_at is not None else None
    if when is None:
        adv = related[0][0]
        return (f"{change}; {adv.id} covers {u.name} and when this was pushed is unknown: check it, then allow-list "
                "it with a reason"), adv.id
    for adv, windows in related:
        for w in windows:
            if w.contains(when):
                return f"{change}, pushed {when:%Y-%m-%d %H:%M}Z inside {adv.id}'s window ({_span(w)})", adv.id
    return None


def github_pushed_at(client) -> PushedAt:  # noqa: ANN001 - an integrations.github.GitHubClient
    """Push-time lookup for action commits through the GitHub API (committer date); images answer None."""
    def lookup(u: Update) -> datetime | None:
        if u.kind != "action":
            return None
        owner, _, repo = u.name.partition("/")
        return client.commit_time(owner, repo, u.new)
    return lookup
