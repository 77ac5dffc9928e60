"""Stage 1, detect: where do the advisory's malicious digests live in this estate?

The seed's step 1 ("identify compromised images by digest"), done everywhere
at once: registries and pull-through caches, ECR, Docker engines, Kubernetes
pods, CI logs and the CI configuration in repositories. Matching is by digest
only (index and per-platform child), never by tag: a tag is exactly what the
attacker controlled.

Every source runs in its own thread; a source that fails becomes a finding of
its own (``verdict: unknown`` with the error) and the rest go on, so nothing is
silently skipped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from digestguard.advisory import Advisory, AffectedImage, ImageMatch
from digestguard.errors import DigestguardError, NotFound
from digestguard.findings import DetectResult, Finding, SourceCoverage
from digestguard.inventory import CISource, DockerEngine, Inventory, KubernetesCluster, Registry, Repository
from digestguard.reference import DOCKER_HUB, ImageReference, is_digest, public_mirror, try_parse_reference
from integrations import ecr, kubernetes
from tasks.ci_logs import read_one_source
from tasks.connect import Connections, cluster_config, gar_package, host_of
from tasks.scan.references import scan_tree

MAX_SOURCES_IN_PARALLEL = 8
TAG_WORKERS = 16


@dataclass(frozen=True)
class DigestMatch:
    """A digest found in the advisory: the index it belongs to and whether it was the index itself or a child."""

    index: str
    kind: str  # "index" | "manifest"
    platform: str | None
    image: AffectedImage


def match_digest(advisory: Advisory, digest: str | None) -> DigestMatch | None:
    """The advisory entry ``digest`` matches (a child maps to its parent index), or None."""
    if not digest:
        return None
    hit = advisory.malicious_index().get(digest)
    if hit is None:
        return None
    img, m = hit
    return DigestMatch(index=m.parent or m.digest, kind=m.kind, platform=m.platform, image=img)


def _finding(source: str, kind: str, location: str, reference: str | None, digest: str | None,
             advisory: Advisory, **extra) -> Finding:
    """A finding whose verdict follows from the digest alone (compromised / clean / suspect)."""
    m = match_digest(advisory, digest)
    if m:
        return Finding(source=source, kind=kind, location=location, reference=reference, digest=digest,
                       matched=m.index, match_kind=m.kind, platform=m.platform, verdict="compromised", **extra)
    verdict = "clean" if digest else "suspect"
    return Finding(source=source, kind=kind, location=location, reference=reference, digest=digest, verdict=verdict, **extra)


def _unknown(source: str, kind: str, location: str, error: Exception | str, *, whole: bool = False) -> Finding:
    """An ``unknown`` finding for one item (or, ``whole=True``, for the whole source) that could not be read."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return Finding(source=source, kind=kind, location=location, verdict="unknown", error=text,
                   detail={"scope": "source"} if whole else {})


def source_coverage(name: str, kind: str, findings: list[Finding]) -> SourceCoverage:
    """The coverage of one source from its findings.

    ``unchecked`` when a finding says the whole source could not be read (``detail.scope == "source"``);
    ``partial`` when some item could not be read (an ``unknown`` finding, a ``suspect`` one with an error)
    or a bound was hit (``detail.partial``); else ``checked``.
    """
    own = [f for f in findings if f.source == name]
    whole = [f for f in own if f.verdict == "unknown" and f.detail.get("scope") == "source"]
    if whole:
        return SourceCoverage(source=name, kind=kind, state="unchecked", reason=whole[0].error)
    failed = [f for f in own if f.verdict == "unknown" or (f.verdict == "suspect" and f.error)]
    bounds = [str(f.detail["partial"]) for f in own if f.detail.get("partial")]
    if failed or bounds:
        parts = [f"{len(failed)} item(s) not read, first {failed[0].location}: {failed[0].error}"] if failed else []
        return SourceCoverage(source=name, kind=kind, state="partial", reason="; ".join(parts + bounds))
    return SourceCoverage(source=name, kind=kind, state="checked")


