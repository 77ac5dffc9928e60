"""Pin stage: rewrite references to an advisory's images (and force-pushed actions) to known-good digests.

Planning is pure: :func:`plan_pins` scans a checkout and returns a :class:`PinPlan`
(what would change, what was skipped and why, what needs a person's decision).
:func:`apply_pins` then changes exactly the planned character spans, byte for
byte, and refuses a file that changed since the plan was made.

Rules that keep this safe (see the issue "pin"):

- A tag the attacker wrote is never pinned to what it points at *now*: the digest comes
  from ``--to`` (the on-call's choice) or the advisory's known-good list, or the
  reference is listed under ``needs_decision``.
- Unaffected tags of an affected repository are pinned to what they resolve to, through
  the caller's ``resolve`` (the registry client), after checking the answer is not malicious.
- Only the reference's bytes change; the name keeps the spelling the file used.

Example::

    plan = plan_pins("/src/app", load_advisory("kics-2026-04"), to=["latest=sha256:..."])
    print(plan.markdown())
    apply_pins(plan)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime
from pathlib import Path
from typing import Literal

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from digestguard._model import Model
from digestguard.advisory import ActionRefs, Advisory, AffectedImage, SafeCommit
from digestguard.errors import DigestguardError, InputError, PlanNotApproved
from digestguard.findings import ActionOutcome, StageResult
from digestguard.inventory import Inventory
from digestguard.journal import Journal
from digestguard.markdown import md_cell, md_code, md_table
from digestguard.reference import ImageReference, parse_digest, try_parse_reference
from tasks.connect import Connections
from tasks.pull_requests import open_pin_pull_request
from tasks.quarantine import PushTime, judge_push, push_times
from tasks.report.artifacts import Progress
from tasks.scan.references import ActionUse, Found, HelmImage, ScanResult, name_hint, scan_tree

Resolver = Callable[[ImageReference], str]
ImagePushedAt = Callable[[ImageReference, str], "datetime | PushTime | Sequence[PushTime] | None"]
#   (tag reference, digest) -> push time(s): ``tasks.quarantine.ImagePushTimes`` gathers them
_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_VERSION_COMMENT = re.compile(r"[ \t]+#[ \t]*(?:tag[=:][ \t]*)?(?P<v>[\w][\w.+-]*)[ \t]*")
_WHOLE_VAR = re.compile(r"\$(?:\{\w+\}|\(\w+\)|\w+)")


class PinChange(Model):
    """One planned edit: the file's ``old`` text at ``[start, end)`` becomes ``new``.

    ``before``/``after`` are the reference as a reader sees it; ``old``/``new`` the exact edit
    (they differ for actions, whose edit also appends ``# <tag>``).
    """

    path: str
    line: int
    col: int
    before: str
    after: str
    kind: Literal["image", "helm-digest", "helm-tag", "action"]
    context: str
    target: str = Field(description="canonical repository (image) or owner/repo (action)")
    tag: str | None = None
    digest: str = Field(description="the new index digest, or the action's commit SHA")
    reason: str
    start: int
    end: int
    old: str
    new: str
    file_sha256: str
    tag_changed_from: str | None = Field(None, description="the attacker-written tag replaced by the known-good "
                                                           "release's tag (``0.69.6`` -> ``0.69.3``)")
    mirror: str | None = Field(None, description="the public Docker Hub mirror the reference pulls through")


class PinSkip(Model):
    """A file or reference the stage did not touch, and why."""

    path: str
    line: int | None = None
    reason: str


class PinDecision(Model):
    """A reference that needs a person: no safe digest known, a variable, a Helm chart without ``digest:``."""

    path: str
    line: int | None = None
    reference: str
    reason: str
    suggestion: str | None = None
    mirror: str | None = None


class PinPlan(Model):
    """What :func:`apply_pins` will do. ``plan_hash()`` binds an approval to exactly this content."""

    stage: Literal["pin"] = "pin"
    advisory: str
    root: str
    form: Literal["tag+digest", "digest"] = "tag+digest"
    changes: list[PinChange] = Field(default_factory=list)
    skipped: list[PinSkip] = Field(default_factory=list)
    needs_decision: list[PinDecision] = Field(default_factory=list)
    unchanged: list[PinSkip] = Field(default_factory=list, description="references already safe, left alone")

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def plan_hash(self) -> str:
        """``sha256:<hex>`` of the canonical JSON (the same shape as ``digestguard.plan.Plan.hash``)."""
        return "sha256:" + hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def hash(self) -> str:  # noqa: A003 - the name the issue uses
        return self.plan_hash()

    @property
    def changed_paths(self) -> list[str]:
        return sorted({c.path for c in self.changes})

    def markdown(self, limit: int = 100) -> str:
        """The review text (approval form, pull-request body)."""
        out = [f"### Pin plan for `{md_code(self.advisory)}`", "",
               f"{len(self.changes)} change(s) in {len(self.changed_paths)} file(s), "
               f"{len(self.needs_decision)} need a decision, {len(self.skipped)} skipped. "
               f"Plan hash `{self.plan_hash()}`.", ""]
        rows = [{"file": c.path, "line": c.line, "before": c.before, "after": c.after, "why": c.reason}
                for c in self.changes]
        out += (md_table(rows, limit, more="more change(s)", code=("file", "before", "after"))
                or ["_No reference to rewrite._"])
        quarantined = [d for d in self.needs_decision if d.reason.startswith("quarantined:")]
        if quarantined:
            out += ["", "**Quarantined digests (never proposed)**",
                    "These tags resolve to a digest that an advisory lists as malicious or that was pushed inside its "
                    "window: the update a repointed tag produces. Choose a reviewed digest with `--to`."]
            out += [f"- `{md_code(d.path)}`{_at(d.line)}: `{md_code(d.reference)}`: {md_cell(d.reason)}."
                    for d in quarantined[:limit]]
        if self.needs_decision:
            out += ["", "**Needs a decision**"]
            for d in self.needs_decision[:limit]:
                sug = f" Suggested: `{md_code(d.suggestion)}`." if d.suggestion else ""
                out.append(f"- `{md_code(d.path)}`{_at(d.line)}: `{md_code(d.reference)}`: {md_cell(d.reason)}.{sug}")
        if self.skipped:
            out += ["", "**Skipped**"]
            out += [f"- `{md_code(s.path)}`{_at(s.line)}: {md_cell(s.reason)}" for s in self.skipped[:limit]]
        if self.unchanged:
            out += ["", f"{len(self.unchanged)} reference(s) already pinned safely were left alone."]
        return "\n".join(out)


def _at(line: int | None) -> str:
    return f":{line}" if line else ""


# --------------------------------------------------------------------------------------------
# --to


def parse_to(
    to: str | Sequence[str] | Mapping[str, str] | None, advisory: Advisory | None = None,
) -> tuple[str | None, dict[str, str]]:
    """``--to`` values -> (one digest for every affected reference, {tag: digest}).

    Accepts ``"sha256:..."``, ``["latest=sha256:...", "v2.1.20=sha256:..."]`` or a mapping.
    A malicious digest is refused: the on-call's choice must not re-pin the attack.
    """
    single: str | None = None
    pairs: dict[str, str] = {}
    if to is None:
        return None, {}
    items: list[tuple[str | None, str]]
    if isinstance(to, str):
        items = [_split_to(to)]
    elif isinstance(to, Mapping):
        items = [(k, v) for k, v in to.items()]
    else:
        items = [_split_to(v) for v in to]
    for tag, dig in items:
        d = parse_digest(dig, "--to")
        if advisory is not None and advisory.is_malicious(d):
            raise InputError("--to", f"{d} is listed as malicious by {advisory.id}")
        if tag is None:
            if single is not None and single != d:
                raise InputError("--to", "give one bare digest, or TAG=digest pairs")
            single = d
        else:
            if tag in pairs and pairs[tag] != d:
                raise InputError("--to", f"tag {tag!r} given two digests")
            pairs[tag] = d
    return single, pairs


def _split_to(value: str) -> tuple[str | None, str]:
    value = value.strip()
    if "=" in value:
        tag, _, dig = value.partition("=")
        if not tag:
            raise InputError("--to", f"{value!r}: empty tag before '='")
        return tag, dig
    return None, value


# --------------------------------------------------------------------------------------------
# Planning


class _Planner:
    def __init__(self, advisory: Advisory, single: str | None, pairs: dict[str, str],
                 digest_only: bool, resolve: Resolver | None, pushed_at: ImagePushedAt | None = None) -> None:
        self.adv = advisory
        self.single = single
        self.pairs = pairs
        self.digest_only = digest_only
        self.resolve = resolve
        self.pushed_at = pushed_at
        self.resolved: dict[tuple[str, str], tuple[str | None, str]] = {}
        self.retags: dict[tuple[str, str], str] = {}  # (image, attacker tag) -> the known-good release's tag

    def new_tag(self, img: AffectedImage, tag: str | None) -> str | None:
        """The tag that replaces ``tag`` when the chosen digest is another release's (None: the tag stays)."""
        return self.retags.get((img.repository, tag)) if tag else None

    def target(self, img: AffectedImage, ref: ImageReference, tag: str) -> tuple[str | None, str]:
        """(digest or None, why) for ``tag`` of ``img``; a known-good of another release records its tag in
        ``retags`` (the rewrite changes the tag too)."""
        if tag in self.pairs:
            return self.pairs[tag], f"--to for tag {tag}"
        affected = tag in img.affected_tags
        if affected:
            if self.single:
                return self.single, f"tag {tag} was written by the attacker ({self.adv.id}); --to digest"
            kg = img.known_good_for(tag)
            if kg and kg.digest and not self.adv.is_malicious(kg.digest):
                if kg.tag and kg.tag != tag:
                    self.retags[(img.repository, tag)] = kg.tag
                    how = "created" if tag in img.tags_created and tag not in img.tags_overwritten else "overwritten"
                    return kg.digest, (f"tag {tag} was {how} by the attacker ({self.adv.id}) and has no clean image; "
                                       f"pinned to {kg.tag}, the last clean release, whose digest the advisory "
                                       f"records (source: {kg.source})")
                return kg.digest, f"tag {tag} was written by the attacker ({self.adv.id}); known-good from the advisory"
            return None, (f"tag {tag} was written by the attacker ({self.adv.id}) and no known-good digest is known; "
                          f"choose one with --to {tag}=sha256:...")
        kg = img.known_good_for(tag)
        if kg and kg.digest and kg.tag == tag and not self.adv.is_malicious(kg.digest):
            return kg.digest, f"tag {tag} is not affected; known-good digest from the advisory (source: {kg.source})"
        key = (ref.name, tag)
        if key in self.resolved:
            return self.resolved[key]
        if self.resolve is None:
            out: tuple[str | None, str] = (
                None, f"tag {tag} is not affected; needs resolving to its current digest (no resolver given)")
        else:
            try:
                dig = parse_digest(self.resolve(ImageReference(ref.registry, ref.repository, tag, None)), "resolver")
            except DigestguardError as e:
                out = (None, f"tag {tag} is not affected but could not be resolved: {e}")
            else:
                if self.adv.is_malicious(dig):
                    out = (None, f"quarantined: tag {tag} currently resolves to {dig}, which {self.adv.id} lists as "
                                 "malicious; never proposed")
                else:
                    out = self._quarantine(ref, tag, dig) or (dig, f"tag {tag} is not affected; pinned to what it "
                                                                   "resolves to now")
        self.resolved[key] = out
        return out

    def _quarantine(self, ref: ImageReference, tag: str, dig: str) -> tuple[None, str] | None:
        """Refuse a resolved digest pushed inside the advisory's window (the attacker's "digest update")."""
        if self.pushed_at is None:
            return None
        times = push_times(self.pushed_at(ImageReference(ref.registry, ref.repository, tag, None), dig))
        img = self.adv.image_for(ref)
        verdict, t = judge_push(times, [self.adv.window, *(img.windows if img else [])])
        if verdict == "unknown":
            return None, (f"quarantined: tag {tag} resolves to {dig}, and when it was pushed is unknown while "
                          f"{self.adv.id} covers this image; never proposed: choose with --to {tag}=sha256:...")
        if verdict == "inside" and t is not None:
            return None, (f"quarantined: tag {tag} resolves to {dig}, {'first seen' if t.upper_bound else 'pushed'} "
                          f"{t.at:%Y-%m-%d %H:%M}Z ({t.source}) inside {self.adv.id}'s window; never proposed: "
                          f"choose with --to {tag}=sha256:...")
        return None


def _file_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _split_written(text: str) -> tuple[str, str | None]:
    """(name as written, tag as written) from a reference's text."""
    name = text.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1:]
    return name, None


