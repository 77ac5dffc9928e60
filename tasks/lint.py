"""Lint gate: image references that are not pinned to a digest, or are pinned to a malicious one.

Why a gate: the incident happened because tags are mutable. A CI run (or the
``digestguard-lint`` pre-commit hook) that fails on ``image: checkmarx/kics:latest``
keeps the next overwritten tag out of the pipeline. The same scanner as the pin
stage finds the references, so what lint flags is what ``digestguard pin`` fixes.

Offenders are exactly what ``digestguard pin`` would rewrite or ask a person about, by the
scanner's one classification (``image``, ``uncertain`` naming an advisory's image, resolvable
``indirect``); an ``indirect`` reference whose variables have no value is a finding of its own
(``unresolved``). Not offenders: a build-stage name in ``COPY --from=``/``FROM``, the name of an
image the file builds (Compose ``image:`` beside ``build:``), things that are not OCI images
(CircleCI ``machine: image:``, Bitbucket ``pipe:``), and a reference pinned to a digest no
advisory lists as malicious. A ``# syntax=`` directive names the BuildKit frontend image that
runs at build time, so it is judged like any other image.

    >>> lint_tree("/src/app", [load_advisory("kics-2026-04")])  # doctest: +SKIP
    [Offender(path='.github/workflows/ci.yml', line=12, reference='checkmarx/kics:latest', ...)]
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from digestguard._model import Model
from digestguard.advisory import Advisory, KnownGood
from digestguard.errors import InputError
from digestguard.findings import SourceCoverage
from digestguard.reference import ImageReference
from tasks.scan.ci_files import classify
from tasks.scan.references import FileScan, Found, name_hint, read_dotenv, scan_text, scan_tree

_SHA1 = re.compile(r"^[0-9a-fA-F]{40}$")


class Offender(Model):
    """One reference the gate refuses, with the pinned form when it is known."""

    path: str
    line: int
    reference: str
    reason: str
    kind: Literal["unpinned", "malicious", "mutable-action", "malicious-action", "unresolved"]
    suggestion: str | None = None
    advisory: str | None = None
    target: str | None = None  # canonical repository (or owner/repo for actions) the reference pulls
    mirror: str | None = None  # the public Docker Hub mirror it pulls through (mirror.gcr.io): purge cannot reach it


def _known_good(ref: ImageReference, advisories: Sequence[Advisory]) -> tuple[KnownGood | None, str | None]:
    """(known-good entry, advisory id) for the reference's tag, when an advisory knows one (its ``tag`` may
    differ: an attacker-created tag is replaced by the last clean release)."""
    tag = ref.tag or "latest"
    for adv in advisories:
        img = adv.image_for(ref)
        if img is not None:
            return img.known_good_for(tag), adv.id
    return None, None


def _pinned(text: str, good: KnownGood) -> str:
    """``text`` pinned to ``good``: its digest, and its tag when the tag changes (``:0.69.6`` -> ``:0.69.3``)."""
    name = text.split("@", 1)[0]
    slash, colon = name.rfind("/"), name.rfind(":")
    tag = name[colon + 1:] if colon > slash else None
    base = name[:colon] if colon > slash else name
    if good.tag and good.tag != (tag or "latest"):
        tag = good.tag  # another release replaces the attacker's tag
    return f"{base}:{tag}@{good.digest}" if tag else f"{base}@{good.digest}"


def _mirror(ref: ImageReference, advisories: Sequence[Advisory]) -> tuple[str, str | None]:
    """(canonical target, public mirror) of a reference: through a mirror, the target is the image's own name."""
    for adv in advisories:
        hit = adv.match(ref)
        if hit is not None:
            return (hit.image.repository if hit.mirror else ref.name), hit.mirror
    return ref.name, None