# ---------------------------------------------------------------------------------- registries
def registry_repositories(entry: Registry, advisory: Advisory) -> list[tuple[str, AffectedImage]]:
    """Which repository paths to check in this registry, each with the affected image it mirrors.

    Explicit ``repositories`` are matched to an image by their trailing path
    (``mirror/checkmarx/kics`` mirrors ``checkmarx/kics``); by default a cache holds
    Docker Hub images under their own path (``checkmarx/kics``, ``library/alpine``).
    """
    out: list[tuple[str, AffectedImage]] = []
    for img in advisory.images:
        paths = {name.split("/", 1)[1] for name in img.names}
        if entry.repositories:
            for repo in entry.repositories:
                r = repo.strip("/")
                if any(r == p or r.endswith("/" + p) for p in paths):
                    out.append((r, img))
        else:
            host = host_of(entry.url) if entry.url else None
            for name in img.names:
                reg, _, path = name.partition("/")
                if reg == DOCKER_HUB or reg == host or entry.mirror_of in (reg, None):
                    out.append((path, img))
    seen: set[str] = set()
    return [(r, img) for r, img in out if not (r in seen or seen.add(r))]


def detect_registry(entry: Registry, advisory: Advisory, client) -> list[Finding]:
    """Resolve every affected tag (and every listed tag), walk indexes to children, and look for the
    malicious digests themselves (an untagged copy is still pullable by digest).

    Faults stay local: a tag, index or lookup that fails is an ``unknown`` finding of its own and
    the rest goes on; a host that is no registry at all (``GET /v2/`` fails) is one whole-source finding.
    """
    repos = registry_repositories(entry, advisory)
    try:
        client.ping()
    except DigestguardError as e:
        return [_unknown(entry.name, "registry", entry.name, e, whole=True)]
    findings: list[Finding] = []
    for repo, img in repos:
        where = f"{entry.name}/{repo}"
        try:
            listed, complete = client.list_tags_bounded(repo)
        except NotFound:
            listed, complete = [], True
        except DigestguardError as e:  # the listing failed: the affected tags are still looked up one by one
            findings.append(_unknown(entry.name, "registry", where, f"tag list unreadable, only the affected tags "
                                                                   f"were checked: {type(e).__name__}: {e}"))
            listed, complete = [], True
        if not complete:
            findings.append(_unknown(entry.name, "registry", where,
                                     f"tag list cut at {len(listed)} tags (bound reached); the rest were not checked"))
        findings += _detect_repository(entry, repo, img, listed, advisory, client)
    return _through_public_mirror(entry, findings)


def _through_public_mirror(entry: Registry, findings: list[Finding]) -> list[Finding]:
    """An inventory registry that is a public Docker Hub mirror (``https://mirror.gcr.io``): every finding names it."""
    pm = public_mirror(host_of(entry.url)) if entry.url else None
    return [f.model_copy(update={"mirror": pm.host}) for f in findings] if pm else findings


def _detect_repository(entry: Registry, repo: str, img: AffectedImage, listed: list[str], advisory: Advisory,
                       client) -> list[Finding]:
    """One repository: every affected and listed tag (in parallel), then the malicious digests by digest."""
    where = f"{entry.name}/{repo}"
    affected = set(img.affected_tags)
    tags = list(dict.fromkeys([*img.affected_tags, *listed]))

    def guarded_one(tag: str) -> Finding | None:
        try:
            return _tag_finding(entry, repo, tag, tag in affected, advisory, client)
        except Exception as e:  # noqa: BLE001 - one bad tag is its own finding, never the whole registry's
            return _unknown(entry.name, "registry", f"{where}:{tag}", e)

    with ThreadPoolExecutor(TAG_WORKERS) as pool:
        findings = [f for f in pool.map(guarded_one, tags) if f is not None]
    tagged = {f.digest for f in findings if f.verdict == "compromised"}
    for m in img.malicious:
        if m.digest in tagged:
            continue
        try:
            present = client.exists(repo, m.digest)
        except Exception as e:  # noqa: BLE001 - one failed lookup is its own finding
            findings.append(_unknown(entry.name, "registry", f"{where}@{m.digest}", e))
            continue
        if present:
            findings.append(_finding(entry.name, "registry", f"{where}@{m.digest}", f"{repo}@{m.digest}", m.digest,
                                     advisory, detail={"tag": None, "untagged": True}))
    return findings


