"""Faults stay local (issue 15, point 2): a hostile registry on loopback, one fault at a time.

The registry is :mod:`tests.fakes.hostile_registry`, a stand-in speaking the OCI distribution wire protocol
(no real registry misbehaves on demand). For every fault the detect stage must: finish within a bounded time,
report the faulty item precisely, still report the malicious ``latest`` in the same repository, and give the
right coverage and exit code. Memory is measured in a subprocess (its own peak RSS) for the huge manifest.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from digestguard.advisory import load_advisory_file
from digestguard.findings import DetectResult, exit_code
from digestguard.inventory import Registry
from integrations.registry import RegistryClient
from tasks.detect import detect_registry, source_coverage
from tests.fakes.hostile_registry import CHILD_DIGESTS, FAULTY_TAG, LATEST_DIGEST, REPO, pack_yaml, start_hostile_registry

# The production rules with short bounds, so the suite is quick: a call ends within DEADLINE seconds.
DEADLINE = 4.0
BOUND = DEADLINE * 2 + 6  # the deadline, one socket timeout past it, and the rest of the stage

# fault -> (what the faulty item's error says, the coverage state)
EXPECTED = {
    "401": ("unauthorized", "partial"),
    "429": ("rate limited", "partial"),
    "500": ("internal", "partial"),
    "503-long": ("3600s", "partial"),
    "non-json": ("not JSON", "partial"),
    "malformed": ("has no 'digest'", "partial"),
    "wrong-types": ("not a list", "partial"),
    "huge": ("byte cap", "partial"),
    "drip": ("deadline", "partial"),
    "header-drip": ("deadline", "partial"),
    "tags-unbounded": ("bound reached", "partial"),
    "tags-string": ("not a list of strings", "partial"),
}


@pytest.fixture(scope="module")
def advisory(tmp_path_factory):
    p = tmp_path_factory.mktemp("pack") / "pack.json"
    p.write_text(pack_yaml())
    return load_advisory_file(p)


def _client(base_url: str) -> RegistryClient:
    return RegistryClient(base_url.removeprefix("http://"), base_url=base_url, deadline=DEADLINE, timeout=2.0,
                          max_wait=2.0, backoff=0.05, max_backoff=0.2, max_tags=1500)


def _run(fault: str, advisory):
    reg = start_hostile_registry(fault)
    entry = Registry(name="hostile", url=reg.base_url)
    try:
        with _client(reg.base_url) as client:
            t0 = time.monotonic()
            findings = detect_registry(entry, advisory, client)
            took = time.monotonic() - t0
    finally:
        reg.stop()
    cov = source_coverage("hostile", "registry", findings)
    return findings, cov, took, DetectResult(advisory=advisory.id, findings=findings, coverage=[cov])


@pytest.mark.parametrize("fault", sorted(EXPECTED))
def test_one_fault_stays_local(fault, advisory):
    findings, cov, took, result = _run(fault, advisory)
    text, state = EXPECTED[fault]
    assert took < BOUND, f"{fault}: took {took:.1f}s"
    latest = [f for f in findings if f.location == f"hostile/{REPO}:latest"]
    assert latest and latest[0].verdict == "compromised" and latest[0].digest == LATEST_DIGEST, findings
    # the children exist by digest too: each is its own (untagged) compromised finding; nothing else is
    assert {f.digest for f in findings if f.verdict == "compromised"} == {LATEST_DIGEST, *CHILD_DIGESTS.values()}
    where = f"hostile/{REPO}" if fault.startswith("tags-") else f"hostile/{REPO}:{FAULTY_TAG}"
    bad = [f for f in findings if f.location == where and f.error]
    assert bad, (fault, [(f.location, f.verdict, f.error) for f in findings])
    assert bad[0].verdict in ("unknown", "suspect")
    assert text.lower() in bad[0].error.lower(), bad[0].error
    assert cov.state == state and cov.reason and text.lower() in cov.reason.lower()
    assert result.verdict == "found" and exit_code(result.verdict) == 1  # found, though not everything was read


@pytest.mark.parametrize("fault", ["not-registry", "unreachable"])
def test_no_registry_is_unchecked_never_clean(fault, advisory):
    if fault == "unreachable":
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{s.getsockname()[1]}"
        entry = Registry(name="hostile", url=url)
        t0 = time.monotonic()
        with _client(url) as client:
            findings = detect_registry(entry, advisory, client)
        took = time.monotonic() - t0
    else:
        findings, _cov, took, _ = _run(fault, advisory)
    cov = source_coverage("hostile", "registry", findings)
    assert took < BOUND
    assert [f.verdict for f in findings] == ["unknown"]
    assert cov.state == "unchecked"
    assert ("no OCI distribution API" if fault == "not-registry" else "ConnectError") in cov.reason
    result = DetectResult(advisory=advisory.id, findings=findings, coverage=[cov])
    assert result.verdict == "incomplete" and exit_code(result.verdict) == 3


def test_tag_list_bound_checks_only_the_bounded_tags(advisory):
    reg = start_hostile_registry("tags-unbounded")
    try:
        with _client(reg.base_url) as client:
            tags, complete = client.list_tags_bounded(REPO)
    finally:
        reg.stop()
    assert not complete and len(tags) == 1500
    pages = reg.calls[("GET", f"/v2/{REPO}/tags/list")]
    assert pages == 2  # 1001 + 1000 tags: the second page crosses the bound, no third is asked for


def test_huge_manifest_stays_under_300_mb(tmp_path):
    """The whole detect stage over the production client defaults, in a subprocess that reports its own peak RSS.

    The peak is the process's own ``VmHWM`` (a high-water mark of its address space, new at exec), not
    ``getrusage().ru_maxrss``: Linux carries ``ru_maxrss`` across fork and exec, so a child of a pytest
    process grown to 490 MB during a full run reported 491 MB before it had done anything.
    """
    (tmp_path / "pack.json").write_text(pack_yaml())
    script = textwrap.dedent(f"""
        import json, re, sys, time
        def peak_mb():
            return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) / 1024
        sys.path.insert(0, {str(tmp_path.parent)!r})
        from tests.fakes.hostile_registry import start_hostile_registry
        from digestguard.advisory import load_advisory_file
        from digestguard.findings import exit_code
        from digestguard.inventory import Inventory
        from tasks.detect import detect
        reg = start_hostile_registry("huge")
        inv = Inventory.model_validate({{"registries": [{{"name": "hostile", "url": reg.base_url}}]}})
        before = peak_mb()
        t0 = time.monotonic()
        res = detect(load_advisory_file({str(tmp_path / "pack.json")!r}), inv)
        took = time.monotonic() - t0
        reg.stop()
        print(json.dumps({{"rss_mb": peak_mb(), "took": took,
                          "rss_before_mb": before,
                          "exit": exit_code(res.verdict), "coverage": [c.model_dump() for c in res.coverage],
                          "findings": [[f.location, f.verdict, f.error] for f in res.findings]}}))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["rss_mb"] < 300, out
    assert out["exit"] == 1 and out["coverage"][0]["state"] == "partial"
    assert any(loc.endswith(f":{FAULTY_TAG}") and "cap" in (err or "") for loc, _v, err in out["findings"])
    assert any(loc.endswith(":latest") and v == "compromised" for loc, v, _e in out["findings"])