def _plan_indirect(plan: PinPlan, f: Found, advisory: Advisory) -> None:
    """A reference built from variables is never rewritten here (no single span holds all of it).

    When one definition in the file holds it whole (``ARG BASE=...`` + ``FROM $BASE``) that
    definition is its own reference and is planned as such; otherwise a person decides.
    """
    if f.via is not None:
        return
    target = f.resolved or name_hint(f.text)
    img = advisory.image_for(target) if target is not None else None
    if img is None:
        return
    if f.resolved is not None and f.resolved.digest and not advisory.is_malicious(f.resolved.digest):
        plan.unchanged.append(PinSkip(path=f.path, line=f.line,
                                      reason=f"{f.text}: resolves to a digest the advisory does not list as malicious"))
        return
    if f.resolved is not None and _WHOLE_VAR.fullmatch(f.text):
        reason = (f"held by a variable set outside this file (resolves to {f.resolved.familiar()}, e.g. from the "
                  "Compose .env); pin it where the variable is set")
    elif f.resolved is not None and f.context.endswith("(continued-lines)"):
        reason = (f"written across lines with \\ continuations (reads {f.resolved.familiar()}); rewriting it in place "
                  "would change its layout: pin it by hand")
    elif f.resolved is not None:
        reason = (f"built from variables (resolves to {f.resolved.familiar()}); no one place holds the whole "
                  "reference and rewriting a part would break the rest: pin it where the variables are set")
    else:
        reason = "the reference is built from a variable; pin it where the variable is set"
    plan.needs_decision.append(PinDecision(path=f.path, line=f.line, reference=f.text, reason=reason))


