"""``digestguard drill``: a tabletop exercise that runs the whole playbook against a self-contained sandbox.

The seed's "practice incident drills", made repeatable. The sandbox re-enacts
the advisory's attack on this machine: a real registry where clean images are
pushed and then the advisory's tags are overwritten by an attacker index; a
podman engine that pulled some of them; CI logs with jobs before, inside and
after the window; network logs with exfiltration hits; a git repository whose
CI files use the image; exposed secrets in OpenBao, moto, GCP and Azure
stand-ins, a GitHub stand-in that holds their copies, and a Slack stand-in.
Five of the exposed credentials have an issuer the playbook drives itself: an
AWS IAM key (moto with IAM authentication on, so a dead key is really refused),
a PostgreSQL role password (real PostgreSQL), an OpenBao token (real OpenBao with
a file audit device), a Docker Hub PAT and a GitLab project access token (the
wire-protocol stand-ins in ``servers/``). The sandbox *uses* two of them after
the exposure began: a CloudTrail event signed with the IAM key (CloudTrail
stand-in) and a read with the OpenBao token (a real audit-log entry).
Then ``incident_response`` runs in execute mode against it, and a scorecard
compares, stage by stage, what was planted with what the playbook found,
rotated, purged, pinned and notified, checking the backends themselves, not
the playbook's own word. Everything started is stopped and removed at the end.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import hvac
import psycopg
import yaml
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import secretmanager
from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed

from digestguard.advisory import Advisory, load_advisory
from digestguard.markdown import md_cell
from flows.approval import drill_approver
from flows.drill import registry as sreg
from flows.drill.podman import start_podman, stop_podman
from flows.drill.servers.cloudtrail import start_cloudtrail_server
from flows.drill.servers.dockerhub import start_dockerhub
from flows.drill.servers.gcp_secrets import start_secret_manager_server
from flows.drill.servers.github import GitHubServer, github_job_log
from flows.drill.servers.gitlab import DEFAULT_TOKEN as GITLAB_ADMIN, GitLabServer
from flows.drill.servers.slack import SlackServer
from flows.drill.services import DUMMY_AWS_ENV, start_moto_iam_auth, start_openbao, start_postgres
from flows.incident_response import incident_response
from integrations import aws_sts, dockerhub, gitlab, postgres, vault
from integrations.docker_engine import DockerEngine
from integrations.registry import RegistryClient

REPO = "checkmarx/kics"
DRILL_TOKENS = {"DRILL_SLACK_TOKEN": "xoxb-drill-0000-digestguard", "DRILL_GITHUB_TOKEN": "ghs_drilltoken0000000000000000",
                "DRILL_GITLAB_ADMIN": GITLAB_ADMIN}
ISSUED = ("AWS_ACCESS_KEY_ID", "DATABASE_PASSWORD", "VAULT_TOKEN", "DOCKERHUB_TOKEN", "GITLAB_TOKEN")
"""The drill's credentials with an issuer the playbook drives (the ``contain`` stage proves each one dead)."""
USED_AFTER_EXPOSURE = ("AWS_ACCESS_KEY_ID", "VAULT_TOKEN")
"""The credentials the sandbox uses after the exposure began: the playbook must answer ``yes`` for them."""
ISSUER_ACCEPTS = "its issuer accepts the new value; copies in step (the old one's refusal: contain)"
PERSON_ROTATED = "a person rotated it at the vendor; copies in step (the vendor's answer: contain)"
STORE_ONLY = "a new value in its store, copies in step; no issuer here to ask, so revocation unproven"
NOT_REPLACED = "not replaced everywhere"
ISSUER_NOT_ASKED = "its issuer could not be asked (the contain stage names why)"
"""What the rotate stage of the scorecard can say of each planted secret: no more than was checked."""


@dataclass
class StageScore:
    name: str
    expected: Any
    actual: Any
    ok: bool
    note: str = ""


@dataclass
class Sandbox:
    """Everything the drill planted, and the handles to check the result against."""

    root: Path
    advisory: Advisory
    advisory_path: Path
    inventory_path: Path
    registry: Any = None
    podman: Any = None
    openbao: Any = None
    moto: Any = None
    github: Any = None
    slack: Any = None
    gcp: Any = None
    cloudtrail: Any = None
    postgres: Any = None
    hub: Any = None
    gitlab: Any = None
    old_creds: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)  # the exposed values, to probe
    issuer_checks: dict[str, tuple[str, str, bool]] | None = None  # the scorecard's own answers from the issuers
    attacker: dict[str, Any] = field(default_factory=dict)      # tag -> PushedIndex
    clean: dict[str, Any] = field(default_factory=dict)         # tag -> PushedIndex
    planted: dict[str, Any] = field(default_factory=dict)
    old_values: dict[str, str] = field(default_factory=dict, repr=False)  # the values planted (exposed)
    new_values: dict[str, str] = field(default_factory=dict, repr=False)  # the values the rotation made
    timings: dict[str, float] = field(default_factory=dict)


def _affected_groups(base: Advisory) -> list[list[str]]:
    """The advisory's malicious index digests as tag groups (tags sharing one attacker image)."""
    img = base.images[0]
    groups = [list(m.tags) for m in img.malicious if m.kind == "index" and m.tags]
    covered = {t for g in groups for t in g}
    rest = [t for t in img.affected_tags if t not in covered]
    return groups + [[t] for t in rest]


