"""The forms corpus (``tests/corpus/pin/forms``) and the lint/pin agreement on the whole pin corpus.

``forms/input`` holds one file per form the scanner must handle (issue 17: every Dockerfile
instruction that names an image, BOM, continuations, heredocs, escape directive; Compose with
``.env``; Kubernetes; Helm; GitHub Actions jobs/services/docker:// steps/``action.yml``; GitLab;
CircleCI; Bitbucket; Azure; Tekton steps and bundles; Drone; Woodpecker; Cloud Build; Jenkinsfile;
Makefile; shell; devcontainer.json; Quadlet; a GitLab ``include:``d file; a Compose ``.env``).
``forms/references.yaml`` lists every reference with
its classification; the scan must find exactly those. The byte-exact rewrite and the idempotent
second run are ``test_pin_corpus.py``'s (``forms`` is one of its cases).
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml

from digestguard.advisory import load_advisory
from tasks.lint import lint_tree
from tasks.pin import plan_pins
from tasks.scan.references import CLASSIFICATIONS, scan_text, scan_tree

CORPUS = Path(__file__).resolve().parent.parent / "corpus" / "pin"
FORMS = CORPUS / "forms"
DEFAULTS = yaml.safe_load((CORPUS / "defaults.yaml").read_text())
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "case.yaml").is_file())


def _rows(root: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for fs in scan_tree(root).files:
        rows = []
        for f in fs.found:
            row = f"{f.line}:{f.col_start} {f.classification} {f.text}"
            if f.classification == "indirect":
                row += f" -> {f.resolved.familiar() if f.resolved else '?'}" + (" (via definition)" if f.via else "")
            rows.append(row)
        rows += [f"{h.line}:{h.repository.col} helm {h.text}" for h in fs.helm]
        rows += [f"{a.line}:{a.col_start} action {a.text}" for a in fs.actions]
        out[fs.path] = rows
    return out


def test_every_expected_reference_found_and_no_other():
    want = yaml.safe_load((FORMS / "references.yaml").read_text())
    got = _rows(FORMS / "input")
    assert sorted(got) == sorted(want), "file sets differ"
    for path in want:
        assert sorted(got[path]) == sorted(want[path]), path


def test_every_classification_and_every_recognised_form_is_covered():
    want = yaml.safe_load((FORMS / "references.yaml").read_text())
    classes = {row.split()[1] for rows in want.values() for row in rows}
    assert set(CLASSIFICATIONS) - {"uncertain"} <= classes
    kinds = {fs.kind for fs in scan_tree(FORMS / "input").files}
    assert kinds >= {"dockerfile", "compose", "helm-values", "github-workflow", "github-action", "gitlab-ci", "circleci",
                     "bitbucket", "azure", "tekton", "drone", "woodpecker", "cloudbuild", "jenkinsfile", "makefile",
                     "shell", "devcontainer", "quadlet", "dotenv", "yaml"}


def test_gitlab_includes_are_read_as_gitlab_ci():
    files = {fs.path: fs.kind for fs in scan_tree(FORMS / "input").files}
    assert files["ci/kics-template.yml"] == "gitlab-ci"  # named by include: local:, not by its path


def test_dotenv_reads_only_image_named_variables(tmp_path):
    """A .env holds secrets too: only image-named variables are read as references."""
    fs = scan_text(".env", "KICS_IMAGE=checkmarx/kics:alpine\nTOKEN=abc/def:ghi\nPASSWORD=x\n", "dotenv")
    assert [f.text for f in fs.found] == ["checkmarx/kics:alpine"]


def test_uncertain_is_a_value_that_merely_parses():
    fs = scan_text(".gitlab-ci.yml", "variables:\n  SCANNER: checkmarx/kics:latest\njob:\n  script: [echo]\n", "gitlab-ci")
    assert [(f.classification, f.text) for f in fs.found] == [("uncertain", "checkmarx/kics:latest")]


@pytest.mark.parametrize("text,expect", [
    # false finds of the issue
    ("jobs:\n  a:\n    machine:\n      image: ubuntu-2204:2024.01.1\n", ("circleci", "not-an-image")),
    ("services:\n  app:\n    build: .\n    image: checkmarx/kics:latest\n", ("compose", "built-here")),
    ("pipelines:\n  default:\n    - step:\n        script:\n          - pipe: atlassian/aws-s3-deploy:1.1.0\n",
     ("bitbucket", "not-an-image")),
])
def test_false_finds_are_classified_not_pinned(text, expect, tmp_path):
    kind, cls = expect
    fs = scan_text("x.yml", text, kind)
    assert [f.classification for f in fs.found] == [cls]
    assert not any(f.pinnable for f in fs.found)


def test_multi_arg_from_is_never_rewritten_in_part():
    """``ARG IMAGE=checkmarx/kics`` + ``ARG TAG`` + ``FROM ${IMAGE}:${TAG}``: the ARG is a part, not a reference."""
    text = "ARG IMAGE=checkmarx/kics\nARG TAG=latest\nFROM ${IMAGE}:${TAG}\n"
    fs = scan_text("Dockerfile", text, "dockerfile")
    assert [(f.line, f.classification) for f in fs.found] == [(3, "indirect")]
    assert fs.found[0].resolved is not None and str(fs.found[0].resolved) == "docker.io/checkmarx/kics:latest"
    assert fs.found[0].via is None


def _lint_and_pin(case: str, tmp_path: Path):
    cfg = yaml.safe_load((CORPUS / case / "case.yaml").read_text())
    adv = load_advisory(cfg.get("advisory", "kics-2026-04"))
    work = tmp_path / "checkout"
    shutil.copytree(CORPUS / case / "input", work, symlinks=True)
    answers = {str(k): v for k, v in cfg.get("resolve", DEFAULTS["resolve"]).items()}
    plan = plan_pins(work, adv, to=cfg.get("to", DEFAULTS["to"]), digest_only=cfg.get("digest_only", False),
                     resolve=None if cfg.get("no_resolver") else (lambda r: answers[r.tag]))
    return adv, lint_tree(work, [adv]), plan


@pytest.mark.parametrize("case", CASES)
def test_lint_and_pin_agree(case: str, tmp_path: Path):
    """What lint flags about an advisory's images and actions is exactly what pin rewrites or asks a person about."""
    adv, offenders, plan = _lint_and_pin(case, tmp_path)
    names = {n for img in adv.images for n in img.names} | {a.repository.lower() for a in adv.actions}
    linted = Counter((o.path, o.reference) for o in offenders if o.target in names)
    # a Helm pair whose attacker tag is replaced is one reference edited in two places (tag, digest): count it once
    pinned = Counter((c.path, c.before) for c in plan.changes if c.kind != "helm-tag") + \
        Counter((d.path, d.reference) for d in plan.needs_decision)
    assert linted == pinned
    assert case != "forms" or sum(linted.values()) >= 30  # the comparison is not vacuous


def test_lint_flags_what_pin_rewrites_in_variables_makefiles_and_scripts(tmp_path: Path):
    """The issue's misses: GitLab ``variables:``, Makefile ``?=``, shell scripts, ``ARG TAG=latest`` + ``FROM image:${TAG}``."""
    adv, offenders, _ = _lint_and_pin("forms", tmp_path)
    flagged = {(o.path, o.line) for o in offenders}
    assert {(".gitlab-ci.yml", 6), ("Makefile", 1), ("scripts/scan.sh", 3), ("Dockerfile", 15)} <= flagged
    by_tag = next(o for o in offenders if (o.path, o.line) == ("Dockerfile", 15))
    assert by_tag.kind == "unpinned" and "resolves to checkmarx/kics:latest" in by_tag.reason
    unresolved = {(o.path, o.line) for o in offenders if o.kind == "unresolved"}
    assert unresolved == {(".gitlab-ci.yml", 13), ("compose/docker-compose.yml", 12)}