def _plan_image(p: _Planner, plan: PinPlan, f: Found, img: AffectedImage, fhash: str) -> None:
    ref = f.ref
    assert ref is not None
    name_written, tag_written = _split_written(f.text)
    if ref.digest:
        if not p.adv.is_malicious(ref.digest):
            chosen = p.target(img, ref, ref.tag)[0] if ref.tag else None
            why = "already pinned to the chosen known-good digest" if chosen == ref.digest \
                else "pinned to a digest the advisory does not list as malicious"
            plan.unchanged.append(PinSkip(path=f.path, line=f.line, reason=f"{f.text}: {why}"))
            return
        _, md = p.adv.malicious_index()[ref.digest]
        parent = p.adv.malicious_index().get(md.parent) if md.parent else None
        tags = [ref.tag] if ref.tag else (md.tags or (parent[1].tags if parent else []))
        targets = {t: p.target(img, ref, t) for t in tags}
        digests = {d for d, _ in targets.values() if d}
        if len(digests) != 1 or any(d is None for d, _ in targets.values()):
            reasons = "; ".join(w for d, w in targets.values() if d is None) or \
                f"the malicious digest was served for tags {', '.join(tags) or '(unknown)'} with different known-good digests"
            plan.needs_decision.append(PinDecision(path=f.path, line=f.line, reference=f.text,
                                                   reason=f"pinned to malicious digest {ref.digest}; {reasons}"))
            return
        new_digest = digests.pop()
        tag = ref.tag
        reason = f"pinned to malicious digest {ref.digest[:19]}...; " + next(iter(targets.values()))[1]
    else:
        tag = ref.tag or "latest"
        new_digest, reason = p.target(img, ref, tag)
        if new_digest is None:
            plan.needs_decision.append(PinDecision(path=f.path, line=f.line, reference=f.text, reason=reason))
            return
    feature = f.context == "devcontainer:feature"
    retag = p.new_tag(img, tag)
    new_tag = None if p.digest_only or feature else (retag or (tag_written if tag_written else (None if ref.digest else tag)))
    if feature and tag_written:  # the devcontainer CLI refuses name:tag@digest for a feature (devcontainers/cli#825)
        reason += f"; written as name@digest (a Dev Container feature cannot carry tag {tag_written} with a digest)"
    after = name_written + (f":{new_tag}" if new_tag else "") + "@" + new_digest
    check = try_parse_reference(after)
    if check is None or img.matches(check) is False:  # pragma: no cover - a bug guard, never expected
        plan.skipped.append(PinSkip(path=f.path, line=f.line, reason=f"internal: rewrite of {f.text!r} did not parse"))
        return
    hit = p.adv.match(ref)
    plan.changes.append(PinChange(
        path=f.path, line=f.line, col=f.col_start, before=f.text, after=after, kind="image", context=f.context,
        target=img.repository, tag=retag or tag, digest=new_digest, reason=reason, start=f.start, end=f.end,
        old=f.text, new=after, file_sha256=fhash, tag_changed_from=tag if retag else None,
        mirror=hit.mirror if hit else None))


