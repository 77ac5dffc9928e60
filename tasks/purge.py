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

from collections.abc import Mapping
from urllib.parse import urlsplit

from prefect import task
from prefect.cache_policies import NO_CACHE

from digestguard.advisory import Advisory
from digestguard.errors import DigestguardError, NotFound, Refused
from digestguard.findings import ActionOutcome, DetectResult, StageResult
from digestguard.inventory import Inventory
from digestguard.journal import Journal
from digestguard.plan import Approval, Plan, PlanItem, require_approved
from digestguard.reference import fold_public_mirror, public_mirror, try_parse_reference
from integrations import ecr
from tasks.connect import Connections, gar_package

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
        if f.mirror and f.verdict in ("compromised", "suspect"):
            _mirror_item(items, f, advisory)
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
                                 params={"registry": f.source, "repository": repo, "digest": d,
                                         "where": f"{_registry_where(inventory, f.source)}, repository {repo}, digest {d}"}))
        elif f.kind in ("ecr", "gar"):
            repo = _repo_of(f.location, f.source)
            t = f"{f.source}/{repo}@{f.digest}"
            items.setdefault(("delete-image", t), PlanItem(target=t, action="delete-image", kind=f.kind,
                             reason=f"malicious digest (tags {', '.join(f.detail.get('tags') or []) or 'none'})",
                             params={"registry": f.source, "repository": repo, "digest": f.digest,
                                     "where": f"{_registry_where(inventory, f.source)}, repository {repo}, digest {f.digest}"}))
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
    order = {"delete-manifest": 0, "delete-image": 1, "remove-image": 2, "prune-dangling": 3, "report-pod": 4,
             "report-mirror": 5}
    ordered = sorted(items.values(), key=lambda i: (order[i.action], i.target))
    return Plan(stage="purge", incident=incident, advisory=advisory.id, items=ordered, evidence=evidence, notes=notes)


PERSON_ACTIONS = ("report-pod", "report-mirror")  # items a person acts on; apply and verify say so, never silence


def _mirror_item(items: dict[tuple[str, str], PlanItem], f, advisory: Advisory) -> None:
    """A public Docker Hub mirror served (or may serve) the attack: one needs-person item per mirror and image."""
    pm = public_mirror(f.mirror)
    ref = try_parse_reference(f.reference) if f.reference else None
    folded = fold_public_mirror(ref)[0] if ref else None
    image = (advisory.image_for(ref) or advisory.image_for(folded)) if ref else None
    repo = image.repository if image else (folded.name if folded else f.reference or f.location)
    t = f"{f.mirror}/{repo.partition('/')[2] or repo}"
    item = items.get(("report-mirror", t))
    where = f"{f.kind} {f.source} {f.location}"
    if item is None:
        item = PlanItem(target=t, action="report-mirror", kind="mirror",
                        reason=(f"{f.mirror} is a public mirror of Docker Hub{f' run by {pm.operator}' if pm else ''}: "
                                "nobody here can purge it. Ask the mirror's operator to drop the malicious "
                                f"digests of {repo}, or stop pulling through it (pin by digest, or pull {repo} "
                                "directly)"),
                        params={"mirror": f.mirror, "image": repo, "docs": pm.docs if pm else None, "seen": []})
        items[("report-mirror", t)] = item
    if where not in item.params["seen"]:
        item.params["seen"] = sorted([*item.params["seen"], where])


def known_good_targets(detected: DetectResult, known_good: Mapping[str, str]) -> dict[str, str]:
    """Purge verification targets ``{registry/repo: digest}`` for every registry repository where something was
    compromised; ``known_good`` is ``{tag or '*': digest}`` (a tag's own digest first, then ``*``, then ``latest``)."""
    out: dict[str, str] = {}
    for f in detected.findings:
        if f.kind == "registry" and f.verdict == "compromised":
            tag = f.detail.get("tag")
            digest = (known_good.get(tag) if tag else None) or known_good.get("*") or known_good.get("latest")
            if digest:
                out.setdefault(f"{f.source}/{_repo_of(f.location, f.source)}", digest)
    return out