def build_sandbox(base: Advisory, root: Path, stack: contextlib.ExitStack, *, scale: int = 1) -> Sandbox:
    """Start the services and plant the incident (see the module docstring).

    Longer than our usual 60 lines on purpose: it is one linear recipe that starts each service and plants
    the attack in the order the response guide tells it (registry, engine, CI, secrets, consumers, Slack),
    each step a few lines; split up, the story of the sandbox would be spread over a dozen helpers.
    """
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
    t = time.monotonic()
    now = datetime.now(timezone.utc).replace(microsecond=0)
    attack = now - timedelta(hours=3)
    sb = Sandbox(root=root, advisory=base, advisory_path=root / "advisory.yaml", inventory_path=root / "inventory.yaml")

    # -- registry: clean images, then the attack
    sb.registry = sreg.start_registry(root / "registry")
    stack.callback(sreg.stop_registry_process, sb.registry.process)
    base_url = sb.registry.base_url
    groups = _affected_groups(base)
    for tag in ["v2.1.19", *(t for g in groups for t in g)]:
        sb.clean[tag] = sreg.push_index(base_url, REPO, tag)
    for group in groups:
        bad = sreg.push_index(base_url, REPO, group[0])
        for tag in group[1:]:
            sreg.put_manifest(base_url, REPO, tag, bad.manifest, bad.media_type)
        for tag in group:
            sb.attacker[tag] = bad
    sb.timings["registry"] = time.monotonic() - t

    # -- the drill's advisory: the base pack's facts, with the sandbox attacker's digests and the clean ones
    data = base.model_dump(mode="json")
    data["id"] = f"drill-{base.id}"
    data["title"] = f"DRILL: {base.title}"
    data["window"] = {"start": attack.isoformat(), "end": None, "scope": "drill sandbox", "source": "drill"}
    img = data["images"][0]
    img["repository"] = REPO
    img["aliases"] = []
    img["windows"] = []
    malicious, seen = [], set()
    for group in groups:
        bad = sb.attacker[group[0]]
        if bad.digest in seen:
            continue
        seen.add(bad.digest)
        malicious.append({"digest": bad.digest, "kind": "index", "tags": group, "source": "drill sandbox"})
        malicious += [{"digest": d, "kind": "manifest", "platform": p, "parent": bad.digest, "source": "drill sandbox"}
                      for p, d in bad.children.items()]
    img["malicious"] = malicious
    img["known_good"] = [{"tag": t, "digest": sb.clean[t].digest, "source": "drill sandbox (pre-attack image)"} for t in sb.attacker]
    sb.advisory_path.write_text(yaml.safe_dump(data, sort_keys=False))
    sb.advisory = Advisory.model_validate(data)

    # -- a CI runner's engine that pulled the attacker's latest (and made a container from it) and a clean image
    t = time.monotonic()
    sb.podman = start_podman(root / "podman", [sb.registry.host])
    stack.callback(stop_podman, sb.podman)

    with DockerEngine(sb.podman.url) as eng:
        bad_img = eng.pull(sb.registry.ref(REPO, "latest"))
        eng.pull(sb.registry.ref(REPO, "v2.1.19"))
        eng.sdk.api.create_container(bad_img.id, name="kics-scan-job")
    sb.timings["engine"] = time.monotonic() - t

    # -- secrets in real and stand-in backends
    t = time.monotonic()
    os.environ.update(DUMMY_AWS_ENV)
    os.environ.update(DRILL_TOKENS)
    sb.openbao = start_openbao(audit_log=str(root / "bao-audit.log"))
    stack.callback(sb.openbao.stop)
    os.environ["DRILL_VAULT_TOKEN"] = sb.openbao.token
    sb.moto = start_moto_iam_auth()
    stack.callback(sb.moto.stop)
    # every AWS client of the run signs with the sandbox's admin key (moto checks each request)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.update({"AWS_ACCESS_KEY_ID": sb.moto.admin_key_id, "AWS_SECRET_ACCESS_KEY": sb.moto.admin_secret})
    boto3.DEFAULT_SESSION = None  # boto3's default session keeps the credentials it read first: read them again
    stack.callback(setattr, boto3, "DEFAULT_SESSION", None)
    stack.callback(os.environ.update, DUMMY_AWS_ENV)
    sb.cloudtrail = start_cloudtrail_server()
    stack.callback(sb.cloudtrail.stop)
    sb.postgres = start_postgres()
    stack.callback(sb.postgres.stop)
    sb.hub = start_dockerhub()
    stack.callback(sb.hub.stop)
    sb.gitlab = GitLabServer(token=GITLAB_ADMIN).start()
    stack.callback(sb.gitlab.stop)

    sb.gcp = start_secret_manager_server()
    stack.callback(sb.gcp.stop)
    sb.github = GitHubServer(token=DRILL_TOKENS["DRILL_GITHUB_TOKEN"]).start()
    stack.callback(sb.github.stop)
    sb.slack = SlackServer(token=DRILL_TOKENS["DRILL_SLACK_TOKEN"]).start()
    stack.callback(sb.slack.stop)
    secrets_cfg = _plant_secrets(sb, scale)
    secrets_cfg += _plant_issued(sb, attack)
    sb.planted["secrets"] = sorted(x["name"] for x in secrets_cfg)
    sb.timings["secrets"] = time.monotonic() - t

    # -- a repository whose CI uses the image, with a bare remote, known to the GitHub stand-in
    t = time.monotonic()
    repos_cfg = []
    for n in range(scale):
        name = "infra" if n == 0 else f"infra-{n}"
        repos_cfg.append(_plant_repository(sb, name, [s["name"] for s in secrets_cfg]))
    sb.timings["repositories"] = time.monotonic() - t

    # -- CI logs: jobs before, inside and after the window, under the repository's folder
    logs = root / "ci-logs"
    jobs: dict[str, str] = {}
    for n in range(scale):
        repo_dir = logs / "acme" / ("infra" if n == 0 else f"infra-{n}")
        repo_dir.mkdir(parents=True, exist_ok=True)
        bad_latest = sb.attacker["latest"].digest
        plan = {
            "before-window.log": ("checkmarx/kics:latest", sb.clean["latest"].digest, attack - timedelta(hours=2), "clear"),
            "inside-malicious.log": ("checkmarx/kics:latest", bad_latest, attack + timedelta(minutes=40), "confirmed"),
            "inside-pinned.log": (f"checkmarx/kics@{sb.clean['alpine'].digest}", sb.clean["alpine"].digest,
                                  attack + timedelta(minutes=50), "clear"),
        }
        for fname, (image, digest, at, verdict) in plan.items():
            text = github_job_log(image, digest, at, style="container")
            if fname == "inside-malicious.log" and n == 0:
                text = _on_runner(text, EGRESS_RUNNER)  # the job whose runner then calls home (egress baseline)
            (repo_dir / fname).write_text(text)
            jobs[str((repo_dir / fname).relative_to(logs))] = verdict
        probable = repo_dir / "inside-no-digest.log"
        probable.write_text(_log_without_digest("checkmarx/kics:alpine", attack + timedelta(minutes=55)))
        jobs[str(probable.relative_to(logs))] = "probable"
    sb.planted["jobs"] = jobs

    # -- network logs: one exfiltration lookup in the window, noise, one corrupt line
    netlog = root / "logs" / "dns.log"
    netlog.parent.mkdir(parents=True, exist_ok=True)
    netlog.write_text(_zeek_dns([(attack - timedelta(minutes=5), "registry-1.docker.io"),
                                 (attack + timedelta(minutes=41), "audit.checkmarx.cx"),
                                 (attack + timedelta(minutes=42), "notaudit.checkmarx.cx.example.net"),
                                 (attack + timedelta(minutes=43), "github.com")]) + "\x00\xff truncated line\n")
    sb.planted["network_hits"] = 1

    # -- runner egress through the proxy: a week of normal destinations (the learning window), then the job that
    #    ran the attacker's image calls a destination no advisory names
    egress_log = root / "logs" / "runner-proxy" / "access.log"
    egress_log.parent.mkdir(parents=True, exist_ok=True)
    call_home = attack + timedelta(minutes=40, seconds=4.8)  # after its pull, before it ends
    egress_log.write_text(_squid_egress(now, call_home))
    sb.planted["egress"] = {"group": "ci-runners", "destination": EGRESS_DESTINATION.split(".", 1)[1],
                            "host": EGRESS_DESTINATION, "job": "acme/infra/inside-malicious.log"}

    inventory = {
        "registries": [{"name": "mirror", "kind": "distribution", "url": base_url}],
        "docker_engines": [{"name": "runner-1", "url": sb.podman.url}],
        "ci_logs": [{"name": "exported", "kind": "folder", "path": "./ci-logs"}],
        "network_logs": [{"path": "./logs/dns.log"}, {"name": "runner-proxy", "path": "./logs/runner-proxy"}],
        "runners": [{"name": "ci-runners", "hosts": [{"name": EGRESS_RUNNER, "address": EGRESS_ADDRESS}]}],
        "egress": {"learning_days": 7, "sources": ["runner-proxy"]},
        "secrets": secrets_cfg,
        "repositories": repos_cfg,
        "slack": {"channel": "#sec-incident", "token": "env:DRILL_SLACK_TOKEN", "api_url": sb.slack.api_url},
        "backends": {"vault_url": sb.openbao.addr, "vault_token": "env:DRILL_VAULT_TOKEN", "aws_region": "us-east-1",
                     "aws_endpoint_url": sb.moto.endpoint_url, "aws_cloudtrail_endpoint_url": sb.cloudtrail.url,
                     "gcp_project": "drill", "gcp_endpoint": sb.gcp.url,
                     "github_api_url": sb.github.url, "github_token": "env:DRILL_GITHUB_TOKEN",
                     # the stand-in is not github.com: like a GitHub Enterprise Server it sets its own write budget
                     # (github.com's 80 a minute would make a scale-100 drill wait minutes for its ~200 writes)
                     "github_writes_per_minute": 6000},
        "journal": "./journal.sqlite",
    }
    sb.inventory_path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    sb.planted["compromised_tags"] = sorted(sb.attacker)
    return sb