def _lint_image(f: Found, ref: ImageReference, advisories: Sequence[Advisory], via: str = "") -> Offender | None:
    """The offence of one reference that pulls ``ref`` (``via``: how variables made it, for indirect ones)."""
    target, mirror = _mirror(ref, advisories)
    through = f"; pulled through the public mirror {mirror}" if mirror else ""
    if ref.digest:
        for adv in advisories:
            if adv.is_malicious(ref.digest):
                good, _ = _known_good(ref, [adv])
                return Offender(
                    path=f.path, line=f.line, reference=f.text, kind="malicious", advisory=adv.id, target=target,
                    reason=f"{via}pinned to {ref.digest}, listed as malicious by {adv.id}{through}", mirror=mirror,
                    suggestion=_pinned(f.text, good) if good and not via else None)
        return None
    good, adv_id = _known_good(ref, advisories)
    affected = ""
    if adv_id:
        adv = next(a for a in advisories if a.id == adv_id)
        img = adv.image_for(ref)
        if img and (ref.tag or "latest") in img.affected_tags:
            affected = f"; tag {ref.tag or 'latest'} was overwritten in {adv_id}"
    why = "tag without a digest" if ref.tag else "no tag (means latest) and no digest"
    return Offender(
        path=f.path, line=f.line, reference=f.text, kind="unpinned", advisory=adv_id if affected else None,
        target=target, reason=via + why + affected + through, mirror=mirror,
        suggestion=(_pinned(f.text if ref.tag else f.text + ":latest", good) if good and not via else None))


def _lint_found(f: Found, advisories: Sequence[Advisory]) -> Offender | None:
    """One scanned reference, judged by its classification (the same rules pin plans by).

    ``image``: always judged. ``uncertain`` (a value that merely parses as a tagged reference):
    judged when it names an advisory's image, which is when pin rewrites it. ``indirect``: when
    one definition holds it whole, that definition is judged instead (pin rewrites it there);
    resolved but assembled from several parts: judged by what it resolves to (pin asks a person);
    unresolvable: a finding of its own. ``built-here`` and ``not-an-image``: never.
    """
    cls = f.classification
    if cls == "image" and f.ref is not None:
        return _lint_image(f, f.ref, advisories)
    if cls == "uncertain" and f.ref is not None:
        return _lint_image(f, f.ref, advisories) if any(a.image_for(f.ref) for a in advisories) else None
    if cls != "indirect" or f.via is not None:
        return None
    if f.resolved is None:
        hint = name_hint(f.text)
        return Offender(path=f.path, line=f.line, reference=f.text, kind="unresolved",
                        target=hint.name if hint else None,
                        reason="built from variables with no value in this file (or its .env): "
                               "cannot tell which image it pulls; pin where the variables are set")
    how = "written across lines, reads" if f.context.endswith("(continued-lines)") else "built from variables, resolves to"
    return _lint_image(f, f.resolved, advisories, via=f"{how} {f.resolved.familiar()}: ")