def _tag_finding(entry: Registry, repo: str, tag: str, affected: bool, advisory: Advisory, client) -> Finding | None:
    """The finding for one tag, or None when there is no news (tag absent, or unaffected at a clean digest)."""
    where = f"{entry.name}/{repo}:{tag}"
    ref = f"{repo}:{tag}"
    try:
        digest = client.resolve(repo, tag)
    except NotFound:
        return None  # the tag is not in this registry: nothing to find
    except DigestguardError as e:
        if affected:
            return Finding(source=entry.name, kind="registry", location=where, reference=ref,
                           verdict="suspect", error=str(e))
        return _unknown(entry.name, "registry", where, e)
    f = _finding(entry.name, "registry", where, ref, digest, advisory, detail={"tag": tag})
    if f.verdict != "clean":
        return f
    child = _child_match(client, repo, digest, advisory)
    if child and child.verdict == "unknown":
        return child.model_copy(update={"source": entry.name, "location": where, "reference": ref,
                                        "detail": {"tag": tag, "index": digest}})
    if child:
        return child.model_copy(update={"source": entry.name, "location": where, "reference": ref,
                                        "detail": {"tag": tag, "index": digest}})
    return f if affected else None  # an unaffected tag at a clean digest is not news


def _child_match(client, repo: str, digest: str, advisory: Advisory) -> Finding | None:
    """When ``digest`` is an index, a finding for its first malicious child, if any."""
    try:
        children = client.get_index_children(repo, digest)
    except DigestguardError as e:
        return Finding(source="", kind="registry", location="", digest=digest, verdict="unknown",
                       error=f"index {digest} could not be read: {type(e).__name__}: {e}")
    for ch in children:
        m = match_digest(advisory, ch.digest)
        if m:
            return Finding(source="", kind="registry", location="", digest=ch.digest, matched=m.index,
                           match_kind="manifest", platform=ch.platform, verdict="compromised")
    return None


# ---------------------------------------------------------------------------------- ECR
def _detect_listed(entry: Registry, advisory: Advisory, kind: str,
                   listing: Callable[[str], Iterable[tuple[str, list[str], dict[str, Any]]]]) -> list[Finding]:
    """A registry whose API lists every image of a repository with its digest and tags (ECR, Artifact Registry):
    each image that is malicious or carries an affected tag is a finding; a repository that cannot be read is one too
    (the whole source's when none could be read)."""
    findings: list[Finding] = []
    repos = registry_repositories(entry, advisory)
    unreadable = 0
    for repo, img in repos:
        where = f"{entry.name}/{repo}"
        try:
            images = list(listing(repo))
        except NotFound:
            continue
        except DigestguardError as e:
            unreadable += 1
            findings.append(_unknown(entry.name, kind, where, e, whole=unreadable == len(repos)))
            continue
        affected = set(img.affected_tags)
        for digest, tags, extra in images:
            f = _finding(entry.name, kind, f"{where}@{digest}", f"{repo}@{digest}", digest, advisory,
                         detail={"tags": list(tags), **extra})
            if f.verdict == "compromised" or affected & set(tags):
                findings.append(f)
    return findings


def detect_ecr(entry: Registry, advisory: Advisory, c: Any) -> list[Finding]:
    """ECR: every image of each mirrored repository, by digest, with its tags (malicious digests and affected tags)."""
    def listing(repo: str) -> Iterable[tuple[str, list[str], dict[str, Any]]]:
        return [(im.digest, list(im.tags), {"pushed_at": im.pushed_at.isoformat() if im.pushed_at else None})
                for im in ecr.list_images(c, repo, registry_id=entry.account_id)]

    return _detect_listed(entry, advisory, "ecr", listing)


def detect_gar(entry: Registry, advisory: Advisory, client: Any) -> list[Finding]:
    """Artifact Registry: every version of each mirrored package, by digest, with its tags."""
    if not (entry.project and entry.location):
        return [_unknown(entry.name, "gar", entry.name, "an Artifact Registry entry needs project and location", whole=True)]

    def listing(repo: str) -> Iterable[tuple[str, list[str], dict[str, Any]]]:
        return [(v.digest, list(v.tags), {}) for v in client.list_versions(gar_package(entry, repo))]

    return _detect_listed(entry, advisory, "gar", listing)