EGRESS_RUNNER = "drill-runner-1"
EGRESS_ADDRESS = "10.0.1.21"
EGRESS_DESTINATION = "upload.drill-exfil.example"
_NORMAL_EGRESS = ("registry-1.docker.io", "auth.docker.io", "production.cloudflare.docker.com", "pypi.org",
                  "files.pythonhosted.org", "github.com", "objects.githubusercontent.com", "api.github.com")


def _on_runner(log: str, runner: str) -> str:
    """A GitHub job log that names its runner and machine (the runner prints both in 'Set up job')."""
    first, _, rest = log.partition("\n")
    stamp = first.split(" ", 1)[0]
    return "\n".join([first, f"{stamp} Runner name: '{runner}'", f"{stamp} Machine name: '{runner}'", rest])


def _squid_egress(now: datetime, call_home: datetime) -> str:
    """Squid native access.log lines from the runner: 8 days of normal traffic (CDN subdomains vary every day), then
    the call home and some more normal traffic."""
    rows: list[tuple[float, str]] = []
    start = now - timedelta(days=8)
    for hour in range(0, 8 * 24, 3):
        t = start + timedelta(hours=hour)
        for i, host in enumerate(_NORMAL_EGRESS):
            rows.append(((t + timedelta(seconds=i)).timestamp(), host))
        rows.append(((t + timedelta(seconds=30)).timestamp(), f"d{hour:04x}k.cloudfront.net"))
    rows.append((call_home.timestamp(), EGRESS_DESTINATION))
    rows += [((call_home + timedelta(minutes=m)).timestamp(), _NORMAL_EGRESS[m % len(_NORMAL_EGRESS)]) for m in range(1, 6)]
    rows.sort()
    return "".join(f"{t:.3f}    120 {EGRESS_ADDRESS} TCP_TUNNEL/200 4312 CONNECT {h}:443 - HIER_DIRECT/{h} -\n"
                   for t, h in rows)


def _log_without_digest(image: str, at: datetime) -> str:
    """A job that ran the image with ``docker run`` and never printed a digest (the 'probable' case)."""
    ts = lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.0000000Z")  # noqa: E731
    return "\n".join([
        f"{ts(at)} ##[group]Run docker run --rm -v $PWD:/path {image} scan -p /path -o /path/out",
        f"{ts(at)} docker run --rm -v $PWD:/path {image} scan -p /path -o /path/out",
        f"{ts(at + timedelta(seconds=1))} ##[endgroup]",
        f"{ts(at + timedelta(seconds=9))} Scanning with Keeping Infrastructure as Code Secure v2.1.20",
        f"{ts(at + timedelta(seconds=30))} Results saved to file /path/out/results.json",
    ]) + "\n"


def _zeek_dns(rows: list[tuple[datetime, str]]) -> str:
    head = ["#separator \\x09", "#set_separator\t,", "#empty_field\t(empty)", "#unset_field\t-", "#path\tdns",
            "#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\ttrans_id\tquery\tqtype_name\trcode_name\tanswers",
            "#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tcount\tstring\tstring\tstring\tvector[string]"]
    body = [f"{d.timestamp():.6f}\tC{n}x\t10.0.0.5\t5353{n}\t10.0.0.2\t53\tudp\t{n}\t{q}\tA\tNOERROR\t203.0.113.{n}"
            for n, (d, q) in enumerate(rows)]
    return "\n".join(head + body) + "\n"


def _plant_secrets(sb: Sandbox, scale: int) -> list[dict[str, Any]]:
    """Secrets the exposed workflow can see, each in a different backend, copies held by GitHub Actions."""


    out: list[dict[str, Any]] = []
    client = hvac.Client(url=sb.openbao.addr, token=sb.openbao.token)
    gh = sb.github
    gh.add_repo("acme", "infra")
    for n in range(scale):
        name = "KICS_API_TOKEN" if n == 0 else f"KICS_API_TOKEN_{n}"
        path = f"ci/kics-api-token-{n}"
        planted = f"drill-old-{n}-" + os.urandom(6).hex()
        sb.old_values[name] = planted
        client.secrets.kv.v2.create_or_update_secret(path=path, secret={"value": planted})
        out.append({"name": name, "backend": "vault-kv", "ref": {"path": path, "key": "value"},
                    "consumers": [{"kind": "github-actions-secret", "repo": "acme/infra", "name": name}]})
    iam = boto3.client("iam", endpoint_url=sb.moto.endpoint_url, region_name="us-east-1")
    iam.create_user(UserName="ci-deployer")
    key = iam.create_access_key(UserName="ci-deployer")["AccessKey"]
    old_key = key["AccessKeyId"]
    sb.old_values["AWS_SECRET_ACCESS_KEY"] = key["SecretAccessKey"]
    sb.planted["old_iam_key"] = old_key
    sb.old_creds["AWS_ACCESS_KEY_ID"] = {"access_key_id": old_key, "secret_access_key": key["SecretAccessKey"]}
    boto3.client("secretsmanager", endpoint_url=sb.moto.endpoint_url, region_name="us-east-1").create_secret(
        Name="ci/aws-deployer", SecretString=json.dumps(sb.old_creds["AWS_ACCESS_KEY_ID"]))
    out.append({"name": "AWS_ACCESS_KEY_ID", "issuer": {"kind": "aws-iam-access-key", "ref": {"user": "ci-deployer"}},
                "stores": [{"kind": "aws-secretsmanager", "name": "ci/aws-deployer", "primary": True}],
                "aliases": ["AWS_SECRET_ACCESS_KEY"],
                "consumers": [{"kind": "github-actions-secret", "repo": "acme/infra", "name": "AWS_ACCESS_KEY_ID", "field": "access_key_id"},
                              {"kind": "github-actions-secret", "repo": "acme/infra", "name": "AWS_SECRET_ACCESS_KEY",
                               "field": "secret_access_key"}]})
    sm = boto3.client("secretsmanager", endpoint_url=sb.moto.endpoint_url, region_name="us-east-1")
    sb.old_values["REGISTRY_PASSWORD"] = "drill-old-" + os.urandom(6).hex()
    sm.create_secret(Name="ci/registry-password", SecretString=sb.old_values["REGISTRY_PASSWORD"])
    out.append({"name": "REGISTRY_PASSWORD", "backend": "aws-secretsmanager", "ref": {"secret_id": "ci/registry-password"},
                "consumers": [{"kind": "github-actions-secret", "repo": "acme/infra", "name": "REGISTRY_PASSWORD"}]})

    gsm = secretmanager.SecretManagerServiceClient(credentials=AnonymousCredentials(), transport="rest",
                                                   client_options=ClientOptions(api_endpoint=sb.gcp.url))
    gsm.create_secret(request={"parent": "projects/drill", "secret_id": "sonar-token", "secret": {"replication": {"automatic": {}}}})
    sb.old_values["SONAR_TOKEN"] = "drill-old-" + os.urandom(6).hex()
    gsm.add_secret_version(request={"parent": "projects/drill/secrets/sonar-token",
                                    "payload": {"data": sb.old_values["SONAR_TOKEN"].encode()}})
    out.append({"name": "SONAR_TOKEN", "backend": "gcp-secretmanager", "ref": {"secret": "projects/drill/secrets/sonar-token"},
                "consumers": [{"kind": "github-actions-secret", "repo": "acme/infra", "name": "SONAR_TOKEN"}]})
    return out


