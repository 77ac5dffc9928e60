"""Lint gate: image references that are not pinned to a digest, or are pinned to a malicious one.

Why a gate: the incident happened because tags are mutable. A CI run (or the
``digestguard-lint`` pre-commit hook) that fails on ``image: checkmarx/kics:latest``
keeps the next overwritten tag out of the pipeline. The same scanner as the pin
stage finds the references, so what lint flags is what ``digestguard pin`` fixes.

Not offenders: a build-stage name in ``COPY --from=``/``FROM``, a ``# syntax=``
directive, a reference built from a variable (nothing to judge), and a reference
pinned to a digest no advisory lists as malicious.

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
from digestguard.advisory import Advisory
from digestguard.errors import InputError
from digestguard.findings import SourceCoverage
from digestguard.reference import ImageReference
from tasks.scan.ci_files import classify
from tasks.scan.references import FileScan, scan_text, scan_tree

_SHA1 = re.compile(r"^[0-9a-fA-F]{40}$")


class Offender(Model):
    """One reference the gate refuses, with the pinned form when it is known."""

    path: str
    line: int
    reference: str
    reason: str
    kind: Literal["unpinned", "malicious", "mutable-action", "malicious-action"]
    suggestion: str | None = None
    advisory: str | None = None


def _known_good(ref: ImageReference, advisories: Sequence[Advisory]) -> tuple[str | None, str | None]:
    """(known-good digest, advisory id) for the reference's tag, when an advisory knows one."""
    tag = ref.tag or "latest"
    for adv in advisories:
        img = adv.image_for(ref)
        if img is not None:
            kg = img.known_good_for(tag)
            return (kg.digest if kg else None), adv.id
    return None, None


def _pinned(text: str, digest: str) -> str:
    return text.split("@", 1)[0] + "@" + digest


def _lint_file(fs: FileScan, advisories: Sequence[Advisory]) -> list[Offender]:
    out: list[Offender] = []
    for f in fs.found:
        if not f.certain or f.ref is None:
            continue
        ref = f.ref
        if ref.digest:
            for adv in advisories:
                if adv.is_malicious(ref.digest):
                    good, _ = _known_good(ref, [adv])
                    out.append(Offender(
                        path=f.path, line=f.line, reference=f.text, kind="malicious", advisory=adv.id,
                        reason=f"pinned to {ref.digest}, listed as malicious by {adv.id}",
                        suggestion=_pinned(f.text, good) if good else None))
                    break
            continue
        good, adv_id = _known_good(ref, advisories)
        affected = ""
        if adv_id:
            adv = next(a for a in advisories if a.id == adv_id)
            img = adv.image_for(ref)
            if img and (ref.tag or "latest") in img.affected_tags:
                affected = f"; tag {ref.tag or 'latest'} was overwritten in {adv_id}"
        why = "tag without a digest" if ref.tag else "no tag (means latest) and no digest"
        out.append(Offender(
            path=f.path, line=f.line, reference=f.text, kind="unpinned", advisory=adv_id if affected else None,
            reason=why + affected,
            suggestion=(f"{f.text if ref.tag else f.text + ':latest'}@{good}" if good else None)))
    for h in fs.helm:
        if h.ref is None or not (h.tag and h.tag.text):
            continue
        ref = ImageReference(h.ref.registry, h.ref.repository, h.tag.text, None)
        dig = h.digest.text if h.digest else ""
        if dig:
            bad = next((a for a in advisories if a.is_malicious(dig)), None)
            if bad:
                out.append(Offender(path=h.path, line=h.line, reference=h.text, kind="malicious", advisory=bad.id,
                                    reason=f"digest {dig} is listed as malicious by {bad.id}"))
            continue
        good, _ = _known_good(ref, advisories)
        out.append(Offender(
            path=h.path, line=h.line, reference=h.text, kind="unpinned",
            reason="Helm image with a tag and no digest" + ("" if h.digest else " key"),
            suggestion=f"digest: {good}" if good else None))
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
                                        advisory=adv.id, reason=f"commit listed as malicious by {adv.id}", suggestion=sug))
            elif not ar.tags or "*" in ar.tags or a.ref in ar.tags:
                out.append(Offender(path=a.path, line=a.line, reference=a.text, kind="mutable-action", advisory=adv.id,
                                    reason=f"ref {a.ref} was force-pushed ({adv.id}); pin to a commit", suggestion=sug))
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
        files = [scan_text(p.as_posix(), text, kind)]
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
