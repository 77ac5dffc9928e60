"""Stage 4, purge: remove the malicious images from every place they can hide, then prove they are gone.

The seed's step 4. The plan is built from detect's compromised findings:

- registries and pull-through caches: DELETE the manifest by digest, the index
  and each of its children (their tags vanish with them);
- ECR: batch-delete-image by digest; Artifact Registry: delete the tags, then the version;
- Docker engines (local caches, CI runners): remove every image whose RepoDigests
  or id match, containers that use it only when the plan says so, then prune;
- Kubernetes: reported for a person to act on, never deleted automatically.

``apply_purge`` runs only a plan whose hash was approved, journals every
deletion (a re-run deletes nothing twice and reports what was already gone),
then verifies: every malicious digest answers 404 in every registry, no engine
lists it, and a named known-good digest resolves with all its blobs present.
"""

from __future__ import annotations

from collections.abc import Callable

from prefect import task
from prefect.cache_policies import NO_CACHE

from digestguard.advisory import Advisory
from digestguard.errors import DigestguardError, NotFound, Refused
from digestguard.findings import ActionOutcome, DetectResult, StageResult
from digestguard.inventory import Inventory
from digestguard.journal import Journal
from digestguard.plan import Approval, Plan, PlanItem, require_approved

STAGE = "purge"


def plan_purge(incident: str, advisory: Advisory, detected: DetectResult, inventory: Inventory, *,
               remove_containers: bool = False) -> Plan:
    """Every target and digest to remove, from detect's compromised findings (deterministic order)."""
    items: dict[tuple[str, str], PlanItem] = {}
    evidence: list[str] = []
    notes: list[str] = []
    by_parent: dict[str, list[str]] = {}
    for img in advisory.images:
        for m in img.malicious:
            if m.parent:
                by_parent.setdefault(m.parent, []).append(m.digest)
    for f in detected.findings:
        if f.verdict != "compromised" or not f.digest:
            continue
        evidence.append(f"{f.kind} {f.location}: {f.digest} ({f.match_kind} of {f.matched})")
        if f.kind == "registry":
            repo = _repo_of(f.location, f.source)
            digests = [f.matched or f.digest, *by_parent.get(f.matched or f.digest, [])]
            if f.digest not in digests:
                digests.append(f.digest)
            for d in digests:
                t = f"{f.source}/{repo}@{d}"
                items.setdefault(("delete-manifest", t), PlanItem(target=t, action="delete-manifest", kind="registry",
                                 reason=f"malicious {('index' if d == (f.matched or f.digest) else 'child')} of {f.matched}",
                                 params={"registry": f.source, "repository": repo, "digest": d}))
        elif f.kind in ("ecr", "gar"):
            repo = _repo_of(f.location, f.source)
            t = f"{f.source}/{repo}@{f.digest}"
            items.setdefault(("delete-image", t), PlanItem(target=t, action="delete-image", kind=f.kind,
                             reason=f"malicious digest (tags {', '.join(f.detail.get('tags') or []) or 'none'})",
                             params={"registry": f.source, "repository": repo, "digest": f.digest}))
        elif f.kind == "engine-image":
            image_id = f.detail.get("image_id")
            t = f"{f.source}/{image_id}"
            users = [c for c in detected.findings if c.kind == "engine-container" and c.source == f.source
                     and c.detail.get("image_id") == image_id]
            also = f" (and remove its {len(users)} container(s))" if users and remove_containers else ""
            items.setdefault(("remove-image", t), PlanItem(target=t, action="remove-image", kind="engine",
                             reason=f"{f.reference} is {f.digest}{also}",
                             params={"engine": f.source, "image_id": image_id, "digest": f.digest,
                                     "remove_containers": remove_containers}))
        elif f.kind == "engine-container" and not remove_containers:
            notes.append(f"container {f.location} uses a malicious image: the plan does not remove containers, so that image removal "
                         "will be refused while it exists (re-plan with remove_containers to include it)")
        elif f.kind == "pod":
            t = f"{f.source}/{f.location}"
            items.setdefault(("report-pod", t), PlanItem(target=t, action="report-pod", kind="kubernetes",
                             reason=f"runs {f.digest}; workload {f.detail.get('workload')} on node {f.detail.get('node')}: a person must act",
                             params={"cluster": f.source, **{k: f.detail.get(k) for k in ("namespace", "pod", "workload", "node")}}))
    for eng in inventory.docker_engines:
        if any(i.kind == "engine" and i.params["engine"] == eng.name for i in items.values()):
            t = f"{eng.name}/dangling"
            items.setdefault(("prune-dangling", t), PlanItem(target=t, action="prune-dangling", kind="engine",
                             reason="layers the removed images left", params={"engine": eng.name}))
    order = {"delete-manifest": 0, "delete-image": 1, "remove-image": 2, "prune-dangling": 3, "report-pod": 4}
    ordered = sorted(items.values(), key=lambda i: (order[i.action], i.target))
    return Plan(stage="purge", incident=incident, advisory=advisory.id, items=ordered, evidence=evidence, notes=notes)