def _gh(name: str, field: str | None = None) -> list[dict[str, Any]]:
    return [{"kind": "github-actions-secret", "repo": "acme/infra", "name": name, **({"field": field} if field else {})}]


def _plant_issued(sb: Sandbox, attack: datetime) -> list[dict[str, Any]]:
    """Credentials whose issuer the playbook drives (beyond the IAM key): a PostgreSQL role, an OpenBao token,
    a Docker Hub PAT and a GitLab project access token, each with its exposed value in an OpenBao KV store; and
    the sandbox's own use of two of them after the exposure began (CloudTrail, OpenBao audit log)."""
    bao = hvac.Client(url=sb.openbao.addr, token=sb.openbao.token)
    out: list[dict[str, Any]] = []

    def store(path: str, name: str, data: dict[str, str]) -> list[dict[str, Any]]:
        bao.secrets.kv.v2.create_or_update_secret(path=path, secret=data)
        sb.old_creds[name] = dict(data)
        return [{"kind": "vault-kv", "path": path, "primary": True}]

    # PostgreSQL: a login role of the CI job's database
    pg = sb.postgres
    os.environ["DRILL_PG_ADMIN"] = pg.password
    pw = "drill-old-" + os.urandom(8).hex()
    with psycopg.connect(host=pg.host, port=pg.port, user="postgres", password=pg.password, dbname="postgres",
                         autocommit=True) as conn:
        conn.execute(f"CREATE ROLE ci_app LOGIN PASSWORD '{pw}'")
    out.append({"name": "DATABASE_PASSWORD", "consumers": _gh("DATABASE_PASSWORD", "password"),
                "issuer": {"kind": "postgres-role", "ref": {"host": pg.host, "port": pg.port, "role": "ci_app",
                                                            "admin_password": "env:DRILL_PG_ADMIN", "log_path": pg.log_path}},
                "stores": store("ci/db-app", "DATABASE_PASSWORD", {"username": "ci_app", "password": pw})})

    # OpenBao: the CI runner's token, then one read made with it after the exposure began (a real audit entry)
    bao.sys.create_or_update_policy("ci-read", 'path "secret/data/ci/*" { capabilities = ["read"] }')
    tok = bao.auth.token.create(policies=["ci-read"], display_name="ci-runner", ttl="24h")["auth"]
    hvac.Client(url=sb.openbao.addr, token=tok["client_token"]).secrets.kv.v2.read_secret_version(
        path="ci/kics-api-token-0", raise_on_deleted_version=True)
    out.append({"name": "VAULT_TOKEN", "consumers": _gh("VAULT_TOKEN"),
                "issuer": {"kind": "vault-token", "ref": {"accessor": tok["accessor"], "policies": ["ci-read"],
                                                          "audit_log": str(sb.root / "bao-audit.log"), "audit_device": "file"}},
                "stores": store("ci/vault-token", "VAULT_TOKEN", {"value": tok["client_token"]})})

    # AWS: the exposed key signed a call an hour after the attack began (CloudTrail event history)
    sb.cloudtrail.add_event("ListBuckets", attack + timedelta(hours=1), sb.planted["old_iam_key"], ip="198.51.100.77")

    # Docker Hub: the account's pull PAT
    hub_pw = "drill-hub-" + os.urandom(8).hex()
    os.environ["DRILL_HUB_PASSWORD"] = hub_pw
    sb.hub.add_account("acme-ci", hub_pw)
    pat = sb.hub.add_pat("acme-ci", "ci-pull")
    out.append({"name": "DOCKERHUB_TOKEN", "consumers": _gh("DOCKERHUB_TOKEN", "value"),
                "issuer": {"kind": "dockerhub-pat", "ref": {"api_url": sb.hub.url, "username": "acme-ci",
                                                            "token_label": "ci-pull", "admin_password": "env:DRILL_HUB_PASSWORD"}},
                "stores": store("ci/dockerhub-token", "DOCKERHUB_TOKEN", {"value": pat["token"]})})

    # GitLab: the project's CI bot token
    pid = sb.gitlab.add_project("acme/infra")
    glt = sb.gitlab.add_access_token(f"project:{pid}", "ci-bot")
    out.append({"name": "GITLAB_TOKEN", "consumers": _gh("GITLAB_TOKEN", "value"),
                "issuer": {"kind": "gitlab-access-token", "ref": {"api_url": sb.gitlab.url, "project": pid,
                                                                  "token_id": glt["id"], "admin_token": "env:DRILL_GITLAB_ADMIN"}},
                "stores": store("ci/gitlab-token", "GITLAB_TOKEN", {"value": glt["token"]})})
    # a manual item: a personal access token at the vendor (GitLab, a person's own), with a declared probe
    vendor = sb.gitlab.add_access_token("user:vendor-bot", "vendor-api")
    out.append({"name": "VENDOR_API_KEY", "consumers": _gh("VENDOR_API_KEY"),
                "issuer": {"kind": "manual", "where": "GitLab > vendor-bot > Access tokens",
                           "probe": {"url": f"{sb.gitlab.url}/personal_access_tokens/self", "send": "header",
                                     "header": "PRIVATE-TOKEN"}},
                "stores": store("ci/vendor-api-key", "VENDOR_API_KEY", {"value": vendor["token"]})})
    sb.planted["used_after_exposure"] = list(USED_AFTER_EXPOSURE)
    return out