def _registry_where(inventory: Inventory, name: str) -> str:
    """``registry mirror (registry.example:5000)``, ``ECR mirror (account 1234, us-east-1)``: the registry precisely."""
    reg = next((r for r in inventory.registries if r.name == name), None)
    if reg is None:
        return f"registry {name}"
    if reg.kind == "ecr":
        bits = [f"account {reg.account_id}" if reg.account_id else "", reg.region or ""]
        return f"ECR {name} ({', '.join(b for b in bits if b) or 'default account and region'})"
    if reg.kind == "gar":
        bits = [f"project {reg.project}" if reg.project else "", reg.location or ""]
        return f"Artifact Registry {name} ({', '.join(b for b in bits if b) or 'default project'})"
    try:
        host = urlsplit(reg.url or "").netloc.rsplit("@", 1)[-1]
    except ValueError:
        host = ""
    label = "Docker Hub" if reg.kind == "dockerhub" else "registry"
    return f"{label} {name}" + (f" ({host})" if host else "")


def _repo_of(location: str, source: str) -> str:
    """``mirror/checkmarx/kics:latest`` or ``mirror/checkmarx/kics@sha256:..`` -> ``checkmarx/kics``."""
    rest = location[len(source) + 1:] if location.startswith(source + "/") else location
    rest = rest.split("@", 1)[0]
    if ":" in rest.rsplit("/", 1)[-1]:
        rest = rest.rsplit(":", 1)[0]
    return rest


def _apply_item(item: PlanItem, targets: Connections) -> dict:
    p = item.params
    if item.action == "delete-manifest":
        targets.registry(p["registry"]).delete_manifest(p["repository"], p["digest"])
        return {"digest": p["digest"]}
    if item.action == "delete-image":
        entry = targets.registry_entry(p["registry"])
        if item.kind == "ecr":
            res = ecr.batch_delete_images(targets.ecr(entry.name), p["repository"], [p["digest"]], registry_id=entry.account_id)
            if p["digest"] not in res.deleted_digests:
                failure = next(iter(res.failures), None)
                if failure is not None and "notfound" in str(getattr(failure, "code", "")).lower():
                    raise NotFound(item.target, "already gone")
                raise Refused(item.target, f"ECR did not delete it: {failure}")
            return {"digest": p["digest"]}
        done = targets.gar(entry.name).delete_version(gar_package(entry, p["repository"]), p["digest"])
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
                known_good: dict[str, str] | None = None, connections: Connections | None = None) -> StageResult:
    """Execute an approved purge plan, journaled and idempotent; then verify. ``known_good``: {registry/repo: digest}.

    ``connections``: the run's clients; without it the call opens its own and closes them at the end.
    """
    if connections is None:
        with Connections(inventory) as own:
            return apply_purge(plan, approval, inventory, journal, known_good=known_good, connections=own)
    targets = connections
    approval = require_approved(plan, approval)
    result = StageResult(stage=STAGE, plan_hash=plan.hash, approved_by=approval.approvers)
    approver = ",".join(approval.approvers)
    for item in plan.items:
        if item.action in PERSON_ACTIONS:
            result.actions.append(ActionOutcome(stage=STAGE, target=item.target, action=item.action, outcome="needs-person",
                                                detail={"reason": item.reason},
                                                error=item.reason if item.action == "report-mirror" else None))
            journal.record(plan.incident, STAGE, item.target, item.action, "skipped", detail={"needs": "person"}, approver=approver)
            continue
        if journal.is_done(plan.incident, STAGE, item.target, item.action):
            result.actions.append(ActionOutcome(stage=STAGE, target=item.target, action=item.action, outcome="already-done"))
            continue
        try:
            # ids only, written before acting: what a later run verifies, even with an empty plan after a crash
            with journal.step(plan.incident, STAGE, item.target, item.action, approver=approver,
                              detail={"item": _item_record(item)}) as rec:
                try:
                    rec.note(**_apply_item(item, targets))
                    outcome = "done"
                except NotFound:
                    rec.skipped(already_gone=True)
                    outcome = "already-done"
        except DigestguardError as e:  # refused, unreachable, auth: this item failed, the others go on
            result.actions.append(ActionOutcome(stage=STAGE, target=item.target, action=item.action, outcome="failed", error=str(e)))
            continue
        result.actions.append(ActionOutcome(stage=STAGE, target=item.target, action=item.action, outcome=outcome,
                                            detail=journal.get(plan.incident, STAGE, item.target, item.action).detail))
    earlier = [i for i in earlier_purged_items(journal, plan.incident) if (i.action, i.target) not in
               {(x.action, x.target) for x in plan.items}]
    checked = plan.model_copy(update={"items": [*plan.items, *earlier]})
    result.verification = _record_verification(journal, plan.incident, verify_purge(checked, targets, known_good or {}))
    if earlier:
        result.notes.append(f"verified {len(earlier)} deletion(s) an earlier run of this incident made")
    return result


