"""The lint gate over real files: what is an offender, what is not, and the suggested pinned form."""

from __future__ import annotations

from pathlib import Path

import pytest

from digestguard.advisory import load_advisory, parse_advisory
from digestguard.errors import InputError
from tasks.lint import lint_files, lint_tree

KICS = load_advisory("kics-2026-04")
TRIVY = load_advisory("trivy-2026-03")
GOOD = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
MAL = "sha256:2588a44890263a8185bd5d9fadb6bc9220b60245dbcbc4da35e1b62a6f8c230d"
MAL_CHILD = "sha256:d186161ae8e33cd7702dd2a6c0337deb14e2b178542d232129c0da64b1af06e4"
CORPUS = Path(__file__).resolve().parent.parent / "corpus" / "pin"


def _write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def _by_line(offenders, path):
    return {o.line: o for o in offenders if o.path == path}


def test_dockerfile_stage_names_and_pinned_are_not_offenders(tmp_path: Path):
    _write(tmp_path, "Dockerfile",
           "# syntax=docker/dockerfile:1.7\n"
           f"FROM golang:1.22@{OTHER} AS build\n"
           "FROM --platform=$BUILDPLATFORM checkmarx/kics:v2.1.20 AS scan\n"
           "FROM alpine:3.20\n"
           "COPY --from=build /out /out\n"
           "COPY --from=0 /x /x\n"
           "COPY --from=scan /app /app\n"
           f"COPY --from=checkmarx/kics@{MAL} /bin/kics /kics\n"
           "FROM ${BASE}\n")
    off = _by_line(lint_tree(tmp_path, [KICS]), "Dockerfile")
    # the syntax directive is the BuildKit frontend image (it runs at build time): judged like any image;
    # FROM ${BASE} with BASE set nowhere is a finding of its own, never silence
    assert sorted(off) == [1, 3, 4, 8, 9]
    assert off[1].reference == "docker/dockerfile:1.7" and off[1].kind == "unpinned"
    assert off[9].kind == "unresolved" and off[9].reference == "${BASE}"
    assert off[3].kind == "unpinned" and "overwritten in kics-2026-04" in off[3].reason
    assert off[4].reference == "alpine:3.20" and off[4].reason == "tag without a digest"
    assert off[8].kind == "malicious" and off[8].advisory == "kics-2026-04"


def test_every_ci_format_is_linted(tmp_path: Path):
    files = {
        ".github/workflows/ci.yml": "jobs:\n  a:\n    container: node:20\n    steps:\n      - uses: docker://alpine:3.20\n"
                                    "      - run: docker run --rm busybox echo hi\n",
        ".gitlab-ci.yml": "image: python:3.12\nservices:\n  - postgres:16\n",
        "bitbucket-pipelines.yml": "image: atlassian/default-image:4\n",
        ".circleci/config.yml": "jobs:\n  a:\n    docker:\n      - image: cimg/base:2024.01\n",
        "azure-pipelines.yml": ("resources:\n  containers:\n    - container: py\n      image: python:3.12\n"
                                "jobs:\n  - job: a\n    container: py\n"),
        ".drone.yml": "steps:\n  - name: a\n    image: golang:1.22\n",
        "Jenkinsfile": "pipeline { agent { docker { image 'maven:3.9' } } }\n",
        "compose.yaml": f"services:\n  a:\n    image: redis:7@{OTHER}\n  b:\n    image: nginx\n",
        "k8s/deploy.yaml": "spec:\n  containers:\n    - image: nginx:1.27\n",
        "Makefile": "run:\n\tdocker run --rm hello-world\n",
    }
    for rel, text in files.items():
        _write(tmp_path, rel, text)
    got = {(o.path, o.reference) for o in lint_tree(tmp_path, [KICS])}
    assert got == {
        (".github/workflows/ci.yml", "node:20"), (".github/workflows/ci.yml", "alpine:3.20"),
        (".github/workflows/ci.yml", "busybox"), (".gitlab-ci.yml", "python:3.12"), (".gitlab-ci.yml", "postgres:16"),
        ("bitbucket-pipelines.yml", "atlassian/default-image:4"), (".circleci/config.yml", "cimg/base:2024.01"),
        ("azure-pipelines.yml", "python:3.12"), (".drone.yml", "golang:1.22"), ("Jenkinsfile", "maven:3.9"),
        ("compose.yaml", "nginx"), ("k8s/deploy.yaml", "nginx:1.27"), ("Makefile", "hello-world"),
    }


