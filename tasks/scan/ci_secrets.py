"""What an exposed CI job could see: the secrets its definition names, and credentials in its repository.

Why: a malicious scanner image runs with the job's environment and reads the
checked-out repository (the KICS payload sent its scan output, secrets
included, to the attacker). So for each exposed job we list

1. the secrets the job's *definition* hands it:
   - GitHub Actions workflow: every ``${{ secrets.X }}`` (and ``secrets['X']``),
     the ``env:``/``with:`` key that receives it (a second name to match the
     inventory's aliases), ``env:`` keys that are inventory secrets, and
     ``secrets: inherit`` (noted: the called workflow sees every secret);
   - GitLab CI: ``variables:`` entries and ``secrets:`` (external secrets)
     entries, and ``$VAR``/``${VAR}`` references to variables the file does not
     define (they come from project/group CI/CD variables);
   - Jenkinsfile: ``credentials('id')`` and ``withCredentials([... credentialsId:
     'id' ...])`` bindings, with their variable names as second names;
2. credentials sitting in the repository contents, found by the maintained
   scanner ``detect-secrets`` (its Python API, default plugins and filters):
   the file, line and type are reported, never the value. The name is the key
   on that line (``AWS_SECRET_ACCESS_KEY = ...`` -> ``AWS_SECRET_ACCESS_KEY``)
   when there is one, so it can match the inventory.

Every name is matched to the inventory (by name or alias). A name not in the
inventory is reported ``mapped=False`` so nobody forgets it. To keep the
unmapped list useful, plain shell variables are not reported: a GitLab ``$VAR``
or ``variables:`` name that is not in the inventory is reported only when it
looks like a credential (TOKEN, PASSWORD, SECRET, KEY, AUTH, ...) and is not a
GitLab predefined variable (``CI_*``, ``GITLAB_*``). GitHub ``secrets.X`` and
Jenkins credential ids are always reported: they are secrets by construction.

How a job maps to its definition (see ``JobOrigin``): a GitHub run names its
workflow file (``run.path``); for folder logs, a subfolder named after an
inventory repository makes every CI definition file of that repository apply,
and a ``<log>.meta.json`` sidecar may name the repository and workflow.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import yaml
from detect_secrets import SecretsCollection
from detect_secrets.core import scan as ds_scan
from detect_secrets.settings import default_settings

from digestguard.findings import ExposedJob, ExposedSecret, JobVerdict
from digestguard.inventory import Inventory, Repository
from tasks.scan.ci_files import definition_kind
from tasks.scan.files import DEPENDENCY_DIRS, tree_order, walk_files

MAX_SCAN_BYTES = 1024 * 1024
_SECRETISH = re.compile(r"TOKEN|PASS|SECRET|KEY|CRED|AUTH|PRIVATE|CERT|DSN|WEBHOOK|SESSION|API_?KEY", re.IGNORECASE)
_GITLAB_PREDEFINED = re.compile(r"^(CI|GITLAB|FF|RUNNER|DOCKER_(HOST|TLS_CERTDIR|DRIVER))(_|$)")
_SHELL_COMMON = {"HOME", "PATH", "PWD", "USER", "SHELL", "TMPDIR", "LANG", "HOSTNAME", "OLDPWD", "IFS", "PS1"}
_ORDER: dict[str, int] = {"clear": 0, "probable": 1, "confirmed": 2}


@dataclass(frozen=True)
class JobOrigin:
    """Where a job's definition lives.

    ``repository``: the inventory repository (a local checkout: its CI files and
    contents are read). ``workflow``: the definition file, relative to the repository
    (only that file is read when given). ``definitions``: ``(path, text)`` pairs already
    fetched from an API (a GitHub workflow file at the run's commit) when there is no checkout.
    """

    repository: str | None = None
    workflow: str | None = None
    definitions: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class SecretRef:
    """One secret a file names: ``name`` (the secret), ``also`` (another name it goes by there), where and how."""

    name: str
    how: str
    also: tuple[str, ...] = ()
    always: bool = True
    """False for names that are only candidates (GitLab variables): reported unmapped only when secret-like."""


def job_key(source: str, job: str) -> str:
    """The identity of a job across sources, as used in ``ExposedSecret.exposed_by``."""
    return f"{source}:{job}" if source else job


# --------------------------------------------------------------------------- definition files


def definition_files(root: Path) -> list[str]:
    """Repository-relative paths of every CI definition file in a checkout, in top-down order.

    Dependency and tool folders (``node_modules``, ``.venv``, ...) are not entered.
    """
    found = [rel for rel, entry in walk_files(root, DEPENDENCY_DIRS) if not entry.is_dir() and definition_kind(rel)]
    return sorted(found, key=tree_order)


def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


_GH_EXPR = re.compile(r"\$\{\{(.*?)\}\}", re.DOTALL)
_GH_SECRET = re.compile(r"\bsecrets\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_-]*)|\[\s*['\"]([A-Za-z_][A-Za-z0-9_-]*)['\"]\s*\])")
_YAML_KEY_BEFORE = re.compile(r"^\s*-?\s*['\"]?([A-Za-z_][A-Za-z0-9_.-]*)['\"]?\s*:\s*[^\n]*$")
_INHERIT = re.compile(r"^\s*secrets\s*:\s*inherit\s*$", re.MULTILINE)


class _TolerantLoader(yaml.SafeLoader):
    """SafeLoader that accepts GitLab's ``!reference`` and other custom tags (as None)."""


_TolerantLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _load_yaml(text: str) -> object:
    try:
        return yaml.load(text, Loader=_TolerantLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError:
        return None


def github_refs(path: str, text: str) -> tuple[list[SecretRef], list[str]]:
    """Secrets a workflow (or composite action) names; notes for ``secrets: inherit``."""
    refs: list[SecretRef] = []
    notes: list[str] = []
    for expr in _GH_EXPR.finditer(text):
        for m in _GH_SECRET.finditer(expr.group(1)):
            name = m.group(1) or m.group(2)
            line_no = _line_of(text, expr.start())
            line_start = text.rfind("\n", 0, expr.start()) + 1
            line_end = text.find("\n", expr.start())
            key = _YAML_KEY_BEFORE.match(text[line_start: line_end if line_end != -1 else len(text)])
            also = (key.group(1),) if key and key.group(1) not in ("run", "if", "with", "env") and key.group(1) != name else ()
            how = f"{path}:{line_no} secrets.{name}" + (f" as {also[0]}" if also else "")
            if name == "GITHUB_TOKEN":
                how += " (the automatic job token: it expires when the job ends)"
            refs.append(SecretRef(name=name, how=how, also=also))
    for m in _INHERIT.finditer(text):
        notes.append(f"{path}:{_line_of(text, m.start())} passes 'secrets: inherit':"
                     " the called workflow sees every secret of the repository")
    named = {a for r in refs for a in (r.name, *r.also)}
    for key in dict.fromkeys(k for k, _ in _env_entries(_load_yaml(text))):
        if key not in named:
            refs.append(SecretRef(name=key, how=f"{path} env {key}", always=False))
    return refs, notes


def _env_entries(data: object) -> Iterable[tuple[str, object]]:
    """Every key of every ``env:`` mapping at any depth (workflow, job, step)."""
    if isinstance(data, dict):
        for k, v in data.items():
            if k == "env" and isinstance(v, dict):
                for ek in v:
                    yield str(ek), v
            else:
                yield from _env_entries(v)
    elif isinstance(data, list):
        for item in data:
            yield from _env_entries(item)


_DOLLAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?:[^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def gitlab_refs(path: str, text: str) -> tuple[list[SecretRef], list[str]]:
    """Secrets a ``.gitlab-ci.yml`` hands its jobs: ``variables:``, ``secrets:`` and ``$VAR`` from CI/CD settings."""
    refs: list[SecretRef] = []
    notes: list[str] = []
    data = _load_yaml(text)
    defined: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "variables" and isinstance(v, dict):
                    for name in v:
                        defined.add(str(name))
                        refs.append(SecretRef(name=str(name), how=f"{path} variables: {name}", always=False))
                elif k == "secrets" and isinstance(v, dict):
                    for name in v:
                        refs.append(SecretRef(name=str(name), how=f"{path} secrets: {name} (external secret)"))
                else:
                    walk(v)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    if data is None and text.strip():
        notes.append(f"{path}: not valid YAML; only $VARIABLE references were read")
    walk(data)
    seen: set[str] = set()
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith("#"):
            continue
        for m in _DOLLAR.finditer(line):
            name = m.group(1) or m.group(2)
            if name in defined or name in seen or name in _SHELL_COMMON or _GITLAB_PREDEFINED.match(name):
                continue
            seen.add(name)
            refs.append(SecretRef(name=name, how=f"{path}:{lineno} ${name} (a CI/CD variable)", always=False))
    return refs, notes


_JENKINS_CRED = re.compile(r"(?:([A-Za-z_][A-Za-z0-9_]*)\s*=\s*)?credentials\s*\(\s*['\"]([^'\"]+)['\"]\s*\)")
_JENKINS_BINDING = re.compile(r"\b(\w+)\s*\(([^()]*\bcredentialsId\s*:\s*['\"][^'\"]+['\"][^()]*)\)")
_JENKINS_ID = re.compile(r"\bcredentialsId\s*:\s*['\"]([^'\"]+)['\"]")
_JENKINS_VAR = re.compile(r"\b(?:\w*[vV]ariable)\s*:\s*['\"]([A-Za-z_][A-Za-z0-9_]*)['\"]")


def jenkins_refs(path: str, text: str) -> tuple[list[SecretRef], list[str]]:
    """Credential ids a Jenkinsfile binds (``credentials('id')``, ``withCredentials`` bindings)."""
    refs: list[SecretRef] = []
    for m in _JENKINS_CRED.finditer(text):
        var, cid = m.group(1), m.group(2)
        how = f"{path}:{_line_of(text, m.start())} credentials('{cid}')" + (f" as {var}" if var else "")
        refs.append(SecretRef(name=cid, how=how, also=(var,) if var else ()))
    for m in _JENKINS_BINDING.finditer(text):
        args = m.group(2)
        cid_m = _JENKINS_ID.search(args)
        if not cid_m:
            continue
        variables = tuple(_JENKINS_VAR.findall(args))
        how = f"{path}:{_line_of(text, m.start())} withCredentials {m.group(1)}(credentialsId: '{cid_m.group(1)}')"
        if variables:
            how += " as " + ", ".join(variables)
        refs.append(SecretRef(name=cid_m.group(1), how=how, also=variables))
    return refs, []


def definition_refs(path: str, text: str) -> tuple[list[SecretRef], list[str]]:
    """Secret references of one CI definition file, by its kind (unknown kinds: none)."""
    kind = definition_kind(path)
    if kind == "github":
        return github_refs(path, text)
    if kind == "gitlab":
        return gitlab_refs(path, text)
    if kind == "jenkins":
        return jenkins_refs(path, text)
    return [], []


# --------------------------------------------------------------------------- repository contents

_DS_LOCK = threading.Lock()  # detect-secrets keeps its settings in a process-wide global
_INDIRECT = re.compile(r"credentialsId|[vV]ariable\s*:|\$\{\{|credentials\s*\(|:\s*\$\{?[A-Za-z_]")
_KEY_ON_LINE = re.compile(r"""^\s*(?:export\s+|set\s+|-\s+)?["']?([A-Za-z_][A-Za-z0-9_.-]*)["']?\s*(?::=|=|:)""")


def _scannable(entry: os.DirEntry[str]) -> bool:
    """A regular file (not a symlink) of at most ``MAX_SCAN_BYTES``."""
    try:
        return entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_size <= MAX_SCAN_BYTES
    except OSError:
        return False


_PURE_REFERENCE = re.compile(r"^\s*-?\s*['\"]?[A-Za-z_][A-Za-z0-9_.-]*['\"]?\s*:\s*['\"]?\$\{\{\s*secrets\s*\.\s*"
                             r"[A-Za-z_][A-Za-z0-9_-]*\s*\}\}['\"]?\s*$")


def _scan_definition(collection: SecretsCollection, root: Path, rel: str) -> None:
    """detect-secrets over a CI definition file, line by line, without its YAML transformers.

    We parse CI definitions ourselves (:func:`definition_refs`); detect-secrets' own transformers would parse the
    same YAML twice more (a plain pass, then an "eager" pass when the first finds nothing). Lines that only hand a
    named secret on (``KEY: ${{ secrets.NAME }}``) hold no literal and are blanked: every plugin still sees every
    other line, and line numbers are kept.
    """
    full = root / rel
    if ds_scan._is_filtered_out(required_filter_parameters=["filename"], filename=str(full)):
        return
    try:
        text = full.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return  # binary: detect-secrets skips it too
    lines = [(n, "" if _PURE_REFERENCE.match(line) else line) for n, line in enumerate(text.splitlines(), start=1)]
    for secret in ds_scan._process_line_based_plugins(lines=lines, filename=str(full)):
        collection[rel].add(secret)


def scan_repository_contents(root: Path, label: str) -> tuple[list[SecretRef], list[str]]:
    """Credentials in a checkout, found by detect-secrets. Returns names/locations only, never values.

    Files over 1 MiB, ``.git`` and dependency folders are skipped. The name of a finding is
    the key on its line when the line is an assignment, else ``<type> at <file>:<line>``.
    """
    refs: list[SecretRef] = []
    notes: list[str] = []
    files = sorted((rel for rel, entry in walk_files(root, DEPENDENCY_DIRS) if _scannable(entry)), key=tree_order)
    found: list[tuple[str, int, str]] = []
    with _DS_LOCK, default_settings():
        collection = SecretsCollection(root=str(root))
        for rel in files:
            try:
                if definition_kind(rel):
                    _scan_definition(collection, root, rel)
                else:
                    collection.scan_file(rel)
            except Exception as exc:  # noqa: BLE001 - one unreadable file must not end the scan
                notes.append(f"{label}: detect-secrets could not scan {rel}: {type(exc).__name__}")
        for filename, secret in collection:
            found.append((str(filename), int(secret.line_number or 0), str(secret.type)))
    lines_cache: dict[str, list[str]] = {}
    for filename, line_no, kind in sorted(set(found)):
        if filename not in lines_cache:
            try:
                lines_cache[filename] = (root / filename).read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError:
                lines_cache[filename] = []
        lines = lines_cache[filename]
        key = None
        text = lines[line_no - 1] if 0 < line_no <= len(lines) else ""
        if kind == "Secret Keyword" and definition_kind(filename) and _INDIRECT.search(text):
            continue  # a CI file naming where a secret comes from (credentialsId, ${{ secrets.X }}, $VAR): not a literal
        m = _KEY_ON_LINE.match(text)
        key = m.group(1) if m else None
        where = f"{filename}:{line_no}"
        name = key or f"{kind} at {where}"
        refs.append(SecretRef(name=name, how=f"found in repository {label} file {where} ({kind})"))
    return refs, notes


PROCESS_SCAN_MIN = 128
"""From this many checkouts on, repository contents are scanned in worker processes (detect-secrets is pure
Python and keeps its settings in a process-wide global, so threads would only take turns). Below it, starting
workers (each imports detect-secrets: 1-3 s on a busy 2-core box) costs more than it saves."""


def _scan_one(args: tuple[str, str]) -> tuple[list[SecretRef], list[str]]:
    root, label = args
    return scan_repository_contents(Path(root), label)


def scan_many_repository_contents(checkouts: Sequence[tuple[Path, str]], *,
                                  workers: int | None = None) -> dict[str, tuple[list[SecretRef], list[str]]]:
    """:func:`scan_repository_contents` of every ``(root, label)``, by label: in a pool of processes (one per core,
    at most 4) when there are at least ``PROCESS_SCAN_MIN``, else here. A checkout whose scan fails is a note
    for that repository only; a pool that cannot start falls back to scanning here."""
    todo = [(str(root), label) for root, label in checkouts]
    n = workers if workers is not None else min(4, os.cpu_count() or 1)
    fallback: list[str] = []
    if len(todo) >= PROCESS_SCAN_MIN and n > 1:
        try:
            ctx = multiprocessing.get_context("spawn")  # never fork a process that runs threads (Prefect's)
            with ProcessPoolExecutor(max_workers=n, mp_context=ctx) as pool:
                results = list(pool.map(_scan_one, todo, chunksize=max(1, len(todo) // (4 * n))))
            return {label: res for (_, label), res in zip(todo, results, strict=True)}
        except (OSError, BrokenProcessPool) as exc:
            fallback = [f"note: secret scanning in processes failed ({type(exc).__name__}); scanned in one process"]
    out: dict[str, tuple[list[SecretRef], list[str]]] = {}
    for root, label in todo:
        refs, notes = _scan_one((root, label))
        out[label] = (refs, fallback + notes)
    return out


# --------------------------------------------------------------------------- putting it together


def _repository_index(inventory: Inventory, repos: Sequence[Repository] | None) -> dict[str, Repository]:
    """Repositories by name, the given ones first (they win over the inventory's)."""
    index: dict[str, Repository] = {}
    for r in list(repos or []) + list(inventory.repositories):
        index.setdefault(r.name, r)
    return index


class _Merged:
    """The secrets found so far, one per inventory secret (or unmapped name), each with every job and way it was seen.

    Linear in the references added: the inventory look-up is indexed and each secret keeps sets beside its lists.
    """

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self.by_key: dict[str, ExposedSecret] = {}
        self._seen: dict[str, tuple[set[str], set[str]]] = {}

    def add(self, ref: SecretRef, job_id: str, verdict: JobVerdict) -> None:
        inv = self.inventory.secret(ref.name) or next((s for a in ref.also if (s := self.inventory.secret(a))), None)
        if inv is None and not ref.always and not _SECRETISH.search(ref.name):
            return
        key = inv.name if inv else ref.name
        cur = self.by_key.get(key)
        if cur is None:
            cur = ExposedSecret(name=ref.name if inv is None else inv.name, inventory_name=inv.name if inv else None,
                                mapped=inv is not None, exposure=verdict)
            self.by_key[key] = cur
            self._seen[key] = (set(), set())
        jobs, hows = self._seen[key]
        if job_id not in jobs:
            jobs.add(job_id)
            cur.exposed_by.append(job_id)
        if ref.how not in hows:
            hows.add(ref.how)
            cur.how.append(ref.how)
        if _ORDER[verdict] > _ORDER[cur.exposure]:
            cur.exposure = verdict

    def secrets(self) -> list[ExposedSecret]:
        return sorted(self.by_key.values(), key=lambda s: (s.mapped, -_ORDER[s.exposure], s.name))


def _checkout(jid: str, inventory: Inventory, repo: Repository | None) -> tuple[Path | None, list[str]]:
    """The job's repository checkout folder (None when unknown or missing) and the error saying it is missing."""
    if repo is None:
        return None, []
    root = inventory.resolve_path(repo.path)
    if root.is_dir():
        return root, []
    return None, [f"{jid}: repository {repo.name} checkout {root} is missing: its CI definitions and contents were not read"]


def _definition_texts(
    jid: str, origin: JobOrigin, root: Path | None, repo_name: str,
) -> tuple[list[tuple[str, str, str]], list[str]]:
    """``(cache key, path, text)`` of the job's definitions (fetched ones, else its workflow or every CI file of the checkout)."""
    texts = [(f"fetched:{jid}:{path}", path, text) for path, text in origin.definitions]
    errors: list[str] = []
    if root is None or origin.definitions:
        return texts, errors
    has_workflow = bool(origin.workflow) and (root / str(origin.workflow)).is_file()
    wanted = [str(origin.workflow)] if has_workflow else definition_files(root)
    if origin.workflow and not has_workflow:
        errors.append(f"{jid}: workflow {origin.workflow} not in checkout {repo_name}; read every CI definition instead")
    for rel in wanted:
        try:
            texts.append((f"{root}:{rel}", rel, (root / rel).read_text(encoding="utf-8", errors="replace")))
        except OSError as exc:
            errors.append(f"{jid}: cannot read {rel}: {exc.strerror}")
    return texts, errors


class _Lines(list):
    """Error lines in order, each once (a set beside the list keeps adding linear)."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def add(self, line: str, *, once: bool = False) -> None:
        if once and line in self._seen:
            return
        self._seen.add(line)
        self.append(line)


def exposed_secrets(
    jobs: Sequence[ExposedJob],
    inventory: Inventory,
    repos: Mapping[str, JobOrigin] | None = None,
    *,
    repositories: Sequence[Repository] | None = None,
    scan_contents: bool = True,
) -> tuple[list[ExposedSecret], list[str]]:
    """Secrets each confirmed/probable job could see, matched to the inventory; plus notes/errors.

    ``repos`` maps :func:`job_key` (source, job) to the job's :class:`JobOrigin`. A job with
    no origin, or whose repository has no readable checkout and no fetched definition,
    produces an error line (its secrets cannot be listed) instead of silence.
    """
    errors = _Lines()
    merged = _Merged(inventory)
    origins = repos or {}
    by_name = _repository_index(inventory, repositories)
    def_cache: dict[str, tuple[list[SecretRef], list[str]]] = {}
    content_cache: dict[str, tuple[list[SecretRef], list[str]]] = {}
    if scan_contents:  # every checkout an exposed job ran from, scanned once, in parallel
        wanted: dict[str, Path] = {}
        for job in jobs:
            if job.verdict == "clear":
                continue
            origin = origins.get(job_key(job.source, job.job)) or JobOrigin(workflow=job.workflow)
            repo = by_name.get(origin.repository) if origin.repository else None
            if repo is not None and repo.name not in wanted and (root := inventory.resolve_path(repo.path)).is_dir():
                wanted[repo.name] = root
        content_cache = scan_many_repository_contents([(root, name) for name, root in wanted.items()])
    for job in jobs:
        if job.verdict == "clear":
            continue
        jid = job_key(job.source, job.job)
        origin = origins.get(jid) or JobOrigin(workflow=job.workflow)
        repo = by_name.get(origin.repository) if origin.repository else None
        root, missing = _checkout(jid, inventory, repo)
        texts, read_errors = _definition_texts(jid, origin, root, repo.name if repo else "")
        for line in missing + read_errors:
            errors.add(line)
        if not texts and root is None:
            errors.add(f"{jid}: no repository or workflow definition known for this job:"
                       " the secrets it could see are not listed")
            continue
        for cache_key, path, text in texts:
            if cache_key not in def_cache:
                def_cache[cache_key] = definition_refs(path, text)
            refs, notes = def_cache[cache_key]
            for note in notes:
                errors.add(f"note: {jid}: {note}", once=True)
            for ref in refs:
                merged.add(ref, jid, job.verdict)
        if root is not None and scan_contents and repo is not None:
            if repo.name not in content_cache:
                content_cache[repo.name] = scan_repository_contents(root, repo.name)
            refs, notes = content_cache[repo.name]
            for note in notes:
                errors.add(note, once=True)
            for ref in refs:
                merged.add(ref, jid, job.verdict)
    return merged.secrets(), list(errors)
