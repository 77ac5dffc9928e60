"""Two runs of one incident, both approved, rotating at the same moment (the issue's measured failure:
GCP got two new versions, one run deleted the other's new IAM key, GitHub copies were written twice).

Real OpenBao (KV v2) and the real moto server (IAM); GitHub is the local protocol server in
flows/drill/servers/github.py, spoken to by our client unchanged. The journal runs on SQLite and on
a real PostgreSQL (``journal_location``); each run has its own journal connection, as two workers would.
The credential lease (``credential:<target>``) makes the second run wait, then find the work done.
"""

from __future__ import annotations

import threading

from digestguard.journal import Holder, Journal
from integrations import aws_iam, vault
from tasks.rotate.stage import apply_rotation
from tests.integration.test_rotate import _iam_user, _uid, clients, github, gitlab, gsm, keyvault, plan_for  # noqa: F401


def _both(plan, approval, inv, journal_location, ready, **kw):
    results: list = [None, None]
    barrier = threading.Barrier(2)

    def run(n: int) -> None:
        barrier.wait()
        try:
            results[n] = apply_rotation(plan, approval, inv, Journal(journal_location), clients=ready, **kw)
        except BaseException as e:  # a run that raised is a result too: the assertion shows what it was
            import traceback
            results[n] = "".join(traceback.format_exception(e))

    threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return results


def test_two_runs_of_one_incident_rotate_each_credential_once(clients, github, journal_location):  # noqa: F811
    vc = clients["vault"]
    path = f"ci/conc-{_uid()}"
    vault.kv_write(vc, path, {"token": "leaked-aaaaaaaaaaaa"})
    user, (old,) = _iam_user(clients)
    stash = f"ci/aws-conc-{_uid()}"
    plan, approval, inv = plan_for([
        {"name": "tok", "backend": "vault-kv", "ref": {"path": path},
         "consumers": [{"kind": "github-actions-secret", "repo": "acme/api", "name": "CONC_TOKEN"}]},
        {"name": "deploy", "backend": "aws-iam-access-key", "ref": {"user": user},
         "consumers": [{"kind": "vault-kv", "path": stash},
                       {"kind": "github-actions-secret", "repo": "acme/api", "name": "CONC_KEY_ID", "field": "access_key_id"}]},
    ], exposure="confirmed")

    a, b = _both(plan, approval, inv, journal_location, clients)

    for target in ("secret:tok", "secret:deploy"):
        outcomes = sorted(r.actions[[x.target for x in r.actions].index(target)].outcome for r in (a, b))
        assert outcomes == ["already-done", "done"], (target, a, b)
    meta = vault.kv_metadata(vc, path)
    assert meta.current_version == 2  # one new version, not two
    assert github.decrypt_secret("repo:acme/api", "CONC_TOKEN") == vault.kv_read(vc, path).data["token"].get_secret_value()
    keys = aws_iam.list_access_keys(clients["iam"], user)
    assert len(keys) == 1 and keys[0].access_key_id != old  # one new key, and nobody deleted it
    assert vault.kv_read(vc, stash).data["access_key_id"].get_secret_value() == keys[0].access_key_id
    assert github.decrypt_secret("repo:acme/api", "CONC_KEY_ID") == keys[0].access_key_id
    # every side effect once; "used after exposure?" is a read of the audit trail that each run asks again on purpose
    rows = [e for e in Journal(journal_location).entries(plan.incident, "rotate") if e.action != "used-after-exposure"]
    assert rows and all(e.attempts <= 1 for e in rows), [(e.target, e.action, e.attempts, e.detail) for e in rows if e.attempts > 1]


def test_a_credential_held_by_another_incident_fails_that_secret_naming_the_holder(clients, journal_location):  # noqa: F811
    vc = clients["vault"]
    path = f"ci/held-{_uid()}"
    vault.kv_write(vc, path, {"token": "leaked-bbbbbbbbbbbb"})
    free = f"ci/free-{_uid()}"
    vault.kv_write(vc, free, {"token": "leaked-cccccccccccc"})
    plan, approval, inv = plan_for([{"name": "held", "backend": "vault-kv", "ref": {"path": path}},
                                    {"name": "free", "backend": "vault-kv", "ref": {"path": free}}])
    other = Holder.here("7a7a7a7a-4444-4c4c-9d9d-dddddddddddd")
    with Journal(journal_location).lease("credential:secret:held", other, ttl=60):
        result = apply_rotation(plan, approval, inv, Journal(journal_location), clients=clients, lease_wait=0.5)
    out = {x.target: x for x in result.actions}
    assert out["secret:free"].outcome == "done"  # one held credential does not stop the others
    assert out["secret:held"].outcome == "failed"
    assert out["secret:held"].error.startswith("credential:secret:held is held by flow run 7a7a7a7a-4444-4c4c-9d9d-dddddddddddd")
    assert vault.kv_metadata(vc, path).current_version == 1  # nothing written for the held one
    assert Journal(journal_location).get(plan.incident, "rotate", "secret:held", "rotate") is None  # not journaled as ours
