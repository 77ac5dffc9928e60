"""Pin stage behaviour beyond the corpus: file safety, plan binding, --to rules, a real registry as resolver."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from digestguard.advisory import load_advisory, parse_advisory
from digestguard.errors import InputError, PlanNotApproved
from digestguard.plan import Approval
from tasks.pin import apply_pins, parse_to, plan_pins
from tasks.scan.ci_files import classify, definition_kind
from tasks.scan.references import MAX_FILE_BYTES, scan_text, scan_tree

KICS = load_advisory("kics-2026-04")
GOOD = "sha256:" + "ab" * 32
MAL_LATEST = "sha256:a0d9366f6f0166dcbf92fcdc98e1a03d2e6210e8d7e8573f74d50849130651a0"


def _write(root: Path, rel: str, data: str | bytes) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


def test_git_dir_symlinks_and_oversized_files_are_skipped(tmp_path: Path):
    outside = tmp_path / "outside"
    _write(outside, "Dockerfile", "FROM checkmarx/kics:latest\n")
    repo = tmp_path / "repo"
    _write(repo, ".git/config", "image: checkmarx/kics:latest\n")
    _write(repo, ".git/hooks/Dockerfile", "FROM checkmarx/kics:latest\n")
    _write(repo, "Dockerfile", "FROM checkmarx/kics:latest\n")
    os.symlink(outside / "Dockerfile", repo / "Dockerfile.outside")
    os.symlink(repo / "Dockerfile", repo / "Dockerfile.inside")
    os.symlink(outside, repo / "linked-dir")
    _write(repo, "big/values.yaml", "image: checkmarx/kics:latest\n" + "#" * (MAX_FILE_BYTES + 10))
    _write(repo, "big/blob.dat", b"x" * MAX_FILE_BYTES + b"checkmarx/kics:latest")

    plan = plan_pins(repo, KICS, to=GOOD)
    assert [c.path for c in plan.changes] == ["Dockerfile"]
    reasons = {s.path: s.reason for s in plan.skipped}
    assert "outside the repository" in reasons["Dockerfile.outside"]
    assert "inside the repository" in reasons["Dockerfile.inside"]
    assert "larger than 2 MB" in reasons["big/values.yaml"]
    assert "larger than 2 MB" in reasons["big/blob.dat"]
    assert not any(p.startswith((".git", "linked-dir")) for p in reasons)

    apply_pins(plan)
    assert (outside / "Dockerfile").read_text() == "FROM checkmarx/kics:latest\n"  # never followed
    assert os.path.islink(repo / "Dockerfile.outside")
    assert (repo / "Dockerfile").read_text() == f"FROM checkmarx/kics:latest@{GOOD}\n"


def test_apply_refuses_a_file_changed_since_planning(tmp_path: Path):
    f = _write(tmp_path, "docker-compose.yml", "services:\n  a:\n    image: checkmarx/kics:latest\n")
    g = _write(tmp_path, "Dockerfile", "FROM checkmarx/kics:alpine\n")
    plan = plan_pins(tmp_path, KICS, to=GOOD)
    assert len(plan.changes) == 2
    f.write_text("services:\n  a:\n    image: checkmarx/kics:latest  # edited\n")
    with pytest.raises(InputError, match="changed since the pin plan"):
        apply_pins(plan)
    assert g.read_text() == "FROM checkmarx/kics:alpine\n"  # nothing written when one file is stale


def test_apply_keeps_file_mode_and_checks_the_approval(tmp_path: Path):
    s = _write(tmp_path, "scan.sh", "#!/bin/sh\ndocker run --rm checkmarx/kics scan -p .\n")
    s.chmod(0o755)
    plan = plan_pins(tmp_path, KICS, to=GOOD)
    stale = Approval(decision="approve", approvers=["oncall"], plan_hash="sha256:" + "0" * 64)
    with pytest.raises(PlanNotApproved):
        apply_pins(plan, stale)
    rejected = Approval(decision="reject", approvers=["oncall"], plan_hash=plan.plan_hash())
    with pytest.raises(PlanNotApproved):
        apply_pins(plan, rejected)
    ok = Approval(decision="approve", approvers=["oncall"], plan_hash=plan.plan_hash())
    assert apply_pins(plan, ok) == ["scan.sh"]
    assert s.stat().st_mode & 0o777 == 0o755
    assert s.read_text() == f"#!/bin/sh\ndocker run --rm checkmarx/kics:latest@{GOOD} scan -p .\n"


def test_plan_hash_is_stable_and_binds_content(tmp_path: Path):
    _write(tmp_path, ".drone.yml", "steps:\n  - image: checkmarx/kics:v2.1.20\n")
    a = plan_pins(tmp_path, KICS, to=GOOD)
    b = plan_pins(tmp_path, KICS, to=GOOD)
    c = plan_pins(tmp_path, KICS, to="sha256:" + "cd" * 32)
    assert a.plan_hash() == b.plan_hash() == a.hash()
    assert a.plan_hash() != c.plan_hash()
    md = a.markdown()
    assert "checkmarx/kics:v2.1.20" in md and a.plan_hash() in md
    dumped = a.model_dump(mode="json")
    assert dumped["changes"][0]["after"] == f"checkmarx/kics:v2.1.20@{GOOD}"


def test_to_parsing_refuses_malicious_and_malformed_digests():
    assert parse_to(GOOD, KICS) == (GOOD, {})
    assert parse_to(["latest=" + GOOD], KICS) == (None, {"latest": GOOD})
    with pytest.raises(InputError, match="malicious"):
        parse_to(MAL_LATEST, KICS)
    with pytest.raises(InputError, match="--to"):
        parse_to("sha256:1234", KICS)
    with pytest.raises(InputError, match="two digests"):
        parse_to(["latest=" + GOOD, "latest=sha256:" + "cd" * 32], KICS)


def test_affected_tag_without_known_good_is_never_pinned(tmp_path: Path):
    """No --to, no known-good in the pack: list it; the resolver is never asked about an affected tag."""
    _write(tmp_path, "Dockerfile", "FROM checkmarx/kics:latest\nFROM checkmarx/kics:v2.1.19\n")
    asked = []
    plan = plan_pins(tmp_path, KICS, resolve=lambda r: asked.append(r.tag) or GOOD)
    assert asked == ["v2.1.19"]
    assert [d.reference for d in plan.needs_decision] == ["checkmarx/kics:latest"]
    assert [c.after for c in plan.changes] == [f"checkmarx/kics:v2.1.19@{GOOD}"]


def test_known_good_from_the_advisory_is_used(tmp_path: Path):
    data = KICS.model_dump(mode="json")
    data["images"][0]["known_good"] = [{"tag": "latest", "digest": GOOD, "source": "test"}]
    adv = parse_advisory(data, "test")
    _write(tmp_path, "k8s.yaml", "spec:\n  containers:\n    - image: checkmarx/kics\n")
    plan = plan_pins(tmp_path, adv)
    assert [c.after for c in plan.changes] == [f"checkmarx/kics:latest@{GOOD}"]


def test_kics_github_action_without_safe_commit_needs_decision(tmp_path: Path):
    _write(tmp_path, ".github/workflows/a.yml",
           "jobs:\n  a:\n    steps:\n      - uses: Checkmarx/kics-github-action@v2.1.0\n"
           "      - uses: checkmarx/kics-github-action@3d49875ed47c6b8b4c8b50e0421418cf6b9f35f4\n")
    plan = plan_pins(tmp_path, KICS, to=GOOD)
    assert plan.changes == []
    assert [(d.line, "no safe commit" in d.reason) for d in plan.needs_decision] == [(4, True), (5, True)]


def test_scanner_spans_are_exact():
    text = "FROM --platform=$BUILDPLATFORM checkmarx/kics:v2.1.20 AS scan\r\nCOPY --from=scan /a /b\r\n"
    fs = scan_text("Dockerfile", text, "dockerfile")
    assert [(f.line, f.col_start, f.col_end, f.text) for f in fs.found] == [(1, 31, 53, "checkmarx/kics:v2.1.20")]
    assert all(text[f.start:f.end] == f.text for f in fs.found)


def test_classification():
    assert classify(".github/workflows/x.yaml") == "github-workflow"
    assert classify("sub/.gitlab-ci.yml") == "gitlab-ci"
    assert classify("bitbucket-pipelines.yml") == "bitbucket"
    assert classify(".circleci/config.yml") == "circleci"
    assert classify("azure-pipelines.yml") == "azure"
    assert classify(".drone.yml") == "drone"
    assert classify("Jenkinsfile") == "jenkinsfile"
    assert classify("x/Containerfile") == "dockerfile"
    assert classify("a/b.dockerfile") == "dockerfile"
    assert classify("docker-compose.prod.yml") == "compose"
    assert classify("charts/x/values-prod.yaml") == "helm-values"
    assert classify("Makefile") == "makefile"
    assert classify("bin/run.sh") == "shell"
    assert classify("main.go") is None
    assert classify(".woodpecker.yml") == classify(".woodpecker/build.yaml") == "woodpecker"
    assert classify("cloudbuild.yaml") == classify("deploy/cloudbuild-prod.yml") == "cloudbuild"
    assert classify(".devcontainer/devcontainer.json") == classify(".devcontainer.json") == "devcontainer"
    assert classify("deploy/app.container") == "quadlet"
    assert classify("package.json") is None


@pytest.mark.parametrize(("path", "kind", "definition"), [
    # the reference scan and the secret listing used to disagree on each of these
    (".github/workflows/CI.YML", "github-workflow", "github"),  # the extension in any case
    ("sub/.github/workflows/ci.yml", "github-workflow", "github"),  # a workflows folder below the root
    ("./.github/workflows/ci.yml", "github-workflow", "github"),  # a leading ./ is dropped
    (".github\\workflows\\ci.yaml", "github-workflow", "github"),  # Windows separators
    ("action.yml", "github-action", "github"),  # an action at the repository root
    ("tools/lint/action.yaml", "github-action", "github"),  # ... or in any folder
    (".github/actions/build/action.yml", "github-action", "github"),
    (".gitlab-ci.yaml", "gitlab-ci", "gitlab"),
    ("ci/.gitlab-ci/build.yml", "gitlab-ci", "gitlab"),  # include: files
    ("jenkinsfile", "jenkinsfile", "jenkins"),  # any case
    ("JENKINSFILE", "jenkinsfile", "jenkins"),
    ("ci/deploy.jenkins", "jenkinsfile", "jenkins"),
    # where they agreed
    (".github/workflows/notes.md", None, None),  # under workflows/ but not YAML: not a workflow
    (".github/workflows/helper.sh", "shell", None),
    ("sub/.gitlab-ci.yml", "gitlab-ci", "gitlab"),  # .gitlab-ci.yml anywhere
    ("deploy.gitlab-ci.yml", "gitlab-ci", "gitlab"),
    (".gitlab/ci/test.yml", "gitlab-ci", "gitlab"),
    ("Jenkinsfile.release", "jenkinsfile", "jenkins"),
    ("docker-compose.yml", "compose", None),
    ("Dockerfile", "dockerfile", None),
])
def test_one_classifier_for_formats_and_ci_definitions(path: str, kind: str | None, definition: str | None):
    assert classify(path) == kind
    assert definition_kind(path) == definition


def test_scan_tree_rejects_a_missing_directory(tmp_path: Path):
    with pytest.raises(InputError, match="not a directory"):
        scan_tree(tmp_path / "nope")


def test_unaffected_tags_resolved_through_a_real_registry(tmp_path: Path, registry):
    """Uses the real local registry (tests.support.registry) and integrations.registry.RegistryClient as resolver."""
    from integrations.registry import RegistryClient
    from tests.support.registry import push_index

    good = push_index(registry.base_url, "checkmarx/kics", "v2.1.19")
    bad = push_index(registry.base_url, "checkmarx/kics", "v2.1.18")
    data = KICS.model_dump(mode="json")
    data["images"][0]["repository"] = f"{registry.host}/checkmarx/kics"
    data["images"][0]["malicious"].append({"digest": bad.digest, "source": "test"})
    adv = parse_advisory(data, "test")
    _write(tmp_path, ".gitlab-ci.yml",
           f"a:\n  image: {registry.host}/checkmarx/kics:v2.1.19\n"
           f"b:\n  image: {registry.host}/checkmarx/kics:v2.1.18\n"
           f"c:\n  image: {registry.host}/checkmarx/kics:latest\n")
    with RegistryClient(registry.host) as client:
        plan = plan_pins(tmp_path, adv, to=["latest=" + GOOD], resolve=lambda r: client.resolve(r.repository, r.tag))
    assert [(c.line, c.digest) for c in plan.changes] == [(2, good.digest), (6, GOOD)]
    assert [(d.line, "malicious" in d.reason) for d in plan.needs_decision] == [(4, True)]