def _repo_of(location: str, source: str) -> str:
    """``mirror/checkmarx/kics:latest`` or ``mirror/checkmarx/kics@sha256:..`` -> ``checkmarx/kics``."""
    rest = location[len(source) + 1:] if location.startswith(source + "/") else location
    rest = rest.split("@", 1)[0]
    if ":" in rest.rsplit("/", 1)[-1]:
        rest = rest.rsplit(":", 1)[0]
    return rest


class PurgeTargets:
    """Clients for the plan's targets, made on first use and closed at the end."""

    def __init__(self, inventory: Inventory, registry_clients: dict[str, object] | None = None) -> None:
        self.inventory = inventory
        self._given = dict(registry_clients or {})
        self._own: dict[str, object] = {}

    def registry(self, name: str):
        if name in self._given:
            return self._given[name]
        if name not in self._own:
            from tasks.detect import registry_client_for

            entry = next(r for r in self.inventory.registries if r.name == name)
            self._own[name] = registry_client_for(entry)
        return self._own[name]

    def engine(self, name: str):
        key = f"engine:{name}"
        if key not in self._own:
            from integrations.docker_engine import DockerEngine

            entry = next(e for e in self.inventory.docker_engines if e.name == name)
            self._own[key] = DockerEngine(entry.url)
        return self._own[key]

    def close(self) -> None:
        for c in self._own.values():
            c.close()


def _apply_item(item: PlanItem, targets: PurgeTargets) -> dict:
    p = item.params
    if item.action == "delete-manifest":
        targets.registry(p["registry"]).delete_manifest(p["repository"], p["digest"])
        return {"digest": p["digest"]}
    if item.action == "delete-image":
        entry = next(r for r in targets.inventory.registries if r.name == p["registry"])
        if item.kind == "ecr":
            from integrations import ecr

            res = ecr.batch_delete_images(ecr.ecr_client(region_name=entry.region, endpoint_url=entry.url),
                                          p["repository"], [p["digest"]], registry_id=entry.account_id)
            if p["digest"] not in res.deleted_digests:
                failure = next(iter(res.failures), None)
                if failure is not None and "notfound" in str(getattr(failure, "code", "")).lower():
                    raise NotFound(item.target, "already gone")
                raise Refused(item.target, f"ECR did not delete it: {failure}")
            return {"digest": p["digest"]}
        from digestguard.credentials import resolve
        from integrations.gar import API_URL, ArtifactRegistry, GarPackage

        with ArtifactRegistry(resolve(entry.token, f"registry {entry.name}") or "", api_url=entry.url or API_URL) as gar:
            done = gar.delete_version(GarPackage(entry.project, entry.location, entry.name, p["repository"]), p["digest"])
        return {"digest": p["digest"], "tags_deleted": list(done.tags_deleted)}
    if item.action == "remove-image":
        removed = targets.engine(p["engine"]).remove_image(p["image_id"], force=bool(p.get("remove_containers")),
                                                           remove_containers=bool(p.get("remove_containers")))
        return {"deleted": len(removed.deleted), "untagged": len(removed.untagged),
                "containers_removed": list(removed.containers_removed)}
    if item.action == "prune-dangling":
        pr = targets.engine(p["engine"]).prune_dangling()
        return {"deleted": len(pr.deleted), "space_reclaimed": pr.space_reclaimed}
    raise ValueError(f"unknown purge action {item.action}")


def apply_purge(plan: Plan, approval: Approval | None, inventory: Inventory, journal: Journal, *,
                known_good: dict[str, str] | None = None, registry_clients: dict[str, object] | None = None,
                progress: Callable[[int, int], None] | None = None) -> StageResult:
    """Execute an approved purge plan, journaled and idempotent; then verify. ``known_good``: {registry/repo: digest}."""
    approval = require_approved(plan, approval)
    result = StageResult(stage=STAGE, plan_hash=plan.hash, approved_by=approval.approvers)
    targets = PurgeTargets(inventory, registry_clients)
    approver = ",".join(approval.approvers)
    try:
        for n, item in enumerate(plan.items, 1):
            if progress:
                progress(n, len(plan.items))
            if item.action == "report-pod":
                result.actions.append(ActionOutcome(stage=STAGE, target=item.target, action=item.action, outcome="needs-person",
                                                    detail={"reason": item.reason}))
                journal.record(plan.incident, STAGE, item.target, item.action, "skipped", detail={"needs": "person"}, approver=approver)
                continue
            if journal.is_done(plan.incident, STAGE, item.target, item.action):
                result.actions.append(ActionOutcome(stage=STAGE, target=item.target, action=item.action, outcome="already-done"))
                continue
            try:
                with journal.step(plan.incident, STAGE, item.target, item.action, approver=approver) as rec:
                    try:
                        rec.note(**_apply_item(item, targets))
                        outcome = "done"
                    except NotFound:
                        rec.skipped(already_gone=True)
                        outcome = "already-done"
            except Refused as e:
                msg = str(e)
                result.actions.append(ActionOutcome(stage=STAGE, target=item.target, action=item.action, outcome="failed", error=msg))
                continue
            except DigestguardError as e:
                result.actions.append(ActionOutcome(stage=STAGE, target=item.target, action=item.action, outcome="failed", error=str(e)))
                continue
            result.actions.append(ActionOutcome(stage=STAGE, target=item.target, action=item.action, outcome=outcome,
                                                detail=journal.get(plan.incident, STAGE, item.target, item.action).detail))
        result.verification = verify_purge(plan, targets, known_good or {})
        for v in result.verification:
            journal.record(plan.incident, STAGE, v.target, v.action, "done" if v.outcome == "done" else "failed",
                           detail=v.detail, error=v.error)
    finally:
        targets.close()
    return result


