"""detect and purge through real parts: Debian's docker-registry (delete enabled and disabled) and podman's
Docker-compatible API service. The attack is re-enacted: clean images are pushed, then tags are overwritten
with an attacker index; the advisory names the attacker's digests."""

from __future__ import annotations

import pytest

from digestguard.advisory import Advisory
from digestguard.errors import PlanNotApproved
from digestguard.inventory import DockerEngine, Inventory, Registry
from digestguard.journal import Journal
from digestguard.plan import Approval
from tasks.detect import detect
from tasks.purge import apply_purge, plan_purge
from tests.support.registry import push_index

REPO = "checkmarx/kics"


def _advisory(attacks: dict[str, object], extra_child_only: object | None = None) -> Advisory:
    malicious = []
    for tag, idx in attacks.items():
        malicious.append({"digest": idx.digest, "kind": "index", "tags": [tag], "source": "test"})
        for plat, d in idx.children.items():
            malicious.append({"digest": d, "kind": "manifest", "platform": plat, "parent": idx.digest, "source": "test"})
    return Advisory.model_validate({
        "id": "test-kics", "title": "test", "window": {"start": "2026-04-22T12:35:00Z", "source": "test"},
        "images": [{"repository": REPO, "tags_overwritten": list(attacks), "malicious": malicious}],
    })


@pytest.fixture
def estate(registry, tmp_path):
    """A clean v2.1.19 and alpine, then the attacker overwrites latest and v2.1.20 with indexes."""
    base = registry.base_url
    clean_old = push_index(base, REPO, "v2.1.19")
    clean_alpine = push_index(base, REPO, "alpine")
    push_index(base, REPO, "latest")
    push_index(base, REPO, "v2.1.20")
    bad_latest = push_index(base, REPO, "latest")       # the overwrite
    bad_v2120 = push_index(base, REPO, "v2.1.20")
    adv = _advisory({"latest": bad_latest, "v2.1.20": bad_v2120})
    inv = Inventory(registries=[Registry(name="mirror", url=base)], base_dir=str(tmp_path))
    return adv, inv, bad_latest, bad_v2120, clean_old, clean_alpine


def test_detect_reports_exactly_the_overwritten_tags(estate):
    adv, inv, bad_latest, bad_v2120, clean_old, _ = estate
    res = detect(adv, inv)
    compromised = {f.location: f for f in res.findings if f.verdict == "compromised"}
    assert f"mirror/{REPO}:latest" in compromised and f"mirror/{REPO}:v2.1.20" in compromised
    assert compromised[f"mirror/{REPO}:latest"].digest == bad_latest.digest
    assert compromised[f"mirror/{REPO}:latest"].match_kind == "index"
    assert not any(f.location.endswith(":v2.1.19") for f in res.findings)  # unaffected and clean: not news
    assert all(f.verdict != "unknown" for f in res.findings)


def test_child_digest_match_through_an_index_the_advisory_does_not_name(registry, tmp_path):
    """A host holding only a per-platform child: the advisory lists the child, the tag points at a new index."""
    base = registry.base_url
    repo = "childcase/kics"
    bad = push_index(base, repo, "latest")
    adv = Advisory.model_validate({
        "id": "child", "title": "t", "window": {"start": "2026-04-22T12:35:00Z", "source": "t"},
        "images": [{"repository": repo, "tags_overwritten": ["latest"], "malicious": [
            {"digest": bad.children["linux/arm64"], "kind": "manifest", "platform": "linux/arm64",
             "parent": "sha256:" + "1" * 64, "source": "t"}]}]})
    res = detect(adv, Inventory(registries=[Registry(name="r", url=base)], base_dir=str(tmp_path)))
    [f] = [f for f in res.findings if f.location == f"r/{repo}:latest"]
    assert f.verdict == "compromised" and f.match_kind == "manifest" and f.platform == "linux/arm64"


