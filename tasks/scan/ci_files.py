"""The one classifier of repository files: which CI system, Dockerfile, compose file, Helm values...

:func:`classify` gives the *format* of a file from its repository-relative path; the reference
scan (``tasks.scan.references``), the lint gate and the secret listing (``tasks.scan.ci_secrets``,
through :func:`definition_kind`) all use it, so "is this a workflow?" has one answer.

Rules where the two classifiers that came before disagreed (each is pinned by a unit test):

- a file under ``.github/workflows/`` is a workflow only when it ends in ``.yml``/``.yaml``
  (any case); a ``.github/workflows/`` folder below the root counts too (a vendored or
  sub-project checkout), because missing one hides secrets and unpinned actions;
- ``action.yml``/``action.yaml`` is a GitHub action wherever it is (actions live at a
  repository's root or in any folder ``uses: ./path`` names), not only under ``.github/actions/``;
- GitLab CI: ``.gitlab-ci.yml`` anywhere (also ``*.gitlab-ci.yml``), ``.gitlab-ci.yaml``, and
  YAML under ``.gitlab/`` or a ``.gitlab-ci/`` folder (the usual place for ``include:`` files);
- Jenkinsfile: any case (``Jenkinsfile``, ``jenkinsfile``, ``Jenkinsfile.release``,
  ``deploy.jenkinsfile``, ``ci.jenkins``);
- paths are normalised first: backslashes become ``/`` and a leading ``./`` is dropped.
"""

from __future__ import annotations

from typing import Literal

DefinitionKind = Literal["github", "gitlab", "jenkins"]

YAML_KINDS = frozenset({"github-workflow", "github-action", "gitlab-ci", "bitbucket", "circleci", "azure",
                        "drone", "woodpecker", "cloudbuild", "tekton", "compose", "helm-values", "yaml"})
PROSE_SUFFIXES = (".md", ".markdown", ".rst", ".txt", ".adoc", ".html", ".htm")
_DEFINITIONS: dict[str, DefinitionKind] = {"github-workflow": "github", "github-action": "github",
                                           "gitlab-ci": "gitlab", "jenkinsfile": "jenkins"}


def normalise(relpath: str) -> str:
    """``relpath`` with ``/`` separators and no leading ``./``."""
    p = relpath.replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    return p


def _under(p: str, folder: str) -> bool:
    """True when ``folder/`` (e.g. ``.github/workflows``) is a leading or inner part of ``p``."""
    return p.startswith(folder + "/") or f"/{folder}/" in p


def _yaml_kind(p: str, low: str) -> str:
    """The format of a YAML file (path ``p``, lowercase file name ``low``)."""
    if _under(p, ".github/workflows"):
        return "github-workflow"
    if low in ("action.yml", "action.yaml"):
        return "github-action"
    if low.endswith(".gitlab-ci.yml") or low == ".gitlab-ci.yaml" or p.startswith(".gitlab/") or "/.gitlab-ci/" in p:
        return "gitlab-ci"
    if low in ("bitbucket-pipelines.yml", "bitbucket-pipelines.yaml"):
        return "bitbucket"
    if p.endswith((".circleci/config.yml", ".circleci/config.yaml")):
        return "circleci"
    if low.startswith("azure-pipelines") or p.startswith((".azure-pipelines/", ".azuredevops/")):
        return "azure"
    if low in (".drone.yml", ".drone.yaml"):
        return "drone"
    if low in (".woodpecker.yml", ".woodpecker.yaml") or _under(p, ".woodpecker"):
        return "woodpecker"
    if low.startswith("cloudbuild") or low.endswith((".cloudbuild.yaml", ".cloudbuild.yml")):
        return "cloudbuild"
    if _under(p, ".tekton") or "tekton" in low:
        return "tekton"
    if low.startswith(("docker-compose", "compose.", "compose-")) or ".compose." in low \
            or low.endswith(("-compose.yml", "-compose.yaml")):
        return "compose"
    if low.startswith("values") or "/values" in low:
        return "helm-values"
    return "yaml"


def classify(relpath: str) -> str | None:
    """The format of a file from its repository-relative path, or None when no rule applies.

    >>> classify(".github/workflows/ci.yml"), classify("build/Dockerfile.alpine"), classify("src/app.py")
    ('github-workflow', 'dockerfile', None)
    """
    p = normalise(relpath) if "\\" in relpath or relpath.startswith("./") else relpath  # the walk's paths need none
    low = p[p.rfind("/") + 1:].lower()
    if low.endswith((".yml", ".yaml")):
        return _yaml_kind(p, low)
    if low == "jenkinsfile" or low.startswith("jenkinsfile.") or low.endswith((".jenkinsfile", ".jenkins")):
        return "jenkinsfile"
    if low in ("dockerfile", "containerfile") or low.startswith(("dockerfile.", "containerfile.", "dockerfile-")) \
            or low.endswith((".dockerfile", ".containerfile")):
        return "dockerfile"
    if low in ("makefile", "gnumakefile") or low.endswith(".mk"):
        return "makefile"
    if low.endswith((".sh", ".bash")):
        return "shell"
    if low == ".env":
        return "dotenv"  # a Compose project's variables (``KEY=value``)
    if low in ("devcontainer.json", ".devcontainer.json"):
        return "devcontainer"
    if low.endswith(".tf"):
        return "terraform"  # docker_* and kubernetes_* resources name images (``image = "..."``)
    if low.endswith((".container", ".image", ".volume")):
        return "quadlet"  # Podman Quadlet units that name an image (``Image=``)
    return None


def definition_kind(relpath: str) -> DefinitionKind | None:
    """The CI system a file defines jobs for (``github``, ``gitlab``, ``jenkins``), or None: see :func:`classify`."""
    kind = classify(relpath)
    return _DEFINITIONS.get(kind) if kind else None
