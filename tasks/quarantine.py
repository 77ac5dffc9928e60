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

Push times come from the caller's ``pushed_at``: ``github_pushed_at`` asks the GitHub API for
an action commit's committer date; :class:`ImagePushTimes` gathers every source there is for an
image digest (each a :class:`PushTime` naming where it came from):

- Docker Hub's API: the platform image's ``last_pushed`` or the tag's ``tag_last_pushed`` when the
  tag (or another tag of the repository) names the digest - a registry-side time;
- the watch state: when the watch first saw a reference at this digest - the image was pushed
  *at or before* then (an upper bound: it proves "before the window" only when it is earlier);
- the registry: the image config's ``created`` (for an index, its first linux child's) - set by
  whoever built the image, so the weakest; used alongside the others, never instead of them.

The update is refused when any source puts it inside a window (or an upper bound cannot rule that
out), passes when at least one source places it outside, and fails closed when none knows.
Commit dates and ``created`` are hints an attacker can set, which is why the malicious lists come
first and an unknown time fails closed.

    digestguard lint . --check-updates origin/main --allow quarantine-allow.yaml
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from digestguard._model import Model
from digestguard.advisory import Advisory, Window
from digestguard.errors import DigestguardError, InputError, NotFound
from digestguard.reference import DOCKER_HUB, ImageReference, is_digest, try_parse_reference
from digestguard.timeutil import parse_time, utc
from integrations.registry import index_children
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


@dataclass(frozen=True)
class PushTime:
    """One source's answer to "when was this digest pushed?": ``at``, ``source`` (for the reason text);
    ``upper_bound``: pushed at or before ``at`` (the watch's first sighting), not exactly then."""

    at: datetime
    source: str
    upper_bound: bool = False


PushedAt = Callable[[Update], "datetime | PushTime | Sequence[PushTime] | None"]


def push_times(value: "datetime | PushTime | Sequence[PushTime] | None") -> list[PushTime]:
    """A ``pushed_at`` answer as a list of :class:`PushTime` (a bare datetime is an exact time from the caller)."""
    if value is None:
        return []
    if isinstance(value, datetime):
        return [PushTime(utc(value), "given")]
    if isinstance(value, PushTime):
        return [value]
    return list(value)


def judge_push(times: Sequence[PushTime], windows: Sequence[Window]) -> tuple[str, PushTime | None]:
    """(``inside`` | ``outside`` | ``unknown``, the time that decided) for a digest's push times against windows.

    Any exact time inside a window, or a first sighting inside one: ``inside`` (the attacker's
    push cannot be ruled out). Else an exact time, or a sighting before every window starts:
    ``outside``. Else ``unknown``.
    """
    for t in times:
        if any(w.contains(t.at) for w in windows):
            return "inside", t
    for t in times:
        if not t.upper_bound or all(utc(t.at) < w.start for w in windows):
            return "outside", t
    return "unknown", None