def test_malicious_child_digest_helm_and_actions(tmp_path: Path):
    _write(tmp_path, "k8s/pod.yaml", f"spec:\n  containers:\n    - image: checkmarx/kics@{MAL_CHILD}\n")
    _write(tmp_path, "charts/a/values.yaml",
           f"image:\n  repository: checkmarx/kics\n  tag: alpine\n  digest: {MAL}\n"
           "other:\n  repository: redis\n  tag: \"7\"\n")
    _write(tmp_path, ".github/workflows/t.yml",
           "jobs:\n  a:\n    steps:\n      - uses: aquasecurity/trivy-action@0.34.2\n"
           "      - uses: aquasecurity/trivy-action@57a97c7e7821a5776cebc9bb87c984fa69cba8f1 # 0.35.0\n"
           "      - uses: aquasecurity/setup-trivy@8afa9b9f9183b4e00c46e2b82d34047e3c177bd0\n"
           "      - uses: actions/checkout@v4\n")
    off = lint_tree(tmp_path, [KICS, TRIVY])
    pod = _by_line(off, "k8s/pod.yaml")[3]
    assert pod.kind == "malicious"
    helm = _by_line(off, "charts/a/values.yaml")
    assert helm[2].kind == "malicious" and helm[6].kind == "unpinned" and helm[6].reference == "redis:7"
    wf = _by_line(off, ".github/workflows/t.yml")
    assert sorted(wf) == [4, 6]
    assert wf[4].kind == "mutable-action"
    assert wf[4].suggestion == "aquasecurity/trivy-action@57a97c7e7821a5776cebc9bb87c984fa69cba8f1 # 0.35.0"
    assert wf[6].kind == "malicious-action" and wf[6].suggestion is None


def test_suggestion_uses_known_good(tmp_path: Path):
    data = KICS.model_dump(mode="json")
    data["images"][0]["known_good"] = [{"tag": "latest", "digest": GOOD, "source": "test"}]
    adv = parse_advisory(data, "test")
    _write(tmp_path, "docker-compose.yml", "services:\n  a:\n    image: checkmarx/kics\n  b:\n"
           "    image: checkmarx/kics@sha256:a0d9366f6f0166dcbf92fcdc98e1a03d2e6210e8d7e8573f74d50849130651a0\n")
    off = _by_line(lint_tree(tmp_path, [adv]), "docker-compose.yml")
    assert off[3].suggestion == f"checkmarx/kics:latest@{GOOD}"
    assert off[5].suggestion == f"checkmarx/kics@{GOOD}"


def test_single_file_exclude_and_dump(tmp_path: Path):
    _write(tmp_path, "a/Dockerfile", "FROM alpine\n")
    _write(tmp_path, "fixtures/Dockerfile", "FROM alpine\n")
    assert [o.path for o in lint_tree(tmp_path, [], exclude=["fixtures/*"])] == ["a/Dockerfile"]
    single = lint_tree(tmp_path / "a" / "Dockerfile", [])
    assert len(single) == 1 and single[0].model_dump(mode="json")["reason"] == "no tag (means latest) and no digest"
    assert len(lint_files([tmp_path / "a" / "Dockerfile", tmp_path / "README.md"], [])) == 1
    with pytest.raises(InputError):
        lint_tree(tmp_path / "missing", [])


def test_corpus_expected_trees_leave_only_known_offenders():
    """After pinning, the corpus's rewritten kics references are clean; what remains names no malicious digest."""
    for case in ("gha-workflow", "gitlab", "k8s", "compose", "jenkins"):
        off = lint_tree(CORPUS / case / "expected", [KICS])
        assert not [o for o in off if "checkmarx/kics" in o.reference and o.kind != "mutable-action"], case
        assert not [o for o in off if o.kind == "malicious"], case


def test_a_compose_file_linted_alone_reads_its_env(tmp_path: Path):
    """The pre-commit hook lints single files: a Compose file still resolves ``${VAR}`` from its ``.env``."""
    _write(tmp_path, "docker-compose.yml", "services:\n  a:\n    image: ${APP}\n  b:\n    image: ${NOPE}\n")
    _write(tmp_path, ".env", "APP=nginx:1.27\n")
    off = {o.line: o for o in lint_files([tmp_path / "docker-compose.yml"])}
    assert off[3].kind == "unpinned" and "resolves to nginx:1.27" in off[3].reason
    assert off[5].kind == "unresolved"