def _plan_helm(p: _Planner, plan: PinPlan, h: HelmImage, img: AffectedImage, text: str, fhash: str) -> None:
    tag = h.tag.text if h.tag else ""
    current = h.digest.text if h.digest else ""
    ref = h.ref
    assert ref is not None
    if not tag:
        plan.needs_decision.append(PinDecision(path=h.path, line=h.line, reference=h.text,
                                               reason="empty tag (the chart's appVersion decides); pin by hand"))
        return
    if current and not p.adv.is_malicious(current):
        plan.unchanged.append(PinSkip(path=h.path, line=h.line, reason=f"{h.text}: digest is not listed as malicious"))
        return
    hit = p.adv.match(ref)
    mirror = hit.mirror if hit else None
    new_digest, reason = p.target(img, ref, tag)
    if new_digest is None:
        plan.needs_decision.append(PinDecision(path=h.path, line=h.line, reference=h.text, reason=reason, mirror=mirror))
        return
    retag = p.new_tag(img, tag)
    if h.digest is None:
        plan.needs_decision.append(PinDecision(
            path=h.path, line=h.line, reference=h.text, mirror=mirror,
            reason="Helm values with repository/tag but no digest key; add one only if the chart supports it"
                   + (f"; {reason}" if retag else ""),
            suggestion=(f"tag: {retag} and digest: {new_digest}" if retag else f"digest: {new_digest}")))
        return
    if retag and h.tag is not None:
        t = h.tag
        plan.changes.append(PinChange(
            path=h.path, line=t.line, col=t.col, before=h.text, after=f"{_split_written(h.text)[0]}:{retag}@{new_digest}",
            kind="helm-tag", context="helm:tag", target=img.repository, tag=retag, digest=new_digest, reason=reason,
            start=t.start, end=t.end, old=t.text, new=retag, file_sha256=fhash, tag_changed_from=tag, mirror=mirror))
    d = h.digest
    new = new_digest
    if not d.quote and d.start == d.end and (d.start == 0 or text[d.start - 1] not in " \t"):
        new = " " + new_digest
    if not d.quote and d.start == d.end and text[d.end:d.end + 1] == "#":
        new += " "
    if current:
        reason = f"digest {current[:19]}... is malicious; " + reason
    plan.changes.append(PinChange(
        path=h.path, line=d.line, col=d.col, before=h.text,
        after=f"{_split_written(h.text)[0]}:{retag or tag}@{new_digest}",
        kind="helm-digest", context="helm:digest", target=img.repository, tag=retag or tag, digest=new_digest,
        reason=reason, start=d.start, end=d.end, old=d.text, new=new, file_sha256=fhash,
        tag_changed_from=tag if retag else None, mirror=mirror))