class ImagePushTimes:
    """Every push-time source there is for an image digest (see the module docstring).

    ``hub``: an ``integrations.dockerhub.DockerHub`` (for ``docker.io`` images); ``registry``:
    ``registry host -> integrations.registry.RegistryClient``; ``state``: a ``WatchState``.
    A source that fails (unreachable, not found, malformed) answers nothing: the others decide,
    and with none the gate fails closed. Callable as pin's ``(tag reference, digest)`` lookup
    and, through :meth:`for_update`, as the gate's ``pushed_at``.
    """

    def __init__(self, *, hub: Any = None, registry: Callable[[str], Any] | None = None, state: Any = None) -> None:
        self.hub = hub
        self.registry = registry
        self.state = state
        self.errors: list[str] = []  # what each failed source said (for the report; no secrets in these)

    def __call__(self, ref: ImageReference, digest: str) -> list[PushTime]:
        digest = digest.lower()
        out: list[PushTime] = []
        for source in (self._hub, self._seen, self._created):
            try:
                t = source(ref, digest)
            except (DigestguardError, ValueError, KeyError, TypeError) as e:
                self.errors.append(f"{ref.name}@{digest[:19]}: {e}")
                continue
            if t is not None:
                out.append(t)
        return out

    def for_update(self, u: Update) -> list[PushTime]:
        ref = try_parse_reference(u.reference)
        if ref is None:
            return []
        return self(ImageReference(ref.registry, ref.repository, ref.tag, None), u.new)

    def _hub(self, ref: ImageReference, digest: str) -> PushTime | None:
        if self.hub is None or ref.registry != DOCKER_HUB:
            return None
        tags = []
        if ref.tag:
            try:
                tags.append(self.hub.get_tag(ref.repository, ref.tag))
            except NotFound:
                pass
        if not any(_hub_time(t, digest) for t in tags):
            tags = self.hub.list_tags(ref.repository)
        for t in tags:
            when = _hub_time(t, digest)
            if when is not None:
                return PushTime(when, f"Docker Hub ({t.name})")
        return None

    def _seen(self, ref: ImageReference, digest: str) -> PushTime | None:
        if self.state is None:
            return None
        when = self.state.digest_first_seen(digest)
        return PushTime(when, "first seen by the watch", upper_bound=True) if when is not None else None

    def _created(self, ref: ImageReference, digest: str) -> PushTime | None:
        if self.registry is None:
            return None
        client = self.registry(ref.registry)
        m = client.get_manifest(ref.repository, digest)
        if m.is_index:
            children = index_children(m)
            child = next((c for c in children if (c.platform or "").startswith("linux/amd64")), None) or \
                next((c for c in children if c.platform and not c.platform.startswith("unknown")), None)
            if child is None:
                return None
            m = client.get_manifest(ref.repository, child.digest)
        cfg = (m.json().get("config") or {}).get("digest")
        if not isinstance(cfg, str):
            return None
        created = parse_time(json.loads(client.get_blob(ref.repository, cfg, max_bytes=4 * 1024 * 1024)).get("created"))
        return PushTime(created, "image config created (set by the builder)") if created is not None else None


def _hub_time(tag: Any, digest: str) -> datetime | None:
    """When Docker Hub says ``digest`` was pushed under ``tag``: a platform image's ``last_pushed``, else
    ``tag_last_pushed`` when the tag itself names the digest."""
    for im in tag.images:
        if (im.digest or "").lower() == digest and im.last_pushed is not None:
            return im.last_pushed
    if (tag.digest or "").lower() == digest:
        return tag.tag_last_pushed
    return None


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
    times = push_times(pushed_at(u)) if pushed_at is not None else []
    for adv, windows in related:
        verdict, t = judge_push(times, windows)
        if verdict == "inside" and t is not None:
            w = next((w for w in windows if w.contains(t.at)), windows[0])
            how = "first seen" if t.upper_bound else "pushed"
            return (f"{change}, {how} {t.at:%Y-%m-%d %H:%M}Z ({t.source}) inside {adv.id}'s window ({_span(w)})",
                    adv.id)
        if verdict == "unknown":
            known = "; ".join(f"first seen {t.at:%Y-%m-%d %H:%M}Z ({t.source})" for t in times)
            return (f"{change}; {adv.id} covers {u.name} and when this was pushed is unknown"
                    f"{' (' + known + ', which does not rule the window out)' if known else ''}: check it, "
                    "then allow-list it with a reason"), adv.id
    return None


def github_pushed_at(client) -> PushedAt:  # noqa: ANN001 - an integrations.github.GitHubClient
    """Push-time lookup for action commits through the GitHub API (committer date); images answer None."""
    def lookup(u: Update) -> datetime | None:
        if u.kind != "action":
            return None
        owner, _, repo = u.name.partition("/")
        return client.commit_time(owner, repo, u.new)
    return lookup
