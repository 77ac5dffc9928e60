"""Used after exposure? Verdicts from the providers' own trails.

* AWS CloudTrail: moto has no ``LookupEvents``, so ``flows/drill/servers/cloudtrail.py`` speaks CloudTrail's
  JSON 1.1 protocol (and its 2 requests/s limit) to the unmodified boto3 client.
* OpenBao: a real server with a file audit device; the token is found by the HMAC ``sys/audit-hash`` gives.
* PostgreSQL: the real server's ``log_connections`` lines.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import hvac
import psycopg
import pytest
from botocore.config import Config
from pydantic import SecretStr

from digestguard.errors import Unavailable
from flows.drill.servers.cloudtrail import start_cloudtrail_server
from flows.drill.services import start_openbao
from integrations import aws_cloudtrail, vault
from tasks.used import ProbeWindow, aws_usage, postgres_usage, vault_usage

KEY = "AKIAEXPOSED000000001"
T1 = datetime(2026, 4, 22, 12, 0, tzinfo=timezone.utc)
T2 = T1 + timedelta(hours=1)


@pytest.fixture()
def trail():
    server = start_cloudtrail_server(page_size=2)
    yield server
    server.stop()


def _ct(url: str, retries: bool = True):
    cfg = Config(retries={"total_max_attempts": 1}) if not retries else None
    return boto3.client("cloudtrail", endpoint_url=url, region_name="us-east-1", aws_access_key_id="AKIADUMMY",
                        aws_secret_access_key="dummy", config=cfg)


def test_cloudtrail_use_after_exposure_is_yes_with_evidence_and_our_probe_left_out(trail):
    trail.add_event("ListBuckets", T1 - timedelta(minutes=5), KEY)  # before exposure: not counted
    for i in range(4):
        trail.add_event("GetObject", T1 + timedelta(minutes=10 + i), KEY, ip="198.51.100.7")
    trail.add_event("GetCallerIdentity", T2 - timedelta(seconds=2), KEY, source="sts.amazonaws.com")  # our probe
    trail.add_event("GetObject", T1 + timedelta(minutes=20), "AKIAOTHERKEY00000002")  # another key
    use = aws_usage(_ct(trail.url), KEY, T1, T2, now=T2 + timedelta(hours=1),
                    ours=ProbeWindow(T2 - timedelta(seconds=3), T2))
    assert use.verdict == "yes" and len(use.evidence) == 4 and use.excluded == 1
    assert all("GetObject (s3.amazonaws.com) by ci-deployer from 198.51.100.7" in line for line in use.evidence)
    assert "between 2026-04-22T12:00:00+00:00 and 2026-04-22T13:00:00+00:00" in use.person_item("deploy-key")
    # 3 pages of 2, never faster than CloudTrail's 2 requests/s, so never throttled
    times = [t for t, _ in trail.requests]
    assert len(times) == 3 and trail.throttled == 0
    assert all(b - a >= 0.45 for a, b in zip(times, times[1:], strict=False))
    assert [b.get("LookupAttributes") for _, b in trail.requests][0] == [{"AttributeKey": "AccessKeyId", "AttributeValue": KEY}]


def test_two_lookups_at_once_share_the_rate_limit(trail):
    import threading

    for i in range(6):
        trail.add_event("GetObject", T1 + timedelta(minutes=i), KEY)
    ct = _ct(trail.url)
    out: list = []
    threads = [threading.Thread(target=lambda: out.append(aws_usage(ct, KEY, T1, T2, now=T2 + timedelta(hours=1))))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [u.verdict for u in out] == ["yes", "yes"] and trail.throttled == 0


def test_cloudtrail_pagination_resumes_from_the_page_token_after_an_outage(trail):
    ids = {trail.add_event("GetObject", T1 + timedelta(minutes=i), KEY)["EventId"] for i in range(7)}
    trail.fail_after = 2
    tokens: list[str] = []
    got: list[str] = []
    with pytest.raises(Unavailable):
        for e in aws_cloudtrail.lookup_by_access_key(_ct(trail.url, retries=False), KEY, T1, T2, on_page=tokens.append):
            got.append(e.event_id)
    assert len(got) == 4 and tokens == ["page-2", "page-4"]
    trail.fail_after = None
    for e in aws_cloudtrail.lookup_by_access_key(_ct(trail.url), KEY, T1, T2, resume_token=tokens[-1]):
        got.append(e.event_id)
    assert sorted(got) == sorted(ids) and len(got) == len(set(got)) == 7
    assert trail.requests[-2][1]["NextToken"] == "page-4"  # the resumed run started at the journaled token


def test_no_is_said_only_after_cloudtrails_delivery_horizon(trail):
    ct = _ct(trail.url)
    assert aws_usage(ct, KEY, T1, T2, now=T2 + timedelta(minutes=5)).verdict == "not-yet-known"
    late = aws_usage(ct, KEY, T1, T2, now=T2 + timedelta(minutes=16))
    assert late.verdict == "no" and late.person_item("k") is None


def test_an_unreachable_trail_is_not_yet_known_never_no():
    ct = _ct("http://127.0.0.1:9", retries=False)
    use = aws_usage(ct, KEY, T1, T2, now=T2 + timedelta(days=1))
    assert use.verdict == "not-yet-known" and "could not be read" in use.evidence[0]


@pytest.fixture(scope="module")
def audited_bao():
    d = tempfile.mkdtemp(prefix="dg-audit-")
    log = str(Path(d) / "audit.log")
    server = start_openbao(audit_log=log)
    yield server, log
    server.stop()
    shutil.rmtree(d, ignore_errors=True)


def test_openbao_audit_log_finds_the_tokens_requests_by_its_hmac(audited_bao):
    server, log = audited_bao
    root = hvac.Client(url=server.addr, token=server.token)
    start = datetime.now(timezone.utc) - timedelta(seconds=1)
    used = root.auth.token.create(policies=["default"], ttl="1h")["auth"]["client_token"]
    idle = root.auth.token.create(policies=["default"], ttl="1h")["auth"]["client_token"]
    hvac.Client(url=server.addr, token=used).auth.token.lookup_self()  # the attacker's use
    probe_at = datetime.now(timezone.utc)
    time.sleep(1.2)
    ours_from = datetime.now(timezone.utc) - timedelta(milliseconds=100)
    hvac.Client(url=server.addr, token=used).auth.token.lookup_self()  # our probe, at the end of the window
    end = datetime.now(timezone.utc) + timedelta(seconds=1)
    client = vault.connect(server.addr, server.token)
    use = vault_usage(client, "file", log, SecretStr(used), start, end,
                      ours=ProbeWindow(ours_from, end, slack=timedelta(0)))
    assert use.verdict == "yes" and use.excluded == 1 and len(use.evidence) == 1, use
    assert "read auth/token/lookup-self" in use.evidence[0]
    assert datetime.fromisoformat(use.evidence[0].split(" ")[0]) <= probe_at
    assert used not in Path(log).read_text()  # the audit log holds HMACs, never the token
    assert vault_usage(client, "file", log, SecretStr(idle), start, end, now=end).verdict == "no"
    missing = vault_usage(client, "file", "/nonexistent/audit.log", SecretStr(idle), start, end)
    assert missing.verdict == "not-yet-known"


def test_postgres_connection_log_lines_for_the_role(postgres):
    with psycopg.connect(postgres.dsn(), autocommit=True) as c:
        c.execute('DROP ROLE IF EXISTS "used_role"')
        c.execute("CREATE ROLE \"used_role\" LOGIN PASSWORD 'pw-used-1'")
        c.execute('DROP ROLE IF EXISTS "idle_role"')
        c.execute("CREATE ROLE \"idle_role\" LOGIN PASSWORD 'pw-idle-1'")
    start = datetime.now(timezone.utc) - timedelta(seconds=1)
    psycopg.connect(postgres.dsn(user="used_role", password="pw-used-1")).close()
    time.sleep(0.3)
    end = datetime.now(timezone.utc) + timedelta(seconds=1)
    use = postgres_usage(postgres.log_path, "used_role", start, end)
    assert use.verdict == "yes" and "login as used_role to database postgres" in use.evidence[0], use
    assert postgres_usage(postgres.log_path, "idle_role", start, end, now=end).verdict == "no"
    assert postgres_usage("/nonexistent/pg.log", "idle_role", start, end).verdict == "not-yet-known"


# --------------------------------------------------------------------------- Docker Hub usage export, GitHub audit log

HUB_CSV = """datehour,user_name,repository,access_token_name,ips,tag,digest,version_checks,pulls
2026-04-22 11:00:00,acme-ci,checkmarx/kics,ci-pull,10.0.0.5,latest,sha256:good,0,3
2026-04-22 12:00:00,acme-ci,checkmarx/kics,ci-pull,"198.51.100.7,10.0.0.5",latest,sha256:bad,0,2
2026-04-22 12:00:00,acme-ci,library/alpine,other-token,10.0.0.9,3.20,sha256:bad,0,1
2026-04-22 12:00:00,acme-ci,checkmarx/kics,ci-pull,10.0.0.5,alpine,sha256:alp,0,1
"""


def test_dockerhub_usage_export_says_yes_names_ips_and_flags_the_malicious_digest(tmp_path):
    from tasks.used import dockerhub_usage, malicious_pulls

    export = tmp_path / "usage.csv"
    export.write_text(HUB_CSV)
    u = dockerhub_usage(export, "ci-pull", T1, T2, now=T2 + timedelta(hours=3), malicious=["sha256:bad"])
    assert u.verdict == "yes" and len(u.evidence) == 2, u  # the 11:00 row is before the exposure; other-token is not ours
    bad = next(e for e in u.evidence if "sha256:bad" in e)
    assert "198.51.100.7, 10.0.0.5" in bad and bad.endswith("MALICIOUS DIGEST") and "2 pull(s) of checkmarx/kics:latest" in bad
    # which of our tokens and IPs pulled a malicious digest, from the same export
    pulled = {(p.token_name, p.ips) for p in malicious_pulls(export, ["sha256:bad"])}
    assert pulled == {("ci-pull", ("198.51.100.7", "10.0.0.5")), ("other-token", ("10.0.0.9",))}
    # no rows for the token: "no" only after the export's horizon
    assert dockerhub_usage(export, "unused", T1, T2, now=T2 + timedelta(minutes=30)).verdict == "not-yet-known"
    assert dockerhub_usage(export, "unused", T1, T2, now=T2 + timedelta(hours=3)).verdict == "no"


def test_a_broken_usage_export_is_not_yet_known_naming_the_file_and_column(tmp_path):
    from tasks.used import dockerhub_usage

    export = tmp_path / "usage.csv"
    export.write_text("hour,repository,tag,digest\n2026-04-22 12:00:00,a/b,t,sha256:x\n")
    u = dockerhub_usage(export, "ci-pull", T1, T2, now=T2 + timedelta(hours=3))
    assert u.verdict == "not-yet-known" and "usage.csv" in u.evidence[0] and "access_token_name" in u.evidence[0]
    export.write_text("datehour,access_token_name,ips,repository,tag,digest\nyesterday-ish,ci-pull,1.2.3.4,a/b,t,d\n")
    u = dockerhub_usage(export, "ci-pull", T1, T2, now=T2 + timedelta(hours=3))
    assert u.verdict == "not-yet-known" and "usage.csv:2" in u.evidence[0]
    assert dockerhub_usage(tmp_path / "missing.csv", "ci-pull", T1, T2).verdict == "not-yet-known"


def test_github_audit_log_by_hashed_token_never_sends_the_token():
    """The GitHub stand-in (flows/drill/servers/github.py) answers GET /orgs/{org}/audit-log with GitHub's
    phrase syntax (hashed_token:"...", created:>=...) and entry shape (@timestamp in ms, actor_ip)."""
    from flows.drill.servers.github import DEFAULT_TOKEN, GitHubServer
    from integrations.github import GitHubClient
    from tasks.used import github_usage

    exposed = "github_pat_" + "E" * 60
    gh = GitHubServer().start()
    try:
        gh.add_audit_event("acme", "git.clone", T1 + timedelta(minutes=20), token=exposed, actor_ip="198.51.100.99",
                           repo="acme/infra")
        gh.add_audit_event("acme", "git.clone", T1 - timedelta(minutes=20), token=exposed)  # before the exposure
        gh.add_audit_event("acme", "repo.create", T1 + timedelta(minutes=30), token="github_pat_" + "O" * 60)
        with GitHubClient(DEFAULT_TOKEN, gh.url) as client:
            u = github_usage(client, "acme", SecretStr(exposed), T1, T2, now=T2 + timedelta(hours=1))
            assert u.verdict == "yes" and len(u.evidence) == 1, u
            assert "git.clone by ci-bot from 198.51.100.99 on acme/infra" in u.evidence[0]
            none = github_usage(client, "acme", SecretStr("github_pat_" + "N" * 60), T1, T2, now=T2 + timedelta(hours=1))
            assert none.verdict == "no"
        assert not [c for c in gh.calls if exposed in str(c.query) or exposed in str(c.headers)]
        with GitHubClient(DEFAULT_TOKEN, "http://127.0.0.1:9", max_retries=0) as dead:
            assert github_usage(dead, "acme", SecretStr(exposed), T1, T2).verdict == "not-yet-known"
    finally:
        gh.stop()