def _choose_safe(ar: ActionRefs, ref: str) -> tuple[SafeCommit | None, str]:
    bad = set(ar.malicious_commits)
    safe = [s for s in ar.safe if s.commit not in bad]
    for s in safe:
        if s.ref == ref:
            return s, f"{ar.repository}@{ref} was force-pushed; pinned to its safe commit"
    if len(safe) == 1:
        return safe[0], f"{ar.repository}@{ref} was force-pushed; pinned to the only safe release {safe[0].ref}"
    if not safe:
        return None, f"{ar.repository}@{ref} was force-pushed and no safe commit is known; pin by hand to a reviewed commit"
    known = ", ".join(s.ref for s in safe)
    return None, f"{ar.repository}@{ref} was force-pushed; several safe commits known ({known}): choose one"


def _plan_action(plan: PinPlan, a: ActionUse, ar: ActionRefs, text: str, fhash: str) -> None:
    ref = a.ref
    if _SHA1.match(ref.lower()):
        if ref.lower() not in ar.malicious_commits:
            plan.unchanged.append(PinSkip(path=a.path, line=a.line,
                                          reason=f"{a.text}: pinned to a commit not listed as malicious"))
            return
        tag_hint = ref
    else:
        affected = not ar.tags or "*" in ar.tags or ref in ar.tags
        if not affected:
            plan.unchanged.append(PinSkip(path=a.path, line=a.line, reason=f"{a.text}: ref {ref} was not force-pushed"))
            return
        tag_hint = ref
    safe, reason = _choose_safe(ar, tag_hint)
    if safe is None:
        plan.needs_decision.append(PinDecision(path=a.path, line=a.line, reference=a.text, reason=reason))
        return
    end = a.value_end
    nl = text.find("\n", end)
    rest = text[end:nl if nl != -1 else len(text)].rstrip("\r")
    vm = _VERSION_COMMENT.fullmatch(rest)
    if vm and (vm.group("v") == ref or re.fullmatch(r"[vV]?\d[\w.+-]*", vm.group("v"))):
        end += len(rest)  # an old version comment (``# v2``) goes: it named the ref being replaced; notes stay
    old = text[a.ref_start:end]
    quote = text[a.ref_start:a.value_end][len(ref):]
    new = f"{safe.commit}{quote} # {safe.ref}"
    plan.changes.append(PinChange(
        path=a.path, line=a.line, col=a.col_start, before=a.text,
        after=a.text[: len(a.text) - len(ref)] + f"{safe.commit} # {safe.ref}", kind="action", context="uses",
        target=ar.repository, tag=safe.ref, digest=safe.commit, reason=reason,
        start=a.ref_start, end=end, old=old, new=new, file_sha256=fhash))


