"""detect and purge for ECR (moto in server mode) and Artifact Registry (a local server speaking its REST API,
since no Artifact Registry can run here).

ECR in moto computes imageDigest from the layers, not the manifest bytes as real ECR does: the test reads the
digest back from moto and builds its advisory from that, so nothing here depends on the quirk.
"""

from __future__ import annotations

import json

import boto3

from digestguard.advisory import Advisory
from digestguard.inventory import Inventory, Registry
from digestguard.journal import Journal
from digestguard.plan import Approval
from tasks.detect import detect
from tasks.purge import apply_purge, plan_purge
from tests.fakes.gar import start_gar


def _adv(bad: str, repo: str) -> Advisory:
    return Advisory.model_validate({
        "id": "cloud", "title": "t", "window": {"start": "2026-04-22T12:35:00Z", "source": "t"},
        "images": [{"repository": repo, "tags_overwritten": ["latest"], "malicious": [{"digest": bad, "source": "t"}]}]})


def _manifest(n: int) -> str:
    return json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                       "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 10,
                                  "digest": "sha256:" + f"{n}" * 64},
                       "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 10,
                                   "digest": "sha256:" + f"{n + 1}" * 64}]})


def test_ecr_detect_and_purge(moto_server, tmp_path):
    ecr = boto3.client("ecr", endpoint_url=moto_server, region_name="us-east-1")
    ecr.create_repository(repositoryName="checkmarx/kics")
    bad = ecr.put_image(repositoryName="checkmarx/kics", imageManifest=_manifest(1), imageTag="latest")["image"]["imageId"]["imageDigest"]
    good = ecr.put_image(repositoryName="checkmarx/kics", imageManifest=_manifest(3), imageTag="v2.1.19")["image"]["imageId"]["imageDigest"]
    inv = Inventory(registries=[Registry(name="ecr-prod", kind="ecr", region="us-east-1", url=moto_server)], base_dir=str(tmp_path))
    adv = _adv(bad, "checkmarx/kics")
    res = detect(adv, inv)
    [f] = [f for f in res.findings if f.verdict == "compromised"]
    assert f.kind == "ecr" and f.digest == bad and f.detail["tags"] == ["latest"]
    plan = plan_purge("inc-ecr", adv, res, inv)
    assert [i.action for i in plan.items] == ["delete-image"]
    out = apply_purge(plan, Approval(decision="approve", approvers=["a"], plan_hash=plan.hash), inv, Journal(tmp_path / "j.db"))
    assert out.ok and [v.outcome for v in out.verification] == ["done"]
    left = {d["imageDigest"] for d in ecr.describe_images(repositoryName="checkmarx/kics")["imageDetails"]}
    assert left == {good}


def test_gar_detect_and_purge_deletes_tags_first(tmp_path, monkeypatch):
    bad, good = "sha256:" + "b" * 64, "sha256:" + "c" * 64
    gs = start_gar()
    try:
        gs.add_image("acme", "us", "mirror", "checkmarx/kics", bad, ["latest", "alpine"])
        gs.add_image("acme", "us", "mirror", "checkmarx/kics", good, ["v2.1.19"])
        monkeypatch.setenv("DG_GAR_TOKEN", "gar-test-token")
        inv = Inventory(registries=[Registry(name="mirror", kind="gar", project="acme", location="us", url=gs.url,
                                             token="env:DG_GAR_TOKEN")], base_dir=str(tmp_path))
        adv = _adv(bad, "checkmarx/kics")
        res = detect(adv, inv)
        assert [f.digest for f in res.findings if f.verdict == "compromised"] == [bad]
        plan = plan_purge("inc-gar", adv, res, inv)
        out = apply_purge(plan, Approval(decision="approve", approvers=["a"], plan_hash=plan.hash), inv, Journal(tmp_path / "j.db"))
        assert out.ok, out
        assert sorted(out.actions[0].detail["tags_deleted"]) == ["alpine", "latest"]
        res2 = detect(adv, inv)
        assert not [f for f in res2.findings if f.verdict == "compromised"]
    finally:
        gs.stop()