# ---------------------------------------------------------------------------------- engines
def detect_engine(entry: DockerEngine, advisory: Advisory, mirrors: Iterable[str], engine: Any) -> list[Finding]:
    """The seed's ``docker inspect`` check: every image's RepoDigests and id, every container's image."""
    findings: list[Finding] = []
    images = engine.list_images()
    containers = engine.list_containers()
    bad_ids: dict[str, Finding] = {}
    for im in images:
        names = [*im.repo_digests, *im.repo_tags]
        relevant = [(n, m) for n in names if (m := _affected_name(advisory, n, mirrors))]
        digests = [*sorted(im.digests), im.id]
        hit = next((d for d in digests if match_digest(advisory, d)), None)
        if hit or relevant:
            ref = next((n for n, _ in relevant if n in im.repo_tags), None) or (names[0] if names else im.id)
            shown = hit or (sorted(im.digests)[0] if im.digests else None)
            f = _finding(entry.name, "engine-image", f"{entry.name}/{ref}", ref, shown, advisory,
                         detail={"image_id": im.id, "repo_digests": list(im.repo_digests), "repo_tags": list(im.repo_tags)},
                         mirror=next((m.mirror for _, m in relevant if m.mirror), None))
            findings.append(f)
            if f.verdict == "compromised":
                bad_ids[im.id] = f
    for c in containers:
        f = bad_ids.get(c.image_id) or bad_ids.get("sha256:" + c.image_id.removeprefix("sha256:"))
        if f:
            findings.append(Finding(source=entry.name, kind="engine-container", location=f"{entry.name}/{c.name}",
                                    reference=c.image, digest=f.digest, matched=f.matched, match_kind=f.match_kind,
                                    mirror=f.mirror,
                                    verdict="compromised", detail={"container_id": c.id, "status": c.status,
                                                                    "image_id": c.image_id}))
    return findings


def _affected_name(advisory: Advisory, text: str | None, mirror_hosts: Iterable[str] = ()) -> ImageMatch | None:
    """The match when ``text`` names an affected repository: directly, through a public Docker Hub mirror, or
    through one of the estate's caches (``127.0.0.1:5000/checkmarx/kics`` when that registry is in the inventory)."""
    return advisory.match(try_parse_reference(text), mirror_hosts) if text else None


def mirror_hosts(inventory: Inventory) -> set[str]:
    """Registry hosts of the inventory's registries (images pulled through them carry their host)."""
    return {host_of(r.url) for r in inventory.registries if r.url}


# ---------------------------------------------------------------------------------- kubernetes
def detect_kubernetes(entry: KubernetesCluster, advisory: Advisory, inventory: Inventory) -> list[Finding]:
    """Pods whose container statuses' imageID carries a malicious digest (or that run an affected image)."""
    listing = kubernetes.list_running_containers(cluster_config(entry, inventory))
    out: list[Finding] = []
    for c in listing.containers:
        mirrors = mirror_hosts(inventory)
        named = _affected_name(advisory, c.image, mirrors) or (
            c.image_id_repository and _affected_name(advisory, c.image_id_repository, mirrors))
        if not (named or match_digest(advisory, c.digest)):
            continue
        out.append(_finding(entry.name, "pod", f"{c.namespace}/{c.pod}/{c.container}", c.image, c.digest, advisory,
                            detail={"namespace": c.namespace, "pod": c.pod, "workload": f"{c.workload_kind}/{c.workload_name}",
                                    "node": c.node}, mirror=named.mirror if named else None))
    return out


# ---------------------------------------------------------------------------------- CI logs
def detect_ci_logs(entry: CISource, advisory: Advisory, inventory: Inventory) -> list[Finding]:
    """Pull lines in CI job logs that name an affected image, with the digest they printed."""
    out: list[Finding] = []
    read = read_one_source(entry, inventory, advisory)
    whole = any(c.state == "unchecked" for c in read.coverage.values())
    for err in read.errors:
        out.append(_unknown(entry.name, "ci-log", entry.name, err, whole=whole))
    for job in read.jobs:
        seen: set[tuple[str | None, str | None]] = set()
        for p in job.pulls:
            ref = try_parse_reference(p.reference) if p.reference else None
            hit = advisory.match(ref)
            if not hit and not match_digest(advisory, p.digest):
                continue
            key = (ref.name if ref else p.reference, p.digest)
            if key in seen:  # the same pull told twice (pull line, digest line, status line): one finding per job
                continue
            seen.add(key)
            out.append(_finding(entry.name, "ci-log", f"{job.job}:{p.line_no}", p.reference, p.digest, advisory,
                                detail={"job": job.job, "tag": p.tag}, seen_at=p.at or job.started_at,
                                mirror=hit.mirror if hit else None))
    return out