def test_unreachable_registry_is_a_finding_not_a_skip(tmp_path):
    adv = Advisory.model_validate({
        "id": "x", "title": "t", "window": {"start": "2026-04-22T12:35:00Z", "source": "t"},
        "images": [{"repository": REPO, "tags_overwritten": ["latest"], "malicious": [{"digest": "sha256:" + "2" * 64, "source": "t"}]}]})
    inv = Inventory(registries=[Registry(name="down", url="http://127.0.0.1:9")], base_dir=str(tmp_path))
    res = detect(adv, inv)
    assert res.findings and all(f.verdict in ("unknown", "suspect") for f in res.findings)
    assert any("down" in f.location for f in res.findings)


def test_engine_detect_and_purge_end_to_end(estate, podman_engine, registry, tmp_path):
    adv, inv, bad_latest, bad_v2120, clean_old, clean_alpine = estate
    from integrations.docker_engine import DockerEngine as Engine

    with Engine(podman_engine.url) as eng:
        eng.pull(registry.ref(REPO, "latest"))
        eng.pull(registry.ref(REPO, "alpine"))
        bad_img = eng.get_image(registry.ref(REPO, "latest"))
        eng.sdk.api.create_container(bad_img.id, name="scan-job")  # cannot be started here; created is enough
    inv = inv.model_copy(update={"docker_engines": [DockerEngine(name="runner-1", url=podman_engine.url)]})
    # the inventory's registry is reached under its loopback host name too
    res = detect(adv, inv)
    kinds = {(f.kind, f.verdict) for f in res.findings}
    assert ("engine-image", "compromised") in kinds and ("engine-container", "compromised") in kinds
    assert ("engine-image", "clean") in kinds

    journal = Journal(tmp_path / "journal.sqlite")
    plan = plan_purge("inc-1", adv, res, inv, remove_containers=True)
    actions = {(i.action, i.target) for i in plan.items}
    assert ("delete-manifest", f"mirror/{REPO}@{bad_latest.digest}") in actions
    assert all(("delete-manifest", f"mirror/{REPO}@{d}") in actions for d in bad_latest.children.values())
    with pytest.raises(PlanNotApproved):
        apply_purge(plan, Approval(decision="approve", approvers=["alice"], plan_hash="sha256:" + "0" * 64), inv, journal)

    approval = Approval(decision="approve", approvers=["alice"], plan_hash=plan.hash)
    known_good = {f"mirror/{REPO}": clean_alpine.digest}
    out = apply_purge(plan, approval, inv, journal, known_good=known_good)
    assert out.ok, [a for a in out.actions + out.verification if a.outcome == "failed"]
    assert {v.action for v in out.verification} == {"verify-absent", "verify-known-good"}

    from integrations.registry import RegistryClient
    with RegistryClient(registry.host, base_url=registry.base_url) as reg:
        assert not reg.exists(REPO, bad_latest.digest) and not reg.exists(REPO, bad_v2120.digest)
        assert reg.resolve(REPO, "v2.1.19") == clean_old.digest     # the clean image still pulls
        assert reg.resolve(REPO, "alpine") == clean_alpine.digest
    with Engine(podman_engine.url) as eng:
        assert not eng.images_with_digest(bad_latest.digest)
        assert eng.images_with_digest(clean_alpine.digest)           # the clean one stays

    again = apply_purge(plan, approval, inv, journal, known_good=known_good)  # a re-run deletes nothing twice
    assert {a.outcome for a in again.actions} <= {"already-done"}
    assert all(e.attempts == 1 for e in journal.entries("inc-1", "purge") if e.action == "delete-manifest")


def test_registry_with_delete_disabled_is_reported_with_the_setting(registry_nodelete, tmp_path):
    base = registry_nodelete.base_url
    bad = push_index(base, REPO, "latest")
    adv = _advisory({"latest": bad})
    inv = Inventory(registries=[Registry(name="locked", url=base)], base_dir=str(tmp_path))
    res = detect(adv, inv)
    plan = plan_purge("inc-2", adv, res, inv)
    out = apply_purge(plan, Approval(decision="approve", approvers=["a"], plan_hash=plan.hash), inv, Journal(tmp_path / "j.db"))
    failed = [a for a in out.actions if a.outcome == "failed"]
    assert failed and all("storage.delete.enabled" in a.error for a in failed)
    assert any(v.outcome == "failed" for v in out.verification)  # still present: verification says so loudly