def needles_for(advisory: Advisory) -> list[str]:
    """Byte substrings every reference to the advisory's images or actions contains (the prefilter)."""
    out: list[str] = []
    for img in advisory.images:
        for name in img.names:
            reg, _, repo = name.partition("/")
            out.append(repo[len("library/"):] if repo.startswith("library/") else repo)
    out += [a.repository for a in advisory.actions]
    return list(dict.fromkeys(out))


def plan_pins(
    checkout: str | os.PathLike[str],
    advisory: Advisory,
    to: str | Sequence[str] | Mapping[str, str] | None = None,
    digest_only: bool = False,
    resolve: Resolver | None = None,
    scan: ScanResult | None = None,
    pushed_at: ImagePushedAt | None = None,
) -> PinPlan:
    """Plan the rewrite of every reference to ``advisory``'s images and actions under ``checkout``.

    ``to``: one ``sha256:...`` for every affected reference, or ``TAG=sha256:...`` pairs.
    ``resolve``: the registry client's tag -> index digest, used for unaffected tags only.
    ``pushed_at``: when a resolved digest was pushed; one inside the advisory's window (or of
    unknown time) is quarantined: never proposed, listed with the reason in the PR body.
    """
    single, pairs = parse_to(to, advisory)
    result = scan or scan_tree(checkout, needles_for(advisory))
    plan = PinPlan(advisory=advisory.id, root=result.root, form="digest" if digest_only else "tag+digest")
    planner = _Planner(advisory, single, pairs, digest_only, resolve, pushed_at)
    actions = {a.repository.lower(): a for a in advisory.actions}
    for s in result.skipped:
        plan.skipped.append(PinSkip(path=s.path, line=s.line, reason=s.reason))
    for m in result.mentions:
        plan.skipped.append(PinSkip(path=m, reason="names an affected image but is not a recognised file format; review by hand"))
    for fs in result.files:
        fhash = _file_hash(fs.text)
        for f in fs.found:
            if f.classification == "indirect":
                _plan_indirect(plan, f, advisory)
                continue
            if not f.pinnable:  # built-here, not-an-image
                continue
            img = advisory.image_for(f.ref)
            if img is not None:
                _plan_image(planner, plan, f, img, fhash)
        for h in fs.helm:
            img = advisory.image_for(h.ref) if h.ref else None
            if img is not None:
                _plan_helm(planner, plan, h, img, fs.text, fhash)
        for a in fs.actions:
            ar = actions.get(a.repository)
            if ar is not None:
                _plan_action(plan, a, ar, fs.text, fhash)
    plan.changes.sort(key=lambda c: (c.path, c.start))
    plan.needs_decision.sort(key=lambda d: (d.path, d.line or 0))
    return plan


