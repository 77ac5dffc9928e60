"""The Kubernetes integration, driven through the real ``kubernetes`` Python client.

No real cluster can run here (no kubelet; containers cannot even start under
podman), so these tests use ``tests/fakes/kubernetes.py``: a local server
speaking the Kubernetes API's JSON for pod lists (``/api/v1/pods``,
``/api/v1/namespaces/{ns}/pods``) with the real ``limit``/``continue`` paging,
bearer-token check and ``Status`` error bodies. Everything between our
function and the socket is the vendor's client, unchanged.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr

from digestguard.errors import AuthError, InputError, IntegrationError, RateLimited, Unavailable
from integrations.kubernetes import (
    ClusterConfig,
    digest_from_image_id,
    list_running_containers,
    workload_of,
)
from tests.fakes.kubernetes import KubeServer, make_pod

TOKEN = "kube-test-token-5f1d0c"  # fake; asserted never to appear in errors
KICS_BAD = "sha256:a0d9366f6f0166dcbf92fcdc98e1a03d2e6210e8d7e8573f74d50849130651a0"
KICS_BAD_AMD64 = "sha256:26e8e9c5e53c972997a278ca6e12708b8788b70575ca013fd30bfda34ab5f48f"
TRIVY = "sha256:" + "1" * 64
NGINX = "sha256:" + "2" * 64
BUSYBOX = "sha256:" + "3" * 64
LOCAL_ID = "sha256:" + "4" * 64


def _estate() -> list[dict]:
    """A small estate: Deployment, CronJob, StatefulSet, DaemonSet, bare pod, a pending pull, init containers."""
    return [
        make_pod("ci", "kics-scanner-7d9f8b6c5-abcde",
                 [("kics", "checkmarx/kics:latest", f"docker-pullable://checkmarx/kics@{KICS_BAD}")],
                 init_containers=[("fetch", "busybox:1.36", f"docker.io/library/busybox@{BUSYBOX}")],
                 owner=("ReplicaSet", "kics-scanner-7d9f8b6c5"), labels={"pod-template-hash": "7d9f8b6c5"},
                 node="node-a"),
        make_pod("ci", "nightly-scan-29612345-xk2p9",
                 [("trivy", "aquasec/trivy:0.69.4", f"docker.io/aquasec/trivy@{TRIVY}")],
                 owner=("Job", "nightly-scan-29612345"), phase="Succeeded", node="node-b"),
        make_pod("ci", "one-off-job-x1", [("kics", "checkmarx/kics:v2.1.20", f"docker.io/checkmarx/kics@{KICS_BAD_AMD64}")],
                 owner=("Job", "one-off-job")),
        make_pod("data", "db-0", [("pg", "postgres:15", f"docker.io/library/postgres@{NGINX}")],
                 owner=("StatefulSet", "db")),
        make_pod("kube-system", "log-agent-q8w7e", [("agent", "registry.local:5000/ops/agent:1", "sha256:" + "5" * 64)],
                 owner=("DaemonSet", "log-agent")),
        make_pod("default", "debug", [("sh", "localbuild:dev", f"docker://{LOCAL_ID}")]),
        make_pod("ci", "kics-scanner-7d9f8b6c5-pend1",
                 [("kics", "checkmarx/kics:latest", None), ("sidecar", "nginx:1.27", "")],
                 owner=("ReplicaSet", "kics-scanner-7d9f8b6c5"), labels={"pod-template-hash": "7d9f8b6c5"},
                 node=None, phase="Pending"),
    ]


@pytest.fixture(scope="module")
def kube() -> KubeServer:
    with KubeServer(TOKEN) as server:
        yield server


@pytest.fixture()
def api(kube: KubeServer) -> KubeServer:
    kube.state.reset(_estate())
    return kube


def _cfg(server: KubeServer, **kw) -> ClusterConfig:
    return ClusterConfig(name="prod", url=server.url, token=SecretStr(TOKEN), **kw)


def _by_key(scan) -> dict[tuple[str, str, str], object]:
    return {(c.namespace, c.pod, c.container): c for c in scan.containers}


def test_lists_all_namespaces_page_by_page_with_workloads_and_digests(api: KubeServer) -> None:
    sleeps: list[float] = []
    scan = list_running_containers(_cfg(api), page_size=2, sleep=sleeps.append)

    assert scan.pod_count == 7
    calls = api.state.list_calls()
    assert [c.path for c in calls] == ["/api/v1/pods"] * 4  # 7 pods, 2 per page
    assert all(c.authorized and c.query["limit"] == "2" for c in calls)
    assert "continue" not in calls[0].query and all("continue" in c.query for c in calls[1:])
    assert scan.pages == 4 and sleeps == []

    got = _by_key(scan)
    assert len(got) == 9  # 7 pods, one with an init container, one with two containers
    kics = got[("ci", "kics-scanner-7d9f8b6c5-abcde", "kics")]
    assert kics.image == "checkmarx/kics:latest"
    assert kics.status_image == "docker.io/checkmarx/kics:latest"
    assert kics.image_id == f"docker-pullable://checkmarx/kics@{KICS_BAD}"
    assert kics.image_id_repository == "checkmarx/kics"
    assert kics.digest == KICS_BAD
    assert kics.node == "node-a" and kics.state == "running" and kics.started_at is not None
    assert (kics.owner_kind, kics.owner_name) == ("ReplicaSet", "kics-scanner-7d9f8b6c5")
    assert (kics.workload_kind, kics.workload_name) == ("Deployment", "kics-scanner")

    init = got[("ci", "kics-scanner-7d9f8b6c5-abcde", "fetch")]
    assert init.container_kind == "init" and init.digest == BUSYBOX and init.state == "terminated"

    cron = got[("ci", "nightly-scan-29612345-xk2p9", "trivy")]
    assert (cron.workload_kind, cron.workload_name) == ("CronJob", "nightly-scan")
    assert cron.digest == TRIVY and cron.pod_phase == "Succeeded"
    job = got[("ci", "one-off-job-x1", "kics")]
    assert (job.workload_kind, job.workload_name) == ("Job", "one-off-job")
    assert (got[("data", "db-0", "pg")].workload_kind, got[("data", "db-0", "pg")].workload_name) == ("StatefulSet", "db")
    assert got[("kube-system", "log-agent-q8w7e", "agent")].workload_kind == "DaemonSet"
    bare = got[("default", "debug", "sh")]
    assert (bare.workload_kind, bare.workload_name, bare.owner_kind) == ("Pod", "debug", None)
    # A bare image id (no repository digest) is kept, not parsed as a manifest digest.
    assert bare.image_id == f"docker://{LOCAL_ID}" and bare.digest is None

    # Nothing dropped: a container still pulling (no status) and one failing to pull ("" imageID).
    pulling = got[("ci", "kics-scanner-7d9f8b6c5-pend1", "kics")]
    assert pulling.image == "checkmarx/kics:latest" and pulling.digest is None and pulling.state == "waiting"
    assert pulling.node is None and pulling.workload_name == "kics-scanner"
    failing = got[("ci", "kics-scanner-7d9f8b6c5-pend1", "sidecar")]
    assert failing.image_id is None and failing.state == "waiting"

    assert [c.pod for c in scan.by_digest(KICS_BAD)] == ["kics-scanner-7d9f8b6c5-abcde"]


def test_given_namespaces_are_listed_one_by_one(api: KubeServer) -> None:
    scan = list_running_containers(_cfg(api, namespaces=("data", "kube-system")), page_size=50)
    assert {c.namespace for c in scan.containers} == {"data", "kube-system"}
    assert [c.path for c in api.state.list_calls()] == [
        "/api/v1/namespaces/data/pods", "/api/v1/namespaces/kube-system/pods"]
    # An explicit argument overrides the config's namespaces.
    api.state.calls.clear()
    scan = list_running_containers(_cfg(api, namespaces=("data",)), ["ci"], page_size=1)
    assert scan.namespaces == ("ci",) and scan.pod_count == 4
    assert all(c.path == "/api/v1/namespaces/ci/pods" for c in api.state.list_calls())


def test_kubeconfig_and_context(api: KubeServer, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "stale",
        "clusters": [
            {"name": "local", "cluster": {"server": api.url}},
            {"name": "gone", "cluster": {"server": "http://127.0.0.1:9"}},
        ],
        "users": [{"name": "ci-reader", "user": {"token": TOKEN}}, {"name": "old", "user": {"token": "wrong"}}],
        "contexts": [
            {"name": "prod-ro", "context": {"cluster": "local", "user": "ci-reader", "namespace": "ci"}},
            {"name": "stale", "context": {"cluster": "gone", "user": "old"}},
        ],
    }))
    scan = list_running_containers(ClusterConfig(name="prod", kubeconfig=kubeconfig, context="prod-ro"), ["data"])
    assert scan.pod_count == 1 and scan.containers[0].pod == "db-0"
    assert api.state.list_calls()[-1].authorized

    with pytest.raises(InputError, match="nope"):
        list_running_containers(ClusterConfig(name="prod", kubeconfig=kubeconfig, context="nope"))
    with pytest.raises(InputError, match="does not exist"):
        list_running_containers(ClusterConfig(name="prod", kubeconfig=tmp_path / "missing"))


def test_wrong_token_and_forbidden_are_auth_errors_without_the_token(api: KubeServer) -> None:
    with pytest.raises(AuthError) as err:
        list_running_containers(ClusterConfig(name="prod", url=api.url, token="not-the-token"))
    assert err.value.status == 401 and "prod" in str(err.value) and "/api/v1/pods" in str(err.value)
    assert "not-the-token" not in str(err.value)

    api.state.fail_next.append((403, {}))
    with pytest.raises(AuthError) as err:
        list_running_containers(_cfg(api), ["ci"])
    assert err.value.status == 403 and "cannot list resource" in str(err.value)
    assert TOKEN not in str(err.value) and TOKEN not in repr(_cfg(api))


def test_rate_limits_and_5xx_are_retried_within_bounds(api: KubeServer) -> None:
    sleeps: list[float] = []
    api.state.fail_next += [(429, {"Retry-After": "2"}), (503, {})]
    scan = list_running_containers(_cfg(api), sleep=sleeps.append, backoff=0.25)
    assert scan.pod_count == 7
    assert sleeps == [2.0, 0.5]  # Retry-After honoured, then exponential back-off (attempt 1)

    # A Retry-After beyond max_wait is not slept through: the caller decides.
    api.state.fail_next.append((429, {"Retry-After": "120"}))
    sleeps.clear()
    with pytest.raises(RateLimited) as err:
        list_running_containers(_cfg(api), sleep=sleeps.append, max_wait=30)
    assert err.value.retry_after == 120 and sleeps == []

    api.state.fail_next += [(500, {})] * 3
    with pytest.raises(Unavailable) as err:
        list_running_containers(_cfg(api), sleep=sleeps.append, max_retries=2)
    assert err.value.status == 500 and err.value.retryable


def test_unreachable_server_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the call: nothing listens there
    sleeps: list[float] = []
    with pytest.raises(Unavailable) as err:
        list_running_containers(ClusterConfig(name="edge", url=f"http://127.0.0.1:{port}", token=TOKEN),
                                sleep=sleeps.append, max_retries=1)
    assert "edge" in str(err.value) and len(sleeps) == 1


def test_expired_continue_token_restarts_the_listing_once(api: KubeServer) -> None:
    api.state.expire_continue = 1
    scan = list_running_containers(_cfg(api), page_size=3)
    assert scan.restarts == 1 and scan.pod_count == 7
    keys = [(c.namespace, c.pod, c.container) for c in scan.containers]
    assert len(keys) == len(set(keys)) == 9  # no duplicates from the aborted pass

    api.state.expire_continue = 5  # keeps expiring: give up with a typed error, not a loop
    with pytest.raises(IntegrationError) as err:
        list_running_containers(_cfg(api), page_size=3)
    assert err.value.status == 410


def test_config_is_checked() -> None:
    with pytest.raises(InputError, match="url"):
        ClusterConfig(name="x")
    with pytest.raises(InputError, match="http"):
        ClusterConfig(name="x", url="k8s.example:6443")


@pytest.mark.parametrize("image_id,repo,digest", [
    (f"docker-pullable://checkmarx/kics@{KICS_BAD}", "checkmarx/kics", KICS_BAD),
    (f"docker.io/checkmarx/kics@{KICS_BAD}", "docker.io/checkmarx/kics", KICS_BAD),
    (f"ghcr.io/aquasecurity/trivy@{TRIVY.upper().replace('SHA256', 'sha256')}", "ghcr.io/aquasecurity/trivy", TRIVY),
    (f"127.0.0.1:5000/x/y@{NGINX}", "127.0.0.1:5000/x/y", NGINX),
    (LOCAL_ID, None, None),
    (f"docker://{LOCAL_ID}", None, None),
    ("", None, None),
    ("docker.io/x/y@sha256:short", None, None),
])
def test_digest_from_image_id(image_id: str, repo: str | None, digest: str | None) -> None:
    assert digest_from_image_id(image_id) == (repo, digest)


def test_workload_of_edge_cases() -> None:
    # A ReplicaSet whose name does not end in the hash label is not guessed into a Deployment.
    assert workload_of("p", [{"kind": "ReplicaSet", "name": "standalone", "controller": True}], {})[2:] == ("ReplicaSet", "standalone")
    # The controller reference wins over others.
    refs = [{"kind": "ConfigMap", "name": "c"}, {"kind": "StatefulSet", "name": "db", "controller": True}]
    assert workload_of("db-0", refs, {})[2:] == ("StatefulSet", "db")


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_tls_verification(tmp_path: Path) -> None:
    """An https API server with a private CA: verified with ``ca_file``, refused without it (not retried)."""
    with KubeServer(TOKEN, tls_dir=tmp_path) as server:
        server.state.reset(_estate())
        ok = list_running_containers(ClusterConfig(name="tls", url=server.url, token=TOKEN, ca_file=server.ca_file), ["data"])
        assert ok.pod_count == 1

        sleeps: list[float] = []
        with pytest.raises(IntegrationError, match="TLS verification failed") as err:
            list_running_containers(ClusterConfig(name="tls", url=server.url, token=TOKEN), sleep=sleeps.append)
        assert not err.value.retryable and sleeps == []

        lab = list_running_containers(ClusterConfig(name="tls", url=server.url, token=TOKEN, verify_tls=False), ["data"])
        assert lab.pod_count == 1


def test_cluster_config_from_inventory_resolves_the_token_reference(api: KubeServer, monkeypatch) -> None:
    from digestguard.inventory import KubernetesCluster
    from integrations.kubernetes import cluster_config_from_inventory

    monkeypatch.setenv("DG_TEST_KUBE_TOKEN", TOKEN)
    entry = KubernetesCluster(name="prod", url=api.url, token="env:DG_TEST_KUBE_TOKEN", namespaces=["data"])
    cfg = cluster_config_from_inventory(entry)
    assert TOKEN not in repr(cfg) and cfg.namespaces == ("data",)
    assert list_running_containers(cfg).pod_count == 1

    monkeypatch.delenv("DG_TEST_KUBE_TOKEN")
    with pytest.raises(InputError, match="DG_TEST_KUBE_TOKEN"):
        cluster_config_from_inventory(entry)