# ---------------------------------------------------------------------------------- configuration
def detect_config(entry: Repository, advisory: Advisory, inventory: Inventory) -> list[Finding]:
    """Every file in a checkout that references an affected repository, with the tag it uses."""
    root = inventory.resolve_path(entry.path)
    needles = [s for img in advisory.images for s in img.spellings()]
    res = scan_tree(root, needles)
    out: list[Finding] = []
    for fs in res.files:
        rel = os.path.relpath(fs.path, root) if os.path.isabs(fs.path) else fs.path
        # (reference, text, line, context, tag unknown): Helm values split registry/repository/tag/digest
        refs = [(f.ref, f.text, f.line, f.context, False) for f in fs.found if f.ref is not None]
        refs += [(ImageReference(h.ref.registry, h.ref.repository, h.tag.text if h.tag and h.tag.text else None,
                                 h.digest.text if h.digest and is_digest(h.digest.text) else None),
                  h.text, h.line, "helm", not (h.tag and h.tag.text)) for h in fs.helm if h.ref is not None]
        for ref, text, line, context, no_tag in refs:
            hit = advisory.match(ref)
            if hit is None:
                continue
            pinned = ref.digest
            detail: dict[str, Any] = {"tag": None if no_tag else ref.effective_tag, "context": context}
            if no_tag:
                detail["note"] = "empty tag: the chart's appVersion decides which image is pulled"
            verdict_f = _finding(entry.name, "config", f"{rel}:{line}", text, pinned, advisory, detail=detail,
                                 mirror=hit.mirror)
            if not pinned:  # a tag reference: its content is whatever the tag says now
                verdict_f = verdict_f.model_copy(update={"verdict": "suspect" if no_tag or ref.effective_tag in
                                                         hit.image.affected_tags else "clean"})
            out.append(verdict_f)
    return out


# ---------------------------------------------------------------------------------- all together
def detect(advisory: Advisory, inventory: Inventory, connections: Connections | None = None) -> DetectResult:
    """Run every source of the inventory; return every finding (sources that fail become ``unknown`` findings).

    ``connections``: the run's clients; without it the call opens its own and closes them at the end.
    """
    if connections is None:
        with Connections(inventory) as own:
            return detect(advisory, inventory, own)
    jobs: list[tuple[str, str, Callable[[], list[Finding]]]] = []
    for reg in inventory.registries:
        if reg.kind == "ecr":
            jobs.append((reg.name, "ecr", lambda reg=reg: detect_ecr(reg, advisory, connections.ecr(reg.name))))
        elif reg.kind == "gar":
            jobs.append((reg.name, "gar", lambda reg=reg: detect_gar(reg, advisory, connections.gar(reg.name))))
        else:
            jobs.append((reg.name, "registry", lambda reg=reg: detect_registry(reg, advisory, connections.registry(reg.name))))
    for eng in inventory.docker_engines:
        jobs.append((eng.name, "engine-image",
                     lambda eng=eng: detect_engine(eng, advisory, mirror_hosts(inventory), connections.engine(eng.name))))
    for cl in inventory.kubernetes:
        jobs.append((cl.name, "pod", lambda cl=cl: detect_kubernetes(cl, advisory, inventory)))
    for ci in inventory.ci_logs:
        jobs.append((ci.name, "ci-log", lambda ci=ci: detect_ci_logs(ci, advisory, inventory)))
    for repo in inventory.repositories:
        jobs.append((repo.name, "config", lambda repo=repo: detect_config(repo, advisory, inventory)))

    def guarded(job: tuple[str, str, Callable[[], list[Finding]]]) -> tuple[list[Finding], SourceCoverage]:
        name, kind, fn = job
        try:
            found = fn()
        except Exception as e:  # a failed source is a finding, never a silent skip
            found = [_unknown(name, kind, name, e, whole=True)]
        return found, source_coverage(name, kind, found)

    findings: list[Finding] = []
    coverage: list[SourceCoverage] = []
    with ThreadPoolExecutor(MAX_SOURCES_IN_PARALLEL) as pool:
        for fs, cov in pool.map(guarded, jobs):
            findings.extend(fs)
            coverage.append(cov)
    return DetectResult(advisory=advisory.id, findings=findings, coverage=coverage)


@task(name="detect", cache_policy=NO_CACHE)
def detect_task(advisory: Advisory, inventory: Inventory, connections: Connections) -> DetectResult:
    """Prefect task: the detect stage (one coarse task; sources fan out in threads inside)."""
    return detect(advisory, inventory, connections)
