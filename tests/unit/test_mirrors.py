"""Public Docker Hub mirrors (issue 20): trivy reached through ``mirror.gcr.io`` is the advisory's image everywhere.

Real parts throughout: the shipped trivy and kics packs, a real checkout on disk (a GitHub workflow, a Helm values
file shaped like trivy-operator's, a Dockerfile), real-format GitHub Actions job logs read through the folder CI
source, detect / lint / pin / assess / purge as the CLI and the flow call them, and the SQLite journal. No registry
is needed: the mirror is never contacted (it is not ours to read or purge), and every verdict here comes from the
estate's own files and logs.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from digestguard.advisory import Advisory, list_packs, load_advisory
from digestguard.findings import DetectResult, Finding
from digestguard.inventory import CISource, Inventory, Repository
from digestguard.journal import Journal
from digestguard.plan import Approval
from digestguard.reference import fold_public_mirror, parse_reference
from tasks.assess import ExposureWindow, classify_jobs
from tasks.ci_logs import read_ci_sources
from tasks.detect import detect
from tasks.lint import lint_tree
from tasks.pin import apply_pins, plan_pins
from tasks.pull_requests import pull_request_body
from tasks.purge import apply_purge, dry_run_result, plan_purge
from tasks.report.model import IncidentReport

UTC = timezone.utc
GOOD = "sha256:bcc376de8d77cfe086a917230e818dc9f8528e3c852f7b1aff648949b6258d1c"  # vuls PR #2489
BAD_0696 = "sha256:425cd3e1a2846ac73944e891250377d2b03653e6f028833e30fc00c1abbc6d33"
PR = "https://github.com/future-architect/vuls/pull/2489"

WORKFLOW = """name: scan
on: [push]
jobs:
  trivy:
    runs-on: ubuntu-latest
    container:
      image: mirror.gcr.io/aquasec/trivy:0.69.6
    steps:
      - run: docker run --rm mirror.gcr.io/aquasec/trivy:latest image alpine:3.20
"""
# trivy-operator's chart: trivy.image.registry / repository / tag, no digest key
HELM = """trivy:
  image:
    # -- registry of the Trivy image
    registry: mirror.gcr.io
    # -- repository of the Trivy image
    repository: aquasec/trivy
    # -- tag version of the Trivy image
    tag: 0.69.6
    # -- imagePullSecret is the secret name to be used when pulling trivy image from private registries
    imagePullSecret: ~