def verify_purge(plan: Plan, targets: PurgeTargets, known_good: dict[str, str]) -> list[ActionOutcome]:
    """Every deleted digest now 404s, no engine lists a removed digest, each known-good digest pulls (HEAD + blobs)."""
    out: list[ActionOutcome] = []
    for item in plan.items:
        p = item.params
        try:
            if item.action == "delete-manifest":
                still = targets.registry(p["registry"]).exists(p["repository"], p["digest"])
                out.append(_verdict(item.target, "verify-absent", not still, "digest still answers in the registry"))
            elif item.action == "delete-image":
                out.append(_verdict(item.target, "verify-absent", not _cloud_image_present(item, targets),
                                    "digest still listed by the registry"))
            elif item.action == "remove-image":
                left = targets.engine(p["engine"]).images_with_digest(p["digest"]) if p.get("digest") else []
                left += [i for i in targets.engine(p["engine"]).list_images() if i.id == p["image_id"]]
                out.append(_verdict(item.target, "verify-absent", not left, f"engine still lists {len(left)} image(s)"))
        except DigestguardError as e:
            out.append(ActionOutcome(stage=STAGE, target=item.target, action="verify-absent", outcome="failed", error=str(e)))
    for where, digest in sorted(known_good.items()):
        reg, _, repo = where.partition("/")
        try:
            client = targets.registry(reg)
            manifest = client.get_manifest(repo, digest)
            blobs = _blobs_of(client, repo, manifest)
            missing = [b for b in blobs if not client.blob_exists(repo, b)]
            out.append(_verdict(f"{where}@{digest}", "verify-known-good", not missing,
                                f"known-good is missing {len(missing)} blob(s)", {"blobs": len(blobs)}))
        except DigestguardError as e:
            out.append(ActionOutcome(stage=STAGE, target=f"{where}@{digest}", action="verify-known-good", outcome="failed", error=str(e)))
    return out


def _cloud_image_present(item: PlanItem, targets: PurgeTargets) -> bool:
    """Whether ECR / Artifact Registry still lists the digest."""
    p = item.params
    entry = next(r for r in targets.inventory.registries if r.name == p["registry"])
    if item.kind == "ecr":
        from integrations import ecr

        found, _missing = ecr.describe_by_digest(ecr.ecr_client(region_name=entry.region, endpoint_url=entry.url),
                                                 p["repository"], [p["digest"]], registry_id=entry.account_id)
        return bool(found)
    from digestguard.credentials import resolve
    from integrations.gar import API_URL, ArtifactRegistry, GarPackage

    with ArtifactRegistry(resolve(entry.token, f"registry {entry.name}") or "", api_url=entry.url or API_URL) as gar:
        try:
            gar.get_version(GarPackage(entry.project, entry.location, entry.name, p["repository"]), p["digest"])
        except NotFound:
            return False
    return True


def _blobs_of(client, repo: str, manifest) -> list[str]:
    """Config and layer digests of a manifest, or of every child of an index."""
    data = manifest.json()
    if manifest.is_index:
        out: list[str] = []
        for child in data.get("manifests", []):
            out += _blobs_of(client, repo, client.get_manifest(repo, child["digest"]))
        return out
    return [data["config"]["digest"], *(layer["digest"] for layer in data.get("layers", []))]


def _verdict(target: str, action: str, ok: bool, problem: str, detail: dict | None = None) -> ActionOutcome:
    return ActionOutcome(stage=STAGE, target=target, action=action, outcome="done" if ok else "failed",
                         error=None if ok else problem, detail=detail or {})


class PurgeVerificationFailed(RuntimeError):
    """A malicious digest is still present after the purge: the stage fails loudly."""


def dry_run_result(plan: Plan) -> StageResult:
    """What a dry run reports: every action planned, nothing done."""
    return StageResult(stage=STAGE, dry_run=True, plan_hash=plan.hash,
                       actions=[ActionOutcome(stage=STAGE, target=i.target, action=i.action, outcome="planned") for i in plan.items])


@task(name="purge", cache_policy=NO_CACHE)
def purge_task(plan: Plan, approval: Approval | None, inventory: Inventory, journal_path: str,
               known_good: dict[str, str] | None = None) -> StageResult:
    """Prefect task: apply the approved purge plan, verify, and fail loudly if anything malicious remains."""
    result = apply_purge(plan, approval, inventory, Journal(journal_path), known_good=known_good)
    bad = [v for v in result.verification if v.outcome == "failed"]
    if bad:
        raise PurgeVerificationFailed("purge verification failed: " + "; ".join(f"{v.target}: {v.error}" for v in bad))
    return result
