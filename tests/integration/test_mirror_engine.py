"""detect on a REAL podman engine (Docker Engine API) whose image is tagged as pulled through mirror.gcr.io.

The image comes from the session's real docker-registry (standing in for the mirror's content: the mirror itself
is never contacted) and is tagged ``mirror.gcr.io/aquasec/trivy:0.69.6`` in the engine, the name a node that pulls
through Google's mirror shows. The finding is the advisory's image, compromised, and names the mirror; the purge
plan removes the engine's copy and asks a person about the mirror.
"""

from __future__ import annotations

from digestguard.advisory import load_advisory
from digestguard.findings import DetectResult
from digestguard.inventory import DockerEngine as EngineEntry, Inventory
from integrations.docker_engine import DockerEngine
from tasks.detect import detect_engine, mirror_hosts
from tasks.purge import plan_purge
from tests.support.registry import push_index


def test_engine_image_tagged_through_the_mirror_is_found_and_named(podman_engine, registry, tmp_path):
    idx = push_index(registry.base_url, "mirrortest/trivy", "0.69.6")
    trivy = load_advisory("trivy-2026-03")
    img0 = trivy.images[0]
    bad = img0.malicious[0].model_copy(update={"digest": idx.digest, "tags": ["0.69.6"]})
    adv = trivy.model_copy(update={"images": [img0.model_copy(update={"malicious": [bad]})]})
    with DockerEngine(podman_engine.url) as eng:
        pulled = eng.pull(registry.ref("mirrortest/trivy", "0.69.6"))
        eng.sdk.images.get(pulled.id).tag("mirror.gcr.io/aquasec/trivy", "0.69.6")
        entry = EngineEntry(name="node-1", url=podman_engine.url)
        inv = Inventory(docker_engines=[entry], base_dir=str(tmp_path))
        found = [f for f in detect_engine(entry, adv, mirror_hosts(inv), eng) if f.kind == "engine-image"]
        eng.sdk.images.remove("mirror.gcr.io/aquasec/trivy:0.69.6")
    assert len(found) == 1 and found[0].verdict == "compromised" and found[0].mirror == "mirror.gcr.io"
    assert found[0].reference == "mirror.gcr.io/aquasec/trivy:0.69.6"
    plan = plan_purge("inc-20", adv, DetectResult(advisory=adv.id, findings=found), inv)
    assert sorted(i.action for i in plan.items) == ["prune-dangling", "remove-image", "report-mirror"]