def drill_person(sb: Sandbox):
    """The drill's person for manual items: at the vendor, revoke the exposed token and issue a new one, put the
    new value in the primary store, then confirm (what the runbook asks a responder to do)."""

    def person(item: Any) -> bool:
        if getattr(item, "target", "") != "secret:VENDOR_API_KEY" or getattr(item, "kind", "") != "manual":
            return True
        old = sb.old_creds["VENDOR_API_KEY"]["value"]
        for t in sb.gitlab.access_tokens.values():
            if t["token"] == old:
                t["active"], t["revoked"] = False, True
        new = sb.gitlab.add_access_token("user:vendor-bot", "vendor-api")
        hvac.Client(url=sb.openbao.addr, token=sb.openbao.token).secrets.kv.v2.create_or_update_secret(
            path="ci/vendor-api-key", secret={"value": new["token"]})
        return True

    return person


WORKFLOW = """name: iac-scan
on: [push, pull_request]

jobs:
  kics:
    runs-on: ubuntu-latest
    container: checkmarx/kics:latest   # the scanner image
    env:
{env}
    steps:
      - uses: actions/checkout@v4
      - name: Scan
        run: docker run --rm -v "$PWD":/path checkmarx/kics:alpine scan -p /path
"""

DOCKERFILE = """# syntax=docker/dockerfile:1
FROM checkmarx/kics:v2.1.20 AS scan
COPY . /src
RUN kics scan -p /src -o /out

FROM alpine:3.20
COPY --from=scan /out /out
"""


