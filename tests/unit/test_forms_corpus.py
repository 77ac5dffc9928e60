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
                     "shell", "devcontainer", "quadlet", "dotenv", "yaml", "terraform"}


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


@pytest.mark.parametrize("text,want", [
    # a global ARG is visible to FROM; an ARG inside a stage is not (BuildKit scoping)
    ("ARG IMG=checkmarx/kics:v1\nFROM $IMG\n", "docker.io/checkmarx/kics:v1"),
    ("FROM alpine AS a\nARG IMG=checkmarx/kics:v1\nFROM $IMG\n", None),
    # a stage sees a global ARG only once it re-declares it
    ("ARG IMG=checkmarx/kics:v1\nFROM alpine\nCOPY --from=$IMG / /\n", None),
    ("ARG IMG=checkmarx/kics:v1\nFROM alpine\nARG IMG\nCOPY --from=$IMG / /\n", "docker.io/checkmarx/kics:v1"),
    ("FROM alpine\nARG IMG=checkmarx/kics:v1\nRUN --mount=from=$IMG,target=/k true\n", "docker.io/checkmarx/kics:v1"),
    # several definitions on one ARG line, quoted values
    ("ARG A=alpine:3 B=\"checkmarx/kics:v2\"\nFROM ${B}\n", "docker.io/checkmarx/kics:v2"),
    # ${X:+alt} is the alternative only when X is set; ${X:?msg} has no default
    ("ARG M\nFROM ${M:+${M}/}checkmarx/kics:v3\n", "docker.io/checkmarx/kics:v3"),
    ("ARG M=reg.example\nFROM ${M:+${M}/}checkmarx/kics:v3\n", "reg.example/checkmarx/kics:v3"),
    ("FROM ${IMG:?set IMG}\n", None),
])
def test_dockerfile_arg_scoping(text, want):
    fs = scan_text("Dockerfile", text, "dockerfile")
    ind = [f for f in fs.found if f.classification == "indirect"]
    assert len(ind) == 1
    assert (str(ind[0].resolved) if ind[0].resolved else None) == want


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
    # ``COPY --from=${HELPER_IMAGE}`` before the stage re-declares the global ARG, and ``FROM ${STAGE_ONLY}``
    # (an ARG of another stage; FROM sees only global ARGs): empty at build time, so findings, never silence
    assert unresolved == {(".gitlab-ci.yml", 13), ("compose/docker-compose.yml", 12),
                          ("build/Dockerfile.stages", 8), ("build/Dockerfile.stages", 12), ("infra/main.tf", 28)}


def test_compose_env_files_beyond_dotenv(tmp_path: Path):
    """``env_file:`` files are scanned like a ``.env``; ``docker compose --env-file X -f F`` makes X F's
    interpolation environment; a path leaving the repository or a symlinked env file is never read."""
    (tmp_path / "outside.env").write_text("ESCAPE_IMAGE=checkmarx/kics:latest\n")
    root = tmp_path / "repo"
    (root / "deploy").mkdir(parents=True)
    (root / "deploy/compose.yaml").write_text(
        "services:\n  a:\n    image: ${A_IMAGE}\n    env_file: [a.env, ../../outside.env]\n  b:\n    image: ${B_IMAGE}\n"
        "    env_file:\n      - linked.env\n")
    (root / "deploy/a.env").write_text("SIDE_IMAGE=checkmarx/kics:alpine\nSECRET=abc/def:ghi\n")
    (root / "deploy/prod.env").write_text("A_IMAGE=checkmarx/kics:v2.1.20\n")
    (root / "deploy/linked.env").symlink_to(tmp_path / "outside.env")
    (root / "Makefile").write_text("up:\n\tdocker compose --env-file deploy/prod.env -f deploy/compose.yaml up -d\n")
    res = scan_tree(root)
    files = {fs.path: fs for fs in res.files}
    assert [f.text for f in files["deploy/a.env"].found] == ["checkmarx/kics:alpine"]
    assert [f.text for f in files["deploy/prod.env"].found] == ["checkmarx/kics:v2.1.20"]
    assert "outside.env" not in " ".join(files) and "deploy/linked.env" not in files
    compose = {f.line: f for f in files["deploy/compose.yaml"].found}
    assert str(compose[3].resolved) == "docker.io/checkmarx/kics:v2.1.20"
    assert compose[6].resolved is None  # B_IMAGE has no value anywhere: an unresolved finding


@pytest.mark.parametrize("kind,text,line,want,via", [
    # ``: "${X:=default}"`` defines X; its default is the reference pin rewrites
    ("shell", ': "${KICS:=checkmarx/kics:v1}"\ndocker run --rm "$KICS"\n', 2, "docker.io/checkmarx/kics:v1", True),
    # ``IMG=${IMG-default}`` names the environment's IMG, not itself
    ("shell", "IMG=${IMG-checkmarx/kics:v2}\npodman pull \"${IMG}\"\n", 2, "docker.io/checkmarx/kics:v2", True),
    # Make ``$(VAR)`` parts inside a value: resolved, never rewritten in part
    ("makefile", "REG := docker.io\nTAG ::= v3\nSCANNER_IMAGE ?= $(REG)/checkmarx/kics:$(TAG)\nscan:\n\tdocker run $(SCANNER_IMAGE)\n",
     5, "docker.io/checkmarx/kics:v3", False),
    # ``${X:+alt}`` whole: the alternative only when X is set
    ("shell", "USE=1\ndocker run \"${USE:+checkmarx/kics:v4}\"\n", 2, "docker.io/checkmarx/kics:v4", False),
    ("shell", "docker run \"${USE:+checkmarx/kics:v4}\"\n", 1, None, False),
])
def test_shell_and_make_variable_forms(kind, text, line, want, via):
    fs = scan_text("f", text, kind)
    hit = next(f for f in fs.found if f.line == line)
    if want is None:
        assert hit.classification == "indirect" and hit.resolved is None
        return
    target = hit.target or hit.resolved
    assert str(target) == want
    assert (hit.via is not None) == via or hit.classification == "image"


def test_devcontainer_features_are_pinned_as_name_at_digest(tmp_path: Path):
    """A Dev Container feature is an OCI artifact; the devcontainer CLI refuses ``name:tag@digest`` for one
    (devcontainers/cli#825), so pin writes ``name@digest`` and says why; lint flags it like any image."""
    adv = load_advisory("kics-2026-04")
    dc = tmp_path / ".devcontainer" / "devcontainer.json"
    dc.parent.mkdir()
    dc.write_text('{\n  "features": {\n    "docker.io/checkmarx/kics:alpine": {},\n    "ghcr.io/devcontainers/features/node:1": {}\n  }\n}\n')
    good = DEFAULTS["to"][3].split("=", 1)[1]
    plan = plan_pins(tmp_path, adv, to=DEFAULTS["to"])
    assert [(c.before, c.after) for c in plan.changes] == [("docker.io/checkmarx/kics:alpine", f"docker.io/checkmarx/kics@{good}")]
    assert "cannot carry tag alpine with a digest" in plan.changes[0].reason
    assert {(o.line, o.kind) for o in lint_tree(tmp_path, [adv])} >= {(3, "unpinned")}
