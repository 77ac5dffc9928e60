"""The pin corpus: every case's input tree, planned and applied, must equal its expected tree byte for byte.

Layout: ``tests/corpus/pin/<case>/input/...`` (a small checkout), ``expected/...``
(the same files after ``apply_pins``), ``case.yaml`` (advisory, ``to``, ``digest_only``,
``resolve`` answers, and the exact ``needs_decision`` / ``skipped`` entries). Cases
without ``to``/``resolve`` use ``defaults.yaml``. The resolver is a table standing in
for the registry client (the real client is exercised in tests/unit/test_pin.py).

To add a case: write ``input/`` and ``case.yaml``, run with ``DIGESTGUARD_WRITE_EXPECTED=1``
once, then READ the diff between input and expected before committing it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from digestguard.advisory import load_advisory
from digestguard.reference import ImageReference
from tasks.pin import apply_pins, plan_pins

CORPUS = Path(__file__).resolve().parent.parent / "corpus" / "pin"
DEFAULTS = yaml.safe_load((CORPUS / "defaults.yaml").read_text())
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "case.yaml").is_file())


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def _run(case: str, tmp_path: Path):
    cfg = yaml.safe_load((CORPUS / case / "case.yaml").read_text())
    adv = load_advisory(cfg.get("advisory", "kics-2026-04"))
    work = tmp_path / "checkout"
    shutil.copytree(CORPUS / case / "input", work, symlinks=True)
    answers = {str(k): v for k, v in cfg.get("resolve", DEFAULTS["resolve"]).items()}
    calls: list[ImageReference] = []

    def resolve(ref: ImageReference) -> str:
        calls.append(ref)
        return answers[ref.tag]

    plan = plan_pins(work, adv, to=cfg.get("to", DEFAULTS["to"]), digest_only=cfg.get("digest_only", False),
                     resolve=None if cfg.get("no_resolver") else resolve)
    return cfg, adv, work, plan, calls


def test_corpus_is_big_enough():
    inputs = [p for p in CORPUS.glob("*/input/**/*") if p.is_file()]
    assert len(inputs) >= 40, len(inputs)


@pytest.mark.parametrize("case", CASES)
def test_pin_case(case: str, tmp_path: Path):
    cfg, adv, work, plan, calls = _run(case, tmp_path)
    answers = {str(k): v for k, v in cfg.get("resolve", DEFAULTS["resolve"]).items()}
    changed = apply_pins(plan)
    got = _files(work)
    expected_dir = CORPUS / case / "expected"
    if os.environ.get("DIGESTGUARD_WRITE_EXPECTED"):
        shutil.rmtree(expected_dir, ignore_errors=True)
        shutil.copytree(work, expected_dir, symlinks=True)
    want = _files(expected_dir)
    assert sorted(got) == sorted(want), "file sets differ"
    for rel in want:
        assert got[rel] == want[rel], f"{case}/{rel} differs from expected"
    # Every changed path really changed, every unchanged one is byte-identical to the input.
    original = _files(CORPUS / case / "input")
    assert sorted(changed) == sorted(r for r in original if original[r] != got[r])
    # Exactly the decisions and skips the case names.
    assert sorted(f"{d.path}:{d.line}" for d in plan.needs_decision) == sorted(cfg.get("needs_decision", []))
    assert sorted(s.path for s in plan.skipped) == sorted(cfg.get("skipped", []))
    # No rewrite ever names a malicious digest, and each after-text keeps the file's spelling of the name.
    for c in plan.changes:
        assert not adv.is_malicious(c.digest)
        assert c.after.split("@")[0].split(":")[0] == c.before.split("@")[0].split(":")[0]
    # Re-planning the rewritten tree finds nothing left to do (idempotent).
    again = plan_pins(work, adv, to=cfg.get("to", DEFAULTS["to"]), digest_only=cfg.get("digest_only", False),
                      resolve=None if cfg.get("no_resolver") else (lambda r: answers[r.tag]))
    assert again.changes == []


def test_unaffected_tags_are_resolved_affected_never(tmp_path: Path):
    """The resolver is asked only about tags the attacker did not write."""
    _, adv, _, plan, calls = _run("single-to", tmp_path)
    affected = set(adv.images[0].affected_tags)
    assert calls and all(c.tag not in affected for c in calls)
    assert {c.tag for c in calls} == {"v2.1.19", "v2.1.18"}
    bad = [d for d in plan.needs_decision if "malicious" in d.reason]
    assert len(bad) == 1 and bad[0].reference == "checkmarx/kics:v2.1.18"