def _plant_repository(sb: Sandbox, name: str, secret_names: list[str]) -> dict[str, Any]:
    """A checkout with a workflow and a Dockerfile using the image, pushed to a bare remote."""
    remote = sb.root / "git" / f"{name}.git"
    work = sb.root / "checkouts" / name
    env = "\n".join(f"      {s}: ${{{{ secrets.{s} }}}}" for s in secret_names if s != "VENDOR_API_KEY")
    env += "\n      VENDOR_API_KEY: ${{ secrets.VENDOR_API_KEY }}"
    files = {".github/workflows/scan.yml": WORKFLOW.format(env=env), "Dockerfile": DOCKERFILE,
             "README.md": "Infrastructure as code. We scan it with checkmarx/kics.\n"}
    git = ["git", "-c", "user.name=drill", "-c", "user.email=drill@localhost", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", "--bare", str(remote)], check=True)
    subprocess.run([*git, "init", "-q", str(work)], check=True)
    for rel, text in files.items():
        p = work / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    subprocess.run([*git, "-C", str(work), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-q", "-m", "initial"], check=True)
    subprocess.run([*git, "-C", str(work), "remote", "add", "origin", str(remote)], check=True)
    subprocess.run([*git, "-C", str(work), "push", "-q", "origin", "main"], check=True)
    if name != "infra":
        sb.github.add_repo("acme", name)
    return {"name": f"acme/{name}", "kind": "github", "path": f"./checkouts/{name}", "remote": "origin", "base_branch": "main",
            "api_url": sb.github.url, "token": "env:DRILL_GITHUB_TOKEN"}


# ------------------------------------------------------------------------------------------- scorecard
def _journal_of(sb: Sandbox) -> str:
    """Where the run kept its journal: ``DIGESTGUARD_JOURNAL`` when set (a PostgreSQL URL too), else the inventory's."""
    from digestguard.inventory import load_inventory

    return load_inventory(sb.inventory_path).journal_location()


def _journal_text(location: str) -> str:
    """Every row of every table of the journal at ``location`` (SQLite or PostgreSQL), as text."""
    from digestguard.journal import Journal

    j = Journal(location)
    try:
        if j.backend == "postgresql":
            listed = "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        else:
            listed = "SELECT name FROM sqlite_master WHERE type='table'"
        tables = [r[0] for r in j.query(listed)]
        return "\n".join(repr(row) for t in tables for row in j.query(f'SELECT * FROM "{t}"'))
    finally:
        j.close()


def _record_texts(sb: Sandbox, summary: dict[str, Any] | None, flow_run_id: Any | None) -> dict[str, str]:
    """Every record the run left, as text: Slack, the journal (every table, every row, wherever it lives), the
    reports, the run's summary, and its Prefect artifacts and logs. The drill looks for the secret values in all
    of them; a journal it cannot read is said in place of its text, never skipped."""
    out: dict[str, str] = {"slack": sb.slack.all_text(), "summary": json.dumps(summary or {}, default=str)}
    try:
        out["journal"] = _journal_text(_journal_of(sb))
    except Exception as e:  # noqa: BLE001 - the check then fails naming why, it does not pass unread
        out["journal"] = f"(not readable: {type(e).__name__}: {str(e)[:200]})"
    reports = [sb.root / "report.html", *sorted((sb.inventory_path.parent / ".digestguard" / "reports").glob("*.html"))]
    out["report"] = "\n".join(p.read_text(errors="replace") for p in reports if p.exists())
    if flow_run_id is not None:
        try:
            from prefect.client.orchestration import get_client
            from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId

            with get_client(sync_client=True) as client:
                arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
                out["artifacts"] = "\n".join(json.dumps(a.data, default=str) + (a.description or "") for a in arts)
                flt = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
                logs: list[str] = []
                while True:  # the API answers at most 200 a page
                    page = client.read_logs(log_filter=flt, limit=200, offset=len(logs))
                    logs += [lg.message for lg in page]
                    if len(page) < 200:
                        break
                out["logs"] = "\n".join(logs)
        except Exception as e:  # noqa: BLE001 - a place that cannot be read is named, not skipped silently
            out.setdefault("artifacts", "")
            out["logs"] = f"(not readable: {type(e).__name__}: {str(e)[:200]})"
    return out


def _rebuilt_report_agrees(sb: Sandbox, summary: dict[str, Any] | None) -> list[str]:
    """The fields in which ``digestguard report`` (rebuilt from the journal) disagrees with the run's own answer."""
    from digestguard.journal import Journal
    from flows.incident_response import run_summary
    from tasks.report.from_journal import report_from_journal

    if not summary or not summary.get("incident"):
        return ["(no run summary)"]
    j = Journal(_journal_of(sb))
    try:
        again = run_summary(report_from_journal(j, summary["incident"]))
    finally:
        j.close()
    keys = ("verdict", "coverage", "detect", "detect_compromised", "assess", "assess_jobs", "assess_secrets",
            "rotate", "rotate_confirmed_manual", "purge", "pin")
    return [k for k in keys if again.get(k) != summary.get(k)]


def score(sb: Sandbox, summary: dict[str, Any] | None, error: str | None,
          flow_run_id: Any | None = None) -> list[StageScore]:
    """Compare what was planted with what happened, checking the backends themselves."""

    s = summary or {}
    out: list[StageScore] = []
    bad_digests = sorted({b.digest for b in sb.attacker.values()})

    det = s.get("detect_compromised", [])
    tagged = sorted({loc.rsplit(":", 1)[-1] for loc in det if loc.startswith(f"mirror/{REPO}:")})
    engine_hit = any(loc.startswith("runner-1/") for loc in det)
    out.append(StageScore("detect", {"registry tags": sb.planted["compromised_tags"], "engine image and container": True},
                          {"registry tags": tagged, "engine image and container": engine_hit},
                          tagged == sb.planted["compromised_tags"] and engine_hit))

    jobs = s.get("assess_jobs", {})
    want_jobs = sb.planted["jobs"]
    got_jobs = {j: jobs.get(j) for j in want_jobs}
    secrets = sorted(s.get("assess_secrets", []))
    hits = s.get("assess", {}).get("network_hits", 0)
    ok = got_jobs == want_jobs and set(sb.planted["secrets"]) <= set(secrets) and hits >= sb.planted["network_hits"]
    out.append(StageScore("assess", {"jobs": want_jobs, "secrets": sb.planted["secrets"], "network_hits": sb.planted["network_hits"]},
                          {"jobs": got_jobs, "secrets": secrets, "network_hits": hits}, ok))

    out.append(_score_rotation(sb, s))
    out.append(_score_contain(sb, s))

    with RegistryClient(sb.registry.host, base_url=sb.registry.base_url) as reg:
        still = [d for d in bad_digests if reg.exists(REPO, d)]
        clean_ok = reg.exists(REPO, sb.clean["v2.1.19"].digest)
    with DockerEngine(sb.podman.url) as eng:
        engine_left = [d for d in bad_digests if eng.images_with_digest(d)]
        engine_clean = bool(eng.images_with_digest(sb.clean["v2.1.19"].digest))
    out.append(StageScore("purge", {"malicious digests left": 0, "clean images kept": True},
                          {"malicious digests left": len(still) + len(engine_left), "clean images kept": clean_ok and engine_clean},
                          not still and not engine_left and clean_ok and engine_clean))

    pulls = [p for ps in sb.github.pulls.values() for p in ps]
    pinned_ok = False
    if pulls:
        branch = pulls[0]["head"]["ref"] if isinstance(pulls[0].get("head"), dict) else pulls[0].get("head")
        show = subprocess.run(["git", "--git-dir", str(sb.root / "git" / "infra.git"), "show", f"{branch}:.github/workflows/scan.yml"],
                              capture_output=True, text=True)
        pinned_ok = f"checkmarx/kics:latest@{sb.clean['latest'].digest}" in show.stdout
    out.append(StageScore("pin", {"pull requests": len([r for r in (summary or {}).get("repositories", [])]) or 1,
                                  "workflow pinned to known-good": True},
                          {"pull requests": len(pulls), "workflow pinned to known-good": pinned_ok}, bool(pulls) and pinned_ok))

    places = _record_texts(sb, summary, flow_run_id)
    values = {**{f"old {k}": v for k, v in sb.old_values.items()}, **{f"new {k}": v for k, v in sb.new_values.items()}}
    seen = sorted(f"{name} in {place}" for name, v in values.items() if v and len(v) >= 8
                  for place, text in places.items() if v in text)
    seen += [f"{place}: {text}" for place, text in places.items() if text.startswith("(not readable")]
    if flow_run_id is not None and not places.get("logs"):
        seen.append("logs: none read (the check would prove nothing)")
    in_slack = [x for x in seen if x.endswith(" in slack")]
    posts = len(sb.slack.calls_to("chat.postMessage"))
    updates = len(sb.slack.calls_to("chat.update"))
    same = _rebuilt_report_agrees(sb, summary)
    out.append(StageScore("notify", {"incident message and updates": True, "secret values in Slack": 0,
                                     "old or new secret values anywhere": [], "report rebuilt from the journal differs in": []},
                          {"incident message and updates": posts >= 1 and updates >= 1, "secret values in Slack": len(in_slack),
                           "old or new secret values anywhere": seen, "report rebuilt from the journal differs in": same},
                          posts >= 1 and updates >= 1 and not seen and not same and len(sb.old_values) >= 4))
    if error:
        out.append(StageScore("flow", "completed", error, False))
    return out


def watch_egress(sb: Sandbox) -> dict[str, Any]:
    """One watch cycle over the sandbox (no image tags, no advisory packs: only what the baselines see), alerts to Slack."""
    from digestguard.inventory import load_inventory
    from tasks.watch.alerts import slack_alerter
    from tasks.watch.cycle import run_watch
    from tasks.watch.state import WatchState

    inv = load_inventory(sb.inventory_path)
    alert, _why = slack_alerter(inv)
    with WatchState.for_inventory(inv) as state:
        reports = run_watch(inv, state, cycles=1, alert=alert, packs=[], inventory_path=str(sb.inventory_path))
    return {"events": [e for r in reports for e in r.events], "alerts_sent": sum(r.alerts_sent for r in reports)}


def score_egress(sb: Sandbox, watched: dict[str, Any] | None, error: str | None = None) -> StageScore:
    """The watch flagged the planted destination, on its first connection, from the right job, and said so in Slack."""
    want = sb.planted["egress"]
    events = [e for e in (watched or {}).get("events", []) if e.kind == "new-destination"]
    hit = next((e for e in events if e.destination == want["destination"]), None)
    texts = [c.params.get("text", "") for c in sb.slack.calls_to("chat.postMessage", ok_only=True)] if sb.slack else []
    draft_ok = False
    if hit is not None and hit.draft_advisory:
        from digestguard.advisory import load_advisory_file

        with contextlib.suppress(Exception):
            draft_ok = any(i.value == want["host"] for i in load_advisory_file(hit.draft_advisory).network)
    expected = {"destination": want["destination"], "job": want["job"], "slack": True, "draft advisory": True,
                "other new destinations": 0}
    actual = {"destination": hit.destination if hit else None, "job": hit.job if hit else None,
              "slack": any(want["destination"] in t for t in texts), "draft advisory": draft_ok,
              "other new destinations": len([e for e in events if e is not hit])}
    return StageScore("egress", expected, actual, actual == expected and error is None, error or "")


def _score_rotation(sb: Sandbox, s: dict[str, Any]) -> StageScore:
    """Every planted secret has a new value in its backend, and GitHub holds the same new value.

    Each is scored with what was checked: an issued credential by its issuer's answer to the new value, the
    vendor key by a person's confirmation, the rest by their stores alone (``STORE_ONLY``: never "rotated").
    """

    results: dict[str, bool] = {}
    gh = sb.github
    client = hvac.Client(url=sb.openbao.addr, token=sb.openbao.token)
    for key in [k for k in sb.planted["secrets"] if k.startswith("KICS_API_TOKEN")]:
        n = 0 if key == "KICS_API_TOKEN" else int(key.rsplit("_", 1)[1])
        current = client.secrets.kv.v2.read_secret_version(path=f"ci/kics-api-token-{n}", raise_on_deleted_version=True)
        value = current["data"]["data"]["value"]
        sb.new_values[key] = value
        results[key] = current["data"]["metadata"]["version"] >= 2 and _gh_value(gh, key) == value
    iam = boto3.client("iam", endpoint_url=sb.moto.endpoint_url, region_name="us-east-1")
    keys = iam.list_access_keys(UserName="ci-deployer")["AccessKeyMetadata"]
    ids = [k["AccessKeyId"] for k in keys]
    sb.new_values["AWS_SECRET_ACCESS_KEY"] = _gh_value(gh, "AWS_SECRET_ACCESS_KEY") or ""
    results["AWS_ACCESS_KEY_ID"] = sb.planted["old_iam_key"] not in ids and len(ids) == 1 and _gh_value(gh, "AWS_ACCESS_KEY_ID") == ids[0]
    sm = boto3.client("secretsmanager", endpoint_url=sb.moto.endpoint_url, region_name="us-east-1")
    cur = sm.get_secret_value(SecretId="ci/registry-password", VersionStage="AWSCURRENT")["SecretString"]
    sb.new_values["REGISTRY_PASSWORD"] = cur
    results["REGISTRY_PASSWORD"] = not cur.startswith("drill-old-") and _gh_value(gh, "REGISTRY_PASSWORD") == cur
    results["SONAR_TOKEN"] = _gcp_rotated(sb)
    results["VENDOR_API_KEY"] = "VENDOR_API_KEY" in s.get("rotate_confirmed_manual", [])  # and contain checks the vendor
    try:
        for name, (_old, new, copies) in _checks(sb).items():  # a new credential its issuer accepts, copied everywhere
            results[name] = new == "accepted" and copies
        asked = True
    except Exception:  # noqa: BLE001 - the contain stage names the error
        asked = False
    want = {k: ISSUER_ACCEPTS if k in ISSUED else PERSON_ROTATED if k == "VENDOR_API_KEY" else STORE_ONLY
            for k in sb.planted["secrets"]}
    actual = {k: ISSUER_NOT_ASKED if k in ISSUED and not asked else label if results.get(k) else NOT_REPLACED
              for k, label in want.items()}
    return StageScore("rotate", want, actual, actual == want)


def _issuer_checks(sb: Sandbox) -> dict[str, tuple[str, str, bool]]:
    """Per issued credential, asked of its issuer by the drill itself: (old verdict, new verdict, copies in step).

    The new value is read from its store and the copy from the GitHub stand-in; the probes are the
    issuers' own answers (STS, a database login, lookup-self, Hub's login, GitLab's token self).
    """
    out: dict[str, tuple[str, str, bool]] = {}
    bao = hvac.Client(url=sb.openbao.addr, token=sb.openbao.token)
    kv = lambda path: bao.secrets.kv.v2.read_secret_version(path=path, raise_on_deleted_version=True)["data"]["data"]  # noqa: E731

    def ask(name: str, fn, old: dict[str, str], new: dict[str, str], copies: bool) -> None:
        verdicts = []
        for m in (old, new):
            try:
                verdicts.append(fn(m)[0])
            except Exception as e:  # noqa: BLE001 - an issuer that does not answer proves nothing
                verdicts.append(f"unknown ({type(e).__name__})")
        out[name] = (verdicts[0], verdicts[1], copies)
        sb.old_values.update({f"{name}:{k}:{i}": v for i, m in enumerate((old, new)) for k, v in m.items()
                              if k not in ("username", "uuid", "access_key_id")})

    sm = boto3.client("secretsmanager", endpoint_url=sb.moto.endpoint_url, region_name="us-east-1")
    new = json.loads(sm.get_secret_value(SecretId="ci/aws-deployer", VersionStage="AWSCURRENT")["SecretString"])
    ask("AWS_ACCESS_KEY_ID", lambda m: aws_sts.caller_identity(m["access_key_id"], m["secret_access_key"],
                                                               endpoint_url=sb.moto.endpoint_url),
        sb.old_creds["AWS_ACCESS_KEY_ID"], new,
        _gh_value(sb.github, "AWS_ACCESS_KEY_ID") == new.get("access_key_id")
        and _gh_value(sb.github, "AWS_SECRET_ACCESS_KEY") == new.get("secret_access_key"))
    server = postgres.Server(host=sb.postgres.host, port=sb.postgres.port)
    new = kv("ci/db-app")
    ask("DATABASE_PASSWORD", lambda m: postgres.try_login(server, "ci_app", m["password"]), sb.old_creds["DATABASE_PASSWORD"],
        new, _gh_value(sb.github, "DATABASE_PASSWORD") == new.get("password"))
    for name, path, probe in (
            ("VENDOR_API_KEY", "ci/vendor-api-key", lambda m: gitlab.token_probe(sb.gitlab.url, m["value"])),
            ("VAULT_TOKEN", "ci/vault-token", lambda m: vault.token_probe(sb.openbao.addr, m["value"])),
            ("DOCKERHUB_TOKEN", "ci/dockerhub-token", lambda m: dockerhub.pat_probe(sb.hub.url, "acme-ci", m["value"])),
            ("GITLAB_TOKEN", "ci/gitlab-token", lambda m: gitlab.token_probe(sb.gitlab.url, m["value"]))):
        new = kv(path)
        ask(name, probe, sb.old_creds[name], new, _gh_value(sb.github, name) == new.get("value"))
    return out


def _checks(sb: Sandbox) -> dict[str, tuple[str, str, bool]]:
    """The issuer checks, asked once per scoring (rotate and contain both read them)."""
    if sb.issuer_checks is None:
        sb.issuer_checks = _issuer_checks(sb)
    return sb.issuer_checks


def _score_contain(sb: Sandbox, s: dict[str, Any]) -> StageScore:
    """Every issued credential: the old value refused and the new one accepted by its issuer, the copies the same
    as the store; and the playbook's own answer to "used after exposure?" is ``yes`` for the planted uses."""
    claims = s.get("contain") or {}
    actual: dict[str, dict[str, Any]] = {}
    try:
        checks = _checks(sb)
    except Exception as e:  # noqa: BLE001 - a store that cannot be read is a failed stage, not a crashed drill
        return StageScore("contain", {}, {"error": f"{type(e).__name__}: {str(e)[:300]}"}, False)
    for name, (old, new, copies) in checks.items():
        actual[name] = {"old_refused": old == "refused", "new_works": new == "accepted", "copies_in_step": copies,
                        "used_after_exposure": (claims.get(name) or {}).get("used_after_exposure") or "not-yet-known"}
    want = {n: {"old_refused": True, "new_works": True, "copies_in_step": True,
                **({"used_after_exposure": "yes"} if n in USED_AFTER_EXPOSURE else {})} for n in ISSUED}
    # the manual item: the person rotated it at the vendor, the playbook propagated the value and probed it
    want["VENDOR_API_KEY"] = {"old_refused": True, "new_works": True, "copies_in_step": True}
    ok = all(all(actual.get(n, {}).get(k) == v for k, v in w.items()) for n, w in want.items())
    return StageScore("contain", want, actual, ok)


def _gh_value(gh, name: str) -> str | None:
    try:
        return gh.decrypt_secret("repo:acme/infra", name)
    except Exception:
        return None


def _gcp_rotated(sb: Sandbox) -> bool:

    gsm = secretmanager.SecretManagerServiceClient(credentials=AnonymousCredentials(), transport="rest",
                                                   client_options=ClientOptions(api_endpoint=sb.gcp.url))
    v = gsm.access_secret_version(request={"name": "projects/drill/secrets/sonar-token/versions/latest"})
    value = v.payload.data.decode()
    sb.new_values["SONAR_TOKEN"] = value
    return not value.startswith("drill-old-") and _gh_value(sb.github, "SONAR_TOKEN") == value


# ------------------------------------------------------------------------------------------- running it
def run_drill(advisory: str = "kics-2026-04", *, auto_approve: bool = False, scale: int = 1, keep: bool = False,
              on_ready=None) -> dict[str, Any]:
    """Build the sandbox, run ``incident_response`` in execute mode, score it, clean up. Returns the scorecard."""

    base = load_advisory(advisory)
    root = Path(tempfile.mkdtemp(prefix="digestguard-drill-"))
    t0 = time.monotonic()
    summary: dict[str, Any] | None = None
    error: str | None = None
    flow_run_id = None
    with contextlib.ExitStack() as stack:
        if not keep:
            stack.callback(shutil.rmtree, root, True)
        sb = build_sandbox(base, root, stack, scale=scale)
        setup = time.monotonic() - t0
        if on_ready:
            on_ready(sb)
        t1 = time.monotonic()
        watched, watch_error = None, None
        try:  # the watch that would have caught it: the runner's first call to a place no advisory names
            watched = watch_egress(sb)
        except Exception as e:  # the scorecard says so; the incident still runs
            watch_error = f"{type(e).__name__}: {str(e)[:300]}"
        watch_s = time.monotonic() - t1
        try:
            with drill_approver("drill", drill_person(sb)) if auto_approve else contextlib.nullcontext():
                state = incident_response(advisory=str(sb.advisory_path), inventory=str(sb.inventory_path), mode="execute",
                                          triggered_by="drill-runner", report_path=str(root / "report.html"),
                                          return_state=True)
            flow_run_id = state.state_details.flow_run_id
            summary = state.result(raise_on_failure=False)
            if not isinstance(summary, dict):
                error, summary = f"{type(summary).__name__}: {str(summary)[:500]}", None
            elif not state.is_completed():
                error = state.message
        except Exception as e:  # the scorecard says what failed; the drill still cleans up
            error = f"{type(e).__name__}: {str(e)[:500]}"
        run = time.monotonic() - t1
        stages = score(sb, summary, error, flow_run_id)
        stages.append(score_egress(sb, watched, watch_error))
        card = {
            "advisory": base.id, "incident": (summary or {}).get("incident"), "ok": all(x.ok for x in stages),
            "stages": [{"name": x.name, "expected": x.expected, "actual": x.actual, "ok": x.ok} for x in stages],
            "timings": {"setup_s": round(setup, 2), "playbook_s": round(run, 2), "total_s": round(time.monotonic() - t0, 2),
                        "watch_egress_s": round(watch_s, 2),
                        **{f"setup_{k}_s": round(v, 2) for k, v in sb.timings.items()},
                        **{f"stage_{k}_s": v for k, v in ((summary or {}).get("timings") or {}).items()}},
            "scale": scale, "sandbox": str(root) if keep else None,
        }
    return card


def run_sandbox(advisory: str = "kics-2026-04", *, scale: int = 1, on_ready=None) -> None:
    """Build the drill's estate and keep it up until SIGINT or SIGTERM, then tear everything down.

    ``on_ready(sandbox)`` is called once it is up (the CLI prints where the inventory and advisory are). The
    on-call then runs ``digestguard respond --execute`` against it and answers the gates by hand.
    """
    base = load_advisory(advisory)
    root = Path(tempfile.mkdtemp(prefix="digestguard-sandbox-"))
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with contextlib.ExitStack() as stack:
            stack.callback(shutil.rmtree, root, True)
            sb = build_sandbox(base, root, stack, scale=scale)
            if on_ready:
                on_ready(sb)
            while not stop.wait(0.5):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def render_scorecard(card: dict[str, Any]) -> str:
    lines = [f"digestguard drill: {card['advisory']}  incident {card.get('incident') or '-'}", ""]
    for st in card["stages"]:
        lines.append(f"  [{'PASS' if st['ok'] else 'FAIL'}] {st['name']:8} expected {json.dumps(st['expected'], default=str)}")
        if not st["ok"]:
            lines.append(f"  {'':15} actual   {json.dumps(st['actual'], default=str)}")
    t = card["timings"]
    lines += ["", f"  set-up {t['setup_s']} s, playbook {t['playbook_s']} s, total {t['total_s']} s",
              f"  {'ALL STAGES MET THEIR EXPECTATIONS' if card['ok'] else 'SOME STAGES FAILED'}"]
    return "\n".join(lines)


SCORECARD_KEY = "drill-scorecard"


def publish_scorecard(card: dict[str, Any]) -> None:
    """The scorecard as a Markdown artifact (key ``drill-scorecard``) on the run, readable from the server and UI."""
    def cell(v: Any) -> str:
        return md_cell(json.dumps(v, default=str))[:500]

    rows = [f"| {md_cell(st['name'])} | {'PASS' if st['ok'] else '**FAIL**'} | {cell(st['expected'])} "
            f"| {'' if st['ok'] else cell(st['actual'])} |" for st in card["stages"]]
    t = card["timings"]
    verdict = "all stages met their expectations" if card["ok"] else "SOME STAGES FAILED"
    text = "\n".join([f"## Drill {md_cell(card['advisory'])}: {verdict}", "",
                      f"Incident `{md_cell(card.get('incident') or '-')}`, scale {card.get('scale', 1)}; "
                      f"set-up {t['setup_s']} s, playbook {t['playbook_s']} s, total {t['total_s']} s.", "",
                      "| stage | result | expected | actual |", "|---|---|---|---|", *rows, ""])
    create_markdown_artifact(key=SCORECARD_KEY, markdown=text, description="digestguard drill scorecard")


@flow(name="drill")
def drill_flow(advisory: str = "kics-2026-04", scale: int = 1) -> dict[str, Any]:
    """The drill as a deployable flow (``digestguard serve``); the incident flow runs as its subflow.

    Its gates approve themselves as ``drill`` (the sandbox is its own): that approver is an in-process
    context around the subflow call, not a parameter, so no deployment of ``incident_response`` can reach it.
    Publishes the scorecard as an artifact and ends Failed, with the scorecard as its data, when a stage missed.
    """
    card = run_drill(advisory, auto_approve=True, scale=scale)
    publish_scorecard(card)
    missed = [st["name"] for st in card["stages"] if not st["ok"]]
    if missed or not card["ok"]:
        return Failed(message=f"drill {card['advisory']}: {', '.join(missed) or 'the scorecard'} did not meet expectations",
                      data=card)
    return card