def _item_record(item: PlanItem) -> dict:
    return {"kind": item.kind, "reason": item.reason, "params": dict(item.params)}


def earlier_purged_items(journal: Journal, incident: str) -> list[PlanItem]:
    """The deletions this incident's journal records as done (by any run), rebuilt as plan items to verify.

    A run that crashed after its last deletion leaves the next run an empty plan (detect no longer finds the
    digests): those deletions must still be verified, not reported as "nothing to do"."""
    out: list[PlanItem] = []
    for e in journal.entries(incident, STAGE):
        rec = e.detail.get("item") if isinstance(e.detail, dict) else None
        if e.action in _VERIFIED_ACTIONS and e.status in ("done", "skipped", "started") and isinstance(rec, dict):
            out.append(PlanItem(target=e.target, action=e.action, kind=str(rec.get("kind") or ""),
                                reason=str(rec.get("reason") or ""), params=dict(rec.get("params") or {})))
    return out


def _record_verification(journal: Journal, incident: str, outcomes: list[ActionOutcome]) -> list[ActionOutcome]:
    for v in outcomes:
        journal.record(incident, STAGE, v.target, v.action, "done" if v.outcome == "done" else "failed",
                       detail=v.detail, error=v.error)
    return outcomes


def reverify_purge(incident: str, advisory: str, inventory: Inventory, journal: Journal, connections: Connections, *,
                   known_good: dict[str, str] | None = None) -> StageResult | None:
    """An execute run whose purge plan is empty: verify what earlier runs deleted (None when they deleted nothing)."""
    earlier = earlier_purged_items(journal, incident)
    if not earlier:
        return None
    plan = Plan(stage=STAGE, incident=incident, advisory=advisory, items=earlier)
    result = StageResult(stage=STAGE, plan_hash=plan.hash, notes=[
        f"nothing left to delete; verified the {len(earlier)} deletion(s) an earlier run of this incident made"])
    result.actions = [ActionOutcome(stage=STAGE, target=i.target, action=i.action, outcome="already-done") for i in earlier]
    result.verification = _record_verification(journal, incident, verify_purge(plan, connections, known_good or {}))
    return result


_VERIFIED_ACTIONS = ("delete-manifest", "delete-image", "remove-image")


def verify_purge(plan: Plan, targets: Connections, known_good: dict[str, str]) -> list[ActionOutcome]:
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
            elif item.action == "report-mirror":  # cannot be checked from here: say so, never count it as verified
                out.append(ActionOutcome(stage=STAGE, target=item.target, action="verify-absent", outcome="needs-person",
                                         error=f"{p['mirror']} cannot be purged or checked by this run: confirm with its "
                                               "operator that the malicious digests are gone, or stop pulling through it",
                                         detail={"mirror": p["mirror"], "image": p["image"]}))
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


def _cloud_image_present(item: PlanItem, targets: Connections) -> bool:
    """Whether ECR / Artifact Registry still lists the digest."""
    p = item.params
    entry = targets.registry_entry(p["registry"])
    if item.kind == "ecr":
        found, _missing = ecr.describe_by_digest(targets.ecr(entry.name), p["repository"], [p["digest"]],
                                                 registry_id=entry.account_id)
        return bool(found)
    try:
        targets.gar(entry.name).get_version(gar_package(entry, p["repository"]), p["digest"])
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


def dry_run_result(plan: Plan) -> StageResult:
    """What a dry run reports: every action planned, nothing done."""
    return StageResult(stage=STAGE, dry_run=True, plan_hash=plan.hash,
                       actions=[ActionOutcome(stage=STAGE, target=i.target, action=i.action,
                                              outcome="needs-person" if i.action == "report-mirror" else "planned",
                                              error=i.reason if i.action == "report-mirror" else None)
                                for i in plan.items])


@task(name="purge", cache_policy=NO_CACHE, persist_result=False)
def purge_task(plan: Plan, approval: Approval, inventory: Inventory, journal: Journal, connections: Connections, *,
               known_good: dict[str, str] | None = None) -> StageResult:
    """Prefect task: apply the approved purge plan and verify it; failures are outcomes in the result (the flow
    ends Failed when any remain), never an exception that would hide the other items' record."""
    return apply_purge(plan, approval, inventory, journal, known_good=known_good, connections=connections)
