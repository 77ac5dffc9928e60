"""Assess over many repositories: repository contents scanned in worker processes give the same answer as one
process, every checkout is read once, and the inventory's secret look-up is an index (first name or alias wins)."""

from __future__ import annotations

import yaml

import tasks.scan.ci_secrets as cs
from digestguard.findings import ExposedJob
from digestguard.inventory import load_inventory
from tasks.scan.ci_secrets import JobOrigin, exposed_secrets, job_key

N = 18
WORKFLOW = """on: push
jobs:
  scan:
    runs-on: ubuntu-latest
    container: checkmarx/kics:latest
    env:
      SHARED_TOKEN: ${{ secrets.SHARED_TOKEN }}
      OWN_{i}: ${{ secrets.OWN_TOKEN_{i} }}
"""


def _estate(tmp_path):
    repos, secrets = [], [{"name": "SHARED_TOKEN", "backend": "manual"}]
    for i in range(N):
        root = tmp_path / f"r{i}"
        (root / ".github" / "workflows").mkdir(parents=True)
        (root / ".github" / "workflows" / "scan.yml").write_text(WORKFLOW.replace("{i}", str(i)))
        (root / "settings.py").write_text(f'DB_PASSWORD = "hunter2-{i}-Zx8#kQ2mP9vL4wR7"\n')
        (root / ".gitlab-ci.yml").write_text(f'deploy:\n  variables:\n    API_TOKEN: "glpat-{i:02d}Xq7rT2mZ9vB4nK8wLp"\n')
        repos.append({"name": f"r{i}", "kind": "local", "path": f"./r{i}"})
        secrets.append({"name": f"own-{i}", "backend": "manual", "aliases": [f"OWN_TOKEN_{i}", f"OWN_{i}"]})
    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump({"repositories": repos, "secrets": secrets}))
    inv = load_inventory(tmp_path / "inventory.yaml")
    jobs, origins = [], {}
    for i in range(N):
        for verdict in ("confirmed", "probable"):
            job = ExposedJob(source="s", job=f"r{i}/{verdict}.log", verdict=verdict, reason="t")
            jobs.append(job)
            origins[job_key("s", job.job)] = JobOrigin(repository=f"r{i}")
    return inv, jobs, origins


def test_process_scan_equals_one_process_and_reads_each_checkout_once(tmp_path, monkeypatch):
    inv, jobs, origins = _estate(tmp_path)
    scanned: list[int] = []
    real = cs.scan_many_repository_contents

    def counting(checkouts, **kw):
        scanned.append(len(checkouts))
        return real(checkouts, **kw)

    monkeypatch.setattr(cs, "scan_many_repository_contents", counting)
    monkeypatch.setattr(cs, "PROCESS_SCAN_MIN", 8)
    in_processes = exposed_secrets(jobs, inv, origins)
    monkeypatch.setattr(cs, "PROCESS_SCAN_MIN", 10_000)
    one_process = exposed_secrets(jobs, inv, origins)
    assert scanned == [N, N]  # one batch of every distinct checkout, not one scan per job
    assert [s.model_dump() for s in in_processes[0]] == [s.model_dump() for s in one_process[0]]
    assert in_processes[1] == one_process[1]
    by_name = {s.name: s for s in in_processes[0]}
    assert len(by_name["SHARED_TOKEN"].exposed_by) == 2 * N  # every job, each once
    assert by_name["own-7"].mapped and by_name["own-7"].exposed_by == ["s:r7/confirmed.log", "s:r7/probable.log"]
    assert "DB_PASSWORD" in by_name and not by_name["DB_PASSWORD"].mapped
    # a literal in a CI definition is still found (definitions are scanned line by line, references blanked)
    assert any("found in repository r3 file .gitlab-ci.yml:3" in h for h in by_name["API_TOKEN"].how)
    assert "hunter2" not in repr(in_processes)


def test_secret_lookup_is_indexed_and_follows_the_list(tmp_path):
    inv, _, _ = _estate(tmp_path)
    assert inv.secret("OWN_3").name == "own-3" and inv.secret("own-3").name == "own-3"
    assert inv.secret("nope") is None
    inv.secrets = inv.secrets[:1]  # a replaced list is re-indexed
    assert inv.secret("OWN_3") is None and inv.secret("SHARED_TOKEN").name == "SHARED_TOKEN"