def _lint_file(fs: FileScan, advisories: Sequence[Advisory]) -> list[Offender]:
    out: list[Offender] = [o for f in fs.found if (o := _lint_found(f, advisories)) is not None]
    for h in fs.helm:
        if h.ref is None or not (h.tag and h.tag.text):
            continue
        ref = ImageReference(h.ref.registry, h.ref.repository, h.tag.text, None)
        target, mirror = _mirror(ref, advisories)
        through = f"; pulled through the public mirror {mirror}" if mirror else ""
        dig = h.digest.text if h.digest else ""
        if dig:
            bad = next((a for a in advisories if a.is_malicious(dig)), None)
            if bad:
                out.append(Offender(path=h.path, line=h.line, reference=h.text, kind="malicious", advisory=bad.id,
                                    target=target, mirror=mirror,
                                    reason=f"digest {dig} is listed as malicious by {bad.id}{through}"))
            continue
        good, adv_id = _known_good(ref, advisories)
        img = next((a.image_for(ref) for a in advisories if a.id == adv_id), None)
        affected = f"; tag {ref.tag} was written by the attacker in {adv_id}" if img and ref.tag in img.affected_tags else ""
        sug = None
        if good:
            sug = f"digest: {good.digest}" if good.tag in (None, ref.tag) else f"tag: {good.tag} and digest: {good.digest}"
        out.append(Offender(
            path=h.path, line=h.line, reference=h.text, kind="unpinned", target=target, mirror=mirror,
            advisory=adv_id if affected else None,
            reason="Helm image with a tag and no digest" + ("" if h.digest else " key") + affected + through,
            suggestion=sug))
    for a in fs.actions:
        for adv in advisories:
            ar = next((x for x in adv.actions if x.repository.lower() == a.repository), None)
            if ar is None:
                continue
            safe = next((s for s in ar.safe if s.commit not in ar.malicious_commits), None)
            sug = f"{a.text.rsplit('@', 1)[0]}@{safe.commit} # {safe.ref}" if safe else None
            if _SHA1.match(a.ref):
                if a.ref.lower() in ar.malicious_commits:
                    out.append(Offender(path=a.path, line=a.line, reference=a.text, kind="malicious-action",
                                        target=ar.repository, advisory=adv.id,
                                        reason=f"commit listed as malicious by {adv.id}", suggestion=sug))
            elif not ar.tags or "*" in ar.tags or a.ref in ar.tags:
                out.append(Offender(path=a.path, line=a.line, reference=a.text, kind="mutable-action", advisory=adv.id,
                                    target=ar.repository, suggestion=sug,
                                    reason=f"ref {a.ref} was force-pushed ({adv.id}); pin to a commit"))
            break
    return out


def lint_tree(path: str | os.PathLike[str], advisories: Sequence[Advisory] = (),
              exclude: Sequence[str] = ()) -> list[Offender]:
    """Offenders under ``path`` (a checkout or a single file), sorted by path and line.

    ``exclude``: glob patterns on repository-relative paths (``tests/corpus/*``) to leave out,
    e.g. fixtures that are deliberately unpinned.
    """
    return lint_tree_coverage(path, advisories, exclude)[0]


def lint_tree_coverage(path: str | os.PathLike[str], advisories: Sequence[Advisory] = (),
                       exclude: Sequence[str] = ()) -> tuple[list[Offender], SourceCoverage]:
    """:func:`lint_tree` plus its coverage: ``partial`` (with the files and reasons) when files that
    could hold references were skipped (not UTF-8, too large, binary, a symlink out of the tree)."""
    p = Path(path)
    skipped: list[str] = []
    if p.is_file():
        kind = classify(p.as_posix())
        if kind is None:
            return [], SourceCoverage(source=str(p), kind="lint", state="checked")
        try:
            text = p.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(str(p), f"cannot read: {e}") from None
        env = read_dotenv(str(p.parent)) if kind == "compose" else None  # as the tree scan does
        files = [scan_text(p.as_posix(), text, kind, env=env)]
    elif p.is_dir():
        res = scan_tree(p)
        files = res.files
        skipped = [f"{s.path}: {s.reason}" for s in res.skipped if "inside the repository" not in s.reason
                   and not any(fnmatch.fnmatch(s.path, pat) for pat in exclude)]
    else:
        raise InputError(str(path), "no such file or directory")
    files = [fs for fs in files if not any(fnmatch.fnmatch(fs.path, pat) for pat in exclude)]
    out = [o for fs in files for o in _lint_file(fs, advisories)]
    out.sort(key=lambda o: (o.path, o.line, o.reference))
    cov = (SourceCoverage(source=str(p), kind="lint", state="partial",
                          reason=f"{len(skipped)} file(s) not checked: " + "; ".join(skipped[:5]))
           if skipped else SourceCoverage(source=str(p), kind="lint", state="checked"))
    return out, cov


def lint_files(paths: Sequence[str | os.PathLike[str]], advisories: Sequence[Advisory] = ()) -> list[Offender]:
    """Offenders in the given files (the pre-commit hook's file list); unrecognised files are ignored."""
    out: list[Offender] = []
    for p in paths:
        if Path(p).is_file():
            out += lint_tree(p, advisories)
    return out