# --------------------------------------------------------------------------------------------
# Applying


def render_pins(plan: PinPlan) -> dict[str, bytes]:
    """The planned files' new bytes ({relative path: content}), without writing anything.

    Refuses (``InputError``) when a file changed since the plan was made or a span no
    longer holds the planned text. The pull-request path commits these bytes on a branch
    rebuilt from the remote base, so the on-call's working tree is never half-edited.
    """
    root = Path(plan.root)
    by_path: dict[str, list[PinChange]] = {}
    for c in plan.changes:
        by_path.setdefault(c.path, []).append(c)
    new_bytes: dict[str, bytes] = {}
    for rel, changes in by_path.items():
        path = root / rel
        if path.is_symlink():
            raise InputError(rel, "is a symlink now; plan again")
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(rel, f"cannot read for rewriting: {e}") from None
        if _file_hash(text) != changes[0].file_sha256:
            raise InputError(rel, "changed since the pin plan was made; plan again")
        last = len(text) + 1
        for c in sorted(changes, key=lambda c: c.start, reverse=True):
            if c.end > last or text[c.start:c.end] != c.old:
                raise InputError(rel, f"line {c.line}: expected {c.old!r} at the planned position; plan again")
            text = text[:c.start] + c.new + text[c.end:]
            last = c.start
        new_bytes[rel] = text.encode("utf-8")
    return new_bytes


def apply_pins(plan: PinPlan, approval: object | None = None) -> list[str]:
    """Write the planned edits; return the changed paths (relative to ``plan.root``).

    Refuses (``InputError``, before writing anything) when a file changed since the plan
    was made or a span no longer holds the planned text. When ``approval`` (a
    ``digestguard.plan.Approval``) is given it must approve this plan's hash.
    Files are replaced atomically with their mode kept.
    """
    if approval is not None:
        if getattr(approval, "decision", None) != "approve":
            raise PlanNotApproved(f"pin plan {plan.plan_hash()[7:19]} was not approved")
        if getattr(approval, "plan_hash", None) != plan.plan_hash():
            raise PlanNotApproved("pin plan changed since it was approved; approve it again")
    new_bytes = render_pins(plan)
    root = Path(plan.root)
    for rel, data in new_bytes.items():
        _atomic_write(root / rel, data)
    return sorted(new_bytes)


def _atomic_write(path: Path, data: bytes) -> None:
    mode = path.stat().st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".pin")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- the stage's Prefect task


def _tag_resolver(inventory: Inventory, connections: Connections) -> Callable[[ImageReference], str] | None:
    """Tag -> digest for unaffected tags, through the inventory's first registry that mirrors images (or none)."""
    regs = [r for r in inventory.registries if r.kind in ("distribution", "dockerhub")]
    if not regs:
        return None
    client = connections.registry(regs[0].name)
    return lambda ref: client.resolve(ref.repository, ref.effective_tag)