"""


@pytest.fixture(scope="module")
def trivy() -> Advisory:
    return load_advisory("trivy-2026-03")


def gh_log(at: datetime, image: str, digest: str | None) -> str:
    """A GitHub Actions job log (runner timestamps) pulling ``image`` and printing ``digest`` when given."""
    tag = image.rsplit(":", 1)[1]
    lines = [f"##[group]Run docker pull {image}", f"docker pull {image}", "##[endgroup]",
             f"{tag}: Pulling from {image.rsplit(':', 1)[0]}"]
    if digest:
        lines.append(f"Digest: {digest}")
    lines.append(f"Status: Downloaded newer image for {image}")
    out, t = [], at
    for line in lines:
        out.append(t.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z " + line)
        t += timedelta(milliseconds=250)
    return "\n".join(out) + "\n"


def checkout(root: Path) -> Path:
    (root / ".github/workflows").mkdir(parents=True)
    (root / ".github/workflows/scan.yml").write_text(WORKFLOW)
    (root / "charts/trivy-operator").mkdir(parents=True)
    (root / "charts/trivy-operator/values.yaml").write_text(HELM)
    return root


# --------------------------------------------------------------------------- the one match


def test_the_mirror_folds_into_the_docker_hub_name_and_is_named(trivy):
    kics = load_advisory("kics-2026-04")
    hit = trivy.match(parse_reference("mirror.gcr.io/aquasec/trivy:0.69.6"))
    assert hit is not None and hit.image.repository == "docker.io/aquasec/trivy"
    assert hit.mirror == "mirror.gcr.io" and hit.public and "Google" in (hit.operator or "")
    # the fold is generic: kics has no mirror alias in its pack and is still reached through the mirror
    k = kics.match(parse_reference("MIRROR.GCR.IO/checkmarx/kics:latest"))
    assert k is not None and k.mirror == "mirror.gcr.io" and k.image.repository == "docker.io/checkmarx/kics"
    # the canonical name and a publisher alias are no mirror; an unrelated path under the mirror is no match
    assert trivy.match(parse_reference("aquasec/trivy:0.69.6")).mirror is None
    assert trivy.match(parse_reference("ghcr.io/aquasecurity/trivy:0.69.4")).mirror is None
    assert trivy.match(parse_reference("mirror.gcr.io/aquasecurity/trivy:0.69.4")) is None
    assert kics.match(parse_reference("mirror.gcr.io/library/kics")) is None
    # official images: mirror.gcr.io/alpine is Docker Hub's library/alpine
    assert fold_public_mirror(parse_reference("mirror.gcr.io/alpine:3.20"))[0].name == "docker.io/library/alpine"
    # an inventory pull-through cache still matches by trailing path, and is not a public mirror
    c = kics.match(parse_reference("127.0.0.1:5000/mirror/checkmarx/kics:latest"), caches={"127.0.0.1:5000"})
    assert c is not None and c.via == "127.0.0.1:5000" and c.mirror is None
    assert kics.match(parse_reference("127.0.0.1:5000/mirror/checkmarx/kics:latest")) is None


def test_pack_facts_keep_their_source_and_the_known_good_its_method(trivy):
    kg = trivy.images[0].known_good_for("0.69.6")
    assert kg is not None and kg.tag == "0.69.3" and kg.digest == GOOD
    assert PR in kg.source and "cosign" in kg.method and "Rekor" in kg.method.replace("rekor", "Rekor")
    assert kg.repository == "ghcr.io/aquasecurity/trivy"
    assert set(kg.replaces) == {"0.69.4", "0.69.5", "0.69.6", "latest"} <= set(trivy.images[0].affected_tags)
    assert not trivy.is_malicious(GOOD)
    assert "mirror.gcr.io/aquasec/trivy" in trivy.images[0].aliases
    for adv in list_packs():
        for img in adv.images:
            assert all(m.source.strip() for m in img.malicious)
            for k in img.known_good:
                assert k.source.strip()
                assert not k.digest or (k.method or "").strip(), f"{adv.id}: known-good {k.digest} without a method"
        assert all(i.source.strip() for i in adv.network) and all(f.source.strip() for f in adv.files)
        assert all(w.source.strip() for w in adv.windows()) and all(a.source.strip() for a in adv.actions)


def test_replaces_without_a_digest_is_refused():
    from digestguard.advisory import parse_advisory
    from digestguard.errors import InputError

    with pytest.raises(InputError, match="replaces"):
        parse_advisory({"id": "x", "title": "t", "window": {"start": "2026-01-01T00:00:00Z", "source": "s"},
                        "images": [{"repository": "a/b", "malicious": [{"digest": BAD_0696, "source": "s"}],
                                    "known_good": [{"tag": "1", "replaces": ["2"], "source": "s"}]}]}, "x.yaml")


# --------------------------------------------------------------------------- lint


def test_lint_flags_workflow_and_helm_through_the_mirror_as_the_advisorys_image(tmp_path, trivy):
    root = checkout(tmp_path / "repo")
    off = {(o.path, o.line): o for o in lint_tree(root, [trivy])}
    wf = off[(".github/workflows/scan.yml", 7)]
    assert wf.kind == "unpinned" and wf.advisory == trivy.id and wf.target == "docker.io/aquasec/trivy"
    assert wf.mirror == "mirror.gcr.io" and "mirror.gcr.io" in wf.reason
    assert wf.suggestion == f"mirror.gcr.io/aquasec/trivy:0.69.3@{GOOD}"
    assert off[(".github/workflows/scan.yml", 9)].suggestion == f"mirror.gcr.io/aquasec/trivy:0.69.3@{GOOD}"
    helm = off[("charts/trivy-operator/values.yaml", 6)]
    assert helm.advisory == trivy.id and helm.mirror == "mirror.gcr.io" and helm.target == "docker.io/aquasec/trivy"
    assert helm.suggestion == f"tag: 0.69.3 and digest: {GOOD}"


# --------------------------------------------------------------------------- pin


@pytest.mark.parametrize("tag", ["0.69.4", "0.69.5", "0.69.6", "latest"])
def test_attacker_tags_pin_to_0693_at_the_known_good_digest_and_the_pr_says_why(tmp_path, trivy, tag):
    root = tmp_path / "repo"
    root.mkdir()
    (root / "Dockerfile").write_text(f"FROM mirror.gcr.io/aquasec/trivy:{tag} AS trivy\nFROM aquasec/trivy:{tag}\n")
    plan = plan_pins(root, trivy)
    assert [c.after for c in plan.changes] == [f"mirror.gcr.io/aquasec/trivy:0.69.3@{GOOD}", f"aquasec/trivy:0.69.3@{GOOD}"]
    assert [c.tag_changed_from for c in plan.changes] == [tag, tag]
    assert [c.mirror for c in plan.changes] == ["mirror.gcr.io", None]
    apply_pins(plan)
    assert (root / "Dockerfile").read_text() == (f"FROM mirror.gcr.io/aquasec/trivy:0.69.3@{GOOD} AS trivy\n"
                                                 f"FROM aquasec/trivy:0.69.3@{GOOD}\n")
    body = pull_request_body(plan, trivy, "inc-20")
    how = "overwritten" if tag == "latest" else "created"
    assert "### The tag itself changes" in body
    assert f"`{tag}` → `0.69.3`: `{tag}` was {how} by the attacker" in body
    # the pack's source is outside text in a PR body: shown, defanged, never a link (issue 15: links only to
    # the inventory's URLs)
    assert PR.replace("://", "[:]//").replace("github.com", "github[.]com") in body and "cosign" in body and "ghcr.io/aquasecurity/trivy" in body
    assert "### Pulled through a public mirror" in body and "keeps the mirror in the name" in body
    assert not plan_pins(root, trivy).changes  # pinned: nothing left to do


def test_helm_values_through_the_mirror_need_a_person_with_the_tag_and_digest(tmp_path, trivy):
    root = checkout(tmp_path / "repo")
    plan = plan_pins(root, trivy)
    dec = [d for d in plan.needs_decision if d.path == "charts/trivy-operator/values.yaml"]
    assert len(dec) == 1 and dec[0].mirror == "mirror.gcr.io" and dec[0].suggestion == f"tag: 0.69.3 and digest: {GOOD}"
    body = pull_request_body(plan, trivy, "inc-20")
    assert f"Suggested: `tag: 0.69.3 and digest: {GOOD}`" in body


def test_pr_body_escapes_pack_text(tmp_path, trivy):
    """A pack's method/source is outside text: it cannot break the table or inject HTML into the PR body."""
    img = trivy.images[0]
    kg = img.known_good[0].model_copy(update={"method": "a | b <img src=x onerror=alert(1)>\ninjected"})
    evil = trivy.model_copy(update={"images": [img.model_copy(update={"known_good": [kg]})]})
    root = tmp_path / "repo"
    root.mkdir()
    (root / "Dockerfile").write_text("FROM aquasec/trivy:0.69.6\n")
    body = pull_request_body(plan_pins(root, evil), evil, "inc-20")
    assert "<img" not in body and "&lt;img" in body and "a \\| b" in body and "\ninjected" not in body