PIN_WORKERS = 8
"""Repositories pinned at once: each is a git checkout, commit and push plus a few forge calls (I/O bound)."""


def _pin_repository(repo, advisory: Advisory, inventory: Inventory, incident: str, journal: Journal, connections: Connections,
                    resolve, *, dry_run: bool, to: list[str] | None, open_pull_requests: bool) -> tuple[list[ActionOutcome], dict | None]:
    """Plan (and in execute mode push and open the pull request for) one repository: its outcomes and its PR."""
    actions: list[ActionOutcome] = []
    try:
        plan = plan_pins(inventory.resolve_path(repo.path), advisory, to=to or None, resolve=resolve)
    except InputError as e:
        return [ActionOutcome(stage="pin", target=repo.name, action="plan", outcome="failed", error=str(e))], None
    for c in plan.changes:
        actions.append(ActionOutcome(stage="pin", target=f"{repo.name}:{c.path}:{c.line}", action="pin",
                                     outcome="planned" if dry_run else "done",
                                     detail={"before": c.before, "after": c.after}))
    for d in plan.needs_decision:
        actions.append(ActionOutcome(stage="pin", target=f"{repo.name}:{d.path}:{d.line or '-'}", action="decide",
                                     outcome="needs-person", detail={"reference": d.reference, "reason": d.reason}))
    if dry_run or not plan.changes or not open_pull_requests:
        return actions, None
    out = open_pin_pull_request(repo, plan, advisory, incident, inventory, journal, rendered=render_pins(plan),
                                connections=connections)
    actions.append(out)
    if out.outcome != "done":
        return actions, None
    return actions, {"repository": repo.name, "url": out.detail.get("url") or out.detail.get("branch"),
                     "number": out.detail.get("number"), "changes": len(plan.changes),
                     "title": f"Pin {advisory.id} references", "state": "open"}


@task(name="pin", cache_policy=NO_CACHE, persist_result=False)
def pin_task(advisory: Advisory, inventory: Inventory, incident: str, journal: Journal, connections: Connections, *,
             dry_run: bool, to: list[str] | None = None, open_pull_requests: bool = True,
             workers: int = PIN_WORKERS) -> tuple[StageResult, list[dict]]:
    """The pin stage: plan pins in every inventory repository; in execute mode push a branch and open (or update) a
    pull request per repository.

    Repositories run in a pool of at most ``workers`` threads sharing the run's clients (one per forge, see
    ``Connections.forge``); results keep inventory order whatever order they finish in. Progress per repository
    shows in the Prefect UI as a progress artifact. Returns the stage result and the pull requests opened."""
    result = StageResult(stage="pin", dry_run=dry_run)
    resolve = _tag_resolver(inventory, connections)
    repos = list(inventory.repositories)
    progress = Progress(incident, "pin", len(repos))
    outcomes: list[tuple[list[ActionOutcome], dict | None] | None] = [None] * len(repos)
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(repos) or 1)), thread_name_prefix="pin") as pool:
        futures = {pool.submit(_pin_repository, repo, advisory, inventory, incident, journal, connections, resolve,
                               dry_run=dry_run, to=to, open_pull_requests=open_pull_requests): i
                   for i, repo in enumerate(repos)}
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                outcomes[i] = fut.result()
            except DigestguardError as e:  # one repository's fault never hides another's
                outcomes[i] = ([ActionOutcome(stage="pin", target=repos[i].name, action="pull-request",
                                              outcome="failed", error=str(e))], None)
            progress.advance(failed=any(a.outcome == "failed" for a in outcomes[i][0]))
    progress.finish()
    prs: list[dict] = []
    for acts, pr in (o for o in outcomes if o is not None):
        result.actions.extend(acts)
        if pr is not None:
            prs.append(pr)
    throttled = [a.target for a in result.actions if a.detail.get("throttled")]
    if throttled:
        result.notes.append(f"throttled by the forge's rate limit, not opened (re-run to finish): {', '.join(throttled)}")
    return result, prs