# --------------------------------------------------------------------------- detect and assess


def test_detect_finds_workflow_helm_and_ci_log_through_the_mirror(tmp_path, trivy):
    root = checkout(tmp_path / "repo")
    (root / "charts/appversion").mkdir(parents=True)
    (root / "charts/appversion/values.yaml").write_text(
        "image:\n  registry: mirror.gcr.io\n  repository: aquasec/trivy\n  tag: \"\"\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    at = datetime(2026, 3, 22, 16, 0, tzinfo=UTC)
    (logs / "scan-1.log").write_text(gh_log(at, "mirror.gcr.io/aquasec/trivy:0.69.6", BAD_0696))
    inv = Inventory(repositories=[Repository(name="acme/infra", kind="local", path=str(root))],
                    ci_logs=[CISource(name="exported", kind="folder", path=str(logs))], base_dir=str(tmp_path))
    res = detect(trivy, inv)
    by = {(f.kind, f.location): f for f in res.findings}
    wf = by[("config", ".github/workflows/scan.yml:7")]
    assert wf.verdict == "suspect" and wf.mirror == "mirror.gcr.io" and wf.detail["tag"] == "0.69.6"
    helm = by[("config", "charts/trivy-operator/values.yaml:6")]
    assert helm.verdict == "suspect" and helm.mirror == "mirror.gcr.io" and helm.reference == "mirror.gcr.io/aquasec/trivy:0.69.6"
    empty = by[("config", "charts/appversion/values.yaml:3")]  # no tag: the chart's appVersion decides, not "clean"
    assert empty.verdict == "suspect" and empty.detail["tag"] is None and "appVersion" in empty.detail["note"]
    ci = [f for f in res.findings if f.kind == "ci-log"]
    assert len(ci) == 1 and ci[0].verdict == "compromised" and ci[0].digest == BAD_0696 and ci[0].mirror == "mirror.gcr.io"
    assert all(c.state == "checked" for c in res.coverage) and res.verdict == "found"


def test_assess_confirms_the_mirror_pull_and_does_not_clear_it_after_the_window(tmp_path, trivy):
    logs = tmp_path / "logs"
    logs.mkdir()
    during = datetime(2026, 3, 22, 16, 0, tzinfo=UTC)
    after = datetime(2026, 3, 25, 9, 0, tzinfo=UTC)  # Docker Hub fixed; the mirror still served 0.69.6
    (logs / "a-during.log").write_text(gh_log(during, "mirror.gcr.io/aquasec/trivy:0.69.6", BAD_0696))
    (logs / "b-after-mirror.log").write_text(gh_log(after, "mirror.gcr.io/aquasec/trivy:0.69.6", None))
    (logs / "c-after-hub.log").write_text(gh_log(after, "aquasec/trivy:0.69.6", None))
    inv = Inventory(ci_logs=[CISource(name="exported", kind="folder", path=str(logs))], base_dir=str(tmp_path))
    read = read_ci_sources(inv, trivy)
    window = ExposureWindow(trivy.window.start, trivy.window.end, "pack")
    jobs = {Path(j.job).name: j for j in classify_jobs(read.jobs, trivy, window)}
    assert jobs["a-during.log"].verdict == "confirmed" and jobs["a-during.log"].mirror == "mirror.gcr.io"
    assert jobs["b-after-mirror.log"].verdict == "probable" and "public mirror mirror.gcr.io" in jobs["b-after-mirror.log"].reason
    assert jobs["c-after-hub.log"].verdict == "clear" and jobs["c-after-hub.log"].mirror is None
    from digestguard.findings import ExposureReport

    rep = IncidentReport.for_advisory("inc-20", trivy, started_at=during, detect=DetectResult(advisory=trivy.id),
                                      exposure=ExposureReport(advisory=trivy.id, window_start=window.start,
                                                              jobs=list(jobs.values())))
    rows = {Path(r["job"]).name: r for r in rep.tables()["exposed-jobs"]}
    assert rows["a-during.log"]["mirror"] == "mirror.gcr.io" and rows["c-after-hub.log"]["mirror"] == ""


# --------------------------------------------------------------------------- purge and verify


def _detected() -> DetectResult:
    return DetectResult(advisory="trivy-2026-03", findings=[
        Finding(source="exported", kind="ci-log", location="scan-1.log:6", reference="mirror.gcr.io/aquasec/trivy:0.69.6",
                digest=BAD_0696, matched=BAD_0696, match_kind="index", verdict="compromised", mirror="mirror.gcr.io"),
        Finding(source="acme/infra", kind="config", location="charts/trivy-operator/values.yaml:6",
                reference="mirror.gcr.io/aquasec/trivy:0.69.6", verdict="suspect", mirror="mirror.gcr.io"),
        Finding(source="acme/infra", kind="config", location="Dockerfile:1", reference="aquasec/trivy:0.69.6",
                verdict="suspect")])


def test_purge_plan_apply_and_verify_say_a_person_must_deal_with_the_mirror(tmp_path, trivy):
    inv = Inventory(base_dir=str(tmp_path))
    plan = plan_purge("inc-20", trivy, _detected(), inv)
    mirror = [i for i in plan.items if i.action == "report-mirror"]
    assert len(mirror) == 1 and mirror[0].target == "mirror.gcr.io/aquasec/trivy" and mirror[0].kind == "mirror"
    assert "Ask the mirror's operator" in mirror[0].reason and "stop pulling through it" in mirror[0].reason
    assert mirror[0].params["seen"] == ["ci-log exported scan-1.log:6", "config acme/infra charts/trivy-operator/values.yaml:6"]
    assert "Ask the mirror's operator" in plan.markdown()
    dry = dry_run_result(plan)
    assert [a.outcome for a in dry.actions if a.action == "report-mirror"] == ["needs-person"]

    journal = Journal(str(tmp_path / "j.db"))
    res = apply_purge(plan, Approval(decision="approve", approvers=["alice"], plan_hash=plan.hash), inv, journal)
    assert [(a.action, a.outcome) for a in res.actions] == [("report-mirror", "needs-person")]
    assert [(v.action, v.outcome) for v in res.verification] == [("verify-absent", "needs-person")]
    assert "cannot be purged" in res.verification[0].error
    report = IncidentReport.for_advisory("inc-20", trivy, started_at=datetime(2026, 3, 25, tzinfo=UTC), purge=res)
    todo = report.all_needs_person()
    assert any("report-mirror mirror.gcr.io/aquasec/trivy needs a person" in t and "operator" in t for t in todo)
    assert any("verify-absent mirror.gcr.io/aquasec/trivy needs a person" in t for t in todo)
    again = apply_purge(plan, Approval(decision="approve", approvers=["alice"], plan_hash=plan.hash), inv, journal)
    assert [a.outcome for a in again.actions] == ["needs-person"]  # a re-run never turns it into "done"


def test_pods_and_registries_reached_through_the_mirror_name_it(tmp_path, trivy, monkeypatch):
    """Kubernetes through a local server speaking the Kubernetes API's pod-list JSON (no cluster runs here), with the
    real kubernetes client; an inventory registry whose URL is the public mirror marks its findings too."""
    from digestguard.inventory import KubernetesCluster, Registry
    from tasks.detect import _through_public_mirror
    from tests.fakes.kubernetes import KubeServer, make_pod

    monkeypatch.setenv("DG_K8S_TOKEN", "k8s-token")
    with KubeServer(token="k8s-token") as kube:
        kube.state.reset([
            make_pod("security", "trivy-scan-1", [("trivy", "mirror.gcr.io/aquasec/trivy:0.69.6",
                                                   f"docker-pullable://mirror.gcr.io/aquasec/trivy@{BAD_0696}")]),
            make_pod("web", "nginx", [("nginx", "mirror.gcr.io/library/nginx:1.27",
                                       "mirror.gcr.io/library/nginx@sha256:" + "e" * 64)]),
        ])
        inv = Inventory(kubernetes=[KubernetesCluster(name="prod", url=kube.url, token="env:DG_K8S_TOKEN")],
                        base_dir=str(tmp_path))
        res = detect(trivy, inv)
    assert [(f.location, f.verdict, f.mirror) for f in res.findings] == [
        ("security/trivy-scan-1/trivy", "compromised", "mirror.gcr.io")]
    f = Finding(source="gmirror", kind="registry", location="gmirror/aquasec/trivy:0.69.6", verdict="compromised",
                digest=BAD_0696)
    assert _through_public_mirror(Registry(name="gmirror", kind="distribution", url="https://mirror.gcr.io"),
                                  [f])[0].mirror == "mirror.gcr.io"
    assert _through_public_mirror(Registry(name="cache", kind="distribution", url="http://127.0.0.1:5000"),
                                  [f])[0].mirror is None


def test_purge_verification_and_watch_alerts_know_the_replacement_and_the_mirror(trivy):
    from flows.incident_response import known_good_map
    from tasks.watch.alerts import _event_detail
    from tasks.watch.events import MaliciousEvent

    kg = known_good_map(trivy, None)
    assert kg["0.69.3"] == GOOD and kg["0.69.6"] == GOOD and kg["latest"] == GOOD
    assert known_good_map(trivy, ["latest=sha256:" + "1" * 64])["latest"] == "sha256:" + "1" * 64  # --to wins
    ev = MaliciousEvent(reference="mirror.gcr.io/aquasec/trivy:0.69.6", digest=BAD_0696, matched=BAD_0696,
                        advisory=trivy.id, mirror="mirror.gcr.io")
    assert "through the public mirror mirror.gcr.io" in ev.summary()
    assert "nobody here can purge it" in _event_detail(ev)


def test_the_quarantine_gate_lets_the_packs_known_good_through_and_nothing_else(trivy):
    """The pin PR moves trivy to 0.69.3@bcc376de: the gate on that PR must not refuse the pack's own reviewed digest,
    through the mirror or not; any other new trivy digest of unknown push time is still refused."""
    from tasks.quarantine import Update, check_updates

    ups = [Update(path="Dockerfile", line=1, kind="image", name=n, reference=f"{n}:0.69.3@{d}", new=d)
           for n in ("mirror.gcr.io/aquasec/trivy", "docker.io/aquasec/trivy") for d in (GOOD, "sha256:" + "7" * 64)]
    refused, _ = check_updates(ups, [trivy])
    assert sorted((r.target, r.reference.rsplit("@", 1)[1]) for r in refused) == [
        ("docker.io/aquasec/trivy", "sha256:" + "7" * 64), ("mirror.gcr.io/aquasec/trivy", "sha256:" + "7" * 64)]
